"""The ``users`` and ``user_keys`` tables in PostgreSQL (logic: :mod:`ca.auth.users`)."""

from __future__ import annotations

from ca.store.base import UserRow
from ca.store.postgres.connection import Connection
from ca.store.schema import USER_COLUMNS

_SELECT = f"SELECT {', '.join(USER_COLUMNS)} FROM users"
_READ = "read users from"
_WRITE = "write users to"


class Users:
    """Users and their enrolled keys on one connection."""

    def __init__(self, conn: Connection):
        self.conn = conn

    # -- reads ---------------------------------------------------------------------

    def get(self, name: str) -> UserRow | None:
        row = self.conn.one(f"{_SELECT} WHERE name = %s", (name,), what=_READ)
        return UserRow(*row) if row else None

    def all(self) -> list[UserRow]:
        return [UserRow(*r) for r in self.conn.all(f"{_SELECT} ORDER BY name", what=_READ)]

    def keys(self, name: str) -> list[tuple[str, str, str, str]]:
        return [tuple(r) for r in self.conn.all(
            "SELECT fingerprint, algorithm, public, added FROM user_keys WHERE username = %s"
            " ORDER BY added, fingerprint", (name,), what=_READ)]

    def all_keys(self) -> list[tuple[str, str]]:
        return [tuple(r) for r in self.conn.all("SELECT fingerprint, username FROM user_keys ORDER BY fingerprint",
                                                what=_READ)]

    def key_owner(self, fingerprint: str) -> str | None:
        row = self.conn.one("SELECT username FROM user_keys WHERE fingerprint = %s", (fingerprint,), what=_READ)
        return row[0] if row else None

    def enabled_key_public(self, name: str, fingerprint: str) -> str | None:
        row = self.conn.one(
            "SELECT k.public FROM user_keys k JOIN users u ON u.name = k.username"
            " WHERE k.fingerprint = %s AND k.username = %s AND u.disabled = 0", (fingerprint, name), what=_READ)
        return row[0] if row else None

    # -- writes (inside a transaction) ---------------------------------------------

    def insert(self, name: str, *, password_hash: str | None, totp_secret: str | None, created: str) -> None:
        self.conn.execute(
            "INSERT INTO users (name, disabled, password_hash, totp_secret, totp_last_step, created)"
            " VALUES (%s, 0, %s, %s, 0, %s)", (name, password_hash, totp_secret, created), what=_WRITE)

    def insert_key(self, fingerprint: str, name: str, algorithm: str, public: str, added: str) -> None:
        self.conn.execute("INSERT INTO user_keys (fingerprint, username, algorithm, public, added)"
                          " VALUES (%s, %s, %s, %s, %s)", (fingerprint, name, algorithm, public, added), what=_WRITE)

    def delete_key(self, name: str, fingerprint: str) -> bool:
        cur = self.conn.execute("DELETE FROM user_keys WHERE fingerprint = %s AND username = %s", (fingerprint, name),
                                what=_WRITE)
        return cur.rowcount == 1

    def set_disabled(self, name: str, disabled: bool, reason: str | None = None) -> None:
        self.conn.execute("UPDATE users SET disabled = %s, disabled_reason = %s WHERE name = %s",
                          (1 if disabled else 0, reason if disabled else None, name), what=_WRITE)

    def set_password_hash(self, name: str, password_hash: str, *, if_hash: str | None = None) -> bool:
        if if_hash is None:
            cur = self.conn.execute("UPDATE users SET password_hash = %s WHERE name = %s", (password_hash, name),
                                    what=_WRITE)
        else:
            cur = self.conn.execute("UPDATE users SET password_hash = %s WHERE name = %s AND password_hash = %s",
                                    (password_hash, name, if_hash), what=_WRITE)
        return cur.rowcount == 1

    def set_totp_secret(self, name: str, secret: str) -> None:
        self.conn.execute("UPDATE users SET totp_secret = %s, totp_last_step = 0 WHERE name = %s", (secret, name),
                          what=_WRITE)

    def set_totp_last_step(self, name: str, step: int) -> None:
        self.conn.execute("UPDATE users SET totp_last_step = %s WHERE name = %s", (step, name), what=_WRITE)
