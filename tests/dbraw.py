"""A plain connection to a test's CA database, SQLite or PostgreSQL, as a tool (or an attacker) would have.

``raw(location)`` takes what ``cfg.database_location`` gives (a file or a
``postgresql://`` URL) and returns an object with ``execute(sql, args)``
whose statements use ``?`` placeholders on both engines, and whose result has
``fetchone``/``fetchall``: the tests that inspect or tamper with rows run
unchanged on both backends.
"""

from __future__ import annotations

import sqlite3

from ca.store import is_database_url


class _PgRaw:
    def __init__(self, url: str):
        import psycopg

        self.conn = psycopg.connect(url, autocommit=True)

    def execute(self, sql: str, args=()):
        return self.conn.execute(sql.replace("?", "%s"), tuple(args))

    def drop_trigger(self, name: str, table: str) -> None:
        self.conn.execute(f"DROP TRIGGER IF EXISTS {name} ON {table}")

    def drop_foreign_keys(self) -> None:
        """What an attacker with the database would do before deleting events (SQLite's plain
        connection does not enforce foreign keys at all)."""
        self.conn.execute("ALTER TABLE certificates DROP CONSTRAINT IF EXISTS certificates_event_id_fkey")
        self.conn.execute("ALTER TABLE revocations DROP CONSTRAINT IF EXISTS revocations_event_id_fkey")

    def close(self) -> None:
        self.conn.close()


class _SqliteRaw:
    def __init__(self, path):
        self.conn = sqlite3.connect(path, isolation_level=None)

    def execute(self, sql: str, args=()):
        return self.conn.execute(sql, tuple(args))

    def drop_trigger(self, name: str, table: str) -> None:
        self.conn.execute(f"DROP TRIGGER IF EXISTS {name}")

    def drop_foreign_keys(self) -> None:
        pass  # a plain sqlite3 connection does not enforce them

    def close(self) -> None:
        self.conn.close()


def raw(location):
    return _PgRaw(location) if is_database_url(location) else _SqliteRaw(location)


def integrity_errors() -> tuple[type[BaseException], ...]:
    """What a refused statement raises on either engine (a trigger, a constraint)."""
    import psycopg

    return (sqlite3.DatabaseError, psycopg.Error)
