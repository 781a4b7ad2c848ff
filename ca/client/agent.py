"""ssh-agent: add a certificate that the agent drops at its expiry, and list or remove the iast ones.

``status`` and ``logout`` look in ssh-agent and in the output directory of
:mod:`ca.client.files`. asyncio and asyncssh are imported inside the functions that need them
(``login`` over OpenSSH talks to the agent through :mod:`ca.client.agentwire`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ca.client.files import read_cert, cached_krls, cert_files, default_out_dir, file_held
from ca.client.loop import run_async
from ca.client.results import HeldCertificate, LogoutResult, Status, held_certificate
from ca.errors import CAError

__all__ = ["add_to_agent", "agent_held", "agent_socket", "logout", "open_agent", "status"]


def agent_socket(environ: dict[str, str] | None = None) -> str | None:
    """The ssh-agent socket from ``SSH_AUTH_SOCK``, or None when no agent is configured."""
    env = os.environ if environ is None else environ
    return env.get("SSH_AUTH_SOCK") or None


async def open_agent(path: str):
    """A connection to the ssh-agent at ``path`` (the caller closes it), or a CAError saying why not."""
    import asyncio

    import asyncssh

    try:
        return await asyncio.wait_for(asyncssh.connect_agent(path), 10)
    except (OSError, asyncio.TimeoutError, asyncssh.Error) as e:
        raise CAError(f"cannot use ssh-agent at {path}: {e}") from None


async def agent_held(path: str, krls=()) -> list[tuple[Any, HeldCertificate]]:
    """(agent key, description) for every iast certificate in the agent at ``path``."""
    agent = await open_agent(path)
    try:
        return await held_in(agent, krls)
    finally:
        agent.close()
        await agent.wait_closed()


async def held_in(agent, krls=()) -> list[tuple[Any, HeldCertificate]]:
    out = []
    for kp in await agent.get_keys():
        if kp.algorithm.endswith(b"-cert-v01@openssh.com"):
            held = held_certificate("agent", kp.public_data, kp.get_comment(), krls=krls)
            if held is not None:
                out.append((kp, held))
    return out


async def _remove(agent, held: list[tuple[Any, HeldCertificate]]) -> list[str]:
    """Remove these certificates from the agent; the key IDs of those it still had."""
    removed = []
    for kp, h in held:
        try:
            await agent.remove_keys([kp])
            removed.append(h.key_id)
        except ValueError:
            pass  # expired and dropped by the agent in the meantime
    return removed


async def add_to_agent(path: str, key, cert, key_id: str, lifetime: int, *,
                       replaces: Callable[[HeldCertificate], bool] | None = None) -> list[str]:
    """Add the certificate (not the bare key: it is useless alone) to ssh-agent, to be dropped at expiry,
    then remove the iast certificates ``replaces`` picks (the previous one of this CA and role: one at a
    time, so that sshd's MaxAuthTries is not used up by stale ones); return their key IDs.

    asyncssh's ``add_keys([(key, cert)])`` would add the key both with and
    without the certificate, so build the key pair ourselves. The comment is
    the key ID, as ``ssh-add -l`` shows it.
    """
    from asyncssh.public_key import SSHLocalKeyPair

    key.set_comment(key_id)
    agent = await open_agent(path)
    try:
        old = [(kp, h) for kp, h in await held_in(agent)
               if replaces is not None and replaces(h) and h.blob != bytes(cert.public_data)]
        await agent.add_keys([SSHLocalKeyPair(key, None, cert, None)], lifetime=lifetime)
        removed = await _remove(agent, old)
    except ValueError as e:
        raise CAError(f"ssh-agent at {path} refused the certificate: {e}") from None
    finally:
        agent.close()
        await agent.wait_closed()
    return removed


def status(*, agent_path: str | None = None, out_dir: str | os.PathLike | None = None,
           use_agent: bool = True) -> Status:
    """The iast certificates held: in ssh-agent (``agent_path``, default ``SSH_AUTH_SOCK``) and
    in ``out_dir`` (default ``~/.ssh/iast-ssh``). Expired files are listed too (seconds_left 0);
    ssh-agent drops expired certificates itself. A certificate that the last KRL fetched from
    its CA revokes is marked ``revoked`` (``login`` and ``status --refresh`` fetch it)."""
    out_dir = Path(out_dir) if out_dir is not None else default_out_dir()
    held: list[HeldCertificate] = []
    notes: list[str] = []
    krls = cached_krls()
    path = agent_path or (agent_socket() if use_agent else None)
    if path:
        try:
            held += [h for _, h in run_async(agent_held(path, krls))]
        except CAError as e:
            notes.append(str(e))
    return Status(tuple(held + file_held(out_dir, krls)), tuple(notes))


def logout(*, agent_path: str | None = None, out_dir: str | os.PathLike | None = None,
           use_agent: bool = True, role: str | None = None) -> LogoutResult:
    """Remove the iast certificates from ssh-agent and delete their key and certificate files in
    ``out_dir``: all of them, or with ``role`` only that role's."""
    out_dir = Path(out_dir) if out_dir is not None else default_out_dir()
    removed: list[str] = []
    notes: list[str] = []
    path = agent_path or (agent_socket() if use_agent else None)

    async def from_agent(path: str) -> None:
        agent = await open_agent(path)
        try:
            removed.extend(await _remove(agent, [(kp, h) for kp, h in await held_in(agent)
                                                 if role is None or h.role == role]))
        finally:
            agent.close()
            await agent.wait_closed()

    if path:
        try:
            run_async(from_agent(path))
        except CAError as e:
            notes.append(str(e))
    deleted = []
    for cert_path in cert_files(out_dir):
        blob = read_cert(cert_path)
        held = held_certificate("files", blob, path=cert_path) if blob else None
        if role is not None and (held is None or held.role != role):
            continue
        key_path = cert_path.with_name(cert_path.name[:-len("-cert.pub")])
        for p in (key_path, cert_path, key_path.with_name(key_path.name + ".pub")):
            try:
                p.unlink()
                deleted.append(p)
            except FileNotFoundError:
                pass
    return LogoutResult(tuple(removed), tuple(deleted), tuple(notes))
