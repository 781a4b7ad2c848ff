"""The PostgreSQL backend as the service uses it: outages, schema versions, replicas, db copy.

Each test module run starts its own PostgreSQL server (tests/pg_harness.py) for the tests that
stop and restart it, so the session's shared server is never taken down under other tests.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import asyncssh
import pytest
from argon2 import PasswordHasher

from ca.app import open_audit
from ca.auth.users import UserStore
from ca.config import default_config
from ca.errors import AuditError, AuditUnavailable
from ca.state import init_state
from ca.store import open_store

from .conftest import make_key
from .pg_harness import start_server
from .service_harness import IAST_CA, CAProcess

CHEAP = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


@pytest.fixture(scope="module")
def own_pg():
    """A PostgreSQL server of this module's own, that tests may stop and start."""
    server = start_server()
    yield server
    server.destroy()


def make_ca(tmp_path: Path, policy_file: Path, url: str, name: str = "state"):
    cfg = default_config().with_overrides(state_dir=str(tmp_path / name), policy=str(policy_file), database=url)
    init_state(cfg, "ed25519", None)
    return cfg


def enrol(cfg, tmp_path: Path, user: str = "alice") -> Path:
    key = make_key(tmp_path, name=f"{user}_enrolled")
    log = open_audit(cfg)
    try:
        UserStore(log, hasher=CHEAP).add(user, keys=[key.with_suffix(".pub").read_text()], actor="test")
    finally:
        log.close()
    return key


class KeptSession:
    """One authenticated SSH connection to the CA, kept open, that runs commands on demand."""

    def __init__(self, ca: CAProcess, user: str, key: Path):
        self.loop = asyncio.new_event_loop()
        self.conn = self.loop.run_until_complete(asyncssh.connect(
            "127.0.0.1", ca.port, username=user, known_hosts=str(ca.known_hosts()),
            client_keys=[str(key)], agent_path=None))

    def run(self, command: str, input: str | None = None) -> asyncssh.SSHCompletedProcess:
        return self.loop.run_until_complete(asyncio.wait_for(self.conn.run(command, input=input, check=False), 30))

    def close(self) -> None:
        self.conn.close()
        self.loop.run_until_complete(self.conn.wait_closed())
        self.loop.close()


# -- outages (docs/security.md: an outage fails requests cleanly and recovers by itself) --------------


def test_a_database_outage_fails_sign_cleanly_and_the_service_recovers(own_pg, tmp_path, policy_file):
    url = own_pg.create_database()
    cfg = make_ca(tmp_path, policy_file, url)
    key = enrol(cfg, tmp_path)
    pub = make_key(tmp_path, name="session").with_suffix(".pub").read_text()
    ca = CAProcess(cfg.state_dir, cfg.policy_path, workdir=tmp_path, database=url).start()
    session = KeptSession(ca, "alice", key)
    received = []
    try:
        r = session.run("sign --json", input=pub)
        assert r.exit_status == 0, r.stderr
        received.append(json.loads(r.stdout)["serial"])

        own_pg.stop("fast")
        try:
            for _ in range(3):
                started = time.monotonic()
                r = session.run("sign --json", input=pub)
                assert time.monotonic() - started < 10  # at once, not after a hang
                assert r.exit_status == 1, (r.stdout, r.stderr)
                assert json.loads(r.stdout)["error"] == "audit_unavailable"
                assert "certificate" not in r.stdout and "cert-v01" not in r.stdout
                assert len(r.stderr.strip().splitlines()) == 1 and "unavailable" in r.stderr
            assert ca.proc.poll() is None  # still running
        finally:
            own_pg.start()

        # Back without a restart: the same replica (and the same kept connection) serves again.
        deadline = time.monotonic() + 20
        while True:
            r = session.run("sign --json", input=pub)
            if r.exit_status == 0:
                received.append(json.loads(r.stdout)["serial"])
                break
            assert json.loads(r.stdout)["error"] == "audit_unavailable"
            assert time.monotonic() < deadline, "the service did not recover"
            time.sleep(0.5)
        # New connections too.
        r = ca.ssh("alice", key, "sign --json", input=pub)
        assert r.returncode == 0, r.stderr
        received.append(json.loads(r.stdout)["serial"])
    finally:
        session.close()
        ca.stop()
    log = open_store(url)
    try:
        assert log.verify().count >= 4
        issued = log.events(kind="issued", limit=None)
        assert sorted(e.serial for e in issued) == sorted(received)  # every certificate received, no other
    finally:
        log.close()


def test_the_store_reconnects_by_itself_after_a_restart(own_pg):
    url = own_pg.create_database()
    store = open_store(url)
    try:
        store.record("before", {})
        own_pg.restart("fast")
        # The idle session died with the restart: the next write opens a new one, without an error.
        assert store.record("after", {}) == 2
        # A transaction whose session dies in the middle fails, and leaves nothing.
        with pytest.raises(AuditUnavailable):
            with store.transaction() as tx:
                tx.append("lost", {})
                own_pg.restart("fast")
                tx.append("lost too", {})
        assert store.record("again", {}) == 3
        assert [e.kind for e in store.stream()] == ["before", "after", "again"]
        store.verify()
    finally:
        store.close()


def test_serve_against_a_database_that_never_answers_exits(tmp_path, policy_file, pg_url):
    cfg = make_ca(tmp_path, policy_file, pg_url)
    # A listener that accepts TCP connections and never says a word.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    port = silent.getsockname()[1]
    dead = f"postgresql://iast:secret-pw@127.0.0.1:{port}/ca"
    conf = tmp_path / "dead.toml"
    conf.write_text(f'state_dir = "{cfg.state_dir}"\npolicy = "{cfg.policy_path}"\ndatabase = "{dead}"\n')
    try:
        started = time.monotonic()
        r = subprocess.run([IAST_CA, "--config", str(conf), "serve", "--listen", "127.0.0.1:0"],
                           capture_output=True, text=True, timeout=60)
        took = time.monotonic() - started
    finally:
        silent.close()
    assert r.returncode == 1, r.stderr
    assert took < 30
    (line,) = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert "unavailable" in line and f"postgresql://iast@127.0.0.1:{port}/ca" in line
    assert "secret-pw" not in r.stderr  # never the password


def test_the_url_is_shown_without_its_password(pg_url):
    from ca.store.postgres.connection import redact

    assert redact("postgresql://ca:hunter2@db.example:5432/iast") == "postgresql://ca@db.example:5432/iast"
    assert "hunter2" not in redact("postgresql://ca@db/iast?password=hunter2")
    store = open_store(pg_url)
    try:
        assert "password" not in str(store.path)
    finally:
        store.close()
