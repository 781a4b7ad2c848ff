"""Users: TOTP (RFC 6238), argon2id passwords, enrolled keys, audit events, and ``iast-ca user``.

Real SQLite files, real argon2, keys from ssh-keygen. Most tests use a cheap
argon2 hasher to stay fast; one uses the production parameters.
"""

from __future__ import annotations

import base64
import json
import subprocess
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
from argon2 import PasswordHasher, extract_parameters

from ca.auth.totp import (
    decode_secret,
    generate_secret,
    hotp,
    matching_step,
    provisioning_uri,
    totp,
)
from ca.auth.users import MIN_PASSWORD_LENGTH, User, UserStore
from ca.cli.admin import cli
from ca.cli.user_cmds import user as user_group
from ca.errors import BadKey, NotFound, UsageError
from ca.sshcert.wire import string
from ca.app import open_audit
from ca.state import StatePaths, os_user
from ca.store import AuditLog
from ca.store import open_store as ca_open_store

from .conftest import make_key

# The admin CLI registers the group in ca/cli/admin.py; until then (and harmlessly after), do it here.
cli.add_command(user_group)

CHEAP = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
PASSWORD = "correct horse battery staple"
NOW = 1_800_000_000  # a fixed time, on a step boundary (1_800_000_000 / 30 = 60_000_000)


pytestmark = pytest.mark.both_backends


def b32(raw: bytes) -> str:
    return base64.b32encode(raw).decode().rstrip("=")


def pub_line(priv: Path) -> str:
    return priv.with_suffix(".pub").read_text().strip()


def blob_of(line: str) -> bytes:
    return base64.b64decode(line.split()[1])


@pytest.fixture
def log(cfg):
    a = open_audit(cfg)
    yield a
    a.close()


@pytest.fixture
def store(log):
    return UserStore(log, hasher=CHEAP)


@pytest.fixture
def keys(tmp_path):
    """Three Ed25519 public key lines from ssh-keygen."""
    return [pub_line(make_key(tmp_path, name=f"k{i}")) for i in range(3)]


def totp_user(store: UserStore, name: str = "alice") -> str:
    """A user with a password and TOTP; returns the TOTP secret."""
    return store.add(name, password=PASSWORD, totp=True, actor="admin").totp_secret


# -- TOTP (RFC 6238) ------------------------------------------------------------

SEEDS = {
    "sha1": b"12345678901234567890",
    "sha256": b"12345678901234567890123456789012",
    "sha512": b"1234567890123456789012345678901234567890123456789012345678901234",
}

# RFC 6238 Appendix B.
RFC6238_VECTORS = [
    (59, "94287082", "46119246", "90693936"),
    (1111111109, "07081804", "68084774", "25091201"),
    (1111111111, "14050471", "67062674", "99943326"),
    (1234567890, "89005924", "91819424", "93441116"),
    (2000000000, "69279037", "90698825", "38618901"),
    (20000000000, "65353130", "77737706", "47863826"),
]


@pytest.mark.parametrize("t,sha1,sha256,sha512", RFC6238_VECTORS)
def test_totp_rfc6238_appendix_b(t, sha1, sha256, sha512):
    for algorithm, expected in (("sha1", sha1), ("sha256", sha256), ("sha512", sha512)):
        assert totp(b32(SEEDS[algorithm]), t, digits=8, algorithm=algorithm) == expected


def test_hotp_rfc4226_appendix_d():
    expected = ["755224", "287082", "359152", "969429", "338314", "254676", "287922", "162583", "399871", "520489"]
    assert [hotp(SEEDS["sha1"], c) for c in range(10)] == expected


def test_totp_defaults_are_sha1_six_digits_thirty_seconds():
    secret = b32(SEEDS["sha1"])
    assert totp(secret, 59) == "287082"  # the last 6 digits of 94287082
    assert totp(secret, 30) == totp(secret, 59) != totp(secret, 60)


def test_generate_secret_is_20_random_bytes_in_base32():
    secrets_ = {generate_secret() for _ in range(50)}
    assert len(secrets_) == 50
    for s in secrets_:
        assert len(s) == 32 and set(s) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")
        assert len(decode_secret(s)) == 20


def test_decode_secret_refuses_garbage():
    for bad in ("not base32!", "", "0189"):
        with pytest.raises(ValueError):
            decode_secret(bad)


