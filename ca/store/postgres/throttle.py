"""The ``auth_throttle`` counters in PostgreSQL (logic: :mod:`ca.auth.throttle`)."""

from __future__ import annotations

from collections.abc import Sequence

from ca.store.postgres.connection import Connection


class ThrottleCounters:
    """Failed-login counters on one connection (shared by every replica: a lockout holds on all)."""

    def __init__(self, conn: Connection):
        self.conn = conn

    def get(self, key: str) -> tuple[int, float, float] | None:
        row = self.conn.one("SELECT failures, first_failure, blocked_until FROM auth_throttle WHERE key = %s",
                            (key,), what="read the throttle counters from")
        return tuple(row) if row else None

    def put(self, key: str, failures: int, first_failure: float, blocked_until: float) -> None:
        self.conn.execute(
            "INSERT INTO auth_throttle (key, failures, first_failure, blocked_until) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (key) DO UPDATE SET failures = excluded.failures,"
            " first_failure = excluded.first_failure, blocked_until = excluded.blocked_until",
            (key, failures, first_failure, blocked_until), what="write the throttle counters to")

    def clear(self, keys: Sequence[str]) -> int:
        if not keys:
            return 0
        cur = self.conn.execute("DELETE FROM auth_throttle WHERE key = ANY(%s)", (list(keys),),
                                what="write the throttle counters to")
        return cur.rowcount
