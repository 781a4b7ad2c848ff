"""The ``requests`` and ``approvals`` tables in PostgreSQL (logic: :mod:`ca.access.approvals`)."""

from __future__ import annotations

from collections.abc import Sequence

from ca.store.base import RequestRow
from ca.store.postgres.connection import Connection
from ca.store.schema import REQUEST_COLUMNS

_COLUMNS = ", ".join(REQUEST_COLUMNS)
_READ = "read requests from"
_WRITE = "write requests to"


class Requests:
    """Access requests and their votes on one connection (``seq`` orders what SQLite's rowid does)."""

    def __init__(self, conn: Connection):
        self.conn = conn

    def get(self, request_id: str) -> RequestRow | None:
        row = self.conn.one(f"SELECT {_COLUMNS} FROM requests WHERE id = %s", (request_id,), what=_READ)
        return RequestRow(*row) if row else None

    def votes(self, request_id: str) -> list[tuple[str, str, str | None, int]]:
        return [tuple(r) for r in self.conn.all(
            "SELECT approver, decision, comment, ts FROM approvals WHERE request_id = %s ORDER BY ts, seq",
            (request_id,), what=_READ)]

    def all_votes(self) -> list[tuple[str, str, str]]:
        return [tuple(r) for r in self.conn.all("SELECT request_id, approver, decision FROM approvals", what=_READ)]

    def approvers(self, request_id: str) -> list[str]:
        return [r[0] for r in self.conn.all(
            "SELECT approver FROM approvals WHERE request_id = %s AND decision = 'approve' ORDER BY ts, seq",
            (request_id,), what=_READ)]

    def list(self, *, username: str | None = None, role: str | None = None,
             statuses: Sequence[str] | None = None, limit: int | None = 100) -> list[RequestRow]:
        where, args = [], []
        if username is not None:
            where.append("username = %s")
            args.append(username)
        if role is not None:
            where.append("role = %s")
            args.append(role)
        if statuses is not None:
            where.append("status = ANY(%s)")
            args.append(list(statuses))
        sql = f"SELECT {_COLUMNS} FROM requests" + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY created DESC, seq DESC"
        if limit is not None:
            sql += " LIMIT %s"
            args.append(int(limit))
        return [RequestRow(*r) for r in self.conn.all(sql, args, what=_READ)]

    def any_due(self, now: int) -> bool:
        return self.conn.one(
            "SELECT 1 FROM requests WHERE status IN ('pending', 'approved') AND expires_at <= %s LIMIT 1",
            (now,), what=_READ) is not None

    def due(self, now: int) -> list[tuple[str, str, str, str, int]]:
        return [tuple(r) for r in self.conn.all(
            "SELECT id, username, role, status, expires_at FROM requests"
            " WHERE status IN ('pending', 'approved') AND expires_at <= %s ORDER BY expires_at, id", (now,),
            what=_READ)]

    # -- writes (inside a transaction) -----------------------------------------------

    def insert(self, request_id: str, username: str, role: str, ttl: int, reason: str, created: int,
               expires_at: int) -> None:
        self.conn.execute(
            f"INSERT INTO requests ({_COLUMNS}) VALUES (%s, %s, %s, %s, %s, 'pending', %s, NULL, %s, NULL)",
            (request_id, username, role, ttl, reason, created, expires_at), what=_WRITE)

    def set_status(self, request_id: str, status: str, *, decided: int | None = None,
                   expires_at: int | None = None) -> None:
        sets, args = ["status = %s"], [status]
        if decided is not None:
            sets.append("decided = %s")
            args.append(decided)
        if expires_at is not None:
            sets.append("expires_at = %s")
            args.append(expires_at)
        self.conn.execute(f"UPDATE requests SET {', '.join(sets)} WHERE id = %s", (*args, request_id), what=_WRITE)

    def mark_used(self, request_id: str, serial: int) -> bool:
        cur = self.conn.execute("UPDATE requests SET status = 'used', used_serial = %s WHERE id = %s"
                                " AND status = 'approved'", (serial, request_id), what=_WRITE)
        return cur.rowcount == 1

    def add_vote(self, request_id: str, approver: str, decision: str, comment: str | None, ts: int) -> None:
        self.conn.execute("INSERT INTO approvals (request_id, approver, decision, comment, ts)"
                          " VALUES (%s, %s, %s, %s, %s)", (request_id, approver, decision, comment, ts), what=_WRITE)
