"""The iast-ssh client, end to end: a real ``iast-ca serve``, a real ``ssh-agent``, a real ``sshd``
and the real ``ssh`` client.

``iast-ssh`` runs as the installed console script in a subprocess (with its
own HOME, XDG_CONFIG_HOME and SSH_AUTH_SOCK), under a pseudo-terminal when a
test answers its prompts. The library is called directly only where a test
needs to watch a callback.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from ca.auth.totp import totp
from ca.auth.users import UserStore
from ca.client import AUTH_FAILED_MESSAGE, Client, Prompter, load_config
from ca.errors import AuthenticationFailed, BadKey, ConfigError
from ca.keys.keyring import Keyring
from ca.state import StatePaths
from ca.store import AuditLog

from .conftest import make_key
from .service_harness import CAProcess
from .sshd_harness import make_sshd_fixture

IAST_SSH = str(Path(sys.executable).parent / "iast-ssh")
CHEAP = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
PASSWORD = "correct horse battery staple"
FAST_THROTTLE = '[throttle]\nuser_failures = 3\naddress_failures = 50\nmax_backoff = "1s"\nlockout = "10m"\n'

# sshd trusts each test's CA (set per test); it starts trusting nothing.
sshd = make_sshd_fixture(None, trust=lambda: [])


# --------------------------------------------------------------------------
# fixtures and helpers


@pytest.fixture
def users(cfg, tmp_path):
    """alice (group sre) and carol (group security): an enrolled key each, and password + TOTP."""
    store = UserStore(AuditLog(StatePaths(cfg.state_dir).db), hasher=CHEAP)
    out = {}
    for name in ("alice", "carol"):
        key = make_key(tmp_path, name=f"{name}_enrolled")
        enrol = store.add(name, keys=[key.with_suffix(".pub").read_text()], password=PASSWORD, totp=True,
                          actor="test")
        out[name] = (key, enrol.totp_secret)
    return out


def start_ca(cfg, tmp_path) -> CAProcess:
    return CAProcess(cfg.state_dir, cfg.policy_path, FAST_THROTTLE, workdir=tmp_path).start()


@pytest.fixture
def ca(cfg, users, tmp_path):
    p = start_ca(cfg, tmp_path)
    yield p
    p.stop()


def host_fingerprint(cfg) -> str:
    """The CA host key's fingerprint as OpenSSH computes it (independently of our code)."""
    out = subprocess.run(["ssh-keygen", "-lf", str(StatePaths(cfg.state_dir).host_key.with_suffix(".pub"))],
                         check=True, capture_output=True, text=True).stdout
    return out.split()[1]


@pytest.fixture
def agent():
    """A real ssh-agent for this test: {"sock", "pid"}; killed at teardown."""
    out = subprocess.run(["ssh-agent", "-s"], check=True, capture_output=True, text=True).stdout
    sock = re.search(r"SSH_AUTH_SOCK=([^;]+);", out).group(1)
    pid = int(re.search(r"SSH_AGENT_PID=(\d+);", out).group(1))
    yield {"sock": sock, "pid": pid}
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass


@pytest.fixture
def env(tmp_path, agent):
    """The environment of the user running iast-ssh: a home and config dir of its own, the test's agent."""
    home = tmp_path / "home"
    home.mkdir()
    e = {k: v for k, v in os.environ.items() if k not in ("SSH_AUTH_SOCK", "SSH_AGENT_PID", "XDG_CONFIG_HOME")}
    e.update(HOME=str(home), XDG_CONFIG_HOME=str(tmp_path / "xdg"), SSH_AUTH_SOCK=agent["sock"])
    return e


