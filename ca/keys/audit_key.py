"""The audit key (signs checkpoints; never the CA key): in a file, or moved into a PKCS#11 token.

``STATE/audit-key.pub`` always holds the current audit public key. A file key
is ``STATE/audit-key``; a token key is named by ``STATE/audit-key.uri`` (an
RFC 7512 URI, no PIN) and the file key is deleted once the move is recorded.
Every public key the audit key ever had stays as ``STATE/audit-key-<hash>.pub``,
so a checkpoint signed before a move still verifies (docs/security.md rule 38).
"""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

from ca.errors import StateError
from ca.files import write_atomic
from ca.keys.base import KeyBackend
from ca.keys.file import FileKeyBackend
from ca.keys.pkcs11 import Pkcs11KeyBackend, Pkcs11Settings, Pkcs11URI
from ca.sshcert.certificates import fingerprint

KEY_FILE = "audit-key"
PUB_FILE = "audit-key.pub"
URI_FILE = "audit-key.uri"


def _blob(line: str, path: Path) -> bytes:
    try:
        return base64.b64decode(line.split()[1], validate=True)
    except (IndexError, ValueError):
        raise StateError(f"{path} is not an OpenSSH public key line") from None


def current_public(state_dir: Path) -> bytes:
    path = state_dir / PUB_FILE
    try:
        return _blob(path.read_text(), path)
    except OSError as e:
        raise StateError(f"cannot read the audit public key {path}: {e.strerror}") from None


def known_publics(state_dir: Path) -> list[bytes]:
    """The current audit public key first, then every earlier one (for older checkpoints)."""
    out = [current_public(state_dir)]
    for path in sorted(state_dir.glob("audit-key-*.pub")):
        try:
            blob = _blob(path.read_text(), path)
        except (OSError, StateError):
            continue
        if blob not in out:
            out.append(blob)
    return out


def open_audit_signer(state_dir: Path, passphrase: bytes | None, settings: Pkcs11Settings) -> KeyBackend:
    """The audit key as a backend: the token key named by ``audit-key.uri``, else the key file."""
    uri_path = state_dir / URI_FILE
    if uri_path.exists():
        return Pkcs11KeyBackend(uri_path.read_text().strip(), settings=settings,
                                expected_blob=current_public(state_dir), what="audit key")
    backend = FileKeyBackend.from_file(state_dir / KEY_FILE, passphrase, "audit key")
    if backend.public_blob != current_public(state_dir):
        raise StateError(f"{state_dir / KEY_FILE} does not match {state_dir / PUB_FILE}")
    return backend


def _keep(state_dir: Path, blob: bytes, line: str) -> None:
    name = f"audit-key-{hashlib.sha256(blob).hexdigest()[:16]}.pub"
    if not (state_dir / name).exists():
        write_atomic(state_dir / name, line, 0o644)


def move_to_token(state_dir: Path, backend: Pkcs11KeyBackend, record) -> dict:
    """Make the token key ``backend`` the audit key: keep the old public key for old checkpoints,
    write the new public key and the URI, record ``audit_key_moved`` (via ``record(data)``), then
    delete the old key file. Nothing of the token's private key is written anywhere."""
    pub_path = state_dir / PUB_FILE
    old_line = pub_path.read_text()
    old = _blob(old_line, pub_path)
    new = backend.public_blob
    if new == old:
        raise StateError("that token key is the audit key already")
    _keep(state_dir, old, old_line)
    alg = backend.algorithm
    new_line = f"{alg} {base64.b64encode(new).decode()} iast-ca audit key\n"
    data = {"old_fingerprint": fingerprint(old), "new_fingerprint": fingerprint(new),
            "backend": "pkcs11", "uri": backend.uri.text()}
    record(data)  # first: an audit key that changes leaves its trace before it is used
    _keep(state_dir, new, new_line)
    write_atomic(state_dir / URI_FILE, backend.uri.text() + "\n", 0o644)
    write_atomic(pub_path, new_line, 0o644)
    key_file = state_dir / KEY_FILE
    if key_file.exists():
        os.unlink(key_file)
    return data


def parse_uri(text: str) -> Pkcs11URI:
    return Pkcs11URI.parse(text)
