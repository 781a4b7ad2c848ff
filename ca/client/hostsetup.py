"""``iast-ssh host setup``: make a host trust the CA in one command, or change nothing.

What it writes (all under ``root``, named there in the config it writes):

    etc/ssh/sshd_config.d/40-iast-ssh.conf   TrustedUserCAKeys, RevokedKeys, AuthorizedPrincipalsFile
    etc/ssh/iast-user-ca.pub                 the CA keys to trust (as fetched from the CA)
    etc/ssh/iast-revoked.krl                 the first KRL
    etc/ssh/iast-principals/ACCOUNT          one per account of the principals map
    etc/iast-ssh/krl-refresh.env             what the KRL refresh timer needs
    etc/systemd/system/iast-krl-refresh.{service,timer}, enabled

Every input is checked before anything is written (the trust lines, the KRL,
the map's names). Then the files are written (each by temp file and
rename), and ``sshd -t`` and ``sshd -T`` must accept the result and show
the drop-in in effect; if not, every file is put back as it was (or removed)
and nothing is reloaded (docs/security.md rule 73). Only then is sshd
reloaded and the timer enabled.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ca.errors import CAError, UsageError
from ca.files import write_atomic
from ca.rules import is_user_name, principal_safe

DROPIN = "etc/ssh/sshd_config.d/40-iast-ssh.conf"
TRUST = "etc/ssh/iast-user-ca.pub"
KRL = "etc/ssh/iast-revoked.krl"
PRINCIPALS = "etc/ssh/iast-principals"
ENV = "etc/iast-ssh/krl-refresh.env"
UNITS = "etc/systemd/system"
TIMER = "iast-krl-refresh.timer"
SERVICE = "iast-krl-refresh.service"
MAIN_CONFIG = "etc/ssh/sshd_config"


def installed_program() -> str | None:
    """The absolute path of the ``iast-ssh`` running now (the console script, else the one beside this
    Python, as a venv has it), or None."""
    for candidate in (Path(sys.argv[0]) if sys.argv and sys.argv[0] else None,
                      Path(sys.executable).parent / "iast-ssh"):
        if candidate is not None and candidate.name == "iast-ssh" and os.access(candidate, os.X_OK):
            return str(candidate.absolute())
    return None


def hidden_by_protect_home(program: str) -> bool:
    """Whether the refresh unit's ``ProtectHome=yes`` hides ``program`` (under /home, /root or /run/user)."""
    return any(program == d or program.startswith(d + "/") for d in ("/home", "/root", "/run/user"))


def default_units_dir() -> Path:
    """The systemd units shipped beside the package (a source checkout or an editable install)."""
    return Path(__file__).resolve().parent.parent.parent / "systemd"


@dataclass(frozen=True)
class PlannedFile:
    path: Path
    data: bytes
    mode: int

    def as_json(self) -> dict[str, Any]:
        return {"path": str(self.path), "mode": f"{self.mode:04o}", "bytes": len(self.data)}


@dataclass
class SetupResult:
    files: list[PlannedFile]
    dry_run: bool
    validated: bool = False
    reloaded: str | None = None  # the reload command run, if any
    timer: str | None = None  # how the timer was enabled
    notes: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run, "validated": self.validated, "reloaded": self.reloaded,
                "timer": self.timer, "files": [f.as_json() for f in self.files], "notes": self.notes}


