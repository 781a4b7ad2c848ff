"""The ``revocations`` and ``krl_state`` tables in SQLite (logic: :mod:`ca.access.revocation`)."""

from __future__ import annotations

import sqlite3

import sqlite_utils

from ca.store.schema import REVOCATION_COLUMNS


def is_revoked_on(conn: sqlite3.Connection, kind: str, value: str) -> bool:
    """Whether (kind, value) is revoked, on a connection (a database without the table revoked nothing)."""
    try:
        return conn.execute("SELECT 1 FROM revocations WHERE kind = ? AND value = ?",
                            (kind, value)).fetchone() is not None
    except sqlite3.OperationalError:  # no revocations table: nothing was ever revoked
        return False


class Revocations:
    """Revocations and the KRL state on one connection."""

    def __init__(self, conn: sqlite3.Connection, db: sqlite_utils.Database):
        self.conn = conn
        self.db = db

    def is_revoked(self, kind: str, value: str) -> bool:
        return is_revoked_on(self.conn, kind, value)

    def find(self, kind: str, value: str) -> int | None:
        row = self.conn.execute("SELECT id FROM revocations WHERE kind = ? AND value = ?", (kind, value)).fetchone()
        return row[0] if row else None

    def revoked_at(self, kind: str, value: str) -> int | None:
        row = self.conn.execute("SELECT created FROM revocations WHERE kind = ? AND value = ?",
                                (kind, value)).fetchone()
        return row[0] if row else None

    def all(self) -> list[tuple]:
        # A plain table read: sqlite-utils' rows_where, in the schema's column order.
        return [tuple(r[c] for c in REVOCATION_COLUMNS)
                for r in self.db["revocations"].rows_where(select=", ".join(REVOCATION_COLUMNS), order_by="id")]

    def insert(self, kind: str, value: str, *, serial: int | None, ca_fingerprint: str | None,
               public: str | None, reason: str, actor: str | None, event_id: int, created: int,
               if_new: bool = False) -> None:
        self.conn.execute(
            f"INSERT {'OR IGNORE ' if if_new else ''}INTO revocations (kind, value, serial, ca_fingerprint, public,"
            " reason, actor, event_id, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (kind, value, serial, ca_fingerprint, public, reason, actor, event_id, created))

    def krl_state(self) -> tuple[int, str, int] | None:
        return self.conn.execute("SELECT version, content_sha256, generated FROM krl_state WHERE id = 1").fetchone()

    def set_krl_state(self, version: int, content_sha256: str, generated: int) -> None:
        self.conn.execute(
            "INSERT INTO krl_state (id, version, content_sha256, generated) VALUES (1, ?, ?, ?)"
            " ON CONFLICT(id) DO UPDATE SET version = excluded.version,"
            " content_sha256 = excluded.content_sha256, generated = excluded.generated",
            (version, content_sha256, generated))

    def revoked_serial_certificates(self, cutoff: int) -> list[tuple[int, str, str]]:
        return self.conn.execute(
            "SELECT c.serial, c.ca_fingerprint, c.key_id FROM revocations r JOIN certificates c ON c.serial = r.serial"
            " WHERE r.kind = 'serial' AND c.valid_before > ?", (cutoff,)).fetchall()

    def revoked_user_certificates(self, cutoff: int) -> list[tuple[int, str, str]]:
        return self.conn.execute(
            "SELECT c.serial, c.ca_fingerprint, c.key_id FROM revocations r"
            " JOIN certificates c ON c.username = r.value"
            " WHERE r.kind = 'user' AND c.valid_after <= r.created AND c.valid_before > ?", (cutoff,)).fetchall()

    def revoked_key_id_certificates(self, cutoff: int) -> list[tuple[str, str]]:
        return self.conn.execute(
            "SELECT c.key_id, c.ca_fingerprint FROM revocations r JOIN certificates c ON c.key_id = r.value"
            " WHERE r.kind = 'key_id' AND c.valid_before > ?", (cutoff,)).fetchall()

    def revoked_keys(self) -> list[tuple[str, str | None]]:
        return self.conn.execute("SELECT value, public FROM revocations WHERE kind IN ('key', 'ca_key')").fetchall()
