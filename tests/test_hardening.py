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


# -- finding 6: output cannot attack its reader ---------------------------------------------------

# One of each class the terminal rule escapes: C0, DEL, C1 (NEL, CSI), bidi overrides and
# isolates, zero-width, line and paragraph separators.
HOSTILE = ["\x1b]0;owned\x07", "\x1b[2J", "\x00", "\x7f", "\x85", "\x9b", "\u202e", "\u202a", "\u2066",
           "\u2069", "\u200b", "\u2028", "\u2029", "\r", "\n", "\t"]


@pytest.mark.parametrize("bad", HOSTILE)
def test_terminal_escaping_of_every_class(bad):
    from ca.cli.common import terminal_safe
    shown = terminal_safe(f"a{bad}b")
    assert shown.isprintable() and shown.startswith("a") and shown.endswith("b") and bad not in shown
    assert terminal_safe("plain café, ok") == "plain café, ok"


@pytest.mark.parametrize("start", ["=", "+", "-", "@", "\t", "\r"])
def test_csv_cells_that_a_spreadsheet_would_run_are_neutralised(start):
    from ca.cli.common import csv_cell
    cell = csv_cell(f"{start}HYPERLINK(\"http://evil\",\"x\")")
    assert cell.startswith("'") and cell.isprintable()
    assert csv_cell("alice") == "alice" and csv_cell(42) == 42 and csv_cell(None) is None


def _plant(log, **columns):
    """An event holding requester-chosen text (the log keeps what it was sent, e.g. a refused role)."""
    return log.record("denied", {"message": "x\x1b[31mred\u202e", "reason": "=cmd|' /C calc'!A0"},
                                  **columns)


def test_audit_list_show_and_csv_escape_what_requesters_chose(cli_run):
    ca = cli_run
    ca("init", "--key-type", "ed25519")
    from ca.state import StatePaths
    from ca.store import AuditLog
    log = AuditLog(StatePaths(ca.state).db)
    try:
        eid = _plant(log, user="mallory", role="dev\x1b]0;owned\x07\u202e", source="+1")
    finally:
        log.close()
    for args in (("audit", "list"), ("audit", "show", str(eid))):
        out = ca(*args).output
        assert "\x1b" not in out and "\u202e" not in out and "\\x1b" in out, out
    csv_out = ca("audit", "list", "--csv").output
    assert "\x1b" not in csv_out and "\u202e" not in csv_out
    row = next(line for line in csv_out.splitlines() if "mallory" in line)
    assert ",'+1," in row  # the source cell starts with + and is neutralised


def test_user_and_request_csv_exports_are_neutralised(cli_run, tmp_path):
    ca = cli_run
    ca("init", "--key-type", "ed25519")
    key = _pub(tmp_path, "k")
    ca("user", "add", "eve", "--key", str(key))
    ca("user", "disable", "eve", "--reason", "=HYPERLINK(\"http://evil\")")
    out = ca("user", "list", "--csv").output
    assert "'=HYPERLINK" in out and ",=HYPERLINK" not in out


@pytest.mark.parametrize("bad", ["\x85", "\u009b", "\u202e", "\u2066", "\u2028", "\x1b[2J"])
def test_free_text_refuses_c1_and_bidi_everywhere(cli_run, tmp_path, bad):
    ca = cli_run
    ca("init", "--key-type", "ed25519")
    key = _pub(tmp_path, "k")
    ca("user", "add", "eve", "--key", str(key))
    r = ca("user", "disable", "eve", "--reason", f"left{bad}x")  # an administrator's reason
    assert r.exit_code == 2 and "control" in r.output
    assert ca("sign", "--user", "eve", "--reason", f"a{bad}b", str(key)).exit_code != 0  # a request's reason
    r = ca("revoke", "--user", "eve", "--reason", f"gone{bad}x")
    assert r.exit_code == 2


# -- finding 9: the client's output directory ---------------------------------------------------


def test_client_refuses_a_group_or_world_writable_output_directory(tmp_path):
    import asyncssh

    from ca.client.files import check_out_dir, write_files
    from ca.errors import CAError
    out = tmp_path / "iast-ssh"
    out.mkdir()
    for mode in (0o777, 0o770, 0o722):
        os.chmod(out, mode)
        with pytest.raises(CAError, match="chmod go-w"):
            check_out_dir(out)
        with pytest.raises(CAError, match="writable by others"):
            write_files(out, asyncssh.generate_private_key("ssh-ed25519"), "x y", "id")
        assert list(out.iterdir()) == []
    os.chmod(out, 0o700)
    check_out_dir(out)
    check_out_dir(tmp_path / "not-yet")  # created 0700 when needed


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to make a directory owned by someone else")
def test_client_refuses_an_output_directory_owned_by_someone_else(tmp_path):
    from ca.client.files import check_out_dir
    from ca.errors import CAError
    out = tmp_path / "theirs"
    out.mkdir(mode=0o700)
    os.chown(out, 65534, 65534)
    with pytest.raises(CAError, match="owned by uid 65534"):
        check_out_dir(out)


def test_login_checks_the_output_directory_before_asking_for_a_certificate(tmp_path):
    from ca.client import Client
    from ca.errors import CAError
    out = tmp_path / "shared"
    out.mkdir()
    os.chmod(out, 0o777)
    client = Client("127.0.0.1:1", ca_fingerprint="SHA256:" + "A" * 43, user="alice", use_agent=False,
                    config_file=tmp_path / "config.toml")
    with pytest.raises(CAError, match="writable by others"):  # not "connection refused": no CA was asked
        client.login(no_agent=True, out_dir=out)
