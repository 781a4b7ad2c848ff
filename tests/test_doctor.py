"""``iast-ca doctor`` (docs/security.md rule 75) and the CLI conveniences: --version, completion.

Each finding is made on purpose on a real state directory (and a real PostgreSQL
database for the outage), and a fresh ``iast-ca init`` has none.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ca.review.doctor import CODES

from .conftest import TEST_POLICY

pytestmark = pytest.mark.both_backends

IAST_CA = str(Path(sys.executable).parent / "iast-ca")
IAST_SSH = str(Path(sys.executable).parent / "iast-ssh")


def _codes(cli_run) -> set[str]:
    r = cli_run("doctor", "--json")
    found = json.loads(r.output)
    assert r.exit_code == (1 if found else 0)
    for f in found:
        assert f["code"] in CODES and f["severity"] in ("error", "warning") and f["fix"]
    return {f["code"] for f in found}


def test_a_fresh_ca_is_clean(cfg, cli_run):
    r = cli_run("doctor")
    assert r.exit_code == 0 and "no findings" in r.output


def test_a_running_services_pid_file_is_no_finding(cfg, cli_run):
    # README walk: 'iast-ca doctor' beside 'make run' reported "error: key_permissions: var/serve.pid has
    # mode 0644". The pid file is public by design (iast-ca reload reads it); doctor looks at secrets only.
    from ca.service.control import pid_file

    with pid_file(cfg.state_dir) as path:
        assert path.stat().st_mode & 0o044  # readable by others, as serve writes it
        r = cli_run("doctor")
    assert r.exit_code == 0 and "no findings" in r.output, r.output


def test_open_permissions_are_found(cfg, cli_run):
    os.chmod(cfg.state_dir, 0o755)
    assert _codes(cli_run) == {"state_dir_permissions"}
    os.chmod(cfg.state_dir, 0o700)
    os.chmod(cfg.state_dir / "host-key", 0o644)
    assert _codes(cli_run) == {"key_permissions"}
    r = cli_run("doctor")
    assert r.exit_code == 1
    line, = r.output.strip().splitlines()
    assert line.startswith("error: key_permissions: ") and f"chmod 600 {cfg.state_dir / 'host-key'}" in line


def test_policy_warnings(cfg, cli_run, policy_file):
    policy_file.write_text(TEST_POLICY + """
[roles.ops-root]
members = ["group:sre"]
principals = ["root"]
max_ttl = "1h"

[roles.everyone-admin]
members = ["*"]
principals = ["admin"]
max_ttl = "1h"

