"""The ``auth_throttle`` counters in SQLite (logic: :mod:`ca.auth.throttle`)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence


class ThrottleCounters:
    """Failed-login counters on one connection."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def get(self, key: str) -> tuple[int, float, float] | None:
        return self.conn.execute("SELECT failures, first_failure, blocked_until FROM auth_throttle WHERE key = ?",
                                 (key,)).fetchone()

    def put(self, key: str, failures: int, first_failure: float, blocked_until: float) -> None:
        self.conn.execute("INSERT OR REPLACE INTO auth_throttle (key, failures, first_failure, blocked_until)"
                          " VALUES (?, ?, ?, ?)", (key, failures, first_failure, blocked_until))

    def clear(self, keys: Sequence[str]) -> int:
        if not keys:
            return 0
        cur = self.conn.execute(f"DELETE FROM auth_throttle WHERE key IN ({','.join('?' * len(keys))})", list(keys))
        return cur.rowcount
