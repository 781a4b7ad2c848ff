"""The PostgreSQL connection: one libpq session, opened durable, reopened after an outage, errors wrapped.

Every statement of the package goes through :meth:`Connection.execute` with
server-side parameters (psycopg 3 binds ``%s`` on the server; no value is
ever formatted into SQL text). A connection lost to an outage is closed and
reopened by the next statement, so a replica serves again as soon as the
database answers (docs/security.md, the outage rule); a statement that fails
because the database is unreachable raises :class:`ca.errors.AuditUnavailable`
at once, other database errors :class:`ca.errors.AuditError`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import conninfo

from ca.errors import AuditError, AuditUnavailable
from ca.store import schema

# Seconds to wait for a connection before calling the database unreachable (libpq connect_timeout).
CONNECT_TIMEOUT = 5


def redact(url: str) -> str:
    """The database URL as it may be shown: no password (``postgresql://USER@HOST:PORT/DB``)."""
    try:
        params = conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "postgresql://<unparsable URL>"
    host = params.get("host", "")
    if host.startswith("/"):
        host = host.replace("/", "%2F")
    port = f":{params['port']}" if params.get("port") else ""
    user = f"{params['user']}@" if params.get("user") else ""
    return f"postgresql://{user}{host}{port}/{params.get('dbname', '')}"


def is_url(location: Any) -> bool:
    return isinstance(location, str) and location.startswith(("postgresql://", "postgres://"))


def _unavailable(e: psycopg.Error) -> bool:
    """Whether ``e`` means the database could not be reached (rather than refused a statement)."""
    if isinstance(e, psycopg.OperationalError):
        return True
    sqlstate = getattr(e, "sqlstate", None) or ""
    # 08: connection exception; 57P: operator intervention (shutdown, admin_shutdown, cannot_connect_now).
    return sqlstate.startswith(("08", "57P"))


def first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


class Connection:
    """One PostgreSQL session of one store (one thread uses it, as with SQLite)."""

    def __init__(self, url: str, *, connect_timeout: float = CONNECT_TIMEOUT):
        self.url = url
        self.shown = redact(url)
        self.connect_timeout = connect_timeout
        self._conn: psycopg.Connection | None = None
        self._lock = threading.RLock()
        self.in_transaction = False

    # -- the session -------------------------------------------------------------------

    def _open(self) -> psycopg.Connection:
        try:
            conn = psycopg.connect(self.url, autocommit=True, connect_timeout=max(1, int(self.connect_timeout)),
                                   application_name="iast-ca")
        except psycopg.Error as e:
            raise AuditUnavailable(f"the audit database {self.shown} is unavailable: {first_line(e)}") from None
        try:
            # Durable before it returns (ca.store.base): whatever the server's default says.
            conn.execute("SET synchronous_commit = on")
            # Byte-wise timestamps and no surprises from a server's settings.
            conn.execute("SET TIME ZONE 'UTC'")
        except psycopg.Error as e:
            conn.close()
            raise AuditUnavailable(f"the audit database {self.shown} is unavailable: {first_line(e)}") from None
        return conn

    @property
    def raw(self) -> psycopg.Connection:
        """The open session (reopened if an outage closed it)."""
        if self._conn is None or self._conn.closed or self._conn.broken:
            if self.in_transaction:
                # Never carry on a transaction in a new session: its first statements are gone.
                raise AuditUnavailable(f"the audit database {self.shown} went away during a transaction")
            if self._conn is not None:
                self._conn.close()
            self._conn = self._open()
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _fail(self, e: psycopg.Error, what: str) -> AuditError:
        if _unavailable(e):
            # Drop the session: the next statement opens a new one.
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            return AuditUnavailable(f"the audit database {self.shown} is unavailable: {first_line(e)}")
        return AuditError(f"cannot {what} {self.shown}: {first_line(e)}")

    # -- statements ---------------------------------------------------------------------

    def execute(self, sql: str, args: Sequence[Any] = (), *, what: str = "use the audit database") -> psycopg.Cursor:
        """Run one statement (parameters bound by the server); the cursor holds its rows."""
        with self._lock:
            fresh = self._conn is None or self._conn.closed or self._conn.broken
            try:
                return self.raw.execute(sql, tuple(args))
            except psycopg.Error as e:
                if fresh or self.in_transaction or not _unavailable(e):
                    raise self._fail(e, what) from None
                # The session died while idle (a database restart, a failover): outside a
                # transaction a statement is a read or a BEGIN, so it is run once more on a new
                # session instead of failing the first request after the database came back.
                self._fail(e, what)
            try:
                return self.raw.execute(sql, tuple(args))
            except psycopg.Error as e:
                raise self._fail(e, what) from None

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]], *, what: str = "write the audit database") -> int:
        with self._lock:
            try:
                cur = self.raw.cursor()
                cur.executemany(sql, [tuple(r) for r in rows])
                return cur.rowcount
            except psycopg.Error as e:
                raise self._fail(e, what) from None

    def one(self, sql: str, args: Sequence[Any] = (), **kw: Any) -> tuple | None:
        return self.execute(sql, args, **kw).fetchone()

    def all(self, sql: str, args: Sequence[Any] = (), **kw: Any) -> list[tuple]:
        return self.execute(sql, args, **kw).fetchall()

    @contextmanager
    def transaction(self, *, lock: int | None = schema.PG_CHAIN_LOCK) -> Iterator[None]:
        """BEGIN; ``pg_advisory_xact_lock(lock)``; ... COMMIT (ROLLBACK on any error).

        The advisory lock is the chain lock (ca.store.base): it is released
        by the COMMIT or ROLLBACK, never held across transactions, and every
        replica on the database waits for it before reading the chain head.
        """
        with self._lock:
            self.execute("BEGIN", what="write the audit log")
            self.in_transaction = True
            try:
                if lock is not None:
                    self.execute("SELECT pg_advisory_xact_lock(%s::bigint)", (lock,), what="write the audit log")
                yield
                self.execute("COMMIT", what="commit to the audit log")
            except BaseException:
                self._rollback()
                raise
            finally:
                self.in_transaction = False

    @contextmanager
    def savepoint(self, name: str) -> Iterator[None]:
        """SAVEPOINT name ... RELEASE, inside :meth:`transaction`; ROLLBACK TO it if anything raises."""
        with self._lock:
            self.execute(f"SAVEPOINT {name}", what="write the audit log")
            try:
                yield
                self.execute(f"RELEASE SAVEPOINT {name}", what="write the audit log")
            except BaseException:
                try:
                    self.execute(f"ROLLBACK TO SAVEPOINT {name}", what="write the audit log")
                    self.execute(f"RELEASE SAVEPOINT {name}", what="write the audit log")
                except AuditError:
                    pass  # the transaction is gone: the group's COMMIT fails and says so
                raise

    def _rollback(self) -> None:
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            return
        try:
            conn.execute("ROLLBACK")
        except psycopg.Error:
            conn.close()
            self._conn = None


