"""The issuance path: authenticate -> decide -> sign -> audit -> reply.

:meth:`Authority.issue` is the one choke point every certificate request
goes through, from the offline ``iast-ca sign`` and from the SSH service
alike. Every outcome is audited: an issued certificate is returned only
after the transaction holding its ``issued`` event has committed (docs/security.md
rule 10); a denial or a failure is committed as a ``denied`` or ``failed``
event before the error is raised to the caller.

A role with an ``approval`` table is signed only with a ``consume`` hook
(see :mod:`ca.access.approvals`): it runs inside the issuing transaction, before
signing, and marks the approved request used, so one approved request
gives at most one certificate however many logins race for it.

The authority owns both hooks; callers just call ``issue(identity, request)``.
What it does for a request is a property of the authority, decided once, in
the composition root (:func:`ca.app.open_ca`): an ``online`` authority (the
SSH service) re-checks the login inside the issuing transaction
(:func:`still_allowed`) and takes every request through the approvals
(``prepare`` + ``consumer``); an offline one (``iast-ca sign``, an operator
acting on a user's behalf) does neither, and uses an access request only when
one is named (``--request ID``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ca.access.approvals import Approvals
from ca.errors import (
    AuditError,
    AuthenticationFailed,
    CAError,
    PolicyDenied,
    SigningError,
)
from ca.issuance.signer import Signer, make_key_id
from ca.models import Decision, Identity, Issued, SignRequest
from ca.policy import Policy
from ca.rules import is_user_name
from ca.sshcert.userkey import UserKey, parse_user_key
from ca.store import AuditLog, Transaction

MAX_REASON_IN_AUDIT = 500


class Authority:
    """Decides, signs and audits certificate requests for one CA."""

    def __init__(
        self,
        *,
        policy: Policy,
        signer: Signer,
        ca_fingerprint: str,
        audit: AuditLog,
        clock_skew: int = 60,
        min_rsa_bits: int = 3072,
        clock: Callable[[], float] = time.time,
        approvals: Approvals | None = None,
        online: bool = False,
    ):
        self.policy = policy
        self.signer = signer
        self.ca_fingerprint = ca_fingerprint
        self.audit = audit
        self.clock_skew = clock_skew
        self.min_rsa_bits = min_rsa_bits
        self.clock = clock
        # Access requests, on the audit log's own connection: consuming one is part of issuing.
        self.approvals = approvals
        # The service's authority: every request is a login's, so inside every issuing
        # transaction the user and the key they logged in with are re-checked
        # (still_allowed), and every request goes through the approvals.
        self.online = online

    def close(self) -> None:
        self.audit.close()

    def issue(self, identity: Identity, request: SignRequest, *,
              consume: Callable[[Transaction, Decision], dict[str, Any]] | None = None,
              allow_unenrolled: bool = False) -> Issued:
        """Decide, sign and audit one request; return the certificate or raise.

        A role with ``approval`` needs ``consume``; without one, the
        authority's approvals make it (see the module docstring). Called inside the
        issuing transaction before signing, it checks and uses up the
        approved request and returns fields merged into the ``issued``
        event; if it raises, nothing it wrote is kept and the refusal is
        audited like any other. ``consume`` is not called for other roles.

        Offline, ``allow_unenrolled`` lets an operator sign for a name the
        user store does not hold (recorded in the ``issued`` event); a
        disabled or revoked user is refused whatever it says
        (docs/security.md, "Revocations stick").

        Raises :class:`~ca.errors.PolicyDenied`, :class:`~ca.errors.BadKey`,
        :class:`~ca.errors.AuthenticationFailed` (after recording a
        ``denied`` event), :class:`~ca.errors.SigningError` (after recording
        a ``failed`` event) or :class:`~ca.errors.AuditError` (nothing
        could be recorded, and no certificate is returned).
        """
        now = int(self.clock())
        policy = self.policy  # one policy for the whole request, even if a reload swaps it
        if consume is None and self.approvals is not None and (self.online or request.request_id is not None):
            # A role with approval is signed only through an approved request, used up in the
            # issuing transaction itself (the hook is called only for such roles).
            request = self.approvals.prepare(identity.user, request, policy)
            consume = self.approvals.consumer(identity.user, request.request_id, policy)
        user_key: UserKey | None = None
        try:
            if not is_user_name(identity.user):
                raise PolicyDenied(f"{identity.user[:64]!r} is not a valid user name")
            user_key = parse_user_key(request.public_key, self.min_rsa_bits)
            decision = policy.decide(identity, request, now, self.clock_skew)
            # decide() stays pure; the approval an approval role needs is checked here.
            approval = policy.roles[decision.role].approval
            if approval is not None and consume is None:
                raise PolicyDenied(
                    f"role {decision.role} needs an approved request: iast-ssh request --role {decision.role} "
                    f"--reason TEXT, then use it with --request ID once approved")
            if approval is None and request.request_id is not None:
                raise PolicyDenied(f"role {decision.role} takes no access requests (--request {request.request_id})")
        except CAError as e:
            if isinstance(e, AuditError):
                raise
            self.refuse(identity, request, e, user_key=user_key, policy=policy)
            raise

        try:
            with self.audit.transaction() as tx:
                # Checked under the write lock, so a revocation or a disable that commits
                # first is never missed by a certificate that commits after it.
                if tx.is_revoked("key", user_key.fingerprint):
                    raise PolicyDenied(f"key {user_key.fingerprint} is revoked")
                if tx.is_revoked("ca_key", self.ca_fingerprint):
                    raise SigningError(f"the active CA key {self.ca_fingerprint} is revoked: rotate it")
                if self.online:
                    still_allowed(tx, identity)
                else:
                    offline_allowed(tx, identity.user, allow_unenrolled)
                extra = consume(tx, decision) if approval is not None and consume is not None else {}
                serial = tx.next_serial()
                key_id = make_key_id(decision.user, decision.role, serial)
                line, cert = self.signer.sign(decision, user_key, serial, key_id)
                data = {
                    "principals": list(decision.principals),
                    "valid_after": decision.valid_after,
                    "valid_before": decision.valid_before,
                    "ttl": decision.ttl,
                    "force_command": decision.force_command,
                    "source_address": list(decision.source_address),
                    "extensions": sorted(cert.extensions),
                    "reason": decision.reason,
                    "key_type": user_key.algorithm,
                    "key_fingerprint": user_key.fingerprint,
                    "cert_type": cert.cert_type_name,
                    "auth_methods": list(identity.auth_methods),
                    "mfa": identity.mfa,
                    "operator": identity.operator,
                    "policy_sha256": decision.policy_sha256,
                    "ca_fingerprint": self.ca_fingerprint,
                    "request_id": request.request_id,
                    "login_key": identity.login_key,
                    **({"allow_unenrolled": True} if allow_unenrolled and not self.online else {}),
                    **extra,
                }
                event_id = tx.append(
                    "issued", data, user=decision.user, role=decision.role, serial=serial,
                    key_id=key_id, source=identity.source_address,
                )
                tx.add_certificate(
                    serial=serial, key_id=key_id, user=decision.user, role=decision.role,
                    key_fingerprint=user_key.fingerprint, ca_fingerprint=self.ca_fingerprint,
                    valid_after=decision.valid_after, valid_before=decision.valid_before, event_id=event_id,
                )
        except SigningError as e:
            self.refuse(identity, request, e, user_key=user_key, policy=policy, kind="failed")
            raise
        except CAError as e:  # refused by ``consume``: its writes were rolled back with the transaction
            if isinstance(e, AuditError):
                raise
            self.refuse(identity, request, e, user_key=user_key, policy=policy)
            raise
        # Only here, after COMMIT, does the certificate exist for anyone else.
        return Issued(
            certificate=line, serial=serial, key_id=key_id, decision=decision,
            ca_fingerprint=self.ca_fingerprint, key_type=user_key.algorithm,
            key_fingerprint=user_key.fingerprint, event_id=event_id,
        )

    def refuse(self, identity: Identity, request: SignRequest, error: CAError, *, user_key: UserKey | None = None,
               policy: Policy | None = None, kind: str = "denied") -> int:
        """Record a refused request (``denied``) or a failed one (``failed``); return the event id.

        :meth:`issue` calls this for its own refusals; the service calls it
        for refusals decided before the policy is reached (a disabled user,
        a one-time code that did not verify).
        """
        policy = policy or self.policy
        data: dict[str, Any] = {
            "code": error.code,
            "message": error.message,
            "requested_role": _shown(request.role, 64),
            "requested_ttl": request.ttl,
            "reason": _shown(request.reason, MAX_REASON_IN_AUDIT),
            "key_fingerprint": user_key.fingerprint if user_key else None,
            "key_type": user_key.algorithm if user_key else None,
            "auth_methods": list(identity.auth_methods),
            "mfa": identity.mfa,
            "operator": identity.operator,
            "policy_sha256": policy.sha256,
            "request_id": request.request_id,
        }
        return self.audit.record(kind, data, user=_shown(identity.user, 64), role=_shown(request.role, 64),
                                 source=identity.source_address)


def still_allowed(tx: Transaction, identity: Identity) -> None:
    """The gate of an online authority, inside the issuing transaction: the user is still enabled,
    and the key they logged in with is still enrolled and not revoked (a disable, a key-remove or
    a revoke that commits first stops even an open connection)."""
    if not tx.user_enabled(identity.user):  # None (unknown) or False (disabled)
        raise AuthenticationFailed(f"user {identity.user} is disabled")
    if identity.login_key is not None and (
            not tx.key_enrolled(identity.user, identity.login_key) or tx.is_revoked("key", identity.login_key)):
        raise AuthenticationFailed(f"the key you logged in with ({identity.login_key}) is no longer "
                                   "enrolled, or was revoked")


def offline_allowed(tx: Transaction, user: str, allow_unenrolled: bool) -> None:
    """The gate of an offline authority, inside the issuing transaction: a disabled user gets
    nothing until ``iast-ca user enable``; a name the user store does not hold gets nothing if it
    was revoked (``revoke --user``), and otherwise only with ``allow_unenrolled``, so a typo does
    not mint certificates for a name nobody owns (docs/security.md, "Revocations stick")."""
    enabled = tx.user_enabled(user)
    if enabled is False:
        raise PolicyDenied(f"user {user} is disabled (or was revoked): 'iast-ca user enable {user}' first")
    if enabled is None:
        if tx.is_revoked("user", user):
            raise PolicyDenied(f"user {user} was revoked and is not enrolled: enrol them with "
                               f"'iast-ca user add {user}' before signing again")
        if not allow_unenrolled:
            raise PolicyDenied(f"user {user} is not enrolled: check the name, or sign with --allow-unenrolled")


def _shown(text: str | None, limit: int) -> str | None:
    """Requester text as it may be stored and later printed to a reviewer's terminal:
    as is when printable, else its repr (no escape sequence ever reaches a terminal)."""
    if not text:
        return None
    text = str(text)
    return (text if text.isprintable() else repr(text))[:limit]

