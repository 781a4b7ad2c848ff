"""The storage interface: a :class:`Store`, its write transaction (:class:`UnitOfWork`) and its repositories.

A backend is one package that implements these classes (``ca.store.sqlite``
today). Nothing here hands out a connection or a cursor: callers name what
they read or write, and the backend owns every SQL string.

The contract every backend keeps (``tests/test_store.py`` checks it):

* **One chain, one writer at a time.** ``Store.transaction()`` opens one
  durable write transaction that holds the *chain lock* from its first
  statement to its commit. Everything that must be atomic with an audit
  event (a user change, a revocation, a request's state, a certificate
  row) is written through the :class:`UnitOfWork` it yields, and commits or
  rolls back with the event. SQLite: ``BEGIN IMMEDIATE`` (the database
  write lock). PostgreSQL: ``pg_advisory_xact_lock(K)`` (or
  ``SELECT ... FOR UPDATE`` of a one-row chain head) as the first statement,
  so that replicas sharing one database still append one chain.
* **Ids and serials come from the transaction.** ``append`` numbers an
  event ``head + 1`` with ``prev_hash = head hash``, both read under the
  chain lock; ``next_serial`` is ``max(serial) + 1`` of ``certificates``
  read in the same transaction, so the serial a ``consume`` hook reads is
  the one the certificate gets. No engine sequence is involved (a sequence
  would leave gaps on rollback; the chain must not).
* **Durable before it returns.** The commit is on disk (SQLite: WAL,
  ``synchronous=FULL``; PostgreSQL: ``synchronous_commit=on``) before
  ``transaction()`` exits; a row the caller was told about survives
  ``kill -9``. If anything inside raises, or the commit fails, nothing is
  left and the error propagates (database errors as
  :class:`ca.errors.AuditError`).
* **Group commit.** ``Store.group()`` makes the transactions one thread
  opens inside it savepoints of one transaction, durable at the group's
  end (docs/security.md rule 64): the service's issue thread runs the
  issuances waiting for it as one group, so they share one fsync, and
  answers none of them before the group's COMMIT returned.
* **Reads inside a transaction see it.** The repositories on a
  :class:`UnitOfWork` read through the transaction; those on the
  :class:`Store` read committed data. Write methods are called on the
  unit of work's repositories only.

Rows are plain tuples in the column order of :mod:`ca.store.schema`
(``EVENT_COLUMNS`` etc.); event rows are what :mod:`ca.audit.verify` and
:func:`ca.audit.chain.canonical` take.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
import threading
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from ca.audit.chain import GENESIS, canonical
from ca.audit.derive import (
    CERTIFICATE_KINDS,
    DERIVED_KINDS,
    Derived,
    Difference,
    apply_event,
    certificate_of,
    compare_certificates,
    revocations_of,
)
from ca.audit.verify import VerifyReport, leaf_hashes, verify_rows
from ca.models import Event

# -- row shapes ------------------------------------------------------------------------


class UserRow(NamedTuple):
    name: str
    disabled: int
    disabled_reason: str | None
    password_hash: str | None
    totp_secret: str | None
    totp_last_step: int
    created: str


class CertificateRow(NamedTuple):
    serial: int
    key_id: str
    username: str
    role: str
    key_fingerprint: str
    ca_fingerprint: str
    valid_after: int
    valid_before: int
    event_id: int


class JoinTokenRow(NamedTuple):
    id: str
    secret_sha256: str
    host: str
    role: str
    created: int
    expires_at: int
    used_at: int | None
    used_serial: int | None
    event_id: int


class RequestRow(NamedTuple):
    id: str
    username: str
    role: str
    ttl: int
    reason: str
    status: str
    created: int
    decided: int | None
    expires_at: int
    used_serial: int | None


class IssuanceGate(NamedTuple):
    """What an issuing transaction reads under the chain lock before it signs (:meth:`UnitOfWork.issuance_gate`)."""

    enabled: bool | None  # the user: True enabled, False disabled, None not in the user store
    login_key_owner: str | None  # the user the login key is enrolled for (None: not enrolled, or no key)
    revoked: frozenset[tuple[str, str]]  # which of the (kind, value) pairs asked about are revoked
    next_serial: int


# -- repositories ------------------------------------------------------------------------


class EventReads(Protocol):
    """The audit events, read-only (the :class:`Store` itself is this repository)."""

    def get(self, event_id: int) -> Event | None: ...

    def issued_by_serial(self, serial: int) -> Event | None:
        """The ``issued`` event of a certificate serial."""

    def events(self, *, user: str | None = None, role: str | None = None, kind: str | None = None,
               serial: int | None = None, since: str | None = None, until: str | None = None,
               limit: int | None = 100) -> list[Event]:
        """Events matching every filter given, newest first (by ``ts`` with a time window)."""

    def stream(self, after: int = 0, batch: int = 10_000) -> Iterator[Event]:
        """Every event with an id above ``after``, oldest first."""

    def head(self) -> tuple[int, str]:
        """(id of the last event, its hash) as stored; ``(0, GENESIS)`` when empty."""

    def row_batches(self, upto: int | None = None, batch: int = 10_000) -> Iterator[Sequence[tuple]]:
        """The stored event rows (``EVENT_COLUMNS``), oldest first, ids up to ``upto``, in batches."""

    def canonical_row(self, event_id: int) -> tuple | None:
        """The stored row of one event (``EVENT_COLUMNS``)."""

    def request_event_ids(self, request_id: str) -> list[int]:
        """Ids of the events whose data names ``request_id``, oldest first."""


class CertificateReads(Protocol):
    def by_serial(self, serial: int) -> CertificateRow | None: ...
    def by_key_id(self, key_id: str) -> CertificateRow | None: ...
    def unexpired_serials(self, *, cutoff: int, key_fingerprint: str | None = None,
                          username: str | None = None) -> list[int]:
        """Serials (ascending) with ``valid_before > cutoff``, of this key or this user."""
    def current_of(self, username: str, key_fingerprint: str, cutoff: int) -> list[CertificateRow]:
        """Certificates of ``username`` for this key with ``valid_before > cutoff``, by serial."""
    def usernames_of_key(self, key_fingerprint: str) -> list[str]:
        """Every user a certificate for this key was issued to, sorted."""
    def any_for_user(self, username: str) -> bool: ...
    def signed_by(self, ca_fingerprint: str, cutoff: int) -> tuple[int, int]:
        """(certificates signed by this CA key, how many of them have ``valid_before > cutoff``)."""
    def last_expiry(self, ca_fingerprint: str) -> int | None:
        """The latest ``valid_before`` of a certificate this CA key signed (None if it signed none)."""
    def rows(self, batch: int = 10_000) -> Iterator[CertificateRow]:
        """Every row, by serial (for the check against the issued events)."""


class UserReads(Protocol):
    def get(self, name: str) -> UserRow | None: ...
    def all(self) -> list[UserRow]:
        """Every user, by name."""
    def keys(self, name: str) -> list[tuple[str, str, str, str]]:
        """(fingerprint, algorithm, public, added) of each enrolled key, by added then fingerprint."""
    def key_owner(self, fingerprint: str) -> str | None: ...
    def enabled_key_public(self, name: str, fingerprint: str) -> str | None:
        """The public key line of ``fingerprint`` if it is enrolled for ``name`` and ``name`` is enabled."""
    def all_keys(self) -> list[tuple[str, str]]:
        """(fingerprint, user) of every enrolled key, by fingerprint."""


class UserWrites(UserReads, Protocol):
    def insert(self, name: str, *, password_hash: str | None, totp_secret: str | None, created: str) -> None: ...
    def insert_key(self, fingerprint: str, name: str, algorithm: str, public: str, added: str) -> None: ...
    def delete_key(self, name: str, fingerprint: str) -> bool:
        """Remove the key; False if ``name`` had no such key."""
    def set_disabled(self, name: str, disabled: bool, reason: str | None = None) -> None: ...
    def set_password_hash(self, name: str, password_hash: str, *, if_hash: str | None = None) -> bool:
        """Set the hash (only if the stored one is ``if_hash``, when given); True if a row changed."""
    def set_totp_secret(self, name: str, secret: str) -> None:
        """A new secret; the last accepted step goes back to 0."""
    def set_totp_last_step(self, name: str, step: int) -> None: ...


class ThrottleReads(Protocol):
    def get(self, key: str) -> tuple[int, float, float] | None:
        """(failures, first_failure, blocked_until) of a counter."""


class ThrottleWrites(ThrottleReads, Protocol):
    def put(self, key: str, failures: int, first_failure: float, blocked_until: float) -> None: ...
    def clear(self, keys: Sequence[str]) -> int:
        """Delete these counters; return how many existed."""


class RevocationReads(Protocol):
    def is_revoked(self, kind: str, value: str) -> bool: ...
    def find(self, kind: str, value: str) -> int | None:
        """The row id of a revocation, or None."""
    def revoked_at(self, kind: str, value: str) -> int | None:
        """When (kind, value) was revoked (unix seconds), or None."""
    def all(self) -> list[tuple]:
        """Every row (``REVOCATION_COLUMNS``), oldest first."""
    def krl_state(self) -> tuple[int, str, int] | None:
        """(version, content_sha256, generated) of the last KRL built."""
    def revoked_serial_certificates(self, cutoff: int) -> list[tuple[int, str, str]]:
        """(serial, ca_fingerprint, key_id) of certificates revoked by serial, unexpired at ``cutoff``."""
    def revoked_user_certificates(self, cutoff: int) -> list[tuple[int, str, str]]:
        """(serial, ca_fingerprint, key_id) of a revoked user's certificates valid no later than the revocation."""
    def revoked_key_id_certificates(self, cutoff: int) -> list[tuple[str, str]]:
        """(key_id, ca_fingerprint) of certificates revoked by key ID, unexpired at ``cutoff``."""
    def revoked_keys(self) -> list[tuple[str, str | None]]:
        """(fingerprint, public or None) of revoked keys and CA keys."""


