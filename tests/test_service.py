"""The CA service, as a real process, with real clients (OpenSSH's ssh and asyncssh)."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

import asyncssh
import pytest
from argon2 import PasswordHasher

from ca.auth.totp import totp
from ca.auth.users import UserStore
from ca.service.executors import KILL_BEFORE_COMMIT
from ca.state import StatePaths
from ca.store import AuditLog

from .conftest import TEST_POLICY, keygen_L, make_key
from .service_harness import IAST_CA, CAProcess, kbd_login

CHEAP = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
PASSWORD = "correct horse battery staple"
FAST_THROTTLE = '[throttle]\nuser_failures = 3\naddress_failures = 50\nmax_backoff = "1s"\nlockout = "10m"\n'


def store(cfg) -> UserStore:
    return UserStore(AuditLog(StatePaths(cfg.state_dir).db), hasher=CHEAP)


@pytest.fixture
def users(cfg, tmp_path):
    """alice (sre) and carol (security) with keys and password + TOTP; dave with a key only."""
    s = store(cfg)
    out = {}
    for name in ("alice", "carol", "dave"):
        key = make_key(tmp_path, name=f"{name}_enrolled")
        enrol = s.add(name, keys=[key.with_suffix(".pub").read_text()],
                      password=PASSWORD if name != "dave" else None, totp=name != "dave", actor="test")
        out[name] = (key, enrol.totp_secret)
    return out


@pytest.fixture
def ca(cfg, tmp_path):
    p = CAProcess(cfg.state_dir, cfg.policy_path, FAST_THROTTLE, workdir=tmp_path).start()
    yield p
    p.stop()


def events(cfg, kind=None, user=None):
    return AuditLog(StatePaths(cfg.state_dir).db).events(kind=kind, user=user, limit=None)


def test_plain_openssh_client_gets_a_certificate(ca, users, cfg, tmp_path):
    key, _ = users["alice"]
    new = make_key(tmp_path, name="session")
    r = ca.ssh("alice", key, "sign --role dev", input=new.with_suffix(".pub").read_text())
    assert r.returncode == 0, r.stderr
    cert = tmp_path / "session-cert.pub"
    cert.write_text(r.stdout)
    L = keygen_L(cert)
    assert L["principals"] == ["alice"] and L["Key ID"] == '"iast:alice:dev:1"'
    (row,) = events(cfg, kind="issued")
    assert row.source == "127.0.0.1" and row.data["auth_methods"] == ["publickey"]
    assert row.serial == int(L["Serial"])


def test_json_reply_and_info_commands(ca, users, cfg, tmp_path):
    key, _ = users["alice"]
    new = make_key(tmp_path, name="session")
    r = ca.ssh("alice", key, "sign --json --ttl 20m", input=new.with_suffix(".pub").read_text())
    data = json.loads(r.stdout)
    assert data["valid_before"] - data["valid_after"] == 20 * 60 + 60 and data["role"] == "dev"
    who = json.loads(ca.ssh("alice", key, "whoami --json").stdout)
    assert abs(who.pop("now") - time.time()) < 3600  # the CA's clock (host check's clock_skew)
    assert who == {"user": "alice", "auth_methods": ["publickey"], "mfa": False, "source_address": "127.0.0.1",
                   "groups": ["sre"]}
    roles = json.loads(ca.ssh("alice", key, "roles --json").stdout)
    assert [r["role"] for r in roles] == ["dev", "prod-readonly"]
    keys = ca.ssh("alice", key, "ca-keys").stdout
    assert keys.strip() == (cfg.state_dir / "keyring.json").read_text().split('"public": "')[1].split('"')[0]


@pytest.mark.parametrize("command,status,message", [
    ("sign --role prod-readonly", 3, "requires a reason"),
    ("sign --role nope", 3, "no such role 'nope'"),
    ("sign --role dev --ttl 9h", 3, "exceeds"),
    ("sign --bogus", 2, "unknown option '--bogus'"),
    ("sign --ttl", 2, "--ttl needs a value"),
    ("rm -rf /", 2, "unknown command 'rm'"),
    ('sign --reason "unterminated', 2, "cannot parse"),
])
def test_refusals_have_exit_status_and_one_line(ca, users, tmp_path, command, status, message):
    key, _ = users["alice"]
    new = make_key(tmp_path, name="session")
    r = ca.ssh("alice", key, command, input=new.with_suffix(".pub").read_text())
    assert r.returncode == status, r.stderr
    assert r.stdout == "" and message in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_request_size_is_capped(ca, users):
    key, _ = users["alice"]
    r = ca.ssh("alice", key, "sign", input="x" * 40000)
    assert r.returncode == 2 and "larger than 16384 bytes" in r.stderr


def test_mfa_step_up(ca, users, cfg, tmp_path):
    key, secret = users["carol"]
    pub = make_key(tmp_path, name="session").with_suffix(".pub").read_text()
    r = ca.ssh("carol", key, "sign --role breakglass --reason INC-1 --json", input=pub)
    assert r.returncode == 4 and "requires a second factor" in r.stderr
    assert json.loads(r.stdout)["error"] == "mfa_required"  # clients key on the code, not the text
    code = totp(secret, int(time.time()))
    r = ca.ssh("carol", key, f"sign --role breakglass --reason INC-1 --otp {code}", input=pub)
    assert r.returncode == 0, r.stderr
    r = ca.ssh("carol", key, f"sign --role breakglass --reason INC-1 --otp {code}", input=pub)
    assert r.returncode == 4 and "one-time code refused" in r.stderr  # the same code, again
    issued = events(cfg, kind="issued")
    assert len(issued) == 1 and issued[0].data["mfa"] is True
    assert issued[0].data["auth_methods"] == ["publickey", "otp-step-up"]
    assert len(events(cfg, kind="denied", user="carol")) == 2


def test_roles_without_mfa_work_with_one_factor(ca, users, tmp_path):
    key, _ = users["dave"]
    pub = make_key(tmp_path, name="session").with_suffix(".pub").read_text()
    assert ca.ssh("dave", key, "sign", input=pub).returncode == 0


def test_password_and_code(ca, users, cfg):
    _, secret = users["alice"]
    result, prompts = kbd_login(ca, "alice", PASSWORD, totp(secret, int(time.time())))
    assert "Password" in prompts[0] and "code" in prompts[1]
    assert json.loads(result.stdout)["auth_methods"] == ["password", "totp"]
    assert json.loads(result.stdout)["mfa"] is True


@pytest.mark.parametrize("who,password,code_of", [
    ("alice", "wrong password", "alice"),
    ("alice", PASSWORD, None),
    ("nobody", PASSWORD, "alice"),
])
def test_wrong_password_wrong_code_unknown_user(ca, users, cfg, who, password, code_of):
    code = totp(users[code_of][1], int(time.time())) if code_of else "000000"
    with pytest.raises(asyncssh.PermissionDenied):
        kbd_login(ca, who, password, code)
    failures = [e for e in events(cfg, kind="auth_failed", user=who) if e.data["method"] == "keyboard-interactive"]
    assert failures and failures[0].source == "127.0.0.1"
    blob = json.dumps([e.data for e in events(cfg)])
    assert PASSWORD not in blob and users["alice"][1] not in blob  # no secret in the log (rule 13)


def test_replayed_login_code_is_refused(ca, users):
    _, secret = users["alice"]
    code = totp(secret, int(time.time()))
    kbd_login(ca, "alice", PASSWORD, code)
    time.sleep(1.1)  # past the backoff of the failure we are about to cause, not past the 30 s step
    with pytest.raises(asyncssh.PermissionDenied):
        kbd_login(ca, "alice", PASSWORD, code)


def test_disabled_user_gets_nothing(ca, users, cfg, tmp_path):
    key, _ = users["dave"]
    store(cfg).disable("dave", "left the company", actor="test")
    r = ca.ssh("dave", key, "whoami")
    assert r.returncode == 255 and "Permission denied" in r.stderr


def test_lockout_is_per_account_and_persists(ca, users, cfg, tmp_path):
    _, secret = users["alice"]
    for _ in range(3):
        with pytest.raises(asyncssh.PermissionDenied):
            kbd_login(ca, "alice", "wrong", "000000")
        time.sleep(1.1)
    (lock,) = events(cfg, kind="lockout")
    assert lock.user == "alice" and lock.data["key"] == "user:alice"
    with pytest.raises(asyncssh.PermissionDenied):  # right password and code, but locked
        kbd_login(ca, "alice", PASSWORD, totp(secret, int(time.time())))
    # Keys cannot be guessed: a lock from password failures must not let anyone lock alice out of her key.
    key, _ = users["alice"]
    assert ca.ssh("alice", key, "whoami").returncode == 0
    # carol, from the same address, is not affected
    kbd_login(ca, "carol", PASSWORD, totp(users["carol"][1], int(time.time())))
    # a restart does not forgive alice
    ca.stop()
    ca.start()
    with pytest.raises(asyncssh.PermissionDenied):
        kbd_login(ca, "alice", PASSWORD, totp(secret, int(time.time()) + 30))


def test_a_locked_address_cannot_use_keys_either(cfg, users, tmp_path):
    ca = CAProcess(cfg.state_dir, cfg.policy_path, '[throttle]\naddress_failures = 3\nmax_backoff = "1s"\n',
                   workdir=tmp_path).start()
    try:
        for name in ("x1", "x2", "x3"):  # spraying names from one address
            with pytest.raises(asyncssh.PermissionDenied):
                kbd_login(ca, name, "guess", "000000")
        assert [e.data["key"] for e in events(cfg, kind="lockout")] == ["addr:127.0.0.1"]
        assert ca.ssh("dave", users["dave"][0], "whoami").returncode == 255
    finally:
        ca.stop()


def test_step_up_codes_are_throttled(ca, users, cfg, tmp_path):
    """Rule 15 for sign --otp: wrong codes count toward the lock, and a locked account's code is refused."""
    key, secret = users["carol"]
    pub = make_key(tmp_path, name="session").with_suffix(".pub").read_text()
    for _ in range(3):
        r = ca.ssh("carol", key, "sign --role breakglass --reason x --otp 000000", input=pub)
        assert r.returncode == 4
        time.sleep(1.1)
    assert [e.data["key"] for e in events(cfg, kind="lockout")] == ["user:carol"]
    good = totp(secret, int(time.time()))
    r = ca.ssh("carol", key, f"sign --role breakglass --reason x --otp {good}", input=pub)
    assert r.returncode == 4 and "one-time code refused" in r.stderr
    assert events(cfg, kind="issued") == []


