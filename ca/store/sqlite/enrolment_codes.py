"""The ``enrolment_codes`` table in SQLite (logic: :mod:`ca.auth.enrol`, ``iast-ca user invite``)."""

from __future__ import annotations

import sqlite3

from ca.store.base import EnrolmentCodeRow
from ca.store.schema import ENROLMENT_CODE_COLUMNS

_SELECT = f"SELECT {', '.join(ENROLMENT_CODE_COLUMNS)} FROM enrolment_codes"


class EnrolmentCodes:
    """One-time self-enrolment codes on one connection."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def get(self, code_id: str) -> EnrolmentCodeRow | None:
        row = self.conn.execute(f"{_SELECT} WHERE id = ?", (code_id,)).fetchone()
        return EnrolmentCodeRow(*row) if row else None

    def insert(self, code_id: str, secret_sha256: str, username: str, created: int, expires_at: int,
               event_id: int) -> None:
        self.conn.execute(
            "INSERT INTO enrolment_codes (id, secret_sha256, username, created, expires_at, event_id)"
            " VALUES (?, ?, ?, ?, ?, ?)", (code_id, secret_sha256, username, created, expires_at, event_id))

    def mark_used(self, code_id: str, used_at: int) -> bool:
        cur = self.conn.execute("UPDATE enrolment_codes SET used_at = ? WHERE id = ? AND used_at IS NULL",
                                (used_at, code_id))
        return cur.rowcount == 1