def iast_ssh(env: dict, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """The installed ``iast-ssh``, stdin not a terminal (as in a script)."""
    return subprocess.run([IAST_SSH, *args], env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=timeout)


def ca_args(ca: CAProcess, cfg, *more: str) -> list[str]:
    return ["--ca", f"127.0.0.1:{ca.port}", "--ca-fingerprint", host_fingerprint(cfg), *more]


def ssh_add(env: dict, flag: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ssh-add", flag], env=env, capture_output=True, text=True, timeout=10)


def events(cfg, kind: str | None = None) -> list:
    log = AuditLog(StatePaths(cfg.state_dir).db)
    try:
        return log.events(kind=kind, limit=None)
    finally:
        log.close()


def run_in_pty(argv: list[str], env: dict, dialogue: list[tuple[str, str | None]], timeout: float = 30,
               echo_after: list | None = None):
    """Run ``argv`` with a pseudo-terminal as stdin/stdout/stderr; wait for each prompt (a regex) and
    type its answer (None: press Ctrl-C, i.e. send SIGINT). Returns (exit status, everything the
    terminal showed). ``echo_after`` receives whether the terminal echoes input when it is done."""
    master, slave = os.openpty()
    # A new session without a controlling terminal: getpass falls back to the pty on stdin.
    proc = subprocess.Popen(argv, env=env, stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
    os.close(slave)
    shown = b""
    deadline = time.monotonic() + timeout

    def read_some() -> bool:
        nonlocal shown
        r, _, _ = select.select([master], [], [], max(0.0, min(0.2, deadline - time.monotonic())))
        if r:
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                return False
            if not data:
                return False
            shown += data
        return True

    try:
        for prompt, answer in dialogue:
            start = len(shown)
            while not re.search(prompt, shown[start:].decode(errors="replace")):
                if time.monotonic() > deadline or (not read_some() and proc.poll() is not None):
                    raise AssertionError(f"no prompt {prompt!r}; the terminal showed:\n{shown.decode(errors='replace')}")
            if answer is None:
                proc.send_signal(signal.SIGINT)
            else:
                os.write(master, answer.encode() + b"\n")
        while read_some() and time.monotonic() < deadline:
            if proc.poll() is not None and not select.select([master], [], [], 0.2)[0]:
                break
        status = proc.wait(max(1.0, deadline - time.monotonic()))
        if echo_after is not None:
            echo_after.append(bool(termios.tcgetattr(master)[3] & termios.ECHO))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return status, shown.decode(errors="replace").replace("\r\n", "\n")


def agent_ssh(sshd, sock: str, command: str) -> subprocess.CompletedProcess:
    """The real ssh client with no key of its own: only what the agent at ``sock`` holds."""
    argv = [sshd.ssh_bin, "-F", "/dev/null", "-o", f"IdentityAgent={sock}", "-o", "IdentityFile=none",
            "-o", "BatchMode=yes", "-o", "PreferredAuthentications=publickey",
            "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={sshd.known_hosts}",
            "-o", "GlobalKnownHostsFile=/dev/null", "-o", "UpdateHostKeys=no", "-o", "ConnectTimeout=10",
            "-p", str(sshd.port), "-T", f"{sshd.login_user}@{sshd.host}", command]
    return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=20)


def trust_ca(sshd, cfg, principal: str = "alice") -> None:
    sshd.set_trusted_ca_keys(Keyring.load(cfg.state_dir).trust_lines())
    sshd.allow_principals(sshd.login_user, [principal])


# --------------------------------------------------------------------------
# the whole path: CA -> iast-ssh -> ssh-agent -> ssh -> sshd


@pytest.mark.sshd
def test_login_into_the_agent_then_ssh_with_only_the_agent(sshd, ca, cfg, users, env, agent):
    key, _ = users["alice"]
    trust_ca(sshd, cfg)
    r = iast_ssh(env, "login", *ca_args(ca, cfg), "-l", "alice", "-i", str(key))
    assert r.returncode == 0, r.stderr
    assert re.search(r"^Certificate iast:alice:dev:\d+ \(serial \d+\): principals alice, role dev, valid for "
                     r"(59m5\ds|1h)", r.stdout, re.M), r.stdout
    assert f"Added to ssh-agent ({agent['sock']})" in r.stdout

    listed = ssh_add(env, "-L").stdout.splitlines()
    assert len(listed) == 1 and listed[0].startswith("ssh-ed25519-cert-v01@openssh.com "), listed
    key_id = listed[0].split()[2]
    (issued,) = events(cfg, "issued")
    assert key_id == issued.key_id == f"iast:alice:dev:{issued.serial}"
    assert issued.data["auth_methods"] == ["publickey"]

    marker = f"agent-login-{os.getpid()}-$((6*7))"
    mark = sshd.log_mark()
    s = agent_ssh(sshd, agent["sock"], f"echo {marker}")
    assert s.returncode == 0, f"{s.stderr}\n{sshd.log(mark)}"
    assert s.stdout.strip() == marker.replace("$((6*7))", "42")
    m = sshd.wait_for_log(rf"^Accepted publickey for {re.escape(sshd.login_user)} from 127\.0\.0\.1 port \d+ ssh2: "
                          rf"ED25519-CERT (\S+) ID {re.escape(key_id)} \(serial {issued.serial}\) CA ED25519 \S+$",
                          mark)
    assert m.group(1) == issued.data["key_fingerprint"]


@pytest.mark.sshd
def test_no_agent_writes_private_files_that_ssh_uses(sshd, ca, cfg, users, env, tmp_path):
    key, _ = users["alice"]
    trust_ca(sshd, cfg)
    out = tmp_path / "home" / "certs"
    r = iast_ssh(env, "login", *ca_args(ca, cfg), "-l", "alice", "-i", str(key), "--no-agent",
                 "--out-dir", str(out), "--json")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["where"] == "files" and got["key_path"] == str(out / "id_ed25519-dev")
    assert 3500 < got["seconds_left"] <= 3600 and got["principals"] == ["alice"]
    assert (out.stat().st_mode & 0o777) == 0o700
    for name in ("id_ed25519-dev", "id_ed25519-dev-cert.pub"):
        assert ((out / name).stat().st_mode & 0o777) == 0o600, name
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left
    assert ssh_add(env, "-l").returncode == 1  # nothing went into the agent

    # The same thing in text, with no agent at all: files are the fallback, and say how to use them.
    env2 = {k: v for k, v in env.items() if k != "SSH_AUTH_SOCK"}
    r2 = iast_ssh(env2, "login", *ca_args(ca, cfg), "-l", "alice", "-i", str(key), "--out", str(out))
    assert r2.returncode == 0, r2.stderr
    assert f"ssh -i {out / 'id_ed25519-dev'} alice@HOST" in r2.stdout
    assert "--out is deprecated; use --out-dir" in r2.stderr  # the old name still works

    mark = sshd.log_mark()
    s = sshd.ssh(out / "id_ed25519-dev", sshd.login_user, "echo files-$((6*7))")
    assert s.returncode == 0 and s.stdout.strip() == "files-42", f"{s.stderr}\n{sshd.log(mark)}"
    serial = max(e.serial for e in events(cfg, "issued"))
    sshd.wait_for_log(rf"^Accepted publickey for .* ID iast:alice:dev:{serial} \(serial {serial}\)", mark)


def test_a_short_lived_certificate_leaves_the_agent_when_it_expires(cfg, users, env, tmp_path):
    cfg.policy_path.write_text('[defaults]\nrole = "blink"\n\n[roles.blink]\nmembers = ["*"]\n'
                               'principals = ["{user}"]\nmax_ttl = "5s"\n')
    ca = start_ca(cfg, tmp_path)
    try:
        key, _ = users["alice"]
        r = iast_ssh(env, "login", *ca_args(ca, cfg), "-l", "alice", "-i", str(key), "--ttl", "5s", "--json")
        assert r.returncode == 0, r.stderr
        got = json.loads(r.stdout)
        assert got["where"] == "agent" and 0 < got["seconds_left"] <= 5
        listed = ssh_add(env, "-l")
        assert got["key_id"] in listed.stdout, listed
        deadline = time.monotonic() + 9
        while got["key_id"] in ssh_add(env, "-l").stdout:
            assert time.monotonic() < deadline, "the certificate outlived its lifetime in the agent"
            time.sleep(0.25)
        # It left because it expired: the agent's lifetime is the validity left, rounded down (never
        # past valid_before, which is itself whole seconds).
        assert got["valid_before"] - 2.5 <= time.time() <= got["valid_before"] + 1.5
        assert ssh_add(env, "-l").returncode == 1  # "The agent has no identities."
    finally:
        ca.stop()


def test_status_and_logout(ca, cfg, users, env, tmp_path):
    key, _ = users["alice"]
    # Authenticate with the enrolled key held by the agent (no -i), and get one certificate into the
    # agent and one into files.
    assert subprocess.run(["ssh-add", str(key)], env=env, capture_output=True).returncode == 0
    r = iast_ssh(env, "login", *ca_args(ca, cfg), "-l", "alice", "--ttl", "30m")
    assert r.returncode == 0, r.stderr
    out = tmp_path / "home" / ".ssh" / "iast-ssh"  # the default
    r = iast_ssh(env, "login", "-l", "alice", "--no-agent", "--role", "prod-readonly", "--reason", "INC-7")
    assert r.returncode == 0, r.stderr  # no --ca: the first login remembered the CA and its pin
    assert (out / "id_ed25519-prod-readonly-cert.pub").exists()
    assert all(e.data["auth_methods"] == ["publickey"] for e in events(cfg, "issued"))

    st = json.loads(iast_ssh(env, "status", "--json").stdout)
    by_where = {c["where"]: c for c in st["certificates"]}
    assert set(by_where) == {"agent", "files"} and st["notes"] == []
    assert by_where["agent"]["role"] == "dev" and by_where["agent"]["principals"] == ["alice"]
    assert 1700 < by_where["agent"]["seconds_left"] <= 1800
    assert by_where["files"]["role"] == "prod-readonly" and by_where["files"]["principals"] == ["prod-ro", "alice"]
    assert by_where["files"]["path"] == str(out / "id_ed25519-prod-readonly-cert.pub")
    assert not by_where["files"]["expired"] and not by_where["files"]["revoked"]
    text = iast_ssh(env, "status").stdout
    assert by_where["agent"]["key_id"] in text and "prod-readonly" in text

    r = iast_ssh(env, "logout")
    assert r.returncode == 0, r.stderr
    assert f"Removed {by_where['agent']['key_id']} from ssh-agent." in r.stdout
    assert not list(out.iterdir())  # both files of the pair deleted
    listed = ssh_add(env, "-l").stdout
    assert "iast:" not in listed and "ED25519-CERT" not in listed
    assert len(listed.splitlines()) == 1  # the enrolled key stays: logout removes only certificates
    assert json.loads(iast_ssh(env, "status", "--json").stdout)["certificates"] == []
    assert iast_ssh(env, "logout").stdout.strip() == "Nothing to remove."


# --------------------------------------------------------------------------
# password + one-time code, and MFA step-up


def test_password_and_code_at_the_terminal_prompts(ca, cfg, users, env):
    _, secret = users["alice"]
    no_agent = {k: v for k, v in env.items() if k != "SSH_AUTH_SOCK"}
    fp = host_fingerprint(cfg)
    argv = [IAST_SSH, "login", "--ca", f"127.0.0.1:{ca.port}", "-l", "alice", "--no-agent"]
    # No pin yet: the terminal shows the fingerprint and asks; then password (hidden) and code.
    status, shown = run_in_pty(argv, no_agent, [
        (r"Trust this CA and remember its service host key\?", "y"),
        (r"Password: ", PASSWORD),
        (r"One-time code: ", totp(secret, int(time.time()))),
    ])
    assert status == 0, shown
    assert fp in shown and PASSWORD not in shown  # the password is not echoed
    assert re.search(r"Certificate iast:alice:dev:\d+ .*principals alice", shown), shown
    saved = load_config(Path(env["XDG_CONFIG_HOME"]) / "iast-ssh" / "config.toml")
    assert saved.ca == f"127.0.0.1:{ca.port}" and saved.ca_fingerprint == fp
    (issued,) = events(cfg, "issued")
    assert issued.data["auth_methods"] == ["password", "totp"] and issued.data["mfa"] is True

    time.sleep(1.1)  # let the 1 s backoff of any earlier failure pass (there is none; keep it honest)
    status, shown = run_in_pty(argv, no_agent, [(r"Password: ", "wrong password"), (r"One-time code: ", "123456")])
    assert status == 4, shown
    assert AUTH_FAILED_MESSAGE in shown and len(events(cfg, "issued")) == 1


def test_ctrl_c_at_the_password_prompt_stops_at_once(ca, cfg, users, env):
    no_agent = {k: v for k, v in env.items() if k != "SSH_AUTH_SOCK"}
    echo = []
    started = time.monotonic()
    status, shown = run_in_pty([IAST_SSH, "login", *ca_args(ca, cfg), "-l", "alice"], no_agent,
                               [(r"Password: ", None)], timeout=15, echo_after=echo)
    assert status == 130 and "Aborted!" not in shown, shown  # 128 + SIGINT, quietly (README, "Exit codes")
    assert time.monotonic() - started < 10  # not stuck waiting for Enter
    assert echo == [True]  # the hidden prompt gave the terminal its echo back
    assert events(cfg, "issued") == []


def test_an_encrypted_key_asks_for_its_passphrase(ca, cfg, users, tmp_path):
    key = tmp_path / "locked"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "sesame", "-C", "locked", "-f", str(key)], check=True)
    UserStore(AuditLog(StatePaths(cfg.state_dir).db), hasher=CHEAP).add_key(
        "alice", key.with_suffix(".pub").read_text(), actor="test")
    asked = []

    def client(answer):
        return Client(f"127.0.0.1:{ca.port}", ca_fingerprint=host_fingerprint(cfg), user="alice", identity=key,
                      use_agent=False, config_file=tmp_path / "client.toml",
                      prompter=Prompter(secret=lambda p: asked.append(p) or answer) if answer else None)

    assert client("sesame").whoami()["auth_methods"] == ["publickey"]
    assert asked == [f"Passphrase for {key}: "]
    with pytest.raises(BadKey, match="wrong passphrase"):
        client("open up").whoami()
    with pytest.raises(BadKey, match="is encrypted and there is no terminal"):
        client(None).whoami()


