"""Issue 16's rough edges of the command line, as a new user and a new administrator meet them:
quiet on a closed pipe, 130 on Ctrl-C, not-found is not a usage error, mistakes refused with
"did you mean", lists that say they truncated, human times, the administration details."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ca.audit.kinds import EVENT_KINDS

from .conftest import make_key
from .service_harness import IAST_CA

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def ca(cli_run):
    r = cli_run("init")
    assert r.exit_code == 0, r.output
    return cli_run


def iast_ca_argv(ca, *args: str) -> list[str]:
    return [IAST_CA, "--state-dir", str(ca.state), "--policy", str(ca.state.parent / "policy.toml"), *args]


def run_into_closed_pipe(argv: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    """``argv`` with stdout a pipe whose reader has already gone (``| head`` that has seen enough):
    every write fails with EPIPE, deterministically."""
    r, w = os.pipe()
    os.close(r)
    try:
        proc = subprocess.run(argv, stdout=w, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                              env=env, timeout=60)
    finally:
        os.close(w)
    return proc


# -- finding 6: a closed pipe is not an error ---------------------------------------------

def test_a_closed_pipe_ends_iast_ca_quietly_with_0(ca, tmp_path):
    key = make_key(tmp_path)
    for _ in range(3):
        assert ca("sign", "--allow-unenrolled", "--user", "alice", str(key) + ".pub").exit_code == 0
    for args in (("audit", "list"), ("audit", "export"), ("trust",)):
        p = run_into_closed_pipe(iast_ca_argv(ca, *args))
        assert p.returncode == 0, (args, p.stderr)
        assert p.stderr == "", (args, p.stderr)  # no "Error: Broken pipe", no "Exception ignored"


def test_a_closed_pipe_leaves_the_export_cursor_where_it_was(ca, tmp_path):
    cursor = tmp_path / "siem.cursor"
    cursor.write_text("0\n")
    p = run_into_closed_pipe(iast_ca_argv(ca, "audit", "export", "--cursor-file", str(cursor)))
    assert p.returncode == 0 and p.stderr == ""
    assert cursor.read_text() == "0\n"  # nothing was delivered, so nothing is marked as sent


# -- finding 9: exit codes --------------------------------------------------------------

def test_no_such_user_is_not_found_not_usage(ca):
    r = ca("user", "show", "ghost")
    assert r.exit_code == 5 and r.stderr.strip() == "Error: no such user 'ghost'"
    r = ca("user", "show", "--bogus")
    assert r.exit_code == 2  # a command line click cannot parse is still usage


def test_revoke_key_garbage_and_missing_file_exit_alike(ca, tmp_path):
    garbage = ca("revoke", "--key", "-", "--reason", "x", input="this is not a key\n")
    missing = ca("revoke", "--key", str(tmp_path / "nope.pub"), "--reason", "x")
    assert garbage.exit_code == missing.exit_code == 2, (garbage.output, missing.output)
    for r in (garbage, missing):
        assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("Error: ")
    assert ca("audit", "list", "--kind", "revoked", "--json").stdout.strip() == "[]"


# -- finding 7: mistakes are refused, with the word meant ---------------------------------

def test_audit_list_kind_is_a_closed_choice_with_did_you_mean(ca):
    r = ca("audit", "list", "--kind", "deneid")
    assert r.exit_code == 2 and "did you mean 'denied'?" in r.stderr, r.output
    assert ca("audit", "list", "--kind", "ca_init").exit_code == 0


def test_every_recorded_kind_is_listed():
    """The closed set of --kind holds every kind the code writes (a literal first argument of
    record()/append(), and the authority's issued/denied/failed)."""
    written = set()
    for path in (ROOT / "ca").rglob("*.py"):
        written |= set(re.findall(r"\b(?:record|append)\(\s*\"([a-z][a-z_]+)\"", path.read_text()))
    not_events = {"none", "publickey"}  # list.append of auth method names, not audit events
    assert written - not_events - set(EVENT_KINDS) == set()
    assert {"issued", "denied", "failed"} <= set(EVENT_KINDS)


def test_audit_list_says_when_it_stopped_at_its_limit(ca, tmp_path):
    key = make_key(tmp_path)
    for _ in range(3):
        ca("sign", "--allow-unenrolled", "--user", "alice", str(key) + ".pub")
    r = ca("audit", "list", "--kind", "issued", "--limit", "2", "--json")
    assert len(json.loads(r.stdout)) == 2  # stdout stays clean JSON
    assert "showing the first 2 events; more match" in r.stderr
    r = ca("audit", "list", "--kind", "issued", "--limit", "3")
    assert "more match" not in r.stderr


def test_policy_explain_refuses_an_unknown_role_and_notes_an_unenrolled_user(ca):
    r = ca("policy", "explain", "alice", "--role", "prod-redonly")
    assert r.exit_code == 2 and "did you mean 'prod-readonly'?" in r.stderr, r.output
    r = ca("policy", "explain", "nobody")
    assert r.exit_code == 0 and "dev: yes" in r.stdout
    assert "nobody is not enrolled" in r.stderr


# -- findings 9 and 11: a terminal is asked, Ctrl-C exits 130 --------------------------------

PASSWORD = "correct horse battery staple"


@pytest.fixture
def alice_with_a_key(ca, tmp_path):
    key = make_key(tmp_path, name="alice_enrolled")
    assert ca("user", "add", "alice", "--key", str(key) + ".pub").exit_code == 0
    return key


def test_user_passwd_on_a_terminal_asks_twice_hidden(ca, alice_with_a_key):
    from ca.auth.users import UserStore
    from ca.state import StatePaths
    from ca.store import AuditLog

    from .test_client import run_in_pty

    argv = iast_ca_argv(ca, "user", "passwd", "alice")
    status, shown = run_in_pty(argv, dict(os.environ), [(r"Password: ", PASSWORD),
                                                        (r"Repeat for confirmation: ", PASSWORD)])
    assert status == 0 and "password of user alice changed" in shown, shown
    assert PASSWORD not in shown  # hidden
    store = UserStore(AuditLog(StatePaths(ca.state).db))
    try:
        assert store.get("alice").has_password
    finally:
        store.audit.close()
    # from a pipe, without the flag, it is still refused (a script must say where the password comes from)
    r = ca("user", "passwd", "alice", input=PASSWORD + "\n")
    assert r.exit_code == 2 and "--password-stdin" in r.stderr


def test_ctrl_c_exits_130_quietly(ca, alice_with_a_key):
    from .test_client import run_in_pty

    status, shown = run_in_pty(iast_ca_argv(ca, "user", "passwd", "alice"), dict(os.environ),
                               [(r"Password: ", None)])
    assert status == 130, shown
    assert "Aborted!" not in shown and "Traceback" not in shown and "Error" not in shown
    # a Ctrl-C while reading a pipe (no click prompt) too
    proc = subprocess.Popen(iast_ca_argv(ca, "user", "passwd", "alice", "--password-stdin"),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        import time

        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not _has_open(proc.pid, "ca.db"):
            time.sleep(0.05)
        proc.send_signal(2)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and "Traceback" not in err and "Aborted!" not in err, err


def _has_open(pid: int, name: str) -> bool:
    """Whether ``pid`` holds a file called ``name`` open: past start-up, about to read the password."""
    try:
        return any(os.readlink(f"/proc/{pid}/fd/{fd}").endswith(name) for fd in os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return False


# -- finding 10: audit detail ---------------------------------------------------------------

def test_audit_show_prints_human_times_and_json_keeps_epoch(ca, tmp_path):
    key = make_key(tmp_path)
    assert ca("sign", "--allow-unenrolled", "--user", "alice", str(key) + ".pub").exit_code == 0
    shown = ca("audit", "show", "--serial", "1").stdout
    line = next(x for x in shown.splitlines() if x.startswith("valid_before"))
    assert re.fullmatch(r"valid_before\s+\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ \(\d+\)", line), line
    data = json.loads(ca("audit", "show", "--serial", "1", "--json").stdout)["data"]
    assert isinstance(data["valid_before"], int) and isinstance(data["valid_after"], int)


def test_a_short_certificate_shows_its_real_validity_and_the_skew_apart(ca, tmp_path):
    key = make_key(tmp_path)
    assert ca("sign", "--allow-unenrolled", "--user", "alice", "--ttl", "10s", str(key) + ".pub").exit_code == 0
    shown = ca("audit", "show", "--serial", "1").stdout
    line = next(x for x in shown.splitlines() if x.startswith("validity"))
    data = json.loads(ca("audit", "show", "--serial", "1", "--json").stdout)["data"]
    skew = data["valid_before"] - data["valid_after"] - 10
    assert skew > 0  # the CA backdates valid_after
    assert re.fullmatch(r"validity\s+10s \(valid_after is backdated \S+ for clock skew\)", line), line


# -- finding 11: administration -------------------------------------------------------------

def test_key_comments_are_kept_and_key_remove_takes_the_pub_file(ca, tmp_path):
    laptop = make_key(tmp_path, name="laptop")
    pub = Path(str(laptop) + ".pub")
    pub.write_text(" ".join(pub.read_text().split()[:2]) + " alice@laptop\n")
    other = make_key(tmp_path, name="desktop")
    assert ca("user", "add", "alice", "--key", str(pub), "--key", str(other) + ".pub").exit_code == 0
    shown = ca("user", "show", "alice").stdout
    assert "alice@laptop" in shown, shown
    comments = sorted(k["comment"] for k in json.loads(ca("user", "show", "alice", "--json").stdout)["keys"])
    assert comments == ["alice@laptop", "test"]  # make_key's keys are commented "test"
    r = ca("user", "key-remove", "alice", str(pub))
    assert r.exit_code == 0, r.output
    assert "alice@laptop" not in ca("user", "show", "alice").stdout
    r = ca("user", "key-remove", "alice", str(tmp_path / "gone.pub"))
    assert r.exit_code == 2 and "not a SHA256:... fingerprint" in r.stderr
    assert ca("audit", "verify").exit_code == 0  # the derived key table still agrees with the events


def test_krl_text_is_a_look_and_bumps_nothing(ca, tmp_path):
    key = make_key(tmp_path)
    ca("sign", "--allow-unenrolled", "--user", "alice", str(key) + ".pub")
    out = tmp_path / "krl"
    assert ca("krl", "-o", str(out)).exit_code == 0  # version 1
    assert ca("revoke", "--serial", "1", "--reason", "x").exit_code == 0
    r = ca("krl", "--text")
    assert r.exit_code == 0 and "serial: 1" in r.stdout and "differs from the published KRL version 1" in r.stderr
    ca("krl", "--text")
    assert len(json.loads(ca("audit", "list", "--kind", "krl_version", "--json").stdout)) == 1
    assert json.loads(ca("krl", "-o", str(out), "--json").stdout)["version"] == 2  # publishing still bumps


# -- finding 12: naming -----------------------------------------------------------------------

def test_requests_with_no_subcommand_lists_and_votes_read_as_words(ca):
    from ca.access.approvals import AccessRequest, Vote
    from ca.cli.requests_cmds import _row

    r = ca("requests")
    assert r.exit_code == 0 and r.stdout.strip() == "No requests."
    req = AccessRequest("req-abcdefghij", "alice", "prod", 600, "x", "denied", 0, 1, 2, None,
                        votes=(Vote("carol", "deny", "no", 1), Vote("bob", "approve", None, 1)))
    votes = _row(req)[-1]
    assert votes == "carol denied (no), bob approved" and "denyd" not in votes
    r = ca("requests", "list", "--status", "pendng")
    assert r.exit_code == 2 and "did you mean 'pending'?" in r.stderr


def test_policy_check_reports_every_mistake_and_the_key_meant(ca, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[defaults]\nmax_tl = "8h"\n\n'
                   '[roles.ops]\nmembers = ["*"]\nprincipals = []\n\n'
                   '[roles.dev]\nmembers = ["*"]\nprincipals = ["{user}"]\nrequire_mfaa = true\n\n'
                   '[roles.web]\nmembers = ["*"]\nprincipals = ["{user}"]\nmax_ttl = "forever"\n')
    r = ca("policy", "check", str(bad))
    assert r.exit_code == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 4, lines
    text = "\n".join(lines)
    assert "defaults.max_tl: unknown key in defaults (did you mean 'max_ttl'?)" in text
    assert "roles.dev.require_mfaa: unknown key in role dev (did you mean 'require_mfa'?)" in text or \
        "roles.dev.require_mfaa" in text and "did you mean 'require_mfa'?" in text
    assert "roles.ops.principals" in text and "roles.web.max_ttl" in text
    r = ca("policy", "check", str(bad), "--json")
    assert json.loads(r.stdout)["ok"] is False and len(json.loads(r.stdout)["errors"]) == 4
    # a service or any other loader still refuses it with one line that counts the rest
    from ca.errors import PolicyError
    from ca.policy import load_policy

    with pytest.raises(PolicyError, match=r"\(and 3 more mistakes: 'iast-ca policy check' lists them\)$"):
        load_policy(bad)


def test_policy_check_reports_every_mistake_within_one_role(ca, tmp_path):
    # README walk: "one line per mistake (all of them)", but a role with four mistakes gave two lines (its
    # unknown key and the first bad field); fixing one and re-running found the next, one run per mistake.
    bad = tmp_path / "bad.toml"
    bad.write_text('[groups]\n\n[roles.x]\nmembers = ["group:nope"]\nprincipals = ["a b"]\nmax_ttl = "8x"\n'
                   'force_command = ""\nsource_address = ["10.0.0.0/33"]\nbogus = 1\n')
    r = ca("policy", "check", str(bad))
    assert r.exit_code == 1
    fields = [line.split(": ")[2] for line in r.stderr.strip().splitlines()]
    assert fields == ["roles.x.bogus", "roles.x.members", "roles.x.principals", "roles.x.max_ttl",
                      "roles.x.force_command", "roles.x.source_address"], r.stderr


# -- CLI conventions: man pages, option names ---------------------------------------------------

def _commands(cmd, path):
    import click

    yield path, cmd
    if isinstance(cmd, click.Group):
        for name in cmd.list_commands(None):
            yield from _commands(cmd.get_command(None, name), [*path, name])


def test_man_pages_are_generated_for_every_command_and_render_cleanly(tmp_path):
    from ca.cli.admin import cli as admin_cli
    from ca.cli.client import cli as client_cli
    from ca.cli.manpages import write_all

    written = {p.name: p for p in write_all(tmp_path / "man1")}
    for cli, prog in ((admin_cli, "iast-ca"), (client_cli, "iast-ssh")):
        for path, _ in _commands(cli, [prog]):
            assert "-".join(path) + ".1" in written, path
    page = written["iast-ca-audit-list.1"].read_text()
    assert "--kind" in page and "did you mean" not in page and ".SH EXIT STATUS" in page
    for name in ("iast-ca.1", "iast-ca-audit-list.1", "iast-ca-user-passwd.1", "iast-ssh.1"):
        r = subprocess.run(["groff", "-man", "-ww", "-z", str(written[name])], capture_output=True, text=True)
        assert r.returncode == 0 and r.stderr == "", (name, r.stderr)
    r = subprocess.run(["man", "-P", "cat", "iast-ca-reload"], env={**os.environ, "MANPATH": str(tmp_path)},
                       capture_output=True, text=True)
    assert r.returncode == 0 and "SIGHUP" in r.stdout, r.stderr


def test_iast_ca_names_file_outputs_o_output():
    """Files are -o/--output FILE in every iast-ca command; no --out, no --output for a directory."""
    import click

    from ca.cli.admin import cli

    for path, cmd in _commands(cli, ["iast-ca"]):
        for p in cmd.params:
            if not isinstance(p, click.Option):
                continue
            assert "--out" not in p.opts, path
            if "--output" in p.opts:
                assert "-o" in p.opts and isinstance(p.type, click.Path) and not p.type.dir_okay, path
