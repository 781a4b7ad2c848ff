"""Just-in-time access with approval: requests, decisions, and their one use.

A role with an ``approval`` table in the policy (:class:`ca.policy.Approval`)
is never signed on a plain request. Instead:

1. the requester asks (``iast-ssh request --role R --ttl D --reason T``):
   a *pending* request, with a random id (``req-`` and 10 base32 letters);
2. ``required`` distinct approvers (users named by the role's
   ``approvers``; never the requester) approve it; one denial closes it;
3. the requester logs in (``iast-ssh login --role R`` or ``--request ID``):
   :meth:`Approvals.consumer` is :meth:`ca.authority.Authority.issue`'s
   ``consume`` hook, run inside the issuing transaction, which marks the
   request *used*. One approved request gives at most one certificate, for
   at most the ttl asked for, within ``expires`` of the approval.

Expiry, one duration for both waits: a request that is still pending
``expires`` after it was made expires, and so does an approved request
not used within ``expires`` of its approval. Expiry is recorded when it is
observed (``request_expired``): by any later look at the requests.

Every state change is one ``BEGIN IMMEDIATE`` transaction together with its
audit event (``request_created``, ``request_approved``, ``request_denied``,
``request_cancelled``, ``request_expired``, ``request_used``); refused
actions are audited as ``request_refused``, and a refused login as the
usual ``denied`` event. The events stay in the log after the request ends:
``iast-ca audit show --request ID`` shows them all.

The tables live in the store beside the audit log (``ca.db``). An
:class:`Approvals` uses the :class:`ca.store.Store` it is given, from one
thread at a time (the service's issue thread).
"""

from __future__ import annotations

import base64
import dataclasses
import logging
import re
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ca.audit.chain import iso
from ca.durations import format_duration
from ca.errors import AuditError, CAError, MFARequired, PolicyDenied, UsageError
from ca.models import Decision, Event, Identity, SignRequest
from ca.policy import Policy, Role
from ca.rules import free_text
from ca.store.base import RequestRow, Store, UnitOfWork
from ca.store.schema import REQUEST_STATUSES

log = logging.getLogger("iast.ca.approvals")

STATUSES = REQUEST_STATUSES  # ("pending", "approved", "denied", "cancelled", "expired", "used")
OPEN = ("pending", "approved")
REQUEST_ID = re.compile(r"req-[a-z2-7]{10}")
MAX_COMMENT = 500
HOOK_TIMEOUT = 10.0  # seconds an on_request command may run before it is killed
_PLACEHOLDER = re.compile(r"\{(id|user|role)\}")

def check_request_id(text: Any) -> str:
    """A request id as the CA makes them (``req-`` + 10 base32 letters), lower-cased; else UsageError."""
    value = text.strip().lower() if isinstance(text, str) else ""
    if not REQUEST_ID.fullmatch(value):
        shown = repr(text)[:40] if not isinstance(text, str) else repr(text[:40])
        raise UsageError(f"{shown} is not a request id (req- and 10 letters, as 'iast-ssh request' printed)")
    return value


def new_request_id() -> str:
    return "req-" + base64.b32encode(secrets.token_bytes(10)).decode("ascii")[:10].lower()


def _comment(text: Any) -> str | None:
    return free_text(text, "comment", limit=MAX_COMMENT)


def _when(ts: int | None) -> str | None:
    return None if ts is None else iso(ts)[:19] + "Z"


@dataclass(frozen=True)
class Vote:
    """One approver's decision on a request."""

    approver: str
    decision: str  # "approve" or "deny"
    comment: str | None
    ts: int

    def as_json(self) -> dict[str, Any]:
        return {"approver": self.approver, "decision": self.decision, "comment": self.comment,
                "ts": self.ts, "time": _when(self.ts)}


