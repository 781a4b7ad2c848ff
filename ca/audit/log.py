"""The audit log over the database: append, read and verify the hash-chained events (format: ``ca.audit.chain``)."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlite_utils

from ca.audit import merkle
from ca.audit.chain import GENESIS, canonical, chain_hash, encode_data, iso
from ca.errors import AuditError, ChainBroken
from ca.models import Event

SCHEMA_VERSION = 2  # 2: events(user, ts) for a user's events in a time window
_COLUMNS = ("id", "ts", "kind", "user", "role", "serial", "key_id", "source", "data", "prev_hash", "hash")


def ensure_tables(conn: sqlite3.Connection, objects: set[str], statements: list[str], what: str) -> None:
    """Create a module's tables, indexes and triggers in the audit database if any is missing.

    One ``BEGIN IMMEDIATE`` transaction; when every object in ``objects``
    exists already nothing is written, so opening a store takes no write
    lock (and works on a read-only copy of the database).
    """
    try:
        names = {r[0] for r in conn.execute(
            f"SELECT name FROM sqlite_master WHERE name IN ({', '.join('?' * len(objects))})", tuple(objects))}
        if names == objects:
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


def _event(row: tuple) -> Event:
    return Event(
        id=row[0], ts=row[1], kind=row[2], user=row[3], role=row[4], serial=row[5],
        key_id=row[6], source=row[7], data=json.loads(row[8]), prev_hash=row[9], hash=row[10],
    )


_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    ts TEXT NOT NULL,
    kind TEXT NOT NULL,
    user TEXT,
    role TEXT,
    serial INTEGER,
    key_id TEXT,
    source TEXT,
    data TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_user ON events(user, id);
CREATE INDEX IF NOT EXISTS events_kind ON events(kind, id);
CREATE INDEX IF NOT EXISTS events_role ON events(role, id);
CREATE INDEX IF NOT EXISTS events_serial ON events(serial) WHERE serial IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_ts ON events(ts);
CREATE INDEX IF NOT EXISTS events_user_ts ON events(user, ts);
-- Append-only: the database itself refuses edits. This stops accidents, not
-- an attacker with the file (who can drop the triggers): the hash chain and
-- signed checkpoints are what catch that.
CREATE TRIGGER IF NOT EXISTS events_no_update BEFORE UPDATE ON events
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS events_no_delete BEFORE DELETE ON events
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;

-- One row per issued certificate, written in the same transaction as its
-- 'issued' event. Derived data (it can be rebuilt from the log); it makes
-- serial allocation, revocation and lookups cheap.
CREATE TABLE IF NOT EXISTS certificates (
    serial INTEGER PRIMARY KEY,
    key_id TEXT NOT NULL UNIQUE,
    user TEXT NOT NULL,
    role TEXT NOT NULL,
    key_fingerprint TEXT NOT NULL,
    ca_fingerprint TEXT NOT NULL,
    valid_after INTEGER NOT NULL,
    valid_before INTEGER NOT NULL,
    event_id INTEGER NOT NULL REFERENCES events(id)
);
CREATE INDEX IF NOT EXISTS certificates_user ON certificates(user, valid_before);
CREATE INDEX IF NOT EXISTS certificates_key ON certificates(key_fingerprint);
"""


@dataclass(frozen=True)
class VerifyReport:
    """What ``verify`` checked: the number of events and the head of the chain."""

    count: int
    head: str
    checkpoint_count: int | None = None
    root: str = ""  # Merkle root over all events (hex)


