"""Read and verify OpenSSH certificates ourselves (PROTOCOL.certkeys).

The signer builds certificates with :mod:`ca.sshcert.build` and a key
backend signs them; this module is the second, independent reader that
checks the result before it leaves the CA, whatever backend signed it: it parses
every field, checks the signature against the CA public key with
pyca/cryptography, and lets the caller compare each field with the decision.
It also serves the KRL and log-correlation code, and it is fuzzed.
"""

from __future__ import annotations

import base64
import functools
import hashlib
from dataclasses import dataclass
from typing import Any

from ca.sshcert.wire import Reader, WireError
from ca.sshcert.wire import string as wire_string

USER_CERT = 1
HOST_CERT = 2

# Key-type specific public fields that follow the nonce in a certificate,
# as (base key type, list of field kinds). From PROTOCOL.certkeys and
# PROTOCOL.u2f.
_CERT_KEY_FIELDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "ssh-ed25519-cert-v01@openssh.com": ("ssh-ed25519", ("string",)),
    "ssh-rsa-cert-v01@openssh.com": ("ssh-rsa", ("mpint", "mpint")),
    "ecdsa-sha2-nistp256-cert-v01@openssh.com": ("ecdsa-sha2-nistp256", ("string", "string")),
    "ecdsa-sha2-nistp384-cert-v01@openssh.com": ("ecdsa-sha2-nistp384", ("string", "string")),
    "ecdsa-sha2-nistp521-cert-v01@openssh.com": ("ecdsa-sha2-nistp521", ("string", "string")),
    "sk-ssh-ed25519-cert-v01@openssh.com": ("sk-ssh-ed25519@openssh.com", ("string", "string")),
    "sk-ecdsa-sha2-nistp256-cert-v01@openssh.com": (
        "sk-ecdsa-sha2-nistp256@openssh.com",
        ("string", "string", "string"),
    ),
    "ssh-dss-cert-v01@openssh.com": ("ssh-dss", ("mpint", "mpint", "mpint", "mpint")),
}

CERT_TYPE_FOR_KEY = {base: cert for cert, (base, _) in _CERT_KEY_FIELDS.items()}


