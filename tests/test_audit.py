"""The audit log: committed before any certificate leaves, tamper-evident,
checkpointed (docs/security.md rules 10-13)."""

from __future__ import annotations

import base64
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

from ca.audit.checkpoint import make_checkpoint, read_checkpoint
from ca.errors import AuditError, ChainBroken
from ca.models import Identity, SignRequest
from ca.state import StatePaths, load_audit_key
from ca.store import AuditLog

from ca.app import open_audit

from .conftest import make_key
from .dbraw import integrity_errors
from .dbraw import raw as raw_db

pytestmark = pytest.mark.both_backends

ALICE = Identity(user="alice", auth_methods=("publickey",))


def fill(authority, tmp_path, n=5):
    line = make_key(tmp_path).with_suffix(".pub").read_text()
    for _ in range(n):
        authority.issue(ALICE, SignRequest(public_key=line, role="dev"), allow_unenrolled=True)
    return authority.audit.head()


def raw(cfg):
    """A plain connection, as an attacker with the file (or the database's owner) would have, triggers dropped."""
    conn = raw_db(cfg.database_location)
    conn.drop_trigger("events_no_update", "events")
    conn.drop_trigger("events_no_delete", "events")
    conn.drop_foreign_keys()
    return conn


@pytest.mark.sqlite_only
def test_every_connection_is_wal_and_synchronous_full(authority):
    conn = authority.audit.conn
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert conn.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL


def test_intact_chain_verifies(authority, tmp_path):
    count, head = fill(authority, tmp_path)
    report = authority.audit.verify()
    assert (report.count, report.head) == (count, head) and count == 6  # ca_init + 5 issued


def test_triggers_refuse_edits(authority, tmp_path, cfg):
    fill(authority, tmp_path, 1)
    conn = raw_db(cfg.database_location)
    with pytest.raises(integrity_errors(), match="append-only"):
        conn.execute("UPDATE events SET username = 'mallory' WHERE id = 2")
    with pytest.raises(integrity_errors(), match="append-only"):
        conn.execute("DELETE FROM events WHERE id = 2")


def test_update_is_named(authority, tmp_path, cfg):
    fill(authority, tmp_path)
    raw(cfg).execute("UPDATE events SET username = 'mallory' WHERE id = 4")
    with pytest.raises(ChainBroken, match="event 4: its contents do not match its hash") as e:
        authority.audit.verify()
    assert e.value.event_id == 4


def test_update_with_recomputed_hash_is_caught_at_the_next_row(authority, tmp_path, cfg):
    from ca.audit.chain import chain_hash

    fill(authority, tmp_path)
    conn = raw(cfg)
    row = conn.execute("SELECT * FROM events WHERE id = 3").fetchone()
    forged = (row[0], row[1], row[2], "mallory") + row[4:9]
    conn.execute("UPDATE events SET username = 'mallory', hash = ? WHERE id = 3", (chain_hash(row[9], forged),))
    with pytest.raises(ChainBroken, match="event 4: its prev_hash does not match event 3") as e:
        authority.audit.verify()
    assert e.value.event_id == 4


def test_delete_is_named(authority, tmp_path, cfg):
    fill(authority, tmp_path)
    raw(cfg).execute("DELETE FROM events WHERE id = 3")
    with pytest.raises(ChainBroken, match="event 3 is missing: the log jumps from event 2 to 4"):
        authority.audit.verify()


def test_delete_and_renumber_is_caught(authority, tmp_path, cfg):
    fill(authority, tmp_path)
    conn = raw(cfg)
    conn.execute("DELETE FROM events WHERE id = 3")
    conn.execute("UPDATE events SET id = id - 1 WHERE id > 3")
    with pytest.raises(ChainBroken, match="event 3: its prev_hash does not match event 2"):
        authority.audit.verify()


def checkpoint_text(cfg, log: AuditLog) -> str:
    count, head = log.head()
    root = log.verify().root
    return make_checkpoint(load_audit_key(StatePaths(cfg.state_dir), None), count, head, "2026-11-29T00:00:00Z",
                           root)


def audit_pub(cfg) -> bytes:
    return base64.b64decode(StatePaths(cfg.state_dir).audit_pub.read_text().split()[1])


def test_truncation_is_caught_against_a_checkpoint(authority, tmp_path, cfg):
    fill(authority, tmp_path)
    cp = read_checkpoint(checkpoint_text(cfg, authority.audit), audit_pub(cfg))
    assert cp.count == 6
    raw(cfg).execute("DELETE FROM events WHERE id > 4")
    authority.audit.verify()  # the chain alone cannot see a cut tail...
    with pytest.raises(ChainBroken, match="truncated: the checkpoint covers 6 events, the log has 4"):
        authority.audit.verify(checkpoint_count=cp.count, checkpoint_head=cp.head)  # ...the checkpoint can


