"""Checks for the systemd units shipped in ``systemd/``.

Every unit with a ``[Service]`` section (timers and other units without one
are left out) must pass ``systemd-analyze verify`` and rate an overall
exposure of at most ``MAX_EXPOSURE`` in ``systemd-analyze security``. There is
no running systemd on build machines, hence ``--offline=true``.

The units start ``/usr/local/bin/iast-ca``, where ``pip install`` puts the
console script on a server. ``verify`` insists that every Exec*= binary
exists, so the tests check a copy in ``tmp_path`` that points at the
virtualenv's own script instead; the shipped file is left untouched.

``iast-ca.service`` also gets a content check (the directives the service
relies on) and a seccomp smoke test: its ``SystemCallFilter=``,
``SystemCallErrorNumber=``, ``RestrictAddressFamilies=`` and
``MemoryDenyWriteExecute=`` are applied with libseccomp, the way systemd
applies them, to a Python process that exercises the CA's stack (asyncssh,
cryptography, bcrypt, SQLite in WAL mode, an SSH round trip, SIGHUP and
sd_notify). It must behave exactly as it does without the filter.
"""

from __future__ import annotations

import ctypes.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
UNIT_DIR = REPO / "systemd"
CA_UNIT = UNIT_DIR / "iast-ca.service"

#: Highest acceptable "Overall exposure level" (0.0 best, 10.0 worst).
MAX_EXPOSURE = 2.0

#: Where the console scripts live on a server (ExecStart= paths).
INSTALLED_BIN = "/usr/local/bin"

ANALYZE = shutil.which("systemd-analyze") or (
    "/usr/bin/systemd-analyze" if os.access("/usr/bin/systemd-analyze", os.X_OK) else None
)
needs_analyze = pytest.mark.skipif(
    ANALYZE is None,
    reason="systemd-analyze not found (Debian: apt-get install systemd)",
)


