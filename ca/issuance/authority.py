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

Host certificates take the same choke point's other door, :meth:`Authority.issue_host`:
decided by the host policy, signed by the host CA key (never a user CA key),
recorded as ``host_issued`` (or ``host_denied`` / ``host_failed``) with a
certificate row and a serial from the same sequence, so revocation and the
KRL cover them. Its proof (an operator, a one-time join token, or the host's
current certificate) is checked, and a token used, inside the issuing
transaction.

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
from ca.access.revocation import certificate_revocation
from ca.auth.hosts import token_refusal
from ca.issuance.signer import Signer, make_host_key_id, make_key_id
from ca.models import Decision, HostIssued, HostRequest, Identity, Issued, SignRequest
from ca.policy import Policy
from ca.rules import host_account, host_of_account, is_host_name, is_user_name
from ca.sshcert.certificates import HOST_CERT, parse_certificate_line, verify_signature
from ca.sshcert.userkey import UserKey, parse_host_key, parse_user_key
from ca.sshcert.wire import WireError
from ca.store import AuditLog, Transaction
from ca.store.base import IssuanceGate

HOST_PROOFS = ("operator", "token", "renewal")

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
        host_ca: Callable[[], tuple[Signer, str]] | None = None,
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
        # The host CA key (signer, fingerprint), opened on first use: see issue_host.
        self._host_ca_loader = host_ca
        self._host_ca: tuple[Signer, str] | None = None

    def host_ca(self) -> tuple[Signer, str]:
        """The host CA signer and its fingerprint (opened, or created and audited by the loader, once)."""
        if self._host_ca is None:
            if self._host_ca_loader is None:
                raise SigningError("this CA signs no host certificates (no host CA key)")
            self._host_ca = self._host_ca_loader()
        return self._host_ca

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
                # Every read of the gate at once (one statement on SQLite and PostgreSQL).
                key, ca_key = ("key", user_key.fingerprint), ("ca_key", self.ca_fingerprint)
                login_key = identity.login_key if self.online else None
                checks = [key, ca_key] + ([("key", login_key)] if login_key is not None else []) \
                    + ([] if self.online else [("user", identity.user)])
                gate = tx.issuance_gate(identity.user, login_key, checks)
                if key in gate.revoked:
                    raise PolicyDenied(f"key {user_key.fingerprint} is revoked")
                if ca_key in gate.revoked:
                    raise SigningError(f"the active CA key {self.ca_fingerprint} is revoked: rotate it")
                if self.online:
                    still_allowed(identity, gate)
                else:
                    offline_allowed(identity.user, allow_unenrolled, gate)
                if approval is not None and consume is not None:
                    extra = consume(tx, decision)
                    serial = tx.next_serial()  # as the hook saw it (it adds no certificate)
                else:
                    extra, serial = {}, gate.next_serial
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
                    **vouched_for(identity),
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
            **vouched_for(identity),
        }
        return self.audit.record(kind, data, user=_shown(identity.user, 64), role=_shown(request.role, 64),
                                 source=identity.source_address)


    # -- host certificates ------------------------------------------------------------

    def issue_host(self, identity: Identity, request: HostRequest) -> HostIssued:
        """Decide, sign and audit one host certificate; return it or raise (after a ``host_denied``
        or ``host_failed`` event). Nothing is written but that event when it is refused.

        The proof (:attr:`HostRequest.proof`) must match the identity: ``operator`` an
        offline administrator; ``token`` a ``join-token`` login as ``host:NAME`` with that
        token, which must be for the host, unused and unexpired; ``renewal`` a ``host-key``
        login with the key of ``certificate``, a current, unrevoked host certificate of
        this CA for that host (its role is kept).
        """
        now = int(self.clock())
        policy = self.policy
        host_key: UserKey | None = None
        try:
            if not is_host_name(request.host):
                raise PolicyDenied(f"invalid host name {str(request.host)[:64]!r}")
            host_key = parse_host_key(request.public_key, self.min_rsa_bits)
            signer, host_ca_fp = self.host_ca()
            role = self._host_role(identity, request, host_key, signer, host_ca_fp, now, self.audit)
            decision = policy.decide_host(request.host, role, request.ttl, now, self.clock_skew)
        except CAError as e:
            if isinstance(e, AuditError):
                raise
            self.refuse_host(identity, request, e, host_key=host_key, policy=policy)
            raise
        account = host_account(decision.host)
        try:
            with self.audit.transaction() as tx:
                # Again under the write lock: a revocation, or another use of the token, that
                # commits first is never missed.
                self._host_role(identity, request, host_key, signer, host_ca_fp, now, tx)
                if tx.is_revoked("key", host_key.fingerprint):
                    raise PolicyDenied(f"key {host_key.fingerprint} is revoked")
                if tx.is_revoked("ca_key", host_ca_fp):
                    raise SigningError(f"the host CA key {host_ca_fp} is revoked")
                serial = tx.next_serial()
                if request.proof == "token" and not tx.join_tokens.mark_used(request.token_id, now, serial):
                    raise PolicyDenied("the join token was already used")
                key_id = make_host_key_id(decision.host, decision.role, serial)
                line, _ = signer.sign_host(decision, host_key, serial, key_id)
                data = {
                    "host": decision.host,
                    "principals": list(decision.principals),
                    "valid_after": decision.valid_after,
                    "valid_before": decision.valid_before,
                    "ttl": decision.ttl,
                    "key_type": host_key.algorithm,
                    "key_fingerprint": host_key.fingerprint,
                    "cert_type": "host",
                    "proof": request.proof,
                    "token_id": request.token_id if request.proof == "token" else None,
                    "renewed_serial": _serial_of(request.certificate) if request.proof == "renewal" else None,
                    "auth_methods": list(identity.auth_methods),
                    "operator": identity.operator,
                    "policy_sha256": decision.policy_sha256,
                    "ca_fingerprint": host_ca_fp,
                }
                event_id = tx.append("host_issued", data, user=account, role=decision.role, serial=serial,
                                     key_id=key_id, source=identity.source_address)
                tx.add_certificate(
                    serial=serial, key_id=key_id, user=account, role=decision.role,
                    key_fingerprint=host_key.fingerprint, ca_fingerprint=host_ca_fp,
                    valid_after=decision.valid_after, valid_before=decision.valid_before, event_id=event_id,
                )
        except SigningError as e:
            self.refuse_host(identity, request, e, host_key=host_key, policy=policy, kind="host_failed")
            raise
        except CAError as e:
            if isinstance(e, AuditError):
                raise
            self.refuse_host(identity, request, e, host_key=host_key, policy=policy)
            raise
        return HostIssued(certificate=line, serial=serial, key_id=key_id, decision=decision,
                          ca_fingerprint=host_ca_fp, key_type=host_key.algorithm,
                          key_fingerprint=host_key.fingerprint, event_id=event_id)

    def _host_role(self, identity: Identity, request: HostRequest, host_key: UserKey, signer: Signer,
                   host_ca_fp: str, now: int, source: Any) -> str | None:
        """Check the request's proof against ``source`` (the store, or the issuing transaction);
        return the host role it entitles to (None: the policy's only host role)."""
        host = request.host
        if request.proof not in HOST_PROOFS:
            raise PolicyDenied(f"unknown host proof {str(request.proof)[:20]!r}")
        if request.proof == "operator":
            if "admin-offline" not in identity.auth_methods:
                raise AuthenticationFailed("only an administrator signs a host key without a token or a certificate")
            return request.role
        if host_of_account(identity.user) != host:
            raise AuthenticationFailed(f"{identity.user[:70]} may not ask for a certificate of host {host}")
        if request.proof == "token":
            if "join-token" not in identity.auth_methods or not request.token_id \
                    or identity.subject != request.token_id:
                raise AuthenticationFailed("enrolment needs a login with the join token")
            why = token_refusal(source, request.token_id, host, now)
            if why is not None:
                raise PolicyDenied(why)
            return source.join_tokens.get(request.token_id).role
        # renewal: the current certificate, for the key the host logged in with
        if "host-key" not in identity.auth_methods or identity.login_key != host_key.fingerprint:
            raise AuthenticationFailed("renewal needs a login with the host key being renewed")
        try:
            cert = parse_certificate_line(request.certificate or "")
            if cert.cert_type != HOST_CERT:
                raise PolicyDenied("the current certificate is not a host certificate")
            if cert.signature_key != signer.ca_blob:
                raise PolicyDenied("the current certificate was not signed by this CA's host CA key")
            verify_signature(cert, signer.ca_blob)
        except WireError as e:
            raise PolicyDenied(f"the current certificate does not verify: {e}") from None
        if cert.public_key_blob != host_key.blob:
            raise PolicyDenied("the current certificate is for another key")
        row = source.certificates.by_serial(cert.serial)
        if (row is None or row.key_id != cert.key_id or row.username != identity.user
                or row.key_fingerprint != host_key.fingerprint or row.ca_fingerprint != host_ca_fp):
            raise PolicyDenied(f"serial {cert.serial} is not a certificate this CA issued to host {host}")
        if min(cert.valid_before, row.valid_before) <= now:
            raise PolicyDenied(f"the current certificate (serial {cert.serial}) has expired: enrol again with a "
                               "new join token")
        why = certificate_revocation(source, row)
        if why is not None:
            raise PolicyDenied(f"the current certificate (serial {cert.serial}) is revoked ({why}): enrol again "
                               "with a new join token")
        return row.role

    def refuse_host(self, identity: Identity, request: HostRequest, error: CAError, *,
                    host_key: UserKey | None = None, policy: Policy | None = None, kind: str = "host_denied") -> int:
        """Record a refused (``host_denied``) or failed (``host_failed``) host request; return the event id."""
        policy = policy or self.policy
        data: dict[str, Any] = {
            "code": error.code,
            "message": error.message,
            "host": _shown(request.host, 64),
            "requested_role": _shown(request.role, 64),
            "requested_ttl": request.ttl,
            "proof": _shown(request.proof, 20),
            "token_id": _shown(request.token_id, 32),
            "key_fingerprint": host_key.fingerprint if host_key else None,
            "key_type": host_key.algorithm if host_key else None,
            "auth_methods": list(identity.auth_methods),
            "operator": identity.operator,
            "policy_sha256": policy.sha256,
        }
        return self.audit.record(kind, data, user=_shown(identity.user, 70), role=_shown(request.role, 64),
                                 source=identity.source_address)


