"""The file key backend: a CA key held in an OpenSSH private key file.

Keys are written in OpenSSH format, encrypted (bcrypt KDF, aes256-ctr) when
a passphrase is given, and unlocked into memory by :func:`load_private`.
:class:`FileKeyBackend` signs with the unlocked key through asyncssh.
"""

from __future__ import annotations

from pathlib import Path

import asyncssh

from ca.errors import BadKey, SigningError, StateError
from ca.keys.base import KeyBackend
from ca.sshcert.build import signature_algorithm

# CLI name -> (asyncssh algorithm, key size)
CA_KEY_TYPES = {
    "ed25519": ("ssh-ed25519", None),
    "ecdsa-p256": ("ecdsa-sha2-nistp256", None),
    "ecdsa-p384": ("ecdsa-sha2-nistp384", None),
    "rsa-4096": ("ssh-rsa", 4096),
}


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


class FileKeyBackend(KeyBackend):
    """A CA key unlocked from an OpenSSH private key file (or any asyncssh private key)."""

    def __init__(self, key: asyncssh.SSHKey):
        self.key = key
        self._blob = key.public_data
        self._algorithm = key.get_algorithm()
        try:
            self._sig_alg = signature_algorithm(self._algorithm)
        except ValueError as e:
            raise BadKey(str(e)) from None
        self._sig_alg_bytes = self._sig_alg.encode("ascii")

    @classmethod
    def from_file(cls, path: Path, passphrase: bytes | None, what: str) -> FileKeyBackend:
        """Unlock the key file at ``path`` (see :func:`load_private`)."""
        return cls(load_private(path, passphrase, what))

    @property
    def public_blob(self) -> bytes:
        return self._blob

    @property
    def algorithm(self) -> str:
        return self._algorithm

    @property
    def signature_algorithm(self) -> str:
        return self._sig_alg

    def sign(self, data: bytes) -> bytes:
        try:
            return self.key.sign(data, self._sig_alg_bytes)
        except (ValueError, TypeError, asyncssh.Error) as e:
            raise SigningError(f"CA key {self.fingerprint} cannot sign: {e}".replace("\n", " ")) from None
