"""The ``join_tokens`` table in PostgreSQL (logic: :mod:`ca.issuance.authority`, ``iast-ca host token``).

The triggers of ``schema.PG_JOIN_TOKENS`` refuse a second use, any other change and any delete.
"""

from __future__ import annotations

from ca.store.base import JoinTokenRow
from ca.store.postgres.connection import Connection
from ca.store.schema import JOIN_TOKEN_COLUMNS

_SELECT = f"SELECT {', '.join(JOIN_TOKEN_COLUMNS)} FROM join_tokens"
_WRITE = "write the join tokens to"


class JoinTokens:
    """One-time host join tokens on one connection."""

    def __init__(self, conn: Connection):
        self.conn = conn

    def get(self, token_id: str) -> JoinTokenRow | None:
        row = self.conn.one(f"{_SELECT} WHERE id = %s", (token_id,), what="read the join tokens from")
        return JoinTokenRow(*row) if row else None

    def insert(self, token_id: str, secret_sha256: str, host: str, role: str, created: int, expires_at: int,
               event_id: int) -> None:
        self.conn.execute(
            "INSERT INTO join_tokens (id, secret_sha256, host, role, created, expires_at, event_id)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s)",
            (token_id, secret_sha256, host, role, created, expires_at, event_id), what=_WRITE)

    def mark_used(self, token_id: str, used_at: int, serial: int) -> bool:
        cur = self.conn.execute(
            "UPDATE join_tokens SET used_at = %s, used_serial = %s WHERE id = %s AND used_at IS NULL",
            (used_at, serial, token_id), what=_WRITE)
        return cur.rowcount == 1
