"""First contact for plain ssh: the CA service's ``[host]:port KEY`` line in the user's known_hosts.

``iast-ssh trust-ca ADDR --ca-fingerprint FP`` fetches the service host key
(the key exchange only: nothing of the user's is sent), refuses it unless its
SHA256 fingerprint is FP (docs/security.md rule 18, rule 82), and adds the line
that ``iast-ca info --known-hosts`` prints on the CA, so that
``ssh -p 2222 alice@ca sign < key.pub`` works with strict host key checking.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path

from ca.client.config import check_fingerprint, known_hosts_line, parse_address
from ca.client.loop import run_async
from ca.errors import CAError, HostKeyChanged

__all__ = ["TrustedService", "ssh_known_hosts_file", "trust_service"]


@dataclass(frozen=True)
class TrustedService:
    path: Path
    line: str
    host: str
    port: int
    added: bool

    def as_json(self) -> dict:
        return {"path": str(self.path), "line": self.line, "host": self.host, "port": self.port,
                "added": self.added}


def ssh_known_hosts_file(host: str, port: int) -> Path:
    """The known_hosts file plain ``ssh -p PORT HOST`` reads and writes: the first UserKnownHostsFile of
    ``ssh -G`` (which honours ~/.ssh/config and expands ``~`` from the passwd entry, as ssh does, never
    $HOME); without an ssh client, ~/.ssh/known_hosts of the passwd home directory."""
    import pwd
    import shutil
    import subprocess

    ssh = shutil.which("ssh")
    if ssh is not None:
        try:
            r = subprocess.run([ssh, "-G", "-p", str(port), host], capture_output=True, text=True, timeout=10,
                               stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired):
            r = None
        if r is not None and r.returncode == 0:
            for out in r.stdout.splitlines():
                name, _, value = out.partition(" ")
                if name == "userknownhostsfile" and value.split():
                    return Path(value.split()[0])
    return Path(pwd.getpwuid(os.getuid()).pw_dir) / ".ssh" / "known_hosts"


def trust_service(address: str, fingerprint: str, known_hosts: str | os.PathLike | None = None,
                  timeout: float = 15.0) -> TrustedService:
    import asyncssh

    from ca.client.connection import _ca_error
    from ca.client.files import write_installed

    pin = check_fingerprint(fingerprint)
    host, port = parse_address(address)
    try:
        key = run_async(asyncio.wait_for(asyncssh.get_server_host_key(host, port, config=None), timeout))
    except (OSError, asyncio.TimeoutError, asyncssh.Error) as e:
        raise _ca_error(address, e) from None
    if key is None:
        raise HostKeyChanged(f"the CA at {address} presented no host key")
    got = key.get_fingerprint("sha256")
    if got != pin:
        raise HostKeyChanged(f"the pin does not match the service host key of {address}: given {pin}, the "
                             f"service presents {got}; nothing was written. Compare with the 'service host "
                             "key' line of 'iast-ca info' on the CA (the CA key is another key).")
    line = known_hosts_line(host, port, key.export_public_key("openssh").decode())
    path = Path(known_hosts).expanduser() if known_hosts else ssh_known_hosts_file(host, port)
    try:
        current = path.read_text()
    except FileNotFoundError:
        current = ""
    except (OSError, UnicodeError) as e:
        raise CAError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
    if line in (x.strip() for x in current.splitlines()):
        return TrustedService(path, line, host, port, False)
    if not path.parent.exists():
        path.parent.mkdir(parents=True, mode=0o700)
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o600
    sep = "" if not current or current.endswith("\n") else "\n"
    write_installed(path, current + sep + line + "\n", mode)
    return TrustedService(path, line, host, port, True)