def test_rewritten_history_is_caught_against_a_checkpoint(authority, tmp_path, cfg):
    from ca.audit.chain import chain_hash

    fill(authority, tmp_path)
    cp = read_checkpoint(checkpoint_text(cfg, authority.audit), audit_pub(cfg))
    conn = raw(cfg)
    rows = conn.execute("SELECT * FROM events ORDER BY id").fetchall()
    prev = rows[1][10]
    for row in rows[2:]:  # rewrite event 3 and re-chain everything after it
        new = row[:3] + (("mallory",) if row[0] == 3 else (row[3],)) + row[4:9]
        h = chain_hash(prev, new)
        conn.execute("UPDATE events SET username = ?, prev_hash = ?, hash = ? WHERE id = ?", (new[3], prev, h, row[0]))
        prev = h
    authority.audit.verify()  # a consistent forgery...
    with pytest.raises(ChainBroken, match="event 6: the chain does not match the checkpoint"):
        authority.audit.verify(checkpoint_count=cp.count, checkpoint_head=cp.head)


def test_checkpoint_signature_is_checked(cfg, authority, tmp_path):
    text = checkpoint_text(cfg, authority.audit)
    with pytest.raises(ChainBroken, match="malformed"):
        read_checkpoint(text.replace("events: ", "events: x"), audit_pub(cfg))
    with pytest.raises(ChainBroken, match="signature is not valid"):
        read_checkpoint(text.replace("events: 1", "events: 9"), audit_pub(cfg))
    count, head = authority.audit.head()
    with pytest.raises(ChainBroken, match="signature is not valid"):
        read_checkpoint(text.replace(head, "f" * 64), audit_pub(cfg))
    with pytest.raises(ChainBroken, match="not by the audit key"):
        read_checkpoint(text, authority.signer.ca_blob)  # the CA key is not the audit key


def test_checkpoint_verifies_with_stock_ssh_keygen(cfg, authority, tmp_path):
    text = checkpoint_text(cfg, authority.audit)
    msg, sig = text.split("-----BEGIN SSH SIGNATURE-----")
    (tmp_path / "cp.sig").write_text("-----BEGIN SSH SIGNATURE-----" + sig)
    allowed = tmp_path / "allowed_signers"
    allowed.write_text(f"iast-audit {StatePaths(cfg.state_dir).audit_pub.read_text()}")
    cmd = ["ssh-keygen", "-Y", "verify", "-f", str(allowed), "-I", "iast-audit", "-n", "iast-audit-checkpoint",
           "-s", str(tmp_path / "cp.sig")]
    ok = subprocess.run(cmd, input=msg.encode(), capture_output=True)
    assert ok.returncode == 0, ok.stderr
    assert b'Good "iast-audit-checkpoint" signature' in ok.stdout
    bad = subprocess.run(cmd, input=msg.replace("events:", "events: 1").encode(), capture_output=True)
    assert bad.returncode != 0