def test_no_secret_in_the_service_log(ca, users, cfg):
    _, secret = users["alice"]
    code = totp(secret, int(time.time()))
    kbd_login(ca, "alice", PASSWORD, code)
    with pytest.raises(asyncssh.PermissionDenied):
        kbd_login(ca, "carol", PASSWORD + "x", code)
    text = "\n".join(ca.lines)
    assert "authenticated" in text
    assert PASSWORD not in text and secret not in text and code not in text


def test_disable_or_revoke_stops_an_open_connection(ca, users, cfg, tmp_path):
    """The gate inside the issuing transaction: a disable or a key revocation that commits
    first is never missed, even on a connection that authenticated before it."""
    from ca.access.revocation import revoke_key

    key, _ = users["dave"]
    pub = make_key(tmp_path, name="session").with_suffix(".pub").read_text()

    import asyncio

    first, second = asyncio.run(_two_signs(ca, "dave", key, pub, lambda: revoke_key(
        AuditLog(StatePaths(cfg.state_dir).db), key.with_suffix(".pub").read_text(), "stolen", "test")))
    assert first.exit_status == 0 and second.exit_status == 4
    assert "no longer enrolled, or was revoked" in second.stderr
    assert ca.ssh("dave", key, "whoami").returncode == 255  # and it cannot log in again

    key, _ = users["alice"]
    first, second = asyncio.run(_two_signs(ca, "alice", key, pub, lambda: store(cfg).disable("alice", "left", "test")))
    assert first.exit_status == 0 and second.exit_status == 4 and "disabled" in second.stderr
    assert len(events(cfg, kind="denied", user="alice")) == 1


