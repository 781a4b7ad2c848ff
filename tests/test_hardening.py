"""Hardening after an outside attack run (docs/security.md: "Revocations stick", "Reserved principals",
"Output cannot attack its reader", "The issued event names the login key", "The client's output
directory is the user's own"). Each test fails on the code before these rules."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ca.errors import PolicyDenied, UsageError
from ca.models import Identity, SignRequest
from ca.policy import parse_policy
from tests.conftest import TEST_POLICY, make_key


def _pub(tmp_path: Path, name: str) -> Path:
    return Path(str(make_key(tmp_path, name=name)) + ".pub")


# -- finding 2: revocations stick --------------------------------------------------------------


def test_revoked_user_gets_no_certificate_offline(cli_run, tmp_path):
    ca = cli_run
    assert ca("init", "--key-type", "ed25519").exit_code == 0
    key = _pub(tmp_path, "hank")
    assert ca("user", "add", "hank", "--key", str(key)).exit_code == 0
    assert ca("sign", "--user", "hank", str(key)).exit_code == 0
    assert ca("revoke", "--user", "hank", "--reason", "left").exit_code == 0
    r = ca("sign", "--user", "hank", str(key))
    assert r.exit_code == 3 and "disabled" in r.output and "ssh-ed25519-cert" not in r.output
    # even the operator's override for unenrolled names does not undo an offboarding
    r = ca("sign", "--user", "hank", "--allow-unenrolled", str(key))
    assert r.exit_code == 3
    # the refusal is audited, and an audited 'user enable' is the way back
    r = ca("audit", "list", "--json", "--user", "hank")
    assert "denied" in [e["kind"] for e in json.loads(r.output)]
    assert ca("user", "enable", "hank").exit_code == 0
    assert ca("sign", "--user", "hank", str(key)).exit_code == 0


def test_disabled_enrolled_user_gets_no_certificate_offline(cli_run, tmp_path):
    ca = cli_run
    ca("init", "--key-type", "ed25519")
    key = _pub(tmp_path, "ivy")
    ca("user", "add", "ivy", "--key", str(key))
    ca("user", "disable", "ivy", "--reason", "on leave")
    r = ca("sign", "--user", "ivy", str(key))
    assert r.exit_code == 3 and "disabled" in r.output


def test_revoked_name_outside_the_user_store_stays_revoked(cli_run, tmp_path):
    ca = cli_run
    ca("init", "--key-type", "ed25519")
    key = _pub(tmp_path, "k")
    assert ca("sign", "--user", "gus", "--allow-unenrolled", str(key)).exit_code == 0
    assert ca("revoke", "--user", "gus", "--reason", "gone").exit_code == 0
    r = ca("sign", "--user", "gus", "--allow-unenrolled", str(key))
    assert r.exit_code == 3 and "revoked" in r.output


def test_offline_sign_for_an_unenrolled_name_needs_the_flag_and_is_audited(cli_run, tmp_path):
    ca = cli_run
    ca("init", "--key-type", "ed25519")
    key = _pub(tmp_path, "k")
    r = ca("sign", "--user", "alcie", str(key))  # a typo
    assert r.exit_code == 3 and "not enrolled" in r.output and "--allow-unenrolled" in r.output
    r = ca("sign", "--user", "alcie", "--allow-unenrolled", "--json", str(key))
    assert r.exit_code == 0
    serial = json.loads(r.output)["serial"]
    event = json.loads(ca("audit", "show", "--serial", str(serial), "--json").output)
    assert event["data"]["allow_unenrolled"] is True


def test_revoked_user_refused_by_the_authority_itself(authority, cfg):
    from ca.access.revocation import revoke_user
    from ca.auth.users import UserStore
    line = make_key(Path(cfg.state_dir).parent, name="u").with_suffix(".pub").read_text()
    UserStore(authority.audit).add("hank", keys=[line])
    revoke_user(authority.audit, "hank", "left", "admin")
    op = Identity(user="hank", auth_methods=("admin-offline",), mfa=True, operator="admin")
    with pytest.raises(PolicyDenied, match="disabled"):
        authority.issue(op, SignRequest(public_key=line, role="dev"), allow_unenrolled=True)


# -- finding 3: reserved principals --------------------------------------------------------------


def test_root_through_user_template_is_refused():
    pol = parse_policy(TEST_POLICY.encode())
    root = Identity(user="root", auth_methods=("publickey",))
    with pytest.raises(PolicyDenied, match="reserved"):
        pol.decide(root, SignRequest(public_key="x", role="dev"), 1_700_000_000, 60)
    for name in ("admin", "toor", "daemon", "halt"):
        with pytest.raises(PolicyDenied, match="reserved"):
            pol.decide(Identity(user=name, auth_methods=("publickey",)),
                       SignRequest(public_key="x", role="dev"), 1_700_000_000, 60)
    # a role that lists root literally still grants it (breakglass)
    d = pol.decide(Identity(user="carol", auth_methods=("publickey",), mfa=True),
                   SignRequest(public_key="x", role="breakglass", reason="INC-1"), 1_700_000_000, 60)
    assert d.principals == ("root",)


def test_policy_may_add_reserved_names_and_check_warns_without_them(tmp_path, cli_run):
    pol = parse_policy(TEST_POLICY.replace('role = "dev"', 'role = "dev"\nreserved_principals = ["oracle"]').encode())
    with pytest.raises(PolicyDenied, match="reserved"):
        pol.decide(Identity(user="oracle", auth_methods=("publickey",)),
                   SignRequest(public_key="x", role="dev"), 1_700_000_000, 60)
    assert "root" in pol.reserved_principals  # the fixed list is a floor
    r = cli_run("policy", "check", "--json")
    warnings = json.loads(r.output)["warnings"]
    assert any("role dev expands {user}" in w for w in warnings)


def test_reserved_user_names_need_allow_reserved(cli_run, tmp_path):
    ca = cli_run
    ca("init", "--key-type", "ed25519")
    key = _pub(tmp_path, "r")
    r = ca("user", "add", "root", "--key", str(key))
    assert r.exit_code == 2 and "reserved" in r.output
    assert "root" not in ca("user", "list").output
    r = ca("user", "add", "root", "--key", str(key), "--allow-reserved")
    assert r.exit_code == 0
    # enrolled on purpose, root still gets no root principal through {user}
    r = ca("sign", "--user", "root", "--role", "dev", str(key))
    assert r.exit_code == 3 and "reserved" in r.output


def test_user_store_refuses_reserved_names(authority):
    from ca.auth.users import UserStore
    with pytest.raises(UsageError, match="reserved"):
        UserStore(authority.audit).add("admin", password="x" * 20, totp=True)
