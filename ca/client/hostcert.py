"""The host side of host certificates: enrol with a one-time join token, renew with the host key.

``enroll`` logs in to the CA as ``host:NAME`` with the join token (one hidden
keyboard-interactive answer), sends the host's public key (``host-enroll``)
and installs the certificate it gets back; ``renew`` logs in with the host's
private key and sends its current certificate (``host-renew``). Both check
the answer before writing anything: a host certificate (type 2) for exactly
this host key, with the principals the CA says it signed. The certificate
is written with mode 0644 by temp file and rename, so sshd never reads half
a file; on any failure nothing is written and the old certificate stays.

``enroll`` also writes the ``sshd_config.d`` drop-in naming the certificate
(``HostCertificate``). sshd reads host certificates when it starts or is
reloaded (SIGHUP), so run ``systemctl reload ssh`` after either command (the
renewal unit in systemd/ does).

The CA's SSH host key is pinned (``--ca-fingerprint``) before the token or
any key is used, as for users (docs/security.md rule 18).
"""

from __future__ import annotations

import base64
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ca.client.connection import Client, Prompter
from ca.errors import AuthenticationFailed, BadKey, CAError, UsageError
from ca.files import write_atomic

DEFAULT_HOST_KEY = Path("/etc/ssh/ssh_host_ed25519_key")
DEFAULT_DROPIN_DIR = Path("/etc/ssh/sshd_config.d")
DROPIN_NAME = "50-iast-host-certificate.conf"
# Renew once less than this fraction of the certificate's lifetime is left (unless forced).
RENEW_AT = 0.5
_TOKEN_PREFIX = "iast-join."