@dataclass(frozen=True)
class AccessRequest:
    """One request for temporary access, with the decisions made on it."""

    id: str
    user: str
    role: str
    ttl: int
    reason: str
    status: str
    created: int
    decided: int | None
    expires_at: int
    used_serial: int | None
    votes: tuple[Vote, ...] = ()
    required: int | None = None  # what the current policy asks for (None: the role has no approval now)

    @property
    def approvers(self) -> tuple[str, ...]:
        return tuple(v.approver for v in self.votes if v.decision == "approve")

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "user": self.user, "role": self.role, "ttl": self.ttl, "reason": self.reason,
            "status": self.status, "created": self.created, "decided": self.decided,
            "expires_at": self.expires_at, "expires": _when(self.expires_at), "used_serial": self.used_serial,
            "required": self.required, "approvals": len(self.approvers),
            "votes": [v.as_json() for v in self.votes],
        }

    def summary(self) -> str:
        """One line for people: id, who, what, state."""
        state = self.status
        if self.status == "pending":
            state += f" ({len(self.approvers)} of {self.required or '?'} approvals, expires {_when(self.expires_at)})"
        elif self.status == "approved":
            state += f" (by {', '.join(self.approvers)}; use before {_when(self.expires_at)})"
        elif self.status == "used":
            state += f" (serial {self.used_serial})"
        elif self.status == "denied":
            deny = next((v for v in self.votes if v.decision == "deny"), None)
            if deny:
                state += f" (by {deny.approver}" + (f": {deny.comment})" if deny.comment else ")")
        return (f"{self.id}  {self.user} -> {self.role} for {format_duration(self.ttl)}: {state} "
                f"- {self.reason}")