@pytest.mark.sqlite_only
def test_no_certificate_when_the_audit_commit_fails(authority, tmp_path, cfg):
    """Rule 10: another writer holds the lock, so our commit cannot happen: no certificate."""
    authority.audit = AuditLog(StatePaths(cfg.state_dir).db, busy_timeout=0.2)
    line = make_key(tmp_path).with_suffix(".pub").read_text()
    blocker = sqlite3.connect(StatePaths(cfg.state_dir).db, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(AuditError, match="database is locked"):
            authority.issue(ALICE, SignRequest(public_key=line, role="dev"), allow_unenrolled=True)
    finally:
        blocker.execute("ROLLBACK")
    assert authority.audit.events(kind="issued") == []
    assert authority.audit.conn.execute("SELECT count(*) FROM certificates").fetchone() == (0,)


def test_event_and_certificate_row_commit_together(authority, tmp_path, cfg):
    """A failure after the event insert rolls the event back too: no half-recorded issuance."""
    conn = raw_db(cfg.database_location)
    if cfg.database:
        conn.execute("CREATE FUNCTION boom() RETURNS trigger LANGUAGE plpgsql AS $$"
                     " BEGIN RAISE EXCEPTION 'disk on fire'; END $$")
        conn.execute("CREATE TRIGGER boom BEFORE INSERT ON certificates FOR EACH ROW EXECUTE FUNCTION boom()")
    else:
        conn.execute("CREATE TRIGGER boom BEFORE INSERT ON certificates BEGIN SELECT RAISE(ABORT, 'disk on fire'); END")
    line = make_key(tmp_path).with_suffix(".pub").read_text()
    with pytest.raises(AuditError, match="disk on fire"):
        authority.issue(ALICE, SignRequest(public_key=line, role="dev"), allow_unenrolled=True)
    assert authority.audit.events(kind="issued") == []
    authority.audit.verify()


def test_rows_survive_kill_9(cfg, tmp_path):
    """Every certificate a killed process handed out has its committed, chained row."""
    line = make_key(tmp_path).with_suffix(".pub").read_text()
    script = textwrap.dedent(f"""
        import sys
        from ca.app import open_authority
        from ca.config import default_config
        from ca.models import Identity, SignRequest
        cfg = default_config().with_overrides(state_dir={str(cfg.state_dir)!r}, policy={str(cfg.policy_path)!r},
                                              database={cfg.database!r})
        a = open_authority(cfg)
        while True:
            i = a.issue(Identity(user="alice", auth_methods=("publickey",)), SignRequest(public_key={line!r}), allow_unenrolled=True)
            print(i.serial, flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            cwd=os.path.dirname(os.path.dirname(__file__)))
    handed_out = []
    deadline = time.monotonic() + 60
    while len(handed_out) < 30 and time.monotonic() < deadline:
        handed_out.append(int(proc.stdout.readline()))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(handed_out) == 30
    log = open_audit(cfg)
    report = log.verify()
    for serial in handed_out:
        assert log.issued_by_serial(serial) is not None, serial
    assert report.count >= 31


def test_concurrent_writers_keep_one_chain_and_unique_serials(cfg, tmp_path):
    line = make_key(tmp_path).with_suffix(".pub").read_text()
    script = textwrap.dedent(f"""
        from ca.app import open_authority
        from ca.config import default_config
        from ca.models import Identity, SignRequest
        cfg = default_config().with_overrides(state_dir={str(cfg.state_dir)!r}, policy={str(cfg.policy_path)!r},
                                              database={cfg.database!r})
        a = open_authority(cfg)
        for _ in range(40):
            print(a.issue(Identity(user="alice", auth_methods=("publickey",)), SignRequest(public_key={line!r}), allow_unenrolled=True).serial)
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                              cwd=os.path.dirname(os.path.dirname(__file__))) for _ in range(3)]
    serials = [int(s) for p in procs for s in p.communicate(timeout=120)[0].split()]
    assert all(p.returncode == 0 for p in procs)
    assert sorted(serials) == list(range(1, 121))
    assert open_audit(cfg).verify().count == 121


@pytest.mark.sqlite_only
def test_listing_uses_indexes(authority):
    plans = {
        "user": "SELECT * FROM events WHERE username = 'alice' ORDER BY id DESC LIMIT 50",
        "serial": "SELECT * FROM events WHERE serial = 5",
        "time": "SELECT * FROM events WHERE ts >= '2026' AND ts < '2027' ORDER BY ts DESC, id DESC LIMIT 50",
        "user_ts": "SELECT * FROM events WHERE username = 'a' AND ts >= '2026' AND ts < '2027' ORDER BY ts DESC, id DESC",
    }
    for name, sql in plans.items():
        plan = " ".join(r[3] for r in authority.audit.conn.execute("EXPLAIN QUERY PLAN " + sql))
        index = {"time": "ts"}.get(name, name)
        assert f"SEARCH events USING INDEX events_{index} " in plan, (name, plan)
        assert "SCAN" not in plan and "TEMP B-TREE" not in plan, (name, plan)


def test_filters(authority, tmp_path):
    fill(authority, tmp_path, 3)
    line = make_key(tmp_path, name="k2").with_suffix(".pub").read_text()
    authority.issue(Identity(user="bob", auth_methods=("publickey",)), SignRequest(public_key=line, role="dev"), allow_unenrolled=True)
    with pytest.raises(Exception):
        authority.issue(Identity(user="bob", auth_methods=("publickey",)), SignRequest(public_key=line, role="nope"), allow_unenrolled=True)
    log = authority.audit
    assert [e.user for e in log.events(user="bob")] == ["bob", "bob"]
    assert [e.kind for e in log.events(user="bob")] == ["denied", "issued"]
    assert [e.serial for e in log.events(kind="issued")] == [4, 3, 2, 1]
    assert [e.serial for e in log.events(kind="issued", limit=2)] == [4, 3]
    assert [e.id for e in log.events(serial=2)] == [3]
    assert log.events(since="2999-01-01") == []
    assert len(log.events(until="2999-01-01", limit=None)) == 6
