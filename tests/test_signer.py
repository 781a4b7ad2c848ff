"""Certificates, checked field by field with OpenSSH's own ``ssh-keygen -L``
against what policy decided and what the audit row says (docs/security.md 1-9)."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from dataclasses import replace

import asyncssh
import pytest

from ca.app import open_authority
from ca.config import default_config
from ca.errors import BadKey, PolicyDenied, SigningError
from ca.issuance.signer import Signer, make_key_id
from ca.models import Decision, Identity, SignRequest
from ca.sshcert.certificates import (
    fingerprint,
    parse_certificate_line,
    verify_signature,
)
from ca.sshcert.userkey import parse_user_key
from ca.sshcert.wire import WireError
from ca.state import init_state

from .conftest import keygen_L, make_key, sk_key_line

ALICE = Identity(user="alice", auth_methods=("publickey",), mfa=True, source_address="192.0.2.7")


def utc(ts: int) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")


def write_cert(tmp_path, issued, name="cert") -> object:
    p = tmp_path / f"{name}-cert.pub"
    p.write_text(issued.certificate + "\n")
    return p


KEY_CASES = [
    ("ed25519", None, "ssh-ed25519-cert-v01@openssh.com"),
    ("ecdsa", 256, "ecdsa-sha2-nistp256-cert-v01@openssh.com"),
    ("ecdsa", 384, "ecdsa-sha2-nistp384-cert-v01@openssh.com"),
    ("ecdsa", 521, "ecdsa-sha2-nistp521-cert-v01@openssh.com"),
    ("rsa", 3072, "ssh-rsa-cert-v01@openssh.com"),
    ("sk-ssh-ed25519@openssh.com", None, "sk-ssh-ed25519-cert-v01@openssh.com"),
    ("sk-ecdsa-sha2-nistp256@openssh.com", None, "sk-ecdsa-sha2-nistp256-cert-v01@openssh.com"),
]


@pytest.mark.parametrize("kind,bits,cert_type", KEY_CASES)
def test_every_field_matches_policy_and_audit_row(tmp_path, authority, kind, bits, cert_type):
    if kind.startswith("sk-"):
        line = sk_key_line(kind)
    else:
        line = (make_key(tmp_path, kind, bits).with_suffix(".pub")).read_text()
    issued = authority.issue(
        ALICE, SignRequest(public_key=line, role="prod-readonly", ttl=20 * 60, reason='INC-1 "quoted" reason')
    , allow_unenrolled=True)
    L = keygen_L(write_cert(tmp_path, issued))
    row = authority.audit.issued_by_serial(issued.serial)
    d = issued.decision

    # What policy decided (the test policy's prod-readonly role).
    assert d.principals == ("prod-ro", "alice")
    assert d.force_command == "/usr/local/bin/prod-readonly-shell --audit"
    assert d.source_address == ("10.20.0.0/16", "127.0.0.2/32")
    assert d.valid_before - d.valid_after == 20 * 60 + 60

    # What OpenSSH reads in the certificate.
    assert L["Type"] == f"{cert_type} user certificate"
    assert L["Signing CA"].split()[1] == authority.ca_fingerprint
    assert L["Public key"].split()[1] == fingerprint(parse_user_key(line).blob)
    assert L["Key ID"] == f'"{issued.key_id}"' == f'"iast:alice:prod-readonly:{issued.serial}"'
    assert int(L["Serial"]) == issued.serial != 0
    assert (L["valid_from"], L["valid_to"]) == (utc(d.valid_after), utc(d.valid_before))
    assert L["principals"] == list(d.principals)
    assert L["critical"] == {
        "force-command": d.force_command,
        "source-address": ",".join(d.source_address),
    }
    assert L["extensions"] == ["permit-pty"]  # the role lists none: the default, permit-pty only (rule 5)

    # What the audit row says.
    assert (row.kind, row.user, row.role, row.serial, row.key_id) == (
        "issued", "alice", "prod-readonly", issued.serial, issued.key_id)
    assert row.source == "192.0.2.7"
    data = row.data
    assert data["principals"] == L["principals"]
    assert (utc(data["valid_after"]), utc(data["valid_before"])) == (L["valid_from"], L["valid_to"])
    assert data["force_command"] == L["critical"]["force-command"]
    assert ",".join(data["source_address"]) == L["critical"]["source-address"]
    assert data["extensions"] == L["extensions"]
    assert data["key_fingerprint"] == L["Public key"].split()[1]
    assert data["key_type"] == parse_user_key(line).algorithm
    assert data["ca_fingerprint"] == L["Signing CA"].split()[1]
    assert data["reason"] == 'INC-1 "quoted" reason'
    assert data["auth_methods"] == ["publickey"]
    assert data["policy_sha256"] == authority.policy.sha256
    assert issued.event_id == row.id


@pytest.mark.parametrize("ca_type,label,alg", [
    ("ed25519", "ED25519", "ssh-ed25519"),
    ("ecdsa-p256", "ECDSA", "ecdsa-sha2-nistp256"),
    ("ecdsa-p384", "ECDSA", "ecdsa-sha2-nistp384"),
    ("rsa-4096", "RSA", "rsa-sha2-512"),
])
def test_ca_key_types_sign_with_sha2(tmp_path, policy_file, ca_type, label, alg):
    cfg = default_config().with_overrides(state_dir=str(tmp_path / f"s-{ca_type}"), policy=str(policy_file))
    init_state(cfg, ca_type, None)
    a = open_authority(cfg)
    try:
        line = make_key(tmp_path).with_suffix(".pub").read_text()
        issued = a.issue(ALICE, SignRequest(public_key=line, role="dev"), allow_unenrolled=True)
    finally:
        a.close()
    L = keygen_L(write_cert(tmp_path, issued))
    # Never SHA-1 "ssh-rsa" for the CA signature (rule 8).
    assert L["Signing CA"] == f"{label} {a.ca_fingerprint} (using {alg})"
    assert L["extensions"] == ["permit-port-forwarding", "permit-pty"]


def test_dev_role_defaults(tmp_path, authority):
    line = make_key(tmp_path).with_suffix(".pub").read_text()
    issued = authority.issue(Identity(user="dave", auth_methods=("publickey",)), SignRequest(public_key=line), allow_unenrolled=True)
    L = keygen_L(write_cert(tmp_path, issued))
    assert issued.decision.role == "dev"  # the policy's default role
    assert L["principals"] == ["dave"]
    assert L["critical"] == {}
    assert issued.decision.ttl == 3600


@pytest.mark.parametrize("kind,bits,message", [
    ("rsa", 2048, "RSA key has 2048 bits; at least 3072 are required"),
    ("dsa", 1024, "DSA keys are refused"),
])
def test_weak_keys_refused_and_audited(tmp_path, authority, kind, bits, message):
    try:
        line = make_key(tmp_path, kind, bits).with_suffix(".pub").read_text()
    except subprocess.CalledProcessError:
        pytest.skip(f"this ssh-keygen cannot make {kind} keys")
    with pytest.raises(BadKey, match=message):
        authority.issue(ALICE, SignRequest(public_key=line, role="dev"), allow_unenrolled=True)
    (event,) = authority.audit.events(kind="denied")
    assert event.user == "alice" and message in event.data["message"]
    assert authority.audit.events(kind="issued") == []


def test_certificate_is_not_certified_again(tmp_path, authority):
    line = make_key(tmp_path).with_suffix(".pub").read_text()
    issued = authority.issue(ALICE, SignRequest(public_key=line, role="dev"), allow_unenrolled=True)
    with pytest.raises(BadKey, match="certificate cannot be certified"):
        authority.issue(ALICE, SignRequest(public_key=issued.certificate, role="dev"), allow_unenrolled=True)


@pytest.mark.parametrize("line,message", [
    ("", "expected an OpenSSH public key line"),
    ("ssh-ed25519", "expected an OpenSSH public key line"),
    ("ssh-ed25519 !!!notbase64", "not valid base64"),
    ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHfake", "not valid base64"),
    ("ssh-foo AAAA", "is not accepted"),
    ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA==", "malformed public key"),
])
def test_malformed_keys_refused(line, message):
    with pytest.raises(BadKey, match=message):
        parse_user_key(line)


def test_ed25519_keys_are_judged_as_asyncssh_judges_them():
    """parse_user_key reads Ed25519 blobs without asyncssh (the issuance path's hot case): on
    every truncation, every point length and trailing bytes, it must accept exactly the blobs
    asyncssh's decoder accepts with nothing left over (rule 7), and refuse the rest as BadKey."""
    import base64

    from asyncssh.public_key import decode_ssh_public_key

    from ca.sshcert.wire import string as wire_string

    good = asyncssh.generate_private_key("ssh-ed25519").public_data
    point = good[-32:]
    blobs = [good[:n] for n in range(len(good) + 1)]
    blobs += [wire_string("ssh-ed25519") + wire_string(point[:n] + bytes(max(0, n - 32))) for n in range(0, 40)]
    blobs += [good + b"\0", good + wire_string(b"x"), wire_string("ssh-ed25519") + b"\0\0\0\x20" + point[:31]]
    seen = set()
    for blob in blobs:
        try:
            key = decode_ssh_public_key(blob)
            theirs = key.public_data == blob and point_ok(blob)
        except Exception:  # noqa: BLE001 - any refusal of theirs
            theirs = False
        line = "ssh-ed25519 " + base64.b64encode(blob).decode()
        try:
            ours = parse_user_key(line).blob == blob
        except BadKey:
            ours = False
        assert ours == theirs, blob
        seen.add(ours)
    assert seen == {True, False}


def point_ok(blob: bytes) -> bool:
    return blob[-32:] != bytes(32)  # the all-zero key is refused on top (rule 7)


def test_type_confusion_refused(tmp_path):
    rsa = make_key(tmp_path, "rsa", 3072).with_suffix(".pub").read_text().split()
    with pytest.raises(BadKey, match="key line says 'ssh-ed25519' but the key is 'ssh-rsa'"):
        parse_user_key(f"ssh-ed25519 {rsa[1]}")


def test_serials_unique_increasing_never_zero(tmp_path, authority):
    line = make_key(tmp_path).with_suffix(".pub").read_text()
    serials = [authority.issue(ALICE, SignRequest(public_key=line, role="dev"), allow_unenrolled=True).serial for _ in range(25)]
    assert serials == list(range(1, 26))
    rows = authority.audit.conn.execute("SELECT serial FROM certificates ORDER BY serial").fetchall()
    assert [r[0] for r in rows] == serials


def test_requester_text_never_reaches_the_key_id(tmp_path, authority):
    line = make_key(tmp_path).with_suffix(".pub").read_text()
    issued = authority.issue(ALICE, SignRequest(public_key=line, role="prod-readonly", reason='x" ID evil (serial 1)'), allow_unenrolled=True)
    assert issued.key_id == f"iast:alice:prod-readonly:{issued.serial}"
    assert keygen_L(write_cert(tmp_path, issued))["Key ID"] == f'"{issued.key_id}"'


def _decision(**kw) -> Decision:
    base = dict(user="alice", role="dev", principals=("alice",), valid_after=1000, valid_before=5000, ttl=4000,
                force_command=None, source_address=(), extensions=("permit-pty",),
                reason=None, policy_sha256="0" * 64)
    base.update(kw)
    return Decision(**base)


@pytest.mark.parametrize("change,message", [
    (dict(principals=()), "no principals"),
    (dict(principals=("alice,root",)), "unsafe principal"),
    (dict(principals=("al ice",)), "unsafe principal"),
    (dict(principals=("*",)), "unsafe principal"),
    (dict(valid_after=5000), "empty validity window"),
    (dict(extensions=("permit-everything",)), "unknown extensions"),
])
def test_signer_refuses_unsafe_decisions(tmp_path, change, message):
    signer = Signer(asyncssh.generate_private_key("ssh-ed25519"))
    key = parse_user_key(make_key(tmp_path).with_suffix(".pub").read_text())
    with pytest.raises(SigningError, match=message):
        signer.sign(_decision(**change), key, 7, make_key_id("alice", "dev", 7))


@pytest.mark.parametrize("serial", [0, 2**64])
def test_signer_refuses_bad_serials(tmp_path, serial):
    signer = Signer(asyncssh.generate_private_key("ssh-ed25519"))
    key = parse_user_key(make_key(tmp_path).with_suffix(".pub").read_text())
    with pytest.raises(SigningError, match="serial"):
        signer.sign(_decision(), key, serial, "iast:alice:dev:1")


def test_key_id_refuses_unsafe_characters():
    with pytest.raises(SigningError):
        make_key_id("alice bob", "dev", 1)
    assert make_key_id("alice", "dev", 9) == "iast:alice:dev:9"


def test_signature_checked_against_the_ca_key(tmp_path, authority):
    line = make_key(tmp_path).with_suffix(".pub").read_text()
    cert = parse_certificate_line(authority.issue(ALICE, SignRequest(public_key=line, role="dev"), allow_unenrolled=True).certificate)
    verify_signature(cert, authority.signer.ca_blob)
    other = asyncssh.generate_private_key("ssh-ed25519").public_data
    with pytest.raises(WireError, match="signed by"):
        verify_signature(cert, other)
    flipped = replace(cert, signed_data=cert.signed_data[:-1] + bytes([cert.signed_data[-1] ^ 1]))
    with pytest.raises(WireError, match="does not verify"):
        verify_signature(flipped, authority.signer.ca_blob)


def test_signer_check_catches_a_wrong_certificate(tmp_path, authority):
    """The post-signing check must compare fields, not just the signature."""
    key = parse_user_key(make_key(tmp_path).with_suffix(".pub").read_text())
    d = _decision()
    line, cert = authority.signer.sign(d, key, 5, "iast:alice:dev:5")
    with pytest.raises(SigningError, match="wrong principals"):
        authority.signer._check(cert.blob, replace(d, principals=("root",)), key, 5, "iast:alice:dev:5", False)
    with pytest.raises(SigningError, match="wrong serial"):
        authority.signer._check(cert.blob, d, key, 6, "iast:alice:dev:5", False)


def test_policy_denial_raises_and_issues_nothing(tmp_path, authority):
    line = make_key(tmp_path).with_suffix(".pub").read_text()
    with pytest.raises(PolicyDenied):
        authority.issue(Identity(user="dave", auth_methods=("publickey",)),
                        SignRequest(public_key=line, role="prod-readonly", reason="x"), allow_unenrolled=True)
    assert authority.audit.conn.execute("SELECT count(*) FROM certificates").fetchone() == (0,)
    (denied,) = authority.audit.events(kind="denied")
    assert denied.user == "dave" and denied.role == "prod-readonly" and denied.data["code"] == "denied"


def test_requester_text_in_a_denial_cannot_carry_escape_sequences(tmp_path, authority):
    line = make_key(tmp_path).with_suffix(".pub").read_text()
    with pytest.raises(PolicyDenied):
        authority.issue(ALICE, SignRequest(public_key=line, role="dev\x1b[2K\x1b]0;owned\x07",
                                           reason="x\x1b]0;owned\x07\u202e"), allow_unenrolled=True)
    (event,) = authority.audit.events(kind="denied")
    stored = json.dumps([event.role, event.data["requested_role"], event.data["reason"], event.data["message"]],
                        ensure_ascii=False)
    assert "\x1b" not in stored and "\u202e" not in stored and "\x07" not in stored
    assert event.role.startswith("'dev\\x1b")  # shown as its repr, so a reviewer still sees what was sent


def test_keys_sshd_could_never_use_are_refused():
    import base64 as b64

    from ca.sshcert.wire import mpint, string

    big = string("ssh-rsa") + mpint(65537) + mpint((1 << 20000) + 1)
    with pytest.raises(BadKey, match="at most 16384"):
        parse_user_key(f"ssh-rsa {b64.b64encode(big).decode()}")
    zero = string("ssh-ed25519") + string(bytes(32))
    with pytest.raises(BadKey, match="all zeros"):
        parse_user_key(f"ssh-ed25519 {b64.b64encode(zero).decode()}")