# --------------------------------------------------------------------------
# Reading unit files
# --------------------------------------------------------------------------


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Parse a unit file into {section: {key: [values in order]}}.

    Follows systemd.syntax(7) as far as these units need: ``#`` and ``;``
    comments, a trailing backslash continues the line, a key may repeat.
    An empty assignment (``CapabilityBoundingSet=``) is kept as ``""``.
    """
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip()
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"assignment outside a section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not an assignment: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def service_units() -> list[Path]:
    """Unit files in systemd/ that define a [Service] section."""
    if not UNIT_DIR.is_dir():
        return []
    return sorted(
        p
        for p in UNIT_DIR.iterdir()
        if p.is_file() and "Service" in parse_unit(p.read_text())
    )


SERVICE_UNITS = service_units()
each_service_unit = pytest.mark.parametrize("unit", SERVICE_UNITS, ids=lambda p: p.name)


def verifiable_copy(unit: Path, tmp_path: Path) -> Path:
    """Copy ``unit`` (same file name) with /usr/local/bin/X replaced by this
    virtualenv's X, or by ``true`` when the virtualenv has no such script.

    Only our install location is rewritten: a wrong path to a system binary
    (``/bin/kil``) must still make verify fail.
    """
    venv_bin = Path(sys.executable).parent  # not resolved: keep the venv

    def local(match: re.Match[str]) -> str:
        script = venv_bin / match.group(2)
        target = script if os.access(script, os.X_OK) else Path(shutil.which("true") or "/bin/true")
        return f"{match.group(1)}{target}"

    text = re.sub(
        rf"^(Exec\w+=[-@:+!]*){re.escape(INSTALLED_BIN)}/([\w.-]+)",
        local,
        unit.read_text(),
        flags=re.MULTILINE,
    )
    copy = tmp_path / unit.name
    copy.write_text(text)
    return copy


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, SYSTEMD_COLORS="0", SYSTEMD_PAGER="cat", SYSTEMD_LOG_COLOR="0")
    assert ANALYZE is not None
    return subprocess.run(
        [ANALYZE, *args],
        capture_output=True,
        text=True,
        errors="replace",
        env=env,
        timeout=120,
    )


# --------------------------------------------------------------------------
# Every service unit
# --------------------------------------------------------------------------


def test_there_is_a_ca_unit():
    assert CA_UNIT in SERVICE_UNITS


@needs_analyze
@each_service_unit
def test_verify_is_clean(unit: Path, tmp_path: Path):
    copy = verifiable_copy(unit, tmp_path)
    result = analyze("verify", str(copy))
    output = result.stdout + result.stderr
    complaints = [line for line in output.splitlines() if unit.name in line]
    assert result.returncode == 0, output
    assert not complaints, output


@needs_analyze
@each_service_unit
def test_exposure_is_low(unit: Path, tmp_path: Path):
    copy = verifiable_copy(unit, tmp_path)
    result = analyze("security", "--offline=true", "--no-pager", str(copy))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    match = re.search(
        rf"Overall exposure level for {re.escape(unit.name)}: (\d+(?:\.\d+)?) (\w+)",
        output,
    )
    assert match, f"no overall exposure line in:\n{output}"
    exposure = float(match.group(1))
    print(f"{unit.name}: exposure {exposure} {match.group(2)}")
    assert exposure <= MAX_EXPOSURE, output


@each_service_unit
def test_hardening_basics(unit: Path):
    """Directives no service of ours should be without, analyzer or not."""
    service = parse_unit(unit.read_text())["Service"]

    def last(key: str) -> str | None:
        return service[key][-1] if key in service else None

    assert last("NoNewPrivileges") == "yes"
    assert last("CapabilityBoundingSet") == "", "give the service no capabilities"
    assert not last("AmbientCapabilities")
    assert last("ProtectSystem") == "strict"
    assert last("PrivateTmp") == "yes"
    assert last("PrivateDevices") == "yes"
    assert last("SystemCallArchitectures") == "native"
    assert last("MemoryDenyWriteExecute") == "yes"
    assert last("UMask") == "0077"
    # IPAddressDeny=any without an allow list cuts a network service off.
    if "any" in " ".join(service.get("IPAddressDeny", [])).split():
        assert any(service.get("IPAddressAllow", [])), "IPAddressDeny=any needs IPAddressAllow="


# --------------------------------------------------------------------------
# iast-ca.service in particular
# --------------------------------------------------------------------------


def seconds(span: str) -> float:
    """A systemd time span ("90", "90s", "1min 30s", "2m") in seconds."""
    units = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", span):
        total += float(number) * units[unit]
    return total


def test_ca_unit_contents():
    unit = parse_unit(CA_UNIT.read_text())
    service = unit["Service"]

    def only(key: str) -> str:
        values = service.get(key, [])
        assert len(values) == 1, f"{key}= should be set once, is {values}"
        return values[0]

    assert only("Type") == "notify"
    assert only("NotifyAccess") == "main"
    assert only("ExecStart") == f"{INSTALLED_BIN}/iast-ca serve --config /etc/iast-ca/ca.toml"
    assert re.fullmatch(r"(/usr)?/bin/kill -(HUP|SIGHUP|s HUP) \$MAINPID", only("ExecReload"))
    assert only("KillSignal") in ("SIGTERM", "TERM")
    assert seconds(only("TimeoutStopSec")) >= 30, "leave the server time to drain"
    assert only("Restart") == "on-failure"

    assert only("StateDirectory") == "iast-ca"
    assert only("StateDirectoryMode") == "0700"
    assert only("ConfigurationDirectory") == "iast-ca"
    environment = dict(
        item.split("=", 1) for value in service.get("Environment", []) for item in shlex.split(value)
    )
    assert environment.get("IAST_CA_STATE_DIR") == "/var/lib/iast-ca"

    credentials = service.get("LoadCredentialEncrypted", []) + service.get("LoadCredential", [])
    assert any(c.startswith("ca-passphrase:") for c in credentials), credentials
    assert "ca-passphrase:/etc/iast-ca/ca-passphrase.cred" in service.get(
        "LoadCredentialEncrypted", []
    )

    assert service.get("DynamicUser") == ["yes"] or service.get("User") == ["iast-ca"]

    expected = {
        "ProtectHome": "yes",
        "PrivateUsers": "yes",
        "DevicePolicy": "closed",
        "RestrictSUIDSGID": "yes",
        "LockPersonality": "yes",
        "RestrictRealtime": "yes",
        "RestrictNamespaces": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "ProtectControlGroups": "yes",
        "ProtectClock": "yes",
        "ProtectHostname": "yes",
        "ProtectProc": "invisible",
        "ProcSubset": "pid",
        "KeyringMode": "private",
        "RemoveIPC": "yes",
    }
    assert {key: service.get(key, [None])[-1] for key in expected} == expected
    assert set(" ".join(service["RestrictAddressFamilies"]).split()) == {
        "AF_INET",
        "AF_INET6",
        "AF_UNIX",
    }
    assert service["SystemCallFilter"] == ["@system-service", "~@privileged @resources"]


# --------------------------------------------------------------------------
# Seccomp smoke test: the CA's stack under the unit's own filters
# --------------------------------------------------------------------------

# Runs in a fresh interpreter; prints a JSON report. "steps" must come out the
# same with and without the filters; "controls" are things the filters exist
# to stop, so they must fail under them.
WORKLOAD = textwrap.dedent(
    r'''
    import asyncio, errno, importlib, json, mmap, os, pkgutil, signal, socket, sys, time

    work = sys.argv[1]
    steps, controls = {}, {}

    def step(name):
        def run(fn):
            try:
                result = fn()
                if asyncio.iscoroutine(result):
                    result = asyncio.run(result)
                steps[name] = "ok" if result is None else result
            except Exception as exc:  # report, do not stop
                steps[name] = f"error: {type(exc).__name__}: {exc}"
        return run

    def control(name):
        def run(fn):
            try:
                fn()
                controls[name] = "allowed"
            except OSError as exc:
                controls[name] = f"denied: {errno.errorcode.get(exc.errno, exc.errno)}"
        return run

    @step("import stack")
    def _():
        import asyncssh, bcrypt, click, cryptography, sqlite3, sqlite_utils  # noqa: F401

    @step("import ca modules")
    def _():
        import ca
        results = {}
        for info in pkgutil.walk_packages(ca.__path__, "ca."):
            try:
                importlib.import_module(info.name)
                results[info.name] = "ok"
            except Exception as exc:
                results[info.name] = type(exc).__name__
        return results

    @step("keys and certificates")
    def _():
        import asyncssh
        ca_key = asyncssh.generate_private_key("ssh-ed25519")
        rsa_key = asyncssh.generate_private_key("ssh-rsa", key_size=3072)
        user_key = asyncssh.generate_private_key("ssh-ed25519")
        now = int(time.time())
        for signer in (ca_key, rsa_key):
            cert = signer.generate_user_certificate(
                user_key, "alice@ops#1", serial=1, principals=["alice"],
                valid_after=now - 60, valid_before=now + 3600,
                permit_x11_forwarding=False, permit_agent_forwarding=False,
                permit_port_forwarding=False, permit_user_rc=False,
            )
            asyncssh.import_certificate(cert.export_certificate())
        # Encrypted at rest with a passphrase (bcrypt KDF), as the CA key is.
        blob = ca_key.export_private_key("openssh", passphrase="correct horse")
        again = asyncssh.import_private_key(blob, passphrase="correct horse")
        assert again.export_public_key() == ca_key.export_public_key()

    @step("argon2id")
    def _():
        try:
            from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
        except ImportError:
            return "unavailable"
        kdf = Argon2id(salt=b"0123456789abcdef", length=32, iterations=2, lanes=1,
                       memory_cost=19 * 1024)
        kdf.derive(b"password")

    @step("sqlite WAL")
    def _():
        import sqlite_utils
        db = sqlite_utils.Database(os.path.join(work, "audit.db"))
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        with db.conn:
            db.execute("BEGIN IMMEDIATE")
            db["events"].insert_all({"n": i, "blob": os.urandom(64).hex()} for i in range(2000))
        # A sort too big for memory spills to a temporary file.
        db.execute("PRAGMA cache_size=-64")
        rows = db.execute("SELECT n FROM events ORDER BY blob").fetchall()
        assert len(rows) == 2000
        return db.execute("PRAGMA journal_mode").fetchone()[0]

    @step("ssh round trip, threads, SIGHUP")
    async def _():
        import asyncssh

        class Server(asyncssh.SSHServer):
            def begin_auth(self, username):
                return True
            def password_auth_supported(self):
                return True
            def validate_password(self, username, password):
                return password == "pw"

        async def handle(process):
            line = await process.stdin.readline()
            process.stdout.write("echo:" + line)
            process.exit(0)

        host_key = asyncssh.generate_private_key("ssh-ed25519")
        server = await asyncssh.create_server(
            Server, "127.0.0.1", 0, server_host_keys=[host_key], process_factory=handle
        )
        port = server.sockets[0].getsockname()[1]
        async with asyncssh.connect(
            "127.0.0.1", port, username="alice", password="pw", client_keys=None,
            agent_path=None, known_hosts=([host_key.convert_to_public()], [], []),
        ) as conn:
            result = await conn.run("x", input="hi\n")
        server.close()
        await server.wait_closed()
        assert result.stdout == "echo:hi\n", result

        assert await asyncio.to_thread(sum, range(10)) == 45
        hup = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, hup.set)
        os.kill(os.getpid(), signal.SIGHUP)
        await asyncio.wait_for(hup.wait(), 5)

    @step("resolve and bind the wildcard address")
    def _():
        # glibc asks netlink which address families are configured
        # (AI_ADDRCONFIG); with netlink refused it must fall back, not fail.
        flags = socket.AI_PASSIVE | socket.AI_ADDRCONFIG
        infos = socket.getaddrinfo(None, 2222, type=socket.SOCK_STREAM, flags=flags)
        infos += socket.getaddrinfo("localhost", 2222, type=socket.SOCK_STREAM, flags=flags)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("0.0.0.0", 0))
            s.listen()
        return sorted({f"{family.name} {addr[0]}" for family, _, _, _, addr in infos})

    @step("sd_notify and IPv6")
    def _():
        path = os.path.join(work, "notify")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as rx, \
             socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as tx:
            rx.bind(path)
            tx.sendto(b"READY=1", path)
            assert rx.recv(64) == b"READY=1"
        try:
            socket.socket(socket.AF_INET6, socket.SOCK_STREAM).close()
        except OSError as exc:  # a kernel without IPv6 says so either way
            return f"no IPv6 here: {errno.errorcode.get(exc.errno)}"

    @control("mmap write+execute")
    def _():
        mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC).close()

    @control("netlink socket")
    def _():
        socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0).close()

    @control("@resources: sched_setaffinity")
    def _():
        os.sched_setaffinity(0, os.sched_getaffinity(0))

    @control("@privileged: chown")
    def _():
        path = os.path.join(work, "chown-me")
        open(path, "w").close()
        os.chown(path, os.getuid(), os.getgid())

    print(json.dumps({"steps": steps, "controls": controls}))
    '''
)

# Installs the filters described in a JSON file with libseccomp, then execs
# the rest of the command line, which inherits them (as ExecStart= does).
LAUNCHER = textwrap.dedent(
    r'''
    import ctypes, ctypes.util, json, os, sys

    spec = json.load(open(sys.argv[1]))
    argv = sys.argv[2:]

    lib = ctypes.CDLL(ctypes.util.find_library("seccomp"), use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]

    class ArgCmp(ctypes.Structure):
        _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                    ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]

    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.POINTER(ArgCmp)]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]

    ALLOW = 0x7FFF0000
    def ERRNO(n): return 0x00050000 | (n & 0xFFFF)
    CMP_EQ, CMP_MASKED_EQ = 4, 7

    def nr(name):
        return lib.seccomp_syscall_resolve_name(name.encode())

    def rule(ctx, action, name, *cmps):
        number = nr(name)
        if number < 0:
            return False  # unknown to this libseccomp: systemd skips it too
        array = (ArgCmp * max(len(cmps), 1))(*[ArgCmp(*c) for c in cmps])
        return lib.seccomp_rule_add_array(ctx, action, number, len(cmps), array) == 0

    def load(ctx):
        rc = lib.seccomp_load(ctx)
        if rc != 0:
            sys.exit(f"seccomp_load failed: {rc}")

    # MemoryDenyWriteExecute=yes, as systemd 252 implements it
    # (seccomp_memory_deny_write_execute): no mapping both writable and
    # executable, no mprotect() to executable, no SHM_EXEC.
    if spec["mdwe"]:
        ctx = lib.seccomp_init(ALLOW)
        W, X, SHM_EXEC = 0x2, 0x4, 0o100000
        for name in ("mmap", "mmap2"):
            rule(ctx, ERRNO(1), name, (2, CMP_MASKED_EQ, W | X, W | X))
        for name in ("mprotect", "pkey_mprotect"):
            rule(ctx, ERRNO(1), name, (2, CMP_MASKED_EQ, X, X))
        rule(ctx, ERRNO(1), "shmat", (2, CMP_MASKED_EQ, SHM_EXEC, SHM_EXEC))
        load(ctx)

    # SystemCallFilter= allow list with SystemCallErrorNumber=, and
    # RestrictAddressFamilies= as conditions on socket(). Loaded last: it does
    # not allow seccomp() itself.
    ctx = lib.seccomp_init(ERRNO(spec["errno"]))
    for name in spec["allow"]:
        if name == "socket" and spec["families"] is not None:
            for family in spec["families"]:
                rule(ctx, ALLOW, "socket", (0, CMP_EQ, family, 0))
        else:
            rule(ctx, ALLOW, name)
    load(ctx)

    os.execv(argv[0], argv)
    '''
)


def syscall_groups() -> dict[str, list[str]]:
    """``@group`` -> members (names and nested @groups), from this systemd."""
    groups: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in analyze("syscall-filter", "--no-pager").stdout.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.strip(), [])
        elif line.startswith("    ") and current is not None:
            entry = line.strip()
            if entry and not entry.startswith("#"):
                current.append(entry)
        else:
            current = None
    return groups


def expand(entry: str, groups: dict[str, list[str]]) -> set[str]:
    if not entry.startswith("@"):
        return {entry}
    assert entry in groups, f"unknown syscall group {entry}"
    return set().union(*(expand(member, groups) for member in groups[entry]))


def allowed_syscalls(service: dict[str, list[str]]) -> set[str]:
    """The allow list systemd builds from SystemCallFilter= lines.

    The first line, not starting with ``~``, sets an allow list (plus
    @default, which systemd always adds); each later ``~`` line removes.
    """
    groups = syscall_groups()
    lines = service["SystemCallFilter"]
    assert lines and not lines[0].startswith("~"), "expected an allow list first"
    allowed = expand("@default", groups)
    for line in lines:
        deny = line.startswith("~")
        for entry in line.lstrip("~").split():
            assert ":" not in entry, "per-call errno is not modelled here"
            names = expand(entry, groups)
            allowed = allowed - names if deny else allowed | names
    return allowed


def run_workload(tmp_path: Path, name: str, prefix: list[str]) -> dict:
    work = tmp_path / name
    work.mkdir()
    script = tmp_path / "workload.py"
    script.write_text(WORKLOAD)
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", HOME=str(work))
    result = subprocess.run(
        [*prefix, sys.executable, str(script), str(work)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, f"{name} run failed:\n{result.stdout}\n{result.stderr}"
    return json.loads(result.stdout.strip().splitlines()[-1])


@needs_analyze
@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="seccomp is Linux-only")
@pytest.mark.skipif(ctypes.util.find_library("seccomp") is None, reason="libseccomp not found")
def test_ca_stack_runs_under_the_units_seccomp_filters(tmp_path: Path):
    import errno
    import socket

    service = parse_unit(CA_UNIT.read_text())["Service"]
    families = None
    if "RestrictAddressFamilies" in service:
        names = " ".join(service["RestrictAddressFamilies"]).split()
        assert not names[0].startswith("~"), "expected an allow list of families"
        families = [int(getattr(socket, name)) for name in names]
    spec = {
        "allow": sorted(allowed_syscalls(service)),
        "errno": getattr(errno, service.get("SystemCallErrorNumber", ["EPERM"])[-1]),
        "families": families,
        "mdwe": service.get("MemoryDenyWriteExecute", ["no"])[-1] == "yes",
    }
    spec_file = tmp_path / "filter.json"
    spec_file.write_text(json.dumps(spec))
    launcher = tmp_path / "launcher.py"
    launcher.write_text(LAUNCHER)

    plain = run_workload(tmp_path, "plain", [])
    sandboxed = run_workload(tmp_path, "sandboxed", [sys.executable, str(launcher), str(spec_file)])

    for name, outcome in plain["steps"].items():
        if name != "import ca modules":  # other people's work in progress
            assert not str(outcome).startswith("error"), f"{name}: {outcome}"
    assert sandboxed["steps"] == plain["steps"]
    denied = {"denied: EPERM", "denied: EAFNOSUPPORT", f"denied: {errno.errorcode[spec['errno']]}"}
    assert all(outcome in denied for outcome in sandboxed["controls"].values()), sandboxed
