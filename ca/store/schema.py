"""The schema of ``ca.db``: every table, index and trigger, its version, and the numbered migrations.

One owner for the whole schema: no other module creates a table or names a
column in SQL. The statements here are SQLite's; a second engine keeps the
same table and column names and the same version numbers, and translates
the statements (its own package holds the translation).

Engine-neutral choices, so that a PostgreSQL backend needs no rename later:

* no column is called ``user`` (a reserved word in PostgreSQL): the user
  name column is ``username`` everywhere (``Event.user`` keeps its name in
  Python);
* ``events.id`` is assigned by the writer from the chain head it read
  under the chain lock (never an engine serial or ``AUTOINCREMENT``), and
  the certificate serial is ``max(serial) + 1`` read in the same write
  transaction: both are correct on any engine whose write transaction
  holds the chain lock (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: an
  advisory lock or a locked chain-head row, see :mod:`ca.store.base`).

The hash chain covers the column *values* of an event in a fixed order
(``EVENT_COLUMNS[:9]``, see :func:`ca.audit.chain.canonical`), not their
names, so renaming a column changes no hash and no checkpoint.

Versions:

1. ``events`` and ``certificates`` (the first schema);
2. ``events(user, ts)`` index, for a user's events in a time window;
3. ``user`` columns renamed ``username`` (events, certificates, user_keys,
   requests), and every module table (users, user_keys, auth_throttle,
   revocations, krl_state, requests, approvals) created with the schema
   instead of lazily by its module. ``logins`` stays created on demand
   (by the first ``correlate``): its presence tells the report that sshd
   logs were ever correlated;
4. ``used_tokens``: identity-provider and workload tokens already accepted
   (by ``jti`` or hash), kept until they expire, so that a token is used
   once across every replica sharing the database (docs/security.md, SSO rules);
5. ``join_tokens``: one-time host join tokens (``iast-ca host token``), kept
   as the SHA-256 of their secret, used at most once;
6. ``enrolment_codes``: one-time self-enrolment codes (``iast-ca user invite``),
   kept as the SHA-256 of their secret, used at most once (docs/security.md rule 86).
"""

from __future__ import annotations

import functools

SCHEMA_VERSION = 6

# The columns of an event row, in the order the chain hashes them (the first
# nine; see ca.audit.chain.canonical) and every reader reads them.
EVENT_COLUMNS = ("id", "ts", "kind", "username", "role", "serial", "key_id", "source", "data", "prev_hash", "hash")
CERTIFICATE_COLUMNS = ("serial", "key_id", "username", "role", "key_fingerprint", "ca_fingerprint",
                       "valid_after", "valid_before", "event_id")
USER_COLUMNS = ("name", "disabled", "disabled_reason", "password_hash", "totp_secret", "totp_last_step", "created")
REQUEST_COLUMNS = ("id", "username", "role", "ttl", "reason", "status", "created", "decided", "expires_at",
                   "used_serial")
REVOCATION_COLUMNS = ("id", "kind", "value", "serial", "ca_fingerprint", "public", "reason", "actor", "event_id",
                      "created")
JOIN_TOKEN_COLUMNS = ("id", "secret_sha256", "host", "role", "created", "expires_at", "used_at", "used_serial",
                      "event_id")
ENROLMENT_CODE_COLUMNS = ("id", "secret_sha256", "username", "created", "expires_at", "used_at", "event_id")
REQUEST_STATUSES = ("pending", "approved", "denied", "cancelled", "expired", "used")
REVOCATION_KINDS = ("serial", "key_id", "key", "ca_key", "user")

# -- the schema as it is now (a new database gets exactly this) ----------------------