def test_mfa_step_up_asks_for_the_code_once_and_a_replay_is_refused(ca, cfg, users, env):
    key, secret = users["carol"]
    asked, used = [], []

    def code(prompt: str) -> str:
        asked.append(prompt)
        used.append(totp(secret, int(time.time())))
        return used[-1]

    client = Client(f"127.0.0.1:{ca.port}", ca_fingerprint=host_fingerprint(cfg), user="carol", identity=key,
                    use_agent=False, prompter=Prompter(code=code),
                    config_file=Path(env["XDG_CONFIG_HOME"]) / "iast-ssh" / "config.toml")
    result = client.login(role="breakglass", reason="INC-9", no_agent=True, out_dir=Path(env["HOME"]) / "out")
    assert asked == ["One-time code: "]  # asked once, after the CA said the role needs it
    assert result.role == "breakglass" and result.principals == ("root",) and result.where == "files"
    (issued,) = events(cfg, "issued")
    assert issued.data["auth_methods"] == ["publickey", "otp-step-up"] and issued.data["mfa"] is True

    # Without a terminal and without --otp there is nobody to ask: exit 4 with the CA's reason.
    args = ["login", *ca_args(ca, cfg), "-l", "carol", "-i", str(key), "--role", "breakglass", "--reason", "INC-9"]
    r = iast_ssh(env, *args)
    assert r.returncode == 4 and "requires a second factor" in r.stderr, r.stderr
    # The code already used, again (--otp): refused, whether its 30 s step has passed or not.
    r = iast_ssh(env, *args, "--otp", used[0])
    assert r.returncode == 4 and "one-time code refused" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert len(events(cfg, "issued")) == 1