class RevocationWrites(RevocationReads, Protocol):
    def insert(self, kind: str, value: str, *, serial: int | None, ca_fingerprint: str | None,
               public: str | None, reason: str, actor: str | None, event_id: int, created: int,
               if_new: bool = False) -> None:
        """Add a row (with ``if_new``, do nothing when (kind, value) is there already)."""
    def set_krl_state(self, version: int, content_sha256: str, generated: int) -> None: ...


class RequestReads(Protocol):
    def get(self, request_id: str) -> RequestRow | None: ...
    def votes(self, request_id: str) -> list[tuple[str, str, str | None, int]]:
        """(approver, decision, comment, ts), in the order they were cast."""
    def approvers(self, request_id: str) -> list[str]:
        """Who approved, in the order they did."""
    def list(self, *, username: str | None = None, role: str | None = None,
             statuses: Sequence[str] | None = None, limit: int | None = 100) -> list[RequestRow]:
        """Newest first."""
    def any_due(self, now: int) -> bool:
        """Whether an open request has ``expires_at <= now``."""
    def due(self, now: int) -> list[tuple[str, str, str, str, int]]:
        """(id, username, role, status, expires_at) of each open request due, by expires_at then id."""
    def all_votes(self) -> list[tuple[str, str, str]]:
        """(request id, approver, decision) of every vote cast."""