EVENTS = (
    """CREATE TABLE IF NOT EXISTS events (
        id INTEGER PRIMARY KEY,
        ts TEXT NOT NULL,
        kind TEXT NOT NULL,
        username TEXT,
        role TEXT,
        serial INTEGER,
        key_id TEXT,
        source TEXT,
        data TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    )""",
    # Index names are kept from version 2 (a rename keeps them), so plans name the same indexes.
    "CREATE INDEX IF NOT EXISTS events_user ON events(username, id)",
    "CREATE INDEX IF NOT EXISTS events_kind ON events(kind, id)",
    "CREATE INDEX IF NOT EXISTS events_role ON events(role, id)",
    "CREATE INDEX IF NOT EXISTS events_serial ON events(serial) WHERE serial IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS events_ts ON events(ts)",
    "CREATE INDEX IF NOT EXISTS events_user_ts ON events(username, ts)",
    # Append-only: the database itself refuses edits. This stops accidents, not
    # an attacker with the file (who can drop the triggers): the hash chain and
    # signed checkpoints are what catch that.
    """CREATE TRIGGER IF NOT EXISTS events_no_update BEFORE UPDATE ON events
       BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END""",
    """CREATE TRIGGER IF NOT EXISTS events_no_delete BEFORE DELETE ON events
       BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END""",
)

# One row per issued certificate, written in the same transaction as its
# 'issued' event. Derived data (it can be rebuilt from the log); it makes
# serial allocation, revocation and lookups cheap.
CERTIFICATES = (
    """CREATE TABLE IF NOT EXISTS certificates (
        serial INTEGER PRIMARY KEY,
        key_id TEXT NOT NULL UNIQUE,
        username TEXT NOT NULL,
        role TEXT NOT NULL,
        key_fingerprint TEXT NOT NULL,
        ca_fingerprint TEXT NOT NULL,
        valid_after INTEGER NOT NULL,
        valid_before INTEGER NOT NULL,
        event_id INTEGER NOT NULL REFERENCES events(id)
    )""",
    "CREATE INDEX IF NOT EXISTS certificates_user ON certificates(username, valid_before)",
    "CREATE INDEX IF NOT EXISTS certificates_key ON certificates(key_fingerprint)",
)

