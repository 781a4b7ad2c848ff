"""What every scenario shares: result rows, a fresh CA with enrolled users, server processes, CPU counters.

Nothing here is clever on purpose: a benchmark is only as good as the
reader's trust in how it measured, so each helper does one visible thing.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
BIN = Path(sys.executable).parent
IAST_CA = str(BIN / "iast-ca")
IAST_SSH = str(BIN / "iast-ssh")
CLK_TCK = os.sysconf("SC_CLK_TCK")

# The "dev" role of tests/conftest.py's TEST_POLICY: anyone, as themselves, up to 8 h.
BENCH_POLICY = """\
[defaults]
ttl = "1h"
max_ttl = "8h"
role = "dev"

[roles.dev]
description = "dev hosts as yourself"
members = ["*"]
principals = ["{user}"]
max_ttl = "8h"
extensions = ["permit-pty", "permit-port-forwarding"]
"""
# The certificate fields the dev role yields, for the baselines that sign "the same fields".
CERT_FIELDS = dict(
    version=1,
    permit_x11_forwarding=False, permit_agent_forwarding=False, permit_port_forwarding=True,
    permit_pty=True, permit_user_rc=False,
)
TTL = 3600
CLOCK_SKEW = 60

# A connection cap above any concurrency the benchmark uses (the default, 32, is exactly
# the largest client count: a 33rd connection racing a closing one would be refused). Every
# benchmark client comes from 127.0.0.1, so the per-address share (default 8) is raised too.
SERVER_CONFIG = "[server]\nmax_unauthenticated = 256\nmax_unauthenticated_per_address = 256\n"


class Skip(Exception):
    """A scenario that cannot run here; the message says why (it goes into the table and the JSON)."""


# --------------------------------------------------------------------------
# Results


@dataclass
class Row:
    """One line of the table: a figure, the baseline it is judged against, and the target.

    ``ratio`` is value / baseline; ``target`` is ``(">=" | "<=", number)`` on the ratio.
    """

    figure: str
    value: float | None
    unit: str = ""
    baseline: float | None = None
    baseline_name: str | None = None
    target: tuple[str, float] | None = None
    note: str | None = None
    ratio: float | None = field(default=None)
    met: bool | None = field(default=None)

    def __post_init__(self) -> None:
        if self.ratio is None and self.value is not None and self.baseline:
            self.ratio = self.value / self.baseline
        if self.target is not None and self.ratio is not None:
            op, x = self.target
            self.met = self.ratio >= x if op == ">=" else self.ratio <= x

    def as_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["target"] = f"{self.target[0]} {self.target[1]:g}" if self.target else None
        return d


@dataclass
class Outcome:
    """What one scenario returns: table rows, every figure it measured, and notes."""

    rows: list[Row] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def fmt_num(x: float | None, unit: str = "") -> str:
    if x is None:
        return "-"
    if unit == "%":
        return f"{x:.0f}%"
    ax = abs(x)
    s = f"{x:,.0f}" if ax >= 1000 else f"{x:.1f}" if ax >= 100 else f"{x:.2f}" if ax >= 1 else f"{x:.3g}"
    return f"{s} {unit}".strip()


# --------------------------------------------------------------------------
# Machine


def _version(argv: list[str]) -> str | None:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (r.stdout + r.stderr).strip().splitlines()[0] if (r.stdout + r.stderr).strip() else None


def machine_info() -> dict[str, Any]:
    """Enough about this machine to compare two result files honestly."""
    import asyncssh
    import cryptography

    cpu = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = None
    try:
        kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
        mem = round(kb / 1024 / 1024, 1)
    except (OSError, AttributeError):
        pass
    tmp = tempfile.gettempdir()
    fs = None
    try:
        fs = subprocess.run(["stat", "-f", "-c", "%T", tmp], capture_output=True, text=True).stdout.strip()
    except OSError:
        pass
    git = None
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "ca"], capture_output=True,
                               text=True).stdout.strip()
        git = head + ("+dirty(ca/)" if dirty else "")
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu": cpu,
        "mem_gib": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "asyncssh": asyncssh.__version__,
        "cryptography": cryptography.__version__,
        "sqlite": sqlite3.sqlite_version,
        "openssh": _version(["ssh", "-V"]),
        "tmp_dir": tmp,
        "tmp_fs": fs,
        "git": git,
        # Set in some environments: then no .pyc is written and ca/ is compiled at every start.
        "PYTHONDONTWRITEBYTECODE": os.environ.get("PYTHONDONTWRITEBYTECODE") or None,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


# --------------------------------------------------------------------------
# Numbers


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank on the sorted values); p in 0..100."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(p / 100 * len(s) + 0.5)) - 1))
    return s[k]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def cpu_seconds(pid: int, tree: bool = True) -> float:
    """utime+stime of ``pid`` (all its threads), plus its live descendants when ``tree``.

    From /proc/PID/stat, fields 14 and 15, in clock ticks (usually 10 ms:
    measure windows of a second of CPU or more).
    """
    pids = [pid] + (descendants(pid) if tree else [])
    total = 0
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 counting from 1)
    return total / CLK_TCK


def system_busy_seconds() -> float:
    """CPU seconds all CPUs spent busy since boot (/proc/stat: everything but idle and iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / CLK_TCK


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of each thread of ``pid`` (by native thread id)."""
    out = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return out


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------
# A fresh CA with enrolled users


@dataclass
class BenchCA:
    """A CA initialised in ``root/state`` with the bench policy and users ``user0..userN-1``.

    Each user has one enrolled Ed25519 key, ``root/keys/userI`` (OpenSSH
    private key, unencrypted); the same keys make the bare baseline server's
    authorized list, so both servers authenticate the same clients.
    """

    root: Path
    cfg: Any
    config_path: Path
    users: list[str]
    keys: dict[str, Path]

    @property
    def state_dir(self) -> Path:
        return self.cfg.state_dir

    @property
    def host_key(self) -> Path:
        return self.cfg.state_dir / "host-key"

    def host_key_line(self) -> str:
        return (self.cfg.state_dir / "host-key.pub").read_text().strip()

    def host_key_fingerprint(self) -> str:
        import asyncssh

        return asyncssh.import_public_key(self.host_key_line()).get_fingerprint("sha256")

    def ca_key_path(self) -> Path:
        """The active CA private key file (unencrypted: the bench CA has no passphrase)."""
        from ca.keys.keyring import Keyring

        ring = Keyring.load(self.cfg.state_dir)
        return self.cfg.state_dir / "ca-keys" / ring.active.name


def make_ca(root: Path, n_users: int = 1, database: str | None = None) -> BenchCA:
    """Initialise a CA (Ed25519, no passphrase) and enrol ``n_users`` users, one key each
    (in ``database``, a PostgreSQL URL, when given; else STATE/ca.db)."""
    import asyncssh
    from argon2 import PasswordHasher

    from ca.auth.users import UserStore
    from ca.config import default_config
    from ca.state import init_state
    from ca.store import open_store

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    policy = root / "policy.toml"
    policy.write_text(BENCH_POLICY)
    cfg = default_config().with_overrides(state_dir=str(root / "state"), policy=str(policy), database=database)
    init_state(cfg, "ed25519", None)
    config_path = root / "ca.toml"
    db_line = f'database = "{database}"\n' if database else ""
    config_path.write_text(f'state_dir = "{cfg.state_dir}"\npolicy = "{policy}"\n{db_line}{SERVER_CONFIG}')
    keydir = root / "keys"
    keydir.mkdir(exist_ok=True)
    # Enrolment hashes no password; the cheap hasher only keeps the store's dummy hash cheap to make.
    log = open_store(cfg.database_location)
    store = UserStore(log, hasher=PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
    users, keys = [], {}
    for i in range(n_users):
        name = f"user{i}"
        key = asyncssh.generate_private_key("ssh-ed25519", comment=name)
        path = keydir / name
        path.write_bytes(key.export_private_key("openssh"))
        path.chmod(0o600)
        path.with_suffix(".pub").write_bytes(key.export_public_key("openssh"))
        store.add(name, keys=[key.export_public_key("openssh").decode()], actor="bench")
        users.append(name)
        keys[name] = path
    log.close()
    return BenchCA(root=root, cfg=cfg, config_path=config_path, users=users, keys=keys)


# --------------------------------------------------------------------------
# Server processes


class ServerProcess:
    """A server child process logging JSON lines to a file; ``start`` waits for its "listening" line(s)."""

    def __init__(self, argv: list[str], logfile: Path, env: dict[str, str] | None = None):
        self.argv = argv
        self.logfile = Path(logfile)
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.pids: list[int] = []

    def start(self, listening: int = 1, timeout: float = 30) -> ServerProcess:
        self._log = open(self.logfile, "w")
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=self._log, env=self.env,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            recs = [r for r in self.records() if r.get("msg") == "listening"]
            if len(recs) >= listening:
                self.port = int(recs[0]["port"])
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.argv[0]} did not start listening:\n{self.logfile.read_text()[-3000:]}")

    def records(self) -> list[dict]:
        out = []
        try:
            text = self.logfile.read_text()
        except OSError:
            return out
        for line in text.splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                out.append({"msg": line})
        return out

    def cpu(self) -> float:
        assert self.proc is not None
        return cpu_seconds(self.proc.pid, tree=True)

    def stop(self, timeout: float = 30) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def iast_server(ca: BenchCA, logfile: Path, extra: list[str] = (), port: int = 0,
                listening: int = 1) -> ServerProcess:
    """``iast-ca --config CA serve --listen 127.0.0.1:PORT`` (the real service, as users run it)."""
    argv = [IAST_CA, "--config", str(ca.config_path), "serve", "--listen", f"127.0.0.1:{port}", *extra]
    return ServerProcess(argv, logfile).start(listening=listening)


def bare_server(ca: BenchCA, logfile: Path, preload_host_key: bool = False) -> ServerProcess:
    """The baseline: bench/bare_server.py with the same host key, CA key and enrolled keys."""
    authorized = ca.root / "bare-authorized"
    authorized.write_text("".join(f"{u} {ca.keys[u].with_suffix('.pub').read_text().strip()}\n" for u in ca.users))
    argv = [sys.executable, "-m", "bench.bare_server", "--listen", "127.0.0.1:0", "--host-key", str(ca.host_key),
            "--ca-key", str(ca.ca_key_path()), "--authorized", str(authorized)]
    if preload_host_key:
        argv.append("--preload-host-key")
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return ServerProcess(argv, logfile, env=env).start()


def workdir(name: str) -> Path:
    """A fresh scratch directory on the temp filesystem (removed by ``cleanup``)."""
    return Path(tempfile.mkdtemp(prefix=f"iast-bench-{name}-"))


def cleanup(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def ssh_keygen() -> str:
    path = shutil.which("ssh-keygen")
    if not path:
        raise Skip("ssh-keygen not found")
    return path
