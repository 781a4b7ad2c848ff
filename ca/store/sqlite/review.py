"""The review queries on SQLite: what ``audit report`` aggregates and what ``audit correlate`` reads and records.

Every SQL statement of :mod:`ca.review` lives here, as a function named by
what it answers, so that another backend can implement the same functions
with its own JSON operators (SQLite's ``json_extract``/``json_each`` here).
Each function takes the SQLite connection first; the report's functions take
an :class:`EventWindow` next (from :func:`event_window`). Results are plain
Python values (ints, strings, lists, dicts, tuples in the order documented),
never SQLite-specific text: JSON lists come back decoded, ``group_concat``
comes back as a list.

Performance: each report query is a ``GROUP BY`` or a ``LIMIT`` over the
``events`` indexes, and with a time window a range scan of the ``(kind, id)``
index (tests/test_report.py checks the query plans on 100,000 events).
"""

from __future__ import annotations

import functools
import json
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

from ca.store import schema
from ca.store.sqlite.connection import ensure_tables

# -- the time window ----------------------------------------------------------------------


class EventWindow:
    """The ``since``/``until`` window as SQL over the events table (alias ``e``).

    The window is first turned into the range of event ids it spans (one scan
    of the ``ts`` index), so that each section is a range scan of the
    ``(kind, id)`` index; the ``ts`` condition is kept too, so the result is
    exact even if the clock went backwards at some point.
    """

    def __init__(self, conn: sqlite3.Connection, since: str | None, until: str | None):
        self.since, self.until = since, until
        self.empty = False
        self.bounds: tuple[int, int] | None = None
        self._serials: tuple[Any, Any] | None = None
        if since is not None or until is not None:
            lo, hi = conn.execute("SELECT min(id), max(id) FROM events WHERE ts >= ? AND ts < ?",
                                  (since or "", until or "\uffff")).fetchone()
            if lo is None:
                self.empty = True
            else:
                self.bounds = (lo, hi)

    def sql(self, alias: str = "events") -> tuple[str, list[Any]]:
        if self.empty:
            return " AND 0", []
        if self.bounds is None:
            return "", []
        return (f" AND {alias}.id BETWEEN ? AND ? AND {alias}.ts >= ? AND {alias}.ts < ?",
                [self.bounds[0], self.bounds[1], self.since or "", self.until or "\uffff"])

    def serials(self, conn: sqlite3.Connection) -> tuple[Any, Any]:
        """The serials issued in the window, ``(min, max)`` (None, None when none); asked once."""
        if self._serials is None:
            w, wp = self.sql("e")
            self._serials = tuple(conn.execute(
                f"SELECT min(e.serial), max(e.serial) FROM events e WHERE e.kind = 'issued'{w}", wp).fetchone())
        return self._serials


def event_window(conn: sqlite3.Connection, since: str | None, until: str | None) -> EventWindow:
    """The window of events with ``since <= ts < until`` (either end may be None: open)."""
    return EventWindow(conn, since, until)


def _marks(n: int) -> str:
    return ", ".join("?" * n)


def _json_list(text: str | None) -> list:
    try:
        v = json.loads(text) if text else []
    except ValueError:
        return []
    return v if isinstance(v, list) else []


def _json_or_none(text: str | None) -> Any:
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


def _q(conn: sqlite3.Connection, sql: str, args: Iterable[Any] = ()) -> list[tuple]:
    return conn.execute(sql, list(args)).fetchall()


# -- events -------------------------------------------------------------------------------


def events_by_kind(conn: sqlite3.Connection, win: EventWindow) -> dict[str, int]:
    """``{kind: count}`` of the events in the window, by kind."""
    w, wp = win.sql("e")
    return dict(_q(conn, f"SELECT e.kind, count(*) FROM events e WHERE 1{w} GROUP BY e.kind ORDER BY e.kind", wp))


# -- issuances ----------------------------------------------------------------------------

_ISSUED_COLS = ("e.id, e.ts, e.username, e.role, e.serial, json_extract(e.data, '$.ttl'),"
                " json_extract(e.data, '$.principals'), json_extract(e.data, '$.reason')")


