"""The review queries on PostgreSQL: the same names and results as ``ca.store.sqlite.review``.

SQLite's ``json_extract(data, '$.k')`` is ``data::jsonb -> 'k'`` here (psycopg
decodes the jsonb value to the same Python value), ``json_each`` is
``jsonb_array_elements``, ``group_concat`` is ``string_agg``, and
``strftime('%w')`` is ``extract(dow)``. Sums and averages come back as
``Decimal`` from PostgreSQL and are turned into the ints and floats SQLite
gives; NULLs are ordered as SQLite orders them (first ascending, last
descending), so both backends answer alike (tests/test_store.py).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import Any

from ca.store import schema
from ca.store.postgres.connection import Connection, ensure_tables, has_table

_READ = "read the audit log"


def _j(col: str, key: str) -> str:
    """``json_extract(col, '$.key')``: the value (decoded by psycopg) of ``key`` in the JSON text ``col``."""
    return f"({col}::jsonb -> '{key}')"


def _num(v: Any) -> Any:
    if isinstance(v, Decimal):
        return int(v) if v == v.to_integral_value() else float(v)
    return v


def _q(conn: Connection, sql: str, args: Iterable[Any] = ()) -> list[tuple]:
    return [tuple(_num(v) for v in r) for r in conn.all(sql, list(args), what=_READ)]


# -- the time window ----------------------------------------------------------------------


class EventWindow:
    """The ``since``/``until`` window as SQL over the events table (see the SQLite package)."""

    def __init__(self, conn: Connection, since: str | None, until: str | None):
        self.since, self.until = since, until
        self.empty = False
        self.bounds: tuple[int, int] | None = None
        self._serials: tuple[Any, Any] | None = None
        if since is not None or until is not None:
            lo, hi = conn.one("SELECT min(id), max(id) FROM events WHERE ts >= %s AND ts < %s",
                              (since or "", until or "\uffff"), what=_READ)
            if lo is None:
                self.empty = True
            else:
                self.bounds = (lo, hi)

    def sql(self, alias: str = "events") -> tuple[str, list[Any]]:
        if self.empty:
            return " AND FALSE", []
        if self.bounds is None:
            return "", []
        return (f" AND {alias}.id BETWEEN %s AND %s AND {alias}.ts >= %s AND {alias}.ts < %s",
                [self.bounds[0], self.bounds[1], self.since or "", self.until or "\uffff"])

    def serials(self, conn: Connection) -> tuple[Any, Any]:
        if self._serials is None:
            w, wp = self.sql("e")
            self._serials = tuple(conn.one(
                f"SELECT min(e.serial), max(e.serial) FROM events e WHERE e.kind = 'issued'{w}", wp, what=_READ))
        return self._serials


def event_window(conn: Connection, since: str | None, until: str | None) -> EventWindow:
    return EventWindow(conn, since, until)


def _json_list(v: Any) -> list:
    return v if isinstance(v, list) else []


def _json_or_none(text: str | None) -> Any:
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


# -- events -------------------------------------------------------------------------------


def events_by_kind(conn: Connection, win: EventWindow) -> dict[str, int]:
    w, wp = win.sql("e")
    return dict(_q(conn, f"SELECT e.kind, count(*) FROM events e WHERE TRUE{w} GROUP BY e.kind ORDER BY e.kind", wp))


# -- issuances ----------------------------------------------------------------------------

_TTL = _j("e.data", "ttl")
_TTL_NUM = "(e.data::jsonb ->> 'ttl')::numeric"
_ISSUED_COLS = (f"e.id, e.ts, e.username, e.role, e.serial, {_TTL}, {_j('e.data', 'principals')},"
                f" {_j('e.data', 'reason')}")


def _issued(win: EventWindow) -> tuple[str, list[Any]]:
    w, wp = win.sql("e")
    return " e.kind = 'issued'" + w, wp


def _issued_rows(rows: list[tuple]) -> list[tuple]:
    return [(i, ts, u, r, s, ttl, _json_list(p), reason) for i, ts, u, r, s, ttl, p, reason in rows]


def issued_by_role(conn: Connection, win: EventWindow) -> list[tuple]:
    issued, wp = _issued(win)
    return [(role, n, users, _num(mx), float(av) if av is not None else None) for role, n, users, mx, av in _q(
        conn,
        f"SELECT e.role, count(*), count(DISTINCT e.username), max({_TTL_NUM}), avg({_TTL_NUM})"
        f" FROM events e WHERE{issued} GROUP BY e.role ORDER BY count(*) DESC, e.role NULLS FIRST", wp)]


def issued_users_total(conn: Connection, win: EventWindow) -> int:
    issued, wp = _issued(win)
    return _q(conn, f"SELECT count(DISTINCT e.username) FROM events e WHERE{issued}", wp)[0][0]


def issued_by_user(conn: Connection, win: EventWindow, top: int) -> list[tuple]:
    issued, wp = _issued(win)
    return [(u, n, roles.split(",") if roles else [], last) for u, n, roles, last in _q(
        conn,
        f"SELECT e.username, count(*), string_agg(DISTINCT e.role, ','), max(e.ts) FROM events e WHERE{issued}"
        " GROUP BY e.username ORDER BY count(*) DESC, e.username NULLS FIRST LIMIT %s", wp + [top])]


def issued_per_day(conn: Connection, win: EventWindow) -> list[tuple]:
    issued, wp = _issued(win)
    return _q(conn, f"SELECT substr(e.ts, 1, 10), count(*) FROM events e WHERE{issued} GROUP BY 1 ORDER BY 1", wp)


def issued_longest(conn: Connection, win: EventWindow, top: int) -> list[tuple]:
    issued, wp = _issued(win)
    return _issued_rows(_q(
        conn,
        f"SELECT {_ISSUED_COLS} FROM events e WHERE{issued}"
        f" ORDER BY {_TTL_NUM} DESC NULLS LAST, e.id DESC LIMIT %s", wp + [top]))


_PRINCIPALS = "jsonb_array_elements_text(CASE WHEN jsonb_typeof(e.data::jsonb -> 'principals') = 'array'" \
              " THEN e.data::jsonb -> 'principals' ELSE '[]'::jsonb END)"


def _has_principal() -> str:
    return f"EXISTS (SELECT 1 FROM {_PRINCIPALS} p(value) WHERE p.value = ANY(%s))"


def issued_by_principal(conn: Connection, win: EventWindow, principals: Sequence[str]) -> list[tuple]:
    issued, wp = _issued(win)
    return _q(conn,
              f"SELECT p.value, count(*), count(DISTINCT e.username) FROM events e, {_PRINCIPALS} p(value)"
              f" WHERE{issued} AND p.value = ANY(%s) GROUP BY p.value ORDER BY count(*) DESC",
              wp + [list(principals)])


def issued_with_principal_total(conn: Connection, win: EventWindow, principals: Sequence[str]) -> int:
    issued, wp = _issued(win)
    return _q(conn, f"SELECT count(*) FROM events e WHERE{issued} AND {_has_principal()}",
              wp + [list(principals)])[0][0]


def issued_with_principal_by_user(conn: Connection, win: EventWindow, principals: Sequence[str],
                                  top: int) -> list[tuple]:
    issued, wp = _issued(win)
    return _q(conn,
              f"SELECT e.username, count(*) FROM events e WHERE{issued} AND {_has_principal()} GROUP BY e.username"
              " ORDER BY count(*) DESC, e.username NULLS FIRST LIMIT %s", wp + [list(principals), top])


def issued_with_principal_recent(conn: Connection, win: EventWindow, principals: Sequence[str],
                                 top: int) -> list[tuple]:
    issued, wp = _issued(win)
    return _issued_rows(_q(
        conn,
        f"SELECT {_ISSUED_COLS} FROM events e WHERE{issued} AND {_has_principal()} ORDER BY e.id DESC LIMIT %s",
        wp + [list(principals), top]))


def _outside(hours: tuple[str, str], weekdays: Iterable[int]) -> tuple[str, list[Any]]:
    start, end = hours
    days = sorted(weekdays)
    hhmm = "substr(e.ts, 12, 5)"
    inside_hours = (f"({hhmm} >= %s AND {hhmm} < %s)" if start < end else f"({hhmm} >= %s OR {hhmm} < %s)")
    outside = (f"(extract(dow FROM substr(e.ts, 1, 10)::date)::int <> ALL(%s) OR NOT {inside_hours})")
    return outside, [days, start, end]


def issued_outside_hours_total(conn: Connection, win: EventWindow, hours: tuple[str, str],
                               weekdays: Iterable[int]) -> int:
    issued, wp = _issued(win)
    outside, oargs = _outside(hours, weekdays)
    return _q(conn, f"SELECT count(*) FROM events e WHERE{issued} AND {outside}", wp + oargs)[0][0]


def issued_outside_hours_by_user(conn: Connection, win: EventWindow, hours: tuple[str, str],
                                 weekdays: Iterable[int], top: int) -> list[tuple]:
    issued, wp = _issued(win)
    outside, oargs = _outside(hours, weekdays)
    return _q(conn,
              f"SELECT e.username, count(*) FROM events e WHERE{issued} AND {outside} GROUP BY e.username"
              " ORDER BY count(*) DESC, e.username NULLS FIRST LIMIT %s", wp + oargs + [top])


def issued_outside_hours_recent(conn: Connection, win: EventWindow, hours: tuple[str, str],
                                weekdays: Iterable[int], top: int) -> list[tuple]:
    issued, wp = _issued(win)
    outside, oargs = _outside(hours, weekdays)
    return _issued_rows(_q(
        conn,
        f"SELECT {_ISSUED_COLS} FROM events e WHERE{issued} AND {outside} ORDER BY e.id DESC LIMIT %s",
        wp + oargs + [top]))


# -- denials, sign-in failures, lockouts, approvals, revocations -------------------------------


def _denied(win: EventWindow, kinds: Sequence[str]) -> tuple[str, list[Any]]:
    w, wp = win.sql("e")
    return f" e.kind = ANY(%s){w}", [list(kinds)] + wp


def denials_by_kind(conn: Connection, win: EventWindow, kinds: Sequence[str]) -> dict[str, int]:
    den, args = _denied(win, kinds)
    return dict(_q(conn, f"SELECT e.kind, count(*) FROM events e WHERE{den} GROUP BY e.kind", args))


def denial_groups_total(conn: Connection, win: EventWindow, kinds: Sequence[str]) -> int:
    den, args = _denied(win, kinds)
    return _q(conn,
              f"SELECT count(*) FROM (SELECT 1 FROM events e WHERE{den} GROUP BY e.kind,"
              f" {_j('e.data', 'code')}, {_j('e.data', 'message')}) g", args)[0][0]


def denial_groups(conn: Connection, win: EventWindow, kinds: Sequence[str], top: int) -> list[tuple]:
    den, args = _denied(win, kinds)
    return _q(conn,
              f"SELECT e.kind, {_j('e.data', 'code')} c, {_j('e.data', 'message')} m, count(*),"
              f" count(DISTINCT e.username), min(e.ts), max(e.ts) FROM events e WHERE{den}"
              " GROUP BY e.kind, c, m ORDER BY count(*) DESC, e.kind, ((e.data::jsonb -> 'message') #>> '{}') COLLATE \"C\" NULLS FIRST LIMIT %s",
              args + [top])


def auth_failure_groups(conn: Connection, win: EventWindow, top: int) -> list[tuple]:
    w, wp = win.sql("e")
    af = " e.kind = 'auth_failed'" + w
    return _q(conn,
              f"SELECT {_j('e.data', 'method')} m, {_j('e.data', 'why')} y, count(*),"
              f" count(DISTINCT e.username), count(DISTINCT e.source) FROM events e WHERE{af}"
              " GROUP BY m, y ORDER BY count(*) DESC LIMIT %s", wp + [top])


def lockouts_recent(conn: Connection, win: EventWindow, top: int) -> list[tuple]:
    w, wp = win.sql("e")
    lo = " e.kind = 'lockout'" + w
    return _q(conn,
              f"SELECT e.id, e.ts, e.username, e.source, {_j('e.data', 'key')}, {_j('e.data', 'failures')},"
              f" {_j('e.data', 'seconds')} FROM events e WHERE{lo} ORDER BY e.id DESC LIMIT %s", wp + [top])


def lockouts_by_user(conn: Connection, win: EventWindow, top: int) -> list[tuple]:
    w, wp = win.sql("e")
    lo = " e.kind = 'lockout'" + w
    return _q(conn,
              f"SELECT e.username, count(*) FROM events e WHERE{lo} GROUP BY e.username"
              " ORDER BY count(*) DESC, e.username NULLS FIRST LIMIT %s", wp + [top])


def approvals_by_kind(conn: Connection, win: EventWindow) -> dict[str, int]:
    w, wp = win.sql("e")
    return dict(_q(conn, f"SELECT e.kind, count(*) FROM events e WHERE e.kind >= 'request_' AND e.kind < 'request`'{w}"
                         " GROUP BY e.kind ORDER BY e.kind", wp))


def revocations_by_kind(conn: Connection, win: EventWindow) -> dict[str, int]:
    w, wp = win.sql("e")
    rv = " e.kind = 'revoked'" + w
    return dict(_q(conn, f"SELECT e.data::jsonb ->> 'kind' k, count(*) FROM events e WHERE{rv}"
                         " GROUP BY k ORDER BY k NULLS FIRST", wp))


def approval_votes_recent(conn: Connection, win: EventWindow, top: int) -> list[tuple]:
    w, wp = win.sql("e")
    return _q(conn,
              f"SELECT e.id, e.ts, e.kind, {_j('e.data', 'request_id')}, e.username, e.role,"
              f" {_j('e.data', 'approver')}, {_j('e.data', 'comment')} FROM events e"
              f" WHERE e.kind IN ('request_approved', 'request_denied'){w} ORDER BY e.id DESC LIMIT %s", wp + [top])


def revocations_recent(conn: Connection, win: EventWindow, top: int) -> list[tuple]:
    w, wp = win.sql("e")
    rv = " e.kind = 'revoked'" + w
    return _q(conn,
              f"SELECT e.id, e.ts, {_j('e.data', 'kind')}, {_j('e.data', 'value')},"
              f" {_j('e.data', 'reason')}, {_j('e.data', 'actor')} FROM events e WHERE{rv}"
              " ORDER BY e.id DESC LIMIT %s", wp + [top])


# -- recorded sshd logins (read by the report) -------------------------------------------------


def has_logins(conn: Connection) -> bool:
    return has_table(conn, "logins")


def _logins_in(win: EventWindow) -> tuple[str, list[Any]]:
    w, wp = win.sql("e")
    if win.bounds is None and not win.empty:
        return "TRUE", []
    lo, hi = win.bounds or (0, -1)
    lw = ("((l.ts >= %s AND l.ts < %s) OR (l.ts IS NULL AND l.correlated_event_id BETWEEN %s AND %s"
          f" AND l.correlated_event_id IN (SELECT e.id FROM events e WHERE e.kind = 'correlated'{w})))")
    return lw, [win.since or "", win.until or "\uffff", lo, hi] + wp


def correlate_runs(conn: Connection, win: EventWindow) -> int:
    w, wp = win.sql("e")
    return _q(conn, f"SELECT count(*) FROM events e WHERE e.kind = 'correlated'{w}", wp)[0][0]


def logins_by_outcome(conn: Connection, win: EventWindow) -> dict[str, int]:
    lw, lp = _logins_in(win)
    return dict(_q(conn, f"SELECT l.outcome, count(*) FROM logins l WHERE {lw} GROUP BY l.outcome", lp))


def logins_hosts_and_joined(conn: Connection, win: EventWindow) -> tuple[int, int]:
    lw, lp = _logins_in(win)
    hosts, joined = _q(conn, f"SELECT count(DISTINCT l.host), count(l.issued_event_id) FROM logins l WHERE {lw}",
                       lp)[0]
    return hosts, joined


_FINDINGS = "jsonb_array_elements(CASE WHEN jsonb_typeof(l.findings::jsonb) = 'array' THEN l.findings::jsonb" \
            " ELSE '[]'::jsonb END)"
_SEV = "(f.value ->> 'severity')"


def login_findings_by_code(conn: Connection, win: EventWindow) -> list[tuple]:
    lw, lp = _logins_in(win)
    return _q(conn,
              f"SELECT {_SEV} s, f.value -> 'code' c, count(*) FROM logins l, {_FINDINGS} f(value)"
              f" WHERE l.severity IS NOT NULL AND {lw} GROUP BY s, c", lp)


def login_findings_serious(conn: Connection, win: EventWindow, limit: int) -> list[tuple]:
    lw, lp = _logins_in(win)
    return _q(conn,
              f"SELECT {_SEV} s, f.value -> 'code', f.value -> 'message', l.host, l.ts,"
              " l.logged_time, l.account, l.source, l.serial_text, l.key_id, l.issued_event_id, l.outcome"
              f" FROM logins l, {_FINDINGS} f(value)"
              f" WHERE l.severity IN ('critical', 'warning') AND {_SEV} IN ('critical', 'warning') AND {lw}"
              " ORDER BY CASE WHEN f.value ->> 'severity' = 'critical' THEN 0 ELSE 1 END, l.id DESC LIMIT %s",
              lp + [limit])


# -- expired certificates never used ---------------------------------------------------------


def _expired(conn: Connection, win: EventWindow, now: float) -> tuple[str, list[Any]]:
    w, wp = win.sql("e")
    base = f"FROM certificates c JOIN events e ON e.id = c.event_id WHERE c.valid_before < %s{w}"
    args: list[Any] = [int(now)] + wp
    if win.bounds is not None:
        smin, smax = win.serials(conn)
        base += " AND c.serial BETWEEN %s AND %s"
        args += [smin if smin is not None else 0, smax if smax is not None else -1]
    return base, args


def _unused(logins_known: bool) -> str:
    if not logins_known:
        return ""
    return (" AND NOT EXISTS (SELECT 1 FROM logins l WHERE l.serial = c.serial"
            " AND l.ca_fingerprint = c.ca_fingerprint AND l.outcome IN ('accepted', 'partial'))")


def expired_certificates_total(conn: Connection, win: EventWindow, now: float) -> int:
    base, args = _expired(conn, win, now)
    return _q(conn, f"SELECT count(*) {base}", args)[0][0]


def unused_certificates_total(conn: Connection, win: EventWindow, now: float, logins_known: bool) -> int:
    base, args = _expired(conn, win, now)
    return _q(conn, f"SELECT count(*) {base}{_unused(logins_known)}", args)[0][0]


def unused_certificates_by_role(conn: Connection, win: EventWindow, now: float, logins_known: bool) -> list[tuple]:
    base, args = _expired(conn, win, now)
    return _q(conn,
              f"SELECT c.role, sum(CASE WHEN TRUE{_unused(logins_known)} THEN 1 ELSE 0 END), count(*) {base}"
              " GROUP BY c.role ORDER BY 2 DESC, c.role", args)


def unused_certificates_recent(conn: Connection, win: EventWindow, now: float, logins_known: bool,
                               top: int) -> list[tuple]:
    base, args = _expired(conn, win, now)
    return _q(conn,
              f"SELECT c.serial, c.key_id, c.username, c.role, e.ts, c.valid_after, c.valid_before {base}"
              f"{_unused(logins_known)} ORDER BY c.serial DESC LIMIT %s", args + [top])


# -- correlate: what it reads -------------------------------------------------------------------


def certificate_ca_fingerprints(conn: Connection) -> list[str]:
    return [fp for (fp,) in conn.all("SELECT DISTINCT ca_fingerprint FROM certificates", what=_READ)]


def revocation_events(conn: Connection) -> list[tuple[int, str, Any]]:
    return [(event_id, ts, _json_or_none(data)) for event_id, ts, data in conn.all(
        "SELECT id, ts, data FROM events WHERE kind = 'revoked' ORDER BY id", what=_READ)]


def logins_of_certificate(conn: Connection, serial: int, event_id: int, limit: int) -> list[tuple]:
    """The sshd logins ``correlate`` joined to the issuance ``event_id`` (serial ``serial``), oldest
    first: ``(host, ts, logged_time, account, source, outcome, severity)``; none without a logins table."""
    if not has_logins(conn):
        return []
    return _q(conn, "SELECT host, ts, logged_time, account, source, outcome, severity FROM logins"
                    " WHERE serial = %s AND issued_event_id = %s ORDER BY id LIMIT %s", [serial, event_id, limit])


def certificate_by_serial(conn: Connection, serial: int) -> tuple | None:
    row = conn.one(
        "SELECT c.serial, c.key_id, c.username, c.role, c.key_fingerprint, c.ca_fingerprint, c.valid_after,"
        " c.valid_before, c.event_id, e.data FROM certificates c LEFT JOIN events e ON e.id = c.event_id"
        " WHERE c.serial = %s", (serial,), what=_READ)
    return None if row is None else tuple(row[:9]) + (_json_or_none(row[9]),)


def existing_line_hashes(conn: Connection, hashes: list[str]) -> set[str]:
    found: set[str] = set()
    for i in range(0, len(hashes), 500):
        chunk = hashes[i:i + 500]
        found.update(h for (h,) in conn.all("SELECT line_hash FROM logins WHERE line_hash = ANY(%s)", (chunk,),
                                            what=_READ))
    return found


# -- correlate: what it records -------------------------------------------------------------------

LOGIN_COLUMNS = ("line_hash", "host", "logged_time", "ts", "account", "source", "port", "serial", "serial_text",
                 "ca_fingerprint", "key_id", "key_fingerprint", "issued_event_id", "outcome", "reason", "severity",
                 "findings", "correlated_event_id", "line")


def insert_logins(conn: Connection, rows: Iterable[Sequence[Any]]) -> None:
    rows = [(*r[:16], json.dumps(r[16], ensure_ascii=False), *r[17:]) for r in rows]
    if rows:
        conn.executemany(
            f"INSERT INTO logins ({', '.join(LOGIN_COLUMNS)}) VALUES ({', '.join(['%s'] * len(LOGIN_COLUMNS))})",
            rows, what="record logins in")


def ensure_logins_schema(conn: Connection) -> None:
    ensure_tables(conn, "logins", schema.PG_LOGINS, "logins")


_QUERIES = (event_window, events_by_kind, issued_by_role, issued_users_total, issued_by_user, issued_per_day,
            issued_longest, issued_by_principal, issued_with_principal_total, issued_with_principal_by_user,
            issued_with_principal_recent, issued_outside_hours_total, issued_outside_hours_by_user,
            issued_outside_hours_recent, denials_by_kind, denial_groups_total, denial_groups, auth_failure_groups,
            lockouts_recent, lockouts_by_user, approvals_by_kind, approval_votes_recent, revocations_by_kind,
            revocations_recent, has_logins, correlate_runs, logins_by_outcome, logins_hosts_and_joined, login_findings_by_code,
            login_findings_serious, expired_certificates_total, unused_certificates_total,
            unused_certificates_by_role, unused_certificates_recent, certificate_ca_fingerprints, revocation_events,
            logins_of_certificate, certificate_by_serial, existing_line_hashes, insert_logins, ensure_logins_schema)


class ReviewQueries:
    """The queries above bound to one store's connection: ``store.review`` (same names as SQLite's)."""

    def __init__(self, conn: Connection):
        for fn in _QUERIES:
            setattr(self, fn.__name__, functools.partial(fn, conn))
