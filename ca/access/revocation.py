"""Revocation: what the CA has revoked, kept in ``ca.db``, and the KRL built from it.

Every revocation is one ``BEGIN IMMEDIATE`` transaction that writes a
``revoked`` audit event (kind, value, reason, actor) and, the first time, a
row of the ``revocations`` table. Revoking the same thing again is allowed
and audited (a second ``revoked`` event, with ``"new": false``) but adds no
row: the table holds each (kind, value) once.

What each kind revokes in the KRL (:func:`current_krl`):

``serial``
    that certificate, by serial, in the section of the CA key that signed it;
``key_id``
    that certificate, by key ID, in the section of the CA key that signed it;
``key``
    a user's public key, in the explicit-keys section: sshd refuses every
    certificate for that key, including ones issued after the revocation;
``user``
    every certificate issued to the user and not yet expired, by serial (the
    serials are also recorded one by one), and the user is disabled in the
    user store so that the service issues no new ones;
``ca_key``
    a CA public key, in the explicit-keys section: sshd then refuses every
    certificate that key signed (it checks the signing key against the KRL
    too). Note that a certificate section with an empty ("wildcard") CA key
    would *not* do this: it only scopes serials and key IDs.

Expired certificates are left out of the KRL (sshd refuses them anyway), so
that it stays small. "Expired" is judged with a grace period
(:data:`KRL_EXPIRY_GRACE`, one hour): a host whose clock runs behind the CA's
still accepts a certificate the CA thinks has just expired, and the KRL must
still name it there. Keys and CA keys never leave the KRL.

The KRL version (``krl_state``) only increases: it is bumped, in the same
transaction, whenever the content of the KRL changes (revocations added,
certificates aging out), and the same content keeps the same version and
generation date, so the same database gives byte-identical KRLs. A trigger
refuses any update that would lower it.

Hosts fetch and install the KRL as sshd's ``RevokedKeys``. An unreadable
KRL makes sshd refuse *every* login, so a host must check a fetched KRL
with :func:`ca.krl.parse_krl` (and that its version did not go down) and
keep the last good KRL when a refresh fails.
"""

from __future__ import annotations

import base64
import hashlib
import sqlite3
from dataclasses import dataclass
from typing import Any

from ca.audit.log import AuditLog, ensure_tables
from ca.errors import BadKey, UsageError
from ca.keys.keyring import Keyring
from ca.rules import free_text, is_user_name
from ca.sshcert.certificates import parse_certificate_line
from ca.sshcert.krl import (
    WILDCARD_CA,
    CertRevocations,
    KRLError,
    build_krl,
    sha256_of_fingerprint,
)
from ca.sshcert.userkey import parse_user_key
from ca.sshcert.wire import WireError