def _issued(win: EventWindow) -> tuple[str, list[Any]]:
    w, wp = win.sql("e")
    return " e.kind = 'issued'" + w, wp


def _issued_rows(rows: list[tuple]) -> list[tuple]:
    """``(id, ts, user, role, serial, ttl, principals, reason)``, principals decoded to a list."""
    return [(i, ts, u, r, s, ttl, _json_list(p), reason) for i, ts, u, r, s, ttl, p, reason in rows]


def issued_by_role(conn: sqlite3.Connection, win: EventWindow) -> list[tuple]:
    """Issuances by role, most first: ``(role, count, distinct users, max ttl, average ttl)``."""
    issued, wp = _issued(win)
    return _q(conn,
              f"SELECT e.role, count(*), count(DISTINCT e.username), max(json_extract(e.data, '$.ttl')),"
              f" avg(json_extract(e.data, '$.ttl')) FROM events e WHERE{issued}"
              " GROUP BY e.role ORDER BY count(*) DESC, e.role", wp)


def issued_users_total(conn: sqlite3.Connection, win: EventWindow) -> int:
    """How many distinct users received a certificate in the window."""
    issued, wp = _issued(win)
    return _q(conn, f"SELECT count(DISTINCT e.username) FROM events e WHERE{issued}", wp)[0][0]


def issued_by_user(conn: sqlite3.Connection, win: EventWindow, top: int) -> list[tuple]:
    """The ``top`` users by issuances: ``(user, count, [roles], last ts)``."""
    issued, wp = _issued(win)
    return [(u, n, roles.split(",") if roles else [], last) for u, n, roles, last in _q(
        conn,
        f"SELECT e.username, count(*), group_concat(DISTINCT e.role), max(e.ts) FROM events e WHERE{issued}"
        " GROUP BY e.username ORDER BY count(*) DESC, e.username LIMIT ?", wp + [top])]


def issued_per_day(conn: sqlite3.Connection, win: EventWindow) -> list[tuple]:
    """Issuances per UTC day, in date order: ``(YYYY-MM-DD, count)``."""
    issued, wp = _issued(win)
    return _q(conn, f"SELECT substr(e.ts, 1, 10), count(*) FROM events e WHERE{issued} GROUP BY 1 ORDER BY 1", wp)


def issued_longest(conn: sqlite3.Connection, win: EventWindow, top: int) -> list[tuple]:
    """The ``top`` issuances with the longest ttl (rows as :func:`issued_with_principal_recent`)."""
    issued, wp = _issued(win)
    return _issued_rows(_q(
        conn,
        f"SELECT {_ISSUED_COLS} FROM events e WHERE{issued}"
        " ORDER BY json_extract(e.data, '$.ttl') DESC, e.id DESC LIMIT ?", wp + [top]))


def _has_principal(principals: Sequence[str]) -> str:
    return (f"EXISTS (SELECT 1 FROM json_each(e.data, '$.principals') p"
            f" WHERE p.value IN ({_marks(len(principals))}))")


def issued_by_principal(conn: sqlite3.Connection, win: EventWindow, principals: Sequence[str]) -> list[tuple]:
    """For each of ``principals``, the issuances naming it, most first: ``(principal, count, distinct users)``."""
    issued, wp = _issued(win)
    priv = list(principals)
    return _q(conn,
              f"SELECT p.value, count(*), count(DISTINCT e.username) FROM events e, json_each(e.data, '$.principals') p"
              f" WHERE{issued} AND p.value IN ({_marks(len(priv))}) GROUP BY p.value ORDER BY count(*) DESC",
              wp + priv)


def issued_with_principal_total(conn: sqlite3.Connection, win: EventWindow, principals: Sequence[str]) -> int:
    """How many issuances name at least one of ``principals``."""
    issued, wp = _issued(win)
    priv = list(principals)
    return _q(conn, f"SELECT count(*) FROM events e WHERE{issued} AND {_has_principal(priv)}", wp + priv)[0][0]


