"""The CA keyring: which CA keys exist, which one signs, which ones hosts trust.

The keyring holds one or more CA keys, each for a *purpose* (``user``, the
default; ``host`` for a host CA). Per purpose exactly one user key (at most
one of any other purpose) is *active* (it signs). A key's state moves one way:

    next ──activate──► active ──(another is activated)──► trusted ──retire──► retired

``next``, ``active`` and ``trusted`` keys are all published by ``iast-ca
trust``, so hosts trust a new key before it signs and keep accepting the
certificates of the previous one until it is retired (docs/security.md,
"Rotation"). A ``retired`` key stays in the file (the KRL still names the
certificates it signed) but is trusted no more.

A key is held by a backend: ``file`` (OpenSSH format in ``ca-keys/``,
encrypted with the passphrase, :mod:`ca.keys.file`) or ``pkcs11`` (in a
token, named by an RFC 7512 URI, :mod:`ca.keys.pkcs11`; nothing of it is in
the state directory). :meth:`Keyring.open_signer` opens the active one as a
:class:`~ca.keys.base.KeyBackend`, checked against the public key recorded
here.
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

from ca.errors import StateError, UsageError
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
    state: str  # "next", "active", "trusted" or "retired" (see the module docstring)
    backend: str = "file"  # "file" (ca-keys/NAME) or "pkcs11" (uri)
    uri: str | None = None  # the RFC 7512 URI of a token key (never a PIN)
    purpose: str = "user"  # "user" CA, or "host" CA

    @property
    def blob(self) -> bytes:
        return base64.b64decode(self.public.split()[1])


KEYRING_FILE = "keyring.json"
CA_KEY_DIR = "ca-keys"
STATES = ("next", "active", "trusted", "retired")
TRUSTED_STATES = ("next", "active", "trusted")
PURPOSES = ("user", "host")
BACKENDS = ("file", "pkcs11")


def _now_text() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _entry_name(created: str, blob: bytes) -> str:
    return f"ca-{created[:10]}-{hashlib.sha256(blob).hexdigest()[:12]}"


@dataclass(frozen=True)
class Keyring:
    """The CA keys of a state directory: which sign, and which hosts trust."""

    state_dir: Path
    keys: tuple[CAKey, ...]

    @property
    def active(self) -> CAKey:
        """The user CA key that signs."""
        return self.active_for("user")

    def active_for(self, purpose: str) -> CAKey:
        for k in self.keys:
            if k.state == "active" and k.purpose == purpose:
                return k
        raise StateError(f"no active {purpose} CA key in {self.state_dir / KEYRING_FILE}")

    @property
    def trusted(self) -> tuple[CAKey, ...]:
        """The user CA keys hosts trust: next, active and trusted (never retired)."""
        return self.trusted_for("user")

    def trusted_for(self, purpose: str) -> tuple[CAKey, ...]:
        return tuple(k for k in self.keys if k.state in TRUSTED_STATES and k.purpose == purpose)

    def find(self, fp: str) -> CAKey:
        """The key with this fingerprint (``SHA256:...``, or the keyring name); UsageError if none."""
        for k in self.keys:
            if fp in (k.fingerprint, k.name):
                return k
        raise UsageError(f"no CA key {str(fp)[:80]!r} in the keyring ('iast-ca key list' shows them)")

    def replace(self, *entries: CAKey) -> Keyring:
        """A new keyring with these entries replacing the ones of the same fingerprint (or added)."""
        by_fp = {e.fingerprint: e for e in entries}
        keys = [by_fp.pop(k.fingerprint, k) for k in self.keys] + list(by_fp.values())
        ring = Keyring(self.state_dir, tuple(keys))
        ring.validate()
        return ring

    def validate(self) -> None:
        """Raise StateError unless: known states, purposes and backends; fingerprints unique;
        exactly one active user key; at most one active key of any other purpose."""
        where = self.state_dir / KEYRING_FILE
        fps = [k.fingerprint for k in self.keys]
        if len(set(fps)) != len(fps):
            raise StateError(f"{where}: a CA key is listed twice")
        for k in self.keys:
            if k.state not in STATES or k.purpose not in PURPOSES or k.backend not in BACKENDS:
                raise StateError(f"{where}: key {k.name}: unknown state, purpose or backend")
            if k.backend == "pkcs11" and not k.uri:
                raise StateError(f"{where}: key {k.name}: a pkcs11 key needs its uri")
        for purpose in PURPOSES:
            n = sum(k.state == "active" and k.purpose == purpose for k in self.keys)
            if n > 1 or (purpose == "user" and n != 1):
                raise StateError(f"{where}: exactly one {purpose} CA key must be active")

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
        ring = cls(state_dir, keys)
        ring.validate()
        return ring

    def save(self) -> None:
        """Write ``keyring.json`` atomically (temp file, fsync, rename; 0600)."""
        self.validate()
        data = {"version": 1, "keys": [k.__dict__ for k in self.keys]}
        write_atomic(self.state_dir / KEYRING_FILE, json.dumps(data, indent=2) + "\n", 0o600)

    @staticmethod
    def new_entry(state_dir: Path, key: asyncssh.SSHKey, passphrase: bytes | None, state: str,
                  purpose: str = "user") -> CAKey:
        """Write a new CA private key file and return its keyring entry (not yet saved)."""
        alg = key.get_algorithm()
        blob = key.public_data
        created = _now_text()
        name = _entry_name(created, blob)
        keydir = state_dir / CA_KEY_DIR
        keydir.mkdir(mode=0o700, exist_ok=True)
        write_atomic(keydir / name, export_private(key, passphrase), 0o600)
        return CAKey(name, alg, public_line(key, f"iast-ca {name}"), fingerprint(blob), created, bool(passphrase),
                     state, purpose=purpose)

    @staticmethod
    def token_entry(backend: KeyBackend, uri: str, state: str, purpose: str = "user") -> CAKey:
        """The keyring entry of a key held in a token: its public key and URI only."""
        blob = backend.public_blob
        created = _now_text()
        name = _entry_name(created, blob)
        public = f"{backend.algorithm} {base64.b64encode(blob).decode()} iast-ca {name}"
        return CAKey(name, backend.algorithm, public, fingerprint(blob), created, False, state,
                     backend="pkcs11", uri=uri, purpose=purpose)

    def load_active_key(self, passphrase: bytes | None) -> asyncssh.SSHKey:
        """Unlock the active CA private key file and check it matches the keyring."""
        return self._load_file_key(self.active, passphrase)

    def _load_file_key(self, entry: CAKey, passphrase: bytes | None) -> asyncssh.SSHKey:
        if entry.backend != "file":
            raise StateError(f"CA key {entry.name} is held in a token, not in a file")
        key = load_private(self.state_dir / CA_KEY_DIR / entry.name, passphrase, f"CA key {entry.name}")
        if key.public_data != entry.blob:
            raise StateError(f"CA key file {entry.name} does not match keyring.json")
        return key

    def open_backend(self, entry: CAKey, passphrase: bytes | None, pkcs11=None) -> KeyBackend:
        """One keyring key as a key backend, checked against its entry's public key.

        A file key is unlocked now; a token key (``pkcs11``: its
        :class:`~ca.keys.pkcs11.Pkcs11Settings`) opens its session on first
        use and checks the token's public key against ``entry.blob`` each
        time it (re)opens.
        """
        if entry.backend == "pkcs11":
            from ca.keys.pkcs11 import Pkcs11KeyBackend, Pkcs11Settings

            return Pkcs11KeyBackend(entry.uri, settings=pkcs11 or Pkcs11Settings(), expected_blob=entry.blob,
                                    what=f"CA key {entry.name}")
        return FileKeyBackend(self._load_file_key(entry, passphrase))

    def open_signer(self, passphrase: bytes | None, pkcs11=None, purpose: str = "user") -> KeyBackend:
        """The active CA key of ``purpose`` as a key backend (see :meth:`open_backend`)."""
        return self.open_backend(self.active_for(purpose), passphrase, pkcs11)

    def trust_lines(self) -> list[str]:
        """The trusted CA public keys, one per line, for ``TrustedUserCAKeys``."""
        return [k.public for k in self.trusted]

