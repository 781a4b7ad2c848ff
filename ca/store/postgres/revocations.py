"""The ``revocations`` and ``krl_state`` tables in PostgreSQL (logic: :mod:`ca.access.revocation`)."""

from __future__ import annotations

from ca.store.postgres.connection import Connection
from ca.store.schema import REVOCATION_COLUMNS

_READ = "read revocations from"
_WRITE = "write revocations to"


class Revocations:
    """Revocations and the KRL state on one connection."""

    def __init__(self, conn: Connection):
        self.conn = conn

    def is_revoked(self, kind: str, value: str) -> bool:
        return self.conn.one("SELECT 1 FROM revocations WHERE kind = %s AND value = %s", (kind, value),
                             what=_READ) is not None

    def find(self, kind: str, value: str) -> int | None:
        row = self.conn.one("SELECT id FROM revocations WHERE kind = %s AND value = %s", (kind, value), what=_READ)
        return row[0] if row else None

    def revoked_at(self, kind: str, value: str) -> int | None:
        row = self.conn.one("SELECT created FROM revocations WHERE kind = %s AND value = %s", (kind, value),
                            what=_READ)
        return row[0] if row else None

    def all(self) -> list[tuple]:
        return [tuple(r) for r in self.conn.all(
            f"SELECT {', '.join(REVOCATION_COLUMNS)} FROM revocations ORDER BY id", what=_READ)]

    def insert(self, kind: str, value: str, *, serial: int | None, ca_fingerprint: str | None,
               public: str | None, reason: str, actor: str | None, event_id: int, created: int,
               if_new: bool = False) -> None:
        sql = ("INSERT INTO revocations (kind, value, serial, ca_fingerprint, public, reason, actor, event_id, created)"
               " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)")
        if if_new:
            sql += " ON CONFLICT (kind, value) DO NOTHING"
        self.conn.execute(sql, (kind, value, serial, ca_fingerprint, public, reason, actor, event_id, created),
                          what=_WRITE)

    def krl_state(self) -> tuple[int, str, int] | None:
        row = self.conn.one("SELECT version, content_sha256, generated FROM krl_state WHERE id = 1", what=_READ)
        return tuple(row) if row else None

    def set_krl_state(self, version: int, content_sha256: str, generated: int) -> None:
        self.conn.execute(
            "INSERT INTO krl_state (id, version, content_sha256, generated) VALUES (1, %s, %s, %s)"
            " ON CONFLICT (id) DO UPDATE SET version = excluded.version,"
            " content_sha256 = excluded.content_sha256, generated = excluded.generated",
            (version, content_sha256, generated), what=_WRITE)

    def revoked_serial_certificates(self, cutoff: int) -> list[tuple[int, str, str]]:
        return [tuple(r) for r in self.conn.all(
            "SELECT c.serial, c.ca_fingerprint, c.key_id FROM revocations r JOIN certificates c ON c.serial = r.serial"
            " WHERE r.kind = 'serial' AND c.valid_before > %s", (cutoff,), what=_READ)]

    def revoked_user_certificates(self, cutoff: int) -> list[tuple[int, str, str]]:
        return [tuple(r) for r in self.conn.all(
            "SELECT c.serial, c.ca_fingerprint, c.key_id FROM revocations r"
            " JOIN certificates c ON c.username = r.value"
            " WHERE r.kind = 'user' AND c.valid_after <= r.created AND c.valid_before > %s", (cutoff,), what=_READ)]

    def revoked_key_id_certificates(self, cutoff: int) -> list[tuple[str, str]]:
        return [tuple(r) for r in self.conn.all(
            "SELECT c.key_id, c.ca_fingerprint FROM revocations r JOIN certificates c ON c.key_id = r.value"
            " WHERE r.kind = 'key_id' AND c.valid_before > %s", (cutoff,), what=_READ)]

    def revoked_keys(self) -> list[tuple[str, str | None]]:
        return [tuple(r) for r in self.conn.all(
            "SELECT value, public FROM revocations WHERE kind IN ('key', 'ca_key')", what=_READ)]
