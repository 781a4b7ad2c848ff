"""A throw-away PostgreSQL server for the benchmarks: initdb + pg_ctl in a temporary directory.

Unlike the test suite's (tests/pg_harness.py) it keeps ``fsync`` on, so a
certificate's durable commit costs what it would in production
(``synchronous_commit=on``, one WAL flush per COMMIT) and the figures compare
with SQLite's ``synchronous=FULL`` fairly.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from .common import Skip


def _bin(name: str) -> str | None:
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.access(os.path.join(d, name), os.X_OK):
            return os.path.join(d, name)
    return shutil.which(name)


class BenchPostgres:
    def __init__(self) -> None:
        self.initdb, self.pg_ctl = _bin("initdb"), _bin("pg_ctl")
        if not self.initdb or not self.pg_ctl:
            raise Skip("PostgreSQL's initdb/pg_ctl not found (make postgres installs them)")
        self.as_user: list[str] = []
        self.root = Path(tempfile.mkdtemp(prefix="iast-bench-pg-"))
        (self.root / "sock").mkdir()
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            for p in (self.root, self.root / "sock"):
                os.chown(p, pw.pw_uid, pw.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.n = 0

    def _run(self, *cmd: str) -> None:
        subprocess.run([*self.as_user, *cmd], check=True, capture_output=True, timeout=120)

    def __enter__(self) -> BenchPostgres:
        self._run(self.initdb, "-D", str(self.root / "data"), "-A", "trust", "-U", "postgres", "-E", "UTF8",
                  "--no-locale")
        self._run(self.pg_ctl, "-D", str(self.root / "data"), "-l", str(self.root / "log"), "-w", "-o",
                  f"-k {self.root / 'sock'} -p {self.port} -c listen_addresses='' -c max_connections=100", "start")
        return self

    def __exit__(self, *exc) -> None:
        subprocess.run([*self.as_user, self.pg_ctl, "-D", str(self.root / "data"), "-m", "immediate", "-w", "stop"],
                       capture_output=True, timeout=120)
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://postgres@/{db}?host={self.root / 'sock'}&port={self.port}"

    def create_database(self) -> str:
        import psycopg

        self.n += 1
        name = f"bench{self.n}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name} TEMPLATE template0")  # a name made here
        return self.url(name)

    def server_cpu_seconds(self) -> float:
        """CPU time (user + system) of every process of the server so far (the backends' included)."""
        total = 0.0
        tick = os.sysconf("SC_CLK_TCK")
        pid_file = self.root / "data" / "postmaster.pid"
        if not pid_file.exists():
            return 0.0
        root = int(pid_file.read_text().split()[0])
        for stat in glob.glob("/proc/[0-9]*/stat"):
            try:
                fields = Path(stat).read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            pid, ppid = int(stat.split("/")[2]), int(fields[1])
            if pid == root or ppid == root:
                total += (int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])) / tick
        return total