@dataclass(frozen=True)
class HostCertResult:
    host: str
    role: str
    serial: int
    key_id: str
    principals: tuple[str, ...]
    valid_after: int
    valid_before: int
    cert_path: str
    dropin_path: str | None = None
    renewed: bool = True  # False: renew found the current certificate fresh enough

    def as_json(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["principals"] = list(self.principals)
        return d


class _HostClient(Client):
    """A client that keeps no state of its own: a host's settings are its command line (or unit file)."""

    def __init__(self, ca: str, *, ca_fingerprint: str, user: str, **kw: Any):
        super().__init__(ca, ca_fingerprint=ca_fingerprint, user=user, use_agent=False,
                         config_file=Path(os.devnull), **kw)

    def _remember_pin(self, always: bool = False) -> None:
        return None

    def _handler(self):
        import asyncssh

        secret = self.prompter.secret

        class OneAnswer(asyncssh.SSHClient):
            """The join token, once: a second challenge means it was refused (no retry to be throttled)."""

            def __init__(self) -> None:
                self.answered = False

            def kbdint_auth_requested(self):
                return "" if secret is not None else None

            def kbdint_challenge_received(self, name, instructions, lang, prompts):
                if not prompts:
                    return []
                if self.answered or len(prompts) != 1 or secret is None:
                    return None
                self.answered = True
                return [secret(prompts[0][0])]

        return OneAnswer


def cert_path_for(host_key: Path) -> Path:
    """``/etc/ssh/ssh_host_ed25519_key`` (or its .pub) -> ``/etc/ssh/ssh_host_ed25519_key-cert.pub``."""
    base = host_key.with_suffix("") if host_key.suffix == ".pub" else host_key
    return base.with_name(base.name + "-cert.pub")


def read_token(path: str | os.PathLike) -> str:
    try:
        text = Path(path).read_text().strip()
    except OSError as e:
        raise UsageError(f"cannot read the token file {path}: {e.strerror or e}") from None
    if not text.startswith(_TOKEN_PREFIX) or len(text.split(".")) != 4:
        raise UsageError(f"{path} does not hold a join token (iast-join.HOST.ID.SECRET from 'iast-ca host token')")
    return text


def _public_line(host_key: Path) -> str:
    pub = host_key if host_key.suffix == ".pub" else host_key.with_name(host_key.name + ".pub")
    try:
        return pub.read_text().strip()
    except OSError as e:
        raise BadKey(f"cannot read the host public key {pub}: {e.strerror or e}") from None


def _checked(reply: Any, key_line: str) -> tuple[dict, Any]:
    """The CA's answer, checked: a host certificate for our key, as the reply describes it."""
    from ca.sshcert.certificates import HOST_CERT, parse_certificate_line
    from ca.sshcert.wire import WireError

    try:
        cert = parse_certificate_line(reply["certificate"])
        blob = base64.b64decode(key_line.split()[1])
    except (KeyError, TypeError, IndexError, ValueError, WireError) as e:
        raise CAError(f"the CA's reply is not a certificate: {e}") from None
    if cert.public_key_blob != blob:
        raise CAError("the CA returned a certificate for another key")
    if (cert.cert_type != HOST_CERT or cert.serial != reply.get("serial") or cert.key_id != reply.get("key_id")
            or list(cert.principals) != reply.get("principals") or cert.valid_before != reply.get("valid_before")):
        raise CAError("the CA's reply does not match the certificate it sent")
    return reply, cert


def _result(reply: dict, cert_path: Path, dropin: Path | None, renewed: bool = True) -> HostCertResult:
    return HostCertResult(host=reply["host"], role=reply["role"], serial=int(reply["serial"]),
                          key_id=reply["key_id"], principals=tuple(reply["principals"]),
                          valid_after=int(reply["valid_after"]), valid_before=int(reply["valid_before"]),
                          cert_path=str(cert_path), dropin_path=str(dropin) if dropin else None, renewed=renewed)


def enroll(*, ca: str, ca_fingerprint: str, token: str, host_key: str | os.PathLike = DEFAULT_HOST_KEY,
           cert_path: str | os.PathLike | None = None, dropin_dir: str | os.PathLike | None = DEFAULT_DROPIN_DIR,
           host: str | None = None, ttl: int | None = None) -> HostCertResult:
    """Enrol this host with a join token; install the certificate and the sshd drop-in."""
    host_key = Path(host_key)
    key_line = _public_line(host_key)
    host = host or token.split(".")[1]
    out = Path(cert_path) if cert_path else cert_path_for(host_key)
    _writable(out)
    dropin = Path(dropin_dir) / DROPIN_NAME if dropin_dir else None
    if dropin is not None:
        _writable(dropin)
    client = _HostClient(ca, ca_fingerprint=ca_fingerprint, user=f"host:{host}",
                         prompter=Prompter(secret=lambda _prompt: token, code=lambda _prompt: token))
    args = ["host-enroll", "--json"] + (["--ttl", str(ttl)] if ttl else [])
    try:
        answer = client._run(lambda conn: client._json(conn, args, key_line + "\n"))
    except AuthenticationFailed as e:
        if "join token" in e.message or "command for" in e.message:
            raise
        raise AuthenticationFailed(f"the CA refused the join token for host {host}: unknown, already used, "
                                   "expired, or for another host (its audit log says which)") from None
    reply, _ = _checked(answer, key_line)
    write_atomic(out, reply["certificate"] + "\n", 0o644)
    if dropin is not None:
        write_atomic(dropin, "# Written by 'iast-ssh host enroll': this host's certificate from the iast-ssh CA.\n"
                             f"HostCertificate {out.absolute()}\n", 0o644)
    return _result(reply, out, dropin)


def renew(*, ca: str, ca_fingerprint: str, host_key: str | os.PathLike = DEFAULT_HOST_KEY,
          cert_path: str | os.PathLike | None = None, ttl: int | None = None, force: bool = False,
          now: float | None = None) -> HostCertResult:
    """Renew this host's certificate, proving possession of its key and current certificate.

    Without ``force`` nothing is asked while more than half of the current
    certificate's lifetime is left (``renewed`` is then False).
    """
    from ca.sshcert.certificates import HOST_CERT, parse_certificate_line
    from ca.sshcert.wire import WireError

    host_key = Path(host_key)
    if host_key.suffix == ".pub":
        raise UsageError("renewal logs in with the host's private key: give --host-key without .pub")
    out = Path(cert_path) if cert_path else cert_path_for(host_key)
    try:
        current_line = out.read_text().strip()
        current = parse_certificate_line(current_line)
    except OSError as e:
        raise UsageError(f"no current certificate at {out} ({e.strerror or e}): enrol first "
                         "('iast-ssh host enroll')") from None
    except WireError as e:
        raise UsageError(f"{out} is not a certificate ({e}): enrol again") from None
    parts = current.key_id.split(":")
    if current.cert_type != HOST_CERT or len(parts) != 4 or parts[0] != "iast-host":
        raise UsageError(f"{out} is not a host certificate from an iast-ssh CA (key ID {current.key_id[:80]!r})")
    host, role = parts[1], parts[2]
    now = time.time() if now is None else now
    lifetime = current.valid_before - current.valid_after
    if not force and current.valid_before - now > lifetime * RENEW_AT:
        return HostCertResult(host=host, role=role, serial=current.serial, key_id=current.key_id,
                              principals=current.principals, valid_after=current.valid_after,
                              valid_before=current.valid_before, cert_path=str(out), renewed=False)
    _writable(out)
    client = _HostClient(ca, ca_fingerprint=ca_fingerprint, user=f"host:{host}", identity=host_key)
    args = ["host-renew", "--json"] + (["--ttl", str(ttl)] if ttl else [])
    key_line = f"{current.key_type} {base64.b64encode(current.public_key_blob).decode()}"
    try:
        answer = client._run(lambda conn: client._json(conn, args, current_line + "\n"))
    except AuthenticationFailed as e:
        if "command for" in e.message or "renewal" in e.message:
            raise
        raise AuthenticationFailed(f"the CA refused the host key {host_key} for host {host}: it certified no such "
                                   "key for this host (enrol it with a join token)") from None
    reply, _ = _checked(answer, key_line)
    write_atomic(out, reply["certificate"] + "\n", 0o644)
    return _result(reply, out, None)


def _writable(path: Path) -> None:
    """Fail before asking the CA, not after: a certificate must never be issued into the void."""
    parent = path.absolute().parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise UsageError(f"cannot write {path}: {parent} is not a writable directory")


def fetch_known_hosts(client: Client) -> list[str]:
    """The CA's ``@cert-authority`` lines for known_hosts (its ``known-hosts`` command)."""
    async def work(conn):
        out = await client._command(conn, ["known-hosts"])
        return [line.strip() for line in out.splitlines() if line.strip().startswith("@cert-authority ")]
    return client._run(work)
