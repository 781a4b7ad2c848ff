"""What the client library returns: a login's result, the certificates held, what status and logout found.

:func:`held_certificate` recognises an iast user certificate (its key ID is
``iast:USER:ROLE:SERIAL``) among the other keys in ssh-agent or on disk.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["KEY_ID_PREFIX", "HeldCertificate", "LoginResult", "LogoutResult", "Status", "held_certificate"]


KEY_ID_PREFIX = "iast:"  # the CA builds every key ID as iast:USER:ROLE:SERIAL (docs/security.md rule 9)


@dataclass(frozen=True)
class LoginResult:
    """What ``login`` got and where it put it."""

    key_id: str
    serial: int
    role: str
    principals: tuple[str, ...]
    valid_after: int
    valid_before: int
    force_command: str | None
    source_address: tuple[str, ...]
    extensions: tuple[str, ...]
    ca_fingerprint: str  # of the CA key that signed the certificate
    certificate: str
    where: str  # "agent" or "files"
    agent_socket: str | None = None
    key_path: Path | None = None
    cert_path: Path | None = None
    notes: tuple[str, ...] = ()  # things the user should know (a fallback, a saved pin)

    def seconds_left(self, now: float | None = None) -> int:
        return max(0, int(self.valid_before - (time.time() if now is None else now)))

    def as_json(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id, "serial": self.serial, "role": self.role, "principals": list(self.principals),
            "valid_after": self.valid_after, "valid_before": self.valid_before,
            "seconds_left": self.seconds_left(), "force_command": self.force_command,
            "source_address": list(self.source_address), "extensions": list(self.extensions),
            "ca_fingerprint": self.ca_fingerprint, "where": self.where, "agent_socket": self.agent_socket,
            "key_path": str(self.key_path) if self.key_path else None,
            "cert_path": str(self.cert_path) if self.cert_path else None,
            "certificate": self.certificate, "notes": list(self.notes),
        }


@dataclass(frozen=True)
class HeldCertificate:
    """An iast certificate found in ssh-agent or in the output directory."""

    where: str  # "agent" or "files"
    key_id: str
    serial: int
    role: str | None
    principals: tuple[str, ...]
    valid_after: int
    valid_before: int
    comment: str | None = None
    path: Path | None = None  # the certificate file, for "files"
    revoked: bool = False  # by the last KRL fetched from the CA ('iast-ssh status --refresh')
    user: str | None = None  # from the key ID
    ca_key: bytes = b""  # the blob of the CA key that signed it
    key_blob: bytes = b""  # the certified public key
    blob: bytes = b""  # the certificate

    @property
    def key_path(self) -> Path | None:
        """The private key beside a certificate file (``KEY-cert.pub`` -> ``KEY``)."""
        if self.path is None or not self.path.name.endswith("-cert.pub"):
            return None
        return self.path.with_name(self.path.name[:-len("-cert.pub")])

    def seconds_left(self, now: float | None = None) -> int:
        return max(0, int(self.valid_before - (time.time() if now is None else now)))

    def as_json(self, now: float | None = None) -> dict[str, Any]:
        left = self.seconds_left(now)
        return {
            "where": self.where, "key_id": self.key_id, "serial": self.serial, "role": self.role,
            "principals": list(self.principals), "valid_after": self.valid_after,
            "valid_before": self.valid_before, "seconds_left": left, "expired": left == 0,
            "revoked": self.revoked, "path": str(self.path) if self.path else None,
        }


@dataclass(frozen=True)
class Status:
    """What ``status`` found, and anything that kept it from looking (an unreachable agent)."""

    held: tuple[HeldCertificate, ...]
    notes: tuple[str, ...] = ()

    def as_json(self, now: float | None = None) -> dict[str, Any]:
        return {"certificates": [h.as_json(now) for h in self.held], "notes": list(self.notes)}


@dataclass(frozen=True)
class LogoutResult:
    removed_from_agent: tuple[str, ...]  # key IDs
    deleted_files: tuple[Path, ...]
    notes: tuple[str, ...] = ()

    def as_json(self) -> dict[str, Any]:
        return {"removed_from_agent": list(self.removed_from_agent),
                "deleted_files": [str(p) for p in self.deleted_files], "notes": list(self.notes)}


def _key_id_part(key_id: str, n: int) -> str | None:
    parts = key_id.split(":")
    return parts[n] if len(parts) == 4 and parts[0] + ":" == KEY_ID_PREFIX else None


def held_certificate(where: str, blob: bytes, comment: str | None = None,
                     path: Path | None = None, krls=()) -> HeldCertificate | None:
    """Describe a certificate blob if it is an iast user certificate, else None; ``revoked`` if one
    of ``krls`` (parsed KRLs) revokes it."""
    from ca.sshcert.certificates import USER_CERT, parse_certificate
    from ca.sshcert.wire import WireError

    try:
        cert = parse_certificate(blob)
    except (WireError, ValueError):
        return None
    if cert.cert_type != USER_CERT or not cert.key_id.startswith(KEY_ID_PREFIX):
        return None
    return HeldCertificate(where=where, key_id=cert.key_id, serial=cert.serial, role=_key_id_part(cert.key_id, 2),
                           principals=cert.principals, valid_after=cert.valid_after,
                           valid_before=cert.valid_before, comment=comment, path=path,
                           revoked=any(k.is_revoked(cert) for k in krls), user=_key_id_part(cert.key_id, 1),
                           ca_key=cert.signature_key, key_blob=cert.public_key_blob, blob=bytes(blob))