def fingerprint(blob: bytes) -> str:
    """OpenSSH's SHA256 fingerprint of a public key blob (``SHA256:...``, no padding)."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


@dataclass(frozen=True)
class Certificate:
    """Every field of an OpenSSH certificate, as parsed from its blob."""

    cert_type_name: str  # e.g. ssh-ed25519-cert-v01@openssh.com
    key_type: str  # the certified key's own type, e.g. ssh-ed25519
    public_key_blob: bytes  # the certified key, as a plain public key blob
    nonce: bytes
    serial: int
    cert_type: int  # 1 user, 2 host
    key_id: str
    principals: tuple[str, ...]
    valid_after: int
    valid_before: int
    critical_options: dict[str, bytes]  # name -> option data (already unwrapped once)
    extensions: dict[str, bytes]
    signature_key: bytes  # the CA public key blob
    signature: bytes
    signed_data: bytes
    blob: bytes

    @property
    def force_command(self) -> str | None:
        raw = self.critical_options.get("force-command")
        return None if raw is None else Reader(raw).text()

    @property
    def source_address(self) -> tuple[str, ...]:
        raw = self.critical_options.get("source-address")
        return () if raw is None else tuple(Reader(raw).text().split(","))

    @property
    def ca_fingerprint(self) -> str:
        return fingerprint(self.signature_key)

    @property
    def key_fingerprint(self) -> str:
        return fingerprint(self.public_key_blob)


def _options(raw: bytes, what: str) -> dict[str, bytes]:
    """Decode a critical-options or extensions list: (string name, string data)*,
    names unique and in lexical order (PROTOCOL.certkeys)."""
    r = Reader(raw)
    out: dict[str, bytes] = {}
    last = None
    while r.remaining():
        name = r.text()
        data = r.string()
        if name in out:
            raise WireError(f"duplicate {what} {name!r}")
        if last is not None and name < last:
            raise WireError(f"{what} not in lexical order at {name!r}")
        out[name] = data
        last = name
    return out


def parse_certificate(blob: bytes) -> Certificate:
    """Parse a certificate blob; raise :class:`WireError` on anything malformed."""
    r = Reader(blob)
    name = r.text()
    if name not in _CERT_KEY_FIELDS:
        raise WireError(f"not a supported certificate type: {name!r}")
    base, fields = _CERT_KEY_FIELDS[name]
    nonce = r.string()
    start = r.pos
    for kind in fields:
        r.mpint() if kind == "mpint" else r.string()
    key_fields = blob[start : r.pos]
    serial = r.uint64()
    cert_type = r.uint32()
    key_id = r.text()
    pr = Reader(r.string())
    principals = []
    while pr.remaining():
        principals.append(pr.text())
    valid_after = r.uint64()
    valid_before = r.uint64()
    critical = _options(r.string(), "critical option")
    extensions = _options(r.string(), "extension")
    r.string()  # reserved
    signature_key = r.string()
    signed_data = blob[: r.pos]
    signature = r.string()
    r.end()
    return Certificate(
        cert_type_name=name,
        key_type=base,
        public_key_blob=wire_string(base) + key_fields,
        nonce=nonce,
        serial=serial,
        cert_type=cert_type,
        key_id=key_id,
        principals=tuple(principals),
        valid_after=valid_after,
        valid_before=valid_before,
        critical_options=critical,
        extensions=extensions,
        signature_key=signature_key,
        signature=signature,
        signed_data=signed_data,
        blob=bytes(blob),
    )


def parse_certificate_line(line: str) -> Certificate:
    """Parse ``TYPE BASE64 [COMMENT]`` as written in a ``-cert.pub`` file."""
    parts = line.strip().split()
    if len(parts) < 2:
        raise WireError("expected 'TYPE BASE64 [COMMENT]'")
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except ValueError as e:
        raise WireError("certificate is not valid base64") from e
    cert = parse_certificate(blob)
    if cert.cert_type_name != parts[0]:
        raise WireError(f"line says {parts[0]!r} but the blob is {cert.cert_type_name!r}")
    return cert


def _curve(name: bytes):
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    return {
        b"nistp256": (ec.SECP256R1(), hashes.SHA256()),
        b"nistp384": (ec.SECP384R1(), hashes.SHA384()),
        b"nistp521": (ec.SECP521R1(), hashes.SHA512()),
    }[name]


def verify_signature(cert: Certificate, ca_key_blob: bytes) -> None:
    """Check that ``cert`` was signed by the CA key ``ca_key_blob``.

    Raises :class:`WireError` if the signature does not verify, if it was
    made by another key, or if it uses SHA-1 ``ssh-rsa`` (never accepted:
    docs/security.md rule 8).
    """
    if cert.signature_key != ca_key_blob:
        raise WireError(f"signed by {fingerprint(cert.signature_key)}, not by {fingerprint(ca_key_blob)}")
    verify_ssh_signature(ca_key_blob, cert.signature, cert.signed_data)


def verify_ssh_signature(key_blob: bytes, signature: bytes, data: bytes) -> None:
    """Verify an SSH signature blob (``string alg, string sig``) over ``data``
    with the public key ``key_blob``, using pyca/cryptography.

    Accepts Ed25519, ECDSA (with the curve's own hash) and RSA with SHA-2
    only; raises :class:`WireError` otherwise or when the signature is bad.
    (pyca/cryptography is imported here, not with the module: the client only parses certificates,
    and ``iast-ssh login`` over OpenSSH does not load it.)
    """
    from cryptography.exceptions import InvalidSignature

    s = Reader(signature)
    alg = s.text()
    sig = s.string()
    s.end()
    try:
        ktype, pub = _public_key(bytes(key_blob))
        if ktype == "ssh-ed25519" and alg == "ssh-ed25519":
            pub.verify(sig, data)
        elif ktype.startswith("ecdsa-sha2-") and alg == ktype:
            from cryptography.hazmat.primitives.asymmetric import ec
            from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

            key, digest = pub
            sr = Reader(sig)
            der = encode_dss_signature(sr.mpint(), sr.mpint())
            sr.end()
            key.verify(der, data, ec.ECDSA(digest))
        elif ktype == "ssh-rsa" and alg in ("rsa-sha2-512", "rsa-sha2-256"):
            from cryptography.hazmat.primitives import hashes
            from cryptography.hazmat.primitives.asymmetric import padding

            digest = hashes.SHA512() if alg == "rsa-sha2-512" else hashes.SHA256()
            pub.verify(sig, data, padding.PKCS1v15(), digest)
        else:
            raise WireError(f"signature algorithm {alg!r} is not accepted for a {ktype!r} key")
    except InvalidSignature as e:
        raise WireError("signature does not verify") from e
    except WireError:
        raise
    except (KeyError, ValueError) as e:
        raise WireError(f"bad key or signature: {e}") from e


@functools.lru_cache(maxsize=64)
def _public_key(key_blob: bytes) -> tuple[str, Any]:
    """(key type, the pyca public key) of a key blob, built once per blob: the signer checks every
    certificate against the same CA key, and an ECDSA point is validated only the first time.
    Any other key type is returned with None (refused by the caller); a malformed blob raises."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    k = Reader(key_blob)
    ktype = k.text()
    if ktype == "ssh-ed25519":
        return ktype, ed25519.Ed25519PublicKey.from_public_bytes(k.string())
    if ktype.startswith("ecdsa-sha2-"):
        curve, digest = _curve(k.string())
        return ktype, (ec.EllipticCurvePublicKey.from_encoded_point(curve, k.string()), digest)
    if ktype == "ssh-rsa":
        e, n = k.mpint(), k.mpint()
        return ktype, rsa.RSAPublicNumbers(e, n).public_key()
    return ktype, None
