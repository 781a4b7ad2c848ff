"""The signing-key seam: the signer builds every byte, a key backend only signs.

A second backend, written here and signing with pyca/cryptography directly
(not asyncssh), must give certificates that OpenSSH accepts (``ssh-keygen
-L`` and a real sshd login) and that are byte-identical to the file
backend's in every field but the signature (and, for deterministic Ed25519,
in the signature too). The file backend's certificates are in turn
byte-identical to what asyncssh's ``generate_user_certificate`` built
before the seam, for the same inputs and nonce.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import time

import asyncssh
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from ca.audit.checkpoint import make_checkpoint, read_checkpoint
from ca.errors import BadKey, SigningError
from ca.issuance.signer import Signer, make_key_id
from ca.keys.base import KeyBackend
from ca.keys.file import FileKeyBackend
from ca.keys.keyring import Keyring
from ca.models import Decision
from ca.sshcert.build import (
    ecdsa_signature,
    ecdsa_signature_from_raw,
    encode_options,
    ssh_signature,
)
from ca.sshcert.certificates import (
    fingerprint,
    parse_certificate,
    parse_certificate_line,
)
from ca.sshcert.userkey import parse_user_key
from ca.sshcert.wire import mpint, string
from ca.state import init_state

from .conftest import keygen_L, sk_key_line
from .sshd_harness import cert_path_for, make_sshd_fixture, make_user_key

# --------------------------------------------------------------------------
# A second backend: pyca/cryptography, no asyncssh


class PycaBackend(KeyBackend):
    """Signs with a pyca/cryptography private key, the way a PKCS#11 token would:
    Ed25519 raw (CKM_EDDSA), ECDSA as r || s over the curve's digest (CKM_ECDSA),
    RSA PKCS#1 v1.5 over SHA-512 (CKM_SHA512_RSA_PKCS)."""

    _CURVES = {"secp256r1": ("nistp256", hashes.SHA256()), "secp384r1": ("nistp384", hashes.SHA384())}

    def __init__(self, key):
        self.key = key
        pub = key.public_key()
        if isinstance(key, ed25519.Ed25519PrivateKey):
            self._blob = string("ssh-ed25519") + string(pub.public_bytes(serialization.Encoding.Raw,
                                                                            serialization.PublicFormat.Raw))
        elif isinstance(key, ec.EllipticCurvePrivateKey):
            curve, self._digest = self._CURVES[key.curve.name]
            point = pub.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
            self._blob = string(f"ecdsa-sha2-{curve}") + string(curve) + string(point)
        else:
            nums = pub.public_numbers()
            self._blob = string("ssh-rsa") + mpint(nums.e) + mpint(nums.n)
        self.calls = 0

    @property
    def public_blob(self) -> bytes:
        return self._blob

    def sign(self, data: bytes) -> bytes:
        self.calls += 1
        if isinstance(self.key, ed25519.Ed25519PrivateKey):
            return ssh_signature("ssh-ed25519", self.key.sign(data))
        if isinstance(self.key, ec.EllipticCurvePrivateKey):
            r, s = decode_dss_signature(self.key.sign(data, ec.ECDSA(self._digest)))
            n = (self.key.curve.key_size + 7) // 8
            return ecdsa_signature_from_raw(self.signature_algorithm, r.to_bytes(n, "big") + s.to_bytes(n, "big"))
        return ssh_signature("rsa-sha2-512", self.key.sign(data, padding.PKCS1v15(), hashes.SHA512()))

    def trust_line(self) -> str:
        import base64

        return f"{self.algorithm} {base64.b64encode(self.public_blob).decode()} pyca-backend"


def as_asyncssh(pyca_key) -> asyncssh.SSHKey:
    """The same private key, for the file backend."""
    pem = pyca_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())
    return asyncssh.import_private_key(pem)


@functools.cache
def pyca_key(kind: str):
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if kind == "p256":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "p384":
        return ec.generate_private_key(ec.SECP384R1())
    return rsa.generate_private_key(65537, 3072)


CA_KINDS = [("ed25519", "ED25519", "ssh-ed25519"), ("p256", "ECDSA", "ecdsa-sha2-nistp256"),
            ("p384", "ECDSA", "ecdsa-sha2-nistp384"), ("rsa", "RSA", "rsa-sha2-512")]


