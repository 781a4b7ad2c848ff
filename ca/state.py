"""The state directory: where the CA keeps its keys and its audit database.

    STATE/                 mode 0700
      keyring.json         which CA keys exist, which one signs (written last by init)
      ca-keys/NAME         CA private keys held in files (OpenSSH format, 0600, encrypted with a
                           passphrase); a key held in a PKCS#11 token has no file, only its URI
      audit-key, .pub      signs audit checkpoints; never the CA key
      host-key, .pub       the CA service's own SSH host key (clients pin it)
      host-ca-key, .pub    signs host certificates; never a user CA key (ca.keys.hostca)
      ca.db                the audit database
      policy.toml          the policy, unless the config points elsewhere
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import asyncssh

from ca.config import Config
from ca.errors import StateError
from ca.files import write_atomic
from ca.keys.hostca import create_host_ca
from ca.keys.keyring import (
    KEYRING_FILE,
    Keyring,
    export_private,
    generate_key,
    load_private,
    public_line,
)
from ca.sshcert.certificates import fingerprint
from ca.store import open_store


@dataclass(frozen=True)
class StatePaths:
    root: Path

    @property
    def keyring(self) -> Path:
        return self.root / KEYRING_FILE

    @property
    def audit_key(self) -> Path:
        return self.root / "audit-key"

    @property
    def audit_pub(self) -> Path:
        return self.root / "audit-key.pub"

    @property
    def host_key(self) -> Path:
        return self.root / "host-key"

    @property
    def db(self) -> Path:
        return self.root / "ca.db"


def starter_policy() -> bytes:
    """The starter policy ``iast-ca init`` installs (``ca/defaults/policy.toml``)."""
    return resources.files("ca").joinpath("defaults/policy.toml").read_bytes()


def init_state(cfg: Config, key_type: str, passphrase: bytes | None) -> dict:
    """Create a new CA in ``cfg.state_dir``; refuse if one is already there.

    Returns a summary (fingerprints and paths) for the caller to show.
    """
    paths = StatePaths(cfg.state_dir)
    for existing in (paths.keyring,) + (() if cfg.database else (paths.db,)):
        if existing.exists():
            raise StateError(f"a CA already exists in {paths.root} ({existing.name}); refusing to overwrite it")
    log = open_store(cfg.database) if cfg.database else None  # a database that is down fails here, first
    if log is not None and log.head()[0] != 0:
        log.close()
        raise StateError(f"the database {log.path} already holds a CA's audit log; refusing to overwrite it")
    ca_key = generate_key(key_type)  # validates key_type before anything is written
    try:
        paths.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(paths.root, 0o700)
    except OSError as e:
        raise StateError(f"cannot create state directory {paths.root}: {e.strerror}") from None

    entry = Keyring.new_entry(paths.root, ca_key, passphrase, "active")
    audit_key = generate_key("ed25519")
    write_atomic(paths.audit_key, export_private(audit_key, passphrase), 0o600)
    write_atomic(paths.audit_pub, public_line(audit_key, "iast-ca audit key") + "\n", 0o644)
    host_ca_line = create_host_ca(paths.root, passphrase)
    host_key = generate_key("ed25519")
    write_atomic(paths.host_key, export_private(host_key, None), 0o600)
    write_atomic(paths.host_key.with_suffix(".pub"), public_line(host_key, "iast-ca host key") + "\n", 0o644)

    installed_policy = False
    if not cfg.policy_path.exists() and cfg.policy_path == paths.root / "policy.toml":
        write_atomic(cfg.policy_path, starter_policy(), 0o644)
        installed_policy = True

    summary = {
        "state_dir": str(paths.root),
        "ca_key": entry.name,
        "ca_algorithm": entry.algorithm,
        "ca_fingerprint": entry.fingerprint,
        "ca_encrypted": entry.encrypted,
        "audit_key_fingerprint": fingerprint(audit_key.public_data),
        "host_key_fingerprint": fingerprint(host_key.public_data),
        "host_ca_fingerprint": fingerprint(_blob_of(host_ca_line)),
        "policy": str(cfg.policy_path),
        "policy_installed": installed_policy,
    }
    log = log or open_store(paths.db)
    try:
        log.record("ca_init", {k: v for k, v in summary.items() if k != "state_dir"}, user=os_user())
        log.record_ca_keys([entry.fingerprint])  # replicas must serve with this keyring (shared databases)
    finally:
        log.close()
    Keyring(paths.root, (entry,)).save()  # last: its presence marks a complete CA
    return summary


def _blob_of(line: str) -> bytes:
    import base64

    return base64.b64decode(line.split()[1])


def load_audit_key(paths: StatePaths, passphrase: bytes | None) -> asyncssh.SSHKey:
    return load_private(paths.audit_key, passphrase, "audit key")


def os_user() -> str:
    """Who ran an administrative command, as far as the OS knows (for the audit log)."""
    if os.environ.get("SUDO_USER"):
        return os.environ["SUDO_USER"]
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except (KeyError, ImportError):
        return str(os.getuid())
