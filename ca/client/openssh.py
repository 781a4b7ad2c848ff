"""``iast-ssh login`` carried by the system's OpenSSH client: the path of a login nobody waits for.

Starting Python with asyncssh (and asyncio, and pyca/cryptography) costs more
than the whole ``ssh … sign`` it would replace (README, "What changed for
issue 14"). When a login needs none of asyncssh's features, it runs:

1. ``ssh-keygen -t ed25519`` for the fresh session key (in a 0700 temporary
   directory, preferably ``$XDG_RUNTIME_DIR``; read, then deleted);
2. ``ssh -F /dev/null … sign --json`` with a known_hosts file holding exactly
   the service host key that an earlier login checked against the pin and
   cached (docs/security.md rule 76); and, on a second connection at the same
   time, ``krl`` (for ``status``);
3. the certificate into ssh-agent through :mod:`ca.client.agentwire`.

It applies only when (:func:`ready`): one CA address, a pin, a cached host key
whose SHA256 fingerprint is that pin, an ``-i`` key (given or remembered) that
is an unencrypted OpenSSH key file, private to its owner, with no certificate
file beside it (ssh would offer that), no SSO, workload token or enrolment,
and an ssh-agent to hold the result. Anything else, and every failure that is
not an answer of the CA (the host key differs from the cached one, a refused
key on a terminal, an unexpected ssh error), goes the asyncssh way
(:mod:`ca.client.connection`), which checks the pin itself and says what is
wrong in the same words as always. Nothing secret is sent before OpenSSH has
checked the host key against that single known_hosts line.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ca.errors import CAError

__all__ = ["Fallback", "SessionKey", "cached_host_key", "remember_host_key"]

# The name the temporary known_hosts file gives the service host key (ssh's HostKeyAlias):
# the check does not depend on how the address is spelled.
_ALIAS = "iast-ca-service"
_HOST_KEY_ALGS = {
    "ssh-ed25519": "ssh-ed25519",
    "ecdsa-sha2-nistp256": "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384": "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521": "ecdsa-sha2-nistp521",
    "ssh-rsa": "rsa-sha2-512,rsa-sha2-256",
}
# What ssh prints when it could not reach the server (the words of connection._ca_error follow).
_UNREACHABLE = re.compile(r"ssh: connect to host .* port \d+: (?P<why>.+)$", re.M)
_UNRESOLVED = re.compile(r"ssh: Could not resolve hostname (?P<host>.*): (?P<why>.+)$", re.M)


class Fallback(Exception):
    """This login is not for OpenSSH (or OpenSSH could not do it): take the asyncssh path. Raised only
    before any credential left this machine, or after the CA refused a key on a terminal (where the
    asyncssh path can go on to the password)."""


# --------------------------------------------------------------------------
# The service host key, cached after a check against the pin


def _cache_file(address: str) -> Path:
    from ca.client.files import cache_file

    return cache_file("hostkey", address)


def remember_host_key(address: str, public_key: str) -> None:
    """Cache the service host key of ``address`` (``TYPE BASE64``), which the caller has just checked
    against the pin; a failure to write it only costs the next login its speed."""
    from ca.files import write_atomic

    try:
        kind, blob = public_key.split()[:2]
        path = _cache_file(address)
        if path.exists() and path.read_text().split()[:2] == [kind, blob]:
            return
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(path, f"{kind} {blob}\n", 0o600)
    except (OSError, ValueError):
        pass


def cached_host_key(address: str, pin: str) -> tuple[str, str] | None:
    """(type, base64) of the cached service host key of ``address`` if its fingerprint is ``pin``, else None."""
    from ca.sshcert.certificates import fingerprint  # the reply's check loads it anyway

    try:
        kind, b64 = _cache_file(address).read_text().split()[:2]
        blob = base64.b64decode(b64, validate=True)
    except (OSError, ValueError, binascii.Error, UnicodeError):
        return None
    if kind not in _HOST_KEY_ALGS or fingerprint(blob) != pin or not blob.startswith(
            len(kind).to_bytes(4, "big") + kind.encode()):
        return None
    return kind, b64


# --------------------------------------------------------------------------
# Keys


def plain_openssh_key(path: Path) -> bool:
    """Whether ``path`` is an unencrypted OpenSSH private key file, mode 0600 or stricter (else ssh
    would ask for a passphrase, or ignore the key), with no ``-cert.pub`` beside it."""
    try:
        if os.stat(path).st_mode & 0o077 or os.path.exists(f"{path}-cert.pub"):
            return False
        text = path.read_text()
    except (OSError, UnicodeError):
        return False
    body = text.strip()
    head, tail = "-----BEGIN OPENSSH PRIVATE KEY-----", "-----END OPENSSH PRIVATE KEY-----"
    if not (body.startswith(head) and body.endswith(tail)):
        return False
    try:
        raw = base64.b64decode("".join(body[len(head):-len(tail)].split()), validate=True)
        from ca.sshcert.wire import Reader

        r = Reader(raw)
        return r.raw(15) == b"openssh-key-v1\0" and r.string() == b"none"
    except (ValueError, binascii.Error):
        return False


@dataclass(frozen=True)
class SessionKey:
    """A fresh Ed25519 key: its public line and blob, and the halves the agent needs."""

    public_line: str  # ssh-ed25519 BASE64
    public_blob: bytes
    public: bytes  # 32 bytes
    secret: bytes  # 64 bytes: seed || public (OpenSSH's private key format)
    private_text: str  # the OpenSSH private key file (for files, if the agent fails)


def new_key(tmp: Path) -> SessionKey:
    """``ssh-keygen -t ed25519`` in ``tmp`` (0700); the files are deleted before this returns."""
    from ca.sshcert.wire import Reader, WireError

    path = tmp / "id_ed25519"
    try:
        r = subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(path)],
                           stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            raise Fallback(f"ssh-keygen failed: {r.stderr.strip()}")
        text = path.read_text()
    except (OSError, subprocess.TimeoutExpired) as e:
        raise Fallback(f"ssh-keygen: {e}") from None
    finally:
        for p in (path, path.with_name(path.name + ".pub")):
            try:
                p.unlink()
            except OSError:
                pass
    try:
        body = "".join(text.strip().splitlines()[1:-1])
        rd = Reader(base64.b64decode(body, validate=True))
        if rd.raw(15) != b"openssh-key-v1\0" or rd.string() != b"none" or rd.string() != b"none":
            raise WireError("not an unencrypted key")
        rd.string()  # kdf options
        if rd.uint32() != 1:
            raise WireError("not one key")
        public_blob = rd.string()
        p = Reader(rd.string())
        if p.uint32() != p.uint32() or p.text() != "ssh-ed25519":
            raise WireError("not an Ed25519 key")
        public, secret = p.string(), p.string()
    except (ValueError, binascii.Error) as e:
        raise Fallback(f"ssh-keygen wrote an unexpected key: {e}") from None
    if len(public) != 32 or len(secret) != 64 or secret[32:] != public:
        raise Fallback("ssh-keygen wrote an unexpected key")
    line = "ssh-ed25519 " + base64.b64encode(public_blob).decode()
    return SessionKey(line, public_blob, public, secret, text)


def temp_dir() -> Path:
    """A fresh 0700 directory for the session key and the known_hosts file: in ``$XDG_RUNTIME_DIR``
    (memory, the user's own) when there is one."""
    runtime = os.environ.get("XDG_RUNTIME_DIR") or ""
    where = runtime if runtime and os.path.isdir(runtime) and os.access(runtime, os.W_OK) else "/tmp"
    for _ in range(10):  # tempfile.mkdtemp, without importing tempfile (shutil, random)
        path = Path(where) / f"iast-ssh-{os.urandom(8).hex()}"
        try:
            os.mkdir(path, 0o700)
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"cannot make a temporary directory in {where}")


