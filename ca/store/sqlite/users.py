"""The ``users`` and ``user_keys`` tables in SQLite (logic: :mod:`ca.auth.users`)."""

from __future__ import annotations

import sqlite3

from ca.store.base import UserRow
from ca.store.schema import USER_COLUMNS
from ca.store.sqlite.connection import reading

_SELECT = f"SELECT {', '.join(USER_COLUMNS)} FROM users"


class Users:
    """Users and their enrolled keys on one connection."""

    def __init__(self, conn: sqlite3.Connection, path):
        self.conn = conn
        self._what = f"users from {path}"

    # -- reads ---------------------------------------------------------------------

    def get(self, name: str) -> UserRow | None:
        with reading(self._what):
            row = self.conn.execute(f"{_SELECT} WHERE name = ?", (name,)).fetchone()
        return UserRow(*row) if row else None

    def all(self) -> list[UserRow]:
        with reading(self._what):
            return [UserRow(*r) for r in self.conn.execute(f"{_SELECT} ORDER BY name").fetchall()]

    def keys(self, name: str) -> list[tuple[str, str, str, str]]:
        with reading(self._what):
            return self.conn.execute(
                "SELECT fingerprint, algorithm, public, added FROM user_keys WHERE username = ?"
                " ORDER BY added, fingerprint", (name,)).fetchall()

    def all_keys(self) -> list[tuple[str, str]]:
        with reading(self._what):
            return self.conn.execute("SELECT fingerprint, username FROM user_keys ORDER BY fingerprint").fetchall()

    def key_owner(self, fingerprint: str) -> str | None:
        with reading(self._what):
            row = self.conn.execute("SELECT username FROM user_keys WHERE fingerprint = ?", (fingerprint,)).fetchone()
        return row[0] if row else None

    def enabled_key_public(self, name: str, fingerprint: str) -> str | None:
        with reading(self._what):
            row = self.conn.execute(
                "SELECT k.public FROM user_keys k JOIN users u ON u.name = k.username"
                " WHERE k.fingerprint = ? AND k.username = ? AND u.disabled = 0", (fingerprint, name)).fetchone()
        return row[0] if row else None

    # -- writes (inside a transaction) ---------------------------------------------

    def insert(self, name: str, *, password_hash: str | None, totp_secret: str | None, created: str) -> None:
        self.conn.execute(
            "INSERT INTO users (name, disabled, password_hash, totp_secret, totp_last_step, created)"
            " VALUES (?, 0, ?, ?, 0, ?)", (name, password_hash, totp_secret, created))

    def insert_key(self, fingerprint: str, name: str, algorithm: str, public: str, added: str) -> None:
        self.conn.execute("INSERT INTO user_keys (fingerprint, username, algorithm, public, added)"
                          " VALUES (?, ?, ?, ?, ?)", (fingerprint, name, algorithm, public, added))

    def delete_key(self, name: str, fingerprint: str) -> bool:
        cur = self.conn.execute("DELETE FROM user_keys WHERE fingerprint = ? AND username = ?", (fingerprint, name))
        return cur.rowcount == 1

    def set_disabled(self, name: str, disabled: bool, reason: str | None = None) -> None:
        self.conn.execute("UPDATE users SET disabled = ?, disabled_reason = ? WHERE name = ?",
                          (1 if disabled else 0, reason if disabled else None, name))

    def set_password_hash(self, name: str, password_hash: str, *, if_hash: str | None = None) -> bool:
        if if_hash is None:
            cur = self.conn.execute("UPDATE users SET password_hash = ? WHERE name = ?", (password_hash, name))
        else:
            cur = self.conn.execute("UPDATE users SET password_hash = ? WHERE name = ? AND password_hash = ?",
                                    (password_hash, name, if_hash))
        return cur.rowcount == 1

    def set_totp_secret(self, name: str, secret: str) -> None:
        self.conn.execute("UPDATE users SET totp_secret = ?, totp_last_step = 0 WHERE name = ?", (secret, name))

    def set_totp_last_step(self, name: str, step: int) -> None:
        self.conn.execute("UPDATE users SET totp_last_step = ? WHERE name = ?", (step, name))
