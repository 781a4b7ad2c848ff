"""Brute-force throttling: backoff, lockout, per account and per address, persisted (rule 15)."""

from __future__ import annotations

import pytest

from ca.auth.throttle import Throttle, ThrottleSettings
from ca.store import open_store

from .dbraw import raw

pytestmark = pytest.mark.both_backends

S = ThrottleSettings(user_limit=3, address_limit=5, window=600, lockout=900, max_backoff=8)


def fresh(tmp_path, database) -> Throttle:
    location = database or tmp_path / "t.db"
    store = open_store(location)
    t = Throttle(store, S)
    t.conn = raw(location)  # a plain connection, for the checks below
    t.location = location
    return t


def test_backoff_then_lockout(tmp_path, database):
    t = fresh(tmp_path, database)
    assert t.blocked_for("alice", "192.0.2.1", 1000) == 0
    v = t.failure("alice", "192.0.2.1", 1000)
    assert v.locked == () and v.failures == {"user:alice": 1, "addr:192.0.2.1": 1}
    assert t.blocked_for("alice", "192.0.2.1", 1000) == 1  # 1 s backoff
    t.failure("alice", "192.0.2.1", 1001)
    assert t.blocked_for("alice", None, 1001) == 2  # then 2 s
    v = t.failure("alice", "192.0.2.1", 1003)
    assert v.locked == ("user:alice",)
    assert t.blocked_for("alice", None, 1003) == 900
    assert t.blocked_for("alice", None, 1003 + 900) == 0


def test_other_users_and_addresses_unaffected(tmp_path, database):
    t = fresh(tmp_path, database)
    for i in range(3):
        t.failure("alice", "192.0.2.1", 1000 + 10 * i)
    assert t.blocked_for("alice", "198.51.100.9", 1030) > 0  # the account is locked wherever it comes from
    assert t.blocked_for("bob", "198.51.100.9", 1030) == 0
    assert t.blocked_for("bob", "192.0.2.1", 1030) == 0  # the address is not locked (3 < 5), and has no backoff


def test_address_lockout_covers_every_name(tmp_path, database):
    t = fresh(tmp_path, database)
    for i, name in enumerate(["a", "b", "c", "d", "e"]):
        v = t.failure(name, "192.0.2.66", 1000 + 20 * i)
    assert v.locked == ("addr:192.0.2.66",)
    assert t.blocked_for("zed", "192.0.2.66", 1100) > 800


def test_unknown_names_are_counted_like_real_ones(tmp_path, database):
    t = fresh(tmp_path, database)
    for i in range(3):
        t.failure("no-such-user", "192.0.2.1", 1000 + 20 * i)
    assert t.blocked_for("no-such-user", None, 1060) > 800


def test_window_forgets_old_failures(tmp_path, database):
    t = fresh(tmp_path, database)
    t.failure("alice", None, 1000)
    t.failure("alice", None, 1010)
    v = t.failure("alice", None, 1000 + 601)
    assert v.failures == {"user:alice": 1} and v.locked == ()


def test_success_clears_the_account_only(tmp_path, database):
    t = fresh(tmp_path, database)
    t.failure("alice", "192.0.2.1", 1000)
    t.success("alice")
    assert t.blocked_for("alice", None, 1000) == 0
    assert t.conn.execute("SELECT failures FROM auth_throttle WHERE key = 'addr:192.0.2.1'").fetchone() == (1,)


def test_counters_persist(tmp_path, database):
    t = fresh(tmp_path, database)
    for i in range(3):
        t.failure("alice", None, 1000 + 10 * i)
    t.conn.close()
    assert fresh(tmp_path, database).blocked_for("alice", None, 1030) > 800
