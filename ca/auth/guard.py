"""The one place for throttling, lockout and the audit of failed logins, for every authenticator.

The service runs every check an authenticator makes through
:meth:`Guard.check`: refused unchecked while locked (and that refusal is
audited but not counted again, else a lock would grow without bound);
otherwise checked, and a failure counted (docs/security.md rule 15),
audited as ``auth_failed`` and, when it locks an account or an address,
as ``lockout``. A connection that closes after offering keys none of which
was accepted gets one ``auth_failed`` event (:meth:`Guard.connection_failed`);
one that closes without any attempt at all (a port scan, a client that gave
up at the host-key prompt) is no failed login, and is a service log line,
not an audit event (docs/security.md rule 90).

Blocking (SQLite): runs on the service's authentication thread, on that
thread's own database connection.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from ca.auth.base import Guarding, Refusal
from ca.auth.throttle import Throttle
from ca.store import AuditLog

log = logging.getLogger("iast.ca")

T = TypeVar("T")


def _event(msg: str, **fields: Any) -> None:
    log.info(msg, extra={"fields": fields})


class Guard:
    """Throttle, lockout and failure audit around authentication checks."""

    def __init__(self, audit: AuditLog, throttle: Throttle, *, lockout: int,
                 clock: Callable[[], float] = time.time):
        self.audit = audit
        self.throttle = throttle
        self.lockout = lockout  # seconds, for the ``lockout`` event
        self.clock = clock
        self.aborted = 0  # connections closed before any authentication attempt, since start

    def check(self, rule: Guarding, user: str, address: str, verify: Callable[[float], T | Refusal]) -> T | None:
        """Run ``verify(now)`` unless locked; return what it returned, or None if refused."""
        now = self.clock()
        wait = self.throttle.blocked_for(user if rule.guessable else None, address, now)
        if wait > 0:
            # Refused unchecked; not counted again (that would let the lock grow without bound).
            # Checked while not locked only: a locked client must not keep the auth thread busy
            # with argon2. (Locks apply to unknown names too, so this tells nothing.)
            if rule.audit_failures:
                self.failure(rule, user, address, f"throttled for {wait:.0f}s more", count=False)
            return None
        outcome = verify(now)
        if isinstance(outcome, Refusal):
            if rule.audit_failures:
                if outcome.count and rule.count_address and not rule.guessable:
                    self.failure(rule, user, address, outcome.why, count=True, count_user=False)
                else:
                    self.failure(rule, user, address, outcome.why, count=outcome.count and rule.guessable)
            return None
        if rule.guessable and rule.clear_on_success:
            self.throttle.success(user)
        return outcome

    def failure(self, rule: Guarding, user: str, address: str, why: str, count: bool = True,
                count_user: bool = True) -> None:
        """Count (if ``count``; toward the account too if ``count_user``) and audit one failure;
        audit the locks it sets."""
        verdict = self.throttle.failure(user if count_user else None, address, self.clock()) if count else None
        self.audit.record("auth_failed", {"method": rule.method, "why": why,
                                          "failures": verdict.failures if verdict else None},
                          user=user, source=address)
        _event("authentication failed", user=user, source=address, method=rule.method, why=why)
        for key in verdict.locked if verdict else ():
            self.audit.record("lockout", {"key": key, "failures": verdict.failures[key],
                                          "seconds": self.lockout}, user=user, source=address)
            _event("locked out", key=key, user=user, source=address)

    def connection_failed(self, user: str | None, address: str, offered: list[str]) -> None:
        """A connection that closed without authenticating: one audit event for it when it offered
        keys; when it tried nothing, a log line with the running count instead (rule 90)."""
        if not offered:
            self.aborted += 1
            _event("connection closed before any authentication attempt", user=user, source=address,
                   aborted_total=self.aborted)
            return
        self.audit.record("auth_failed", {"method": "publickey", "why": "no accepted key",
                                          "offered_keys": offered[:10]}, user=user, source=address)