class RequestWrites(RequestReads, Protocol):
    def insert(self, request_id: str, username: str, role: str, ttl: int, reason: str, created: int,
               expires_at: int) -> None:
        """A new pending request."""
    def set_status(self, request_id: str, status: str, *, decided: int | None = None,
                   expires_at: int | None = None) -> None:
        """Change the status (and ``decided`` / ``expires_at`` when given)."""
    def mark_used(self, request_id: str, serial: int) -> bool:
        """approved -> used with this serial; False if it was not approved."""
    def add_vote(self, request_id: str, approver: str, decision: str, comment: str | None, ts: int) -> None: ...


class UsedTokenReads(Protocol):
    def seen(self, token_key: str, now: int) -> bool:
        """Whether this token was used and has not expired yet."""


class UsedTokenWrites(UsedTokenReads, Protocol):
    def use(self, token_key: str, issuer: str, expires_at: int, now: int) -> bool:
        """Remember a token until ``expires_at``; False if it was already used (a replay).
        Also forgets tokens expired before ``now``."""


class EnrolmentCodeRow(NamedTuple):
    id: str
    secret_sha256: str
    username: str
    created: int
    expires_at: int
    used_at: int | None
    event_id: int


class EnrolmentCodeReads(Protocol):
    def get(self, code_id: str) -> EnrolmentCodeRow | None: ...


