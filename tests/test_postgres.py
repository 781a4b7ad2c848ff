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
from ca.store import SCHEMA_VERSION, open_store

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


def test_a_database_restart_mid_load(own_pg, tmp_path, policy_file):
    """pg_ctl restart -m fast under load: requests in the gap fail cleanly (exit 1, no certificate),
    the service resumes without a restart, the chain verifies."""
    import threading

    url = own_pg.create_database()
    cfg = make_ca(tmp_path, policy_file, url)
    key = enrol(cfg, tmp_path)
    pub = make_key(tmp_path, name="session").with_suffix(".pub").read_text()
    ca = CAProcess(cfg.state_dir, cfg.policy_path, workdir=tmp_path, database=url).start()
    received, failed, stop = [], [], threading.Event()

    def load() -> None:
        while not stop.is_set():
            r = ca.ssh("alice", key, "sign --json", input=pub, timeout=60)
            if r.returncode == 0:
                received.append(json.loads(r.stdout)["serial"])
            else:
                failed.append((r.returncode, r.stdout, r.stderr))
                assert "ssh-ed25519-cert" not in r.stdout

    threads = [threading.Thread(target=load) for _ in range(3)]
    try:
        for t in threads:
            t.start()
        time.sleep(1.0)
        own_pg.restart("fast")
        time.sleep(1.5)
        stop.set()
        for t in threads:
            t.join(90)
        before = len(received)
        # Serving again, with no restart of the service.
        r = ca.ssh("alice", key, "sign --json", input=pub)
        assert r.returncode == 0, r.stderr
        received.append(json.loads(r.stdout)["serial"])
        assert ca.proc.poll() is None and before > 0
    finally:
        stop.set()
        ca.stop()
    for status, out, err in failed:  # a refusal is one line: audit_unavailable, or the login refused
        assert status in (1, 255), (status, out, err)
        if status == 1:
            assert json.loads(out)["error"] == "audit_unavailable"
    log = open_store(url)
    try:
        log.verify()
        issued = [e.serial for e in log.events(kind="issued", limit=None)]
        assert set(received) <= set(issued) and len(set(issued)) == len(issued)
        # A COMMIT cut off by the restart may have landed without its reply; never more than one per client.
        assert len(issued) - len(received) <= 3
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


# -- schema versions and `iast-ca db migrate` ----------------------------------------------------


def _set_version(url: str, version: int) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE schema_meta SET version = %s", (version,))