def test_wrong_password_through_the_library(ca, cfg, users, tmp_path):
    _, secret = users["alice"]
    client = Client(f"127.0.0.1:{ca.port}", ca_fingerprint=host_fingerprint(cfg), user="alice", use_agent=False,
                    prompter=Prompter(secret=lambda p: "not it", code=lambda p: totp(secret, int(time.time()))),
                    config_file=tmp_path / "client.toml")
    with pytest.raises(AuthenticationFailed) as e:
        client.whoami()
    assert e.value.exit_status == 4 and str(e.value) == AUTH_FAILED_MESSAGE
    assert [x for x in events(cfg, "auth_failed") if x.data["method"] == "keyboard-interactive"]


# --------------------------------------------------------------------------
# host key pinning (docs/security.md rule 18)


def test_a_changed_host_key_stops_login_before_anything_is_sent(ca, cfg, users, env):
    key, _ = users["alice"]
    old_fp = host_fingerprint(cfg)
    r = iast_ssh(env, "login", *ca_args(ca, cfg), "-l", "alice", "-i", str(key))
    assert r.returncode == 0, r.stderr  # pinned and remembered in the config

    ca.stop()
    host_key = StatePaths(cfg.state_dir).host_key
    host_key.unlink()
    host_key.with_suffix(".pub").unlink()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "impostor", "-f", str(host_key)],
                   check=True)
    new_fp = host_fingerprint(cfg)
    assert new_fp != old_fp
    ca.start(port=ca.port)  # the same address, another key
    mark = len(ca.lines)
    before = [(e.id, e.kind) for e in events(cfg)]

    r = iast_ssh(env, "login", "-l", "alice", "-i", str(key))  # the pin comes from the config
    assert r.returncode == 1, r.stderr
    # Finding 2 (issue 16): it says which key (the service host key, not the CA key) and what to check.
    assert f"the pin does not match the service host key of 127.0.0.1:{ca.port}: pinned {old_fp}, the " \
           f"service presents {new_fp}" in r.stderr
    assert "'service host key' line of 'iast-ca info'" in r.stderr and "host key changed" not in r.stderr
    assert "update ca_fingerprint" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    # On a terminal, with a password to type: refused before the password is even asked for.
    status, shown = run_in_pty([IAST_SSH, "login", "-l", "alice"], {k: v for k, v in env.items()
                                                                   if k != "SSH_AUTH_SOCK"}, [])
    assert status == 1 and "does not match the service host key" in shown and "Password" not in shown, shown

    time.sleep(0.5)  # the CA audits an abandoned login attempt asynchronously; give it the chance
    assert [(e.id, e.kind) for e in events(cfg)] == before  # no authentication event: nothing was sent
    log = [rec for rec in ca.records()[mark:]]
    assert not [rec for rec in log if rec.get("msg") in ("authenticated", "authentication failed")], log

    # Control: with the new pin, the same login works.
    r = iast_ssh(env, "login", "-l", "alice", "-i", str(key), "--ca", f"127.0.0.1:{ca.port}",
                 "--ca-fingerprint", new_fp)
    assert r.returncode == 0, r.stderr


