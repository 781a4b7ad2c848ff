"""The ``enrolment_codes`` table in PostgreSQL (logic: :mod:`ca.auth.enrol`, ``iast-ca user invite``).

The triggers of ``schema.PG_ENROLMENT_CODES`` refuse a second use, any other change and any delete.
"""

from __future__ import annotations

from ca.store.base import EnrolmentCodeRow
from ca.store.postgres.connection import Connection
from ca.store.schema import ENROLMENT_CODE_COLUMNS

_SELECT = f"SELECT {', '.join(ENROLMENT_CODE_COLUMNS)} FROM enrolment_codes"
_WRITE = "write the enrolment codes to"


class EnrolmentCodes:
    """One-time self-enrolment codes on one connection."""

    def __init__(self, conn: Connection):
        self.conn = conn

    def get(self, code_id: str) -> EnrolmentCodeRow | None:
        row = self.conn.one(f"{_SELECT} WHERE id = %s", (code_id,), what="read the enrolment codes from")
        return EnrolmentCodeRow(*row) if row else None

    def insert(self, code_id: str, secret_sha256: str, username: str, created: int, expires_at: int,
               event_id: int) -> None:
        self.conn.execute(
            "INSERT INTO enrolment_codes (id, secret_sha256, username, created, expires_at, event_id)"
            " VALUES (%s, %s, %s, %s, %s, %s)",
            (code_id, secret_sha256, username, created, expires_at, event_id), what=_WRITE)

    def mark_used(self, code_id: str, used_at: int) -> bool:
        cur = self.conn.execute("UPDATE enrolment_codes SET used_at = %s WHERE id = %s AND used_at IS NULL",
                                (used_at, code_id), what=_WRITE)
        return cur.rowcount == 1