def decision(**kw) -> Decision:
    base = dict(user="alice", role="ops", principals=("alice", "ops-ro"), valid_after=1_700_000_000,
                valid_before=1_700_003_600, ttl=3600, force_command="/usr/bin/ops-shell --audit",
                source_address=("10.20.0.0/16", "127.0.0.2/32"),
                extensions=("permit-pty", "permit-port-forwarding", "permit-X11-forwarding",
                            "permit-agent-forwarding", "permit-user-rc"),
                reason=None, policy_sha256="0" * 64)
    base.update(kw)
    return Decision(**base)


@functools.cache
def user_line(kind: str) -> str:
    if kind.startswith("sk-"):
        return sk_key_line(kind)
    alg, size = {"ed25519": ("ssh-ed25519", None), "p256": ("ecdsa-sha2-nistp256", None),
                 "p384": ("ecdsa-sha2-nistp384", None), "p521": ("ecdsa-sha2-nistp521", None),
                 "rsa": ("ssh-rsa", 3072)}[kind]
    key = asyncssh.generate_private_key(alg, key_size=size) if size else asyncssh.generate_private_key(alg)
    return key.export_public_key("openssh").decode()


USER_KINDS = ["ed25519", "p256", "p384", "p521", "rsa", "sk-ssh-ed25519@openssh.com",
              "sk-ecdsa-sha2-nistp256@openssh.com"]
NONCE = bytes(range(32))


def fields(cert) -> dict:
    """Every parsed field but the signature (and the blob that carries it)."""
    return {k: v for k, v in dataclasses.asdict(cert).items() if k not in ("signature", "blob")}


# --------------------------------------------------------------------------
# The pyca backend against the file backend, same key, same nonce


@pytest.mark.parametrize("ca_kind,label,alg", CA_KINDS)
@pytest.mark.parametrize("user_kind", USER_KINDS)
def test_pyca_backend_matches_file_backend(ca_kind, label, alg, user_kind):
    pyca = PycaBackend(pyca_key(ca_kind))
    file = FileKeyBackend(as_asyncssh(pyca_key(ca_kind)))
    assert (pyca.public_blob, pyca.algorithm, pyca.signature_algorithm, pyca.fingerprint) == (
        file.public_blob, file.algorithm, file.signature_algorithm, file.fingerprint)
    assert pyca.signature_algorithm == alg  # never SHA-1 ssh-rsa (docs/security.md rule 8)

    uk = parse_user_key(user_line(user_kind))
    d = decision()
    key_id = make_key_id("alice", "ops", 77)
    line_p, cert_p = Signer(pyca, nonce=lambda: NONCE).sign(d, uk, 77, key_id)
    line_f, cert_f = Signer(file, nonce=lambda: NONCE).sign(d, uk, 77, key_id)

    assert pyca.calls == 1
    assert fields(cert_p) == fields(cert_f)
    assert cert_p.signed_data == cert_f.signed_data
    assert cert_p.nonce == NONCE
    assert line_p.split()[0] == line_f.split()[0] and line_p.split()[2] == key_id
    if ca_kind in ("ed25519", "rsa"):  # deterministic signatures: the whole certificate is the same
        assert cert_p.blob == cert_f.blob and line_p == line_f


@pytest.mark.parametrize("ca_kind,label,alg", CA_KINDS)
def test_pyca_backend_certificates_pass_ssh_keygen(tmp_path, ca_kind, label, alg):
    pyca = PycaBackend(pyca_key(ca_kind))
    uk = parse_user_key(user_line("ed25519"))
    d = decision()
    line, cert = Signer(pyca).sign(d, uk, 9, "iast:alice:ops:9")
    path = tmp_path / "id-cert.pub"
    path.write_text(line + "\n")
    L = keygen_L(path)
    assert L["Type"] == "ssh-ed25519-cert-v01@openssh.com user certificate"
    assert L["Signing CA"] == f"{label} {pyca.fingerprint} (using {alg})"
    assert L["Public key"].split()[1] == uk.fingerprint
    assert L["Key ID"] == '"iast:alice:ops:9"'
    assert int(L["Serial"]) == 9
    assert L["principals"] == ["alice", "ops-ro"]
    assert L["critical"] == {"force-command": d.force_command, "source-address": "10.20.0.0/16,127.0.0.2/32"}
    assert L["extensions"] == sorted(d.extensions)  # lexical order (PROTOCOL.certkeys)


# --------------------------------------------------------------------------
# The file backend against asyncssh's own certificate builder (before the seam)