def test_serve_refuses_another_schema_version_and_db_migrate_fixes_an_older_one(tmp_path, policy_file, pg_url):
    cfg = make_ca(tmp_path, policy_file, pg_url)
    conf = tmp_path / "ca.toml"
    conf.write_text(f'state_dir = "{cfg.state_dir}"\npolicy = "{cfg.policy_path}"\ndatabase = "{pg_url}"\n')
    serve = [IAST_CA, "--config", str(conf), "serve", "--listen", "127.0.0.1:0"]

    # As an iast-ca of PostgreSQL version 3 made it: no used_tokens (4), no join_tokens (5).
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("DROP TABLE used_tokens")
        conn.execute("DROP TABLE join_tokens")
    _set_version(pg_url, 3)
    r = subprocess.run(serve, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "run 'iast-ca db migrate'" in r.stderr, r.stderr
    r = subprocess.run([IAST_CA, "--config", str(conf), "db", "migrate", "--json"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["schema_version"] == SCHEMA_VERSION
    store = open_store(pg_url, migrate=False)  # current now: opens without migrating
    assert store.verify().count == 1
    # The tables and triggers of versions 4 and 5 are there: a join token is used once, never changed.
    with store.transaction() as tx:
        assert tx.tokens.use("k", "https://idp", expires_at=100, now=1) and not tx.tokens.use("k", "x", 100, 1)
        tx.join_tokens.insert("jt", "ab" * 32, "web1", "web", 1, 100, 1)
        assert tx.join_tokens.mark_used("jt", 2, 5) and not tx.join_tokens.mark_used("jt", 3, 6)
    store.close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        for statement in ("UPDATE join_tokens SET used_at = NULL", "DELETE FROM join_tokens"):
            with pytest.raises(psycopg.Error, match="join token"):
                conn.execute(statement)

    _set_version(pg_url, 99)  # made by a newer iast-ca
    r = subprocess.run(serve, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "schema version 99" in r.stderr and "upgrade iast-ca" in r.stderr, r.stderr
    with pytest.raises(AuditError, match="schema version 99"):
        open_store(pg_url)  # db migrate never downgrades


def test_init_refuses_a_database_that_holds_a_ca(tmp_path, policy_file, pg_url):
    make_ca(tmp_path, policy_file, pg_url)
    from ca.errors import StateError

    with pytest.raises(StateError, match="already holds a CA"):
        make_ca(tmp_path, policy_file, pg_url, name="other")


# -- `iast-ca db copy`: SQLite -> PostgreSQL, history kept -------------------------------------------


def test_db_copy_keeps_the_chain_checkpoints_and_proofs(tmp_path, policy_file, pg_url, postgres):
    from click.testing import CliRunner

    from ca.app import open_authority
    from ca.cli.admin import cli
    from ca.models import Identity, SignRequest

    cfg = default_config().with_overrides(state_dir=str(tmp_path / "state"), policy=str(policy_file))
    init_state(cfg, "ed25519", None)  # SQLite
    enrol(cfg, tmp_path)
    pub = make_key(tmp_path, name="k").with_suffix(".pub").read_text()
    a = open_authority(cfg)
    serials = [a.issue(Identity(user="alice", auth_methods=("publickey",)), SignRequest(public_key=pub)).serial
               for _ in range(5)]
    a.close()

    def run(*args, database=None):
        env = {"IAST_CA_DATABASE": database} if database else {}
        return CliRunner().invoke(cli, ["--state-dir", str(cfg.state_dir), "--policy", str(policy_file), *args],
                                  env=env, catch_exceptions=False)

    r = run("revoke", "--serial", str(serials[0]), "--reason", "lost laptop")
    assert r.exit_code == 0, r.output
    cp = tmp_path / "old-checkpoint.txt"
    assert run("audit", "checkpoint", "-o", str(cp)).exit_code == 0
    r = run("audit", "prove", "--event", "3", "--checkpoint", str(cp))
    assert r.exit_code == 0, r.output
    proof_sqlite = r.stdout
    bob_key = make_key(tmp_path, name="bob_enrolled").with_suffix(".pub")
    r = run("user", "add", "bob", "--key", str(bob_key))
    assert r.exit_code == 0, r.output  # after the checkpoint

    # A used identity token and a used host join token (what `sign --token` and `host enrol` leave).
    sq = open_store(cfg.state_dir / "ca.db")
    with sq.transaction() as tx:
        assert tx.tokens.use("token-key", "https://idp", expires_at=2**40, now=0)
        tx.join_tokens.insert("jt", "ab" * 32, "web1", "web", 1, 2**40, 1)
        assert tx.join_tokens.mark_used("jt", 2, serials[2])
    sq.close()

    r = run("db", "copy", "--to", pg_url, "--json")
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)["rows"]
    assert rows["certificates"] == 5 and rows["revocations"] == 1 and rows["users"] == 2
    assert rows["used_tokens"] == 1 and rows["join_tokens"] == 1

    # The copy verifies, against the old checkpoint too, and proves the same inclusion.
    r = run("audit", "verify", "--checkpoint", str(cp), "--json", database=pg_url)
    assert r.exit_code == 0, r.output
    sqlite_log = open_store(cfg.state_dir / "ca.db")
    pg_log = open_store(pg_url)
    try:
        assert json.loads(r.stdout)["events"] == sqlite_log.head()[0]
        assert pg_log.head() == sqlite_log.head()
        assert list(pg_log.row_batches()) == [list(b) for b in sqlite_log.row_batches()]
        assert pg_log.revocations.all() == sqlite_log.revocations.all()
        assert pg_log.users.all() == sqlite_log.users.all()
        # Still a replay, still used, after the copy.
        assert pg_log.tokens.seen("token-key", 1)
        assert pg_log.join_tokens.get("jt") == sqlite_log.join_tokens.get("jt")
        with pg_log.transaction() as tx:
            assert not tx.tokens.use("token-key", "https://idp", 2**40, 1)
            assert not tx.join_tokens.mark_used("jt", 3, 99)
    finally:
        sqlite_log.close()
        pg_log.close()
    r = run("audit", "prove", "--event", "3", "--checkpoint", str(cp), database=pg_url)
    assert r.exit_code == 0 and r.stdout == proof_sqlite
    # New events chain on from the copied ones; revocations keep their ids going.
    assert run("revoke", "--serial", str(serials[1]), "--reason", "x", database=pg_url).exit_code == 0
    assert run("audit", "verify", "--checkpoint", str(cp), database=pg_url).exit_code == 0
    # A second copy into the same (no longer empty) database is refused, nothing written.
    r = CliRunner().invoke(cli, ["--state-dir", str(cfg.state_dir), "db", "copy", "--to", pg_url])
    assert r.exit_code == 1 and "not empty" in r.output


# -- replicas: several `iast-ca serve` on one database ------------------------------------------


def second_replica(cfg, tmp_path: Path, name: str = "replica-b"):
    """A second replica's state directory: the first one's keys copied (README "Run several replicas")."""
    import shutil

    dst = tmp_path / name
    shutil.copytree(cfg.state_dir, dst)
    return dst


def _sign(ca: CAProcess, key: Path, pub: str):
    r = ca.ssh("alice", key, "sign --json", input=pub, timeout=60)
    return json.loads(r.stdout)["serial"] if r.returncode == 0 else None


def test_two_replicas_under_load_keep_one_chain_and_survive_a_kill_9(tmp_path, policy_file, pg_url):
    from concurrent.futures import ThreadPoolExecutor

    cfg = make_ca(tmp_path, policy_file, pg_url)
    key = enrol(cfg, tmp_path)
    pub = make_key(tmp_path, name="session").with_suffix(".pub").read_text()
    state_b = second_replica(cfg, tmp_path)
    a = CAProcess(cfg.state_dir, cfg.policy_path, workdir=tmp_path / "state", database=pg_url).start()
    b = CAProcess(state_b, cfg.policy_path, workdir=state_b, database=pg_url).start()
    assert (state_b / "host-key").read_bytes() == (cfg.state_dir / "host-key").read_bytes()  # one pin for both
    received: list[int] = []
    try:
        with ThreadPoolExecutor(8) as pool:
            serials = list(pool.map(lambda i: _sign(a if i % 2 else b, key, pub), range(24)))
        assert None not in serials
        received += serials
        assert len(set(received)) == len(received)  # unique across replicas

        # kill -9 one replica mid-load: what clients received is committed; the other keeps serving.
        with ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(_sign, a if i % 2 else b, key, pub) for i in range(18)]
            time.sleep(0.5)
            a.proc.kill()
            results = [f.result() for f in futures]
        received += [s for s in results if s is not None]
        after = [_sign(b, key, pub) for _ in range(3)]
        assert None not in after
        received += after
    finally:
        a.stop()
        b.stop()
    log = open_store(pg_url)
    try:
        log.verify()
        issued = [e.serial for e in log.events(kind="issued", limit=None)]
        assert len(set(issued)) == len(issued)
        assert set(received) <= set(issued)  # every certificate a client received has its committed event
        # A replica killed mid-request may have committed an issuance whose reply was lost; none other.
        assert len(issued) - len(received) <= 3
        assert sorted(issued) == list(range(1, len(issued) + 1))
    finally:
        log.close()


def test_a_replica_with_another_ca_key_refuses_to_start(tmp_path, policy_file, pg_url):
    cfg = make_ca(tmp_path, policy_file, pg_url)
    first = CAProcess(cfg.state_dir, cfg.policy_path, workdir=tmp_path / "state", database=pg_url).start()
    first.stop()
    store = open_store(pg_url)
    (recorded,) = store.ca_keys()
    store.close()
    # Another CA (its own keys) pointed at the same database.
    other = default_config().with_overrides(state_dir=str(tmp_path / "other"), policy=str(policy_file))
    init_state(other, "ed25519", None)
    conf = tmp_path / "other.toml"
    conf.write_text(f'state_dir = "{other.state_dir}"\npolicy = "{other.policy_path}"\ndatabase = "{pg_url}"\n')
    r = subprocess.run([IAST_CA, "--config", str(conf), "serve", "--listen", "127.0.0.1:0"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1, r.stderr
    assert "is not one of the keys of the database" in r.stderr and recorded in r.stderr
    log = open_store(pg_url)
    try:
        assert log.ca_keys() == [recorded]  # nothing recorded for the stranger
    finally:
        log.close()


# -- client failover: iast-ssh login --ca a:2222,b:2222 ------------------------------------------


def test_login_fails_over_to_the_next_replica(tmp_path, policy_file, pg_url):
    import os

    cfg = make_ca(tmp_path, policy_file, pg_url)
    key = enrol(cfg, tmp_path)
    state_b = second_replica(cfg, tmp_path)
    b = CAProcess(state_b, cfg.policy_path, workdir=state_b, database=pg_url).start()
    fp = subprocess.run(["ssh-keygen", "-lf", str(state_b / "host-key.pub")], check=True, capture_output=True,
                        text=True).stdout.split()[1]
    silent = socket.socket()  # replica A's host: takes the TCP connection, never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    closed = socket.socket()  # a replica that is down: connection refused
    closed.bind(("127.0.0.1", 0))
    refused_port = closed.getsockname()[1]
    closed.close()
    iast_ssh = str(Path(sys.executable).parent / "iast-ssh")
    env = {**{k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}, "HOME": str(tmp_path),
           "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    try:
        for dead in (f"127.0.0.1:{silent.getsockname()[1]}", f"127.0.0.1:{refused_port}"):
            started = time.monotonic()
            r = subprocess.run([iast_ssh, "login", "--ca", f"{dead},127.0.0.1:{b.port}", "--ca-fingerprint", fp,
                                "-l", "alice", "-i", str(key), "--no-agent", "--out-dir", str(tmp_path / "out"),
                                "--json"], env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                               timeout=60)
            assert r.returncode == 0, r.stderr
            assert time.monotonic() - started < 20  # the short failover timeout, not the 15s one
            assert json.loads(r.stdout)["serial"] >= 1
        # Every address down: one line naming them, exit 1.
        r = subprocess.run([iast_ssh, "login", "--ca", f"127.0.0.1:{refused_port},127.0.0.1:{refused_port}",
                            "--ca-fingerprint", fp, "-l", "alice", "-i", str(key), "--no-agent"], env=env,
                           stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
        assert r.returncode == 1 and "no CA address answered" in r.stderr, r.stderr
    finally:
        silent.close()
        b.stop()
    log = open_store(pg_url)
    try:
        assert len(log.events(kind="issued", limit=None)) == 2
    finally:
        log.close()


def test_a_wrong_host_key_is_not_failed_over(tmp_path, policy_file, pg_url):
    """A replica that answers with another host key stops the login: no credential goes to the next one."""
    from ca.client import Client
    from ca.errors import HostKeyChanged

    cfg = make_ca(tmp_path, policy_file, pg_url)
    key = enrol(cfg, tmp_path)
    other = default_config().with_overrides(state_dir=str(tmp_path / "other"), policy=str(policy_file))
    init_state(other, "ed25519", None)
    impostor = CAProcess(other.state_dir, other.policy_path, workdir=other.state_dir).start()
    real = CAProcess(cfg.state_dir, cfg.policy_path, workdir=tmp_path / "state", database=pg_url).start()
    fp = subprocess.run(["ssh-keygen", "-lf", str(cfg.state_dir / "host-key.pub")], check=True, capture_output=True,
                        text=True).stdout.split()[1]
    try:
        client = Client(f"127.0.0.1:{impostor.port},127.0.0.1:{real.port}", ca_fingerprint=fp, user="alice",
                        identity=key, use_agent=False, config_file=tmp_path / "client.toml")
        with pytest.raises(HostKeyChanged):
            client.login(no_agent=True, out_dir=tmp_path / "out")
    finally:
        impostor.stop()
        real.stop()


# -- the review queries: the same answers on both engines ---------------------------------------


def test_report_and_correlate_give_the_same_answers_on_both_engines(tmp_path, pg_url):
    """One generated log (issuances, denials, lockouts, revocations, requests), correlated sshd logins,
    copied into PostgreSQL: every report section, with and without a window, answers alike; a
    further correlate run on each with the same clock appends the very same event (same hash)."""
    import random

    from ca.review.correlate import correlate
    from ca.review.report import ReportOptions, build_report, parse_weekdays
    from ca.store.copy import copy_sqlite_to_postgres

    from .test_report import CA_FP, FORGED_AT, START, _line, generate

    path = tmp_path / "ca.db"
    log = open_store(path)
    gen = generate(log, n=4000)
    rnd = random.Random(3)
    sample = rnd.sample(gen["certs"], 200)
    lines = [_line(c, c[6] + 120, port=i + 1) for i, c in enumerate(sample)]
    lines.append(_line((999_999, "forged", None, None, "SHA256:f", CA_FP, 0, 0, 0), FORGED_AT, port=99_999))
    correlate(log, lines[:150], our_ca_fingerprints=[CA_FP], host=None, privileged=("root",), now=START)
    log.close()
    copy_sqlite_to_postgres(path, pg_url)

    fixed = START + 86400 * 90
    sq = open_store(path, clock=lambda: fixed)
    pg = open_store(pg_url, clock=lambda: fixed)
    try:
        # The rest of the lines on both: same logins recorded, same 'correlated' event.
        for s in (sq, pg):
            correlate(s, lines[100:], our_ca_fingerprints=[CA_FP], host="web1", privileged=("root",), now=fixed)
        assert pg.head() == sq.head()
        now = START + 86400 * 120
        mid = gen["events"]
        for opts in (
            ReportOptions(privileged=("root", "admin"), now=now),
            ReportOptions(since=mid[1000]["ts"], until=mid[3000]["ts"], privileged=("root", "admin"),
                          hours=("09:30", "17:00"), weekdays=parse_weekdays("mon-thu"), now=now),
            ReportOptions(since=mid[3500]["ts"], privileged=("postgres",), hours=("22:00", "06:00"), now=now),
            ReportOptions(since="2999-01-01T00:00:00Z", now=now),
        ):
            a, b = build_report(sq, opts), build_report(pg, opts)
            assert json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)
        full = build_report(pg, ReportOptions(privileged=("root", "admin"), now=now))
        assert full["issuances"]["total"] > 1000 and full["correlation"]["logins"] == 201
    finally:
        sq.close()
        pg.close()


def test_what_holds_across_replicas_lockout_totp_revocation(tmp_path, policy_file, pg_url):
    """Two replicas = two processes with their own connections to one database: a lockout earned
    on A refuses the account on B, a one-time code used on A is refused on B, and a key revoked
    through A is refused by B's issuing transaction."""
    from ca.access.revocation import revoke_key
    from ca.app import open_authority
    from ca.auth.throttle import Throttle, ThrottleSettings
    from ca.auth.totp import totp
    from ca.errors import PolicyDenied
    from ca.models import Identity, SignRequest

    cfg = make_ca(tmp_path, policy_file, pg_url)
    state_b = second_replica(cfg, tmp_path)
    cfg_b = default_config().with_overrides(state_dir=str(state_b), policy=str(policy_file), database=pg_url)
    log_a, log_b = open_audit(cfg), open_audit(cfg_b)
    try:
        limits = ThrottleSettings(user_limit=3, address_limit=50, window=600, lockout=900, max_backoff=1)
        on_a, on_b = Throttle(log_a, limits), Throttle(log_b, limits)
        now = 1_800_000_000
        for i in range(3):
            on_a.failure("alice", "192.0.2.1", now + i)
        assert on_b.blocked_for("alice", "198.51.100.7", now + 10) > 800  # another replica, another address

        users_a, users_b = UserStore(log_a, hasher=CHEAP), UserStore(log_b, hasher=CHEAP)
        secret = users_a.add("carol", password="pw pw pw pw pw", totp=True, actor="admin").totp_secret
        code = totp(secret, now)
        assert users_a.check_totp("carol", code, now=now)
        assert not users_b.check_totp("carol", code, now=now)  # used once, on any replica

        pub = make_key(tmp_path, name="dave").with_suffix(".pub").read_text()
        issuer_b = open_authority(cfg_b)
        try:
            dave = Identity(user="dave", auth_methods=("publickey",))
            issuer_b.issue(dave, SignRequest(public_key=pub), allow_unenrolled=True)
            revoke_key(log_a, pub, "stolen", "admin")
            with pytest.raises(PolicyDenied, match="revoked"):
                issuer_b.issue(dave, SignRequest(public_key=pub), allow_unenrolled=True)
        finally:
            issuer_b.close()
        log_a.verify()
    finally:
        log_a.close()
        log_b.close()