# The users of the CA service (ca.auth.users): password hashes and TOTP secrets never leave these rows.
USERS = (
    """CREATE TABLE IF NOT EXISTS users (
        name TEXT PRIMARY KEY,
        disabled INTEGER NOT NULL DEFAULT 0,
        disabled_reason TEXT,
        password_hash TEXT,
        totp_secret TEXT,
        totp_last_step INTEGER NOT NULL DEFAULT 0,
        created TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS user_keys (
        fingerprint TEXT PRIMARY KEY,
        username TEXT NOT NULL REFERENCES users(name),
        algorithm TEXT NOT NULL,
        public TEXT NOT NULL,
        added TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS user_keys_user ON user_keys(username)",
)

# Failed-login counters (ca.auth.throttle); not part of the hash chain.
THROTTLE = (
    """CREATE TABLE IF NOT EXISTS auth_throttle (
        key TEXT PRIMARY KEY,          -- 'user:NAME' or 'addr:ADDRESS'
        failures INTEGER NOT NULL,
        first_failure REAL NOT NULL,
        blocked_until REAL NOT NULL
    )""",
)

# Revocations and the KRL version (ca.access.revocation).
REVOCATIONS = (
    f"""CREATE TABLE IF NOT EXISTS revocations (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL CHECK (kind IN ({", ".join(repr(k) for k in REVOCATION_KINDS)})),
        value TEXT NOT NULL,
        serial INTEGER,              -- kind 'serial' only: the serial as a number
        ca_fingerprint TEXT,         -- the CA that signed the certificate (serial, key_id), or the CA key (ca_key)
        public TEXT,                 -- kind 'key'/'ca_key': the public key 'TYPE BASE64', when known
        reason TEXT NOT NULL,
        actor TEXT,
        event_id INTEGER NOT NULL REFERENCES events(id),
        created INTEGER NOT NULL,    -- unix seconds
        UNIQUE (kind, value)
    )""",
    "CREATE INDEX IF NOT EXISTS revocations_serial ON revocations(serial) WHERE serial IS NOT NULL",
    # Revocations are never undone by editing the table; like the event log it refuses edits.
    """CREATE TRIGGER IF NOT EXISTS revocations_no_update BEFORE UPDATE ON revocations
       BEGIN SELECT RAISE(ABORT, 'revocations cannot be changed'); END""",
    """CREATE TRIGGER IF NOT EXISTS revocations_no_delete BEFORE DELETE ON revocations
       BEGIN SELECT RAISE(ABORT, 'revocations cannot be deleted'); END""",
    """CREATE TABLE IF NOT EXISTS krl_state (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        version INTEGER NOT NULL CHECK (version >= 1),
        content_sha256 TEXT NOT NULL,
        generated INTEGER NOT NULL
    )""",
    """CREATE TRIGGER IF NOT EXISTS krl_version_only_increases BEFORE UPDATE ON krl_state
       WHEN NEW.version < OLD.version
       BEGIN SELECT RAISE(ABORT, 'the KRL version only increases'); END""",
    """CREATE TRIGGER IF NOT EXISTS krl_state_no_delete BEFORE DELETE ON krl_state
       BEGIN SELECT RAISE(ABORT, 'the KRL version only increases'); END""",
)

# Access requests and their votes (ca.access.approvals).
REQUESTS = (
    f"""CREATE TABLE IF NOT EXISTS requests (
        id TEXT PRIMARY KEY,
        username TEXT NOT NULL,
        role TEXT NOT NULL,
        ttl INTEGER NOT NULL,
        reason TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ({", ".join(repr(s) for s in REQUEST_STATUSES)})),
        created INTEGER NOT NULL,
        decided INTEGER,
        expires_at INTEGER NOT NULL,
        used_serial INTEGER
    )""",
    "CREATE INDEX IF NOT EXISTS requests_open ON requests(status, expires_at)",
    "CREATE INDEX IF NOT EXISTS requests_user ON requests(username, role, created)",
    """CREATE TABLE IF NOT EXISTS approvals (
        request_id TEXT NOT NULL REFERENCES requests(id),
        approver TEXT NOT NULL,
        decision TEXT NOT NULL CHECK (decision IN ('approve', 'deny')),
        comment TEXT,
        ts INTEGER NOT NULL,
        UNIQUE (request_id, approver)
    )""",
)

# One-time host join tokens (ca.issuance.authority, iast-ca host token). Only the SHA-256 of the
# secret is kept: the database alone cannot enrol a host. A token is used at most once (used_at is
# set, in the issuing transaction, only while it is NULL) and never changes otherwise.
JOIN_TOKENS = (
    """CREATE TABLE IF NOT EXISTS join_tokens (
        id TEXT PRIMARY KEY,
        secret_sha256 TEXT NOT NULL,
        host TEXT NOT NULL,
        role TEXT NOT NULL,
        created INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        used_at INTEGER,
        used_serial INTEGER,
        event_id INTEGER NOT NULL REFERENCES events(id)
    )""",
    """CREATE TRIGGER IF NOT EXISTS join_tokens_once BEFORE UPDATE ON join_tokens
       WHEN OLD.used_at IS NOT NULL OR NEW.id IS NOT OLD.id OR NEW.secret_sha256 IS NOT OLD.secret_sha256
            OR NEW.host IS NOT OLD.host OR NEW.role IS NOT OLD.role OR NEW.expires_at IS NOT OLD.expires_at
       BEGIN SELECT RAISE(ABORT, 'a join token is used once and never changed'); END""",
    """CREATE TRIGGER IF NOT EXISTS join_tokens_no_delete BEFORE DELETE ON join_tokens
       BEGIN SELECT RAISE(ABORT, 'join tokens cannot be deleted'); END""",
)

# One-time self-enrolment codes (ca.auth.enrol, iast-ca user invite): as join tokens, only the
# SHA-256 of the secret is kept, and a code is used at most once and never changes otherwise.
ENROLMENT_CODES = (
    """CREATE TABLE IF NOT EXISTS enrolment_codes (
        id TEXT PRIMARY KEY,
        secret_sha256 TEXT NOT NULL,
        username TEXT NOT NULL,
        created INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        used_at INTEGER,
        event_id INTEGER NOT NULL REFERENCES events(id)
    )""",
    """CREATE TRIGGER IF NOT EXISTS enrolment_codes_once BEFORE UPDATE ON enrolment_codes
       WHEN OLD.used_at IS NOT NULL OR NEW.id IS NOT OLD.id OR NEW.secret_sha256 IS NOT OLD.secret_sha256
            OR NEW.username IS NOT OLD.username OR NEW.expires_at IS NOT OLD.expires_at
       BEGIN SELECT RAISE(ABORT, 'an enrolment code is used once and never changed'); END""",
    """CREATE TRIGGER IF NOT EXISTS enrolment_codes_no_delete BEFORE DELETE ON enrolment_codes
       BEGIN SELECT RAISE(ABORT, 'enrolment codes cannot be deleted'); END""",
)

# sshd logins correlated with issuances (ca.review.correlate). Created on demand, by the first
# correlate run, not with the schema: whether it exists tells the report that logs were correlated.
LOGINS = (
    """CREATE TABLE IF NOT EXISTS logins (
        id INTEGER PRIMARY KEY,
        line_hash TEXT NOT NULL UNIQUE,   -- sha256(host "\\n" line): a line is recorded once
        host TEXT NOT NULL,
        logged_time TEXT,                 -- the time as written in the log, if any
        ts TEXT,                          -- that time in UTC (the events.ts form), if it could be read
        account TEXT,                     -- the account logged in to (NULL: not in the line)
        source TEXT,
        port INTEGER,
        serial INTEGER,                   -- NULL if the logged serial does not fit in 63 bits
        serial_text TEXT,                 -- the serial as logged
        ca_fingerprint TEXT,
        key_id TEXT NOT NULL,
        key_fingerprint TEXT,
        issued_event_id INTEGER,          -- the issuance it joins to, or NULL
        outcome TEXT NOT NULL CHECK (outcome IN ('accepted', 'partial', 'refused')),
        reason TEXT,                      -- why sshd refused it, when it said so
        severity TEXT,                    -- the worst finding, or NULL
        findings TEXT NOT NULL,           -- JSON list of {severity, code, message}
        correlated_event_id INTEGER NOT NULL,  -- the 'correlated' event of the run that recorded it
        line TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS logins_serial ON logins(serial, ca_fingerprint)",
    "CREATE INDEX IF NOT EXISTS logins_ts ON logins(ts)",
    "CREATE INDEX IF NOT EXISTS logins_run ON logins(correlated_event_id)",
    "CREATE INDEX IF NOT EXISTS logins_severity ON logins(severity) WHERE severity IS NOT NULL",
    """CREATE TRIGGER IF NOT EXISTS logins_no_update BEFORE UPDATE ON logins
       BEGIN SELECT RAISE(ABORT, 'recorded logins cannot be changed'); END""",
    """CREATE TRIGGER IF NOT EXISTS logins_no_delete BEFORE DELETE ON logins
       BEGIN SELECT RAISE(ABORT, 'recorded logins cannot be deleted'); END""",
)
LOGINS_OBJECTS = frozenset({"logins", "logins_serial", "logins_ts", "logins_run", "logins_severity",
                            "logins_no_update", "logins_no_delete"})