[roles.everyone-admin-guarded]
members = ["*"]
principals = ["admin"]
force_command = "/usr/local/bin/admin-menu"
max_ttl = "1h"
""")
    r = cli_run("doctor", "--json")
    found = json.loads(r.output)
    assert r.exit_code == 1
    assert sorted((f["code"], f["message"].split()[1]) for f in found) == [
        ("policy_root_unguarded", "ops-root"), ("policy_wildcard_privileged", "everyone-admin")]
    # breakglass grants root but requires a reason: not a finding.


def test_an_unreadable_keyring_is_found(cfg, cli_run):
    (cfg.state_dir / "keyring.json").write_text("{not json")
    assert "keyring_unreadable" in _codes(cli_run)


@pytest.mark.sqlite_only
def test_version_and_completion(tmp_path):
    for cmd, name in ((IAST_CA, "iast-ca"), (IAST_SSH, "iast-ssh")):
        r = subprocess.run([cmd, "--version"], capture_output=True, text=True)
        assert r.returncode == 0 and r.stdout.startswith(f"{name}, version ")
        for shell in ("bash", "zsh", "fish"):
            var = f"_{name.upper().replace('-', '_')}_COMPLETE"
            r = subprocess.run([cmd], env={**os.environ, var: f"{shell}_source"}, capture_output=True, text=True)
            assert r.returncode == 0 and var in r.stdout, (shell, r.stderr)  # the script calls back with it


@pytest.mark.sqlite_only
def test_a_database_that_does_not_answer_is_found(cfg, cli_run):
    with socket.socket() as s:  # a port with nothing listening: a PostgreSQL server that is down
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = cli_run("doctor", "--json", env={"IAST_CA_DATABASE": f"postgresql://iast@127.0.0.1:{port}/ca"})
    assert r.exit_code == 1
    assert "database_unavailable" in {f["code"] for f in json.loads(r.output)}


def _stderr_on_a_terminal(argv: list[str]) -> tuple[int, str, str]:
    """Run with stderr on a pseudo-terminal (stdout piped); returns (status, stdout, what the terminal got)."""
    import pty

    master, slave = pty.openpty()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL)
    os.close(slave)
    out = proc.stdout.read()
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed its end
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    return proc.wait(), out.decode(), b"".join(chunks).decode(errors="replace")


@pytest.mark.sqlite_only
def test_progress_bars_only_on_a_terminal(cfg, tmp_path):
    base = [IAST_CA, "--state-dir", str(cfg.state_dir), "--policy", str(cfg.policy_path)]
    log = tmp_path / "auth.log"
    log.write_text("2026-01-01T00:00:00+00:00 web1 sshd[1]: Server listening on 0.0.0.0 port 22.\n" * 50)
    for argv, label in ((base + ["audit", "report", "--format", "json"], "building the report"),
                        (base + ["audit", "correlate", "--host", "web1", str(log)], "reading sshd logs")):
        status, out, tty = _stderr_on_a_terminal(argv)
        assert status == 0, tty
        assert label in tty and label not in out  # on the terminal, never in the output
        piped = subprocess.run(argv, capture_output=True, text=True)
        assert piped.returncode == 0 and label not in piped.stderr and piped.stdout.strip()
        if "json" in argv:
            assert json.loads(out) == {**json.loads(piped.stdout), "generated": json.loads(out)["generated"]}


def test_a_clock_behind_the_newest_audit_event_is_found(cfg, cli_run):
    """A replica (or this machine before its clock stepped back) wrote an event an hour ahead."""
    import time

    from ca.app import open_audit

    assert "clock_skew" not in _codes(cli_run)
    store = open_audit(cfg, clock=lambda: time.time() + 3600)
    try:
        store.record("ca_key_reloaded", {"note": "written by a replica whose clock is an hour ahead"})
    finally:
        store.close()
    r = cli_run("doctor", "--json")
    skew = [f for f in json.loads(r.output) if f["code"] == "clock_skew"]
    assert r.exit_code == 1 and len(skew) == 1
    assert "newest audit event" in skew[0]["message"] and "after this machine's clock" in skew[0]["message"]
    assert "59m" in skew[0]["message"] or "1h" in skew[0]["message"]


def test_the_database_server_clock_is_read(cfg):
    """PostgreSQL reports its own clock (what doctor compares); SQLite has none but this one."""
    import time

    from ca.app import open_audit

    store = open_audit(cfg)
    try:
        before, theirs, after = time.time(), store.server_time(), time.time()
    finally:
        store.close()
    if cfg.database:
        assert before - 2 <= theirs <= after + 2  # the test server runs on this machine's clock
    else:
        assert theirs is None


@pytest.mark.sqlite_only
def test_clock_findings_name_the_direction():
    from ca.review.doctor import clock_findings

    assert clock_findings(server=(100.0, 130.0, 101.0), newest=None, now=101.0, skew=60) == []
    ahead, = clock_findings(server=(100.0, 300.0, 101.0), newest=None, now=101.0, skew=60)
    assert "3m19s behind the database server's" in ahead.message
    behind, = clock_findings(server=(1000.0, 800.0, 1001.0), newest=None, now=1001.0, skew=60)
    assert "3m20s ahead of the database server's" in behind.message
    assert clock_findings(server=None, newest=(7, 1050.0), now=1001.0, skew=60) == []
