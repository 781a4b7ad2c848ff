"""Revocation end to end: ``iast-ca revoke`` / ``iast-ca krl`` over the audit
database, with real certificates checked by the real ``ssh-keygen -Q`` and a
real ``sshd`` with ``RevokedKeys`` (docs/security.md rule 20)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import sqlite3
import stat
import subprocess
import time
from pathlib import Path

import pytest

from ca.errors import AuditError

from ca.access.revocation import (
    KRL_EXPIRY_GRACE,
    build_current_krl,
    current_krl,
    krl_version,
    list_revocations,
    revoke_ca_key,
    revoke_key,
    revoke_key_id,
    revoke_serial,
    revoke_user,
)
from ca.app import open_authority, open_audit
from ca.cli.admin import cli
from ca.cli.revoke_cmds import krl as krl_cmd
from ca.cli.revoke_cmds import revoke as revoke_cmd
from ca.errors import PolicyDenied, UsageError
from ca.issuance.authority import Authority
from ca.keys.keyring import Keyring
from ca.models import Identity, SignRequest
from ca.sshcert.krl import CertRevocations, parse_krl
from ca.state import StatePaths
from ca.store import AuditLog

from .conftest import make_key
from .sshd_harness import (
    IastCA,
    SshdHarness,
    cert_path_for,
    key_fingerprint,
    make_ca_fixture,
    make_sshd_fixture,
    make_user_key,
    ssh_keygen_path,
)

# ca/cli/admin.py registers these; until then (and harmlessly after), do it here.
cli.add_command(revoke_cmd)
cli.add_command(krl_cmd)


# --------------------------------------------------------------------------
# helpers


@pytest.fixture
def log(cfg):
    a = open_audit(cfg)
    yield a
    a.close()


@pytest.fixture
def keyring(cfg):
    return Keyring.load(cfg.state_dir)


class Issuer:
    """Issues real certificates through Authority.issue, each written beside its key."""

    def __init__(self, authority: Authority, tmp_path: Path):
        self.authority = authority
        self.dir = tmp_path / "keys"
        self.dir.mkdir(exist_ok=True)
        self.n = 0

    def key(self, name: str | None = None) -> Path:
        self.n += 1
        return make_key(self.dir, name=name or f"k{self.n}")

    def issue(self, user: str = "alice", key: Path | None = None, role: str = "dev", authority=None):
        key = key or self.key()
        issued = (authority or self.authority).issue(
            Identity(user=user, auth_methods=("admin-offline",), mfa=True, operator="test"),
            SignRequest(public_key=key.with_name(key.name + ".pub").read_text(), role=role), allow_unenrolled=True)
        cert = key.with_name(f"{key.name}-{issued.serial}-cert.pub")
        cert.write_text(issued.certificate + "\n")
        return cert, issued


@pytest.fixture
def issuer(authority, tmp_path):
    return Issuer(authority, tmp_path)


pytestmark = pytest.mark.both_backends


def query(krl: bytes | Path, certs, tmp_path: Path) -> dict[Path, bool]:
    """``ssh-keygen -Q -f KRL CERT...`` -> {cert: revoked?}."""
    if isinstance(krl, bytes):
        path = tmp_path / f"q-{hashlib.sha256(krl).hexdigest()[:12]}.krl"
        path.write_bytes(krl)
        krl = path
    certs = list(certs)
    r = subprocess.run([ssh_keygen_path(), "-Q", "-f", str(krl)] + [str(c) for c in certs],
                       capture_output=True, text=True)
    assert r.returncode in (0, 1), f"ssh-keygen -Q failed ({r.returncode}): {r.stdout}{r.stderr}"
    out = {}
    for c in certs:
        line = next(x for x in r.stdout.splitlines() if x.startswith(f"{c} "))
        out[c] = line.endswith(": REVOKED")
        assert out[c] or line.endswith(": ok"), line
    assert r.returncode == (1 if any(out.values()) else 0)
    return out


def keygen_krl(spec: str, ca_pub_lines: list[str], tmp_path: Path) -> bytes:
    """The KRL ``ssh-keygen -k -s CA.pub`` builds from the same spec."""
    h = hashlib.sha256(spec.encode()).hexdigest()[:12]
    ca_pub, spec_file, out = tmp_path / f"ca-{h}.pub", tmp_path / f"spec-{h}", tmp_path / f"keygen-{h}.krl"
    ca_pub.write_text("".join(line + "\n" for line in ca_pub_lines))
    spec_file.write_text(spec)
    out.unlink(missing_ok=True)
    ca_args = ["-s", str(ca_pub)] if ca_pub_lines else []
    subprocess.run([ssh_keygen_path(), "-k", "-f", str(out)] + ca_args + [str(spec_file)],
                   check=True, capture_output=True)
    return out.read_bytes()


def krl_via_cli(cli_run, tmp_path: Path) -> bytes:
    out = tmp_path / "revoked_keys"
    r = cli_run("krl", "-o", str(out))
    assert r.exit_code == 0, r.output
    return out.read_bytes()


def revoke_ok(cli_run, *args: str):
    r = cli_run("revoke", *args)
    assert r.exit_code == 0, r.output
    return r


# --------------------------------------------------------------------------
# ssh-keygen -Q: each kind of revocation, with unrevoked neighbours


def test_revoke_by_serial(cli_run, issuer, keyring, tmp_path):
    certs = [issuer.issue() for _ in range(3)]
    (before, _), (target, t), (after, _) = certs
    r = revoke_ok(cli_run, "--serial", str(t.serial), "--reason", "laptop stolen")
    assert f"revoked certificate serial {t.serial}" in r.stdout
    ours = krl_via_cli(cli_run, tmp_path)
    assert query(ours, [before, target, after], tmp_path) == {before: False, target: True, after: False}
    theirs = keygen_krl(f"serial: {t.serial}\n", keyring.trust_lines(), tmp_path)
    assert query(theirs, [before, target, after], tmp_path) == query(ours, [before, target, after], tmp_path)
    assert len(ours) - len(theirs) == len("iast-ssh certificate authority")  # only our comment differs


def test_revoke_a_range_of_consecutive_serials(log, issuer, keyring, tmp_path):
    issued = [issuer.issue(key=issuer.key() if i % 8 == 0 else None) for i in range(40)]
    serials = [i.serial for _, i in issued]
    lo, hi = serials[5], serials[34]
    for s in range(lo, hi + 1):
        revoke_serial(log, s, "compromised build host", "admin")
    ours = current_krl(log, keyring, time.time())
    assert parse_krl(ours).certs == {keyring.active.blob: CertRevocations(((lo, hi),))}
    theirs = keygen_krl(f"serial: {lo}-{hi}\n", keyring.trust_lines(), tmp_path)
    assert len(ours) - len(theirs) == len("iast-ssh certificate authority")  # one range section each
    probe = [issued[i][0] for i in (4, 5, 6, 20, 33, 34, 35)]
    got = query(ours, probe, tmp_path)
    assert [got[c] for c in probe] == [False, True, True, True, True, True, False]
    assert query(theirs, probe, tmp_path) == got


def test_revoke_by_key_id(cli_run, issuer, keyring, tmp_path):
    (kept, _), (target, t) = issuer.issue(), issuer.issue()
    revoke_ok(cli_run, "--key-id", t.key_id, "--reason", "left the company")
    ours = krl_via_cli(cli_run, tmp_path)
    assert parse_krl(ours).certs[keyring.active.blob].key_ids == {t.key_id}
    assert query(ours, [kept, target], tmp_path) == {kept: False, target: True}
    theirs = keygen_krl(f"id: {t.key_id}\n", keyring.trust_lines(), tmp_path)
    assert query(theirs, [kept, target], tmp_path) == {kept: False, target: True}


def test_revoke_by_key_blocks_certificates_issued_later(cli_run, issuer, tmp_path):
    key = issuer.key("stolen")
    old, _ = issuer.issue(key=key)
    other, _ = issuer.issue()
    r = revoke_ok(cli_run, "--key", str(key.with_name("stolen.pub")), "--reason", "key leaked")
    assert "every certificate for it" in r.stdout
    # The CA refuses to certify a revoked key from now on ...
    with pytest.raises(PolicyDenied, match="is revoked"):
        issuer.issue(key=key)
    # ... and a certificate for it made any other way (here: with the CA key, outside the CA)
    # is refused by sshd too: the key itself is in the KRL.
    ca_key = next((cli_run.state / "ca-keys").iterdir())
    subprocess.run([ssh_keygen_path(), "-q", "-s", str(ca_key), "-I", "outside", "-n", "alice", "-z", "777",
                    str(key.with_name("stolen.pub"))], check=True)
    new = key.with_name("stolen-cert.pub")
    ours = krl_via_cli(cli_run, tmp_path)
    assert query(ours, [old, new, other, key.with_name("stolen.pub")], tmp_path) == {
        old: True, new: True, other: False, key.with_name("stolen.pub"): True}
    theirs = keygen_krl(f"key: {key.with_name('stolen.pub').read_text()}", [], tmp_path)
    assert parse_krl(ours).keys == parse_krl(theirs).keys


def test_revoke_by_user_revokes_their_certificates_and_disables_them(cli_run, log, issuer, tmp_path):
    from ca.auth.users import UserStore

    alice_key = issuer.key("alice")
    UserStore(log).add("alice", keys=[alice_key.with_name("alice.pub").read_text()], actor="test")
    a1, _ = issuer.issue("alice", key=alice_key)
    b1, _ = issuer.issue("bob")
    a2, _ = issuer.issue("alice")
    r = revoke_ok(cli_run, "--user", "alice", "--reason", "account compromised")
    assert "revoked user alice: 2 unexpired certificate(s)" in r.stdout
    assert UserStore(log).get("alice").disabled
    ours = krl_via_cli(cli_run, tmp_path)
    assert query(ours, [a1, b1, a2], tmp_path) == {a1: True, b1: False, a2: True}
    kinds = sorted(x.kind for x in list_revocations(log))
    assert kinds == ["serial", "serial", "user"]
    events = [e for e in log.events(kind="user_disabled")] + [e for e in log.events(kind="revoked")]
    assert [e.kind for e in events] == ["user_disabled", "revoked"]
    assert events[0].id < events[1].id  # disabled first, then revoked
    # Again: nothing new to disable, no new rows, one more event.
    r = revoke_ok(cli_run, "--user", "alice", "--reason", "again")
    assert r.stdout.startswith("already revoked")
    assert sorted(x.kind for x in list_revocations(log)) == kinds


def test_revoke_user_who_is_not_in_the_user_store(log, issuer, keyring, tmp_path):
    c, _ = issuer.issue("dave")
    res = revoke_user(log, "dave", "offline-only user", "admin")
    assert any("not in the user store" in n for n in res.notes)
    assert query(current_krl(log, keyring), [c], tmp_path) == {c: True}
    with pytest.raises(UsageError, match="no user"):
        revoke_user(log, "nobody", "typo", "admin")


def test_revoke_user_catches_a_certificate_issued_in_the_race_window(cfg, log, issuer, keyring, tmp_path):
    # The service checked "is alice enabled?" just before the disable, and its certificate is
    # committed just after the revocation: valid_after is backdated by the clock skew, so the
    # 'user' row still covers it. (Offline, a revoked user gets nothing until re-enabled, so the
    # racing certificate is the one signed right after an audited 'user enable'.)
    from ca.auth.users import UserStore
    now = time.time()
    users = UserStore(log)
    users.add("alice", keys=[issuer.key().with_suffix(".pub").read_text()], actor="admin")
    issuer.issue("alice")
    res = revoke_user(log, "alice", "compromised", "admin")
    users.enable("alice", actor="admin")
    late = open_authority(cfg, clock=lambda: now + 5)
    try:
        racing, racing_issued = issuer.issue("alice", authority=late)
        much_later = open_authority(cfg, clock=lambda: now + 3600)
        try:
            fresh, _ = issuer.issue("alice", authority=much_later)
        finally:
            much_later.close()
    finally:
        late.close()
    assert racing_issued.serial not in res.serials
    got = query(current_krl(log, keyring, now + 10), [racing, fresh], tmp_path)
    assert got == {racing: True, fresh: False}  # a certificate after the skew window (re-enabled user) is not


def test_revoke_ca_key(cli_run, issuer, keyring, tmp_path, policy_file):
    certs = [issuer.issue()[0] for _ in range(3)]
    other = IastCA.create(tmp_path / "other", policy_file)
    other_key = make_user_key(tmp_path / "otherkey")
    other_cert = other.sign(other_key, user="alice", role="dev").path
    r = revoke_ok(cli_run, "--ca-key", keyring.active.fingerprint, "--reason", "CA key exposed")
    assert "every certificate it signed" in r.stdout and "ACTIVE CA key" in r.stderr
    ours = krl_via_cli(cli_run, tmp_path)
    assert parse_krl(ours).keys == {keyring.active.blob}
    assert query(ours, certs + [other_cert], tmp_path) == {**{c: True for c in certs}, other_cert: False}
    theirs = keygen_krl(f"key: {keyring.active.public}\n", [], tmp_path)
    assert query(theirs, certs + [other_cert], tmp_path) == query(ours, certs + [other_cert], tmp_path)


def test_a_ca_key_no_longer_in_the_keyring_is_revoked_by_hash(log, issuer, keyring, tmp_path):
    c, issued = issuer.issue()
    fp = keyring.active.fingerprint
    res = revoke_ca_key(log, fp, "gone", "admin")  # no keyring: only the certificates table knows it
    assert any("SHA-256 hash" in n for n in res.notes)
    krl = parse_krl(current_krl(log, keyring))
    assert krl.sha256s == {hashlib.sha256(keyring.active.blob).digest()} and not krl.keys
    assert query(current_krl(log, keyring), [c], tmp_path) == {c: True}


def test_serials_of_a_ca_key_missing_from_the_keyring_fall_back_to_key_ids(log, issuer, cfg, tmp_path):
    c, issued = issuer.issue()
    revoke_serial(log, issued.serial, "x", "admin")
    stripped = Keyring(Path(cfg.state_dir), ())  # as if the CA key had been removed from the keyring
    krl = parse_krl(current_krl(log, stripped))
    assert krl.certs == {b"": CertRevocations(key_ids=frozenset({issued.key_id}))}
    assert query(current_krl(log, stripped), [c], tmp_path) == {c: True}


# --------------------------------------------------------------------------
# The database side: errors, idempotence, audit, expiry, versions


def test_unknown_serial_or_key_id_is_a_usage_error(cli_run, issuer):
    issuer.issue()
    r = cli_run("revoke", "--serial", "999", "--reason", "x")
    assert r.exit_code == 2 and "no certificate with serial 999" in r.stderr
    r = cli_run("revoke", "--key-id", "iast:nobody:dev:1", "--reason", "x")
    assert r.exit_code == 2 and "no certificate with key ID" in r.stderr


@pytest.mark.parametrize("args, message", [
    (["--reason", "x"], "exactly one of"),
    (["--serial", "1", "--user", "alice", "--reason", "x"], "exactly one of"),
    (["--serial", "1"], "Missing option '--reason'"),
    (["--serial", "0", "--reason", "x"], "0 is not in the range"),
    (["--serial", "1", "--reason", "  "], "a reason is required"),
    (["--serial", "1", "--reason", "two\nlines"], "one line"),
    (["--ca-key", "SHA256:nope", "--reason", "x"], "not a SHA256 key fingerprint"),
    (["--ca-key", "SHA256:" + "A" * 43, "--reason", "x"], "not a CA key of this CA"),
])
def test_usage_errors_exit_2(cli_run, issuer, args, message):
    issuer.issue()
    r = cli_run("revoke", *args)
    assert r.exit_code == 2, r.output
    assert message in r.stderr, r.stderr


def test_a_certificate_is_not_a_key(cli_run, issuer, keyring, tmp_path):
    cert, issued = issuer.issue()
    r = cli_run("revoke", "--key", str(cert), "--reason", "x")
    assert r.exit_code == 2 and f"use --serial {issued.serial}" in r.stderr
    ca_pub = tmp_path / "ca.pub"
    ca_pub.write_text(keyring.active.public + "\n")
    r = cli_run("revoke", "--key", str(ca_pub), "--reason", "x")
    assert r.exit_code == 2 and "--ca-key" in r.stderr
    junk = tmp_path / "junk.pub"
    junk.write_text("ssh-ed25519 AAAA\n")
    r = cli_run("revoke", "--key", str(junk), "--reason", "x")
    assert r.exit_code == 2 and "Error:" in r.stderr


def test_revoking_twice_adds_an_event_not_a_row(log, issuer):
    _, issued = issuer.issue()
    first = revoke_serial(log, issued.serial, "stolen", "alice-admin")
    second = revoke_serial(log, issued.serial, "stolen, again", "bob-admin")
    assert first.new and not second.new
    rows = list_revocations(log)
    assert [(r.kind, r.value, r.reason, r.actor, r.event_id) for r in rows] == [
        ("serial", str(issued.serial), "stolen", "alice-admin", first.event_id)]
    events = log.events(kind="revoked")
    assert [e.data["new"] for e in events] == [False, True]
    assert events[1].data == {"kind": "serial", "value": str(issued.serial), "reason": "stolen",
                              "actor": "alice-admin", "new": True, "ca_fingerprint": issued.ca_fingerprint}
    assert events[1].serial == issued.serial and events[1].user == "alice" and events[1].key_id == issued.key_id
    assert log.verify().count == len(log.events(limit=None))


def test_library_results_name_what_is_revoked(log, issuer, keyring):
    key = issuer.key("shared")
    _, a = issuer.issue(key=key)
    _, b = issuer.issue("bob", key=key)
    res = revoke_key(log, key.with_name("shared.pub").read_text(), "leaked", "admin", keyring=keyring)
    assert (res.kind, res.value, res.serials, res.new) == ("key", a.key_fingerprint, (a.serial, b.serial), True)
    event = log.get(res.event_id)
    assert event.data["users"] == ["alice", "bob"] and event.data["serials"] == [a.serial, b.serial]
    res = revoke_key_id(log, b.key_id, "left", "admin")
    assert (res.kind, res.serials, log.get(res.event_id).key_id) == ("key_id", (b.serial,), b.key_id)
    with pytest.raises(UsageError, match="--ca-key"):
        revoke_key(log, keyring.active.public, "x", "admin", keyring=keyring)


def test_revocations_cannot_be_edited(log, issuer):
    _, issued = issuer.issue()
    revoke_serial(log, issued.serial, "x", "a")
    with pytest.raises((sqlite3.DatabaseError, AuditError), match="cannot be deleted"):
        log.conn.execute("DELETE FROM revocations")
    with pytest.raises((sqlite3.DatabaseError, AuditError), match="cannot be changed"):
        log.conn.execute("UPDATE revocations SET value = '1'")


def test_expired_certificates_leave_the_krl_after_a_grace_period(cfg, log, issuer, keyring):
    now = time.time()
    past = open_authority(cfg, clock=lambda: now - 3 * 3600)  # 1h certificates, expired 2h ago
    try:
        _, expired = issuer.issue(authority=past)
    finally:
        past.close()
    _, live = issuer.issue()
    res = revoke_serial(log, expired.serial, "x", "a")
    assert "already expired" in res.notes[0]
    revoke_serial(log, live.serial, "x", "a")
    ca = keyring.active.blob
    assert parse_krl(current_krl(log, keyring, now)).certs[ca] == CertRevocations.of([live.serial])
    # Within the grace period (a host whose clock lags) it is still listed.
    at_expiry = expired.decision.valid_before + KRL_EXPIRY_GRACE - 1
    assert parse_krl(current_krl(log, keyring, at_expiry)).certs[ca].revokes_serial(expired.serial)


def test_krl_version_only_increases_and_tracks_content(log, issuer, keyring):
    now = time.time()
    _, a = issuer.issue()
    _, b = issuer.issue()
    assert krl_version(log) == 0
    k1 = build_current_krl(log, keyring, now)
    assert (k1.version, k1.changed) == (1, True)
    k1b = build_current_krl(log, keyring, now + 60)
    assert (k1b.version, k1b.changed, k1b.data) == (1, False, k1.data)  # same content: same bytes
    revoke_serial(log, a.serial, "x", "admin")
    k2 = build_current_krl(log, keyring, now + 120)
    assert (k2.version, k2.changed) == (2, True)
    revoke_serial(log, a.serial, "again", "admin")  # no new content
    assert build_current_krl(log, keyring, now + 180).version == 2
    # When the revoked certificate has aged out, the content changes again: a new version.
    k3 = build_current_krl(log, keyring, a.decision.valid_before + KRL_EXPIRY_GRACE + 1)
    assert (k3.version, k3.changed) == (3, True) and not parse_krl(k3.data).certs
    assert [parse_krl(k.data).version for k in (k1, k2, k3)] == [1, 2, 3]
    assert [e.data["version"] for e in reversed(log.events(kind="krl_version"))] == [1, 2, 3]
    with pytest.raises((sqlite3.DatabaseError, AuditError), match="only increases"):
        log.conn.execute("UPDATE krl_state SET version = 1")
    with pytest.raises((sqlite3.DatabaseError, AuditError), match="only increases"):
        log.conn.execute("DELETE FROM krl_state")
    assert krl_version(log) == 3


def test_krl_file_is_replaced_atomically_with_mode_0644(cli_run, issuer, tmp_path):
    _, issued = issuer.issue()
    outdir = tmp_path / "publish"
    outdir.mkdir()
    out = outdir / "revoked_keys"
    out.write_bytes(b"old")
    os.chmod(out, 0o600)
    old_inode = out.stat().st_ino
    r = cli_run("krl", "-o", str(out))
    assert r.exit_code == 0 and "KRL version 1" in r.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    assert out.stat().st_ino != old_inode  # a new file renamed into place, not rewritten in place
    assert os.listdir(outdir) == ["revoked_keys"]  # no temp file left behind
    revoke_ok(cli_run, "--serial", str(issued.serial), "--reason", "x")
    r = cli_run("krl", "-o", str(out), "--json")
    info = json.loads(r.stdout)
    assert info["version"] == 2 and info["changed"] and info["bytes"] == len(out.read_bytes())
    assert parse_krl(out.read_bytes()).version == 2
    assert os.listdir(outdir) == ["revoked_keys"]


def test_krl_to_stdout_and_text(cli_run, issuer, keyring):
    _, a = issuer.issue()
    _, b = issuer.issue()
    revoke_ok(cli_run, "--serial", str(a.serial), "--reason", "x")
    revoke_ok(cli_run, "--key-id", b.key_id, "--reason", "y")
    r = cli_run("krl")
    assert r.exit_code == 0
    assert parse_krl(r.stdout_bytes).certs[keyring.active.blob] == CertRevocations.of([a.serial], key_ids=[b.key_id])
    r = cli_run("krl", "--text")
    assert r.exit_code == 0
    assert f"serial: {a.serial}\n" in r.stdout and f"id: {b.key_id}\n" in r.stdout
    assert keyring.active.fingerprint in r.stdout and keyring.active.name in r.stdout
    assert re.search(r"^# KRL version 1, generated \d{4}-\d\d-\d\dT", r.stdout, re.M)
    r = cli_run("krl", "--text", "--json")
    assert r.exit_code == 2


def test_help_ends_with_an_example(cli_run):
    for cmd in ("revoke", "krl"):
        r = cli_run(cmd, "--help")
        assert r.exit_code == 0
        assert re.search(r"Example:\n\s+iast-ca .+\n", r.stdout), r.stdout


# --------------------------------------------------------------------------
# A real sshd with RevokedKeys = our KRL


def _policy(work: Path) -> str:
    return """\
