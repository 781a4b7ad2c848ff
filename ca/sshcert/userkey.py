"""The user public keys the CA agrees to certify: one parser, every rule of what is refused."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field

import asyncssh
from asyncssh.public_key import decode_ssh_public_key
from cryptography.hazmat.primitives.asymmetric import ed25519

from ca.errors import BadKey
from ca.sshcert.certificates import fingerprint
from ca.sshcert.wire import Reader, WireError

# The user key types we certify. DSA is refused (weak, removed from OpenSSH),
# and so is any certificate (docs/security.md rule 7).
USER_KEY_TYPES = frozenset(
    {
        "ssh-ed25519",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "ssh-rsa",
        "sk-ssh-ed25519@openssh.com",
        "sk-ecdsa-sha2-nistp256@openssh.com",
    }
)
MAX_KEY_LINE = 16 * 1024
DEFAULT_MIN_RSA_BITS = 3072
MAX_RSA_BITS = 16384  # OpenSSH's SSH_RSA_MAXIMUM_MODULUS_SIZE: a larger key could never log in


@dataclass(frozen=True)
class UserKey:
    """A public key we have checked and agree to certify."""

    algorithm: str
    blob: bytes
    fingerprint: str
    bits: int
    decoded: asyncssh.SSHKey | None = field(default=None, compare=False, repr=False)
    comment: str = field(default="", compare=False)  # the line's comment (user@laptop), at most MAX_COMMENT

    @property
    def key(self) -> asyncssh.SSHKey:
        """asyncssh's object for this key, decoded on first use (the issuance path needs only the blob)."""
        if self.decoded is None:
            object.__setattr__(self, "decoded", decode_ssh_public_key(self.blob))
        return self.decoded

    @property
    def line(self) -> str:
        return f"{self.algorithm} {base64.b64encode(self.blob).decode()}"

    @property
    def line_with_comment(self) -> str:
        """``TYPE BASE64 COMMENT`` as enrolled (the comment is a label for people, never checked)."""
        return f"{self.line} {self.comment}" if self.comment else self.line


def _key_bits(algorithm: str, blob: bytes) -> int:
    r = Reader(blob)
    r.string()
    if algorithm == "ssh-rsa":
        r.mpint()  # e
        return r.mpint().bit_length()
    if algorithm in ("ssh-ed25519", "sk-ssh-ed25519@openssh.com"):
        return 256
    return {"nistp256": 256, "nistp384": 384, "nistp521": 521}.get(r.string().decode("ascii", "replace"), 0)


def _ed25519_point(blob: bytes) -> bytes:
    r = Reader(blob)
    r.string()
    return r.string()


MAX_COMMENT = 100  # a key's comment kept for 'user show': a label, cut here


def parse_user_key(line: str, min_rsa_bits: int = DEFAULT_MIN_RSA_BITS) -> UserKey:
    """Check an OpenSSH public key line and return it as a :class:`UserKey`.

    Refuses (with :class:`BadKey`): anything that is not one line of
    ``TYPE BASE64 [COMMENT]``, unknown and DSA keys, certificates, RSA keys
    under ``min_rsa_bits``, and a blob whose inner type differs from the
    line's. ``sk-*`` hardware keys are accepted and keep their type.
    """
    if not isinstance(line, str):
        raise BadKey("public key must be text")
    if len(line) > MAX_KEY_LINE:
        raise BadKey(f"public key line is longer than {MAX_KEY_LINE} bytes")
    text = line.strip()
    if "PRIVATE KEY" in text:
        # A private key sent by mistake (ssh ca sign < id_ed25519): refused before anything else
        # looks at it; the message names no byte of it (docs/security.md rule 84).
        raise BadKey("that is a private key: send the public key (the .pub file) and keep the private key "
                     "to yourself; it was not stored")
    if "\n" in text or "\r" in text:
        raise BadKey("expected exactly one public key line")
    parts = text.split(None, 2)
    if len(parts) < 2:
        raise BadKey("expected an OpenSSH public key line: 'TYPE BASE64 [COMMENT]'")
    algorithm, b64 = parts[0], parts[1]
    if algorithm.endswith("-cert-v01@openssh.com"):
        raise BadKey("a certificate cannot be certified again: send the plain public key")
    if algorithm == "ssh-dss":
        raise BadKey("DSA keys are refused: use ssh-ed25519")
    if algorithm not in USER_KEY_TYPES:
        raise BadKey(f"key type {algorithm[:64]!r} is not accepted")
    try:
        blob = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise BadKey("public key is not valid base64") from None
    try:
        inner = Reader(blob).text()
        bits = _key_bits(algorithm, blob)
    except WireError as e:
        raise BadKey(f"malformed public key: {e}") from None
    if inner != algorithm:
        raise BadKey(f"key line says {algorithm!r} but the key is {inner[:64]!r}")
    key = None
    if algorithm == "ssh-ed25519":
        # The common key, checked without asyncssh (a quarter of a certificate's parse): exactly
        # string(type) string(point) and nothing after it, and a point pyca takes (what asyncssh's
        # decoder checks, through the same pyca call); tests/test_signer.py holds both to one answer.
        try:
            r = Reader(blob)
            r.string()
            point = r.string()
            r.end()
        except WireError as e:
            raise BadKey(f"malformed public key: {e}") from None
        try:
            ed25519.Ed25519PublicKey.from_public_bytes(point)
        except ValueError as e:
            raise BadKey(f"malformed public key: {e}") from None
    else:
        try:
            key = decode_ssh_public_key(blob)
        except (asyncssh.KeyImportError, ValueError, TypeError) as e:
            raise BadKey(f"malformed public key: {e}") from None
        if key.public_data != blob:
            raise BadKey("malformed public key: trailing or non-canonical data")
    if algorithm == "ssh-rsa" and bits < min_rsa_bits:
        raise BadKey(f"RSA key has {bits} bits; at least {min_rsa_bits} are required")
    if algorithm == "ssh-rsa" and bits > MAX_RSA_BITS:
        raise BadKey(f"RSA key has {bits} bits; sshd accepts at most {MAX_RSA_BITS}")
    if algorithm in ("ssh-ed25519", "sk-ssh-ed25519@openssh.com") and _ed25519_point(blob) == bytes(32):
        raise BadKey("the Ed25519 key is all zeros")
    comment = " ".join(parts[2].split())[:MAX_COMMENT] if len(parts) > 2 else ""
    return UserKey(algorithm, blob, fingerprint(blob), bits, key, comment)



# A host key is served by sshd, which has no FIDO host keys: the sk-* types are refused.
HOST_KEY_TYPES = USER_KEY_TYPES - {"sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com"}


def parse_host_key(line: str, min_rsa_bits: int = DEFAULT_MIN_RSA_BITS) -> UserKey:
    """Check a host's OpenSSH public key line (``/etc/ssh/ssh_host_*_key.pub``) before certifying it.

    The same rules as :func:`parse_user_key` (no certificate, no DSA, no short
    RSA, no malformed key), and no ``sk-*`` key, which sshd cannot serve.
    """
    key = parse_user_key(line, min_rsa_bits)
    if key.algorithm not in HOST_KEY_TYPES:
        raise BadKey(f"key type {key.algorithm} cannot be a host key")
    return key
