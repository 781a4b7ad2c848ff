"""The ``used_tokens`` table in PostgreSQL: signed tokens already accepted, until they expire.

One table shared by every replica, so a token accepted by one replica is a replay on all of
them (docs/security.md, the SSO and workload token rules).
"""

from __future__ import annotations

from ca.store.postgres.connection import Connection

_WRITE = "record a used token in"


class UsedTokens:
    """Replay memory for OIDC and workload tokens on one connection."""

    def __init__(self, conn: Connection):
        self.conn = conn

    def seen(self, token_key: str, now: int) -> bool:
        return self.conn.one("SELECT 1 FROM used_tokens WHERE token_key = %s AND expires_at > %s",
                             (token_key, now), what="read the used tokens from") is not None

    def use(self, token_key: str, issuer: str, expires_at: int, now: int) -> bool:
        # Called inside the chain-locked transaction (ca.store.base): of two replicas using one
        # token, the second waits for the lock and then finds the row (ON CONFLICT: 0 rows).
        self.conn.execute("DELETE FROM used_tokens WHERE expires_at <= %s", (now,), what=_WRITE)
        cur = self.conn.execute("INSERT INTO used_tokens (token_key, issuer, expires_at) VALUES (%s, %s, %s)"
                                " ON CONFLICT (token_key) DO NOTHING", (token_key, issuer, expires_at), what=_WRITE)
        return cur.rowcount == 1