def test_provisioning_uri():
    secret = b32(SEEDS["sha1"])
    assert provisioning_uri(secret, "alice") == (
        f"otpauth://totp/iast-ssh:alice?secret={secret}&issuer=iast-ssh&algorithm=SHA1&digits=6&period=30"
    )
    uri = provisioning_uri(secret, "a.b-c", issuer="My CA & co")
    parsed = urlparse(uri)
    assert parsed.path == "/My%20CA%20%26%20co:a.b-c"
    q = parse_qs(parsed.query)
    assert q["issuer"] == ["My CA & co"] and q["secret"] == [secret]


def test_matching_step_allows_one_step_of_drift_each_way():
    secret = generate_secret()
    step = NOW // 30
    for offset in (-1, 0, 1):
        code = totp(secret, NOW + 30 * offset)
        assert matching_step(secret, code, NOW) == step + offset
        assert matching_step(secret, code, NOW + 29) == step + offset  # anywhere within the current step
    for offset in (-2, 2, -3, 3):
        code = totp(secret, NOW + 30 * offset)
        if all(code != totp(secret, NOW + 30 * o) for o in (-1, 0, 1)):  # a chance collision is not drift
            assert matching_step(secret, code, NOW) is None
    assert matching_step(secret, totp(secret, NOW), NOW, drift=0) == step
    assert matching_step(secret, totp(secret, NOW - 30), NOW, drift=0) in (None, step)
    with pytest.raises(ValueError):
        matching_step(secret, totp(secret, NOW), NOW, drift=2)


@pytest.mark.parametrize("bad", ["", "12345", "1234567", "12345a", " 123456", "123456\n", "12 345",
                                 "\u0661\u0662\u0663\u0664\u0665\u0666", "+12345", "-12345", None, 123456])
def test_matching_step_refuses_codes_that_are_not_six_ascii_digits(bad):
    assert matching_step(generate_secret(), bad, NOW) is None


# -- the store: TOTP ----------------------------------------------------------------


def test_check_totp_accepts_drift_and_refuses_two_steps_away(store):
    secret = totp_user(store)
    assert store.check_totp("alice", totp(secret, NOW - 30), now=NOW)  # previous step
    assert store.check_totp("alice", totp(secret, NOW + 30), now=NOW)  # next step
    bob = totp_user(store, "bob")
    for offset in (-2, 2):
        code = totp(bob, NOW + 30 * offset)
        if all(code != totp(bob, NOW + 30 * o) for o in (-1, 0, 1)):
            assert not store.check_totp("bob", code, now=NOW)


def test_check_totp_refuses_a_replayed_code_and_older_steps(store):
    secret = totp_user(store)
    code = totp(secret, NOW)
    assert store.check_totp("alice", code, now=NOW)
    assert not store.check_totp("alice", code, now=NOW)  # replay, same step
    assert not store.check_totp("alice", code, now=NOW + 30)  # replay, still within drift
    # The previous step is older than the one used: refused, though within drift.
    assert not store.check_totp("alice", totp(secret, NOW - 30), now=NOW)
    # Jump ahead, then an older (but in-drift) step is refused too.
    assert store.check_totp("alice", totp(secret, NOW + 30), now=NOW)
    assert not store.check_totp("alice", totp(secret, NOW), now=NOW + 30)
    assert store.check_totp("alice", totp(secret, NOW + 60), now=NOW + 60)


def test_check_totp_uses_the_clock_by_default(log):
    clock = [float(NOW + 7)]
    store = UserStore(log, hasher=CHEAP, clock=lambda: clock[0])
    secret = totp_user(store)
    assert store.check_totp("alice", totp(secret, NOW))
    clock[0] += 3600
    assert not store.check_totp("alice", totp(secret, NOW + 30))


@pytest.mark.parametrize("bad", ["12345", "1234567", "abcdef", "12345a", "", "123 456"])
def test_check_totp_refuses_malformed_codes(store, bad):
    totp_user(store)
    assert not store.check_totp("alice", bad, now=NOW)


def test_check_totp_refuses_unknown_disabled_and_users_without_totp(store, keys):
    secret = totp_user(store)
    assert not store.check_totp("mallory", totp(secret, NOW), now=NOW)
    assert not store.check_totp("Not A Name", "123456", now=NOW)
    store.add("bob", keys=[keys[0]])
    assert not store.check_totp("bob", totp(secret, NOW), now=NOW)
    store.disable("alice", "test")
    assert not store.check_totp("alice", totp(secret, NOW), now=NOW)
    store.enable("alice")
    assert store.check_totp("alice", totp(secret, NOW), now=NOW)