KINDS = ("serial", "key_id", "key", "ca_key", "user")
MAX_SERIAL = 2**64 - 1
# Keep a certificate in the KRL this long after it expires (hosts whose clocks lag the CA's).
KRL_EXPIRY_GRACE = 3600
KRL_COMMENT = "iast-ssh certificate authority"
_MAX_SERIALS_IN_EVENT = 1000

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS revocations (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL CHECK (kind IN ('serial', 'key_id', 'key', 'ca_key', 'user')),
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
_SCHEMA_OBJECTS = {"revocations", "revocations_serial", "revocations_no_update", "revocations_no_delete",
                   "krl_state", "krl_version_only_increases", "krl_state_no_delete"}


def ensure_schema(log: AuditLog) -> None:
    """Create the revocation tables if they are missing (writes nothing when they exist)."""
    ensure_tables(log.conn, _SCHEMA_OBJECTS, _SCHEMA, "revocation")


def is_revoked(conn, kind: str, fingerprint: str) -> bool:
    """Whether a key (``kind='key'``) or CA key (``'ca_key'``) with this fingerprint is revoked.

    Cheap enough for every login and every issuance (the table's unique
    index); a database that never saw a revocation has no table yet.
    """
    try:
        return conn.execute("SELECT 1 FROM revocations WHERE kind = ? AND value = ?",
                            (kind, fingerprint)).fetchone() is not None
    except sqlite3.OperationalError:  # no revocations table: nothing was ever revoked
        return False


@dataclass(frozen=True)
class Revocation:
    """One row of the ``revocations`` table."""

    id: int
    kind: str
    value: str
    serial: int | None
    ca_fingerprint: str | None
    public: str | None
    reason: str
    actor: str | None
    event_id: int
    created: int

    def as_json(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class RevokeResult:
    """What a ``revoke_*`` call did."""

    kind: str
    value: str
    new: bool  # False when it was revoked already (a second event, no second row)
    event_id: int
    serials: tuple[int, ...] = ()  # unexpired certificates it revokes right now
    notes: tuple[str, ...] = ()

    def as_json(self) -> dict:
        d = dict(self.__dict__)
        d["serials"] = list(self.serials)
        d["notes"] = list(self.notes)
        return d


def check_reason(reason: object) -> str:
    """A reason is required: one line of text, at most 500 characters (the free-text rule)."""
    text = free_text(reason)
    if text is None:
        raise UsageError("a reason is required (--reason TEXT)")
    return text


def _now(log: AuditLog) -> int:
    return int(log.clock())


def _record(tx: Any, log: AuditLog, kind: str, value: str, *, reason: str, actor: str | None, now: int,
            serial: int | None = None, ca_fingerprint: str | None = None, public: str | None = None,
            data: dict | None = None, columns: dict | None = None) -> tuple[bool, int]:
    """Append the ``revoked`` event and, the first time, the row. Returns (new, event_id)."""
    existing = log.conn.execute("SELECT id FROM revocations WHERE kind = ? AND value = ?", (kind, value)).fetchone()
    event = {"kind": kind, "value": value, "reason": reason, "actor": actor, "new": existing is None}
    if ca_fingerprint:
        event["ca_fingerprint"] = ca_fingerprint
    event.update(data or {})
    event_id = tx.append("revoked", event, **(columns or {}))
    if existing is None:
        log.conn.execute(
            "INSERT INTO revocations (kind, value, serial, ca_fingerprint, public, reason, actor, event_id, created)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (kind, value, serial, ca_fingerprint, public, reason, actor, event_id, now))
    return existing is None, event_id


def _serial_list(serials: list[int]) -> dict:
    out: dict[str, Any] = {"serials": serials[:_MAX_SERIALS_IN_EVENT]}
    if len(serials) > _MAX_SERIALS_IN_EVENT:
        out["serials_total"] = len(serials)
    return out


def revoke_serial(log: AuditLog, serial: int, reason: str, actor: str | None = None) -> RevokeResult:
    """Revoke the certificate with this serial. :class:`UsageError` if this CA never issued it."""
    reason = check_reason(reason)
    if isinstance(serial, bool) or not isinstance(serial, int) or not 1 <= serial <= MAX_SERIAL:
        raise UsageError("a serial is a whole number from 1 to 2^64-1 (serial 0 is never issued)")
    ensure_schema(log)
    now = _now(log)
    with log.transaction() as tx:
        row = log.conn.execute("SELECT key_id, user, ca_fingerprint, valid_before FROM certificates WHERE serial = ?",
                               (serial,)).fetchone()
        if row is None:
            raise UsageError(f"no certificate with serial {serial} was issued by this CA")
        key_id, user, ca_fp, valid_before = row
        new, event_id = _record(tx, log, "serial", str(serial), reason=reason, actor=actor, now=now, serial=serial,
                                ca_fingerprint=ca_fp, columns={"user": user, "serial": serial, "key_id": key_id})
    notes = () if valid_before > now else ("the certificate has already expired",)
    return RevokeResult("serial", str(serial), new, event_id, (serial,), notes)


def revoke_key_id(log: AuditLog, key_id: str, reason: str, actor: str | None = None) -> RevokeResult:
    """Revoke the certificate with this key ID (``iast:USER:ROLE:SERIAL``), by key ID.

    :class:`UsageError` if this CA never issued a certificate with that key ID.
    """
    reason = check_reason(reason)
    if not isinstance(key_id, str) or not key_id or len(key_id) > 1024 or "\x00" in key_id:
        raise UsageError("a key ID is non-empty text")
    ensure_schema(log)
    now = _now(log)
    with log.transaction() as tx:
        row = log.conn.execute("SELECT serial, user, ca_fingerprint, valid_before FROM certificates WHERE key_id = ?",
                               (key_id,)).fetchone()
        if row is None:
            raise UsageError(f"no certificate with key ID {key_id[:100]!r} was issued by this CA")
        serial, user, ca_fp, valid_before = row
        new, event_id = _record(tx, log, "key_id", key_id, reason=reason, actor=actor, now=now, ca_fingerprint=ca_fp,
                                columns={"user": user, "serial": serial, "key_id": key_id})
    notes = () if valid_before > now else ("the certificate has already expired",)
    return RevokeResult("key_id", key_id, new, event_id, (serial,), notes)


def revoke_key(log: AuditLog, key_line: str, reason: str, actor: str | None = None, *,
               keyring: Keyring | None = None) -> RevokeResult:
    """Revoke a user's public key (an OpenSSH public key line): every certificate
    for that key, already issued or issued later, is refused by sshd.

    A certificate line is refused (revoke it by serial); so is one of this
    CA's own keys when ``keyring`` is given (use :func:`revoke_ca_key`).
    """
    reason = check_reason(reason)
    if not isinstance(key_line, str):
        raise BadKey("the public key must be text")
    parts = key_line.strip().split()
    if parts and parts[0].endswith("-cert-v01@openssh.com"):
        try:
            cert = parse_certificate_line(key_line)
            hint = f" (serial {cert.serial}): use --serial {cert.serial} to revoke it"
        except WireError:
            hint = ""
        raise UsageError(f"that is a certificate{hint}, or give the plain public key to revoke every "
                         "certificate for that key")
    user_key = parse_user_key(key_line, min_rsa_bits=0)
    if keyring is not None and any(k.fingerprint == user_key.fingerprint for k in keyring.keys):
        raise UsageError(f"{user_key.fingerprint} is a CA key of this CA: revoke it with --ca-key")
    ensure_schema(log)
    now = _now(log)
    with log.transaction() as tx:
        serials = [s for (s,) in log.conn.execute(
            "SELECT serial FROM certificates WHERE key_fingerprint = ? AND valid_before > ? ORDER BY serial",
            (user_key.fingerprint, now - KRL_EXPIRY_GRACE))]
        users = sorted({u for (u,) in log.conn.execute(
            "SELECT DISTINCT user FROM certificates WHERE key_fingerprint = ?", (user_key.fingerprint,))})
        new, event_id = _record(
            tx, log, "key", user_key.fingerprint, reason=reason, actor=actor, now=now, public=user_key.line,
            data={"key_type": user_key.algorithm, "users": users, **_serial_list(serials)},
            columns={"user": users[0] if len(users) == 1 else None})
    notes = () if users else ("no certificate was ever issued for this key; it is revoked for the future",)
    return RevokeResult("key", user_key.fingerprint, new, event_id, tuple(serials), notes)


def _user_store(log: AuditLog):
    """The user store, or None when this build has no ``ca.auth.users`` module."""
    try:
        from ca.auth.users import UserStore
    except ImportError:
        return None
    return UserStore(log)


def revoke_user(log: AuditLog, user: str, reason: str, actor: str | None = None) -> RevokeResult:
    """Revoke every unexpired certificate issued to ``user`` (by serial), and
    disable the user in the user store so that no new ones are issued.

    Two transactions, in this order: the user store disables the user (its
    own ``user_disabled`` event), then the certificates are revoked (one
    ``revoked`` event). Disabling first closes the door before the inventory
    is taken; if the second step fails, running the command again finishes
    it (an already disabled user is left as is). A certificate whose issuance
    had passed the service's "is the user enabled" check just before the
    disable is caught too: the ``user`` row revokes every certificate of the
    user whose ``valid_after`` (backdated by the clock skew) is not later
    than the revocation.
    """
    reason = check_reason(reason)
    if not is_user_name(user):
        raise UsageError(f"invalid user name {str(user)[:40]!r}")
    ensure_schema(log)
    store = _user_store(log)
    known = store.get(user) if store is not None else None
    issued = log.conn.execute("SELECT 1 FROM certificates WHERE user = ? LIMIT 1", (user,)).fetchone()
    if known is None and issued is None:
        raise UsageError(f"no user {user!r}: not in the user store, and no certificate was ever issued to that name")
    notes = []
    if store is None:
        state = "no user store"
        notes.append("this CA has no user store: the user was not disabled")
    elif known is None:
        state = "not in the user store"
        notes.append("the user is not in the user store (certificates were issued offline): nothing to disable")
    elif known.disabled:
        state = "already disabled"
    else:
        store.disable(user, reason, actor=actor)
        state = "disabled"
    now = _now(log)
    with log.transaction() as tx:
        serials = [s for (s,) in log.conn.execute(
            "SELECT serial FROM certificates WHERE user = ? AND valid_before > ? ORDER BY serial",
            (user, now - KRL_EXPIRY_GRACE))]
        new, event_id = _record(tx, log, "user", user, reason=reason, actor=actor, now=now,
                                data={"user_store": state, **_serial_list(serials)}, columns={"user": user})
        for serial in serials:
            row = log.conn.execute("SELECT ca_fingerprint FROM certificates WHERE serial = ?", (serial,)).fetchone()
            log.conn.execute(
                "INSERT OR IGNORE INTO revocations (kind, value, serial, ca_fingerprint, public, reason, actor,"
                " event_id, created) VALUES ('serial', ?, ?, ?, NULL, ?, ?, ?, ?)",
                (str(serial), serial, row[0], reason, actor, event_id, now))
    return RevokeResult("user", user, new, event_id, tuple(serials), tuple(notes))


def revoke_ca_key(log: AuditLog, fingerprint: str, reason: str, actor: str | None = None, *,
                  keyring: Keyring | None = None) -> RevokeResult:
    """Revoke a CA key (by its ``SHA256:...`` fingerprint): sshd refuses every
    certificate it signed. The key must be in ``keyring`` or have signed a
    certificate recorded here; with the public key at hand it goes into the
    KRL's explicit-keys section, otherwise its SHA-256 hash does.
    """
    reason = check_reason(reason)
    try:
        sha256_of_fingerprint(fingerprint)
    except KRLError:
        raise UsageError(f"not a SHA256 key fingerprint: {str(fingerprint)[:60]!r} "
                         "(see 'ssh-keygen -lf KEY.pub' or 'iast-ca trust')") from None
    entry = next((k for k in keyring.keys if k.fingerprint == fingerprint), None) if keyring else None
    ensure_schema(log)
    now = _now(log)
    with log.transaction() as tx:
        signed = log.conn.execute(
            "SELECT count(*), sum(valid_before > ?) FROM certificates WHERE ca_fingerprint = ?",
            (now - KRL_EXPIRY_GRACE, fingerprint)).fetchone()
        if entry is None and not signed[0]:
            raise UsageError(f"{fingerprint} is not a CA key of this CA")
        public = " ".join(entry.public.split()[:2]) if entry else None
        data = {"unexpired_certificates": signed[1] or 0}
        if entry:
            data.update(name=entry.name, state=entry.state)
        new, event_id = _record(tx, log, "ca_key", fingerprint, reason=reason, actor=actor, now=now,
                                ca_fingerprint=fingerprint, public=public, data=data)
    notes = []
    if entry is not None and entry.state == "active":
        notes.append("this is the ACTIVE CA key: every certificate it signs from now on is revoked on arrival; "
                     "rotate to a new CA key")
    if public is None:
        notes.append("the public key is not in the keyring: the KRL names it by its SHA-256 hash")
    return RevokeResult("ca_key", fingerprint, new, event_id, (), tuple(notes))


def list_revocations(log: AuditLog) -> list[Revocation]:
    """Every revocation, oldest first."""
    ensure_schema(log)
    rows = log.conn.execute(
        "SELECT id, kind, value, serial, ca_fingerprint, public, reason, actor, event_id, created"
        " FROM revocations ORDER BY id").fetchall()
    return [Revocation(*r) for r in rows]


def krl_version(log: AuditLog) -> int:
    """The version of the last KRL built (0 before the first)."""
    ensure_schema(log)
    row = log.conn.execute("SELECT version FROM krl_state WHERE id = 1").fetchone()
    return row[0] if row else 0


# --------------------------------------------------------------------------
# The KRL


@dataclass(frozen=True)
class CurrentKRL:
    """The KRL as built from the database, with its version."""

    data: bytes
    version: int
    generated: int
    changed: bool  # True if this build bumped the version
    content_sha256: str
    serials: int
    key_ids: int
    keys: int

    def as_json(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k != "data"}
        d["bytes"] = len(self.data)
        d["sha256"] = hashlib.sha256(self.data).hexdigest()
        return d


def _contents(log: AuditLog, keyring: Keyring, now: int, grace: int):
    cutoff = now - grace
    ca_blobs = {k.fingerprint: k.blob for k in keyring.keys}
    serials: dict[bytes, set[int]] = {}
    key_ids: dict[bytes, set[str]] = {}

    def by_serial(serial: int, ca_fp: str, key_id: str) -> None:
        blob = ca_blobs.get(ca_fp)
        if blob is None:
            # The CA key is gone from the keyring, so its section cannot be named:
            # our key IDs are unique (they contain the serial), so revoke by key ID for any CA.
            key_ids.setdefault(WILDCARD_CA, set()).add(key_id)
        else:
            serials.setdefault(blob, set()).add(serial)

    conn = log.conn
    for serial, ca_fp, key_id in conn.execute(
            "SELECT c.serial, c.ca_fingerprint, c.key_id FROM revocations r JOIN certificates c ON c.serial = r.serial"
            " WHERE r.kind = 'serial' AND c.valid_before > ?", (cutoff,)):
        by_serial(serial, ca_fp, key_id)
    for serial, ca_fp, key_id in conn.execute(
            "SELECT c.serial, c.ca_fingerprint, c.key_id FROM revocations r JOIN certificates c ON c.user = r.value"
            " WHERE r.kind = 'user' AND c.valid_after <= r.created AND c.valid_before > ?", (cutoff,)):
        by_serial(serial, ca_fp, key_id)
    for key_id, ca_fp in conn.execute(
            "SELECT c.key_id, c.ca_fingerprint FROM revocations r JOIN certificates c ON c.key_id = r.value"
            " WHERE r.kind = 'key_id' AND c.valid_before > ?", (cutoff,)):
        key_ids.setdefault(ca_blobs.get(ca_fp, WILDCARD_CA), set()).add(key_id)
    keys: set[bytes] = set()
    sha256s: set[bytes] = set()
    for value, public in conn.execute("SELECT value, public FROM revocations WHERE kind IN ('key', 'ca_key')"):
        if public:
            keys.add(base64.b64decode(public.split()[1]))
        else:
            sha256s.add(sha256_of_fingerprint(value))
    certs = {ca: CertRevocations.of(serials.get(ca, ()), key_ids=key_ids.get(ca, ()))
             for ca in set(serials) | set(key_ids)}
    return certs, keys, sha256s


def build_current_krl(log: AuditLog, keyring: Keyring, now: float | None = None, *,
                      grace: int = KRL_EXPIRY_GRACE) -> CurrentKRL:
    """Build the KRL from the database (see the module docstring for what goes in),
    bumping ``krl_version`` if the content changed since the last build.

    One ``BEGIN IMMEDIATE`` transaction: two builders never hand out two
    different KRLs with the same version. A version bump is audited
    (``krl_version`` event).
    """
    now = int(log.clock() if now is None else now)
    ensure_schema(log)
    with log.transaction() as tx:
        certs, keys, sha256s = _contents(log, keyring, now, grace)
        canonical = build_krl(0, certs=certs, keys=keys, sha256s=sha256s, generated=0, comment=KRL_COMMENT)
        digest = hashlib.sha256(canonical).hexdigest()
        state = log.conn.execute("SELECT version, content_sha256, generated FROM krl_state WHERE id = 1").fetchone()
        n_serials = sum(rc.serial_count for rc in certs.values())
        n_ids = sum(len(rc.key_ids) for rc in certs.values())
        n_keys = len(keys) + len(sha256s)
        if state is not None and state[1] == digest:
            version, generated, changed = state[0], state[2], False
        else:
            version = state[0] + 1 if state else 1
            generated, changed = now, True
            log.conn.execute(
                "INSERT INTO krl_state (id, version, content_sha256, generated) VALUES (1, ?, ?, ?)"
                " ON CONFLICT(id) DO UPDATE SET version = excluded.version,"
                " content_sha256 = excluded.content_sha256, generated = excluded.generated",
                (version, digest, generated))
            tx.append("krl_version", {"version": version, "content_sha256": digest, "serials": n_serials,
                                      "key_ids": n_ids, "keys": n_keys})
    data = build_krl(version, certs=certs, keys=keys, sha256s=sha256s, generated=generated, comment=KRL_COMMENT)
    return CurrentKRL(data, version, generated, changed, digest, n_serials, n_ids, n_keys)


def current_krl(log: AuditLog, keyring: Keyring, now: float | None = None, *,
                grace: int = KRL_EXPIRY_GRACE) -> bytes:
    """The binary KRL for sshd's ``RevokedKeys``, built from the database
    (see :func:`build_current_krl`)."""
    return build_current_krl(log, keyring, now, grace=grace).data

