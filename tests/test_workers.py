"""``serve --workers N``: several processes, one port, one audit chain, unique serials."""

from __future__ import annotations

import json
import signal
from concurrent.futures import ThreadPoolExecutor

import pytest
from argon2 import PasswordHasher

from ca.auth.users import UserStore
from ca.state import StatePaths
from ca.store import AuditLog

from .conftest import make_key
from .service_harness import CAProcess


@pytest.fixture
def ca2(cfg, tmp_path):
    key = make_key(tmp_path, name="alice_enrolled")
    UserStore(AuditLog(StatePaths(cfg.state_dir).db), hasher=PasswordHasher(time_cost=1, memory_cost=1024)).add(
        "alice", keys=[key.with_suffix(".pub").read_text()], actor="test")
    p = CAProcess(cfg.state_dir, cfg.policy_path, workdir=tmp_path, serve_args=("--workers", "2")).start()
    yield p, key
    p.stop()


def test_two_workers_one_chain_unique_serials(ca2, cfg, tmp_path):
    ca, key = ca2
    pub = make_key(tmp_path, name="session").with_suffix(".pub").read_text()
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: ca.ssh("alice", key, "sign --json", input=pub), range(40)))
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results if r.returncode]
    serials = sorted(json.loads(r.stdout)["serial"] for r in results)
    assert serials == list(range(1, 41))
    log = AuditLog(StatePaths(cfg.state_dir).db)
    assert log.verify().count == 1 + 1 + 40  # ca_init, user_added, 40 issued
    workers = {rec.get("worker") for rec in ca.records() if rec.get("msg") == "issued"}
    assert workers == {0, 1}  # the kernel spread the connections over both


def test_sighup_reaches_every_worker_and_sigterm_stops_them(ca2, cfg):
    ca, _ = ca2
    mark = len(ca.lines)
    ca.signal(signal.SIGHUP)
    ca.wait_for("policy reloaded", since=mark)
    reloads = [e for e in AuditLog(StatePaths(cfg.state_dir).db).events(kind="policy_reloaded", limit=None)]
    import time

    deadline = time.monotonic() + 10
    while len(reloads) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
        reloads = AuditLog(StatePaths(cfg.state_dir).db).events(kind="policy_reloaded", limit=None)
    assert len(reloads) == 2
    assert ca.stop() == 0
    assert [r.get("worker") for r in ca.records() if r.get("msg") == "stopped"].count(None) == 1
