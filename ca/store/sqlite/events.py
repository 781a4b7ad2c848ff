"""Events and certificates rows in SQLite: the chain's reads and its two inserts."""

from __future__ import annotations

import heapq
import json
import sqlite3
from collections.abc import Iterator, Sequence

from ca.audit.chain import GENESIS
from ca.audit.derive import CERTIFICATE_KINDS
from ca.models import Event
from ca.store.base import CertificateRow
from ca.store.schema import CERTIFICATE_COLUMNS, EVENT_COLUMNS

_SELECT = f"SELECT {', '.join(EVENT_COLUMNS)} FROM events"
_INSERT = f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}) VALUES ({', '.join('?' * len(EVENT_COLUMNS))})"
# Event attribute (and filter keyword) -> column.
_FILTERS = {"user": "username", "role": "role", "kind": "kind", "serial": "serial"}


def event(row: tuple) -> Event:
    return Event(
        id=row[0], ts=row[1], kind=row[2], user=row[3], role=row[4], serial=row[5],
        key_id=row[6], source=row[7], data=json.loads(row[8]), prev_hash=row[9], hash=row[10],
    )


class EventRows:
    """The ``events`` table on one connection."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def head(self) -> tuple[int, str]:
        row = self.conn.execute("SELECT id, hash FROM events ORDER BY id DESC LIMIT 1").fetchone()
        return row if row else (0, GENESIS)

    def insert(self, row: tuple) -> None:
        self.conn.execute(_INSERT, row)

    def row(self, event_id: int) -> tuple | None:
        return self.conn.execute(f"{_SELECT} WHERE id = ?", (event_id,)).fetchone()

    def get(self, event_id: int) -> Event | None:
        row = self.row(event_id)
        return event(row) if row else None

    def issued_by_serial(self, serial: int) -> Event | None:
        row = self.conn.execute(f"{_SELECT} WHERE serial = ? AND kind = 'issued' ORDER BY id LIMIT 1",
                                (serial,)).fetchone()
        return event(row) if row else None

    def list(self, *, user=None, role=None, kind=None, serial=None, since=None, until=None,
             limit: int | None = 100) -> list[Event]:
        where, args = [], []
        for name, val in (("user", user), ("role", role), ("kind", kind), ("serial", serial)):
            if val is not None:
                where.append(f"{_FILTERS[name]} = ?")
                args.append(val)
        if since is not None:
            where.append("ts >= ?")
            args.append(since)
        if until is not None:
            where.append("ts < ?")
            args.append(until)
        sql = _SELECT
        if where:
            sql += " WHERE " + " AND ".join(where)
        # With a time window, walk the ts index backwards instead of sorting the window.
        sql += " ORDER BY ts DESC, id DESC" if since is not None or until is not None else " ORDER BY id DESC"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [event(r) for r in self.conn.execute(sql, args)]

    def issued_certificate_rows(self, batch: int = 10_000) -> Iterator[tuple]:
        # One ordered walk of the (kind, id) index per certificate kind, merged by event id:
        # "kind IN (...) ORDER BY id" would sort the whole rest of the log for every batch.
        return heapq.merge(*(self._certificate_rows(kind, batch) for kind in CERTIFICATE_KINDS),
                           key=lambda row: row[8])

    def _certificate_rows(self, kind: str, batch: int) -> Iterator[tuple]:
        after = 0
        while True:
            rows = self.conn.execute(_ISSUED_ROWS, (kind, after, batch)).fetchall()
            if not rows:
                return
            yield from rows
            after = rows[-1][8]

    def stream(self, after: int = 0, batch: int = 10_000) -> Iterator[Event]:
        while True:
            rows = self.conn.execute(f"{_SELECT} WHERE id > ? ORDER BY id LIMIT ?", (after, batch)).fetchall()
            if not rows:
                return
            for row in rows:
                yield event(row)
            after = rows[-1][0]

    def batches(self, upto: int | None = None, batch: int = 10_000) -> Iterator[Sequence[tuple]]:
        # One statement, read in slices: one snapshot of the log for the whole walk.
        if upto is None:
            cur = self.conn.execute(f"{_SELECT} ORDER BY id")
        else:
            cur = self.conn.execute(f"{_SELECT} WHERE id <= ? ORDER BY id", (upto,))
        while rows := cur.fetchmany(batch):
            yield rows

    def request_event_ids(self, request_id: str) -> list[int]:
        return [r[0] for r in self.conn.execute(
            "SELECT id FROM events WHERE data LIKE ? AND json_extract(data, '$.request_id') = ? ORDER BY id",
            (f'%"{request_id}"%', request_id))]


_ISSUED_ROWS = ("SELECT serial, key_id, username, role, json_extract(data, '$.key_fingerprint'), "
                "json_extract(data, '$.ca_fingerprint'), json_extract(data, '$.valid_after'), "
                "json_extract(data, '$.valid_before'), id FROM events "
                "WHERE kind = ? AND id > ? ORDER BY id LIMIT ?")  # the events_kind (kind, id) index

_CERT = f"SELECT {', '.join(CERTIFICATE_COLUMNS)} FROM certificates"


class Certificates:
    """The ``certificates`` table on one connection."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def next_serial(self) -> int:
        (top,) = self.conn.execute("SELECT max(serial) FROM certificates").fetchone()
        return (top or 0) + 1

    def insert(self, row: tuple) -> None:
        self.conn.execute("INSERT INTO certificates VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", row)

    def by_serial(self, serial: int) -> CertificateRow | None:
        row = self.conn.execute(f"{_CERT} WHERE serial = ?", (serial,)).fetchone()
        return CertificateRow(*row) if row else None

    def by_key_id(self, key_id: str) -> CertificateRow | None:
        row = self.conn.execute(f"{_CERT} WHERE key_id = ?", (key_id,)).fetchone()
        return CertificateRow(*row) if row else None

    def unexpired_serials(self, *, cutoff: int, key_fingerprint: str | None = None,
                          username: str | None = None) -> list[int]:
        col, val = ("key_fingerprint", key_fingerprint) if key_fingerprint is not None else ("username", username)
        return [s for (s,) in self.conn.execute(
            f"SELECT serial FROM certificates WHERE {col} = ? AND valid_before > ? ORDER BY serial", (val, cutoff))]

    def current_of(self, username: str, key_fingerprint: str, cutoff: int) -> list[CertificateRow]:
        return [CertificateRow(*r) for r in self.conn.execute(
            f"{_CERT} WHERE username = ? AND key_fingerprint = ? AND valid_before > ? ORDER BY serial",
            (username, key_fingerprint, cutoff))]

    def usernames_of_key(self, key_fingerprint: str) -> list[str]:
        return sorted({u for (u,) in self.conn.execute(
            "SELECT DISTINCT username FROM certificates WHERE key_fingerprint = ?", (key_fingerprint,))})

    def any_for_user(self, username: str) -> bool:
        return self.conn.execute("SELECT 1 FROM certificates WHERE username = ? LIMIT 1",
                                 (username,)).fetchone() is not None

    def rows(self, batch: int = 10_000) -> Iterator[CertificateRow]:
        after = -(1 << 63)
        while True:
            got = self.conn.execute(f"{_CERT} WHERE serial > ? ORDER BY serial LIMIT ?", (after, batch)).fetchall()
            if not got:
                return
            for row in got:
                yield CertificateRow(*row)
            after = got[-1][0]

    def signed_by(self, ca_fingerprint: str, cutoff: int) -> tuple[int, int]:
        count, unexpired = self.conn.execute(
            "SELECT count(*), sum(valid_before > ?) FROM certificates WHERE ca_fingerprint = ?",
            (cutoff, ca_fingerprint)).fetchone()
        return count, unexpired or 0

    def last_expiry(self, ca_fingerprint: str) -> int | None:
        return self.conn.execute("SELECT max(valid_before) FROM certificates WHERE ca_fingerprint = ?",
                                 (ca_fingerprint,)).fetchone()[0]