class Approvals:
    """Requests and approvals in one CA's database (``ca.db``)."""

    def __init__(self, audit: Store, *, clock: Callable[[], float] = time.time):
        self.audit = audit
        self.clock = clock
        self._tx: UnitOfWork | None = None

    # -- reading ---------------------------------------------------------------

    def _now(self) -> int:
        return int(self.clock())

    @property
    def _requests(self):
        """The request rows: through the open transaction, if there is one, else the store."""
        return self._tx.requests if self._tx is not None else self.audit.requests

    @contextmanager
    def _transaction(self, tx: UnitOfWork | None = None) -> Iterator[UnitOfWork]:
        """A write transaction of the store (or ``tx``, already open); reads inside go through it."""
        if tx is not None:
            outer, self._tx = self._tx, tx
            try:
                yield tx
            finally:
                self._tx = outer
            return
        with self.audit.transaction() as new:
            with self._transaction(new):
                yield new

    def _load(self, row: RequestRow, policy: Policy | None) -> AccessRequest:
        votes = tuple(Vote(*v) for v in self._requests.votes(row[0]))
        role = policy.roles.get(row[2]) if policy is not None else None
        required = role.approval.required if role is not None and role.approval is not None else None
        return AccessRequest(*row, votes=votes, required=required)

    def get(self, request_id: str, policy: Policy | None = None) -> AccessRequest | None:
        """The request ``request_id`` (any status), or None."""
        row = self._requests.get(request_id)
        return self._load(row, policy) if row else None

    def list(self, *, policy: Policy | None = None, user: str | None = None, role: str | None = None,
             statuses: Sequence[str] | None = None, limit: int | None = 100) -> list[AccessRequest]:
        """Requests matching every filter given, newest first."""
        rows = self._requests.list(username=user, role=role, statuses=statuses, limit=limit)
        return [self._load(r, policy) for r in rows]

    def visible_to(self, identity: Identity, policy: Policy, *, limit: int = 20) -> list[AccessRequest]:
        """What ``iast-ssh requests`` shows: pending requests ``identity`` may decide (and has not),
        then their own requests (newest first, any status)."""
        self.expire_due()
        decidable = [r for r in self.list(policy=policy, statuses=("pending",), limit=None)
                     if r.user != identity.user and self._may_decide(r, identity, policy)
                     and identity.user not in {v.approver for v in r.votes}]
        return decidable + self.list(policy=policy, user=identity.user, limit=limit)

    @staticmethod
    def _may_decide(r: AccessRequest, identity: Identity, policy: Policy) -> bool:
        role = policy.roles.get(r.role)
        return role is not None and policy.may_approve(role, identity)

    # -- expiry ------------------------------------------------------------------

    def expire_due(self) -> list[str]:
        """Mark every open request past its ``expires_at`` expired, each with a ``request_expired``
        event, in one transaction; return their ids. Cheap when there are none (one indexed read)."""
        now = self._now()
        if not self._requests.any_due(now):
            return []
        done = []
        with self._transaction() as tx:
            for rid, user, role, status, expires_at in tx.requests.due(now):
                tx.requests.set_status(rid, "expired")
                tx.append("request_expired", {"request_id": rid, "was": status, "expires_at": expires_at},
                          user=user, role=role)
                done.append(rid)
        return done

    # -- changes -------------------------------------------------------------------

    def _refused(self, action: str, request_id: str | None, actor: Identity, error: CAError,
                 request: AccessRequest | None = None, role: str | None = None) -> None:
        """Audit a refused action (``request_refused``); never hides the original error."""
        self.audit.record("request_refused", {
            "request_id": request_id, "action": action, "actor": actor.user, "code": error.code,
            "message": error.message, "auth_methods": list(actor.auth_methods), "operator": actor.operator,
        }, user=request.user if request else actor.user, role=request.role if request else role,
            source=actor.source_address)

    def refuse(self, action: str, request_id: str | None, actor: Identity, error: CAError) -> None:
        """Audit an action refused before it reached this class (an approver who could not prove
        who they are: docs/security.md, "Approvers prove who they are")."""
        self._refused(action, request_id, actor, error)

    @contextmanager
    def _audited(self, action: str, request_id: str | None, actor: Identity) -> Iterator[dict]:
        """Run a change; if it is refused, record ``request_refused`` and re-raise."""
        seen: dict[str, Any] = {}
        try:
            yield seen
        except CAError as e:
            if isinstance(e, AuditError):
                raise
            self._refused(action, request_id, actor, e, seen.get("request"), seen.get("role"))
            raise

    def create(self, identity: Identity, *, role: str | None, ttl: int | None, reason: str | None,
               policy: Policy) -> AccessRequest:
        """A new pending request of ``identity`` for ``role``; audited as ``request_created``.

        The request must be one policy would grant (membership, ttl within
        max_ttl, principals) apart from the approval itself and a second
        factor (asked for when the certificate is signed); a reason is
        mandatory.
        """
        self.expire_due()
        with self._audited("create", None, identity) as seen:
            seen["role"] = role[:64] if isinstance(role, str) else None
            if not role:
                raise UsageError("request: --role is required")
            r = policy.roles.get(role)
            if r is None:
                raise PolicyDenied(f"no such role {role[:64]!r}")
            if r.approval is None:
                raise PolicyDenied(f"role {role} needs no approval: iast-ssh login --role {role}")
            # A dry run of what the login will be judged by (decide is pure). The second factor
            # is for the login itself, so it is not asked for here.
            decision = policy.decide(dataclasses.replace(identity, mfa=True),
                                     SignRequest(public_key="", role=role, ttl=ttl, reason=reason),
                                     self._now(), 0)
            if decision.reason is None:
                raise PolicyDenied(f"role {role} needs a reason for an access request (--reason TEXT)")
            now = self._now()
            with self._transaction() as tx:
                rid = new_request_id()
                expires_at = now + r.approval.expires
                tx.requests.insert(rid, identity.user, role, decision.ttl, decision.reason, now, expires_at)
                tx.append("request_created", {
                    "request_id": rid, "ttl": decision.ttl, "reason": decision.reason,
                    "approvers": list(r.approval.approvers), "required": r.approval.required,
                    "expires_at": expires_at, "auth_methods": list(identity.auth_methods), "mfa": identity.mfa,
                    "operator": identity.operator,
                }, user=identity.user, role=role, source=identity.source_address)
        return self.get(rid, policy)  # type: ignore[return-value]

    def _open_for_vote(self, request_id: str, actor: Identity, policy: Policy, seen: dict,
                       verb: str) -> tuple[AccessRequest, Role]:
        req = self.get(request_id, policy)
        if req is None:
            raise CAError(f"no such request {request_id}")
        seen["request"] = req
        if req.user == actor.user:
            raise PolicyDenied(f"you cannot {verb} your own request {request_id}"
                               + (" (cancel it with: iast-ssh cancel ID)" if verb == "deny" else ""))
        role = policy.roles.get(req.role)
        if role is None or role.approval is None:
            raise PolicyDenied(f"role {req.role} of request {request_id} no longer takes approvals")
        if not policy.may_approve(role, actor):
            raise PolicyDenied(f"{actor.user} is not an approver of role {req.role} "
                               f"(approvers: {', '.join(role.approval.approvers)})")
        mine = next((v for v in req.votes if v.approver == actor.user), None)
        if mine is not None:
            done = "approved" if mine.decision == "approve" else "denied"
            raise PolicyDenied(f"{actor.user} already {done} request {request_id}; an approver counts once")
        return req, role

    @staticmethod
    def _still_open(req: AccessRequest, now: int, allowed: Sequence[str]) -> None:
        if req.status not in allowed:
            raise PolicyDenied(f"request {req.id} is already {req.status}")
        if now >= req.expires_at:
            raise PolicyDenied(f"request {req.id} expired at {_when(req.expires_at)}")

    def approve(self, request_id: str, actor: Identity, policy: Policy, comment: str | None = None) -> AccessRequest:
        """Record ``actor``'s approval; once ``required`` distinct approvers agreed, the request is
        approved and may be used within ``expires``. Raises PolicyDenied (and audits it) for
        self-approval, a non-approver, a second vote, or a request no longer pending."""
        self.expire_due()
        with self._audited("approve", request_id, actor) as seen:
            request_id = check_request_id(request_id)
            comment = _comment(comment)
            with self._transaction() as tx:
                req, role = self._open_for_vote(request_id, actor, policy, seen, "approve")
                assert role.approval is not None  # _open_for_vote made sure
                if role.approval.require_mfa and not actor.mfa:
                    raise MFARequired(f"approving role {role.name} needs a second factor: approve over the "
                                      "service after a password and one-time code login")
                now = self._now()
                self._still_open(req, now, ("pending",))
                tx.requests.add_vote(request_id, actor.user, "approve", comment, now)
                count = len(self._valid_approvers(request_id, role, policy))
                status = "pending"
                expires_at = req.expires_at
                if count >= role.approval.required:
                    status, expires_at = "approved", now + role.approval.expires
                    tx.requests.set_status(request_id, "approved", decided=now, expires_at=expires_at)
                tx.append("request_approved", {
                    "request_id": request_id, "approver": actor.user, "comment": comment, "approvals": count,
                    "required": role.approval.required, "status": status, "expires_at": expires_at,
                    "auth_methods": list(actor.auth_methods), "mfa": actor.mfa, "operator": actor.operator,
                }, user=req.user, role=req.role, source=actor.source_address)
        return self.get(request_id, policy)  # type: ignore[return-value]

    def deny(self, request_id: str, actor: Identity, policy: Policy, comment: str | None) -> AccessRequest:
        """One approver's denial closes the request (pending, or approved and not yet used)."""
        self.expire_due()
        with self._audited("deny", request_id, actor) as seen:
            request_id = check_request_id(request_id)
            comment = _comment(comment)
            if comment is None:
                raise UsageError("deny: --comment is required (tell the requester why)")
            with self._transaction() as tx:
                req, _ = self._open_for_vote(request_id, actor, policy, seen, "deny")
                now = self._now()
                self._still_open(req, now, OPEN)
                tx.requests.add_vote(request_id, actor.user, "deny", comment, now)
                tx.requests.set_status(request_id, "denied", decided=now)
                tx.append("request_denied", {
                    "request_id": request_id, "approver": actor.user, "comment": comment, "was": req.status,
                    "auth_methods": list(actor.auth_methods), "mfa": actor.mfa, "operator": actor.operator,
                }, user=req.user, role=req.role, source=actor.source_address)
        return self.get(request_id, policy)  # type: ignore[return-value]

    def cancel(self, request_id: str, actor: Identity, policy: Policy | None = None) -> AccessRequest:
        """The requester withdraws a request that is pending or approved and unused."""
        self.expire_due()
        with self._audited("cancel", request_id, actor) as seen:
            request_id = check_request_id(request_id)
            with self._transaction() as tx:
                req = self.get(request_id, policy)
                if req is None:
                    raise CAError(f"no such request {request_id}")
                seen["request"] = req
                if req.user != actor.user:
                    raise PolicyDenied(f"request {request_id} is not yours to cancel (it is {req.user}'s)")
                now = self._now()
                self._still_open(req, now, OPEN)
                tx.requests.set_status(request_id, "cancelled", decided=now)
                tx.append("request_cancelled", {"request_id": request_id, "was": req.status,
                                                "operator": actor.operator},
                          user=req.user, role=req.role, source=actor.source_address)
        return self.get(request_id, policy)  # type: ignore[return-value]

    def _valid_approvers(self, request_id: str, role: Role, policy: Policy) -> list[str]:
        """The approvers of ``request_id`` who are still approvers of ``role`` under ``policy``."""
        names = self._requests.approvers(request_id)
        return [n for n in names if policy.may_approve(role, Identity(user=n, auth_methods=()))]

    # -- use ---------------------------------------------------------------------------

    def prepare(self, user: str, request: SignRequest, policy: Policy) -> SignRequest:
        """Fill in a login for an approval role from the request it uses.

        With ``--request ID`` (the user's own), the role, ttl and reason
        default to the request's. Without one, for a role that needs
        approval, the user's approved request for that role is found (else
        their pending one, else their newest, so that the refusal can say
        what became of it).
        Nothing is trusted here: :meth:`consumer` checks it all again
        inside the issuing transaction.
        """
        found: AccessRequest | None = None
        if request.request_id is not None:
            self.expire_due()
            rid = check_request_id(request.request_id)
            found = self.get(rid, policy)
            if found is None or found.user != user:
                # Not theirs: the role is only to have the refusal name the request, not the role.
                role = request.role or (found.role if found else None)
                return dataclasses.replace(request, request_id=rid, role=role)
        else:
            name = request.role or policy.default_role
            role = policy.roles.get(name) if isinstance(name, str) else None
            if role is None or role.approval is None:
                return request  # no request is looked at (nor expired) for a role without approval
            self.expire_due()
            mine = self.list(policy=policy, user=user, role=role.name, limit=20)
            found = (next((r for r in mine if r.status == "approved"), None)
                     or next((r for r in mine if r.status == "pending"), None) or (mine[0] if mine else None))
            if found is None:
                return request
        return dataclasses.replace(
            request, request_id=found.id, role=request.role or found.role,
            ttl=found.ttl if request.ttl is None else request.ttl,
            reason=request.reason if request.reason else found.reason)

    def consumer(self, user: str, request_id: str | None, policy: Policy) -> Callable[[UnitOfWork, Decision], dict]:
        """The ``consume`` hook for :meth:`ca.authority.Authority.issue`.

        Inside the issuing transaction, before signing: the request must be
        ``user``'s, for the decided role, approved by enough approvers who
        still are approvers, unused, unexpired, and ask for at least the
        decided ttl. It is then marked used (with the serial about to be
        signed, and a ``request_used`` event); the returned fields go into
        the ``issued`` event. Raises PolicyDenied otherwise, and the
        transaction (with anything written) is rolled back.
        """

        def consume(tx: UnitOfWork, decision: Decision) -> dict[str, Any]:
            with self._transaction(tx):
                return _consume(tx, decision)

        def _consume(tx: UnitOfWork, decision: Decision) -> dict[str, Any]:
            role = decision.role
            ask = f"iast-ssh request --role {role} --ttl D --reason TEXT"
            if request_id is None:
                raise PolicyDenied(f"role {role} needs an approved request: {ask}, then log in once approved")
            row = tx.requests.get(request_id)
            req = self._load(row, policy) if row else None
            if req is None or req.user != decision.user:
                raise PolicyDenied(f"no request {request_id} of {decision.user}")
            if req.role != role:
                raise PolicyDenied(f"request {request_id} is for role {req.role}, not {role}")
            now = self._now()
            if req.status == "pending":
                raise PolicyDenied(f"request {request_id} is not approved yet "
                                   f"({len(req.approvers)} of {req.required} approvals)")
            if req.status == "used":
                raise PolicyDenied(f"request {request_id} was already used (serial {req.used_serial}); "
                                   f"a request gives one certificate: {ask}")
            if req.status != "approved":
                raise PolicyDenied(f"request {request_id} was {req.status}: {ask}")
            if now >= req.expires_at:
                raise PolicyDenied(f"request {request_id} expired at {_when(req.expires_at)}: {ask}")
            if decision.ttl > req.ttl:
                raise PolicyDenied(f"ttl {format_duration(decision.ttl)} exceeds the {format_duration(req.ttl)} "
                                   f"request {request_id} was approved for")
            approvers = self._valid_approvers(request_id, policy.roles[role], policy)
            if req.required is None or len(approvers) < req.required:
                raise PolicyDenied(f"request {request_id} no longer has the approvals the policy asks for "
                                   f"({len(approvers)} of {req.required})")
            # The serial Authority.issue signs next: this transaction holds the write lock and has
            # not added a certificate yet, so next_serial() gives it the same answer.
            serial = tx.next_serial()
            if not tx.requests.mark_used(request_id, serial):  # unreachable under BEGIN IMMEDIATE; cheap to be sure
                raise PolicyDenied(f"request {request_id} was used meanwhile")
            tx.append("request_used", {"request_id": request_id, "serial": serial, "approvers": approvers,
                                       "ttl": decision.ttl},
                      user=req.user, role=req.role, serial=serial)
            return {"request_id": request_id, "approvers": approvers}

        return consume


