"""Services with their platform's signed token (GitHub Actions, GitLab CI, Kubernetes): ``sign --token -``.

A ``[workload.NAME]`` section names an issuer, the audience its tokens must
carry, and claims that must each equal the token's exactly (which
repository, which branch: ``claims = { repository = "org/app", ref =
"refs/heads/main" }``). A token that passes gets an :class:`~ca.models.Identity`
for the section's ``user``, in the group ``workload:NAME``, that is good for
the one request it came with (``single_request``), with the section's short
default ttl (5 minutes unless the role's ttl is shorter).

How the SSH connection authenticates (docs/security.md rule 14 and the
workload rule at the end): the token does not fit into SSH authentication
(OpenSSH caps a keyboard-interactive answer at 1024 bytes; most JWTs are
longer), so it is the first line of the request's stdin. The connection
itself is accepted by SSH ``none`` for the one reserved user name
:data:`WORKLOAD_USER`, and only when a ``[workload.*]`` section exists; such
a connection may run exactly one command, ``sign --token -``, which this
token authenticates (anything else is refused, audited and counted against
the address). Every other name goes through authentication as before.

The checks are :func:`ca.auth.tokens.verify_token`'s (the issuer's JWKS over
HTTPS, the algorithm allow-list, ``iss`` exact, ``aud`` = the section's
audience, ``exp``/``iat``/``nbf``), then the claims, then replay (the
store's ``used_tokens``, shared by replicas). A refused token is signed, so
not guessable: it counts toward the source address's limit only
(:class:`~ca.auth.base.Guarding` ``count_address``), and its reason is audited.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import jwt

from ca.auth.base import Guarding, Refusal, RequestAuthenticator
from ca.auth.idp_http import IssuerClient
from ca.auth.tokens import MAX_TOKEN, TokenRefused, replay_key, token_hash, verify_token
from ca.config import WorkloadIssuer
from ca.errors import CAError
from ca.models import Identity
from ca.rules import WORKLOAD_USER
from ca.store import Store

__all__ = ["WORKLOAD_USER", "WorkloadAuthenticator"]


class WorkloadAuthenticator(RequestAuthenticator):
    """Every ``[workload.NAME]`` section: a token -> the identity of the section it matches."""

    guarding = Guarding("workload", guessable=False, count_address=True)

    def __init__(self, issuers: Sequence[WorkloadIssuer], store: Store, *, skew: int,
                 clock: Callable[[], float] = time.time):
        self.issuers = tuple(issuers)
        self.store = store
        self.skew = skew
        self.clock = clock
        # One HTTPS client (discovery and JWKS cache) per issuer, shared by its sections.
        self.clients: dict[tuple[str, str | None], IssuerClient] = {}
        for w in self.issuers:
            key = (w.issuer, str(w.ca_file) if w.ca_file else None)
            if key not in self.clients:
                self.clients[key] = IssuerClient(w.issuer, ca_file=w.ca_file, timeout=w.timeout, clock=clock)

    def _client(self, w: WorkloadIssuer) -> IssuerClient:
        return self.clients[(w.issuer, str(w.ca_file) if w.ca_file else None)]

    async def check(self, credential: str, address: str) -> Callable[[float], Identity | Refusal]:
        token = credential.strip()
        refused = self._refusal(token)
        if refused is not None:
            return lambda now: refused
        unverified_iss = jwt.decode(token, options={"verify_signature": False}).get("iss")
        candidates = [w for w in self.issuers if w.issuer == unverified_iss]
        if not candidates:
            why = f"workload: token refused: unknown_issuer: {str(unverified_iss)[:80]!r} is no [workload.*] issuer"
            return lambda now: Refusal(why)
        reasons: list[str] = []
        for w in candidates:
            try:
                claims = await verify_token(token, self._client(w), w.audience, now=self.clock(), skew=self.skew)
            except TokenRefused as e:
                reasons.append(f"{w.name}: {e}")
                continue
            except CAError as e:  # the issuer is down: not the token's fault, not counted
                why = f"workload: identity provider unavailable: {e.message}"
                return lambda now: Refusal(why, count=False)
            mismatch = _mismatch(w, claims)
            if mismatch:
                reasons.append(f"{w.name}: claim_mismatch: {mismatch}")
                continue
            return lambda now, w=w, claims=claims: self._accept(w, claims, token, address, now)
        why = "workload: token refused: " + "; ".join(reasons)[:400]
        return lambda now: Refusal(why)

    @staticmethod
    def _refusal(token: str) -> Refusal | None:
        if not token or len(token) > MAX_TOKEN:
            return Refusal(f"workload: token refused: malformed: no token of 1..{MAX_TOKEN} characters "
                           "on the first line of stdin")
        try:
            payload = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as e:
            return Refusal(f"workload: token refused: malformed: {str(e)[:100]}")
        if not isinstance(payload, dict):
            return Refusal("workload: token refused: malformed: the claims are not an object")
        return None

    def _accept(self, w: WorkloadIssuer, claims: dict[str, Any], token: str, address: str,
                now: float) -> Identity | Refusal:
        """Blocking (the store): remember the token, then the identity."""
        with self.store.transaction() as tx:
            fresh = tx.tokens.use(replay_key(w.issuer, claims, token), w.issuer,
                                  int(claims["exp"]) + self.skew, int(now))
        if not fresh:
            return Refusal(f"workload: token refused: replay: {w.name}: this token was used before")
        iat = claims.get("iat")
        return Identity(
            user=w.user, auth_methods=("workload",), mfa=False, source_address=address,
            groups=(f"workload:{w.name}",), issuer=w.issuer, subject=str(claims["sub"])[:256],
            auth_time=int(iat) if isinstance(iat, (int, float)) and not isinstance(iat, bool) else None,
            token_hash=token_hash(token), single_request=True, default_ttl=w.ttl,
        )

    async def aclose(self) -> None:
        for c in self.clients.values():
            await c.aclose()


def _mismatch(w: WorkloadIssuer, claims: dict[str, Any]) -> str | None:
    """The first configured claim the token does not have exactly, described; None if all match."""
    for name, want in w.claims:
        got = claims.get(name)
        if got != want:  # exact: a string equal to the configured one, nothing else (no prefixes)
            shown = repr(got)[:80] if got is not None else "missing"
            return f"{name} is {shown}, not {want!r}"
    return None