def issued_with_principal_by_user(conn: sqlite3.Connection, win: EventWindow, principals: Sequence[str],
                                  top: int) -> list[tuple]:
    """The ``top`` users by issuances naming one of ``principals``: ``(user, count)``."""
    issued, wp = _issued(win)
    priv = list(principals)
    return _q(conn,
              f"SELECT e.username, count(*) FROM events e WHERE{issued} AND {_has_principal(priv)} GROUP BY e.username"
              " ORDER BY count(*) DESC, e.username LIMIT ?", wp + priv + [top])


def issued_with_principal_recent(conn: sqlite3.Connection, win: EventWindow, principals: Sequence[str],
                                 top: int) -> list[tuple]:
    """The latest ``top`` issuances naming one of ``principals``, newest first:
    ``(event id, ts, user, role, serial, ttl, [principals], reason)``."""
    issued, wp = _issued(win)
    priv = list(principals)
    return _issued_rows(_q(
        conn,
        f"SELECT {_ISSUED_COLS} FROM events e WHERE{issued} AND {_has_principal(priv)} ORDER BY e.id DESC LIMIT ?",
        wp + priv + [top]))


def _outside(hours: tuple[str, str], weekdays: Iterable[int]) -> tuple[str, list[Any]]:
    """Outside ``hours`` (UTC ``HH:MM``, a range may wrap midnight) or not on ``weekdays`` (``%w`` numbers)."""
    start, end = hours
    days = sorted(weekdays)
    hhmm = "substr(e.ts, 12, 5)"
    inside_hours = (f"({hhmm} >= ? AND {hhmm} < ?)" if start < end else f"({hhmm} >= ? OR {hhmm} < ?)")
    outside = (f"(CAST(strftime('%w', substr(e.ts, 1, 10)) AS INTEGER) NOT IN ({_marks(len(days))})"
               f" OR NOT {inside_hours})")
    return outside, days + [start, end]


def issued_outside_hours_total(conn: sqlite3.Connection, win: EventWindow, hours: tuple[str, str],
                               weekdays: Iterable[int]) -> int:
    """How many issuances fall outside working ``hours`` on ``weekdays`` (UTC, the issuance's own date)."""
    issued, wp = _issued(win)
    outside, oargs = _outside(hours, weekdays)
    return _q(conn, f"SELECT count(*) FROM events e WHERE{issued} AND {outside}", wp + oargs)[0][0]


def issued_outside_hours_by_user(conn: sqlite3.Connection, win: EventWindow, hours: tuple[str, str],
                                 weekdays: Iterable[int], top: int) -> list[tuple]:
    """The ``top`` users by issuances outside working hours: ``(user, count)``."""
    issued, wp = _issued(win)
    outside, oargs = _outside(hours, weekdays)
    return _q(conn,
              f"SELECT e.username, count(*) FROM events e WHERE{issued} AND {outside} GROUP BY e.username"
              " ORDER BY count(*) DESC, e.username LIMIT ?", wp + oargs + [top])


def issued_outside_hours_recent(conn: sqlite3.Connection, win: EventWindow, hours: tuple[str, str],
                                weekdays: Iterable[int], top: int) -> list[tuple]:
    """The latest ``top`` issuances outside working hours (rows as :func:`issued_with_principal_recent`)."""
    issued, wp = _issued(win)
    outside, oargs = _outside(hours, weekdays)
    return _issued_rows(_q(
        conn,
        f"SELECT {_ISSUED_COLS} FROM events e WHERE{issued} AND {outside} ORDER BY e.id DESC LIMIT ?",
        wp + oargs + [top]))


# -- denials, sign-in failures, lockouts, approvals, revocations -------------------------------


def _denied(win: EventWindow, kinds: Sequence[str]) -> tuple[str, list[Any]]:
    w, wp = win.sql("e")
    dk = list(kinds)
    return f" e.kind IN ({_marks(len(dk))}){w}", dk + wp


def denials_by_kind(conn: sqlite3.Connection, win: EventWindow, kinds: Sequence[str]) -> dict[str, int]:
    """``{kind: count}`` of the events of ``kinds`` (``denied``, ``failed``)."""
    den, args = _denied(win, kinds)
    return dict(_q(conn, f"SELECT e.kind, count(*) FROM events e WHERE{den} GROUP BY e.kind", args))


