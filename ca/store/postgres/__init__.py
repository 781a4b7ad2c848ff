"""The PostgreSQL backend: one database shared by any number of replicas.

Every write transaction takes ``pg_advisory_xact_lock(schema.PG_CHAIN_LOCK)``
first (the chain lock of ca.store.base): event ids, the chain head and
certificate serials are read under it, in the same transaction as the rows
written, and ``synchronous_commit`` is on for the session, so a certificate is
handed out only after the COMMIT holding its event is durable
(docs/security.md rule 10). Parameters are bound by the server (psycopg 3);
no value is formatted into SQL.

The URL is never shown with its password (:func:`connection.redact`); the
password comes from the URL, a libpq ``passfile`` or ``PGPASSWORD``.
May import: ca core, ca.audit, ca.store.base and ca.store.schema.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any

from ca.audit.chain import chain_hash, encode_data, iso
from ca.errors import AuditError
from ca.store import schema
from ca.store.base import EventRowsStore, IssuanceGate, UnitOfWork
from ca.store.postgres.connection import CONNECT_TIMEOUT, Connection, has_table, migrate, redact, schema_version
from ca.store.postgres.events import Certificates, EventRows
from ca.store.postgres.enrolment_codes import EnrolmentCodes
from ca.store.postgres.join_tokens import JoinTokens
from ca.store.postgres.requests import Requests
from ca.store.postgres.review import ReviewQueries
from ca.store.postgres.revocations import Revocations
from ca.store.postgres.throttle import ThrottleCounters
from ca.store.postgres.tokens import UsedTokens
from ca.store.postgres.users import Users

SCHEMA_VERSION = schema.SCHEMA_VERSION


class PostgresUnitOfWork(UnitOfWork):
    """Writes inside one transaction that holds the chain's advisory lock."""

    def __init__(self, store: PostgresStore):
        self._store = store
        self._events = store._events
        self.users = store.users
        self.throttle = store.throttle
        self.revocations = store.revocations
        self.requests = store.requests
        self.certificates = store.certificates
        self.tokens = store.tokens
        self.join_tokens = store.join_tokens
        self.enrolment_codes = store.enrolment_codes
        self._head: tuple[int, str] | None = None

    def next_serial(self) -> int:
        return self.certificates.next_serial()

    def issuance_gate(self, user: str, login_key: str | None,
                      checks: Sequence[tuple[str, str]]) -> IssuanceGate:
        """As :meth:`UnitOfWork.issuance_gate`, in one statement (one round trip to the server
        instead of five or six); it also reads the chain head the issued event will follow."""
        return self._gate_in_one_statement(user, login_key, checks, lambda args: self._store.conn.one(
            schema.gate_sql(len(checks), "%s"), args, what="read the audit log"))

    def append(self, kind: str, data: dict[str, Any], *, user: str | None = None, role: str | None = None,
               serial: int | None = None, key_id: str | None = None, source: str | None = None) -> int:
        last_id, last_hash = self._head if self._head is not None else self._events.head()
        event_id = last_id + 1
        row = (event_id, iso(self._store.clock()), kind, user, role, serial, key_id, source, encode_data(data))
        digest = chain_hash(last_hash, row)
        self._events.insert(row + (last_hash, digest))
        self._head = (event_id, digest)
        return event_id

    def add_certificate(self, *, serial: int, key_id: str, user: str, role: str, key_fingerprint: str,
                        ca_fingerprint: str, valid_after: int, valid_before: int, event_id: int) -> None:
        self.certificates.insert(
            (serial, key_id, user, role, key_fingerprint, ca_fingerprint, valid_after, valid_before, event_id))


class PostgresStore(EventRowsStore):
    """The CA database in PostgreSQL at ``url`` (``path`` is the URL without its password).

    ``migrate``: bring an older schema to the current one (``iast-ca init`` and
    ``db migrate`` do; ``serve`` opens with ``migrate=False`` and refuses a schema
    it does not know, naming the command). A new, empty database always gets the
    current schema.
    """

    def __init__(self, url: str, *, clock: Callable[[], float] = time.time, migrate_schema: bool = True,
                 connect_timeout: float = CONNECT_TIMEOUT):
        self.url = url
        self.path = redact(url)
        self.clock = clock
        self.conn = Connection(url, connect_timeout=connect_timeout)
        try:
            found = schema_version(self.conn)
            migrate(self.conn, apply=migrate_schema or found == 0)
        except BaseException:
            self.conn.close()
            raise
        self._events = EventRows(self.conn)
        self.certificates = Certificates(self.conn)
        self.users = Users(self.conn)
        self.throttle = ThrottleCounters(self.conn)
        self.revocations = Revocations(self.conn)
        self.requests = Requests(self.conn)
        self.tokens = UsedTokens(self.conn)
        self.join_tokens = JoinTokens(self.conn)
        self.enrolment_codes = EnrolmentCodes(self.conn)
        self.review = ReviewQueries(self.conn)

    def close(self) -> None:
        self.conn.close()

    def _unit_of_work(self) -> PostgresUnitOfWork:
        return PostgresUnitOfWork(self)

    def _durable(self) -> AbstractContextManager[None]:
        """One durable write: BEGIN, the chain lock, ..., COMMIT; rolled back if anything raises."""
        return self.conn.transaction()

    def _savepoint(self, name: str) -> AbstractContextManager[None]:
        return self.conn.savepoint(name)

    # -- event reads -----------------------------------------------------------------

    def canonical_row(self, event_id: int) -> tuple | None:
        row = self._events.row(event_id)
        return tuple(row) if row else None

    def request_event_ids(self, request_id: str) -> list[int]:
        return self._events.request_event_ids(request_id)

    # -- on-demand tables ----------------------------------------------------------------

    def has_logins(self) -> bool:
        return has_table(self.conn, "logins")

    def ensure_logins(self) -> None:
        self.review.ensure_logins_schema()

    # -- replicas: the CA keys this database is served with ------------------------------

    def ca_keys(self) -> list[str]:
        """The CA key fingerprints recorded for this database (empty: none recorded yet)."""
        return [fp for (fp,) in self.conn.all("SELECT fingerprint FROM ca_keys ORDER BY fingerprint",
                                              what="read the CA keys of")]

    def record_ca_keys(self, fingerprints: Sequence[str]) -> None:
        """Record these fingerprints (the first replica's keyring, or a key added by rotation)."""
        with self.conn.transaction():
            for fp in fingerprints:
                self.conn.execute("INSERT INTO ca_keys (fingerprint, added) VALUES (%s, %s)"
                                  " ON CONFLICT (fingerprint) DO NOTHING", (fp, iso(self.clock())),
                                  what="record the CA keys in")


    def server_time(self) -> float:
        """The PostgreSQL server's clock: replicas on several machines stamp certificates with
        their own clocks, so each one's skew against the shared database is worth a check."""
        row = self.conn.one("SELECT extract(epoch FROM clock_timestamp())::float8", what="read the clock of")
        return float(row[0])


def is_empty(store: PostgresStore) -> bool:
    """Whether the database holds no event (what ``db copy`` and ``init`` need)."""
    return store.head()[0] == 0


__all__ = ["AuditError", "PostgresStore", "PostgresUnitOfWork", "SCHEMA_VERSION", "is_empty"]