@pytest.mark.parametrize("shared", [False, True], ids=["two-connections", "one-connection"])
def test_two_racing_checks_of_one_code_accept_it_once(cfg, log, shared):
    first = UserStore(log, hasher=CHEAP)
    secret = totp_user(first)
    other_log = log if shared else open_audit(cfg)
    second = first if shared else UserStore(other_log, hasher=CHEAP)
    try:
        for round_ in range(20):
            now = NOW + 30 * round_
            code = totp(secret, now)
            results = []
            barrier = threading.Barrier(2)

            def attempt(s: UserStore) -> None:
                barrier.wait()
                results.append(s.check_totp("alice", code, now=now))

            threads = [threading.Thread(target=attempt, args=(s,)) for s in (first, second)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert sorted(results) == [False, True], round_
    finally:
        if not shared:
            other_log.close()


def test_reset_totp_replaces_the_secret(store):
    old = totp_user(store)
    store.check_totp("alice", totp(old, NOW), now=NOW)
    enrolment = store.reset_totp("alice", actor="admin")
    assert enrolment.totp_secret and enrolment.totp_secret != old
    assert enrolment.totp_secret in enrolment.totp_uri and enrolment.user.has_totp
    assert not store.check_totp("alice", totp(old, NOW + 30), now=NOW + 30) or \
        totp(old, NOW + 30) == totp(enrolment.totp_secret, NOW + 30)
    assert store.check_totp("alice", totp(enrolment.totp_secret, NOW + 60), now=NOW + 60)


def test_reset_totp_enables_totp_for_a_key_only_user(store, keys):
    store.add("bob", keys=[keys[0]])
    enrolment = store.reset_totp("bob")
    assert store.get("bob").has_totp
    assert store.check_totp("bob", totp(enrolment.totp_secret, NOW), now=NOW)


# -- the store: passwords -----------------------------------------------------------


def test_check_password(store):
    totp_user(store)
    assert store.check_password("alice", PASSWORD)
    assert not store.check_password("alice", PASSWORD + "x")
    assert not store.check_password("alice", "")
    assert not store.check_password("mallory", PASSWORD)
    assert not store.check_password("NOT VALID", PASSWORD)
    store.disable("alice", "on leave")
    assert not store.check_password("alice", PASSWORD)
    store.enable("alice")
    assert store.check_password("alice", PASSWORD)


def test_user_without_a_password_is_refused(store, keys):
    store.add("bob", keys=[keys[0]])
    assert not store.check_password("bob", "")
    assert not store.check_password("bob", PASSWORD)


def test_set_password(store):
    totp_user(store)
    store.set_password("alice", "a brand new passphrase", actor="admin")
    assert store.check_password("alice", "a brand new passphrase")
    assert not store.check_password("alice", PASSWORD)


def test_password_policy(store, keys):
    with pytest.raises(UsageError, match="too short"):
        store.add("alice", password="x" * (MIN_PASSWORD_LENGTH - 1), totp=True)
    with pytest.raises(UsageError, match="empty"):
        store.add("alice", password="", totp=True)
    with pytest.raises(UsageError, match="TOTP"):
        store.add("alice", password=PASSWORD)  # a password alone cannot log in
    store.add("alice", keys=[keys[0]])
    with pytest.raises(UsageError, match="too short"):
        store.set_password("alice", "short")
    with pytest.raises(NotFound, match="no such user 'bob'"):
        store.set_password("bob", PASSWORD)
    assert store.get("alice").has_password is False


def test_default_parameters_are_argon2id_above_the_owasp_floor(log):
    store = UserStore(log)  # the production hasher
    store.add("alice", password=PASSWORD, totp=True)
    (stored,) = log.conn.execute("SELECT password_hash FROM users WHERE name = 'alice'").fetchone()
    assert stored.startswith("$argon2id$")
    p = extract_parameters(stored)
    assert p.memory_cost >= 19456 and p.time_cost >= 2 and p.parallelism >= 1
    assert not store.hasher.check_needs_rehash(stored)

    def timed(name: str, password: str) -> tuple[bool, float]:
        best, result = float("inf"), None
        for _ in range(3):
            t0 = time.perf_counter()
            result = store.check_password(name, password)
            best = min(best, time.perf_counter() - t0)
        return result, best

    ok, t_right = timed("alice", PASSWORD)
    wrong, t_wrong = timed("alice", "wrong password!!")
    unknown, t_unknown = timed("mallory", PASSWORD)
    assert ok and not wrong and not unknown
    # Rule 14: an unknown user costs a full argon2 verification too.
    assert 0.5 < t_unknown / t_wrong < 2, (t_unknown, t_wrong, t_right)


def test_password_is_rehashed_when_the_parameters_change(log):
    old = UserStore(log, hasher=CHEAP)
    totp_user(old)

    def stored() -> str:
        return log.conn.execute("SELECT password_hash FROM users WHERE name = 'alice'").fetchone()[0]

    before = stored()
    assert extract_parameters(before).time_cost == 1
    stronger = PasswordHasher(time_cost=2, memory_cost=16, parallelism=1)
    new = UserStore(log, hasher=stronger)
    assert not new.check_password("alice", "not the password")
    assert stored() == before  # only a successful check rehashes
    assert new.check_password("alice", PASSWORD)
    after = stored()
    assert after != before and after.startswith("$argon2id$")
    p = extract_parameters(after)
    assert (p.time_cost, p.memory_cost) == (2, 16)
    assert new.check_password("alice", PASSWORD)
    assert stored() == after  # no more rehashing
    assert stronger.verify(after, PASSWORD)
    (event,) = log.events(kind="password_rehashed")
    assert event.user == "alice" and PASSWORD not in json.dumps(event.data)
    log.verify()


def test_no_secret_reaches_the_audit_log(store, log, keys):
    enrolment = store.add("alice", keys=[keys[0]], password=PASSWORD, totp=True, actor="admin")
    store.set_password("alice", "second passphrase here", actor="admin")
    store.check_password("alice", "second passphrase here")
    rehasher = UserStore(log, hasher=PasswordHasher(time_cost=2, memory_cost=16, parallelism=1))
    assert rehasher.check_password("alice", "second passphrase here")  # rehash event
    code = totp(enrolment.totp_secret, NOW)
    assert store.check_totp("alice", code, now=NOW)
    reset = store.reset_totp("alice", actor="admin")
    store.disable("alice", "secret-free reason", actor="admin")
    (final_hash,) = log.conn.execute("SELECT password_hash FROM users").fetchone()

    secrets_ = [PASSWORD, "second passphrase here", enrolment.totp_secret, reset.totp_secret, final_hash,
                "$argon2"]
    rows = log.conn.execute("SELECT * FROM events").fetchall()
    assert [r[2] for r in rows] == ["ca_init", "user_added", "password_changed", "password_rehashed", "totp_reset",
                                    "user_disabled"]
    for row in rows:
        text = json.dumps(row)
        for s in secrets_:
            assert s not in text, (s, row)
    for e in log.events(limit=None):
        assert code not in json.dumps(e.data)
        assert "password" not in e.data and "totp_secret" not in e.data and "code" not in e.data
    # Nor through the User value.
    u = store.get("alice")
    assert not any(s in repr(u) for s in secrets_)
    assert set(User.__dataclass_fields__) == {"name", "disabled", "disabled_reason", "has_password", "has_totp",
                                              "keys", "created"}


# -- the store: users and keys ------------------------------------------------------


def test_add_and_get(store, keys):
    enrolment = store.add("alice", keys=[keys[0] + " extra comment", keys[1]], actor="admin")
    assert enrolment.totp_secret is None and enrolment.totp_uri is None
    u = store.get("alice")
    assert u == enrolment.user
    assert u.name == "alice" and not u.disabled and not u.has_password and not u.has_totp
    assert {k.public for k in u.keys} == {" ".join(k.split()[:2]) for k in keys[:2]}  # no comment kept
    assert all(k.algorithm == "ssh-ed25519" and k.fingerprint.startswith("SHA256:") for k in u.keys)
    assert u.created.endswith("Z")
    assert store.get("bob") is None
    assert store.get("../etc") is None


@pytest.mark.parametrize("name", ["Alice", "1bob", "a" * 33, "bob smith", "", "bob\n", "bob,root", "*", "é"])
def test_add_refuses_bad_names(store, keys, name):
    with pytest.raises(UsageError, match="invalid user name"):
        store.add(name, keys=[keys[0]])


def test_good_names(store, keys):
    for i, name in enumerate(["_svc", "a", "a" * 32, "j.doe-2"]):
        store.add(name, keys=[keys[i % 3]] if i < 3 else [], password=None if i < 3 else PASSWORD, totp=i >= 3)
    assert [u.name for u in store.list()] == sorted(["_svc", "a", "a" * 32, "j.doe-2"])


def test_add_refuses_existing_user_and_users_without_a_login(store, keys, log):
    store.add("alice", keys=[keys[0]])
    with pytest.raises(UsageError, match="^user alice exists$"):
        store.add("alice", keys=[keys[1]])
    with pytest.raises(UsageError, match="needs a way to log in"):
        store.add("bob")
    with pytest.raises(UsageError, match="needs a way to log in"):
        store.add("bob", totp=True)  # a code alone is not a login
    assert store.get("bob") is None
    assert [e.kind for e in log.events(kind="user_added")] == ["user_added"]


def test_unknown_user(store, keys, log):
    base = log.head()
    for call in (lambda: store.disable("x", None), lambda: store.enable("x"), lambda: store.reset_totp("x"),
                 lambda: store.add_key("x", keys[0]), lambda: store.remove_key("x", "SHA256:x"),
                 lambda: store.set_password("x", PASSWORD)):
        with pytest.raises(NotFound, match="^no such user 'x'$"):
            call()
    assert log.head() == base


def test_key_allowed(store, keys):
    store.add("alice", keys=[keys[0]])
    store.add("bob", keys=[keys[1]])
    assert store.key_allowed("alice", blob_of(keys[0]))
    assert not store.key_allowed("alice", blob_of(keys[1]))  # bob's
    assert not store.key_allowed("alice", blob_of(keys[2]))  # nobody's
    assert not store.key_allowed("mallory", blob_of(keys[0]))
    assert not store.key_allowed("alice", b"")
    store.disable("alice", "compromised laptop")
    assert not store.key_allowed("alice", blob_of(keys[0]))
    assert store.key_allowed("bob", blob_of(keys[1]))
    store.enable("alice")
    assert store.key_allowed("alice", blob_of(keys[0]))


def test_add_key_and_remove_key(store, keys):
    store.add("alice", keys=[keys[0]])
    enrolled = store.add_key("alice", keys[1] + " laptop", actor="admin")
    assert enrolled.public == " ".join(keys[1].split()[:2])
    assert store.key_allowed("alice", blob_of(keys[1]))
    store.remove_key("alice", enrolled.fingerprint, actor="admin")
    assert not store.key_allowed("alice", blob_of(keys[1]))
    assert [k.fingerprint for k in store.get("alice").keys] != [enrolled.fingerprint]
    with pytest.raises(UsageError, match="has no key"):
        store.remove_key("alice", enrolled.fingerprint)


def test_a_key_belongs_to_one_user(store, keys, log):
    store.add("alice", keys=[keys[0]])
    with pytest.raises(UsageError, match="already enrolled for user alice"):
        store.add("bob", keys=[keys[1], keys[0]])
    assert store.get("bob") is None  # nothing half-done
    assert not store.key_allowed("bob", blob_of(keys[1]))
    store.add("bob", keys=[keys[1]])
    with pytest.raises(UsageError, match="already enrolled for user alice"):
        store.add_key("bob", keys[0])
    with pytest.raises(UsageError, match="already enrolled for user bob"):
        store.add_key("bob", keys[1])
    bob = store.get("bob")
    with pytest.raises(UsageError, match="has no key"):
        store.remove_key("bob", store.get("alice").keys[0].fingerprint)  # someone else's key
    assert store.key_allowed("alice", blob_of(keys[0])) and store.get("bob") == bob
    assert [e.user for e in log.events(kind="user_added")] == ["bob", "alice"]


def test_refused_keys(store, tmp_path):
    ca = make_key(tmp_path, name="ca")
    user_key = make_key(tmp_path, name="u")
    subprocess.run(["ssh-keygen", "-q", "-s", str(ca), "-I", "id", "-n", "alice", str(user_key) + ".pub"],
                   check=True)
    cert = (tmp_path / "u-cert.pub").read_text().strip()
    dsa = "ssh-dss " + base64.b64encode(string("ssh-dss") + string(b"\x01") * 4).decode()
    rsa2048 = pub_line(make_key(tmp_path, "rsa", 2048))
    for bad in (cert, dsa, rsa2048, "ssh-ed25519 !!!", "", "garbage"):
        with pytest.raises(BadKey):
            store.add("alice", keys=[bad])
    assert store.get("alice") is None
    store.add("alice", keys=[pub_line(user_key)])
    for bad in (cert, dsa, rsa2048):
        with pytest.raises(BadKey):
            store.add_key("alice", bad)
    assert UserStore(store.audit, hasher=CHEAP, min_rsa_bits=2048).add_key("alice", rsa2048).algorithm == "ssh-rsa"


def test_disable_and_enable(store, keys):
    store.add("alice", keys=[keys[0]])
    store.disable("alice", "left the company")
    u = store.get("alice")
    assert u.disabled and u.disabled_reason == "left the company"
    with pytest.raises(UsageError, match="already disabled"):
        store.disable("alice", None)
    with pytest.raises(UsageError, match="control characters"):
        store.disable("alice", "two\nlines")
    store.enable("alice")
    u = store.get("alice")
    assert not u.disabled and u.disabled_reason is None
    with pytest.raises(UsageError, match="not disabled"):
        store.enable("alice")


def test_every_admin_action_is_audited_in_the_chain(store, log, keys):
    base, _ = log.head()
    store.add("alice", keys=[keys[0]], actor="root")
    store.add("bob", password=PASSWORD, totp=True, actor="root")
    store.disable("alice", "on leave", actor="ops")
    store.enable("alice", actor="ops")
    store.set_password("bob", "another long passphrase", actor="ops")
    store.reset_totp("bob", actor="ops")
    fp = store.add_key("alice", keys[1], actor="sec").fingerprint
    store.remove_key("alice", fp, actor="sec")
    events = [e for e in reversed(log.events(limit=None)) if e.id > base]
    assert [(e.kind, e.user, e.data["actor"]) for e in events] == [
        ("user_added", "alice", "root"),
        ("user_added", "bob", "root"),
        ("user_disabled", "alice", "ops"),
        ("user_enabled", "alice", "ops"),
        ("password_changed", "bob", "ops"),
        ("totp_reset", "bob", "ops"),
        ("key_added", "alice", "sec"),
        ("key_removed", "alice", "sec"),
    ]
    assert events[0].data["keys"] == [store.get("alice").keys[0].fingerprint]
    assert events[0].data["has_password"] is False and events[1].data["has_totp"] is True
    assert events[2].data["reason"] == "on leave"
    assert events[6].data["fingerprint"] == fp == events[7].data["fingerprint"]
    report = log.verify()
    assert report.count == base + 8
    # Refused changes leave no event.
    with pytest.raises(UsageError):
        store.enable("alice", actor="ops")
    assert log.head()[0] == base + 8


def test_the_store_reopens_on_an_existing_database(cfg, log, keys):
    UserStore(log, hasher=CHEAP).add("alice", keys=[keys[0]])
    log.close()
    again = open_audit(cfg)
    try:
        assert UserStore(again, hasher=CHEAP).get("alice").keys[0].public == " ".join(keys[0].split()[:2])
    finally:
        again.close()


# -- iast-ca user ------------------------------------------------------------------


@pytest.fixture
def ca(cli_run):
    r = cli_run("init")
    assert r.exit_code == 0, r.output
    return cli_run


def open_store(ca) -> tuple[AuditLog, UserStore]:
    log = ca_open_store(ca.database or ca.state / "ca.db")
    return log, UserStore(log, hasher=CHEAP)


def test_cli_add_with_keys(ca, tmp_path, keys):
    a, b = tmp_path / "k0.pub", tmp_path / "k1.pub"
    r = ca("user", "add", "alice", "--key", str(a), "--key", str(b))
    assert r.exit_code == 0, r.output
    assert "Created user alice (2 keys)" in r.stdout
    log, store = open_store(ca)
    try:
        assert store.key_allowed("alice", blob_of(keys[0])) and store.key_allowed("alice", blob_of(keys[1]))
        (event,) = log.events(kind="user_added")
        assert event.user == "alice" and event.data["actor"] == os_user()
    finally:
        log.close()


def test_cli_add_with_password_and_totp_json(ca):
    r = ca("user", "add", "bob", "--password-stdin", "--totp", "--json", input=PASSWORD + "\n")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["user"] == "bob" and out["keys"] == []
    secret, uri = out["totp_secret"], out["totp_uri"]
    assert len(decode_secret(secret)) == 20
    assert parse_qs(urlparse(uri).query)["secret"] == [secret] and uri.startswith("otpauth://totp/iast-ssh:bob?")
    log, store = open_store(ca)
    try:
        assert store.check_password("bob", PASSWORD)  # the trailing newline was not part of it
        now = time.time()
        assert store.check_totp("bob", totp(secret, now), now=now)
        for e in log.events(limit=None):
            assert PASSWORD not in json.dumps(e.data) and secret not in json.dumps(e.data)
    finally:
        log.close()


def test_cli_add_text_shows_the_secret_once_with_a_warning(ca):
    r = ca("user", "add", "bob", "--password-stdin", "--totp", input=PASSWORD + "\r\n")
    assert r.exit_code == 0, r.output
    assert "TOTP secret: " in r.stdout and "otpauth://totp/iast-ssh:bob?" in r.stdout
    assert "will not be shown again" in r.stdout
    secret = next(line.split()[-1] for line in r.stdout.splitlines() if line.startswith("TOTP secret:"))
    show = ca("user", "show", "bob")
    assert secret not in show.stdout and "otpauth" not in show.stdout
    log, store = open_store(ca)
    try:
        assert store.check_password("bob", PASSWORD)
    finally:
        log.close()


@pytest.mark.parametrize("args,stdin,message", [
    (["--password-stdin"], PASSWORD + "\n", "needs --totp"),
    ([], None, "needs a way to log in"),
    (["--totp"], None, "needs a way to log in"),
    (["--password-stdin", "--totp"], "\n", "no password"),
    (["--password-stdin", "--totp"], "", "no password"),
    (["--password-stdin", "--totp"], "short\n", "too short"),
])
def test_cli_add_refusals(ca, args, stdin, message):
    r = ca("user", "add", "bob", *args, input=stdin)
    assert r.exit_code == 2, r.output
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert ca("user", "show", "bob").exit_code == 5  # still no such user


def test_cli_add_refuses_bad_keys_and_existing_users(ca, tmp_path, keys):
    dsa = tmp_path / "dsa.pub"
    dsa.write_text("ssh-dss " + base64.b64encode(string("ssh-dss") + string(b"\x01") * 4).decode() + "\n")
    r = ca("user", "add", "alice", "--key", str(dsa))
    assert r.exit_code == 1 and "DSA" in r.stderr
    assert ca("user", "add", "alice", "--key", str(tmp_path / "k0.pub")).exit_code == 0
    r = ca("user", "add", "alice", "--key", str(tmp_path / "k1.pub"))
    assert r.exit_code == 2 and r.stderr.strip() == "Error: user alice exists"


def test_cli_list_and_show(ca, tmp_path, keys):
    ca("user", "add", "alice", "--key", str(tmp_path / "k0.pub"))
    ca("user", "add", "bob", "--password-stdin", "--totp", input=PASSWORD + "\n")
    r = ca("user", "list")
    assert r.exit_code == 0
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["NAME", "STATE", "KEYS", "PASSWORD", "TOTP", "CREATED"]
    assert lines[1].split()[:5] == ["alice", "enabled", "1", "no", "no"]
    assert lines[2].split()[:5] == ["bob", "enabled", "0", "yes", "yes"]
    listed = json.loads(ca("user", "list", "--json").stdout)
    assert [u["name"] for u in listed] == ["alice", "bob"]
    assert "password_hash" not in listed[1] and "totp_secret" not in listed[1]
    csv_out = ca("user", "list", "--csv").stdout
    assert csv_out.splitlines()[0].startswith("name,disabled") and "alice" in csv_out
    import csv as _csv
    import io

    fp = listed[0]["keys"][0]["fingerprint"]
    rows = {r["name"]: r for r in _csv.DictReader(io.StringIO(csv_out))}
    assert rows["alice"]["keys"] == fp and rows["bob"]["keys"] == ""  # fingerprints, not a JSON list
    r = ca("user", "show", "alice")
    assert r.exit_code == 0 and fp in r.stdout and "enabled" in r.stdout
    shown = json.loads(ca("user", "show", "alice", "--json").stdout)
    assert shown == listed[0]
    assert shown["keys"][0]["public"] == " ".join(keys[0].split()[:2])


def test_cli_disable_enable(ca, tmp_path, keys):
    ca("user", "add", "alice", "--key", str(tmp_path / "k0.pub"))
    r = ca("user", "disable", "alice", "--reason", "left the company")
    assert r.exit_code == 0, r.output
    assert "disabled (left the company)" in ca("user", "show", "alice").stdout
    assert "disabled" in ca("user", "list").stdout.splitlines()[1]
    log, store = open_store(ca)
    try:
        assert not store.key_allowed("alice", blob_of(keys[0]))
    finally:
        log.close()
    r = ca("user", "disable", "alice")
    assert r.exit_code == 2 and "already disabled" in r.stderr
    r = ca("user", "enable", "alice", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["disabled"] is False
    log, store = open_store(ca)
    try:
        assert store.key_allowed("alice", blob_of(keys[0]))
        kinds = [(e.kind, e.data["actor"]) for e in log.events(user="alice")]
        assert kinds[:2] == [("user_enabled", os_user()), ("user_disabled", os_user())]
        log.verify()
    finally:
        log.close()


@pytest.mark.parametrize("cmd", [["show", "ghost"], ["disable", "ghost"], ["enable", "ghost"], ["totp", "ghost"],
                                 ["key-remove", "ghost", "SHA256:x"], ["passwd", "ghost", "--password-stdin"]])
def test_cli_unknown_user_is_not_found_in_one_line(ca, cmd):
    r = ca("user", *cmd, input=PASSWORD + "\n")
    assert r.exit_code == 5, r.output  # not found (README, "Exit codes"), not a usage error
    assert r.stderr.strip() == "Error: no such user 'ghost'"


def test_cli_without_a_ca(cli_run):
    r = cli_run("user", "list")
    assert r.exit_code == 1 and "run 'iast-ca init' first" in r.stderr


def test_cli_passwd(ca):
    ca("user", "add", "bob", "--password-stdin", "--totp", input=PASSWORD + "\n")
    r = ca("user", "passwd", "bob")
    assert r.exit_code == 2 and "--password-stdin" in r.stderr
    r = ca("user", "passwd", "bob", "--password-stdin", input="short\n")
    assert r.exit_code == 2 and "too short" in r.stderr
    r = ca("user", "passwd", "bob", "--password-stdin", input="the new passphrase\n")
    assert r.exit_code == 0, r.output
    log, store = open_store(ca)
    try:
        assert store.check_password("bob", "the new passphrase") and not store.check_password("bob", PASSWORD)
        (event,) = log.events(kind="password_changed")
        assert event.user == "bob" and "the new passphrase" not in json.dumps(event.data)
    finally:
        log.close()


def test_cli_totp_reset_gives_a_new_secret(ca):
    first = json.loads(ca("user", "add", "bob", "--password-stdin", "--totp", "--json",
                          input=PASSWORD + "\n").stdout)["totp_secret"]
    r = ca("user", "totp", "bob", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["totp_secret"] != first and out["totp_secret"] in out["totp_uri"]
    r = ca("user", "totp", "bob")
    assert r.exit_code == 0 and "will not be shown again" in r.stdout
    latest = next(line.split()[-1] for line in r.stdout.splitlines() if line.startswith("TOTP secret:"))
    log, store = open_store(ca)
    try:
        now = time.time()
        assert store.check_totp("bob", totp(latest, now), now=now)
        assert len(log.events(kind="totp_reset")) == 2
    finally:
        log.close()


def test_cli_key_add_and_remove(ca, tmp_path, keys):
    ca("user", "add", "alice", "--key", str(tmp_path / "k0.pub"))
    r = ca("user", "key-add", "alice", str(tmp_path / "k1.pub"), "--json")
    assert r.exit_code == 0, r.output
    fp = json.loads(r.stdout)["fingerprint"]
    r = ca("user", "key-add", "alice", "-", input=keys[2] + "\n")
    assert r.exit_code == 0 and "enrolled for user alice" in r.stdout
    r = ca("user", "key-add", "alice", str(tmp_path / "k1.pub"))
    assert r.exit_code == 2 and "already enrolled" in r.stderr
    assert len(json.loads(ca("user", "show", "alice", "--json").stdout)["keys"]) == 3
    r = ca("user", "key-remove", "alice", fp)
    assert r.exit_code == 0, r.output
    r = ca("user", "key-remove", "alice", fp)
    assert r.exit_code == 2 and "has no key" in r.stderr
    log, store = open_store(ca)
    try:
        assert not store.key_allowed("alice", blob_of(keys[1]))
        assert store.key_allowed("alice", blob_of(keys[2]))
        assert [e.kind for e in log.events(user="alice")][:3] == ["key_removed", "key_added", "key_added"]
    finally:
        log.close()


def test_cli_help_ends_with_an_example(ca):
    for cmd in ([], ["add"], ["list"], ["show"], ["disable"], ["enable"], ["passwd"], ["totp"], ["key-add"],
                ["key-remove"]):
        r = ca("user", *cmd, "--help")
        assert r.exit_code == 0
        assert "Example:" in r.stdout, cmd