def remove_dir(tmp: Path) -> None:
    for p in tmp.iterdir():
        try:
            p.unlink()
        except OSError:
            pass
    try:
        tmp.rmdir()
    except OSError:
        pass


# --------------------------------------------------------------------------
# ssh


def ssh_argv(*, host: str, port: int, user: str, identity: Path, known_hosts: Path, kind: str,
             timeout: float, command: str) -> list[str]:
    """The ``ssh`` command line: no ssh_config, no agent, no forwarding, exactly one key, exactly one
    acceptable host key (``known_hosts``, of type ``kind``), no prompt."""
    return [
        "ssh", "-F", "/dev/null", "-T", "-x", "-a", "-i", str(identity),
        "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
        "-o", f"UserKnownHostsFile={known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", f"HostKeyAlias={_ALIAS}", "-o", f"HostKeyAlgorithms={_HOST_KEY_ALGS[kind]}",
        "-o", "CheckHostIP=no", "-o", "UpdateHostKeys=no", "-o", "VerifyHostKeyDNS=no",
        "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none", "-o", "PreferredAuthentications=publickey",
        "-o", "ControlMaster=no", "-o", "ControlPath=none", "-o", "ClearAllForwardings=yes",
        "-o", "PermitLocalCommand=no", "-o", f"ConnectTimeout={max(1, int(timeout))}", "-o", "LogLevel=ERROR",
        "-p", str(port), "-l", user, "--", host, command,
    ]


def safe_path(path: Path) -> bool:
    """A path ssh reads as written: ssh expands ``%`` and ``~`` tokens in some options."""
    return not any(c in str(path) for c in "%~\"' \t\n")


def ssh_failure(address: str, host: str, stderr: str, *, can_log_in: bool) -> CAError:
    """What an ssh exit status 255 means, as connection._ca_error words it; Fallback when the asyncssh
    path should look again (a host key that is not the cached one, a key refused on a terminal)."""
    from ca.errors import AuthenticationFailed

    m = _UNRESOLVED.search(stderr)
    if m:
        return CAError(f"cannot reach the CA at {address}: cannot resolve host {host} ({m['why'].strip()})")
    m = _UNREACHABLE.search(stderr)
    if m:
        why = m["why"].strip()
        return CAError(f"cannot reach the CA at {address}: "
                       + ("timed out" if "timed out" in why.lower() else why))
    if "Permission denied" in stderr and not can_log_in:
        from ca.client.connection import AUTH_FAILED_MESSAGE

        return AuthenticationFailed(AUTH_FAILED_MESSAGE)
    raise Fallback(stderr.strip().splitlines()[-1] if stderr.strip() else "ssh failed")


def reply_json(stdout: str) -> dict:
    try:
        obj = json.loads(stdout)
    except ValueError:
        raise CAError(f"the CA's answer to sign is not JSON: {stdout[:80]!r}") from None
    if not isinstance(obj, dict):
        raise CAError("the CA's reply is not a certificate")
    return obj