class EnrolmentCodeWrites(EnrolmentCodeReads, Protocol):
    def insert(self, code_id: str, secret_sha256: str, username: str, created: int, expires_at: int,
               event_id: int) -> None:
        """A new, unused code (its ``enrolment_code_created`` event is ``event_id``)."""
    def mark_used(self, code_id: str, used_at: int) -> bool:
        """Use the code; False if it was used already."""


class JoinTokenReads(Protocol):
    def get(self, token_id: str) -> JoinTokenRow | None: ...


class JoinTokenWrites(JoinTokenReads, Protocol):
    def insert(self, token_id: str, secret_sha256: str, host: str, role: str, created: int, expires_at: int,
               event_id: int) -> None:
        """A new, unused token (its ``host_token_created`` event is ``event_id``)."""
    def mark_used(self, token_id: str, used_at: int, serial: int) -> bool:
        """Use the token for the certificate ``serial``; False if it was used already."""


# -- the unit of work and the store ----------------------------------------------------------


class UnitOfWork(ABC):
    """One write transaction holding the chain lock (see the module docstring)."""

    users: UserWrites
    throttle: ThrottleWrites
    revocations: RevocationWrites
    requests: RequestWrites
    certificates: CertificateReads
    tokens: UsedTokenWrites
    join_tokens: JoinTokenWrites
    enrolment_codes: EnrolmentCodeWrites

    @abstractmethod
    def append(self, kind: str, data: dict[str, Any], *, user: str | None = None, role: str | None = None,
               serial: int | None = None, key_id: str | None = None, source: str | None = None) -> int:
        """Append one event to the chain; return its id."""

    @abstractmethod
    def next_serial(self) -> int:
        """The next certificate serial: unique, never 0 (KRLs ignore serial 0)."""

    @abstractmethod
    def add_certificate(self, *, serial: int, key_id: str, user: str, role: str, key_fingerprint: str,
                        ca_fingerprint: str, valid_after: int, valid_before: int, event_id: int) -> None:
        """Record an issued certificate (same transaction as its event)."""

    # Checks the issuance path and the service gate make under the chain lock.

    def is_revoked(self, kind: str, value: str) -> bool:
        """Whether (kind, value) is revoked, e.g. ``("key", fingerprint)`` or ``("ca_key", fingerprint)``."""
        return self.revocations.is_revoked(kind, value)

    def user_enabled(self, name: str) -> bool | None:
        """True if ``name`` is an enabled user, False if disabled, None if unknown."""
        row = self.users.get(name)
        return None if row is None else not row.disabled

    def key_enrolled(self, name: str, fingerprint: str) -> bool:
        """Whether the key with this fingerprint is enrolled for ``name``."""
        return self.users.key_owner(fingerprint) == name

    def issuance_gate(self, user: str, login_key: str | None,
                      checks: Sequence[tuple[str, str]]) -> IssuanceGate:
        """Every read the issuance path makes under the chain lock before it signs, at once: is
        ``user`` enabled, who owns ``login_key``, which of the (kind, value) ``checks`` are revoked,
        and the next serial. The same answers as :meth:`user_enabled`, ``users.key_owner``,
        :meth:`is_revoked` and :meth:`next_serial` one by one (this reference does exactly that; a
        backend may read them in one statement, tests/test_store.py holds both to one answer)."""
        return IssuanceGate(
            enabled=self.user_enabled(user),
            login_key_owner=None if login_key is None else self.users.key_owner(login_key),
            revoked=frozenset(c for c in checks if self.is_revoked(*c)),
            next_serial=self.next_serial(),
        )

    _head: tuple[int, str] | None

    def _gate_in_one_statement(self, user: str, login_key: str | None, checks: Sequence[tuple[str, str]],
                               run: Callable[[list[Any]], Sequence[Any]]) -> IssuanceGate:
        """A backend's one-statement :meth:`issuance_gate`: ``run(args)`` runs ``schema.gate_sql``
        with ``args`` and returns its one row (disabled, login key's owner, top serial, chain head id
        and hash, then one hit flag per check); the chain head is kept for the event this
        transaction appends next."""
        args: list[Any] = [user, login_key]
        for pair in checks:
            args += pair
        row = run(args)
        disabled, owner, top, head_id, head_hash = row[:5]
        if self._head is None:
            self._head = (head_id, head_hash) if head_id is not None else (0, GENESIS)
        return IssuanceGate(
            enabled=None if disabled is None else not disabled,
            login_key_owner=owner,
            revoked=frozenset(c for c, hit in zip(checks, row[5:]) if hit),
            next_serial=(top or 0) + 1,
        )


