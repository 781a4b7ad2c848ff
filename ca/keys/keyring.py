"""The CA keyring: which CA keys exist, which one signs, which ones hosts trust.

The keyring holds one or more CA keys; exactly one is *active* (it signs),
and every key still *trusted* is published by ``iast-ca trust`` so that hosts
keep accepting certificates from a key being rotated out. Private keys are
stored in OpenSSH format, encrypted (bcrypt KDF, aes256-ctr) when a
passphrase is given (:mod:`ca.keys.file`); :meth:`Keyring.open_signer`
unlocks the active one as a :class:`~ca.keys.base.KeyBackend`.
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

from ca.errors import StateError
from ca.files import read_secret, write_atomic
from ca.keys.base import KeyBackend
from ca.keys.file import (  # noqa: F401  (CA_KEY_TYPES, generate_key, load_private: still imported from here)
    CA_KEY_TYPES,
    FileKeyBackend,
    export_private,
    generate_key,
    load_private,
    public_line,
)
from ca.sshcert.certificates import fingerprint


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

    def open_signer(self, passphrase: bytes | None) -> KeyBackend:
        """The active CA key as a key backend, checked against the keyring.

        Every keyring key is a file today (:class:`~ca.keys.file.FileKeyBackend`);
        a key held in a token would be opened here from its entry, and checked
        against ``entry.blob`` the same way.
        """
        return FileKeyBackend(self.load_active_key(passphrase))

    def trust_lines(self) -> list[str]:
        """The trusted CA public keys, one per line, for ``TrustedUserCAKeys``."""
        return [k.public for k in self.trusted]

    def known_hosts_lines(self, pattern: str = "*") -> list[str]:
        """``@cert-authority`` lines for a client's known_hosts."""
        return [f"@cert-authority {pattern} {k.public}" for k in self.trusted]