@contextmanager
def reading(what: str) -> Iterator[None]:
    """Kept for symmetry with the SQLite package: reads raise AuditError through Connection.execute."""
    yield


def server_version(conn: Connection) -> int:
    return conn.raw.info.server_version


def _version(conn: Connection) -> int:
    if conn.one("SELECT to_regclass('schema_meta')")[0] is None:
        # No version row: a new database, or (with an events table) not one this CA made.
        return -1 if conn.one("SELECT to_regclass('events')")[0] is not None else 0
    row = conn.one("SELECT version FROM schema_meta WHERE id = 1")
    return row[0] if row else 0


def schema_version(conn: Connection) -> int:
    """The schema version of the database (0: empty; -1: tables without a version)."""
    return _version(conn)


def migrate(conn: Connection, *, apply: bool = True) -> int:
    """Bring the database to :data:`schema.SCHEMA_VERSION` (when ``apply``); return the version found.

    Opening a current database writes nothing. Otherwise one transaction,
    holding the chain lock (so two replicas starting at once migrate once),
    runs the migrations after the version found *under the lock*.
    A newer schema than this iast-ca knows is refused; with ``apply`` False
    an older one is refused too, naming ``iast-ca db migrate``.
    """
    found = _version(conn)
    if found == schema.SCHEMA_VERSION:
        return found
    if found > schema.SCHEMA_VERSION:
        raise AuditError(f"{conn.shown} has schema version {found}; this iast-ca knows {schema.SCHEMA_VERSION}:"
                         " upgrade iast-ca")
    if found == -1:
        raise AuditError(f"{conn.shown} has tables but no iast-ca schema version; refusing to use it")
    if not apply:
        raise AuditError(f"{conn.shown} has schema version {found}; this iast-ca needs {schema.SCHEMA_VERSION}:"
                         " run 'iast-ca db migrate'")
    with conn.transaction():
        found = _version(conn)
        if found < schema.SCHEMA_VERSION:
            steps = schema.PG_CURRENT if found == 0 else tuple(
                s for v in range(found + 1, schema.SCHEMA_VERSION + 1) for s in schema.PG_MIGRATIONS[v])
            for statement in steps:
                conn.execute(statement, what="migrate the schema of")
            conn.execute("INSERT INTO schema_meta (id, version) VALUES (1, %s)"
                         " ON CONFLICT (id) DO UPDATE SET version = excluded.version", (schema.SCHEMA_VERSION,),
                         what="migrate the schema of")
    return found


def ensure_tables(conn: Connection, table: str, statements: Sequence[str], what: str) -> None:
    """Create tables created on demand (``schema.PG_LOGINS``) if missing; writes nothing when present."""
    if has_table(conn, table):
        return
    with conn.transaction():
        for statement in statements:
            conn.execute(statement, what=f"create the {what} tables in")


def has_table(conn: Connection, name: str) -> bool:
    return conn.one("SELECT to_regclass(%s)", (name,))[0] is not None