async def _two_signs(ca, user, key, pub, between):
    """Two signs on one authenticated connection, with ``between()`` run between them."""
    async with asyncssh.connect("127.0.0.1", ca.port, username=user, client_keys=[str(key)],
                                known_hosts=str(ca.known_hosts()), agent_path=None) as conn:
        first = await conn.run("sign", input=pub, check=False)
        between()
        second = await conn.run("sign", input=pub, check=False)
        return first, second


def test_a_revoked_key_is_never_certified(ca, users, cfg, tmp_path):
    from ca.access.revocation import revoke_key

    key, _ = users["alice"]
    victim = make_key(tmp_path, name="victim").with_suffix(".pub").read_text()
    revoke_key(AuditLog(StatePaths(cfg.state_dir).db), victim, "stolen laptop", "test")
    r = ca.ssh("alice", key, "sign", input=victim)
    assert r.returncode == 3 and "is revoked" in r.stderr


def test_unauthenticated_connection_is_audited(ca, users, cfg, tmp_path):
    stranger = make_key(tmp_path, name="stranger")
    r = ca.ssh("alice", stranger, "whoami")
    assert r.returncode == 255
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not events(cfg, kind="auth_failed", user="alice"):
        time.sleep(0.1)
    (e,) = events(cfg, kind="auth_failed", user="alice")
    assert e.data["why"] == "no accepted key" and e.data["offered_keys"]


