"""Copy an SQLite CA database into an empty PostgreSQL one (``iast-ca db copy``).

Every row of every table is copied as stored, in one PostgreSQL transaction
that holds the chain lock: the events keep their ids, texts and hashes, so
``audit verify``, old checkpoints and inclusion proofs verify against the
copy exactly as against the original (the chain hashes column values, not
the engine: ca.audit.chain.canonical). The destination must hold no event,
user or request; nothing is written to the source.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from ca.errors import StateError
from ca.store import schema

# (table, the columns copied, the order rows are read in). Identity columns (revocations.id,
# logins.id) are copied as they are; ``seq`` (PostgreSQL's rowid) is assigned in rowid order.
_TABLES = (
    ("events", schema.EVENT_COLUMNS, "id"),
    ("users", schema.USER_COLUMNS, "name"),
    ("user_keys", ("fingerprint", "username", "algorithm", "public", "added"), "rowid"),
    ("certificates", schema.CERTIFICATE_COLUMNS, "serial"),
    ("auth_throttle", ("key", "failures", "first_failure", "blocked_until"), "rowid"),
    ("revocations", schema.REVOCATION_COLUMNS, "id"),
    ("krl_state", ("id", "version", "content_sha256", "generated"), "id"),
    ("requests", schema.REQUEST_COLUMNS, "rowid"),
    ("approvals", ("request_id", "approver", "decision", "comment", "ts"), "rowid"),
    # A token used before the copy stays a replay after it; a join token used stays used
    # (docs/security.md, the SSO and host join token rules).
    ("used_tokens", ("token_key", "issuer", "expires_at"), "token_key"),
    ("join_tokens", schema.JOIN_TOKEN_COLUMNS, "rowid"),
    ("enrolment_codes", schema.ENROLMENT_CODE_COLUMNS, "rowid"),
)
_LOGINS = ("id", "line_hash", "host", "logged_time", "ts", "account", "source", "port", "serial", "serial_text",
           "ca_fingerprint", "key_id", "key_fingerprint", "issued_event_id", "outcome", "reason", "severity",
           "findings", "correlated_event_id", "line")
_BATCH = 5_000


def copy_sqlite_to_postgres(source: Path, url: str, progress=None) -> dict[str, int]:
    """Copy the SQLite database at ``source`` into the (empty) PostgreSQL database at ``url``.

    Returns ``{table: rows copied}``. Raises StateError if the destination holds data.
    """
    from ca.store.postgres import PostgresStore
    from ca.store.sqlite import SQLiteStore

    src = SQLiteStore(source)  # opens (and, if old, migrates) the source to the current schema
    dst = PostgresStore(url)
    counts: dict[str, int] = {}
    try:
        conn = dst.conn
        for table in ("events", "users", "requests", "revocations", "certificates", "join_tokens"):
            if conn.one(f"SELECT 1 FROM {table} LIMIT 1") is not None:
                raise StateError(f"the database {dst.path} is not empty ({table} has rows); refusing to copy into it")
        tables = list(_TABLES)
        if src.has_logins():
            dst.ensure_logins()
            tables.append(("logins", _LOGINS, "id"))
        with conn.transaction():
            for table, columns, order in tables:
                cols = ", ".join(columns)
                insert = f"INSERT INTO {table} ({cols}) VALUES ({', '.join(['%s'] * len(columns))})"
                cur = src.conn.execute(f"SELECT {cols} FROM {table} ORDER BY {order}")
                n = 0
                while rows := cur.fetchmany(_BATCH):
                    conn.executemany(insert, rows, what="copy into")
                    n += len(rows)
                    if progress:
                        progress(table, n)
                counts[table] = n
            for table in ("revocations", "logins"):
                if table == "logins" and "logins" not in counts:
                    continue
                # Identity columns continue after the copied ids.
                conn.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'),"
                             f" coalesce((SELECT max(id) FROM {table}), 0) + 1, false)", what="copy into")
    except sqlite3.Error as e:
        raise StateError(f"cannot read {source}: {e}") from None
    finally:
        src.close()
        dst.close()
    return counts
