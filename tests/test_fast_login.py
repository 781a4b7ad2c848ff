"""Issue 14, item 2: ``iast-ssh login`` carried by the system's OpenSSH (ca/client/openssh.py), end to end.

A real ``iast-ca serve``, a real ``ssh-agent``, the real ``ssh`` and
``ssh-keygen`` (seen through a logging wrapper on PATH that runs the real
binary), and a real ``sshd`` that takes the certificate. The first login
checks the service host key against the pin the asyncssh way and caches it;
the next ones go over OpenSSH. The fixtures are tests/test_client.py's.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from ca.auth.totp import totp
from ca.cli.fast_login import _FLAGS, _VALUE_OPTIONS, parse_login
from ca.client import AUTH_FAILED_MESSAGE

from .conftest import make_key
from .test_client import (  # noqa: F401 - fixtures
    IAST_SSH,
    agent,
    agent_ssh,
    ca,
    ca_args,
    env,
    events,
    host_fingerprint,
    iast_ssh,
    run_in_pty,
    ssh_add,
    sshd,
    start_ca,
    trust_ca,
    users,
)


@pytest.fixture
def watched(env, tmp_path):
    """``env`` with ``ssh`` on PATH wrapped: each call's arguments go to a log, then the real ssh runs."""
    real = shutil.which("ssh")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "ssh-calls.log"
    wrapper = bin_dir / "ssh"
    wrapper.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {log}\nexec {real} "$@"\n')
    wrapper.chmod(0o755)
    e = dict(env, PATH=f"{bin_dir}:{env.get('PATH', os.defpath)}")
    e["_log"] = str(log)
    return e


def ssh_calls(env: dict) -> list[str]:
    p = Path(env["_log"])
    return p.read_text().splitlines() if p.exists() else []


def cache_file(env: dict, ca) -> Path:
    return Path(env["HOME"]) / ".cache" / "iast-ssh" / f"hostkey-127.0.0.1_{ca.port}"


def agent_lines(env: dict) -> list[str]:
    return ssh_add(env, "-L").stdout.splitlines() if ssh_add(env, "-L").returncode == 0 else []


def first_login(env, ca, cfg, key, user="alice", *more):
    """The asyncssh login that pins and caches the service host key."""
    r = iast_ssh(env, "login", *ca_args(ca, cfg), "-l", user, "-i", str(key), *more)
    assert r.returncode == 0, r.stderr
    assert not [c for c in ssh_calls(env) if " sign " in c]  # not over ssh: no host key cached yet
    return r