def test_sighup_reload(ca, users, cfg, tmp_path):
    key, _ = users["alice"]
    pub = make_key(tmp_path, name="session").with_suffix(".pub").read_text()
    cfg.policy_path.write_text("[roles.dev]\nmembers = []\n")  # broken
    mark = len(ca.lines)
    ca.signal(signal.SIGHUP)
    ca.wait_for("policy reload refused; keeping the old policy", since=mark)
    assert ca.ssh("alice", key, "sign --role dev", input=pub).returncode == 0  # old policy still serves
    cfg.policy_path.write_text(TEST_POLICY.replace('max_ttl = "8h"\nextensions = ["permit-pty", "permit-port',
                                                   'max_ttl = "2h"\nextensions = ["permit-pty", "permit-port'))
    mark = len(ca.lines)
    ca.signal(signal.SIGHUP)
    ca.wait_for("policy reloaded", since=mark)
    r = ca.ssh("alice", key, "sign --role dev --ttl 3h", input=pub)
    assert r.returncode == 3 and "2h" in r.stderr
    kinds = [e.kind for e in events(cfg)]
    assert "policy_reload_failed" in kinds and "policy_reloaded" in kinds


def test_sigterm_drains_and_every_answer_has_its_row(ca, users, cfg, tmp_path):
    key, _ = users["alice"]
    pub = make_key(tmp_path, name="session").with_suffix(".pub").read_text()
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(ca.ssh, "alice", key, "sign --json", pub) for _ in range(16)]
        ca.wait_for("issued", timeout=30)  # some answered, others in flight or queued
        ca.signal(signal.SIGTERM)
        results = [f.result() for f in futures]
    assert ca.proc.wait(30) == 0
    answered = [json.loads(r.stdout) for r in results if r.returncode == 0]
    assert answered, [r.stderr for r in results]
    log = AuditLog(StatePaths(cfg.state_dir).db)
    log.verify()
    for a in answered:
        row = log.issued_by_serial(a["serial"])
        assert row is not None and row.key_id == a["key_id"]
    # and the drain delivered every certificate it committed: none issued into the void
    assert len(log.events(kind="issued", limit=None)) == len(answered)