def denial_groups_total(conn: sqlite3.Connection, win: EventWindow, kinds: Sequence[str]) -> int:
    """How many distinct ``(kind, code, message)`` groups the events of ``kinds`` form."""
    den, args = _denied(win, kinds)
    return _q(conn,
              f"SELECT count(*) FROM (SELECT 1 FROM events e WHERE{den} GROUP BY e.kind,"
              " json_extract(e.data, '$.code'), json_extract(e.data, '$.message'))", args)[0][0]


def denial_groups(conn: sqlite3.Connection, win: EventWindow, kinds: Sequence[str], top: int) -> list[tuple]:
    """The ``top`` groups, most first: ``(kind, code, message, count, distinct users, first ts, last ts)``."""
    den, args = _denied(win, kinds)
    return _q(conn,
              f"SELECT e.kind, json_extract(e.data, '$.code') c, json_extract(e.data, '$.message') m, count(*),"
              f" count(DISTINCT e.username), min(e.ts), max(e.ts) FROM events e WHERE{den}"
              " GROUP BY e.kind, c, m ORDER BY count(*) DESC, e.kind, m LIMIT ?", args + [top])


def auth_failure_groups(conn: sqlite3.Connection, win: EventWindow, top: int) -> list[tuple]:
    """``auth_failed`` events by method and why, most first: ``(method, why, count, users, sources)``."""
    w, wp = win.sql("e")
    af = " e.kind = 'auth_failed'" + w
    return _q(conn,
              f"SELECT json_extract(e.data, '$.method') m, json_extract(e.data, '$.why') y, count(*),"
              f" count(DISTINCT e.username), count(DISTINCT e.source) FROM events e WHERE{af}"
              " GROUP BY m, y ORDER BY count(*) DESC LIMIT ?", wp + [top])


def lockouts_recent(conn: sqlite3.Connection, win: EventWindow, top: int) -> list[tuple]:
    """The latest ``top`` lockouts: ``(event id, ts, user, source, key, failures, seconds)``."""
    w, wp = win.sql("e")
    lo = " e.kind = 'lockout'" + w
    return _q(conn,
              f"SELECT e.id, e.ts, e.username, e.source, json_extract(e.data, '$.key'), json_extract(e.data, '$.failures'),"
              f" json_extract(e.data, '$.seconds') FROM events e WHERE{lo} ORDER BY e.id DESC LIMIT ?", wp + [top])


def lockouts_by_user(conn: sqlite3.Connection, win: EventWindow, top: int) -> list[tuple]:
    """The ``top`` users by lockouts: ``(user, count)``."""
    w, wp = win.sql("e")
    lo = " e.kind = 'lockout'" + w
    return _q(conn,
              f"SELECT e.username, count(*) FROM events e WHERE{lo} GROUP BY e.username ORDER BY count(*) DESC, e.username LIMIT ?",
              wp + [top])


def approvals_by_kind(conn: sqlite3.Connection, win: EventWindow) -> dict[str, int]:
    """``{kind: count}`` of every kind starting with ``request_`` (a range of the kind index)."""
    w, wp = win.sql("e")
    return dict(_q(conn, f"SELECT e.kind, count(*) FROM events e WHERE e.kind >= 'request_' AND e.kind < 'request`'{w}"
                         " GROUP BY e.kind ORDER BY e.kind", wp))


def approval_votes_recent(conn: sqlite3.Connection, win: EventWindow, top: int) -> list[tuple]:
    """The latest ``top`` votes on access requests, who approved or denied what:
    ``(event id, ts, kind, request id, requester, role, approver, comment)``."""
    w, wp = win.sql("e")
    return _q(conn,
              f"SELECT e.id, e.ts, e.kind, json_extract(e.data, '$.request_id'), e.username, e.role,"
              f" json_extract(e.data, '$.approver'), json_extract(e.data, '$.comment') FROM events e"
              f" WHERE e.kind IN ('request_approved', 'request_denied'){w} ORDER BY e.id DESC LIMIT ?", wp + [top])