def test_no_pin_and_no_terminal_is_refused(ca, cfg, users, env):
    key, _ = users["alice"]
    r = iast_ssh(env, "login", "--ca", f"127.0.0.1:{ca.port}", "-l", "alice", "-i", str(key))
    assert r.returncode == 2, r.stderr
    assert "not pinned" in r.stderr and "--ca-fingerprint SHA256:" in r.stderr
    assert not (Path(env["XDG_CONFIG_HOME"]) / "iast-ssh" / "config.toml").exists()
    time.sleep(0.3)
    assert not [rec for rec in ca.records() if rec.get("msg") == "authenticated"]
    assert events(cfg, "auth_failed") == []


# --------------------------------------------------------------------------
# refusals and errors


def test_policy_denial_is_exit_3_with_the_cas_reason(ca, cfg, users, env):
    key, _ = users["alice"]
    base = ["login", *ca_args(ca, cfg), "-l", "alice", "-i", str(key)]
    r = iast_ssh(env, *base, "--role", "prod-readonly")
    assert r.returncode == 3 and "requires a reason" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = iast_ssh(env, *base, "--ttl", "9h")
    assert r.returncode == 3 and "exceeds" in r.stderr, r.stderr
    r = iast_ssh(env, *base, "--role", "breakglass", "--reason", "x")  # alice is not in group security
    assert r.returncode == 3, r.stderr
    r = iast_ssh(env, *base, "--ttl", "soon")
    assert r.returncode == 2 and "--ttl" in r.stderr, r.stderr
    assert ssh_add(env, "-l").returncode == 1 and events(cfg, "issued") == []


