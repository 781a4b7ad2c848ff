"""Brute-force throttling, per account name and per client address (docs/security.md rule 15).

Each failed password or one-time code adds to two counters: one for the
account name (known or not: an unknown name is throttled exactly like a
real one, so a lock says nothing about who exists) and one for the client
address. After each failure the account must wait before its next try
(1 s, 2 s, 4 s, ... up to ``max_backoff``); at its ``limit`` of failures
within ``window`` an account or an address is locked for ``lockout``. An
address gets no backoff short of its lock, so one person's typo behind a
shared NAT does not hold up the others there. A success clears the
account's counter (not the address's: one good login from a shared NAT
must not wipe another attacker's record). Counters live in the database,
so a restart does not forgive anyone.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass

from ca.config import ThrottleSettings
from ca.errors import AuditError
from ca.store.base import Store


@dataclass(frozen=True)
class Verdict:
    """The outcome of recording one failure."""

    locked: tuple[str, ...]  # the keys that this failure locked ('user:alice', 'addr:192.0.2.1')
    failures: dict[str, int]


class Throttle:
    """Failure counters in the store (their own table, not part of the hash chain)."""

    def __init__(self, store: Store, settings: ThrottleSettings = ThrottleSettings()):
        self.store = store
        self.settings = settings

    @staticmethod
    def keys(user: str | None, address: str | None) -> list[str]:
        out = []
        if user is not None:
            out.append(f"user:{user}")
        if address is not None:
            out.append(f"addr:{address}")
        return out

    def blocked_for(self, user: str | None, address: str | None, now: float) -> float:
        """Seconds until this account and address may try again (0 when they may now)."""
        wait = 0.0
        for key in self.keys(user, address):
            row = self.store.throttle.get(key)
            if row:
                wait = max(wait, row[2] - now)
        return max(wait, 0.0)

    def failure(self, user: str | None, address: str | None, now: float) -> Verdict:
        """Count one failure for the account and the address; lock those that reach their limit.

        Read and update in one write transaction, so concurrent failures all count.
        """
        s = self.settings
        locked, counts = [], {}
        with ExitStack() as stack:
            try:
                tx = stack.enter_context(self.store.transaction())
            except AuditError as e:
                raise AuditError(f"cannot count an authentication failure: {e.message}") from None
            for key in self.keys(user, address):
                limit = s.user_limit if key.startswith("user:") else s.address_limit
                row = tx.throttle.get(key)
                failures, first = (row[:2] if row and now - row[1] <= s.window else (0, now))
                failures += 1
                if failures >= limit:
                    blocked_until = now + s.lockout
                    if failures == limit:
                        locked.append(key)
                elif key.startswith("user:"):
                    blocked_until = now + min(2 ** (failures - 1), s.max_backoff)
                else:
                    # No backoff per address: one user's typo behind a shared NAT
                    # must not hold up everyone else there. Only the lock applies.
                    blocked_until = 0.0
                tx.throttle.put(key, failures, first, blocked_until)
                counts[key] = failures
        return Verdict(tuple(locked), counts)

    def success(self, user: str) -> None:
        """A good login clears the account's counter."""
        with self.store.transaction() as tx:
            tx.throttle.clear([f"user:{user}"])

    def unlock(self, user: str | None = None, address: str | None = None, *, log=None, actor: str | None = None) -> int:
        """Administrator's unlock: clear the counters, and (with ``log``, the store to audit in)
        record an ``unlocked`` event in the same transaction. Returns how many counters were cleared."""
        keys = self.keys(user, address)
        if not keys:
            return 0
        with (log or self.store).transaction() as tx:
            cleared = tx.throttle.clear(keys)
            if log is not None:
                tx.append("unlocked", {"keys": keys, "cleared": cleared, "actor": actor}, user=user, source=address)
            return cleared

