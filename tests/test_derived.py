"""Derived tables are checked against the chain (docs/security.md): direct SQLite tampering with the
append-only triggers dropped is caught by 'audit verify', naming the table and row, and stops the KRL."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from .conftest import make_key


@pytest.fixture
def ca(cli_run, tmp_path):
    """A CA with two enrolled users, three certificates, a user revocation, a key revocation, a request."""
    run = cli_run
    assert run("init", "--key-type", "ed25519").exit_code == 0
    keys = {}
    for name in ("hank", "ivy"):
        keys[name] = Path(str(make_key(tmp_path, name=name)) + ".pub")
        assert run("user", "add", name, "--key", str(keys[name])).exit_code == 0
    for name in ("hank", "hank", "ivy"):
        assert run("sign", "--user", name, str(keys[name])).exit_code == 0, name
    assert run("revoke", "--user", "hank", "--reason", "left").exit_code == 0
    other = Path(str(make_key(tmp_path, name="stolen")) + ".pub")
    assert run("revoke", "--key", str(other), "--reason", "stolen").exit_code == 0
    assert run("audit", "verify").exit_code == 0
    run.keys = keys
    return run


def _db(ca) -> sqlite3.Connection:
    conn = sqlite3.connect(ca.state / "ca.db", isolation_level=None)
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
        conn.execute(f'DROP TRIGGER "{name}"')
    return conn


def _verify(ca) -> tuple[int, list[dict]]:
    r = ca("audit", "verify", "--json")
    return r.exit_code, (json.loads(r.stdout)["differences"] if r.stdout.strip() else [])


def _named(diffs: list[dict]) -> set[tuple[str, str]]:
    return {(d["table"], d["row"]) for d in diffs}


def test_deleted_revocation_is_caught_and_the_krl_is_not_published(ca):
    _db(ca).execute("DELETE FROM revocations WHERE kind = 'serial' AND value = '1'")
    status, diffs = _verify(ca)
    assert status == 1 and ("revocations", "serial 1") in _named(diffs)
    r = ca("krl")
    assert r.exit_code != 0 and "KRL is not published" in r.output and "revocations serial 1" in r.output


def test_deleted_certificate_of_a_revoked_user_is_caught_and_stops_the_krl(ca):
    _db(ca).execute("DELETE FROM certificates WHERE serial = 2")
    status, diffs = _verify(ca)
    assert status == 1 and ("certificates", "serial 2") in _named(diffs)
    r = ca("krl")
    assert r.exit_code != 0 and "certificates serial 2" in r.output


def test_planted_user_key_is_caught(ca, tmp_path):
    attacker = Path(str(make_key(tmp_path, name="attacker")) + ".pub").read_text().split()
    _db(ca).execute("INSERT INTO user_keys (fingerprint, username, algorithm, public, added) VALUES "
                    "('SHA256:planted', 'ivy', 'ssh-ed25519', ?, '2026-01-01')", (" ".join(attacker[:2]),))
    status, diffs = _verify(ca)
    assert status == 1 and ("user_keys", "SHA256:planted") in _named(diffs)


def test_flipped_disabled_flag_is_caught(ca):
    _db(ca).execute("UPDATE users SET disabled = 0 WHERE name = 'hank'")  # re-admit the revoked user
    status, diffs = _verify(ca)
    assert status == 1 and ("users", "hank") in _named(diffs)
    assert any("disabled is 0, the events say 1" in d["problem"] for d in diffs)


def test_changed_certificate_and_request_rows_are_caught(ca):
    conn = _db(ca)
    conn.execute("UPDATE certificates SET valid_before = valid_before + 86400 WHERE serial = 3")
    conn.execute("INSERT INTO requests (id, username, role, ttl, reason, status, created, expires_at) VALUES "
                 "('req-aaaaaaaaaa', 'ivy', 'dev', 60, 'x', 'approved', 0, 9999999999)")
    conn.execute("INSERT INTO approvals (request_id, approver, decision, ts) VALUES "
                 "('req-aaaaaaaaaa', 'hank', 'approve', 0)")
    status, diffs = _verify(ca)
    named = _named(diffs)
    assert status == 1 and ("certificates", "serial 3") in named and ("requests", "req-aaaaaaaaaa") in named
    assert ("approvals", "req-aaaaaaaaaa hank") in named
    r = ca("audit", "verify")
    assert "TAMPERED: certificates serial 3" in r.stderr


def test_an_untouched_ca_verifies_and_publishes(ca):
    assert _verify(ca) == (0, [])
    assert ca("krl", "-o", str(ca.state / "revoked.krl")).exit_code == 0


def test_sqlite_issued_rows_match_the_reference_replay(ca):
    from ca.state import StatePaths
    from ca.store import AuditLog
    from ca.store.base import Store
    log = AuditLog(StatePaths(ca.state).db)
    try:
        fast = list(log.issued_certificate_rows())
        assert fast == list(Store.issued_certificate_rows(log)) and len(fast) == 3
        assert fast == [tuple(r) for r in log.certificates.rows()]
    finally:
        log.close()


def test_host_certificates_are_derived_from_their_events_too(tmp_path):
    """A host certificate's row comes from its host_issued event: verify agrees, a deleted host row
    is caught, and a revoked host still gets a KRL (user and host certificates share one table)."""
    from click.testing import CliRunner

    from ca.cli.admin import cli

    policy = tmp_path / "policy.toml"
    policy.write_text('[defaults]\nrole = "dev"\n[roles.dev]\nmembers = ["*"]\nprincipals = ["{user}"]\n'
                      '[hosts.prod]\nprincipals = ["{host}.prod.example.com", "{host}"]\n')
    state = tmp_path / "state"

    def run(*args):
        return CliRunner().invoke(cli, ["--state-dir", str(state), "--policy", str(policy), *args])

    host_key = Path(str(make_key(tmp_path, name="ssh_host_ed25519_key")) + ".pub")
    user_key = Path(str(make_key(tmp_path, name="alice")) + ".pub")
    assert run("init").exit_code == 0
    assert run("user", "add", "alice", "--key", str(user_key)).exit_code == 0
    assert run("sign", "--user", "alice", str(user_key)).exit_code == 0
    r = run("host", "sign", "--host", "web-1", "--role", "prod", "-o", str(tmp_path / "cert"), str(host_key))
    assert r.exit_code == 0, r.output
    assert run("sign", "--user", "alice", str(user_key)).exit_code == 0  # serials interleave: 1 user, 2 host, 3 user
    assert run("revoke", "--host", "web-1", "--reason", "decommissioned").exit_code == 0
    r = run("audit", "verify", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["differences"] == [], r.output
    assert run("krl", "-o", str(tmp_path / "revoked.krl")).exit_code == 0
    conn = sqlite3.connect(state / "ca.db", isolation_level=None)
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
        conn.execute(f'DROP TRIGGER "{name}"')
    conn.execute("DELETE FROM certificates WHERE serial = 2")
    conn.close()
    r = run("audit", "verify", "--json")
    assert r.exit_code == 1 and ("certificates", "serial 2") in {
        (d["table"], d["row"]) for d in json.loads(r.stdout)["differences"]}, r.output
    r = run("krl", "-o", str(tmp_path / "revoked2.krl"))
    assert r.exit_code == 1 and not (tmp_path / "revoked2.krl").exists(), r.output
