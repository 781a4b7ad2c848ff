"""Keys: the CA keyring, the user keys we agree to certify, and fingerprints.

The keyring holds one or more CA keys; exactly one is *active* (it signs),
and every key still *trusted* is published by ``iast-ca trust`` so that hosts
keep accepting certificates from a key being rotated out. Private keys are
stored in OpenSSH format, encrypted (bcrypt KDF, aes256-ctr) when a
passphrase is given.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh
from asyncssh.public_key import decode_ssh_public_key

from .certificates import fingerprint
from .errors import BadKey, StateError
from .files import read_secret, write_atomic
from .sshwire import Reader, WireError

# The user key types we certify. DSA is refused (weak, removed from OpenSSH),
# and so is any certificate (security.md rule 7).
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

# CLI name -> (asyncssh algorithm, key size)
CA_KEY_TYPES = {
    "ed25519": ("ssh-ed25519", None),
    "ecdsa-p256": ("ecdsa-sha2-nistp256", None),
    "ecdsa-p384": ("ecdsa-sha2-nistp384", None),
    "rsa-4096": ("ssh-rsa", 4096),
}


@dataclass(frozen=True)
class UserKey:
    """A public key we have checked and agree to certify."""

    algorithm: str
    blob: bytes
    fingerprint: str
    bits: int
    key: asyncssh.SSHKey = field(compare=False, repr=False)

    @property
    def line(self) -> str:
        return f"{self.algorithm} {base64.b64encode(self.blob).decode()}"


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
    return UserKey(algorithm, blob, fingerprint(blob), bits, key)


def read_passphrase(passphrase_file: str | os.PathLike | None) -> bytes | None:
    """The CA passphrase: from ``passphrase_file``, else from the systemd
    credential ``ca-passphrase`` (``$CREDENTIALS_DIRECTORY``), else None."""
    if passphrase_file:
        try:
            return read_secret(passphrase_file)
        except OSError as e:
            raise StateError(f"cannot read passphrase file {passphrase_file}: {e.strerror}") from None
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if creds and (Path(creds) / "ca-passphrase").is_file():
        return read_secret(Path(creds) / "ca-passphrase")
    return None


def generate_key(kind: str) -> asyncssh.SSHKey:
    """A new private key of a CA key type (``ed25519``, ``ecdsa-p256``, ...)."""
    if kind not in CA_KEY_TYPES:
        raise BadKey(f"unknown key type {kind!r}; choose one of {', '.join(CA_KEY_TYPES)}")
    alg, size = CA_KEY_TYPES[kind]
    return asyncssh.generate_private_key(alg, key_size=size) if size else asyncssh.generate_private_key(alg)


def export_private(key: asyncssh.SSHKey, passphrase: bytes | None) -> bytes:
    """OpenSSH private key format; encrypted with ``passphrase`` when given."""
    if passphrase:
        return key.export_private_key("openssh", passphrase=passphrase, cipher_name="aes256-ctr")
    return key.export_private_key("openssh")


def load_private(path: Path, passphrase: bytes | None, what: str) -> asyncssh.SSHKey:
    """Load an OpenSSH private key file; clear errors for locked or wrong passphrases."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise StateError(f"cannot read {what} {path}: {e.strerror}") from None
    try:
        return asyncssh.import_private_key(data, passphrase)
    except (asyncssh.KeyImportError, asyncssh.KeyEncryptionError) as e:
        msg = str(e)
        if "Passphrase must be specified" in msg:
            raise BadKey(
                f"{what} is encrypted: give --passphrase-file, or the systemd credential 'ca-passphrase'"
            ) from None
        if "ncorrect passphrase" in msg or "Unable to decrypt" in msg:
            raise BadKey(f"cannot unlock {what}: wrong passphrase") from None
        raise BadKey(f"cannot load {what} {path}: {msg}") from None


def public_line(key: asyncssh.SSHKey, comment: str | None = None) -> str:
    line = key.export_public_key("openssh").decode().strip().split()
    return " ".join(line[:2] + ([comment] if comment else []))


@dataclass(frozen=True)
class CAKey:
    """One key of the keyring, public half only."""

    name: str
    algorithm: str
    public: str  # OpenSSH public key line
    fingerprint: str
    created: str
    encrypted: bool
    state: str  # "active" or "trusted"

    @property
    def blob(self) -> bytes:
        return base64.b64decode(self.public.split()[1])


KEYRING_FILE = "keyring.json"
CA_KEY_DIR = "ca-keys"


@dataclass(frozen=True)
class Keyring:
    """The CA keys of a state directory: which sign, and which hosts trust."""

    state_dir: Path
    keys: tuple[CAKey, ...]

    @property
    def active(self) -> CAKey:
        return next(k for k in self.keys if k.state == "active")

    @property
    def trusted(self) -> tuple[CAKey, ...]:
        return tuple(k for k in self.keys if k.state in ("active", "trusted"))

    @classmethod
    def load(cls, state_dir: str | os.PathLike) -> Keyring:
        """Read ``keyring.json``; raise :class:`StateError` if it is missing or inconsistent."""
        state_dir = Path(state_dir)
        path = state_dir / KEYRING_FILE
        try:
            raw = json.loads(path.read_text())
            keys = tuple(CAKey(**k) for k in raw["keys"])
        except FileNotFoundError:
            raise StateError(f"no CA in {state_dir}: run 'iast-ca init' first") from None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise StateError(f"{path} is unreadable or corrupt: {e}") from None
        if sum(k.state == "active" for k in keys) != 1:
            raise StateError(f"{path}: exactly one CA key must be active")
        return cls(state_dir, keys)

    def save(self) -> None:
        data = {"version": 1, "keys": [k.__dict__ for k in self.keys]}
        write_atomic(self.state_dir / KEYRING_FILE, json.dumps(data, indent=2) + "\n", 0o600)

    @staticmethod
    def new_entry(state_dir: Path, key: asyncssh.SSHKey, passphrase: bytes | None, state: str) -> CAKey:
        """Write a new CA private key file and return its keyring entry (not yet saved)."""
        alg = key.get_algorithm()
        blob = key.public_data
        created = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        name = f"ca-{created[:10]}-{hashlib.sha256(blob).hexdigest()[:12]}"
        keydir = state_dir / CA_KEY_DIR
        keydir.mkdir(mode=0o700, exist_ok=True)
        write_atomic(keydir / name, export_private(key, passphrase), 0o600)
        return CAKey(name, alg, public_line(key, f"iast-ca {name}"), fingerprint(blob), created, bool(passphrase), state)

    def load_active_key(self, passphrase: bytes | None) -> asyncssh.SSHKey:
        """Unlock the active CA private key and check it matches the keyring."""
        entry = self.active
        key = load_private(self.state_dir / CA_KEY_DIR / entry.name, passphrase, f"CA key {entry.name}")
        if key.public_data != entry.blob:
            raise StateError(f"CA key file {entry.name} does not match keyring.json")
        return key

    def trust_lines(self) -> list[str]:
        """The trusted CA public keys, one per line, for ``TrustedUserCAKeys``."""
        return [k.public for k in self.trusted]

    def known_hosts_lines(self, pattern: str = "*") -> list[str]:
        """``@cert-authority`` lines for a client's known_hosts."""
        return [f"@cert-authority {pattern} {k.public}" for k in self.trusted]
