"""Events and certificates rows in PostgreSQL: the chain's reads and its two inserts."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence

from ca.audit.chain import GENESIS
from ca.models import Event
from ca.store.base import CertificateRow
from ca.store.postgres.connection import Connection
from ca.store.schema import CERTIFICATE_COLUMNS, EVENT_COLUMNS

_SELECT = f"SELECT {', '.join(EVENT_COLUMNS)} FROM events"
_INSERT = f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}) VALUES ({', '.join(['%s'] * len(EVENT_COLUMNS))})"
# Event attribute (and filter keyword) -> column.
_FILTERS = {"user": "username", "role": "role", "kind": "kind", "serial": "serial"}
_READ = "read the audit log"


def event(row: tuple) -> Event:
    return Event(
        id=row[0], ts=row[1], kind=row[2], user=row[3], role=row[4], serial=row[5],
        key_id=row[6], source=row[7], data=json.loads(row[8]), prev_hash=row[9], hash=row[10],
    )


class EventRows:
    """The ``events`` table on one connection."""

    def __init__(self, conn: Connection):
        self.conn = conn

    def head(self) -> tuple[int, str]:
        row = self.conn.one("SELECT id, hash FROM events ORDER BY id DESC LIMIT 1", what=_READ)
        return tuple(row) if row else (0, GENESIS)

    def insert(self, row: tuple) -> None:
        self.conn.execute(_INSERT, row, what="write the audit log")

    def row(self, event_id: int) -> tuple | None:
        return self.conn.one(f"{_SELECT} WHERE id = %s", (event_id,), what=_READ)

    def get(self, event_id: int) -> Event | None:
        row = self.row(event_id)
        return event(row) if row else None

    def issued_by_serial(self, serial: int) -> Event | None:
        row = self.conn.one(f"{_SELECT} WHERE serial = %s AND kind = 'issued' ORDER BY id LIMIT 1", (serial,),
                            what=_READ)
        return event(row) if row else None

    def list(self, *, user=None, role=None, kind=None, serial=None, since=None, until=None,
             limit: int | None = 100) -> list[Event]:
        where, args = [], []
        for name, val in (("user", user), ("role", role), ("kind", kind), ("serial", serial)):
            if val is not None:
                where.append(f"{_FILTERS[name]} = %s")
                args.append(val)
        if since is not None:
            where.append("ts >= %s")
            args.append(since)
        if until is not None:
            where.append("ts < %s")
            args.append(until)
        sql = _SELECT
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY ts DESC, id DESC" if since is not None or until is not None else " ORDER BY id DESC"
        if limit is not None:
            sql += " LIMIT %s"
            args.append(int(limit))
        return [event(r) for r in self.conn.all(sql, args, what=_READ)]

    def stream(self, after: int = 0, batch: int = 10_000) -> Iterator[Event]:
        while True:
            rows = self.conn.all(f"{_SELECT} WHERE id > %s ORDER BY id LIMIT %s", (after, batch), what=_READ)
            if not rows:
                return
            for row in rows:
                yield event(row)
            after = rows[-1][0]

    def batches(self, upto: int | None = None, batch: int = 10_000) -> Iterator[Sequence[tuple]]:
        # Keyset pages (id > last): each page is a range scan of the primary key. Ids are dense
        # and only ever appended, so the pages together are one consistent prefix of the log.
        after = 0
        while True:
            if upto is None:
                rows = self.conn.all(f"{_SELECT} WHERE id > %s ORDER BY id LIMIT %s", (after, batch), what=_READ)
            else:
                rows = self.conn.all(f"{_SELECT} WHERE id > %s AND id <= %s ORDER BY id LIMIT %s",
                                     (after, upto, batch), what=_READ)
            if not rows:
                return
            yield [tuple(r) for r in rows]
            after = rows[-1][0]

    def request_event_ids(self, request_id: str) -> list[int]:
        return [i for (i,) in self.conn.all(
            "SELECT id FROM events WHERE data LIKE %s AND data::jsonb ->> 'request_id' = %s ORDER BY id",
            (f'%"{request_id}"%', request_id), what=_READ)]


_CERT = f"SELECT {', '.join(CERTIFICATE_COLUMNS)} FROM certificates"


class Certificates:
    """The ``certificates`` table on one connection."""

    def __init__(self, conn: Connection):
        self.conn = conn

    def next_serial(self) -> int:
        (top,) = self.conn.one("SELECT max(serial) FROM certificates", what="allocate a serial in")
        return (top or 0) + 1

    def insert(self, row: tuple) -> None:
        self.conn.execute(f"INSERT INTO certificates ({', '.join(CERTIFICATE_COLUMNS)})"
                          " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)", row, what="write the audit log")

    def by_serial(self, serial: int) -> CertificateRow | None:
        row = self.conn.one(f"{_CERT} WHERE serial = %s", (serial,), what=_READ)
        return CertificateRow(*row) if row else None

    def by_key_id(self, key_id: str) -> CertificateRow | None:
        row = self.conn.one(f"{_CERT} WHERE key_id = %s", (key_id,), what=_READ)
        return CertificateRow(*row) if row else None

    def unexpired_serials(self, *, cutoff: int, key_fingerprint: str | None = None,
                          username: str | None = None) -> list[int]:
        if key_fingerprint is not None:
            sql, val = "SELECT serial FROM certificates WHERE key_fingerprint = %s AND valid_before > %s", key_fingerprint
        else:
            sql, val = "SELECT serial FROM certificates WHERE username = %s AND valid_before > %s", username
        return [s for (s,) in self.conn.all(sql + " ORDER BY serial", (val, cutoff), what=_READ)]

    def current_of(self, username: str, key_fingerprint: str, cutoff: int) -> list[CertificateRow]:
        return [CertificateRow(*r) for r in self.conn.all(
            f"{_CERT} WHERE username = %s AND key_fingerprint = %s AND valid_before > %s ORDER BY serial",
            (username, key_fingerprint, cutoff), what=_READ)]

    def usernames_of_key(self, key_fingerprint: str) -> list[str]:
        return sorted({u for (u,) in self.conn.all(
            "SELECT DISTINCT username FROM certificates WHERE key_fingerprint = %s", (key_fingerprint,), what=_READ)})

    def any_for_user(self, username: str) -> bool:
        return self.conn.one("SELECT 1 FROM certificates WHERE username = %s LIMIT 1", (username,),
                             what=_READ) is not None

    def signed_by(self, ca_fingerprint: str, cutoff: int) -> tuple[int, int]:
        count, unexpired = self.conn.one(
            "SELECT count(*), sum(CASE WHEN valid_before > %s THEN 1 ELSE 0 END) FROM certificates"
            " WHERE ca_fingerprint = %s", (cutoff, ca_fingerprint), what=_READ)
        return int(count), int(unexpired or 0)

    def rows(self, batch: int = 10_000) -> Iterator[CertificateRow]:
        after = -(1 << 63)
        while True:
            got = self.conn.all(f"{_CERT} WHERE serial > %s ORDER BY serial LIMIT %s", (after, batch), what=_READ)
            if not got:
                return
            for row in got:
                yield CertificateRow(*row)
            after = got[-1][0]

    def last_expiry(self, ca_fingerprint: str) -> int | None:
        (top,) = self.conn.one("SELECT max(valid_before) FROM certificates WHERE ca_fingerprint = %s",
                               (ca_fingerprint,), what=_READ)
        return None if top is None else int(top)
