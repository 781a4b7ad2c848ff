"""The CA keyring: which CA keys exist, which one signs, which ones hosts trust.

The keyring holds one or more CA keys; exactly one is *active* (it signs),
and every key still *trusted* is published by ``iast-ca trust`` so that hosts
keep accepting certificates from a key being rotated out. Private keys are
stored in OpenSSH format, encrypted (bcrypt KDF, aes256-ctr) when a
passphrase is given.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import asyncssh

from ca.errors import BadKey, StateError
from ca.files import read_secret, write_atomic
from ca.sshcert.certificates import fingerprint

# CLI name -> (asyncssh algorithm, key size)
CA_KEY_TYPES = {
    "ed25519": ("ssh-ed25519", None),
    "ecdsa-p256": ("ecdsa-sha2-nistp256", None),
    "ecdsa-p384": ("ecdsa-sha2-nistp384", None),
    "rsa-4096": ("ssh-rsa", 4096),
}


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