def test_an_unreachable_ca_is_exit_1(cfg, users, env):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed when the block ends: nothing listens there
    key, _ = users["alice"]
    r = iast_ssh(env, "login", "--ca", f"127.0.0.1:{port}", "--ca-fingerprint", host_fingerprint(cfg),
                 "-l", "alice", "-i", str(key))
    assert r.returncode == 1, r.stderr
    assert r.stderr.startswith(f"Error: cannot reach the CA at 127.0.0.1:{port}: ") and \
        len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_unknown_key_is_exit_4(ca, cfg, users, env, tmp_path):
    stranger = make_key(tmp_path, name="stranger")
    r = iast_ssh(env, "roles", *ca_args(ca, cfg), "-l", "alice", "-i", str(stranger))
    assert r.returncode == 4 and AUTH_FAILED_MESSAGE in r.stderr, r.stderr


# --------------------------------------------------------------------------
# the other commands, and the config file


def test_roles_whoami_and_config(ca, cfg, users, env):
    key, _ = users["alice"]
    conn = [*ca_args(ca, cfg), "-l", "alice", "-i", str(key)]
    r = iast_ssh(env, "roles", "--json", *conn)
    assert r.returncode == 0, r.stderr
    assert [v["role"] for v in json.loads(r.stdout)] == ["dev", "prod-readonly"]
    text = iast_ssh(env, "roles", *conn).stdout
    assert re.search(r"^prod-readonly\s+prod-ro, alice\s+30m\s+30m\s+reason", text, re.M), text
    who = json.loads(iast_ssh(env, "whoami", "--json", *conn).stdout)
    assert who["user"] == "alice" and who["auth_methods"] == ["publickey"]
    r = iast_ssh(env, "config", *conn, "--host", "*.example.com")
    assert r.returncode == 0, r.stderr
    home = env["HOME"]
    assert "Host *.example.com\n" in r.stdout
    assert f"    IdentityFile {home}/.ssh/iast-ssh/id_ed25519-ROLE\n" in r.stdout  # no pair yet: the pattern
    assert f"    CertificateFile {home}/.ssh/iast-ssh/id_ed25519-ROLE-cert.pub\n" in r.stdout
    # No @cert-authority line for the user CA key: it signs no host certificate, and a client must
    # not trust it for hosts. (This policy has no host roles, so there is no host CA line either;
    # tests/test_hostcert.py covers the line a host policy gives.)
    ca_key = " ".join(Keyring.load(cfg.state_dir).trust_lines()[0].split()[:2])
    assert ca_key not in r.stdout and "@cert-authority" not in r.stdout


def test_the_config_file_is_strict(tmp_path, env):
    path = Path(env["XDG_CONFIG_HOME"]) / "iast-ssh" / "config.toml"
    path.parent.mkdir(parents=True)
    path.write_text('ca = "ca.example.com:2222"\ncolour = "blue"\n')
    with pytest.raises(ConfigError, match=r"config\.toml: unknown field 'colour'"):
        load_config(path)
    r = iast_ssh(env, "roles")
    assert r.returncode == 1 and str(path) in r.stderr and "'colour'" in r.stderr, r.stderr
    path.write_text('ca_fingerprint = "MD5:aa:bb"\n')
    r = iast_ssh(env, "whoami")
    assert r.returncode == 1 and "ca_fingerprint" in r.stderr and str(path) in r.stderr, r.stderr
    path.write_text('ca = "ca.example.com"\nuser = "alice"\nrole = "dev"\n')
    assert load_config(path).ca == "ca.example.com"


def test_help_ends_with_an_example():
    from click.testing import CliRunner

    from ca.cli.client import cli

    for name in [None, *cli.commands]:
        r = CliRunner().invoke(cli, ([name] if name else []) + ["--help"])
        assert r.exit_code == 0 and "Example:" in r.output.split("Options:")[0], name