# --------------------------------------------------------------------------
# Reading the audit trail of one request


def request_events(audit: Store, request_id: str) -> list[Event]:
    """Every event about ``request_id``, oldest first: its life, refusals, and the certificate."""
    return audit.request_events(request_id)


# --------------------------------------------------------------------------
# The notification hook


def expand_hook(argv: Sequence[str], values: Mapping[str, str]) -> list[str]:
    """``argv`` with ``{id}``, ``{user}`` and ``{role}`` replaced (whole or within an argument).

    One pass, so a substituted value is never expanded again; any other
    brace is left as it is. Each argument stays one argument: no shell ever
    sees it.
    """
    return [_PLACEHOLDER.sub(lambda m: values[m.group(1)], str(arg)) for arg in argv]


def run_hook(argv: Sequence[str] | None, values: Mapping[str, str], *, timeout: float = HOOK_TIMEOUT) -> bool:
    """Run the ``on_request`` command for a new request; True if it exited 0.

    Runs ``argv`` directly (``subprocess`` with a list, never a shell), with
    no stdin, killed after ``timeout`` seconds. Never raises: a failure is
    logged, and never holds up a request or a certificate.
    """
    if not argv:
        return False
    args = expand_hook(argv, values)
    fields = {"hook": args[0], "request_id": values.get("id")}
    try:
        result = subprocess.run(args, shell=False, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, timeout=timeout, close_fds=True)
    except subprocess.TimeoutExpired:
        log.warning("on_request hook timed out", extra={"fields": {**fields, "timeout": timeout}})
        return False
    except (OSError, ValueError) as e:
        log.warning("on_request hook could not run", extra={"fields": {**fields, "error": str(e)}})
        return False
    if result.returncode != 0:
        err = result.stderr.decode("utf-8", "replace").strip()[-300:]
        log.warning("on_request hook failed", extra={"fields": {**fields, "status": result.returncode,
                                                                 "stderr": err}})
        return False
    log.info("on_request hook ran", extra={"fields": fields})
    return True
