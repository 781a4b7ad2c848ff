"""The ``used_tokens`` table in SQLite: signed tokens already accepted, until they expire."""

from __future__ import annotations

import sqlite3


class UsedTokens:
    """Replay memory for OIDC and workload tokens on one connection."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def seen(self, token_key: str, now: int) -> bool:
        return self.conn.execute("SELECT 1 FROM used_tokens WHERE token_key = ? AND expires_at > ?",
                                 (token_key, now)).fetchone() is not None

    def use(self, token_key: str, issuer: str, expires_at: int, now: int) -> bool:
        self.conn.execute("DELETE FROM used_tokens WHERE expires_at <= ?", (now,))
        cur = self.conn.execute("INSERT OR IGNORE INTO used_tokens (token_key, issuer, expires_at) VALUES (?, ?, ?)",
                                (token_key, issuer, expires_at))
        return cur.rowcount == 1