class Store(ABC):
    """One CA database: the event log (:class:`EventReads`) and the repositories beside it."""

    path: Path | str
    clock: Callable[[], float]
    users: UserReads
    throttle: ThrottleReads
    revocations: RevocationReads
    requests: RequestReads
    certificates: CertificateReads
    tokens: UsedTokenReads
    join_tokens: JoinTokenReads
    enrolment_codes: EnrolmentCodeReads

    # The thread whose group() is open, if any (see group()).
    _group_thread: int | None = None
    _savepoints = 0

    @contextmanager
    def transaction(self) -> Iterator[UnitOfWork]:
        """One durable write transaction holding the chain lock; inside :meth:`group` (on the
        group's thread), a savepoint of the group's transaction."""
        if self._group_thread == threading.get_ident():
            # Named by depth, not by count: the same few statements every time, so the driver's
            # prepared-statement cache serves them (a new name per issuance was a new statement).
            self._savepoints += 1
            try:
                with self._savepoint(f"uow{self._savepoints}"):
                    yield self._unit_of_work()
            finally:
                self._savepoints -= 1
        else:
            with self._durable():
                yield self._unit_of_work()

    @contextmanager
    def group(self) -> Iterator[None]:
        """Group commit (docs/security.md rule 64): every :meth:`transaction` this thread opens
        inside is a savepoint of one durable transaction, committed (with one fsync) when the
        block ends. A transaction that raises rolls back to its savepoint only; the others keep
        their rows. Nothing written inside is durable, or may be handed out, before the block
        has exited without an error: if the commit fails, every row of the group is gone."""
        if self._group_thread is not None:
            raise RuntimeError("group() is not reentrant")
        with self._durable():
            self._group_thread = threading.get_ident()
            try:
                yield
            finally:
                self._group_thread = None

    @abstractmethod
    def _durable(self) -> AbstractContextManager[None]:
        """BEGIN (taking the chain lock) ... durable COMMIT; ROLLBACK if anything raises."""

    @abstractmethod
    def _savepoint(self, name: str) -> AbstractContextManager[None]:
        """SAVEPOINT name ... RELEASE; ROLLBACK TO it if anything raises (inside _durable)."""

    @abstractmethod
    def _unit_of_work(self) -> UnitOfWork: ...

    @abstractmethod
    def close(self) -> None: ...

    def record(self, kind: str, data: dict[str, Any], **columns: Any) -> int:
        """Append one event in its own transaction; return its id once committed."""
        with self.transaction() as tx:
            return tx.append(kind, data, **columns)

    # -- replicas: which CA keys serve this database ------------------------------------

    def ca_keys(self) -> list[str] | None:
        """The CA key fingerprints recorded for this database; None where the backend keeps
        none (SQLite: one state directory is one CA, its keyring beside its file)."""
        return None

    def record_ca_keys(self, fingerprints: Sequence[str]) -> None:
        """Record CA key fingerprints that may serve this database (no-op where not kept)."""

    def server_time(self) -> float | None:
        """The database server's clock (seconds since the epoch), for ``iast-ca doctor``'s skew
        check; None where the database is a file this machine's clock stamps (SQLite)."""
        return None

    # -- event reads (each backend implements these) ----------------------------------

    @abstractmethod
    def get(self, event_id: int) -> Event | None: ...

    @abstractmethod
    def issued_by_serial(self, serial: int) -> Event | None: ...

    @abstractmethod
    def events(self, *, user: str | None = None, role: str | None = None, kind: str | None = None,
               serial: int | None = None, since: str | None = None, until: str | None = None,
               limit: int | None = 100) -> list[Event]: ...

    @abstractmethod
    def stream(self, after: int = 0, batch: int = 10_000) -> Iterator[Event]: ...

    @abstractmethod
    def head(self) -> tuple[int, str]: ...

    @abstractmethod
    def row_batches(self, upto: int | None = None, batch: int = 10_000) -> Iterator[Sequence[tuple]]: ...

    @abstractmethod
    def canonical_row(self, event_id: int) -> tuple | None: ...

    @abstractmethod
    def request_event_ids(self, request_id: str) -> list[int]: ...

    # -- verification, the same for every backend (pure code over the rows) ---------------

    def verify(self, *, checkpoint_count: int | None = None, checkpoint_head: str | None = None,
               checkpoint_root: str | None = None, progress: Callable[[int], None] | None = None) -> VerifyReport:
        """Walk the whole chain; raise :class:`ca.errors.ChainBroken` naming the first bad event
        (see :func:`ca.audit.verify.verify_rows`)."""
        return verify_rows(self.row_batches(), checkpoint_count=checkpoint_count, checkpoint_head=checkpoint_head,
                           checkpoint_root=checkpoint_root, progress=progress)

    def verify_derived(self) -> list[Difference]:
        """Rebuild users, user keys, disabled flags, revocations, certificates, requests and votes
        from the events and return every row where a table disagrees (docs/security.md,
        "Derived tables are checked against the chain"). Memory: everything but the certificates,
        which are merged with the table in serial order."""
        state, diffs = Derived(), []
        for e in sorted((e for k in DERIVED_KINDS for e in self.events(kind=k, limit=None)), key=lambda e: e.id):
            apply_event(state, e)
        compare_certificates(self.issued_certificate_rows(), iter(self.certificates.rows()), diffs.append)
        _compare(diffs, "users", state.users, {u.name: bool(u.disabled) for u in self.users.all()},
                 lambda name, want, got: f"disabled is {int(got)}, the events say {int(want)}",
                 "enrolled by the events", "has no user_added event")
        _compare(diffs, "user_keys", state.keys, dict(self.users.all_keys()),
                 lambda fp, want, got: f"belongs to {got}, the events say {want}",
                 "enrolled by the events", "was never enrolled by an event")
        stored = {(r[1], r[2]) for r in self.revocations.all()}
        for kind, value in sorted(state.revocations - stored):
            diffs.append(Difference("revocations", f"{kind} {value}", "missing (revoked by the events)"))
        for kind, value in sorted(stored - state.revocations):
            if not (kind == "serial" and state.revocations_partial):
                diffs.append(Difference("revocations", f"{kind} {value}", "has no revoked event"))
        requests = {r.id: (r.status, r.used_serial) for r in self.requests.list(limit=None)}
        _compare(diffs, "requests", state.requests, requests,
                 lambda rid, want, got: f"is {got[0]} (serial {got[1]}), the events say {want[0]} (serial {want[1]})",
                 "created by the events", "has no request_created event")
        votes = set(self.requests.all_votes())
        for rid, who, what in sorted(state.votes - votes):
            diffs.append(Difference("approvals", f"{rid} {who}", f"missing {what} vote"))
        for rid, who, what in sorted(votes - state.votes):
            diffs.append(Difference("approvals", f"{rid} {who}", f"{what} vote has no event"))
        return diffs

    def issued_certificate_rows(self) -> Iterator[tuple]:
        """The certificate row each ``issued`` event implies (:func:`ca.audit.derive.certificate_of`),
        in event order (which is serial order: both are taken under the chain lock). A backend may
        compute it in SQL (SQLite does); this is the reference."""
        return (certificate_of(e) for e in self.stream() if e.kind in CERTIFICATE_KINDS)

    def revocations_disagree(self) -> list[Difference]:
        """The cheap check before a KRL is built: the revocations table against the ``revoked``
        events (through the kind index), and each certificate the KRL would name through a user
        or a serial against its ``issued`` event. Empty when they agree."""
        derived: set[tuple[str, str]] = set()
        partial = False
        for e in self.events(kind="revoked", limit=None):
            rows, cut = revocations_of(e)
            derived |= rows
            partial |= cut
        rows = self.revocations.all()
        stored = {(r[1], r[2]) for r in rows}
        diffs = [Difference("revocations", f"{k} {v}", "missing (revoked by the events)")
                 for k, v in sorted(derived - stored)]
        diffs += [Difference("revocations", f"{k} {v}", "has no revoked event")
                  for k, v in sorted(stored - derived) if not (k == "serial" and partial)]
        for kind, value in sorted(derived):
            if kind == "user":
                issued = {e.serial for k in CERTIFICATE_KINDS for e in self.events(kind=k, user=value, limit=None)}
                have = set(self.certificates.unexpired_serials(cutoff=-(1 << 62), username=value))
                diffs += [Difference("certificates", f"serial {s}", f"of revoked user {value} is missing")
                          for s in sorted(issued - have)]
            elif kind == "serial" and self.issued_by_serial(int(value)) is not None \
                    and self.certificates.by_serial(int(value)) is None:
                diffs.append(Difference("certificates", f"serial {value}", "revoked, issued, and missing"))
        return diffs

    def leaf_hashes(self, upto: int) -> Iterator[bytes]:
        """The Merkle leaf hashes of events 1..``upto``, in order (raises if any is missing)."""
        return leaf_hashes(self.row_batches(upto), upto)

    def canonical_of(self, event_id: int) -> bytes | None:
        """The exact bytes event ``event_id`` contributes to the chain and the tree."""
        row = self.canonical_row(event_id)
        return canonical(row) if row else None

    def request_events(self, request_id: str) -> list[Event]:
        """Every event about ``request_id``, oldest first."""
        return [e for e in (self.get(i) for i in self.request_event_ids(request_id)) if e is not None]