# Signed tokens (OIDC ID tokens, workload JWTs) already used, until they expire.
USED_TOKENS = (
    """CREATE TABLE IF NOT EXISTS used_tokens (
        token_key TEXT PRIMARY KEY,       -- sha256 of (issuer, jti), or of the token when it has no jti
        issuer TEXT NOT NULL,
        expires_at INTEGER NOT NULL       -- unix seconds: the row may go once the token is dead
    )""",
    "CREATE INDEX IF NOT EXISTS used_tokens_expiry ON used_tokens(expires_at)",
)

# Everything a database at SCHEMA_VERSION has (LOGINS comes on demand).
CURRENT = (EVENTS + CERTIFICATES + USERS + THROTTLE + REVOCATIONS + REQUESTS + USED_TOKENS + JOIN_TOKENS
           + ENROLMENT_CODES)

# -- migrations ------------------------------------------------------------------------
#
# MIGRATIONS[n] takes a database at version n - 1 to version n. Each step is an SQL
# statement, or a (table, old column, new column) rename applied only if the table has
# the old column (the module tables of versions 1-2 were created lazily, so a table
# may be missing, and a missing one is then created in its current form). The store
# runs them, in order, in one write transaction, and then sets ``user_version``.

RENAME = "rename"

# Version 1 as it created the two first tables (before any rename).
_V1 = (
    """CREATE TABLE IF NOT EXISTS events (
        id INTEGER PRIMARY KEY, ts TEXT NOT NULL, kind TEXT NOT NULL, user TEXT, role TEXT, serial INTEGER,
        key_id TEXT, source TEXT, data TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS events_user ON events(user, id)",
    "CREATE INDEX IF NOT EXISTS events_kind ON events(kind, id)",
    "CREATE INDEX IF NOT EXISTS events_role ON events(role, id)",
    "CREATE INDEX IF NOT EXISTS events_serial ON events(serial) WHERE serial IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS events_ts ON events(ts)",
    EVENTS[7],
    EVENTS[8],
    """CREATE TABLE IF NOT EXISTS certificates (
        serial INTEGER PRIMARY KEY, key_id TEXT NOT NULL UNIQUE, user TEXT NOT NULL, role TEXT NOT NULL,
        key_fingerprint TEXT NOT NULL, ca_fingerprint TEXT NOT NULL, valid_after INTEGER NOT NULL,
        valid_before INTEGER NOT NULL, event_id INTEGER NOT NULL REFERENCES events(id)
    )""",
    "CREATE INDEX IF NOT EXISTS certificates_user ON certificates(user, valid_before)",
    "CREATE INDEX IF NOT EXISTS certificates_key ON certificates(key_fingerprint)",
)

MIGRATIONS: dict[int, tuple] = {
    1: _V1,
    2: ("CREATE INDEX IF NOT EXISTS events_user_ts ON events(user, ts)",),
    3: (
        # ALTER TABLE ... RENAME COLUMN (SQLite >= 3.25) rewrites the indexes that use the column.
        (RENAME, "events", "user", "username"),
        (RENAME, "certificates", "user", "username"),
        (RENAME, "user_keys", "user", "username"),
        (RENAME, "requests", "user", "username"),
        *(EVENTS + CERTIFICATES + USERS + THROTTLE + REVOCATIONS + REQUESTS),
    ),
    4: USED_TOKENS,
    5: JOIN_TOKENS,
    6: ENROLMENT_CODES,
}
assert sorted(MIGRATIONS) == list(range(1, SCHEMA_VERSION + 1))

# -- PostgreSQL ------------------------------------------------------------------------
#
# The same tables, columns and version numbers, in PostgreSQL's dialect. Differences,
# each for a reason:
#
# * text columns are ``COLLATE "C"``: the queries compare ISO timestamps and kind
#   prefixes (``kind >= 'request_'``) byte-wise, as SQLite does;
# * ``events.data`` stays TEXT (not jsonb): the chain hashes the exact text written;
#   the review queries cast it (``data::jsonb``);
# * SQLite's implicit ``rowid`` orders requests and votes cast in the same second; here
#   an identity column ``seq`` does (never read outside ordering);
# * ``revocations.id`` and ``logins.id`` are identity columns (SQLite's INTEGER PRIMARY
#   KEY); ``events.id`` and ``certificates.serial`` are still assigned by the writer
#   under the chain lock (``pg_advisory_xact_lock(CHAIN_LOCK)``, see ca.store.base);
# * the append-only rules are trigger functions that raise;
# * ``schema_meta`` holds the schema version (SQLite: ``PRAGMA user_version``) and
#   ``ca_keys`` the fingerprints of the CA keys of the keyring that first served the
#   database: a replica with another CA key refuses to start (docs/security.md).

# The advisory lock every write transaction takes first: one chain across replicas.
# (Advisory locks are per database, so two CAs on one server do not contend.)
PG_CHAIN_LOCK = 0x1A57CA0001  # "iast ca", chain 1

_T = 'TEXT COLLATE "C"'


def _pg_refuse(name: str, table: str, events: str, message: str, when: str = "") -> tuple[str, str]:
    """A trigger function that raises ``message`` and the trigger that calls it."""
    return (
        f"""CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN {when}RAISE EXCEPTION '{message}'; END IF; RETURN NEW; END $$"""
        if when else
        f"""CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION '{message}'; END $$""",
        f"""DO $$ BEGIN
          IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = '{name}') THEN
            CREATE TRIGGER {name} BEFORE {events} ON {table} FOR EACH ROW EXECUTE FUNCTION {name}();
          END IF;
        END $$""",
    )


PG_META = (
    f"""CREATE TABLE IF NOT EXISTS schema_meta (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        version INTEGER NOT NULL
    )""",
    f"""CREATE TABLE IF NOT EXISTS ca_keys (
        fingerprint {_T} PRIMARY KEY,
        added {_T} NOT NULL
    )""",
)

PG_EVENTS = (
    f"""CREATE TABLE IF NOT EXISTS events (
        id BIGINT PRIMARY KEY,
        ts {_T} NOT NULL,
        kind {_T} NOT NULL,
        username {_T},
        role {_T},
        serial BIGINT,
        key_id {_T},
        source {_T},
        data {_T} NOT NULL,
        prev_hash {_T} NOT NULL,
        hash {_T} NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS events_user ON events(username, id)",
    "CREATE INDEX IF NOT EXISTS events_kind ON events(kind, id)",
    "CREATE INDEX IF NOT EXISTS events_role ON events(role, id)",
    "CREATE INDEX IF NOT EXISTS events_serial ON events(serial) WHERE serial IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS events_ts ON events(ts)",
    "CREATE INDEX IF NOT EXISTS events_user_ts ON events(username, ts)",
    *_pg_refuse("events_no_update", "events", "UPDATE", "the audit log is append-only"),
    *_pg_refuse("events_no_delete", "events", "DELETE", "the audit log is append-only"),
)