@pytest.mark.sshd
def test_the_second_login_goes_over_openssh_and_keeps_every_rule(sshd, ca, cfg, users, watched, agent):
    key, _ = users["alice"]
    env = watched
    trust_ca(sshd, cfg)
    first_login(env, ca, cfg, key)
    # The cached service host key is the one OpenSSH computes the pinned fingerprint of.
    line = cache_file(env, ca).read_text()
    assert (cache_file(env, ca).stat().st_mode & 0o777) == 0o600
    fp = subprocess.run(["ssh-keygen", "-lf", "/dev/stdin"], input=line, capture_output=True, text=True).stdout
    assert fp.split()[1] == host_fingerprint(cfg)
    (first_cert,) = [l for l in agent_lines(env) if "-cert-v01@openssh.com " in l]
    krl = Path(env["HOME"]) / ".cache" / "iast-ssh" / f"krl-127.0.0.1_{ca.port}"
    old = time.time() - 3600
    os.utime(krl, (old, old))  # an hour old: this login fetches it again (on a second connection)

    r = iast_ssh(env, "login", "--json")  # everything from the profile the first login saved
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    (sign,) = [c for c in ssh_calls(env) if c.endswith("sign --json")]
    # Exactly one acceptable host key, no ssh_config, no agent, no prompt (docs/security.md rule 76).
    for option in ("-F /dev/null", "StrictHostKeyChecking=yes", "GlobalKnownHostsFile=/dev/null",
                   "IdentityAgent=none", "IdentitiesOnly=yes", "BatchMode=yes", "UpdateHostKeys=no",
                   f"-i {key}", "-l alice"):
        assert option in sign, (option, sign)
    assert [c for c in ssh_calls(env) if c.endswith(" krl")]  # the KRL, for status
    assert krl.stat().st_mtime > old + 3000

    # One certificate per CA and role: the new one replaced the first; no bare key in the agent.
    listed = agent_lines(env)
    assert len(listed) == 1 and listed[0].startswith("ssh-ed25519-cert-v01@openssh.com "), listed
    assert listed[0] != first_cert and listed[0].split()[2] == got["key_id"]
    assert f"removed the previous certificate {first_cert.split()[2]} from ssh-agent" in r.stderr
    issued = events(cfg, "issued")
    assert [e.data["auth_methods"] for e in issued] == [["publickey"], ["publickey"]]
    assert max(issued, key=lambda e: e.serial).key_id == got["key_id"] and got["where"] == "agent"
    # No session key was left behind in the temporary directory.
    runtime = os.environ.get("XDG_RUNTIME_DIR") or "/tmp"
    assert not [p for p in Path(runtime).glob("iast-ssh-*") if p.stat().st_mtime > time.time() - 60
                and any(p.iterdir())]

    # A KRL fetched minutes ago is not fetched again (status --refresh does).
    calls = len(ssh_calls(env))
    assert iast_ssh(env, "login").returncode == 0
    assert [c.split()[-1] for c in ssh_calls(env)[calls:]] == ["--json"]
    newest = max(events(cfg, "issued"), key=lambda e: e.serial)
    held = json.loads(iast_ssh(env, "status", "--json").stdout)["certificates"]
    assert [(h["key_id"], h["revoked"]) for h in held] == [(newest.key_id, False)]

    # The certificate works with a real sshd, from the agent.
    mark = sshd.log_mark()
    s = agent_ssh(sshd, agent["sock"], "echo fast-$((6*7))")
    assert s.returncode == 0 and s.stdout.strip() == "fast-42", f"{s.stderr}\n{sshd.log(mark)}"
    sshd.wait_for_log(rf"ID {re.escape(newest.key_id)} \(serial {newest.serial}\)", mark)


def test_over_openssh_the_agent_drops_the_certificate_at_its_expiry(cfg, users, watched, tmp_path):
    env = watched
    cfg.policy_path.write_text('[defaults]\nrole = "blink"\n\n[roles.blink]\nmembers = ["*"]\n'
                               'principals = ["{user}"]\nmax_ttl = "5s"\n')
    ca = start_ca(cfg, tmp_path)
    try:
        key, _ = users["alice"]
        first_login(env, ca, cfg, key, "alice", "--ttl", "5s")
        r = iast_ssh(env, "login", *ca_args(ca, cfg), "-l", "alice", "-i", str(key), "--ttl", "5s", "--json")
        assert r.returncode == 0, r.stderr
        assert [c for c in ssh_calls(env) if c.endswith("sign --json --ttl 5")]  # over OpenSSH
        got = json.loads(r.stdout)
        assert got["where"] == "agent" and 0 < got["seconds_left"] <= 5
        deadline = time.monotonic() + 9
        while got["key_id"] in ssh_add(env, "-l").stdout:
            assert time.monotonic() < deadline, "the certificate outlived its lifetime in the agent"
            time.sleep(0.25)
        assert got["valid_before"] - 2.5 <= time.time() <= got["valid_before"] + 1.5
        assert ssh_add(env, "-l").returncode == 1
    finally:
        ca.stop()


