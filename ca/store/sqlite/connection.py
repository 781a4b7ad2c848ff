"""The SQLite connection: open it durable (WAL, synchronous=FULL), migrate the schema, wrap errors."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from ca.errors import AuditError
from ca.store import schema


def connect(path: Path, busy_timeout: float) -> sqlite3.Connection:
    """A connection as every writer needs it: WAL, ``synchronous=FULL``, foreign keys, a busy timeout."""
    # isolation_level=None: we issue BEGIN IMMEDIATE / COMMIT ourselves.
    conn = sqlite3.connect(path, isolation_level=None, timeout=busy_timeout, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


@contextmanager
def reading(what: str) -> Iterator[None]:
    """Turn a database error of a read into :class:`AuditError` ("cannot read WHAT: ...")."""
    try:
        yield
    except sqlite3.Error as e:
        raise AuditError(f"cannot read {what}: {e}") from None


def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}


def _run(conn: sqlite3.Connection, steps: Sequence) -> None:
    for step in steps:
        if isinstance(step, tuple):
            _, table, old, new = step
            if old in _columns(conn, table):
                conn.execute(f'ALTER TABLE {table} RENAME COLUMN "{old}" TO "{new}"')
        else:
            conn.execute(step)


def migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Bring the database to :data:`schema.SCHEMA_VERSION`; write nothing when it is there already.

    Opening a current database takes no write lock (and works on a
    read-only copy). Otherwise one ``BEGIN IMMEDIATE`` transaction runs the
    migrations after the version it finds *under the lock* (another process
    may have migrated meanwhile) and sets ``user_version``.
    """
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version == schema.SCHEMA_VERSION:
        return
    if version > schema.SCHEMA_VERSION:
        raise AuditError(f"{path} has schema version {version}; this iast-ca knows {schema.SCHEMA_VERSION}")
    conn.execute("BEGIN IMMEDIATE")
    try:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version < schema.SCHEMA_VERSION:
            if version == 0 and not _columns(conn, "events"):
                _run(conn, schema.CURRENT)  # a new database: the current schema as it is
            else:
                for v in range(version + 1, schema.SCHEMA_VERSION + 1):
                    _run(conn, schema.MIGRATIONS[v])
            conn.execute(f"PRAGMA user_version={schema.SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def ensure_tables(conn: sqlite3.Connection, objects: set[str] | frozenset[str], statements: Sequence[str],
                  what: str) -> None:
    """Create tables, indexes and triggers created on demand (``schema.LOGINS``) if any is missing.

    One ``BEGIN IMMEDIATE`` transaction; when every object in ``objects``
    exists already nothing is written, so opening a store takes no write
    lock (and works on a read-only copy of the database).
    """
    try:
        names = {r[0] for r in conn.execute(
            f"SELECT name FROM sqlite_master WHERE name IN ({', '.join('?' * len(objects))})", tuple(objects))}
        if names == set(objects):
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in statements:
                conn.execute(statement)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    except sqlite3.Error as e:
        raise AuditError(f"cannot create the {what} tables: {e}") from None


def has_table(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone() is not None