PG_CERTIFICATES = (
    f"""CREATE TABLE IF NOT EXISTS certificates (
        serial BIGINT PRIMARY KEY,
        key_id {_T} NOT NULL UNIQUE,
        username {_T} NOT NULL,
        role {_T} NOT NULL,
        key_fingerprint {_T} NOT NULL,
        ca_fingerprint {_T} NOT NULL,
        valid_after BIGINT NOT NULL,
        valid_before BIGINT NOT NULL,
        event_id BIGINT NOT NULL REFERENCES events(id)
    )""",
    "CREATE INDEX IF NOT EXISTS certificates_user ON certificates(username, valid_before)",
    "CREATE INDEX IF NOT EXISTS certificates_key ON certificates(key_fingerprint)",
)

PG_USERS = (
    f"""CREATE TABLE IF NOT EXISTS users (
        name {_T} PRIMARY KEY,
        disabled INTEGER NOT NULL DEFAULT 0,
        disabled_reason {_T},
        password_hash {_T},
        totp_secret {_T},
        totp_last_step BIGINT NOT NULL DEFAULT 0,
        created {_T} NOT NULL
    )""",
    f"""CREATE TABLE IF NOT EXISTS user_keys (
        fingerprint {_T} PRIMARY KEY,
        username {_T} NOT NULL REFERENCES users(name),
        algorithm {_T} NOT NULL,
        public {_T} NOT NULL,
        added {_T} NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS user_keys_user ON user_keys(username)",
)

PG_THROTTLE = (
    f"""CREATE TABLE IF NOT EXISTS auth_throttle (
        key {_T} PRIMARY KEY,
        failures INTEGER NOT NULL,
        first_failure DOUBLE PRECISION NOT NULL,
        blocked_until DOUBLE PRECISION NOT NULL
    )""",
)

PG_REVOCATIONS = (
    f"""CREATE TABLE IF NOT EXISTS revocations (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        kind {_T} NOT NULL CHECK (kind IN ({", ".join(repr(k) for k in REVOCATION_KINDS)})),
        value {_T} NOT NULL,
        serial BIGINT,
        ca_fingerprint {_T},
        public {_T},
        reason {_T} NOT NULL,
        actor {_T},
        event_id BIGINT NOT NULL REFERENCES events(id),
        created BIGINT NOT NULL,
        UNIQUE (kind, value)
    )""",
    "CREATE INDEX IF NOT EXISTS revocations_serial ON revocations(serial) WHERE serial IS NOT NULL",
    *_pg_refuse("revocations_no_update", "revocations", "UPDATE", "revocations cannot be changed"),
    *_pg_refuse("revocations_no_delete", "revocations", "DELETE", "revocations cannot be deleted"),
    f"""CREATE TABLE IF NOT EXISTS krl_state (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        version BIGINT NOT NULL CHECK (version >= 1),
        content_sha256 {_T} NOT NULL,
        generated BIGINT NOT NULL
    )""",
    *_pg_refuse("krl_version_only_increases", "krl_state", "UPDATE", "the KRL version only increases",
                when="IF NEW.version < OLD.version THEN "),
    *_pg_refuse("krl_state_no_delete", "krl_state", "DELETE", "the KRL version only increases"),
)

PG_REQUESTS = (
    f"""CREATE TABLE IF NOT EXISTS requests (
        id {_T} PRIMARY KEY,
        username {_T} NOT NULL,
        role {_T} NOT NULL,
        ttl BIGINT NOT NULL,
        reason {_T} NOT NULL,
        status {_T} NOT NULL CHECK (status IN ({", ".join(repr(s) for s in REQUEST_STATUSES)})),
        created BIGINT NOT NULL,
        decided BIGINT,
        expires_at BIGINT NOT NULL,
        used_serial BIGINT,
        seq BIGINT GENERATED ALWAYS AS IDENTITY
    )""",
    "CREATE INDEX IF NOT EXISTS requests_open ON requests(status, expires_at)",
    "CREATE INDEX IF NOT EXISTS requests_user ON requests(username, role, created)",
    f"""CREATE TABLE IF NOT EXISTS approvals (
        request_id {_T} NOT NULL REFERENCES requests(id),
        approver {_T} NOT NULL,
        decision {_T} NOT NULL CHECK (decision IN ('approve', 'deny')),
        comment {_T},
        ts BIGINT NOT NULL,
        seq BIGINT GENERATED ALWAYS AS IDENTITY,
        UNIQUE (request_id, approver)
    )""",
)

PG_LOGINS = (
    f"""CREATE TABLE IF NOT EXISTS logins (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        line_hash {_T} NOT NULL UNIQUE,
        host {_T} NOT NULL,
        logged_time {_T},
        ts {_T},
        account {_T},
        source {_T},
        port BIGINT,
        serial BIGINT,
        serial_text {_T},
        ca_fingerprint {_T},
        key_id {_T} NOT NULL,
        key_fingerprint {_T},
        issued_event_id BIGINT,
        outcome {_T} NOT NULL CHECK (outcome IN ('accepted', 'partial', 'refused')),
        reason {_T},
        severity {_T},
        findings {_T} NOT NULL,
        correlated_event_id BIGINT NOT NULL,
        line {_T} NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS logins_serial ON logins(serial, ca_fingerprint)",
    "CREATE INDEX IF NOT EXISTS logins_ts ON logins(ts)",
    "CREATE INDEX IF NOT EXISTS logins_run ON logins(correlated_event_id)",
    "CREATE INDEX IF NOT EXISTS logins_severity ON logins(severity) WHERE severity IS NOT NULL",
    *_pg_refuse("logins_no_update", "logins", "UPDATE", "recorded logins cannot be changed"),
    *_pg_refuse("logins_no_delete", "logins", "DELETE", "recorded logins cannot be deleted"),
)

PG_USED_TOKENS = (
    f"""CREATE TABLE IF NOT EXISTS used_tokens (
        token_key {_T} PRIMARY KEY,
        issuer {_T} NOT NULL,
        expires_at BIGINT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS used_tokens_expiry ON used_tokens(expires_at)",
)

# The SQLite triggers of JOIN_TOKENS, as trigger functions: a token is marked used once (only
# used_at/used_serial may change, and only while used_at is NULL) and never deleted.
PG_JOIN_TOKENS = (
    f"""CREATE TABLE IF NOT EXISTS join_tokens (
        id {_T} PRIMARY KEY,
        secret_sha256 {_T} NOT NULL,
        host {_T} NOT NULL,
        role {_T} NOT NULL,
        created BIGINT NOT NULL,
        expires_at BIGINT NOT NULL,
        used_at BIGINT,
        used_serial BIGINT,
        event_id BIGINT NOT NULL REFERENCES events(id)
    )""",
    *_pg_refuse("join_tokens_once", "join_tokens", "UPDATE", "a join token is used once and never changed",
                when="IF OLD.used_at IS NOT NULL OR NEW.id IS DISTINCT FROM OLD.id"
                     " OR NEW.secret_sha256 IS DISTINCT FROM OLD.secret_sha256 OR NEW.host IS DISTINCT FROM OLD.host"
                     " OR NEW.role IS DISTINCT FROM OLD.role OR NEW.expires_at IS DISTINCT FROM OLD.expires_at THEN "),
    *_pg_refuse("join_tokens_no_delete", "join_tokens", "DELETE", "join tokens cannot be deleted"),
)

PG_ENROLMENT_CODES = (
    f"""CREATE TABLE IF NOT EXISTS enrolment_codes (
        id {_T} PRIMARY KEY,
        secret_sha256 {_T} NOT NULL,
        username {_T} NOT NULL,
        created BIGINT NOT NULL,
        expires_at BIGINT NOT NULL,
        used_at BIGINT,
        event_id BIGINT NOT NULL REFERENCES events(id)
    )""",
    *_pg_refuse("enrolment_codes_once", "enrolment_codes", "UPDATE",
                "an enrolment code is used once and never changed",
                when="IF OLD.used_at IS NOT NULL OR NEW.id IS DISTINCT FROM OLD.id"
                     " OR NEW.secret_sha256 IS DISTINCT FROM OLD.secret_sha256"
                     " OR NEW.username IS DISTINCT FROM OLD.username"
                     " OR NEW.expires_at IS DISTINCT FROM OLD.expires_at THEN "),
    *_pg_refuse("enrolment_codes_no_delete", "enrolment_codes", "DELETE", "enrolment codes cannot be deleted"),
)

# Version 3, the first schema this engine had (as it was created; later versions add to it).
_PG_V3 = PG_META + PG_EVENTS + PG_CERTIFICATES + PG_USERS + PG_THROTTLE + PG_REVOCATIONS + PG_REQUESTS

PG_CURRENT = _PG_V3 + PG_USED_TOKENS + PG_JOIN_TOKENS + PG_ENROLMENT_CODES

# PostgreSQL databases start at version 3 (the first schema this engine had). PG_MIGRATIONS[n]
# takes a PostgreSQL database at version n - 1 to n; a new one gets PG_CURRENT.
PG_FIRST_VERSION = 3
PG_MIGRATIONS: dict[int, tuple] = {3: _PG_V3, 4: PG_USED_TOKENS, 5: PG_JOIN_TOKENS, 6: PG_ENROLMENT_CODES}
assert sorted(PG_MIGRATIONS) == list(range(PG_FIRST_VERSION, SCHEMA_VERSION + 1))


@functools.lru_cache(maxsize=16)
def gate_sql(n_checks: int, mark: str) -> str:
    """The issuance gate as one statement (``mark``: the driver's placeholder): the user's
    ``disabled``, the login key's owner, ``max(serial)``, the chain head's id and hash, then one
    flag per (kind, value) check, each an indexed lookup."""
    checks = "".join(f", EXISTS(SELECT 1 FROM revocations WHERE kind = {mark} AND value = {mark})"
                     for _ in range(n_checks))
    return (f"SELECT (SELECT disabled FROM users WHERE name = {mark}),"
            f" (SELECT username FROM user_keys WHERE fingerprint = {mark}),"
            " (SELECT max(serial) FROM certificates),"
            " (SELECT id FROM events ORDER BY id DESC LIMIT 1),"
            " (SELECT hash FROM events ORDER BY id DESC LIMIT 1)" + checks)
