"""The host CA key: signs host certificates, and nothing else.

A key of its own, never one of the user CA keys in the keyring
(:mod:`ca.keys.keyring`): a client that trusts it with ``@cert-authority``
trusts host certificates only, and a host that trusts the user CA
(``TrustedUserCAKeys``) does not thereby accept anything this key signed
(docs/security.md, "Host certificates").

    STATE/host-ca-key       the private key (OpenSSH format, 0600, encrypted with the CA passphrase)
    STATE/host-ca-key.pub   its public line, for ``iast-ca trust --hosts`` (no passphrase needed)

``iast-ca init`` creates it. A CA made before host certificates existed gets
one the first time it signs a host (:func:`open_host_ca` with ``create=True``);
the caller records that in the audit log (``host_ca_created``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ca.errors import StateError
from ca.files import write_atomic
from ca.keys.base import KeyBackend
from ca.keys.file import FileKeyBackend, export_private, generate_key, load_private, public_line
from ca.sshcert.certificates import fingerprint

HOST_CA_KEY = "host-ca-key"
HOST_CA_ALGORITHM = "ed25519"


@dataclass(frozen=True)
class HostCA:
    """The host CA key of a state directory, opened for signing."""

    backend: KeyBackend
    public: str  # 'TYPE BASE64 COMMENT'
    fingerprint: str
    created: bool  # made by this call (the caller audits it)


def host_ca_paths(state_dir: str | os.PathLike) -> tuple[Path, Path]:
    root = Path(state_dir)
    return root / HOST_CA_KEY, root / f"{HOST_CA_KEY}.pub"


def host_ca_public(state_dir: str | os.PathLike) -> str | None:
    """The host CA's public key line, or None when this CA has none yet."""
    _, pub = host_ca_paths(state_dir)
    try:
        line = pub.read_text().strip()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise StateError(f"cannot read {pub}: {e.strerror}") from None
    if len(line.split()) < 2:
        raise StateError(f"{pub} is not a public key line")
    return line


def create_host_ca(state_dir: str | os.PathLike, passphrase: bytes | None) -> str:
    """Write a new host CA key pair; refuse if one exists. Returns the public line."""
    key_path, pub_path = host_ca_paths(state_dir)
    if key_path.exists() or pub_path.exists():
        raise StateError(f"a host CA key already exists in {key_path.parent}")
    key = generate_key(HOST_CA_ALGORITHM)
    line = public_line(key, "iast-ca host CA")
    # The private half first: a .pub without its key would name a CA that cannot sign.
    write_atomic(key_path, export_private(key, passphrase), 0o600)
    write_atomic(pub_path, line + "\n", 0o644)
    return line


def open_host_ca(state_dir: str | os.PathLike, passphrase: bytes | None, *, create: bool = False) -> HostCA:
    """Unlock the host CA key (creating it first when missing and ``create``), checked against its .pub."""
    key_path, pub_path = host_ca_paths(state_dir)
    created = False
    if not key_path.exists():
        if not create:
            raise StateError(f"this CA has no host CA key ({key_path}); 'iast-ca host sign' creates it")
        create_host_ca(state_dir, passphrase)
        created = True
    key = load_private(key_path, passphrase, "host CA key")
    line = host_ca_public(state_dir)
    if line is None or key.public_data != _blob(line):
        raise StateError(f"{pub_path} does not match the host CA key {key_path}")
    return HostCA(FileKeyBackend(key), line, fingerprint(key.public_data), created)


def _blob(line: str) -> bytes:
    import base64
    import binascii

    try:
        return base64.b64decode(line.split()[1], validate=True)
    except (binascii.Error, IndexError, ValueError):
        return b""