def test_unauthenticated_cap_queues_then_login_timeout_frees(cfg, users, tmp_path):
    """Rules 19 and 63: past the slots a login waits (it is not dropped), and is served once the
    login timeout has closed the idle connections that held them."""
    ca = CAProcess(cfg.state_dir, cfg.policy_path, '[server]\nmax_unauthenticated = 2\nlogin_timeout = "2s"\n',
                   workdir=tmp_path).start()
    try:
        idle = [socket.create_connection(("127.0.0.1", ca.port)) for _ in range(2)]
        time.sleep(0.3)
        key, _ = users["dave"]
        r = ca.ssh("dave", key, "whoami")
        assert r.returncode == 0, r.stderr  # it waited for a slot, then authenticated
        assert ca.wait_for("queued: waiting for a slot to log in")
        for s in idle:  # the login timeout closed them
            s.settimeout(10)
            while s.recv(4096):
                pass
    finally:
        ca.stop()


def test_past_the_queue_a_client_is_told_why(cfg, users, tmp_path):
    """Rule 63: past the queue's depth a real ssh client gets an SSH disconnect with a reason,
    not a garbled banner, and the service still serves once there is room."""
    ca = CAProcess(cfg.state_dir, cfg.policy_path,
                   '[server]\nmax_unauthenticated = 2\nmax_queued = 1\nlogin_timeout = "15s"\n',
                   workdir=tmp_path).start()
    try:
        idle = [socket.create_connection(("127.0.0.1", ca.port)) for _ in range(3)]  # 2 slots + 1 queued
        ca.wait_for("queued: waiting for a slot to log in")
        key, _ = users["dave"]
        r = ca.ssh("dave", key, "whoami", timeout=20)
        assert r.returncode == 255
        assert "too many connections waiting to log in; try again later" in r.stderr, r.stderr
        assert "banner" not in r.stderr and "kex_exchange_identification" not in r.stderr, r.stderr
        ca.wait_for("refused: the queue of connections waiting to log in is full")
        for s in idle:
            s.close()
        r = ca.ssh("dave", key, "whoami")
        assert r.returncode == 0, r.stderr
    finally:
        ca.stop()


def test_no_certificate_leaves_before_the_commit_that_holds_its_row(cfg, users, tmp_path):
    """Rule 64: 8 concurrent signs; the service is SIGKILLed after signing and before the commit
    (held 1.5 s first, time for a reply that did not wait to reach its client). No client got a
    certificate, the log holds none, the chain verifies; restarted, 8 concurrent signs are each
    answered with a certificate whose row is in the log."""
    key, _ = users["alice"]
    pub = make_key(tmp_path, name="session").with_suffix(".pub").read_text()
    ca = CAProcess(cfg.state_dir, cfg.policy_path, workdir=tmp_path, env={KILL_BEFORE_COMMIT: "1.5"}).start()
    try:
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda _: ca.ssh("alice", key, "sign --role dev", input=pub), range(8)))
        assert ca.proc.wait(30) == -signal.SIGKILL
    finally:
        ca.stop()
    assert all(r.returncode == 255 and "cert-v01@openssh.com" not in r.stdout for r in results), results
    log = AuditLog(StatePaths(cfg.state_dir).db)
    assert log.events(kind="issued", limit=None) == [] and log.certificates.by_serial(1) is None
    log.verify()
    ca = CAProcess(cfg.state_dir, cfg.policy_path, workdir=tmp_path).start()
    try:
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda _: ca.ssh("alice", key, "sign --role dev --json", input=pub),
                                    range(8)))
    finally:
        ca.stop()
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    log = AuditLog(StatePaths(cfg.state_dir).db)
    for r in results:
        serial = json.loads(r.stdout)["serial"]
        assert log.issued_by_serial(serial) is not None and log.certificates.by_serial(serial) is not None
    log.verify()


