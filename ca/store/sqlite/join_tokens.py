"""The ``join_tokens`` table in SQLite (logic: :mod:`ca.issuance.authority`, ``iast-ca host token``)."""

from __future__ import annotations

import sqlite3

from ca.store.base import JoinTokenRow
from ca.store.schema import JOIN_TOKEN_COLUMNS

_SELECT = f"SELECT {', '.join(JOIN_TOKEN_COLUMNS)} FROM join_tokens"


class JoinTokens:
    """One-time host join tokens on one connection."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def get(self, token_id: str) -> JoinTokenRow | None:
        row = self.conn.execute(f"{_SELECT} WHERE id = ?", (token_id,)).fetchone()
        return JoinTokenRow(*row) if row else None

    def insert(self, token_id: str, secret_sha256: str, host: str, role: str, created: int, expires_at: int,
               event_id: int) -> None:
        self.conn.execute(
            "INSERT INTO join_tokens (id, secret_sha256, host, role, created, expires_at, event_id)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)", (token_id, secret_sha256, host, role, created, expires_at, event_id))

    def mark_used(self, token_id: str, used_at: int, serial: int) -> bool:
        cur = self.conn.execute("UPDATE join_tokens SET used_at = ?, used_serial = ? WHERE id = ? AND used_at IS NULL",
                                (used_at, serial, token_id))
        return cur.rowcount == 1
