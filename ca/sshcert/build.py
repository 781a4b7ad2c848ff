"""Build OpenSSH certificates ourselves (PROTOCOL.certkeys): the to-be-signed bytes, then the blob.

The signer fills every field explicitly; nothing here has a default that
could widen a certificate. The bytes are signed by a key backend (one
``sign(data)`` call) and the signature is appended by
:func:`assemble_certificate`. :mod:`ca.sshcert.certificates` is the
independent reader that checks the result.

Also here: the SSH signature encodings a backend needs to turn a raw
signature (Ed25519 bytes, ECDSA r and s, an RSA PKCS#1 v1.5 block) into the
``string(algorithm) + string(signature)`` blob (RFC 8709, RFC 5656 3.1.2,
RFC 8332).
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping

from ca.sshcert.certificates import _CERT_KEY_FIELDS, CERT_TYPE_FOR_KEY
from ca.sshcert.wire import Reader, WireError, mpint, string, uint32, uint64

# The signature algorithm each CA key type signs with. Never SHA-1 "ssh-rsa"
# for RSA (docs/security.md rule 8): an RSA CA key signs with rsa-sha2-512.
SIGNATURE_ALGORITHMS = {
    "ssh-ed25519": "ssh-ed25519",
    "ecdsa-sha2-nistp256": "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384": "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521": "ecdsa-sha2-nistp521",
    "ssh-rsa": "rsa-sha2-512",
}

# The key types a certificate may certify (DSA is never certified: docs/security.md rule 7).
_CERTIFIABLE = {base: cert for base, cert in CERT_TYPE_FOR_KEY.items() if base != "ssh-dss"}
_FIELD_KINDS = {base: _CERT_KEY_FIELDS[cert][1] for base, cert in _CERTIFIABLE.items()}
_EMPTY = string(b"")


def signature_algorithm(key_type: str) -> str:
    """The SSH signature algorithm a CA key of ``key_type`` signs with; ValueError if it cannot sign."""
    try:
        return SIGNATURE_ALGORITHMS[key_type]
    except KeyError:
        raise ValueError(f"{key_type!r} cannot be a CA key") from None


def cert_key_fields(public_blob: bytes) -> tuple[str, bytes]:
    """The certificate type name and the key-specific public fields of ``public_blob``.

    The fields are the ones PROTOCOL.certkeys / PROTOCOL.u2f place after the
    nonce, per key type: Ed25519 ``string pk``; ECDSA ``string curve, string
    Q``; RSA ``mpint e, mpint n``; sk-ssh-ed25519 ``string pk, string
    application``; sk-ecdsa ``string curve, string Q, string application``.
    Each is read and checked; raises :class:`WireError` on a malformed blob
    or a key type that is not certified.
    """
    r = Reader(public_blob)
    key_type = r.text()
    kinds = _FIELD_KINDS.get(key_type)
    if kinds is None:
        raise WireError(f"cannot certify a {key_type[:64]!r} key")
    start = r.pos
    for kind in kinds:
        r.mpint() if kind == "mpint" else r.string()
    r.end()
    return _CERTIFIABLE[key_type], r.data[start:]


def encode_options(options: Mapping[str, bytes]) -> bytes:
    """A critical-options or extensions field: ``(string name, string data)*``,
    sorted by name, each name once (PROTOCOL.certkeys). ``data`` is the
    option's own encoding: empty for a flag, ``string(value)`` for a value."""
    return b"".join([string(name) + string(options[name]) for name in sorted(options)])


def user_critical_options(force_command: str | None, source_address: Iterable[str]) -> dict[str, bytes]:
    """The critical options of a user certificate: ``force-command`` (the command)
    and ``source-address`` (comma-separated CIDR list), each only when set."""
    out: dict[str, bytes] = {}
    if force_command:
        out["force-command"] = string(force_command)
    addrs = ",".join(source_address)
    if addrs:
        out["source-address"] = string(addrs)
    return out


def tbs_certificate(
    *,
    public_key_blob: bytes,
    nonce: bytes,
    serial: int,
    cert_type: int,
    key_id: str,
    principals: Iterable[str],
    valid_after: int,
    valid_before: int,
    critical_options: Mapping[str, bytes],
    extensions: Mapping[str, bytes],
    signature_key: bytes,
) -> bytes:
    """The to-be-signed bytes of a certificate: every field of PROTOCOL.certkeys
    up to and including the signature key, in order; ``reserved`` is empty.

    ``cert_type`` is 1 (user) or 2 (host); the caller decides which options
    and extensions a type may carry. Raises :class:`WireError` for an
    uncertifiable key; ValueError, TypeError or OverflowError for a field
    that cannot be encoded (e.g. a serial outside uint64).
    """
    name, key_fields = cert_key_fields(public_key_blob)
    return b"".join((
        string(name),
        string(nonce),
        key_fields,
        uint64(serial),
        uint32(cert_type),
        string(key_id),
        string(b"".join([string(p) for p in principals])),
        uint64(valid_after),
        uint64(valid_before),
        string(encode_options(critical_options)),
        string(encode_options(extensions)),
        _EMPTY,  # reserved
        string(signature_key),
    ))


def assemble_certificate(tbs: bytes, signature: bytes) -> bytes:
    """The certificate blob: the to-be-signed bytes, then ``string(signature blob)``."""
    return tbs + string(signature)


def certificate_line(blob: bytes, comment: str | None = None) -> str:
    """``TYPE-cert-v01@openssh.com BASE64 [COMMENT]``, as written in a ``-cert.pub`` file."""
    name = Reader(blob).text()
    b64 = base64.b64encode(blob).decode("ascii")
    return f"{name} {b64} {comment}" if comment else f"{name} {b64}"


# -- signature blobs --------------------------------------------------------


def ssh_signature(algorithm: str, raw: bytes) -> bytes:
    """An SSH signature blob: ``string algorithm, string signature``."""
    return string(algorithm) + string(raw)


def ecdsa_signature(algorithm: str, r: int, s: int) -> bytes:
    """An ECDSA SSH signature blob: the signature is ``string(mpint r + mpint s)`` (RFC 5656 3.1.2)."""
    return ssh_signature(algorithm, mpint(r) + mpint(s))


def ecdsa_signature_from_raw(algorithm: str, rs: bytes) -> bytes:
    """From ``r || s`` of equal length (PKCS#11 CKM_ECDSA's output) to an SSH signature blob."""
    if not rs or len(rs) % 2:
        raise ValueError(f"raw ECDSA signature has odd or zero length {len(rs)}")
    half = len(rs) // 2
    return ecdsa_signature(algorithm, int.from_bytes(rs[:half], "big"), int.from_bytes(rs[half:], "big"))