def revocations_by_kind(conn: sqlite3.Connection, win: EventWindow) -> dict[str, int]:
    """``{what was revoked (serial, key_id, key, user, ca_key): count}`` of the ``revoked`` events."""
    w, wp = win.sql("e")
    rv = " e.kind = 'revoked'" + w
    return dict(_q(conn, f"SELECT json_extract(e.data, '$.kind') k, count(*) FROM events e WHERE{rv}"
                         " GROUP BY k ORDER BY k", wp))


def revocations_recent(conn: sqlite3.Connection, win: EventWindow, top: int) -> list[tuple]:
    """The latest ``top`` revocations: ``(event id, ts, kind, value, reason, actor)``."""
    w, wp = win.sql("e")
    rv = " e.kind = 'revoked'" + w
    return _q(conn,
              f"SELECT e.id, e.ts, json_extract(e.data, '$.kind'), json_extract(e.data, '$.value'),"
              f" json_extract(e.data, '$.reason'), json_extract(e.data, '$.actor') FROM events e WHERE{rv}"
              " ORDER BY e.id DESC LIMIT ?", wp + [top])


# -- recorded sshd logins (read by the report) -------------------------------------------------


def has_logins(conn: sqlite3.Connection) -> bool:
    """Whether ``correlate`` ever created the ``logins`` table in this database."""
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'logins'").fetchone() is not None


def _logins_in(win: EventWindow) -> tuple[str, list[Any]]:
    """A login counts in the window by its own time, or (no time in the line) by the run that recorded it."""
    w, wp = win.sql("e")
    if win.bounds is None and not win.empty:
        return "1", []
    lo, hi = win.bounds or (0, -1)
    lw = ("((l.ts >= ? AND l.ts < ?) OR (l.ts IS NULL AND l.correlated_event_id BETWEEN ? AND ?"
          f" AND l.correlated_event_id IN (SELECT e.id FROM events e WHERE e.kind = 'correlated'{w})))")
    return lw, [win.since or "", win.until or "\uffff", lo, hi] + wp


def correlate_runs(conn: sqlite3.Connection, win: EventWindow) -> int:
    """How many ``correlated`` events (runs of ``audit correlate``) the window holds."""
    w, wp = win.sql("e")
    return _q(conn, f"SELECT count(*) FROM events e WHERE e.kind = 'correlated'{w}", wp)[0][0]


def logins_by_outcome(conn: sqlite3.Connection, win: EventWindow) -> dict[str, int]:
    """``{outcome (accepted, partial, refused): count}`` of the recorded logins in the window."""
    lw, lp = _logins_in(win)
    return dict(_q(conn, f"SELECT l.outcome, count(*) FROM logins l WHERE {lw} GROUP BY l.outcome", lp))


def logins_hosts_and_joined(conn: sqlite3.Connection, win: EventWindow) -> tuple[int, int]:
    """``(distinct hosts, logins joined to an issuance)`` of the recorded logins in the window."""
    lw, lp = _logins_in(win)
    hosts, joined = _q(conn, f"SELECT count(DISTINCT l.host), count(l.issued_event_id) FROM logins l WHERE {lw}",
                       lp)[0]
    return hosts, joined


_SEV = "json_extract(f.value, '$.severity')"


def login_findings_by_code(conn: sqlite3.Connection, win: EventWindow) -> list[tuple]:
    """The findings of the recorded logins in the window, counted: ``(severity, code, count)``, unordered."""
    lw, lp = _logins_in(win)
    return _q(conn,
              f"SELECT {_SEV} s, json_extract(f.value, '$.code') c, count(*) FROM logins l, json_each(l.findings) f"
              f" WHERE l.severity IS NOT NULL AND {lw} GROUP BY s, c", lp)


def login_findings_serious(conn: sqlite3.Connection, win: EventWindow, limit: int) -> list[tuple]:
    """Up to ``limit`` critical, then warning, findings, newest login first: ``(severity, code, message, host,
    ts, logged_time, account, source, serial as logged, key_id, issued_event_id, outcome)``."""
    lw, lp = _logins_in(win)
    return _q(conn,
              f"SELECT {_SEV} s, json_extract(f.value, '$.code'), json_extract(f.value, '$.message'), l.host, l.ts,"
              " l.logged_time, l.account, l.source, l.serial_text, l.key_id, l.issued_event_id, l.outcome"
              " FROM logins l, json_each(l.findings) f"
              f" WHERE l.severity IN ('critical', 'warning') AND {_SEV} IN ('critical', 'warning') AND {lw}"
              " ORDER BY CASE s WHEN 'critical' THEN 0 ELSE 1 END, l.id DESC LIMIT ?", lp + [limit])


