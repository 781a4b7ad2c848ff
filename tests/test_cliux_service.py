"""Issue 16's findings that need a real service (and real clients): replays and aborted
connections in the audit log, the login key in 'audit show', 'iast-ca reload', a closed pipe
and Ctrl-C in iast-ssh."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import asyncssh
import pytest

from ca.auth.totp import totp

from .conftest import TEST_POLICY, make_key
from .service_harness import IAST_CA, kbd_login
from .test_cliux import run_into_closed_pipe
from .test_service import PASSWORD, ca, events, users  # noqa: F401 - fixtures

IAST_SSH = str(Path(sys.executable).parent / "iast-ssh")


def host_fingerprint(cfg) -> str:
    from .test_client import host_fingerprint as fp

    return fp(cfg)


def wait_for_event(cfg, kind: str, user: str | None = None, n: int = 1, timeout: float = 10) -> list:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = events(cfg, kind=kind, user=user)
        if len(found) >= n:
            return found
        time.sleep(0.1)
    return events(cfg, kind=kind, user=user)


def test_a_replayed_code_is_audited_as_a_replay(ca, users, cfg):
    _, secret = users["alice"]
    code = totp(secret, int(time.time()))
    kbd_login(ca, "alice", PASSWORD, code)
    time.sleep(1.1)  # past the backoff of the failure we are about to cause
    with pytest.raises(asyncssh.PermissionDenied):
        kbd_login(ca, "alice", PASSWORD, code)
    (failure,) = [e for e in wait_for_event(cfg, "auth_failed", "alice") if e.data["method"] == "keyboard-interactive"]
    assert failure.data["why"] == "replay: this one-time code was already used"
    time.sleep(1.1)
    with pytest.raises(asyncssh.PermissionDenied):  # a wrong code is still just wrong
        kbd_login(ca, "alice", PASSWORD, "000000")
    whys = sorted(e.data["why"] for e in wait_for_event(cfg, "auth_failed", "alice", n=2))
    assert whys == ["replay: this one-time code was already used", "wrong password or one-time code"]


async def _give_up_before_trying(port: int, known_hosts: str) -> None:
    """An SSH client that sends its user name (the 'none' method) and then has nothing to try."""
    try:
        async with asyncssh.connect("127.0.0.1", port, username="alice", known_hosts=known_hosts,
                                    client_keys=None, agent_path=None, password=None, kbdint_auth=False,
                                    preferred_auth=["keyboard-interactive"]):
            pass
    except asyncssh.PermissionDenied:
        pass


def test_an_aborted_connection_is_a_log_line_not_an_audit_event(ca, users, cfg, tmp_path):
    import asyncio

    mark = len(ca.lines)
    for _ in range(2):
        asyncio.run(_give_up_before_trying(ca.port, str(ca.known_hosts())))
        with socket.create_connection(("127.0.0.1", ca.port)) as s:  # a port scan: banner, then gone
            s.recv(64)
    last = ca.wait_for("connection closed before any authentication attempt", since=mark)
    deadline = time.monotonic() + 10
    while last["aborted_total"] < 2 and time.monotonic() < deadline:
        last = ca.wait_for("connection closed before any authentication attempt", since=len(ca.lines) - 1)
    assert last["aborted_total"] >= 2 and last["source"] == "127.0.0.1"
    # a real failed attempt right after is still audited
    stranger = make_key(tmp_path, name="stranger")
    assert ca.ssh("alice", stranger, "whoami").returncode == 255
    (failure,) = wait_for_event(cfg, "auth_failed", "alice")
    assert failure.data["method"] == "publickey" and failure.data["offered_keys"]
    assert [e for e in events(cfg, kind="auth_failed") if e.data["method"] == "none"] == []


def test_audit_show_names_the_enrolled_key_that_logged_in(ca, users, cfg, tmp_path, cli_run):
    key, _ = users["dave"]
    pub = make_key(tmp_path, name="session").with_suffix(".pub").read_text()
    assert ca.ssh("dave", key, "sign --role dev", input=pub).returncode == 0
    (issued,) = events(cfg, kind="issued")
    shown = cli_run("audit", "show", "--serial", str(issued.serial)).stdout
    line = next(x for x in shown.splitlines() if x.startswith("login_key"))
    assert issued.data["login_key"] in line and "(test, enrolled key of dave)" in line, line
    listed = cli_run("audit", "list", "--kind", "issued").stdout
    assert f"key {issued.data['login_key'][:15]}..." in listed


def _reload(cfg) -> subprocess.CompletedProcess:
    return subprocess.run([IAST_CA, "--state-dir", str(cfg.state_dir), "--policy", str(cfg.policy_path), "reload"],
                          capture_output=True, text=True, timeout=60)


def test_reload_signals_the_service_and_reports_its_verdict(ca, users, cfg):
    cfg.policy_path.write_text("[roles.dev]\nmembers = []\n")  # broken
    mark = len(ca.lines)
    r = _reload(cfg)
    assert r.returncode == 1 and "refused the policy and keeps the old one" in r.stderr, r.stderr
    refused = ca.wait_for("policy reload refused; keeping the old policy", since=mark)
    assert refused["level"] == "warning"
    cfg.policy_path.write_text(TEST_POLICY)
    r = _reload(cfg)
    assert r.returncode == 0 and "reloaded: policy sha256" in r.stdout, r.stderr
    pid = (cfg.state_dir / "serve.pid").read_text().strip()
    assert pid == str(ca.proc.pid)
    ca.stop()
    assert not (cfg.state_dir / "serve.pid").exists()
    r = _reload(cfg)
    assert r.returncode == 1 and "no service is running" in r.stderr


def test_a_stale_pid_file_signals_nobody(cfg, cli_run):
    assert cli_run.state == cfg.state_dir  # made by the cfg fixture
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        (cli_run.state / "serve.pid").write_text(f"{sleeper.pid}\n")
        r = cli_run("reload")
        assert r.exit_code == 1 and "not an iast-ca service" in r.stderr
        assert sleeper.poll() is None  # not signalled
    finally:
        sleeper.kill()
        sleeper.wait()


def test_iast_ssh_is_quiet_on_a_closed_pipe(ca, users, cfg, tmp_path):
    key, _ = users["dave"]
    env = {k: v for k, v in os.environ.items() if k not in ("SSH_AUTH_SOCK", "XDG_CONFIG_HOME")}
    env.update(HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path / "xdg"))
    argv = [IAST_SSH, "roles", "--ca", f"127.0.0.1:{ca.port}", "--ca-fingerprint", host_fingerprint(cfg),
            "-l", "dave", "-i", str(key)]
    p = run_into_closed_pipe(argv, env)
    assert p.returncode == 0 and "Broken pipe" not in p.stderr and "Error" not in p.stderr, p.stderr
    ok = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "dev" in ok.stdout, ok.stderr  # the same command does work


def test_iast_ssh_ctrl_c_exits_130(users, cfg, tmp_path):
    """Ctrl-C while the client waits on a CA that never answers (a listener that sends nothing)."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    env = {k: v for k, v in os.environ.items() if k not in ("SSH_AUTH_SOCK", "XDG_CONFIG_HOME")}
    env.update(HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path / "xdg"))
    proc = subprocess.Popen([IAST_SSH, "roles", "--ca", f"127.0.0.1:{silent.getsockname()[1]}",
                             "--ca-fingerprint", host_fingerprint(cfg), "-l", "dave", "-i", str(users["dave"][0])],
                            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    silent.settimeout(20)
    try:
        conn, _ = silent.accept()  # the client is connected and waiting for a banner
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
        conn.close()
    finally:
        if proc.poll() is None:
            proc.kill()
        silent.close()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "Aborted!" not in err and "Error" not in err, err