def _ssh_with(ca, key, *options):
    argv = ["ssh", "-F", "/dev/null", "-v", "-p", str(ca.port), "-i", str(key), "-o", "IdentitiesOnly=yes",
            "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={ca.known_hosts()}",
            *options, "dave@127.0.0.1", "whoami"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, env={"PATH": "/usr/bin:/bin"})


def test_the_service_offers_only_the_algorithms_it_prefers(ca, users, cfg, tmp_path):
    """Rule 65: by default AES-GCM only (a client asking for ChaCha20-Poly1305 alone, or for a SHA-1
    key exchange, finds no match); OpenSSH negotiates AES-GCM; a name asyncssh does not know in
    server.encryption_algs stops the start with a one-line error naming it."""
    key, _ = users["dave"]
    r = _ssh_with(ca, key)
    assert r.returncode == 0, r.stderr
    assert "cipher: aes128-gcm@openssh.com" in r.stderr
    r = _ssh_with(ca, key, "-o", "Ciphers=chacha20-poly1305@openssh.com")
    assert r.returncode == 255 and "no matching cipher found" in r.stderr, r.stderr[-500:]
    r = _ssh_with(ca, key, "-o", "KexAlgorithms=diffie-hellman-group14-sha1")
    assert r.returncode == 255 and "no matching key exchange method found" in r.stderr, r.stderr[-500:]
    bad = tmp_path / "bad.toml"
    bad.write_text(f'state_dir = "{cfg.state_dir}"\npolicy = "{cfg.policy_path}"\n'
                   '[server]\nencryption_algs = ["rot13-gcm"]\n')
    r = subprocess.run([IAST_CA, "--config", str(bad), "serve", "--listen", "127.0.0.1:0"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1 and "server.encryption_algs: rot13-gcm not supported" in r.stderr, r.stderr[-500:]


def test_host_key_is_the_state_dirs(ca, cfg, users):
    key, _ = users["dave"]
    wrong = ca.workdir / "wrong_known_hosts"
    other = subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(ca.workdir / "hk")], check=True)
    wrong.write_text(f"[127.0.0.1]:{ca.port} {(ca.workdir / 'hk.pub').read_text()}")
    r = subprocess.run(["ssh", "-F", "/dev/null", "-p", str(ca.port), "-i", str(key), "-o", "BatchMode=yes",
                        "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={wrong}",
                        "dave@127.0.0.1", "whoami"], capture_output=True, text=True)
    assert r.returncode == 255 and "HOST IDENTIFICATION HAS CHANGED" in r.stderr
    assert other.returncode == 0


def test_rows_survive_kill_9_of_the_service(ca, users, cfg, tmp_path):
    """Rule 10: every certificate the service answered has its committed row, even after kill -9."""
    key, _ = users["alice"]
    pub = make_key(tmp_path, name="session").with_suffix(".pub").read_text()
    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(ca.ssh, "alice", key, "sign --json", pub) for _ in range(24)]
        for f in as_completed(futures):  # kill once a client holds a certificate, others in flight
            if f.result().returncode == 0:
                break
        ca.signal(signal.SIGKILL)
        results = [f.result() for f in futures]
    answered = [json.loads(r.stdout) for r in results if r.returncode == 0]
    assert answered, [r.stderr for r in results]
    log = AuditLog(StatePaths(cfg.state_dir).db)
    log.verify()
    for a in answered:
        row = log.issued_by_serial(a["serial"])
        assert row is not None and row.key_id == a["key_id"]
