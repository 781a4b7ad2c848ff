"""The ``requests`` and ``approvals`` tables in SQLite (logic: :mod:`ca.access.approvals`)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from ca.store.base import RequestRow
from ca.store.schema import REQUEST_COLUMNS
from ca.store.sqlite.connection import reading

_COLUMNS = ", ".join(REQUEST_COLUMNS)


class Requests:
    """Access requests and their votes on one connection."""

    def __init__(self, conn: sqlite3.Connection, path):
        self.conn = conn
        self._what = f"requests from {path}"

    def get(self, request_id: str) -> RequestRow | None:
        with reading(self._what):
            row = self.conn.execute(f"SELECT {_COLUMNS} FROM requests WHERE id = ?", (request_id,)).fetchone()
        return RequestRow(*row) if row else None

    def votes(self, request_id: str) -> list[tuple[str, str, str | None, int]]:
        with reading(self._what):
            return self.conn.execute(
                "SELECT approver, decision, comment, ts FROM approvals WHERE request_id = ? ORDER BY ts, rowid",
                (request_id,)).fetchall()

    def approvers(self, request_id: str) -> list[str]:
        with reading(self._what):
            return [r[0] for r in self.conn.execute(
                "SELECT approver FROM approvals WHERE request_id = ? AND decision = 'approve' ORDER BY ts, rowid",
                (request_id,))]

    def list(self, *, username: str | None = None, role: str | None = None,
             statuses: Sequence[str] | None = None, limit: int | None = 100) -> list[RequestRow]:
        where, args = [], []
        for col, val in (("username", username), ("role", role)):
            if val is not None:
                where.append(f"{col} = ?")
                args.append(val)
        if statuses is not None:
            where.append(f"status IN ({', '.join('?' * len(statuses))})")
            args.extend(statuses)
        sql = f"SELECT {_COLUMNS} FROM requests" + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY created DESC, rowid DESC" + (f" LIMIT {int(limit)}" if limit is not None else "")
        with reading(self._what):
            return [RequestRow(*r) for r in self.conn.execute(sql, args).fetchall()]

    def all_votes(self) -> list[tuple[str, str, str]]:
        with reading(self._what):
            return self.conn.execute("SELECT request_id, approver, decision FROM approvals").fetchall()

    def any_due(self, now: int) -> bool:
        with reading(self._what):
            return self.conn.execute(
                "SELECT 1 FROM requests WHERE status IN ('pending', 'approved') AND expires_at <= ? LIMIT 1",
                (now,)).fetchone() is not None

    def due(self, now: int) -> list[tuple[str, str, str, str, int]]:
        return self.conn.execute(
            "SELECT id, username, role, status, expires_at FROM requests"
            " WHERE status IN ('pending', 'approved') AND expires_at <= ? ORDER BY expires_at, id", (now,)).fetchall()

    # -- writes (inside a transaction) -----------------------------------------------

    def insert(self, request_id: str, username: str, role: str, ttl: int, reason: str, created: int,
               expires_at: int) -> None:
        self.conn.execute(
            f"INSERT INTO requests ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, 'pending', ?, NULL, ?, NULL)",
            (request_id, username, role, ttl, reason, created, expires_at))

    def set_status(self, request_id: str, status: str, *, decided: int | None = None,
                   expires_at: int | None = None) -> None:
        sets, args = ["status = ?"], [status]
        if decided is not None:
            sets.append("decided = ?")
            args.append(decided)
        if expires_at is not None:
            sets.append("expires_at = ?")
            args.append(expires_at)
        self.conn.execute(f"UPDATE requests SET {', '.join(sets)} WHERE id = ?", (*args, request_id))

    def mark_used(self, request_id: str, serial: int) -> bool:
        cur = self.conn.execute("UPDATE requests SET status = 'used', used_serial = ? WHERE id = ?"
                                " AND status = 'approved'", (serial, request_id))
        return cur.rowcount == 1

    def add_vote(self, request_id: str, approver: str, decision: str, comment: str | None, ts: int) -> None:
        self.conn.execute("INSERT INTO approvals (request_id, approver, decision, comment, ts) VALUES (?, ?, ?, ?, ?)",
                          (request_id, approver, decision, comment, ts))