[defaults]
ttl = "10m"
max_ttl = "1h"

[roles.shell]
members = ["*"]
principals = ["{user}"]
extensions = ["permit-pty"]
"""


iast_ca = make_ca_fixture(_policy)
sshd = make_sshd_fixture("iast_ca")


@pytest.fixture
def clean_sshd(sshd: SshdHarness, iast_ca: IastCA):
    sshd.set_trusted_ca_keys(iast_ca.trust_lines())
    sshd.allow_principals(sshd.login_user, ["alice"])
    sshd.set_revoked_keys(None)
    return sshd


def _publish(iast_ca: IastCA, sshd: SshdHarness) -> None:
    r = iast_ca.cli("krl", "-o", str(sshd.krl_path))
    assert r.exit_code == 0, r.output


def _login(sshd: SshdHarness, cert, marker: str):
    mark = sshd.log_mark()
    r = sshd.ssh(cert.key, sshd.login_user, f"echo {marker}")
    return r, sshd.connection_log(mark)


def _assert_revoked(sshd, cert, r, log):
    assert r.returncode == 255 and "Permission denied (publickey)" in r.stderr, f"{r.stderr}\n{log}"
    assert "Accepted publickey" not in log, log
    assert re.search(rf"^Authentication key ED25519-CERT {re.escape(cert.key_fingerprint)} "
                     rf"revoked by file {re.escape(str(sshd.krl_path))}$", log, re.M), log


def _assert_admitted(cert, r, log, marker):
    assert r.returncode == 0 and r.stdout.strip() == marker, f"{r.stderr}\n{log}"
    assert re.search(rf"Accepted publickey .* ID {re.escape(cert.key_id)} \(serial {cert.serial}\)", log), log


@pytest.mark.sshd
def test_sshd_refuses_a_revoked_serial_and_admits_the_rest(clean_sshd, iast_ca, tmp_path):
    sshd = clean_sshd
    revoked = iast_ca.sign(make_user_key(tmp_path / "revoked"), user="alice", role="shell")
    kept = iast_ca.sign(make_user_key(tmp_path / "kept"), user="alice", role="shell")
    r = iast_ca.cli("revoke", "--serial", str(revoked.serial), "--reason", "stolen laptop")
    assert r.exit_code == 0, r.output
    _publish(iast_ca, sshd)
    _assert_revoked(sshd, revoked, *_login(sshd, revoked, "should-not-run"))
    r, log = _login(sshd, kept, "still-valid")
    _assert_admitted(kept, r, log, "still-valid")


@pytest.mark.sshd
def test_sshd_refuses_a_revoked_key_even_in_a_later_certificate(clean_sshd, iast_ca, tmp_path):
    sshd = clean_sshd
    key = make_user_key(tmp_path / "leaked")
    r = iast_ca.cli("revoke", "--key", str(key.with_name("leaked.pub")), "--reason", "key leaked")
    assert r.exit_code == 0, r.output
    assert iast_ca.try_sign(key, user="alice", role="shell").exit_code == 3  # the CA will not certify it
    # A certificate for it made after the revocation some other way (the CA key used outside the CA):
    other = iast_ca.sign(make_user_key(tmp_path / "fine"), user="alice", role="shell")
    ca_key = next((iast_ca.state_dir / "ca-keys").iterdir())
    subprocess.run([ssh_keygen_path(), "-q", "-s", str(ca_key), "-I", "outside", "-n", ",".join(other.principals),
                    "-z", "777", str(key.with_name("leaked.pub"))], check=True)
    later = dataclasses.replace(other, key=key, path=cert_path_for(key), serial=777, key_id="outside",
                                key_fingerprint=key_fingerprint(key))
    _publish(iast_ca, sshd)
    _assert_revoked(sshd, later, *_login(sshd, later, "should-not-run"))
    r, log = _login(sshd, other, "other-key-ok")
    _assert_admitted(other, r, log, "other-key-ok")


@pytest.mark.sshd
def test_sshd_refuses_everything_a_revoked_ca_key_signed(clean_sshd, iast_ca, tmp_path):
    sshd = clean_sshd
    other_ca = IastCA.create(tmp_path / "other-ca", iast_ca.policy_path)
    sshd.set_trusted_ca_keys(iast_ca.trust_lines() + other_ca.trust_lines())
    ours = iast_ca.sign(make_user_key(tmp_path / "ours"), user="alice", role="shell")
    theirs = other_ca.sign(make_user_key(tmp_path / "theirs"), user="alice", role="shell")
    # A CA only revokes its own keys.
    r = other_ca.cli("revoke", "--ca-key", ours.ca_fingerprint, "--reason", "not ours")
    assert r.exit_code == 2 and "not a CA key of this CA" in r.stderr  # only its own keys
    r = iast_ca.cli("revoke", "--ca-key", ours.ca_fingerprint, "--reason", "CA key exposed")
    assert r.exit_code == 0, r.output
    _publish(iast_ca, sshd)
    mark = sshd.log_mark()
    r = sshd.ssh(ours.key, sshd.login_user, "echo should-not-run")
    log = sshd.connection_log(mark)
    assert r.returncode == 255 and "Accepted publickey" not in log, log
    assert re.search(r"revoked by file", log), log
    r, log = _login(sshd, theirs, "other-ca-ok")
    _assert_admitted(theirs, r, log, "other-ca-ok")