class Transaction:
    """Writes inside one ``BEGIN IMMEDIATE`` transaction (see :meth:`AuditLog.transaction`)."""

    def __init__(self, log: AuditLog):
        self._log = log
        self._conn = log.conn
        row = self._conn.execute("SELECT id, hash FROM events ORDER BY id DESC LIMIT 1").fetchone()
        self._last_id, self._last_hash = row if row else (0, GENESIS)

    @property
    def conn(self) -> sqlite3.Connection:
        """The connection this transaction runs on (for reads that must see its snapshot)."""
        return self._conn

    def next_serial(self) -> int:
        """The next certificate serial: unique, never 0 (KRLs ignore serial 0)."""
        (top,) = self._conn.execute("SELECT max(serial) FROM certificates").fetchone()
        return (top or 0) + 1

    def append(
        self,
        kind: str,
        data: dict[str, Any],
        *,
        user: str | None = None,
        role: str | None = None,
        serial: int | None = None,
        key_id: str | None = None,
        source: str | None = None,
    ) -> int:
        """Append one event to the chain and return its id."""
        event_id = self._last_id + 1
        row = (event_id, iso(self._log.clock()), kind, user, role, serial, key_id, source, encode_data(data))
        digest = chain_hash(self._last_hash, row)
        self._conn.execute(
            f"INSERT INTO events ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})",
            row + (self._last_hash, digest),
        )
        self._last_id, self._last_hash = event_id, digest
        return event_id

    def add_certificate(self, *, serial: int, key_id: str, user: str, role: str, key_fingerprint: str,
                        ca_fingerprint: str, valid_after: int, valid_before: int, event_id: int) -> None:
        """Record an issued certificate (same transaction as its event)."""
        self._conn.execute(
            "INSERT INTO certificates VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (serial, key_id, user, role, key_fingerprint, ca_fingerprint, valid_after, valid_before, event_id),
        )


