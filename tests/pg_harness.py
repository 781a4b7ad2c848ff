"""A real PostgreSQL server for the tests: ``initdb`` and ``pg_ctl`` into a temporary directory.

The server listens on a Unix socket only (in its own directory, on a free
port number), trusts local connections, and is stopped at the end of the
session. Each test that needs a database gets a fresh one (``fresh_url``),
so tests never see each other's rows. Nothing is mocked: the backend under
test talks to the real server over libpq.

When the binaries are missing the ``postgres`` fixture skips with a loud
reason, except under ``CI=true`` where it fails (``make test`` installs
Debian's ``postgresql`` when it is missing: see the Makefile's ``postgres``
target). Run as root (CI), the server runs as the ``postgres`` user that
Debian's package creates (initdb refuses root).

``fsync=off``: the test cluster's commits are not forced to disk, which
keeps the suite fast; durability across a *client's* ``kill -9`` still holds
(the server has the commit), and the production setting is documented in
README.md ("Run several replicas").
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

_COUNTER = itertools.count(1)


def _ci() -> bool:
    return os.environ.get("CI", "").strip().lower() == "true"


def skip_or_fail(reason: str) -> None:
    if _ci():
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(f"!!! POSTGRESQL TESTS NOT RUN: {reason} !!!")


def find_pg_bin(name: str) -> str | None:
    """``initdb``/``pg_ctl``: Debian keeps them in /usr/lib/postgresql/VERSION/bin (newest first), else PATH."""
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: [int(x) if x.isdigit() else 0
                                                                            for x in p.split("/")[-2].split(".")],
                    reverse=True):
        if os.access(os.path.join(d, name), os.X_OK):
            return os.path.join(d, name)
    return shutil.which(name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgServer:
    """One PostgreSQL cluster in a temporary directory."""

    def __init__(self) -> None:
        self.initdb = find_pg_bin("initdb")
        self.pg_ctl = find_pg_bin("pg_ctl")
        if not self.initdb or not self.pg_ctl:
            skip_or_fail("PostgreSQL's initdb/pg_ctl not found (apt-get install postgresql, or `make postgres`)")
        self.as_user: list[str] = []
        self.owner: tuple[int, int] | None = None
        if os.geteuid() == 0:
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                skip_or_fail("running as root and no 'postgres' user to run the server as")
            self.owner = (pw.pw_uid, pw.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.root = Path(tempfile.mkdtemp(prefix="iast-pg-"))
        self.data = self.root / "data"
        self.sock = self.root / "sock"
        self.sock.mkdir()
        self.log = self.root / "server.log"
        if self.owner:
            for p in (self.root, self.sock):
                os.chown(p, *self.owner)
        self.port = _free_port()
        self.user = "postgres"

    def _run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([*self.as_user, *cmd], capture_output=True, text=True, check=check, timeout=120)

    def init(self) -> None:
        r = self._run(self.initdb, "-D", str(self.data), "-A", "trust", "-U", self.user, "-E", "UTF8",
                      "--locale=C.UTF-8", "--no-sync", check=False)
        if r.returncode != 0:
            r = self._run(self.initdb, "-D", str(self.data), "-A", "trust", "-U", self.user, "-E", "UTF8",
                          "--no-locale", "--no-sync", check=False)
        if r.returncode != 0:
            pytest.fail(f"initdb failed: {r.stderr.strip()}", pytrace=False)

    def start(self) -> None:
        opts = (f"-k {self.sock} -p {self.port} -c listen_addresses='' -c fsync=off -c full_page_writes=off"
                " -c max_connections=200 -c shared_buffers=32MB")
        r = self._run(self.pg_ctl, "-D", str(self.data), "-l", str(self.log), "-o", opts, "-w", "-t", "60",
                      "start", check=False)
        if r.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            pytest.fail(f"pg_ctl start failed: {r.stderr.strip()} {log[-2000:]}", pytrace=False)

    def stop(self, mode: str = "fast") -> None:
        self._run(self.pg_ctl, "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{self.user}@/{dbname}?host={self.sock}&port={self.port}"

    def create_database(self, name: str | None = None) -> str:
        """A new, empty database; returns its URL."""
        import psycopg

        name = name or f"t{os.getpid()}_{next(_COUNTER)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')  # name made here, never user input
        return self.url(name)

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


def start_server() -> PgServer:
    server = PgServer()
    server.init()
    for attempt in range(3):  # a free port can be taken before the server binds it
        try:
            server.start()
            return server
        except pytest.fail.Exception:
            if attempt == 2:
                raise
            server.port = _free_port()
            time.sleep(0.2)
    return server