# -- expired certificates never used ---------------------------------------------------------


def _expired(conn: sqlite3.Connection, win: EventWindow, now: float) -> tuple[str, list[Any]]:
    w, wp = win.sql("e")
    base = f"FROM certificates c JOIN events e ON e.id = c.event_id WHERE c.valid_before < ?{w}"
    args: list[Any] = [int(now)] + wp
    if win.bounds is not None:
        # Serials are allocated in issuance order, so the window is also a range of serials:
        # a range scan of the certificates' primary key instead of the whole table.
        smin, smax = win.serials(conn)
        base += " AND c.serial BETWEEN ? AND ?"
        args += [smin if smin is not None else 0, smax if smax is not None else -1]
    return base, args


def _unused(logins_known: bool) -> str:
    if not logins_known:
        return ""
    return (" AND NOT EXISTS (SELECT 1 FROM logins l WHERE l.serial = c.serial"
            " AND l.ca_fingerprint = c.ca_fingerprint AND l.outcome IN ('accepted', 'partial'))")


def expired_certificates_total(conn: sqlite3.Connection, win: EventWindow, now: float) -> int:
    """How many certificates issued in the window had expired by ``now``."""
    base, args = _expired(conn, win, now)
    return _q(conn, f"SELECT count(*) {base}", args)[0][0]


def unused_certificates_total(conn: sqlite3.Connection, win: EventWindow, now: float, logins_known: bool) -> int:
    """Of those, how many no recorded login used (``logins_known`` False: every expired one counts)."""
    base, args = _expired(conn, win, now)
    return _q(conn, f"SELECT count(*) {base}{_unused(logins_known)}", args)[0][0]


def unused_certificates_by_role(conn: sqlite3.Connection, win: EventWindow, now: float,
                                logins_known: bool) -> list[tuple]:
    """By role, most unused first: ``(role, unused, expired)``."""
    base, args = _expired(conn, win, now)
    return _q(conn,
              f"SELECT c.role, sum(CASE WHEN 1{_unused(logins_known)} THEN 1 ELSE 0 END), count(*) {base}"
              " GROUP BY c.role ORDER BY 2 DESC, c.role", args)


def unused_certificates_recent(conn: sqlite3.Connection, win: EventWindow, now: float, logins_known: bool,
                               top: int) -> list[tuple]:
    """The ``top`` unused ones, highest serial first:
    ``(serial, key_id, user, role, issued ts, valid_after, valid_before)``."""
    base, args = _expired(conn, win, now)
    return _q(conn,
              f"SELECT c.serial, c.key_id, c.username, c.role, e.ts, c.valid_after, c.valid_before {base}"
              f"{_unused(logins_known)} ORDER BY c.serial DESC LIMIT ?", args + [top])


# -- correlate: what it reads -------------------------------------------------------------------


def certificate_ca_fingerprints(conn: sqlite3.Connection) -> list[str]:
    """Every CA key fingerprint that signed a certificate recorded here."""
    return [fp for (fp,) in conn.execute("SELECT DISTINCT ca_fingerprint FROM certificates")]


def revocation_events(conn: sqlite3.Connection) -> list[tuple[int, str, Any]]:
    """Every ``revoked`` event in id order: ``(event id, ts, data)``, data decoded (None if unreadable)."""
    return [(event_id, ts, _json_or_none(data)) for event_id, ts, data in conn.execute(
        "SELECT id, ts, data FROM events WHERE kind = 'revoked' ORDER BY id")]


def logins_of_certificate(conn: sqlite3.Connection, serial: int, event_id: int, limit: int) -> list[tuple]:
    """The sshd logins ``correlate`` joined to the issuance ``event_id`` (serial ``serial``), oldest
    first: ``(host, ts, logged_time, account, source, outcome, severity)``; none without a logins table."""
    if not has_logins(conn):
        return []
    return _q(conn, "SELECT host, ts, logged_time, account, source, outcome, severity FROM logins"
                    " WHERE serial = ? AND issued_event_id = ? ORDER BY id LIMIT ?", [serial, event_id, limit])


