"""Metrics and health through a running ``serve --workers 2`` (docs/security.md rules 70-72).

The counters are scraped over HTTP after real issuances, denials and failed logins
and must equal what the audit log holds; ``/readyz`` turns 503 while the database
is down (a PostgreSQL server of this module's own, stopped and started again).
"""

from __future__ import annotations

import re
import socket
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from ca.app import open_audit
from ca.auth.users import UserStore
from ca.config import default_config, parse_config
from ca.errors import ConfigError
from ca.state import init_state
from ca.store import open_store

from .conftest import make_key
from .pg_harness import start_server
from .service_harness import CAProcess, kbd_login

CHEAP = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _samples(text: str, name: str) -> dict[tuple, float]:
    """``name{a="x",b="y"} 3.0`` lines -> {(("a","x"),("b","y")): 3.0}."""
    out = {}
    for m in re.finditer(rf"^{name}(?:{{(.*?)}})? (\S+)$", text, re.M):
        labels = tuple(sorted(re.findall(r'(\w+)="([^"]*)"', m.group(1) or "")))
        out[labels] = float(m.group(2))
    return out


@pytest.fixture(scope="module")
def own_pg():
    server = start_server()
    yield server
    server.destroy()


def test_metrics_listen_is_off_by_default_and_validated(tmp_path):
    assert default_config().metrics_listen is None
    cfg = parse_config(b'[metrics]\nlisten = "127.0.0.1:9322"\n', tmp_path / "ca.toml")
    assert cfg.metrics_listen == ("127.0.0.1", 9322)
    with pytest.raises(ConfigError, match="metrics.listen"):
        parse_config(b'[metrics]\nlisten = "9322"\n', tmp_path / "ca.toml")
    with pytest.raises(ConfigError, match="metrics.path"):
        parse_config(b'[metrics]\npath = "/m"\n', tmp_path / "ca.toml")


def test_counters_equal_the_audit_log_and_readyz_follows_the_database(own_pg, tmp_path, policy_file):
    url = own_pg.create_database()
    cfg = default_config().with_overrides(state_dir=str(tmp_path / "state"), policy=str(policy_file), database=url)
    init_state(cfg, "ed25519", None)
    key = make_key(tmp_path, name="alice_enrolled")
    log = open_audit(cfg)
    try:
        users = UserStore(log, hasher=CHEAP)
        users.add("alice", keys=[key.with_suffix(".pub").read_text()], actor="test")
        users.add("erin", password="correct horse battery", totp=True, actor="test")
    finally:
        log.close()
    port = _free_port()
    ca = CAProcess(cfg.state_dir, cfg.policy_path, workdir=tmp_path, database=url,
                   config=f'[metrics]\nlisten = "127.0.0.1:{port}"\n[throttle]\nuser_failures = 1\n',
                   serve_args=("--workers", "2")).start()
    base = f"http://127.0.0.1:{port}"
    try:
        assert _get(base + "/healthz") == (200, "ok\n")
        status, body = _get(base + "/readyz")
        assert status == 200, body
        pub = make_key(tmp_path, name="session").with_suffix(".pub").read_text()
        for _ in range(5):
            assert ca.ssh("alice", key, "sign", input=pub).returncode == 0
        assert ca.ssh("alice", key, "sign --role breakglass --reason x", input=pub).returncode != 0  # not a member
        assert ca.ssh("alice", key, "sign --role nosuchrole", input=pub).returncode != 0
        stranger = make_key(tmp_path, name="stranger")
        for _ in range(2):
            assert ca.ssh("alice", stranger, "whoami").returncode == 255
        for _ in range(4):  # wrong passwords: counted, and the first locks erin out
            with pytest.raises(Exception):
                kbd_login(ca, "erin", "wrong password", "000000")

        store = open_store(url)
        try:
            def audit_counts() -> dict[str, Counter]:
                return {
                    "issued": Counter((("cert_type", "user"), ("role", e.role))
                                      for e in store.events(kind="issued", limit=None)),
                    "denied": Counter((("code", e.data["code"]),) for e in store.events(kind="denied", limit=None)),
                    "auth": Counter((("method", e.data["method"]),)
                                    for e in store.events(kind="auth_failed", limit=None)),
                    "lockout": Counter({(): len(store.events(kind="lockout", limit=None))}),
                }

            def scraped() -> dict[str, Counter]:
                status, text = _get(base + "/metrics")
                assert status == 200
                return {
                    "issued": Counter(_samples(text, "iast_certificates_issued_total")),
                    "denied": Counter(_samples(text, "iast_requests_denied_total")),
                    "auth": Counter(_samples(text, "iast_auth_failures_total")),
                    "lockout": Counter(_samples(text, "iast_lockouts_total")),
                }, text

            deadline = time.monotonic() + 20  # failed logins are audited when their connection closes
            while True:
                want = audit_counts()
                got, text = scraped()
                if got == want or time.monotonic() > deadline:
                    break
                time.sleep(0.3)
            assert got == want
            assert want["issued"][(("cert_type", "user"), ("role", "dev"))] == 5
            assert sum(want["denied"].values()) == 2 and sum(want["auth"].values()) >= 6
            assert want["lockout"][()] >= 1
            # A label never carries what a client typed: the unknown role is not a label value.
            assert "nosuchrole" not in text and "stranger" not in text and "erin" not in text
            assert _samples(text, "iast_issue_seconds_count")[()] == 5
            assert _samples(text, "iast_audit_commit_seconds_count")[()] >= 5
            assert "iast_connections" in text and "iast_krl_version" in text
            active = [k for k in _samples(text, "iast_ca_key_info") if ("state", "active") in k]
            assert len(active) == 1
        finally:
            store.close()

        own_pg.stop("fast")
        try:
            status, body = _get(base + "/readyz")
            assert status == 503 and "database" in body, body
            assert _get(base + "/healthz")[0] == 200  # alive, only not ready
            rec = ca.wait_for("not ready")
            assert "database" in rec["reason"]
        finally:
            own_pg.start()
        deadline = time.monotonic() + 20
        while _get(base + "/readyz")[0] != 200:
            assert time.monotonic() < deadline, "readyz did not come back"
            time.sleep(0.3)
        ca.wait_for("ready again")
    finally:
        assert ca.stop() == 0


def test_metrics_are_off_without_the_setting(cfg, tmp_path):
    ca = CAProcess(cfg.state_dir, cfg.policy_path, workdir=tmp_path).start()
    try:
        assert not any(r.get("msg") == "metrics listening" for r in ca.records())
    finally:
        ca.stop()


def test_one_process_serve_reports_too(cfg, tmp_path):
    key = make_key(tmp_path, name="alice_enrolled")
    log = open_audit(cfg)
    try:
        UserStore(log, hasher=CHEAP).add("alice", keys=[key.with_suffix(".pub").read_text()], actor="test")
    finally:
        log.close()
    port = _free_port()
    ca = CAProcess(cfg.state_dir, cfg.policy_path, workdir=tmp_path,
                   config=f'[metrics]\nlisten = "127.0.0.1:{port}"\n').start()
    try:
        pub = make_key(tmp_path, name="session").with_suffix(".pub").read_text()
        assert ca.ssh("alice", key, "sign", input=pub).returncode == 0
        status, text = _get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200
        assert _samples(text, "iast_certificates_issued_total") == {(("cert_type", "user"), ("role", "dev")): 1.0}
        assert _get(f"http://127.0.0.1:{port}/nothing")[0] == 404
    finally:
        assert ca.stop() == 0
