"""A real OpenSSH ``sshd`` on loopback, and a CA to sign keys for it (docs/security.md, "Test harness").

The end-to-end tests log in with the real ``ssh`` client to a real ``sshd``
that trusts the CA under test, and assert on what both of them say. Nothing
here is mocked: if the CA writes a wrong principal, validity window, critical
option or extension, OpenSSH refuses (or wrongly allows) the login.

Use it from a test module like this::

    from .sshd_harness import make_ca_fixture, make_sshd_fixture

    iast_ca = make_ca_fixture(lambda d: POLICY)    # module-scoped IastCA
    sshd = make_sshd_fixture("iast_ca")            # module-scoped SshdHarness

    def test_login(sshd, iast_ca, tmp_path):
        sshd.allow_principals(sshd.login_user, ["alice"])
        cert = iast_ca.sign(make_user_key(tmp_path / "k"), user="alice", role="dev")
        mark = sshd.log_mark()
        r = sshd.ssh(cert.key, sshd.login_user, "echo hi")
        assert r.returncode == 0
        sshd.wait_for_log(r"Accepted publickey for .* ID iast:alice:dev:\\d+", since=mark)

When ``sshd`` (or ``ssh``/``ssh-keygen``) is missing the fixtures skip with a
loud reason, except under ``CI=true`` where they fail: CI must never pass
without having run the tests that prove logins work.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

__all__ = [
    "Cert",
    "IastCA",
    "SshdHarness",
    "find_tool",
    "make_ca_fixture",
    "make_sshd_fixture",
    "make_user_key",
    "require_tool",
]

LOOPBACK = "127.0.0.1"
SECOND_LOOPBACK = "127.0.0.2"  # the source address for source-address tests (ssh -b)
_START_TIMEOUT = 10.0
_START_ATTEMPTS = 3  # a free port picked by binding port 0 can be taken before sshd binds it


# --------------------------------------------------------------------------
# Finding the OpenSSH binaries


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() == "true"


def _missing(reason: str) -> None:
    """Skip loudly, or fail under CI=true (a CI run must not silently skip the sshd tests)."""
    if _in_ci():
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(f"!!! REAL-OPENSSH TESTS NOT RUN: {reason} !!!")


def find_tool(name: str, *fallbacks: str) -> str | None:
    """The absolute path of ``name`` (PATH first, then ``fallbacks``), or None."""
    found = shutil.which(name)
    if found:
        return os.path.abspath(found)
    for candidate in fallbacks:
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def require_tool(name: str, *fallbacks: str, package: str = "openssh-client") -> str:
    """Like :func:`find_tool`, but skip (fail under ``CI=true``) when it is missing."""
    path = find_tool(name, *fallbacks)
    if path is None:
        _missing(f"{name} not found (install the Debian package {package})")
    return path  # type: ignore[return-value]


def sshd_path() -> str:
    # sshd re-executes itself, and refuses to start unless argv[0] is absolute.
    return require_tool("sshd", "/usr/sbin/sshd", "/usr/local/sbin/sshd", package="openssh-server")


def ssh_path() -> str:
    return require_tool("ssh", "/usr/bin/ssh")


def ssh_keygen_path() -> str:
    return require_tool("ssh-keygen", "/usr/bin/ssh-keygen")


# --------------------------------------------------------------------------
# User keys and the CA


def make_user_key(path: str | os.PathLike[str], comment: str = "sshd-test") -> Path:
    """A fresh Ed25519 key pair from ``ssh-keygen`` at ``path`` (``path.pub`` beside it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for p in (path, path.with_name(path.name + ".pub"), path.with_name(path.name + "-cert.pub")):
        p.unlink(missing_ok=True)
    subprocess.run(
        [ssh_keygen_path(), "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True, capture_output=True,
    )
    return path


def key_fingerprint(key: str | os.PathLike[str]) -> str:
    """``SHA256:...`` of a key file (private, ``.pub`` or certificate), as sshd logs it."""
    out = subprocess.run([ssh_keygen_path(), "-l", "-f", str(key)], check=True, capture_output=True, text=True)
    return out.stdout.split()[1]


def cert_path_for(key: str | os.PathLike[str]) -> Path:
    """Where ``ssh -i KEY`` looks for the certificate: ``KEY-cert.pub``."""
    key = Path(key)
    return key.with_name(key.name + "-cert.pub")


@dataclass(frozen=True)
class Cert:
    """A certificate the CA issued for a key, written beside it as ``KEY-cert.pub``."""

    key: Path  # the private key; ``ssh -i key`` picks up ``path`` beside it
    path: Path  # KEY-cert.pub
    serial: int
    key_id: str
    role: str
    principals: tuple[str, ...]
    valid_after: int
    valid_before: int
    force_command: str | None
    source_address: tuple[str, ...]
    extensions: tuple[str, ...]
    ca_fingerprint: str
    key_fingerprint: str  # of the user's key; sshd logs it as "ED25519-CERT SHA256:..."

    @classmethod
    def from_reply(cls, key: Path, reply: Mapping) -> Cert:
        return cls(
            key=key, path=cert_path_for(key), serial=reply["serial"], key_id=reply["key_id"], role=reply["role"],
            principals=tuple(reply["principals"]), valid_after=reply["valid_after"],
            valid_before=reply["valid_before"], force_command=reply["force_command"],
            source_address=tuple(reply["source_address"]), extensions=tuple(reply["extensions"]),
            ca_fingerprint=reply["ca_fingerprint"], key_fingerprint=key_fingerprint(key.with_name(key.name + ".pub")),
        )


class IastCA:
    """An ``iast-ca`` state directory and policy, driven through the real CLI (in-process).

    ``iast-ca`` runs in-process through click's CliRunner: the same code as
    the installed entry point, without paying a Python start-up per signature.
    """

    def __init__(self, state_dir: str | os.PathLike[str], policy_path: str | os.PathLike[str]):
        self.state_dir = Path(state_dir)
        self.policy_path = Path(policy_path)

    @classmethod
    def create(cls, state_dir: str | os.PathLike[str], policy_path: str | os.PathLike[str]) -> IastCA:
        """``iast-ca init`` a new Ed25519 CA (no passphrase) with this policy."""
        ca = cls(state_dir, policy_path)
        r = ca.cli("init", "--key-type", "ed25519")
        assert r.exit_code == 0, f"iast-ca init failed ({r.exit_code}): {r.output}"
        return ca

    def cli(self, *args: str):
        """Run ``iast-ca --state-dir S --policy P ARGS...``; returns click's Result."""
        from ca.cli.admin import cli

        base = ["--state-dir", str(self.state_dir), "--policy", str(self.policy_path)]
        return CliRunner().invoke(cli, base + list(args), catch_exceptions=False)

    def trust_lines(self) -> list[str]:
        """What ``iast-ca trust`` prints: the lines for sshd's TrustedUserCAKeys."""
        r = self.cli("trust")
        assert r.exit_code == 0, f"iast-ca trust failed ({r.exit_code}): {r.output}"
        lines = [line for line in r.stdout.splitlines() if line.strip()]
        assert lines, "iast-ca trust printed no keys"
        return lines

    def try_sign(self, key: str | os.PathLike[str], *, user: str, role: str | None = None,
                 ttl: str | None = None, reason: str | None = None):
        """``iast-ca sign --json ... -o KEY-cert.pub KEY.pub``; returns click's Result (any exit code)."""
        key = Path(key)
        args = ["sign", "--allow-unenrolled", "--json", "--user", user, "-o", str(cert_path_for(key))]
        if role is not None:
            args += ["--role", role]
        if ttl is not None:
            args += ["--ttl", ttl]
        if reason is not None:
            args += ["--reason", reason]
        return self.cli(*args, str(key.with_name(key.name + ".pub")))

    def sign(self, key: str | os.PathLike[str], *, user: str, role: str | None = None,
             ttl: str | None = None, reason: str | None = None) -> Cert:
        """Sign ``KEY.pub`` into ``KEY-cert.pub`` through ``iast-ca sign``; assert it succeeded."""
        key = Path(key)
        r = self.try_sign(key, user=user, role=role, ttl=ttl, reason=reason)
        assert r.exit_code == 0, f"iast-ca sign failed ({r.exit_code}): {r.output}"
        cert = Cert.from_reply(key, json.loads(r.stdout))
        assert cert.path.read_text().split()[:2] == json.loads(r.stdout)["certificate"].split()[:2]
        return cert

    def issue_at(self, key: str | os.PathLike[str], now: float, *, user: str, role: str,
                 ttl: int | None = None) -> Cert:
        """Issue as if the CA's clock read ``now`` (unix seconds): a real certificate, signed in the
        past or the future, through the library's ``Authority`` with an injected clock."""
        from ca.app import open_authority
        from ca.config import default_config
        from ca.models import Identity, SignRequest

        key = Path(key)
        cfg = default_config().with_overrides(state_dir=str(self.state_dir), policy=str(self.policy_path))
        authority = open_authority(cfg, clock=lambda: now)
        try:
            issued = authority.issue(
                Identity(user=user, auth_methods=("admin-offline",), mfa=True, operator="sshd-harness"),
                SignRequest(public_key=key.with_name(key.name + ".pub").read_text(), role=role, ttl=ttl),
             allow_unenrolled=True)
        finally:
            authority.close()
        cert_path_for(key).write_text(issued.certificate + "\n")
        return Cert.from_reply(key, issued.as_json())

    def audit_issued(self, serial: int) -> dict:
        """The audit row that issued ``serial`` (``iast-ca audit show --serial N --json``)."""
        r = self.cli("audit", "show", "--serial", str(serial), "--json")
        assert r.exit_code == 0, f"no audit row for serial {serial} ({r.exit_code}): {r.output}"
        return json.loads(r.stdout)

    def audit_events(self, serial: int) -> list[dict]:
        """Every audit event about ``serial`` (``iast-ca audit list --serial N --json``)."""
        r = self.cli("audit", "list", "--serial", str(serial), "--json", "--limit", "1000")
        assert r.exit_code == 0, r.output
        return json.loads(r.stdout)


# --------------------------------------------------------------------------
# sshd


def _free_port(addresses: Sequence[str]) -> int:
    """A TCP port that is free on every one of ``addresses`` right now."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((addresses[0], 0))
            port = s.getsockname()[1]
        try:
            for addr in addresses[1:]:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                    s.bind((addr, port))
        except OSError:
            continue
        return port
    raise RuntimeError("could not find a free loopback port")


def _can_bind(address: str) -> bool:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((address, 0))
        return True
    except OSError:
        return False


def _current_user() -> str:
    return pwd.getpwuid(os.geteuid()).pw_name


class SshdHarness:
    """One real ``sshd -D -e`` on a free loopback port, trusting the given CA keys.

    Files (all under ``workdir``): ``sshd_config``, ``host_ed25519_key``,
    ``trusted_user_ca_keys`` (TrustedUserCAKeys), ``principals/<user>``
    (AuthorizedPrincipalsFile ``principals/%u``), ``revoked_keys``
    (RevokedKeys; empty = nothing revoked), ``known_hosts`` (the client side),
    ``sshd.log`` (sshd's stderr at LogLevel VERBOSE).

    sshd reads the CA keys, principals and revocation files at every
    authentication, so a test may change them while it runs.
    """

    def __init__(self, workdir: str | os.PathLike[str], trusted_ca_keys: Iterable[str], *,
                 login_user: str | None = None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.sshd = sshd_path()
        self.ssh_bin = ssh_path()
        self.keygen = ssh_keygen_path()
        self.host = LOOPBACK
        # sshd can log in as its own user only, unless it runs as root; as root we log in
        # as root (PermitRootLogin prohibit-password allows certificates).
        self.login_user = login_user or _current_user()
        self.second_address = _can_bind(SECOND_LOOPBACK)
        self.config_path = self.workdir / "sshd_config"
        self.host_key = self.workdir / "host_ed25519_key"
        self.trusted_ca_path = self.workdir / "trusted_user_ca_keys"
        self.principals_dir = self.workdir / "principals"
        self.krl_path = self.workdir / "revoked_keys"
        self.pid_file = self.workdir / "sshd.pid"
        self.known_hosts = self.workdir / "known_hosts"
        self.log_path = self.workdir / "sshd.log"
        self.port: int | None = None
        self.proc: subprocess.Popen | None = None
        self._trusted = list(trusted_ca_keys)

    # -- lifecycle -----------------------------------------------------------

    def __enter__(self) -> SshdHarness:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> SshdHarness:
        """Write the files, check the config with ``sshd -t``, start sshd and wait until it listens."""
        for old in (self.host_key, self.host_key.with_name(self.host_key.name + ".pub")):
            old.unlink(missing_ok=True)  # ssh-keygen would ask before overwriting
        subprocess.run([self.keygen, "-q", "-t", "ed25519", "-N", "", "-C", "sshd-harness-host",
                        "-f", str(self.host_key)], check=True, capture_output=True)
        self.set_trusted_ca_keys(self._trusted)
        self.principals_dir.mkdir(exist_ok=True)
        self.set_revoked_keys(None)
        if os.geteuid() == 0:
            # The privilege-separation chroot directory (Debian creates it from a systemd unit).
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        last_error = ""
        for _ in range(_START_ATTEMPTS):
            addresses = [LOOPBACK] + ([SECOND_LOOPBACK] if self.second_address else [])
            self.port = _free_port(addresses)
            self._write_config(addresses)
            check = subprocess.run([self.sshd, "-t", "-f", str(self.config_path)], capture_output=True, text=True)
            assert check.returncode == 0, f"sshd -t rejected {self.config_path}:\n{check.stdout}{check.stderr}"
            self._write_known_hosts(addresses)
            mark = self.log_mark()
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(
                    [self.sshd, "-D", "-e", "-f", str(self.config_path)],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                )
            if self._wait_listening(addresses, mark):
                return self
            last_error = self.log(mark)
            self.stop()
        raise RuntimeError(f"sshd did not start after {_START_ATTEMPTS} attempts; log:\n{last_error}")

    def _write_config(self, addresses: Sequence[str]) -> None:
        lines = [f"ListenAddress {a}" for a in addresses] + [
            f"Port {self.port}",
            f"HostKey {self.host_key}",
            f"PidFile {self.pid_file}",
            "UsePAM no",
            "StrictModes no",
            "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes",
            "AuthorizedKeysFile none",
            f"TrustedUserCAKeys {self.trusted_ca_path}",
            f"AuthorizedPrincipalsFile {self.principals_dir}/%u",
            f"RevokedKeys {self.krl_path}",
            "LogLevel VERBOSE",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PermitUserEnvironment no",
            "X11Forwarding no",
            # Port forwarding is allowed by the server, so that only the certificate's
            # permit-port-forwarding extension decides.
            "AllowTcpForwarding yes",
            "PermitTTY yes",
            "PrintMotd no",
            "PrintLastLog no",
            "UseDNS no",
            "MaxStartups 100",
            "Subsystem sftp internal-sftp",
        ]
        self.config_path.write_text("\n".join(lines) + "\n")

    def _write_known_hosts(self, addresses: Sequence[str]) -> None:
        key = " ".join(self.host_key.with_name(self.host_key.name + ".pub").read_text().split()[:2])
        self.known_hosts.write_text("".join(f"[{a}]:{self.port} {key}\n" for a in addresses))

    def _wait_listening(self, addresses: Sequence[str], since: int) -> bool:
        deadline = time.monotonic() + _START_TIMEOUT
        want = [f"Server listening on {a} port {self.port}." for a in addresses]
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                return False
            text = self.log(since)
            if all(w in text for w in want):
                try:
                    with socket.create_connection((self.host, self.port), timeout=2):
                        return True
                except OSError:
                    pass
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        """Stop sshd (SIGTERM, then SIGKILL after 5 s). Idempotent."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- what sshd trusts --------------------------------------------------------

    def set_trusted_ca_keys(self, lines: Iterable[str]) -> None:
        """Replace the TrustedUserCAKeys file (read by sshd at every authentication)."""
        self._trusted = list(lines)
        _write_atomic(self.trusted_ca_path, "".join(line.rstrip("\n") + "\n" for line in self._trusted))

    def allow_principals(self, user: str, principals: Iterable[str]) -> None:
        """Write ``principals/<user>``: the certificate principals that may log in as ``user``."""
        names = list(principals)
        for name in names:
            assert name and not re.search(r"\s", name), f"bad principal {name!r}"
        _write_atomic(self.principals_dir / user, "".join(n + "\n" for n in names))

    def set_revoked_keys(self, krl: bytes | str | os.PathLike[str] | None) -> None:
        """Install a KRL as RevokedKeys: bytes, or the path of a KRL file, or None for an
        empty file (which sshd accepts as "nothing revoked")."""
        if krl is None:
            data = b""
        elif isinstance(krl, bytes):
            data = krl
        else:
            data = Path(krl).read_bytes()
        _write_atomic(self.krl_path, data)

    def make_krl(self, ca_pub_lines: Iterable[str], spec: str) -> bytes:
        """``ssh-keygen -k`` a KRL from a KRL spec (``serial: N``, ``id: KEYID``, ...)."""
        ca_pub = self.workdir / "krl-ca.pub"
        spec_file = self.workdir / "krl.spec"
        out = self.workdir / "krl.new"
        ca_pub.write_text("".join(line + "\n" for line in ca_pub_lines))
        spec_file.write_text(spec if spec.endswith("\n") else spec + "\n")
        out.unlink(missing_ok=True)
        subprocess.run([self.keygen, "-k", "-f", str(out), "-s", str(ca_pub), str(spec_file)],
                       check=True, capture_output=True)
        return out.read_bytes()

    # -- logging in ------------------------------------------------------------

    def ssh_argv(self, key_path: str | os.PathLike[str], user: str, command: str, extra_opts: Sequence[str] = (),
                 bind: str | None = None, tty: bool = False) -> list[str]:
        """The ``ssh`` command line :meth:`ssh` runs."""
        assert self.port is not None, "sshd is not started"
        argv = [
            self.ssh_bin, "-F", "/dev/null",
            "-o", "IdentitiesOnly=yes",
            "-o", "IdentityAgent=none",
            "-o", "BatchMode=yes",
            "-o", "PreferredAuthentications=publickey",
            "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={self.known_hosts}",
            "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "UpdateHostKeys=no",
            "-o", "ConnectTimeout=10",
            "-i", str(key_path),
            "-p", str(self.port),
            "-tt" if tty else "-T",
        ]
        if bind is not None:
            argv += ["-b", bind]
        argv += list(extra_opts)
        argv += [f"{user}@{self.host}", command]
        return argv

    def ssh(self, key_path: str | os.PathLike[str], user: str, command: str, extra_opts: Sequence[str] = (),
            bind: str | None = None, tty: bool = False, timeout: float = 20) -> subprocess.CompletedProcess:
        """Run the real ``ssh`` client with ``-i key_path`` (and ``key_path-cert.pub`` beside it)
        as ``user`` to this sshd; returns the CompletedProcess (text stdout/stderr, any exit code).

        ``bind`` is the client's source address (``ssh -b``); ``tty`` asks for a pty (``-tt``).
        """
        if bind is not None and bind == SECOND_LOOPBACK and not self.second_address:
            _missing(f"cannot bind {SECOND_LOOPBACK} on this machine (needed for ssh -b)")
        return subprocess.run(
            self.ssh_argv(key_path, user, command, extra_opts, bind, tty),
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
        )

    # -- sshd's log --------------------------------------------------------------

    def log(self, since: int = 0) -> str:
        """sshd's log (its stderr) so far, from byte offset ``since`` (see :meth:`log_mark`)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(since)
                # sshd -e ends its lines with CRLF; give tests plain lines.
                return f.read().decode("utf-8", "replace").replace("\r\n", "\n")
        except FileNotFoundError:
            return ""

    def log_mark(self) -> int:
        """The current end of the log: pass it as ``since`` to see only what comes after."""
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def wait_for_log(self, pattern: str, since: int = 0, timeout: float = 5.0) -> re.Match:
        """Wait until a log line after ``since`` matches the regex ``pattern``; return the match.

        Fails the test, showing the log, if none does within ``timeout`` seconds
        (sshd may write a line just after the client has exited).
        """
        rx = re.compile(pattern, re.MULTILINE)
        deadline = time.monotonic() + timeout
        while True:
            text = self.log(since)
            m = rx.search(text)
            if m:
                return m
            if time.monotonic() >= deadline:
                pytest.fail(f"sshd log has no line matching {pattern!r}; log since mark:\n{text}", pytrace=False)
            time.sleep(0.05)

    def connection_log(self, since: int, timeout: float = 5.0) -> str:
        """The log after ``since`` once sshd has finished with the (single) connection made after it."""
        self.wait_for_log(r"^(Connection closed by|Disconnected from|Closing connection to|"
                          r"Received disconnect from)", since, timeout)
        return self.log(since)


def _write_atomic(path: Path, data: bytes | str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    if isinstance(data, str):
        data = data.encode()
    tmp.write_bytes(data)
    os.replace(tmp, path)


# --------------------------------------------------------------------------
# Fixture factories


def make_ca_fixture(policy: str | Callable[[Path], str], *, scope: str = "module"):
    """A fixture that creates an :class:`IastCA` with ``policy`` (the TOML text, or a function of
    the CA's work directory returning it, e.g. to point force_command at a script there)."""

    @pytest.fixture(scope=scope)
    def _ca(tmp_path_factory: pytest.TempPathFactory) -> IastCA:
        work = tmp_path_factory.mktemp("iast-ca")
        text = policy(work) if callable(policy) else policy
        policy_path = work / "policy.toml"
        policy_path.write_text(text)
        return IastCA.create(work / "state", policy_path)

    return _ca


def make_sshd_fixture(ca_fixture: str | None = "iast_ca", *, trust: Callable[[], Iterable[str]] | None = None,
                      principals: Mapping[str, Iterable[str]] | None = None, scope: str = "module"):
    """A fixture that runs one :class:`SshdHarness` for the module (by default).

    sshd trusts the CA of the fixture named ``ca_fixture`` (an :class:`IastCA`),
    or whatever ``trust()`` returns. ``principals`` (user -> names) are
    written before the first login; tests may change them with
    :meth:`SshdHarness.allow_principals`.
    """

    @pytest.fixture(scope=scope)
    def _sshd(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshdHarness]:
        sshd_path()  # skip (or fail under CI) before doing any work
        if trust is not None:
            lines = list(trust())
        else:
            assert ca_fixture, "give ca_fixture or trust"
            lines = request.getfixturevalue(ca_fixture).trust_lines()
        harness = SshdHarness(tmp_path_factory.mktemp("sshd"), lines)
        with harness:
            for user, names in (principals or {}).items():
                harness.allow_principals(user, names)
            yield harness
            assert harness.running, f"sshd died during the tests; log:\n{harness.log()}"

    return _sshd