def _serial_of(line: str | None) -> int | None:
    try:
        return parse_certificate_line(line or "").serial
    except WireError:
        return None


def vouched_for(identity: Identity) -> dict[str, Any]:
    """What the audit log records of an identity an IdP or a workload platform vouched for."""
    if identity.issuer is None:
        return {}
    return {"issuer": identity.issuer, "subject": identity.subject, "groups": list(identity.groups),
            "auth_time": identity.auth_time, "amr": list(identity.amr), "acr": identity.acr, "token_sha256": identity.token_hash}


def still_allowed(identity: Identity, gate: IssuanceGate) -> None:
    """The gate of an online authority, inside the issuing transaction: the user is still enabled,
    and the key they logged in with is still enrolled and not revoked (a disable, a key-remove or
    a revoke that commits first stops even an open connection).

    A person an identity provider vouched for needs no local account (the IdP is their
    directory), but a local account of that name that is disabled still stops them.

    ``gate``: the transaction's reads (:meth:`ca.store.base.UnitOfWork.issuance_gate`, with the
    login key and ``("key", login key)`` among its checks)."""
    enabled = gate.enabled  # None (unknown), False (disabled)
    if enabled is False or (enabled is None and identity.issuer is None):
        raise AuthenticationFailed(f"user {identity.user} is disabled")
    if identity.login_key is not None and (
            gate.login_key_owner != identity.user or ("key", identity.login_key) in gate.revoked):
        raise AuthenticationFailed(f"the key you logged in with ({identity.login_key}) is no longer "
                                   "enrolled, or was revoked")


def offline_allowed(user: str, allow_unenrolled: bool, gate: IssuanceGate) -> None:
    """The gate of an offline authority, inside the issuing transaction: a disabled user gets
    nothing until ``iast-ca user enable``; a name the user store does not hold gets nothing if it
    was revoked (``revoke --user``), and otherwise only with ``allow_unenrolled``, so a typo does
    not mint certificates for a name nobody owns (docs/security.md, "Revocations stick").

    ``gate``: the transaction's reads, with ``("user", user)`` among its checks."""
    enabled = gate.enabled
    if enabled is False:
        raise PolicyDenied(f"user {user} is disabled (or was revoked): 'iast-ca user enable {user}' first")
    if enabled is None:
        if ("user", user) in gate.revoked:
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