class AuditLog:
    """The audit database of one state directory."""

    def __init__(self, path: str | Path, *, busy_timeout: float = 10.0, clock: Callable[[], float] = time.time):
        self.path = Path(path)
        self.clock = clock
        try:
            # isolation_level=None: we issue BEGIN IMMEDIATE / COMMIT ourselves.
            self.conn = sqlite3.connect(self.path, isolation_level=None, timeout=busy_timeout,
                                        check_same_thread=False)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
            self.conn.execute("PRAGMA foreign_keys=ON")
            self.db = sqlite_utils.Database(self.conn)
            (version,) = self.conn.execute("PRAGMA user_version").fetchone()
            if version < SCHEMA_VERSION:
                with self._begin():
                    self.conn.executescript("BEGIN IMMEDIATE;" + _SCHEMA + f"PRAGMA user_version={SCHEMA_VERSION};COMMIT;")
            elif version > SCHEMA_VERSION:
                raise AuditError(f"{self.path} has schema version {version}; this iast-ca knows {SCHEMA_VERSION}")
        except sqlite3.Error as e:
            raise AuditError(f"cannot open audit database {self.path}: {e}") from None

    @contextmanager
    def _begin(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as e:
            if self.conn.in_transaction:
                self.conn.rollback()
            raise AuditError(f"audit database {self.path}: {e}") from None

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
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
            yield Transaction(self)
            self.conn.execute("COMMIT")
        except BaseException as e:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            if isinstance(e, sqlite3.Error):
                raise AuditError(f"cannot commit to the audit log {self.path}: {e}") from None
            raise

    def record(self, kind: str, data: dict[str, Any], **columns: Any) -> int:
        """Append one event in its own transaction; return its id once committed."""
        with self.transaction() as tx:
            return tx.append(kind, data, **columns)

    # -- reading -----------------------------------------------------------

    def get(self, event_id: int) -> Event | None:
        row = self.conn.execute(f"SELECT {', '.join(_COLUMNS)} FROM events WHERE id = ?", (event_id,)).fetchone()
        return _event(row) if row else None

    def issued_by_serial(self, serial: int) -> Event | None:
        """The ``issued`` event of a certificate serial."""
        row = self.conn.execute(
            f"SELECT {', '.join(_COLUMNS)} FROM events WHERE serial = ? AND kind = 'issued' ORDER BY id LIMIT 1",
            (serial,),
        ).fetchone()
        return _event(row) if row else None

    def events(
        self,
        *,
        user: str | None = None,
        role: str | None = None,
        kind: str | None = None,
        serial: int | None = None,
        since: str | None = None,
        until: str | None = None,
        limit: int | None = 100,
    ) -> list[Event]:
        """Events matching every filter given, newest first. ``since``/``until`` are ``ts`` strings."""
        where, args = [], []
        for col, val in (("user", user), ("role", role), ("kind", kind), ("serial", serial)):
            if val is not None:
                where.append(f"{col} = ?")
                args.append(val)
        if since is not None:
            where.append("ts >= ?")
            args.append(since)
        if until is not None:
            where.append("ts < ?")
            args.append(until)
        sql = f"SELECT {', '.join(_COLUMNS)} FROM events"
        if where:
            sql += " WHERE " + " AND ".join(where)
        # With a time window, walk the ts index backwards instead of sorting the window.
        sql += " ORDER BY ts DESC, id DESC" if since is not None or until is not None else " ORDER BY id DESC"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [_event(r) for r in self.conn.execute(sql, args)]

    def stream(self, after: int = 0, batch: int = 10_000) -> Iterator[Event]:
        """Every event with an id above ``after``, oldest first, read in batches (for exports)."""
        while True:
            rows = self.conn.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM events WHERE id > ? ORDER BY id LIMIT ?", (after, batch)
            ).fetchall()
            if not rows:
                return
            for row in rows:
                yield _event(row)
            after = rows[-1][0]

    def head(self) -> tuple[int, str]:
        """(number of events, hash of the last one) as stored, without verifying."""
        row = self.conn.execute("SELECT id, hash FROM events ORDER BY id DESC LIMIT 1").fetchone()
        return row if row else (0, GENESIS)

    def verify(
        self,
        *,
        checkpoint_count: int | None = None,
        checkpoint_head: str | None = None,
        checkpoint_root: str | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> VerifyReport:
        """Walk the whole chain; raise :class:`ChainBroken` naming the first bad event.

        With a checkpoint (``checkpoint_count`` events ending in
        ``checkpoint_head``), also catch a log cut short before that point,
        and a rewrite of everything up to it.
        """
        prev, expect, head_at_checkpoint, root_at_checkpoint = GENESIS, 1, None, None
        tree = merkle.TreeBuilder()
        cur = self.conn.execute(f"SELECT {', '.join(_COLUMNS)} FROM events ORDER BY id")
        while rows := cur.fetchmany(10_000):
            for row in rows:
                event_id = row[0]
                if event_id != expect:
                    raise ChainBroken(
                        f"event {expect} is missing: the log jumps from event {expect - 1} to {event_id}", expect
                    )
                if row[9] != prev:
                    raise ChainBroken(
                        f"event {event_id}: its prev_hash does not match event {event_id - 1}"
                        f" (event {event_id - 1} was changed, or rows were removed or inserted)",
                        event_id,
                    )
                if chain_hash(prev, row) != row[10]:
                    raise ChainBroken(f"event {event_id}: its contents do not match its hash (the row was changed)",
                                      event_id)
                prev = row[10]
                tree.append(merkle.leaf_hash(canonical(row)))
                if event_id == checkpoint_count:
                    head_at_checkpoint = prev
                    root_at_checkpoint = tree.root().hex()
                expect += 1
            if progress:
                progress(len(rows))
        count = expect - 1
        if checkpoint_count is not None:
            if count < checkpoint_count:
                raise ChainBroken(
                    f"the log was truncated: the checkpoint covers {checkpoint_count} events, the log has {count}",
                    count + 1,
                )
            if checkpoint_count > 0 and (head_at_checkpoint != checkpoint_head or (
                    checkpoint_root is not None and root_at_checkpoint != checkpoint_root)):
                raise ChainBroken(
                    f"event {checkpoint_count}: the chain does not match the checkpoint"
                    f" (events up to {checkpoint_count} were rewritten)",
                    checkpoint_count,
                )
        return VerifyReport(count, prev, checkpoint_count, tree.root().hex())

    def leaf_hashes(self, upto: int) -> Iterator[bytes]:
        """The Merkle leaf hashes of events 1..``upto``, in order (raises if any is missing)."""
        expect = 1
        cur = self.conn.execute(f"SELECT {', '.join(_COLUMNS)} FROM events WHERE id <= ? ORDER BY id", (upto,))
        while rows := cur.fetchmany(10_000):
            for row in rows:
                if row[0] != expect:
                    raise ChainBroken(f"event {expect} is missing", expect)
                expect += 1
                yield merkle.leaf_hash(canonical(row))
        if expect - 1 != upto:
            raise ChainBroken(f"the log has {expect - 1} events, fewer than {upto}", expect)

    def canonical_of(self, event_id: int) -> bytes | None:
        """The exact bytes event ``event_id`` contributes to the chain and the tree."""
        row = self.conn.execute(f"SELECT {', '.join(_COLUMNS)} FROM events WHERE id = ?", (event_id,)).fetchone()
        return canonical(row) if row else None