def parse_principals_map(text: str, where: str) -> dict[str, tuple[str, ...]]:
    """A TOML map ``account = ["principal", ...]``: who may log in as each local account."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{where}: not valid TOML: {e}") from None
    out = {}
    for account, principals in doc.items():
        if not is_user_name(account):
            raise UsageError(f"{where}: {account!r}: not a valid account name")
        if not isinstance(principals, list) or not principals or \
                not all(isinstance(p, str) and principal_safe(p) for p in principals):
            raise UsageError(f"{where}: {account}: expected a non-empty list of principals without spaces, "
                             "commas or wildcards")
        out[account] = tuple(principals)
    return out


def _host_path(root: Path, rel: str) -> Path:
    return root / rel


TEXTFILE_DIR = "/var/lib/prometheus/node-exporter"  # Debian's prometheus-node-exporter textfile directory


def plan(*, root: Path, ca: str, ca_fingerprint: str, krl_user: str, identity: str, trust_text: str,
         krl_data: bytes, principals: dict[str, tuple[str, ...]], units_dir: Path,
         textfile_dir: str | None = None, program: str | None = None) -> list[PlannedFile]:
    """Everything host setup writes, checked (nothing is written here). ``textfile_dir``: where
    the refresh writes iast_krl.prom for the node exporter (None: no metrics file)."""
    from ca.client.trust import parse_trust_lines
    from ca.sshcert.krl import KRLError, parse_krl

    keys = parse_trust_lines(trust_text)  # CAError on a bad or empty set
    try:
        parse_krl(krl_data)
    except KRLError as e:
        raise CAError(f"the CA's KRL is not valid ({e}); nothing written") from None
    if not is_user_name(krl_user):
        raise UsageError(f"{krl_user!r}: not a valid user name for the KRL refresh")
    if textfile_dir is not None:
        if not textfile_dir.startswith("/") or any(c.isspace() or not c.isprintable() for c in textfile_dir):
            raise UsageError(f"--textfile-dir {textfile_dir!r}: expected an absolute path without spaces")
        textfile_dir = str(_host_path(root, textfile_dir.lstrip("/")))
    trust, krl, pdir = _host_path(root, TRUST), _host_path(root, KRL), _host_path(root, PRINCIPALS)
    dropin = ("# Written by 'iast-ssh host setup': trust the iast-ssh CA for user certificates.\n"
              f"TrustedUserCAKeys {trust}\n"
              f"RevokedKeys {krl}\n"
              f"AuthorizedPrincipalsFile {pdir}/%u\n")
    files = [
        PlannedFile(trust, "".join(line + "\n" for line in keys.values()).encode(), 0o644),
        PlannedFile(krl, krl_data, 0o644),
        *(PlannedFile(pdir / account, "".join(p + "\n" for p in names).encode(), 0o644)
          for account, names in sorted(principals.items())),
        PlannedFile(_host_path(root, DROPIN), dropin.encode(), 0o644),
        PlannedFile(_host_path(root, ENV), (f"IAST_CA={ca}\nIAST_CA_FINGERPRINT={ca_fingerprint}\n"
                                            f"IAST_KRL_USER={krl_user}\n"
                                            + (f"IAST_KRL_TEXTFILE_DIR={textfile_dir}\n" if textfile_dir else "")
                                            ).encode(), 0o644),
    ]
    for unit in (SERVICE, TIMER):
        try:
            text = (units_dir / unit).read_text()
        except OSError as e:
            raise UsageError(f"cannot read the unit {units_dir / unit}: {e.strerror} (--units-dir)") from None
        if unit == SERVICE:
            # The refresh writes where this setup put the KRL, with the key it authenticates with.
            # ... and runs the iast-ssh that did the setup (a venv's, say), not a path that may not exist.
            if program:
                text = text.replace("ExecStart=/usr/local/bin/iast-ssh ", f"ExecStart={program} ")
            text = (text.replace("/etc/iast-ssh/krl-refresh.env", str(_host_path(root, ENV)))
                    .replace("-o /etc/ssh/iast-revoked.krl", f"-o {krl}")
                    .replace("-i /etc/ssh/ssh_host_ed25519_key", f"-i {identity}")
                    .replace("ReadWritePaths=/etc/ssh", f"ReadWritePaths={krl.parent}")
                    .replace(f"ReadWritePaths=-{TEXTFILE_DIR}", f"ReadWritePaths=-{textfile_dir or TEXTFILE_DIR}"))
        files.append(PlannedFile(_host_path(root, UNITS) / unit, text.encode(), 0o644))
    return files


Runner = Callable[[Sequence[str]], subprocess.CompletedProcess]


def _run(argv: Sequence[str]) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=60)


def sshd_effective(sshd: str, config: Path, run: Runner = _run) -> dict[str, list[str]]:
    """``sshd -T``: the effective settings, lower-case keyword -> values (one per line sshd printed)."""
    r = run([sshd, "-T", "-f", str(config)])
    if r.returncode != 0:
        raise CAError(f"sshd -T rejected {config}: {(r.stderr or r.stdout).strip().splitlines()[-1:]}")
    out: dict[str, list[str]] = {}
    for line in r.stdout.splitlines():
        key, _, value = line.partition(" ")
        out.setdefault(key.lower(), []).append(value)
    return out


class _Undo:
    """What was at each path before: put back on failure."""

    def __init__(self) -> None:
        self.saved: list[tuple[Path, bytes | None, int]] = []
        self.made_dirs: list[Path] = []

    def mkdirs(self, d: Path) -> None:
        missing = []
        while not d.exists():
            missing.append(d)
            d = d.parent
        for m in reversed(missing):
            m.mkdir(mode=0o755)
            self.made_dirs.append(m)

    def write(self, f: PlannedFile) -> None:
        self.mkdirs(f.path.parent)
        if f.path.exists():
            self.saved.append((f.path, f.path.read_bytes(), f.path.stat().st_mode & 0o7777))
        else:
            self.saved.append((f.path, None, 0))
        write_atomic(f.path, f.data, f.mode)

    def rollback(self) -> None:
        for path, data, mode in reversed(self.saved):
            if data is None:
                path.unlink(missing_ok=True)
            else:
                write_atomic(path, data, mode)
        for d in reversed(self.made_dirs):
            try:
                d.rmdir()
            except OSError:
                pass


def apply(files: list[PlannedFile], *, root: Path, sshd: str, dry_run: bool = False,
          run: Runner = _run) -> SetupResult:
    """Write ``files``, validate with the real sshd, and on success reload sshd and enable the
    timer (in ``root`` when it is not ``/``); on any failure put everything back and raise."""
    result = SetupResult(files=files, dry_run=dry_run)
    main = root / MAIN_CONFIG
    if not main.is_file():
        raise UsageError(f"no sshd config at {main}: is OpenSSH's server installed (or --root right)?")
    if dry_run:
        return result
    undo = _Undo()
    try:
        for f in files:
            undo.write(f)
        r = run([sshd, "-t", "-f", str(main)])
        if r.returncode != 0:
            why = (r.stderr or r.stdout).strip().splitlines()
            raise CAError(f"sshd -t rejected the configuration ({why[-1] if why else 'no reason given'}); "
                          "every file was put back, sshd was not reloaded")
        effective = sshd_effective(sshd, main, run)
        dropin = root / DROPIN
        want = {"trustedusercakeys": str(root / TRUST), "revokedkeys": str(root / KRL)}
        for key, value in want.items():
            if effective.get(key) != [value]:
                raise CAError(f"{dropin} is not in effect ({key} is {' '.join(effective.get(key, ['none']))}): "
                              f"make {main} include {dropin.parent}/*.conf before its own settings; "
                              "every file was put back")
        result.validated = True
        timer_link = root / UNITS / "timers.target.wants" / TIMER
        if root != Path("/"):
            # An image or a test tree: enable the timer the way systemctl would, and reload nothing.
            undo.mkdirs(timer_link.parent)
            if not timer_link.is_symlink():
                timer_link.symlink_to(Path("/") / UNITS / TIMER)
            result.timer = f"enabled in {root} ({timer_link})"
        else:
            for argv in (["systemctl", "daemon-reload"], ["systemctl", "enable", "--now", TIMER]):
                r = run(argv)
                if r.returncode != 0:
                    result.notes.append(f"{' '.join(argv)} failed: {(r.stderr or r.stdout).strip()[:200]}")
            result.timer = "systemctl enable --now " + TIMER
            for argv in (["systemctl", "reload", "ssh"], ["systemctl", "reload", "sshd"]):
                if run(argv).returncode == 0:
                    result.reloaded = " ".join(argv)
                    break
            else:
                result.notes.append("could not reload sshd (systemctl reload ssh/sshd failed): reload it yourself")
    except BaseException:
        undo.rollback()
        raise
    return result


def sshd_binary() -> str:
    for candidate in ("/usr/sbin/sshd", "/usr/local/sbin/sshd", "/sbin/sshd"):
        if os.access(candidate, os.X_OK):
            return candidate
    raise UsageError("sshd not found in /usr/sbin, /usr/local/sbin or /sbin (--sshd PATH)")