@pytest.mark.parametrize("ca_kind", ["ed25519", "p256", "rsa"])
@pytest.mark.parametrize("user_kind", USER_KINDS)
@pytest.mark.parametrize("shape", ["full", "minimal", "sk-touch"])
def test_file_backend_matches_asyncssh_generate_user_certificate(ca_kind, user_kind, shape):
    ca = as_asyncssh(pyca_key(ca_kind))
    uk = parse_user_key(user_line(user_kind))
    if shape == "full":
        d = decision()
    elif shape == "minimal":
        d = decision(principals=("alice",), force_command=None, source_address=(), extensions=())
    else:  # no-touch-required alone: asyncssh put it last, after any permit-*, out of lexical order
        d = decision(extensions=("no-touch-required",))
    is_sk = uk.algorithm.startswith("sk-")
    key_id = "iast:alice:ops:4242"
    sig_alg = "rsa-sha2-512" if ca_kind == "rsa" else ca.get_algorithm()
    old = ca.generate_user_certificate(
        uk.key, key_id, version=1, serial=4242, principals=list(d.principals),
        valid_after=d.valid_after, valid_before=d.valid_before, force_command=d.force_command,
        source_address=list(d.source_address) or None,
        touch_required=not (is_sk and "no-touch-required" in d.extensions), sig_alg=sig_alg, comment=key_id,
        **{flag: name in d.extensions for name, flag in [
            ("permit-X11-forwarding", "permit_x11_forwarding"), ("permit-agent-forwarding", "permit_agent_forwarding"),
            ("permit-port-forwarding", "permit_port_forwarding"), ("permit-pty", "permit_pty"),
            ("permit-user-rc", "permit_user_rc")]},
    )
    old_line = old.export_certificate("openssh").decode("ascii").strip()
    old_cert = parse_certificate(old.public_data)

    line, cert = Signer(FileKeyBackend(ca), nonce=lambda: old_cert.nonce).sign(d, uk, 4242, key_id)
    assert fields(cert) == fields(old_cert)
    assert cert.signed_data == old_cert.signed_data
    assert line.split()[0] == old_line.split()[0] and line.split()[2:] == old_line.split()[2:] == [key_id]
    if ca_kind in ("ed25519", "rsa"):
        assert cert.blob == old_cert.blob and line == old_line


def test_sk_key_with_no_touch_required_and_permits_is_sorted(tmp_path):
    """asyncssh wrote no-touch-required after the permit-* extensions, which our own reader
    (rightly) refuses; the signer's builder sorts them as PROTOCOL.certkeys says."""
    uk = parse_user_key(sk_key_line("sk-ssh-ed25519@openssh.com"))
    d = decision(extensions=("permit-pty", "no-touch-required"))
    line, cert = Signer(PycaBackend(pyca_key("ed25519"))).sign(d, uk, 3, "iast:alice:ops:3")
    assert list(cert.extensions) == ["no-touch-required", "permit-pty"]
    path = tmp_path / "sk-cert.pub"
    path.write_text(line + "\n")
    assert keygen_L(path)["extensions"] == ["no-touch-required", "permit-pty"]
    # on a key that is not a FIDO key, no-touch-required means nothing and is left out
    _, plain = Signer(PycaBackend(pyca_key("ed25519"))).sign(d, parse_user_key(user_line("ed25519")), 4,
                                                              "iast:alice:ops:4")
    assert list(plain.extensions) == ["permit-pty"]


def test_options_are_encoded_sorted_once_each():
    assert encode_options({"permit-pty": b"", "no-touch-required": b"", "permit-X11-forwarding": b""}) == (
        string("no-touch-required") + string(b"") + string("permit-X11-forwarding") + string(b"")
        + string("permit-pty") + string(b""))
    assert ecdsa_signature_from_raw("ecdsa-sha2-nistp256", (1).to_bytes(32, "big") + (2**255).to_bytes(32, "big")) \
        == ecdsa_signature("ecdsa-sha2-nistp256", 1, 2**255) \
        == string("ecdsa-sha2-nistp256") + string(mpint(1) + mpint(2**255))
    with pytest.raises(ValueError):
        ecdsa_signature_from_raw("ecdsa-sha2-nistp256", b"\x01" * 63)


# --------------------------------------------------------------------------
# A backend is trusted with the key only: what it returns is checked


class _Broken(PycaBackend):
    def __init__(self, key, mode):
        super().__init__(key)
        self.mode = mode

    def sign(self, data: bytes) -> bytes:
        if self.mode == "raise":
            raise RuntimeError("token removed\nslot 0")
        if self.mode == "signing-error":
            raise SigningError("CA key is in a token that is not plugged in")
        if self.mode == "other-key":
            return PycaBackend(ed25519.Ed25519PrivateKey.generate()).sign(data)
        return ssh_signature("ssh-ed25519", bytes(64))


