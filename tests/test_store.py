"""The store: its contract (any backend), the SQLite schema version and the migration from version 2."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading

import asyncssh
import pytest

from ca.audit import merkle
from ca.audit.chain import GENESIS, canonical, chain_hash, encode_data
from ca.audit.checkpoint import make_checkpoint, read_checkpoint
from ca.errors import ChainBroken
from ca.store import BACKENDS, open_store, schema

# -- the contract, for every backend ------------------------------------------------------
#
# Every backend in BACKENDS runs these: SQLite on a file in tmp_path, PostgreSQL on a
# fresh database of the real server the tests start (tests/pg_harness.py).


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture
def store_path(tmp_path, backend, request):
    if backend == "postgresql":
        return request.getfixturevalue("postgres").create_database()
    return tmp_path / "ca.db"


@pytest.fixture
def store(store_path, backend):
    s = open_store(store_path, backend=backend)
    yield s
    s.close()


def test_append_and_read(store):
    first = store.record("test", {"n": 1}, user="alice", role="dev", source="192.0.2.1")
    second = store.record("test", {"n": 2}, user="bob")
    assert (first, second) == (1, 2)
    e = store.get(1)
    assert (e.user, e.role, e.source, e.data) == ("alice", "dev", "192.0.2.1", {"n": 1})
    assert [x.id for x in store.events(user="bob")] == [2]
    assert [x.id for x in store.stream()] == [1, 2]
    assert store.head() == (2, store.get(2).hash)
    assert store.verify().count == 2
    assert store.canonical_of(2) == canonical(store.canonical_row(2))


def test_a_write_that_raises_leaves_nothing(store):
    store.record("before", {})
    head = store.head()
    with pytest.raises(RuntimeError, match="boom"):
        with store.transaction() as tx:
            event_id = tx.append("issued", {"x": 1}, user="alice", serial=tx.next_serial())
            tx.add_certificate(serial=1, key_id="iast:alice:dev:1", user="alice", role="dev",
                               key_fingerprint="SHA256:k", ca_fingerprint="SHA256:ca", valid_after=0,
                               valid_before=10, event_id=event_id)
            tx.users.insert("alice", password_hash=None, totp_secret=None, created="now")
            tx.throttle.put("user:alice", 1, 0.0, 1.0)
            tx.revocations.insert("key", "SHA256:k", serial=None, ca_fingerprint=None, public=None, reason="r",
                                  actor=None, event_id=event_id, created=0)
            tx.requests.insert("req-aaaaaaaaaa", "alice", "dev", 60, "why", 0, 100)
            raise RuntimeError("boom")
    assert store.head() == head
    assert store.certificates.by_serial(1) is None
    assert store.users.get("alice") is None
    assert store.throttle.get("user:alice") is None
    assert not store.revocations.is_revoked("key", "SHA256:k")
    assert store.requests.get("req-aaaaaaaaaa") is None
    store.verify()


def test_the_issuance_gate_in_one_statement_answers_as_the_reads_one_by_one(store):
    """The issuance path reads its gate (user enabled, login key owner, revocations, next serial,
    chain head) in one statement per backend (docs/security.md rules 22 and 55); it must give
    the answers of the separate reads, in every state, and the events it appends must chain."""
    from ca.store.base import UnitOfWork

    checks = [("key", "SHA256:k"), ("ca_key", "SHA256:ca"), ("key", "SHA256:login"), ("user", "gone")]

    def both():
        with store.transaction() as tx:
            ours = tx.issuance_gate("alice", "SHA256:login", checks)
            assert ours == UnitOfWork.issuance_gate(tx, "alice", "SHA256:login", checks)
            assert tx.issuance_gate("nobody", None, []) == UnitOfWork.issuance_gate(tx, "nobody", None, [])
            tx.append("gate", {"seen": list(ours.revoked)})  # follows the head the gate read
        return ours

    empty = both()
    assert (empty.enabled, empty.login_key_owner, empty.revoked, empty.next_serial) == (None, None, frozenset(), 1)
    with store.transaction() as tx:
        tx.users.insert("alice", password_hash=None, totp_secret=None, created="now")
        tx.users.insert_key("SHA256:login", "alice", "ssh-ed25519", "ssh-ed25519 AAAA", "now")
        _cert(tx, "alice")
    assert both()[:2] == (True, "alice") and both().next_serial == 2
    with store.transaction() as tx:
        eid = tx.append("revoked", {})
        for kind, value in checks[:3] + [("user", "gone")]:
            tx.revocations.insert(kind, value, serial=None, ca_fingerprint=None, public=None, reason="r",
                                  actor=None, event_id=eid, created=0)
        tx.users.set_disabled("alice", True, "left")
    last = both()
    assert (last.enabled, last.revoked) == (False, frozenset(checks))
    assert store.verify().count == 6


def _cert(tx, user):
    serial = tx.next_serial()
    eid = tx.append("issued", {"n": serial}, user=user, serial=serial, key_id=f"k{serial}")
    tx.add_certificate(serial=serial, key_id=f"k{serial}", user=user, role="dev", key_fingerprint="SHA256:x",
                       ca_fingerprint="SHA256:y", valid_after=0, valid_before=1, event_id=eid)
    return serial


def test_a_group_commits_its_transactions_together_and_a_failed_one_alone_rolls_back(store, store_path, backend):
    """Rule 64: transactions inside group() are savepoints of one commit. Before it, another
    connection sees none of them; a transaction that raised left nothing; serials and the chain
    continue across it."""
    store.record("before", {})
    other = open_store(store_path, backend=backend)
    try:
        with store.group():
            with store.transaction() as tx:
                first = _cert(tx, "alice")
            with pytest.raises(RuntimeError, match="refused"):
                with store.transaction() as tx:
                    _cert(tx, "mallory")
                    raise RuntimeError("refused")
            with store.transaction() as tx:
                second = _cert(tx, "bob")
            assert other.head()[0] == 1 and other.certificates.by_serial(first) is None  # not committed yet
        assert (first, second) == (1, 2)
        assert [e.user for e in other.events(kind="issued", limit=None)] == ["bob", "alice"]
        assert other.certificates.by_serial(second).username == "bob"
        assert other.verify().count == 3
    finally:
        other.close()


def test_a_group_that_fails_leaves_none_of_its_rows(store):
    store.record("before", {})
    head = store.head()
    with pytest.raises(RuntimeError, match="power cut"):
        with store.group():
            with store.transaction() as tx:
                _cert(tx, "alice")
            raise RuntimeError("power cut")
    assert store.head() == head and store.certificates.by_serial(1) is None
    with store.transaction() as tx:  # and the store is usable, outside any group, afterwards
        assert _cert(tx, "alice") == 1
    assert store.verify().count == 2


def test_unit_of_work_checks(store):
    with store.transaction() as tx:
        assert tx.user_enabled("alice") is None
        tx.users.insert("alice", password_hash=None, totp_secret=None, created="now")
        tx.users.insert_key("SHA256:a", "alice", "ssh-ed25519", "ssh-ed25519 AAAA", "now")
        assert tx.user_enabled("alice") is True
        assert tx.key_enrolled("alice", "SHA256:a") and not tx.key_enrolled("bob", "SHA256:a")
        tx.users.set_disabled("alice", True, "gone")
        assert tx.user_enabled("alice") is False
        event_id = tx.append("revoked", {})
        tx.revocations.insert("key", "SHA256:a", serial=None, ca_fingerprint=None, public=None, reason="r",
                              actor=None, event_id=event_id, created=0)
        assert tx.is_revoked("key", "SHA256:a") and not tx.is_revoked("ca_key", "SHA256:a")



def test_a_used_token_is_refused_until_it_expires(store):
    """tokens.use: once per token (a replay is refused, in and after the transaction that used it),
    forgotten once expired; seen() answers the same from the store."""
    with store.transaction() as tx:
        assert tx.tokens.use("k1", "https://idp", expires_at=100, now=10) is True
        assert tx.tokens.use("k1", "https://idp", expires_at=100, now=10) is False  # replay, same transaction
        assert tx.tokens.use("k2", "https://idp", expires_at=50, now=10) is True
        assert tx.tokens.seen("k1", 10)
    assert store.tokens.seen("k1", 99) and store.tokens.seen("k2", 49)
    assert not store.tokens.seen("k1", 100) and not store.tokens.seen("other", 10)
    with store.transaction() as tx:
        assert tx.tokens.use("k1", "https://idp", expires_at=200, now=60) is False  # replay, later transaction
    # A token refused inside a transaction that rolls back is not remembered either.
    with pytest.raises(RuntimeError), store.transaction() as tx:
        assert tx.tokens.use("k3", "https://idp", expires_at=500, now=60) is True
        raise RuntimeError("the request failed")
    assert not store.tokens.seen("k3", 60)
    # Using any token forgets the expired ones: k2 (expired at 50) may then be used again, k1 not yet.
    with store.transaction() as tx:
        assert tx.tokens.use("k3", "https://idp", expires_at=500, now=60) is True
        assert tx.tokens.use("k2", "https://idp", expires_at=500, now=60) is True
        assert tx.tokens.use("k1", "https://idp", expires_at=500, now=60) is False
    with store.transaction() as tx:
        assert tx.tokens.use("k1", "https://idp", expires_at=500, now=100) is True  # k1 expired at 100


def _join_token(store, token_id="jt-1"):
    with store.transaction() as tx:
        event_id = tx.append("host_token_created", {"token_id": token_id})
        tx.join_tokens.insert(token_id, "ab" * 32, "web1.example.com", "web", 10, 1000, event_id)
    return event_id


def test_a_join_token_is_used_once(store):
    event_id = _join_token(store)
    row = store.join_tokens.get("jt-1")
    assert row == ("jt-1", "ab" * 32, "web1.example.com", "web", 10, 1000, None, None, event_id)
    assert store.join_tokens.get("jt-2") is None
    with store.transaction() as tx:
        assert tx.join_tokens.mark_used("jt-1", 20, 7) is True
        assert tx.join_tokens.get("jt-1").used_serial == 7  # reads see the transaction
        assert tx.join_tokens.mark_used("jt-1", 21, 8) is False  # second use, same transaction
    with store.transaction() as tx:
        assert tx.join_tokens.mark_used("jt-1", 30, 9) is False  # second use, later
        assert tx.join_tokens.mark_used("jt-2", 30, 9) is False  # no such token
    assert store.join_tokens.get("jt-1")[6:8] == (20, 7)
    # A use rolled back with its transaction leaves the token unused.
    _join_token(store, "jt-3")
    with pytest.raises(RuntimeError), store.transaction() as tx:
        assert tx.join_tokens.mark_used("jt-3", 40, 10) is True
        raise RuntimeError("the certificate was not issued")
    assert store.join_tokens.get("jt-3").used_at is None


@pytest.mark.parametrize("statement", [
    "UPDATE join_tokens SET used_at = NULL, used_serial = NULL WHERE id = 'jt-1'",  # un-use it
    "UPDATE join_tokens SET used_serial = 99 WHERE id = 'jt-1'",                   # re-point it
    "UPDATE join_tokens SET host = 'evil.example.com' WHERE id = 'jt-2'",         # unused: still fixed
    "UPDATE join_tokens SET role = 'admin' WHERE id = 'jt-2'",
    "UPDATE join_tokens SET expires_at = 99999 WHERE id = 'jt-2'",
    "UPDATE join_tokens SET secret_sha256 = 'cd' WHERE id = 'jt-2'",
    "DELETE FROM join_tokens WHERE id = 'jt-1'",
    "DELETE FROM join_tokens WHERE id = 'jt-2'",
], ids=["unuse", "repoint", "host", "role", "expiry", "secret", "delete-used", "delete-unused"])
def test_the_database_refuses_to_change_or_delete_a_join_token(store, store_path, statement):
    from .dbraw import integrity_errors, raw

    _join_token(store, "jt-1")
    _join_token(store, "jt-2")
    with store.transaction() as tx:
        assert tx.join_tokens.mark_used("jt-1", 20, 7)
    before = [store.join_tokens.get(t) for t in ("jt-1", "jt-2")]
    db = raw(str(store_path))
    try:
        with pytest.raises(integrity_errors(), match="join token"):
            db.execute(statement)
        # Using an unused token is the one change allowed (what mark_used does).
        db.execute("UPDATE join_tokens SET used_at = 50, used_serial = 8 WHERE id = 'jt-2'")
    finally:
        db.close()
    assert store.join_tokens.get("jt-1") == before[0]
    assert store.join_tokens.get("jt-2") == before[1]._replace(used_at=50, used_serial=8)


def test_last_expiry_and_current_of(store):
    assert store.certificates.last_expiry("SHA256:ca1") is None
    with store.transaction() as tx:
        for serial, ca, key, before in ((1, "SHA256:ca1", "SHA256:k", 500), (2, "SHA256:ca1", "SHA256:k", 300),
                                        (3, "SHA256:ca2", "SHA256:k", 900), (4, "SHA256:ca1", "SHA256:j", 400)):
            event_id = tx.append("issued", {}, user="alice", serial=serial)
            tx.add_certificate(serial=serial, key_id=f"iast:alice:dev:{serial}", user="alice", role="dev",
                               key_fingerprint=key, ca_fingerprint=ca, valid_after=0, valid_before=before,
                               event_id=event_id)
        assert tx.certificates.last_expiry("SHA256:ca1") == 500  # reads see the transaction
    assert store.certificates.last_expiry("SHA256:ca1") == 500
    assert store.certificates.last_expiry("SHA256:ca2") == 900
    assert store.certificates.last_expiry("SHA256:none") is None
    assert [c.serial for c in store.certificates.current_of("alice", "SHA256:k", 299)] == [1, 2, 3]
    assert [c.serial for c in store.certificates.current_of("alice", "SHA256:k", 300)] == [1, 3]
    assert store.certificates.current_of("bob", "SHA256:k", 0) == []
    assert store.certificates.signed_by("SHA256:ca1", 350) == (3, 2)


def test_revoked_at(store):
    assert store.revocations.revoked_at("user", "alice") is None
    with store.transaction() as tx:
        event_id = tx.append("revoked", {})
        tx.revocations.insert("user", "alice", serial=None, ca_fingerprint=None, public=None, reason="left",
                              actor="admin", event_id=event_id, created=1234)
    assert store.revocations.revoked_at("user", "alice") == 1234
    assert store.revocations.revoked_at("key", "alice") is None

def _append_many(path, backend, n, who, errors):
    try:
        s = open_store(path, backend=backend)
        try:
            for i in range(n):
                with s.transaction() as tx:
                    serial = tx.next_serial()
                    event_id = tx.append("issued", {"i": i, "who": who}, user=who, serial=serial)
                    tx.add_certificate(serial=serial, key_id=f"iast:{who}:dev:{serial}", user=who, role="dev",
                                       key_fingerprint="SHA256:k", ca_fingerprint="SHA256:ca", valid_after=0,
                                       valid_before=10, event_id=event_id)
        finally:
            s.close()
    except BaseException as e:  # reported to the test, which fails on it
        errors.append(repr(e))


def _check_chain(store, total):
    assert store.verify().count == total
    serials = [e.serial for e in store.events(kind="issued", limit=None)]
    assert sorted(serials) == list(range(1, total + 1))  # unique, no gap, never 0


def test_two_threads_append_one_chain(store, store_path, backend):
    errors: list[str] = []
    threads = [threading.Thread(target=_append_many, args=(store_path, backend, 40, who, errors))
               for who in ("alice", "bob")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    _check_chain(store, 80)


def _process(path, backend, n, who, queue):
    errors: list[str] = []
    _append_many(path, backend, n, who, errors)
    queue.put(errors)


def test_two_processes_append_one_chain(store, store_path, backend):
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_process, args=(store_path, backend, 40, who, queue)) for who in ("alice", "bob")]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(60)
    assert results == [[], []]
    _check_chain(store, 80)


# -- SQLite: the schema version and the migration from version 2 ----------------------------

# What version 2 created, as the modules of that time did (events and certificates at
# open, the module tables lazily, each with a column named ``user``).
V2_SCHEMA = [
    """CREATE TABLE events (id INTEGER PRIMARY KEY, ts TEXT NOT NULL, kind TEXT NOT NULL, user TEXT, role TEXT,
       serial INTEGER, key_id TEXT, source TEXT, data TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL)""",
    "CREATE INDEX events_user ON events(user, id)",
    "CREATE INDEX events_kind ON events(kind, id)",
    "CREATE INDEX events_role ON events(role, id)",
    "CREATE INDEX events_serial ON events(serial) WHERE serial IS NOT NULL",
    "CREATE INDEX events_ts ON events(ts)",
    "CREATE INDEX events_user_ts ON events(user, ts)",
    "CREATE TRIGGER events_no_update BEFORE UPDATE ON events BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END",
    "CREATE TRIGGER events_no_delete BEFORE DELETE ON events BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END",
    """CREATE TABLE certificates (serial INTEGER PRIMARY KEY, key_id TEXT NOT NULL UNIQUE, user TEXT NOT NULL,
       role TEXT NOT NULL, key_fingerprint TEXT NOT NULL, ca_fingerprint TEXT NOT NULL,
       valid_after INTEGER NOT NULL, valid_before INTEGER NOT NULL, event_id INTEGER NOT NULL REFERENCES events(id))""",
    "CREATE INDEX certificates_user ON certificates(user, valid_before)",
    "CREATE INDEX certificates_key ON certificates(key_fingerprint)",
    "PRAGMA user_version=2",
]
V2_MODULE_TABLES = [
    """CREATE TABLE users (name TEXT PRIMARY KEY, disabled INTEGER NOT NULL DEFAULT 0, disabled_reason TEXT,
       password_hash TEXT, totp_secret TEXT, totp_last_step INTEGER NOT NULL DEFAULT 0, created TEXT NOT NULL)""",
    """CREATE TABLE user_keys (fingerprint TEXT PRIMARY KEY, user TEXT NOT NULL REFERENCES users(name),
       algorithm TEXT NOT NULL, public TEXT NOT NULL, added TEXT NOT NULL)""",
    "CREATE INDEX user_keys_user ON user_keys(user)",
    """CREATE TABLE auth_throttle (key TEXT PRIMARY KEY, failures INTEGER NOT NULL, first_failure REAL NOT NULL,
       blocked_until REAL NOT NULL)""",
    """CREATE TABLE requests (id TEXT PRIMARY KEY, user TEXT NOT NULL, role TEXT NOT NULL, ttl INTEGER NOT NULL,
       reason TEXT NOT NULL, status TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'denied', 'cancelled',
       'expired', 'used')), created INTEGER NOT NULL, decided INTEGER, expires_at INTEGER NOT NULL,
       used_serial INTEGER)""",
    "CREATE INDEX requests_open ON requests(status, expires_at)",
    "CREATE INDEX requests_user ON requests(user, role, created)",
]


def _old_database(path, *, module_tables: bool, n: int = 12) -> list[tuple]:
    """A version-2 database with ``n`` chained events (one an issuance), written as version 2 did."""
    conn = sqlite3.connect(path, isolation_level=None)
    for statement in V2_SCHEMA + (V2_MODULE_TABLES if module_tables else []):
        conn.execute(statement)
    prev, rows = GENESIS, []
    for i in range(1, n + 1):
        row = (i, f"2025-01-01T00:00:{i:02d}.000000Z", "issued" if i == 3 else "test", "alice", "dev",
               1 if i == 3 else None, "iast:alice:dev:1" if i == 3 else None, None, encode_data({"n": i, "é": "ü"}))
        digest = chain_hash(prev, row)
        conn.execute("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row + (prev, digest))
        rows.append(row + (prev, digest))
        prev = digest
    conn.execute("INSERT INTO certificates VALUES (1, 'iast:alice:dev:1', 'alice', 'dev', 'SHA256:k', 'SHA256:ca',"
                 " 0, 99, 3)")
    if module_tables:
        conn.execute("INSERT INTO users (name, created) VALUES ('alice', '2025-01-01T00:00:00Z')")
        conn.execute("INSERT INTO user_keys VALUES ('SHA256:a', 'alice', 'ssh-ed25519', 'ssh-ed25519 AAAA', 'x')")
        conn.execute("INSERT INTO requests VALUES ('req-aaaaaaaaaa', 'alice', 'dev', 60, 'why', 'pending', 0,"
                     " NULL, 100, NULL)")
    conn.close()
    return rows


def _shape(conn: sqlite3.Connection) -> dict:
    """Tables with their columns, and indexes with their columns (what a migration must match)."""
    out = {}
    for name, type_ in conn.execute("SELECT name, type FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"):
        if type_ == "table":
            out[name] = [(r[1], r[2], r[3], r[5]) for r in conn.execute(f"PRAGMA table_info({name})")]
        elif type_ == "index":
            out[name] = [r[2] for r in conn.execute(f"PRAGMA index_info({name})")]
        else:
            out[name] = type_
    return out


def test_new_database_is_at_the_schema_version(tmp_path):
    s = open_store(tmp_path / "ca.db")
    assert s.conn.execute("PRAGMA user_version").fetchone() == (schema.SCHEMA_VERSION,)
    assert s.conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert s.conn.execute("PRAGMA synchronous").fetchone() == (2,)
    columns = {t: [r[1] for r in s.conn.execute(f"PRAGMA table_info({t})")] for (t,) in s.conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert not [t for t, cols in columns.items() if "user" in cols]  # reserved in PostgreSQL
    assert tuple(columns["events"]) == schema.EVENT_COLUMNS


@pytest.mark.parametrize("module_tables", [True, False], ids=["with-module-tables", "events-only"])
def test_migration_from_version_2(tmp_path, module_tables):
    path = tmp_path / "ca.db"
    rows = _old_database(path, module_tables=module_tables)
    # A checkpoint signed over the version-2 rows.
    key = asyncssh.generate_private_key("ssh-ed25519")
    old_root = merkle.root(merkle.leaf_hash(canonical(r)) for r in rows[:10]).hex()
    text = make_checkpoint(key, 10, rows[9][10], "2025-01-02T00:00:00Z", old_root)
    cp = read_checkpoint(text, key.public_data)

    s = open_store(path)
    assert s.conn.execute("PRAGMA user_version").fetchone() == (schema.SCHEMA_VERSION,)
    report = s.verify(checkpoint_count=cp.count, checkpoint_head=cp.head, checkpoint_root=cp.root)
    assert (report.count, report.head) == (12, rows[-1][10])
    assert list(s.leaf_hashes(10)) == [merkle.leaf_hash(canonical(r)) for r in rows[:10]]
    assert s.get(3).user == "alice" and s.issued_by_serial(1).id == 3
    assert [e.id for e in s.events(user="alice", limit=3)] == [12, 11, 10]
    assert s.certificates.by_serial(1).username == "alice"
    if module_tables:
        assert s.users.get("alice").name == "alice" and s.users.key_owner("SHA256:a") == "alice"
        assert s.requests.get("req-aaaaaaaaaa").username == "alice"
    # New events chain on from the old ones, and the old checkpoint still holds.
    s.record("after_migration", {}, user="bob")
    s.verify(checkpoint_count=cp.count, checkpoint_head=cp.head, checkpoint_root=cp.root)
    # The migrated schema is the schema a new database gets (columns, types, indexes).
    fresh = open_store(tmp_path / "fresh.db")
    assert _shape(s.conn) == _shape(fresh.conn)
    s.close()
    # Opened again: nothing to do, nothing written (a read-only copy opens too).
    path.chmod(0o444)
    try:
        again = open_store(path)
        assert again.verify().count == 13
        again.close()
    finally:
        path.chmod(0o644)


def test_a_rewrite_still_fails_after_migration(tmp_path):
    path = tmp_path / "ca.db"
    _old_database(path, module_tables=False)
    open_store(path).close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("DROP TRIGGER events_no_update")
    conn.execute("UPDATE events SET username = 'mallory' WHERE id = 4")
    conn.close()
    with pytest.raises(ChainBroken, match="event 4"):
        open_store(path).verify()


def test_a_newer_schema_is_refused(tmp_path):
    path = tmp_path / "ca.db"
    open_store(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version={schema.SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(Exception, match="schema version"):
        open_store(path)


# -- self-enrolment codes (issue 16; docs/security.md rule 86), on every backend ----------------


def _enrolment_code(store, code_id="ABCDEFGH"):
    with store.transaction() as tx:
        event_id = tx.append("enrolment_code_created", {"code_id": code_id}, user="alice")
        tx.enrolment_codes.insert(code_id, "ab" * 32, "alice", 10, 1000, event_id)
    return event_id


def test_an_enrolment_code_is_used_once(store):
    event_id = _enrolment_code(store)
    assert store.enrolment_codes.get("ABCDEFGH") == ("ABCDEFGH", "ab" * 32, "alice", 10, 1000, None, event_id)
    assert store.enrolment_codes.get("ZZZZZZZZ") is None
    with store.transaction() as tx:
        assert tx.enrolment_codes.mark_used("ABCDEFGH", 20) is True
        assert tx.enrolment_codes.mark_used("ABCDEFGH", 21) is False
    assert store.enrolment_codes.get("ABCDEFGH").used_at == 20
    _enrolment_code(store, "BBBBBBBB")
    with pytest.raises(RuntimeError), store.transaction() as tx:
        assert tx.enrolment_codes.mark_used("BBBBBBBB", 40) is True
        raise RuntimeError("the enrolment failed")
    assert store.enrolment_codes.get("BBBBBBBB").used_at is None  # rolled back with its transaction


@pytest.mark.parametrize("statement", [
    "UPDATE enrolment_codes SET used_at = NULL WHERE id = 'AAAAAAAA'",
    "UPDATE enrolment_codes SET username = 'mallory' WHERE id = 'BBBBBBBB'",
    "UPDATE enrolment_codes SET expires_at = 99999 WHERE id = 'BBBBBBBB'",
    "UPDATE enrolment_codes SET secret_sha256 = 'cd' WHERE id = 'BBBBBBBB'",
    "DELETE FROM enrolment_codes WHERE id = 'AAAAAAAA'",
], ids=["unuse", "user", "expiry", "secret", "delete"])
def test_the_database_refuses_to_change_or_delete_an_enrolment_code(store, store_path, statement):
    from .dbraw import integrity_errors, raw

    _enrolment_code(store, "AAAAAAAA")
    _enrolment_code(store, "BBBBBBBB")
    with store.transaction() as tx:
        assert tx.enrolment_codes.mark_used("AAAAAAAA", 20)
    before = store.enrolment_codes.get("AAAAAAAA")
    db = raw(str(store_path))
    try:
        with pytest.raises(integrity_errors(), match="enrolment code"):
            db.execute(statement)
    finally:
        db.close()
    assert store.enrolment_codes.get("AAAAAAAA") == before


def test_invite_and_redeem_through_the_user_store(store, tmp_path):
    from argon2 import PasswordHasher

    from ca.auth.enrol import parse_code
    from ca.auth.users import UserStore
    from ca.errors import AuthenticationFailed, UsageError

    from .conftest import make_key

    users = UserStore(store, hasher=PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
    inv = users.invite("dana", ttl=600, actor="admin")
    assert inv.user_created and users.get("dana").keys == () and not users.get("dana").has_password
    code = parse_code(inv.code)
    row = store.enrolment_codes.get(code.code_id)
    assert row.username == "dana" and code.secret not in repr(row) and row.secret_sha256 == code.secret_sha256
    assert code.secret not in str([e.data for e in store.events(limit=None)])  # the admin's record: no secret
    key = make_key(tmp_path, name="dana").with_suffix(".pub").read_text()
    with pytest.raises(UsageError, match="a password alone"):
        users.redeem("dana", code.code_id, password="a long enough password")
    assert store.enrolment_codes.get(code.code_id).used_at is None  # refused: nothing changed, code unused
    got = users.redeem("dana", code.code_id, key_line=key, password="a long enough password", totp=True)
    assert got.totp_secret and got.user.has_password and got.user.has_totp and len(got.user.keys) == 1
    with pytest.raises(AuthenticationFailed, match="already used"):
        users.redeem("dana", code.code_id, totp=True)
    other = parse_code(users.invite("dana", ttl=600, actor="admin").code)
    users.invite("erin", ttl=60, actor="admin")
    with pytest.raises(AuthenticationFailed, match="for dana, not erin"):
        users.redeem("erin", other.code_id, totp=True)  # another person's code
    kinds = [e.kind for e in reversed(store.events(user="dana", limit=None))]
    assert kinds == ["user_added", "enrolment_code_created", "key_added", "password_changed", "totp_reset",
                     "enrolment_code_used", "enrolment_code_created"]
    assert got.totp_secret not in str([e.data for e in store.events(limit=None)])
    assert store.verify_derived() == []  # the derived users and keys agree with the events