def _compare(diffs: list[Difference], table: str, want: dict, got: dict, changed: Callable[[Any, Any, Any], str],
             missing: str, extra: str) -> None:
    for key in sorted(set(want) | set(got), key=str):
        if key not in got:
            diffs.append(Difference(table, str(key), f"missing ({missing})"))
        elif key not in want:
            diffs.append(Difference(table, str(key), extra))
        elif want[key] != got[key]:
            diffs.append(Difference(table, str(key), changed(key, want[key], got[key])))


__all__ = [
    "CertificateReads", "CertificateRow", "IssuanceGate", "EnrolmentCodeReads", "EnrolmentCodeRow", "EnrolmentCodeWrites", "EventReads", "JoinTokenReads", "JoinTokenRow", "JoinTokenWrites",
    "RequestReads", "RequestRow", "RequestWrites",
    "RevocationReads", "RevocationWrites", "Store", "ThrottleReads", "ThrottleWrites", "UnitOfWork",
    "UsedTokenReads", "UsedTokenWrites",
    "UserReads", "UserRow", "UserWrites", "VerifyReport",
]


class EventRowsStore(Store):
    """A :class:`Store` whose event reads are those of one event-rows repository (``self._events``):
    both backends keep the events that way, so the plain delegations are written once here."""

    _events: Any

    def get(self, event_id: int) -> Event | None:
        return self._events.get(event_id)

    def issued_by_serial(self, serial: int) -> Event | None:
        return self._events.issued_by_serial(serial)

    def events(self, *, user: str | None = None, role: str | None = None, kind: str | None = None,
               serial: int | None = None, since: str | None = None, until: str | None = None,
               limit: int | None = 100) -> list[Event]:
        return self._events.list(user=user, role=role, kind=kind, serial=serial, since=since, until=until,
                                 limit=limit)

    def stream(self, after: int = 0, batch: int = 10_000) -> Iterator[Event]:
        return self._events.stream(after, batch)

    def head(self) -> tuple[int, str]:
        return self._events.head()

    def row_batches(self, upto: int | None = None, batch: int = 10_000) -> Iterator[Sequence[tuple]]:
        return self._events.batches(upto, batch)