@pytest.mark.parametrize("mode,message", [
    ("raise", r"^CA key backend failed: RuntimeError: token removed slot 0$"),
    ("signing-error", r"^CA key is in a token that is not plugged in$"),
    ("other-key", r"^issued certificate does not verify: signature does not verify$"),
    ("garbage", r"^issued certificate does not verify: signature does not verify$"),
])
def test_backend_failures_are_one_line_signing_errors(mode, message):
    signer = Signer(_Broken(pyca_key("ed25519"), mode))
    with pytest.raises(SigningError, match=message):
        signer.sign(decision(), parse_user_key(user_line("ed25519")), 5, "iast:alice:ops:5")


def test_file_backend_never_signs_with_sha1_and_refuses_non_ca_keys():
    rsa_key = asyncssh.generate_private_key("ssh-rsa", key_size=2048)
    backend = FileKeyBackend(rsa_key)
    assert (backend.algorithm, backend.signature_algorithm) == ("ssh-rsa", "rsa-sha2-512")
    assert backend.sign(b"x").startswith(string("rsa-sha2-512"))
    assert backend.fingerprint == fingerprint(rsa_key.public_data)
    with pytest.raises(BadKey, match="cannot be a CA key"):
        FileKeyBackend(asyncssh.generate_private_key("ssh-dss"))


def test_keyring_opens_the_active_key_as_a_backend(tmp_path, policy_file):
    from ca.config import default_config

    cfg = default_config().with_overrides(state_dir=str(tmp_path / "s"), policy=str(policy_file))
    init_state(cfg, "ecdsa-p256", b"pass phrase")
    ring = Keyring.load(cfg.state_dir)
    backend = ring.open_signer(b"pass phrase")
    assert isinstance(backend, KeyBackend)
    assert backend.public_blob == ring.active.blob and backend.fingerprint == ring.active.fingerprint
    assert backend.signature_algorithm == "ecdsa-sha2-nistp256"
    with pytest.raises(BadKey, match="wrong passphrase"):
        ring.open_signer(b"wrong")


@pytest.mark.parametrize("backend", ["file", "pyca"])
def test_checkpoints_sign_with_a_backend(backend):
    key = pyca_key("ed25519")
    asy = as_asyncssh(key)
    signer = FileKeyBackend(asy) if backend == "file" else PycaBackend(key)
    args = (10, "ab" * 32, "2026-11-29T00:00:00Z", "cd" * 32)
    text = make_checkpoint(signer, *args)
    assert text == make_checkpoint(asy, *args)  # Ed25519: the same bytes as with the asyncssh key
    assert read_checkpoint(text, signer.public_blob).count == 10


# --------------------------------------------------------------------------
# A real sshd login with the pyca backend's certificates

SSHD_CAS = ("ed25519", "p256")
sshd = make_sshd_fixture(None, trust=lambda: [PycaBackend(pyca_key(k)).trust_line() for k in SSHD_CAS])


@pytest.mark.sshd
@pytest.mark.parametrize("ca_kind,label", [("ed25519", "ED25519"), ("p256", "ECDSA")])
def test_pyca_backend_certificate_logs_in_to_sshd(sshd, tmp_path, ca_kind, label):
    backend = PycaBackend(pyca_key(ca_kind))
    key = make_user_key(tmp_path / "alice")
    uk = parse_user_key(key.with_name(key.name + ".pub").read_text())
    now = int(time.time())
    d = decision(principals=("alice",), valid_after=now - 60, valid_before=now + 600, force_command=None,
                 source_address=(), extensions=("permit-pty",))
    serial = 1000 + len(ca_kind)
    line, cert = Signer(backend).sign(d, uk, serial, make_key_id("alice", "ops", serial))
    cert_path_for(key).write_text(line + "\n")
    assert parse_certificate_line(line) == cert

    sshd.allow_principals(sshd.login_user, ["alice"])
    mark = sshd.log_mark()
    r = sshd.ssh(key, sshd.login_user, "echo backend-$((6*7))")
    assert r.returncode == 0, f"{r.stderr}\n{sshd.log(mark)}"
    assert r.stdout.strip() == "backend-42"
    sshd.wait_for_log(
        rf"^Accepted publickey for {re.escape(sshd.login_user)} from 127\.0\.0\.1 port \d+ ssh2: "
        rf"ED25519-CERT {re.escape(uk.fingerprint)} ID {re.escape(cert.key_id)} \(serial {serial}\) "
        rf"CA {label} {re.escape(backend.fingerprint)}$",
        mark,
    )