def test_a_cached_host_key_that_is_not_the_pins_is_never_used(ca, cfg, users, watched, tmp_path):
    env = watched
    key, _ = users["alice"]
    first_login(env, ca, cfg, key)
    # Someone swaps the cache for their own key: it no longer matches the pin, so it is ignored and
    # the login checks the service's key the asyncssh way (then caches the right one again).
    impostor = make_key(tmp_path, name="impostor")
    real = cache_file(env, ca).read_text()
    cache_file(env, ca).write_text(impostor.with_suffix(".pub").read_text())
    before = len(ssh_calls(env))
    r = iast_ssh(env, "login")
    assert r.returncode == 0, r.stderr
    assert not [c for c in ssh_calls(env)[before:] if " sign " in c]
    assert cache_file(env, ca).read_text().split()[:2] == real.split()[:2]


def test_refusals_over_openssh_say_what_the_asyncssh_path_says(ca, cfg, users, watched, tmp_path):
    env = watched
    key, _ = users["alice"]
    first_login(env, ca, cfg, key)
    before = len(ssh_calls(env))
    # A role alice may not have: the CA's refusal, exit 3, one line.
    r = iast_ssh(env, "login", "--role", "breakglass", "--reason", "x")
    assert r.returncode == 3 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr.startswith("Error: ") and "breakglass" in r.stderr
    # A key the CA does not know, in a script: authentication failed, exit 4, no retry elsewhere.
    stranger = make_key(tmp_path, name="stranger")
    r = iast_ssh(env, "login", "-i", str(stranger))
    assert r.returncode == 4 and r.stderr.strip() == f"Error: {AUTH_FAILED_MESSAGE}", r.stderr
    assert len([c for c in ssh_calls(env)[before:] if " sign " in c]) == 2  # both went over OpenSSH
    # The CA is gone: said as such, without a second try through asyncssh's timeout.
    ca.stop()
    r = iast_ssh(env, "login")
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip() == f"Error: cannot reach the CA at 127.0.0.1:{ca.port}: Connection refused"


def test_a_second_factor_over_openssh(ca, cfg, users, watched):
    env = watched
    key, secret = users["carol"]
    first_login(env, ca, cfg, key, "carol")
    args = ["login", "--role", "breakglass", "--reason", "INC-9"]
    r = iast_ssh(env, *args)  # a script cannot type the code
    assert r.returncode == 4 and "one-time code" in r.stderr.lower(), r.stderr
    r = iast_ssh(env, *args, "--otp", totp(secret, int(time.time())), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["role"] == "breakglass"
    assert [c for c in ssh_calls(env) if "--role breakglass --reason INC-9 --otp " in c]
    # On a terminal the code is asked for (click's prompt, loaded only then) and sent on a new connection.
    time.sleep(max(0.0, 30.5 - time.time() % 30))  # a fresh code: each works once
    status, shown = run_in_pty([IAST_SSH, *args], {k: v for k, v in env.items() if k != "_log"},
                               [(r"One-time code: ", totp(secret, int(time.time())))], timeout=60)
    assert status == 0 and "role breakglass" in shown, shown


def test_the_fast_entry_reads_only_what_click_reads_alike():
    """Every option the click-free entry reads is the click login command's, with the same name; anything
    else goes to click."""
    from ca.cli.client import cli

    login = cli.commands["login"]
    by_opt = {o: p for p in login.params for o in (*p.opts, *p.secondary_opts)}
    for opt, name in _VALUE_OPTIONS.items():
        assert opt in by_opt and by_opt[opt].name == name and not by_opt[opt].is_flag, opt
    for opt in _FLAGS:
        assert opt in by_opt and by_opt[opt].is_flag, opt
    assert parse_login(["login", "--ca", "a:1", "-i", "/k", "--role=dev", "--json"]) == {
        "ca": "a:1", "identity": "/k", "role": "dev", "as_json": True}
    for argv in (["status"], ["login", "--help"], ["login", "-h"], ["login", "--no-agent"], ["login", "-i"],
                 ["login", "--role", "a", "-r", "b"], ["login", "--ttl", "-5"], ["login", "--ca="],
                 ["login", "-idev"], ["login", "--sso"], ["login", "extra"], ["login", "-i", "/"]):
        assert parse_login(argv) is None, argv