def certificate_by_serial(conn: sqlite3.Connection, serial: int) -> tuple | None:
    """The certificate recorded under ``serial``, or None: ``(serial, key_id, user, role, key_fingerprint,
    ca_fingerprint, valid_after, valid_before, event_id, data)``, data the issuance event's, decoded
    (None if missing or unreadable)."""
    row = conn.execute(
        "SELECT c.serial, c.key_id, c.username, c.role, c.key_fingerprint, c.ca_fingerprint, c.valid_after,"
        " c.valid_before, c.event_id, e.data FROM certificates c LEFT JOIN events e ON e.id = c.event_id"
        " WHERE c.serial = ?", (serial,)).fetchone()
    return None if row is None else row[:9] + (_json_or_none(row[9]),)


def existing_line_hashes(conn: sqlite3.Connection, hashes: list[str]) -> set[str]:
    """Which of ``hashes`` the ``logins`` table already holds (asked 500 at a time)."""
    found: set[str] = set()
    for i in range(0, len(hashes), 500):
        chunk = hashes[i:i + 500]
        found.update(h for (h,) in conn.execute(
            f"SELECT line_hash FROM logins WHERE line_hash IN ({', '.join('?' * len(chunk))})", chunk))
    return found


# -- correlate: what it records -------------------------------------------------------------------

LOGIN_COLUMNS = ("line_hash", "host", "logged_time", "ts", "account", "source", "port", "serial", "serial_text",
                 "ca_fingerprint", "key_id", "key_fingerprint", "issued_event_id", "outcome", "reason", "severity",
                 "findings", "correlated_event_id", "line")


def insert_logins(conn: sqlite3.Connection, rows: Iterable[Sequence[Any]]) -> None:
    """Record logins: each row holds the values of :data:`LOGIN_COLUMNS` in that order, ``findings`` a list
    of ``{severity, code, message}`` dicts. Call inside the run's write transaction."""
    conn.executemany(
        "INSERT INTO logins (line_hash, host, logged_time, ts, account, source, port, serial, serial_text,"
        " ca_fingerprint, key_id, key_fingerprint, issued_event_id, outcome, reason, severity, findings,"
        " correlated_event_id, line) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(*r[:16], json.dumps(r[16], ensure_ascii=False), *r[17:]) for r in rows])


# -- the logins table -------------------------------------------------------------------------
# (to move to ca/store/schema.py with the rest of the DDL)

def ensure_logins_schema(conn: sqlite3.Connection) -> None:
    """Create the ``logins`` table (``schema.LOGINS``) if it is missing."""
    ensure_tables(conn, schema.LOGINS_OBJECTS, schema.LOGINS, "logins")


class ReviewQueries:
    """The queries above bound to one store's connection: ``store.review``, which report and
    correlate call without ever holding a connection. A second backend provides the same names."""

    def __init__(self, conn: sqlite3.Connection):
        for fn in (event_window, events_by_kind, issued_by_role, issued_users_total, issued_by_user, issued_per_day, issued_longest, issued_by_principal, issued_with_principal_total, issued_with_principal_by_user, issued_with_principal_recent, issued_outside_hours_total, issued_outside_hours_by_user, issued_outside_hours_recent, denials_by_kind, denial_groups_total, denial_groups, auth_failure_groups, lockouts_recent, lockouts_by_user, approvals_by_kind, approval_votes_recent, revocations_by_kind, revocations_recent, has_logins, correlate_runs, logins_by_outcome, logins_hosts_and_joined, login_findings_by_code, login_findings_serious, expired_certificates_total, unused_certificates_total, unused_certificates_by_role, unused_certificates_recent, certificate_ca_fingerprints, revocation_events, logins_of_certificate, certificate_by_serial, existing_line_hashes, insert_logins, ensure_logins_schema):
            setattr(self, fn.__name__, functools.partial(fn, conn))
