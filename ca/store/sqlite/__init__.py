"""The SQLite backend: one ``ca.db`` file, WAL, ``synchronous=FULL``, ``BEGIN IMMEDIATE`` for every write.

Every SQL string of the CA (apart from the review queries in ``review.py``) is in this package.
May import: ca core, ca.audit, ca.store.base and ca.store.schema.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlite_utils

from ca.audit.chain import chain_hash, encode_data, iso
from ca.errors import AuditError
from ca.store import schema
from ca.store.base import EventRowsStore, IssuanceGate, UnitOfWork
from ca.store.sqlite.connection import connect, ensure_tables, has_table, migrate
from ca.store.sqlite.events import Certificates, EventRows
from ca.store.sqlite.enrolment_codes import EnrolmentCodes
from ca.store.sqlite.join_tokens import JoinTokens
from ca.store.sqlite.requests import Requests
from ca.store.sqlite.review import ReviewQueries
from ca.store.sqlite.revocations import Revocations
from ca.store.sqlite.throttle import ThrottleCounters
from ca.store.sqlite.tokens import UsedTokens
from ca.store.sqlite.users import Users

SCHEMA_VERSION = schema.SCHEMA_VERSION


class SQLiteUnitOfWork(UnitOfWork):
    """Writes inside one ``BEGIN IMMEDIATE`` transaction (see :meth:`SQLiteStore.transaction`).

    The database write lock is the chain lock: the head read by the first
    :meth:`append` and the serial read by :meth:`next_serial` cannot change
    until COMMIT.
    """

    def __init__(self, store: SQLiteStore):
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

    @property
    def conn(self) -> sqlite3.Connection:
        """Deprecated: the connection, for the callers outside the store not switched yet
        (ca.issuance.authority, ca.service.server). Use the named methods instead."""
        return self._store.conn

    def next_serial(self) -> int:
        return self.certificates.next_serial()

    def issuance_gate(self, user: str, login_key: str | None,
                      checks: Sequence[tuple[str, str]]) -> IssuanceGate:
        """As :meth:`UnitOfWork.issuance_gate`, in one statement (one round through the driver
        instead of five or six); it also reads the chain head the issued event will follow."""
        def run(args: list[Any]) -> Sequence[Any]:
            try:
                return self._store.conn.execute(schema.gate_sql(len(checks), "?"), args).fetchone()
            except sqlite3.Error as e:
                raise AuditError(f"cannot read the issuance gate from {self._store.path}: {e}") from None

        return self._gate_in_one_statement(user, login_key, checks, run)

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


class SQLiteStore(EventRowsStore):
    """The CA database of one state directory, in SQLite.

    ``conn`` is the connection (for tests and tools; no module outside
    ``ca.store`` uses it). sqlite-utils serves the plain table reads
    (``rows_where``) through ``db``.
    """

    def __init__(self, path: str | Path, *, busy_timeout: float = 10.0, clock: Callable[[], float] = time.time):
        self.path = Path(path)
        self.clock = clock
        try:
            self.conn = connect(self.path, busy_timeout)
            migrate(self.conn, self.path)
        except sqlite3.Error as e:
            raise AuditError(f"cannot open audit database {self.path}: {e}") from None
        self.db = sqlite_utils.Database(self.conn)
        self._events = EventRows(self.conn)
        self.certificates = Certificates(self.conn)
        self.users = Users(self.conn, self.path)
        self.throttle = ThrottleCounters(self.conn)
        self.revocations = Revocations(self.conn, self.db)
        self.requests = Requests(self.conn, self.path)
        self.join_tokens = JoinTokens(self.conn)
        self.enrolment_codes = EnrolmentCodes(self.conn)
        self.review = ReviewQueries(self.conn)
        self.tokens = UsedTokens(self.conn)

    def close(self) -> None:
        self.conn.close()

    def _unit_of_work(self) -> SQLiteUnitOfWork:
        return SQLiteUnitOfWork(self)

    @contextmanager
    def _durable(self) -> Iterator[None]:
        """One durable write: ``BEGIN IMMEDIATE`` ... ``COMMIT``.

        If anything inside raises, or the commit itself fails, the
        transaction is rolled back and the error propagates (as
        :class:`AuditError` for database errors): the caller must not hand
        out anything the transaction was meant to record.
        """
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            raise AuditError(f"cannot write the audit log {self.path}: {e}") from None
        try:
            yield
            self.conn.execute("COMMIT")
        except BaseException as e:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            if isinstance(e, sqlite3.Error):
                raise AuditError(f"cannot commit to the audit log {self.path}: {e}") from None
            raise

    @contextmanager
    def _savepoint(self, name: str) -> Iterator[None]:
        try:
            self.conn.execute(f"SAVEPOINT {name}")
        except sqlite3.Error as e:
            raise AuditError(f"cannot write the audit log {self.path}: {e}") from None
        try:
            yield
            self.conn.execute(f"RELEASE {name}")
        except BaseException as e:
            try:
                self.conn.execute(f"ROLLBACK TO {name}")
                self.conn.execute(f"RELEASE {name}")
            except sqlite3.Error:
                pass  # the whole transaction is gone: the group's COMMIT fails and says so
            if isinstance(e, sqlite3.Error):
                raise AuditError(f"cannot write the audit log {self.path}: {e}") from None
            raise

    # -- event reads -----------------------------------------------------------------

    def canonical_row(self, event_id: int) -> tuple | None:
        return self._events.row(event_id)

    def issued_certificate_rows(self) -> Iterator[tuple]:
        """As :meth:`Store.issued_certificate_rows`, with the data fields read by SQLite's JSON functions."""
        return self._events.issued_certificate_rows()

    def request_event_ids(self, request_id: str) -> list[int]:
        try:
            return self._events.request_event_ids(request_id)
        except sqlite3.Error as e:
            raise AuditError(f"cannot read the audit log {self.path}: {e}") from None

    # -- on-demand tables ----------------------------------------------------------------

    def has_logins(self) -> bool:
        """Whether ``correlate`` ever created the ``logins`` table in this database."""
        return has_table(self.conn, "logins")

    def ensure_logins(self) -> None:
        """Create the ``logins`` table if it is missing (writes nothing when it exists)."""
        ensure_tables(self.conn, schema.LOGINS_OBJECTS, schema.LOGINS, "logins")


__all__ = ["SCHEMA_VERSION", "SQLiteStore", "SQLiteUnitOfWork", "ensure_tables"]
