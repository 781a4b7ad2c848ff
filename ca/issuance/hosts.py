"""One-time join tokens for host enrolment (``iast-ca host token``).

A token names one host and one host role, and works once before it expires
(at most :data:`~ca.auth.hosts.MAX_TOKEN_TTL`). Only the SHA-256 of its
secret is stored, with a ``host_token_created`` event, in one transaction;
the token itself is shown once, to the administrator. The host policy
judges the host and role when the token is made (a name outside it is
refused then, as ``host_denied``) and again when the token is used
(:meth:`ca.issuance.authority.Authority.issue_host`).
"""

from __future__ import annotations

from dataclasses import dataclass

from ca.auth.hosts import MAX_TOKEN_TTL, JoinToken, new_join_token
from ca.durations import format_duration
from ca.errors import AuditError, CAError, PolicyDenied, UsageError
from ca.policy import Policy
from ca.rules import host_account
from ca.store.base import Store


@dataclass(frozen=True)
class IssuedToken:
    token: JoinToken
    role: str
    expires_at: int
    event_id: int

    def as_json(self) -> dict:
        return {"token": self.token.text, "host": self.token.host, "token_id": self.token.token_id,
                "role": self.role, "expires_at": self.expires_at, "event_id": self.event_id}


def create_join_token(store: Store, policy: Policy, *, host: str, role: str | None, ttl: int, operator: str | None,
                      now: int, skew: int = 60) -> IssuedToken:
    """Make and record a join token; refuse (audited as ``host_denied``) a host or role the policy does not admit."""
    try:
        if type(ttl) is not int or not 0 < ttl <= MAX_TOKEN_TTL:
            raise UsageError(f"a join token lives at most {format_duration(MAX_TOKEN_TTL)}")
        decision = policy.decide_host(host, role, None, now, skew)  # the host and role must be admitted
    except CAError as e:
        if isinstance(e, AuditError):
            raise
        store.record("host_denied", {"code": e.code, "message": e.message, "host": str(host)[:64],
                                     "requested_role": role, "proof": "token-create", "operator": operator,
                                     "policy_sha256": policy.sha256},
                     user=f"host:{host}"[:70], role=(role or None))
        raise
    token = new_join_token(decision.host)
    expires_at = now + ttl
    with store.transaction() as tx:
        if tx.join_tokens.get(token.token_id) is not None:  # 64 random bits: never, but never twice either
            raise PolicyDenied("token id collision; try again")
        event_id = tx.append("host_token_created", {
            "host": decision.host, "token_id": token.token_id, "expires_at": expires_at, "ttl": ttl,
            "operator": operator, "policy_sha256": policy.sha256,
        }, user=host_account(decision.host), role=decision.role)
        tx.join_tokens.insert(token.token_id, token.secret_sha256, decision.host, decision.role, now, expires_at,
                              event_id)
    return IssuedToken(token, decision.role, expires_at, event_id)
