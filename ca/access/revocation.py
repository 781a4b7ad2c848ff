"""Revocation: what the CA has revoked, kept in ``ca.db``, and the KRL built from it.

Every revocation is one write transaction of the store that writes a
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
    user store so that the service issues no new ones. A host
    (``revoke --host web-1``) is revoked the same way under its account
    ``host:web-1``: its certificates so far are in the KRL, none of them
    renews, and only a new join token enrols it again;
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
from dataclasses import dataclass
from typing import Any

from ca.errors import AuditError, BadKey, UsageError
from ca.keys.keyring import Keyring
from ca.rules import check_host_name, free_text, host_account, is_user_name
from ca.sshcert.certificates import fingerprint, parse_certificate_line
from ca.sshcert.krl import (
    WILDCARD_CA,
    CertRevocations,
    KRLError,
    build_krl,
    sha256_of_fingerprint,
)
from ca.sshcert.userkey import parse_user_key
from ca.sshcert.wire import WireError
from ca.store.base import Store
from ca.store.schema import REVOCATION_KINDS

KINDS = REVOCATION_KINDS  # ("serial", "key_id", "key", "ca_key", "user")
MAX_SERIAL = 2**64 - 1
# Keep a certificate in the KRL this long after it expires (hosts whose clocks lag the CA's).
KRL_EXPIRY_GRACE = 3600
KRL_COMMENT = "iast-ssh certificate authority"
_MAX_SERIALS_IN_EVENT = 1000

def is_revoked(source, kind: str, fingerprint: str) -> bool:
    """Whether a key (``kind='key'``) or CA key (``'ca_key'``) with this fingerprint is revoked.

    ``source`` is a store or a unit of work (inside a transaction: what it
    sees). Cheap enough for every login and every issuance (the table's
    unique index).
    """
    if hasattr(source, "revocations"):
        return source.revocations.is_revoked(kind, fingerprint)
    # Transition: a raw SQLite connection from a caller not switched to the store yet.
    from ca.store.sqlite.revocations import is_revoked_on

    return is_revoked_on(source, kind, fingerprint)


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


def _now(log: Store) -> int:
    return int(log.clock())


def _record(tx: Any, log: Store, kind: str, value: str, *, reason: str, actor: str | None, now: int,
            serial: int | None = None, ca_fingerprint: str | None = None, public: str | None = None,
            data: dict | None = None, columns: dict | None = None) -> tuple[bool, int]:
    """Append the ``revoked`` event and, the first time, the row. Returns (new, event_id)."""
    existing = tx.revocations.find(kind, value)
    event = {"kind": kind, "value": value, "reason": reason, "actor": actor, "new": existing is None}
    if ca_fingerprint:
        event["ca_fingerprint"] = ca_fingerprint
    event.update(data or {})
    event_id = tx.append("revoked", event, **(columns or {}))
    if existing is None:
        tx.revocations.insert(kind, value, serial=serial, ca_fingerprint=ca_fingerprint, public=public,
                              reason=reason, actor=actor, event_id=event_id, created=now)
    return existing is None, event_id


def _serial_list(serials: list[int]) -> dict:
    out: dict[str, Any] = {"serials": serials[:_MAX_SERIALS_IN_EVENT]}
    if len(serials) > _MAX_SERIALS_IN_EVENT:
        out["serials_total"] = len(serials)
    return out


def revoke_serial(log: Store, serial: int, reason: str, actor: str | None = None) -> RevokeResult:
    """Revoke the certificate with this serial. :class:`UsageError` if this CA never issued it."""
    reason = check_reason(reason)
    if isinstance(serial, bool) or not isinstance(serial, int) or not 1 <= serial <= MAX_SERIAL:
        raise UsageError("a serial is a whole number from 1 to 2^64-1 (serial 0 is never issued)")
    now = _now(log)
    with log.transaction() as tx:
        cert = tx.certificates.by_serial(serial)
        if cert is None:
            raise UsageError(f"no certificate with serial {serial} was issued by this CA")
        key_id, user, ca_fp, valid_before = cert.key_id, cert.username, cert.ca_fingerprint, cert.valid_before
        new, event_id = _record(tx, log, "serial", str(serial), reason=reason, actor=actor, now=now, serial=serial,
                                ca_fingerprint=ca_fp, columns={"user": user, "serial": serial, "key_id": key_id})
    notes = () if valid_before > now else ("the certificate has already expired",)
    return RevokeResult("serial", str(serial), new, event_id, (serial,), notes)


def revoke_key_id(log: Store, key_id: str, reason: str, actor: str | None = None) -> RevokeResult:
    """Revoke the certificate with this key ID (``iast:USER:ROLE:SERIAL``), by key ID.

    :class:`UsageError` if this CA never issued a certificate with that key ID.
    """
    reason = check_reason(reason)
    if not isinstance(key_id, str) or not key_id or len(key_id) > 1024 or "\x00" in key_id:
        raise UsageError("a key ID is non-empty text")
    now = _now(log)
    with log.transaction() as tx:
        cert = tx.certificates.by_key_id(key_id)
        if cert is None:
            raise UsageError(f"no certificate with key ID {key_id[:100]!r} was issued by this CA")
        serial, user, ca_fp, valid_before = cert.serial, cert.username, cert.ca_fingerprint, cert.valid_before
        new, event_id = _record(tx, log, "key_id", key_id, reason=reason, actor=actor, now=now, ca_fingerprint=ca_fp,
                                columns={"user": user, "serial": serial, "key_id": key_id})
    notes = () if valid_before > now else ("the certificate has already expired",)
    return RevokeResult("key_id", key_id, new, event_id, (serial,), notes)


def revoke_key(log: Store, key_line: str, reason: str, actor: str | None = None, *,
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
    now = _now(log)
    with log.transaction() as tx:
        serials = tx.certificates.unexpired_serials(cutoff=now - KRL_EXPIRY_GRACE,
                                                    key_fingerprint=user_key.fingerprint)
        users = tx.certificates.usernames_of_key(user_key.fingerprint)
        new, event_id = _record(
            tx, log, "key", user_key.fingerprint, reason=reason, actor=actor, now=now, public=user_key.line,
            data={"key_type": user_key.algorithm, "users": users, **_serial_list(serials)},
            columns={"user": users[0] if len(users) == 1 else None})
    notes = () if users else ("no certificate was ever issued for this key; it is revoked for the future",)
    return RevokeResult("key", user_key.fingerprint, new, event_id, tuple(serials), notes)


def _user_store(log: Store):
    """The user store, or None when this build has no ``ca.auth.users`` module."""
    try:
        from ca.auth.users import UserStore
    except ImportError:
        return None
    return UserStore(log)


def revoke_user(log: Store, user: str, reason: str, actor: str | None = None) -> RevokeResult:
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
    store = _user_store(log)
    known = store.get(user) if store is not None else None
    issued = log.certificates.any_for_user(user)
    if known is None and not issued:
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
        serials = tx.certificates.unexpired_serials(cutoff=now - KRL_EXPIRY_GRACE, username=user)
        new, event_id = _record(tx, log, "user", user, reason=reason, actor=actor, now=now,
                                data={"user_store": state, **_serial_list(serials)}, columns={"user": user})
        for serial in serials:
            cert = tx.certificates.by_serial(serial)
            tx.revocations.insert("serial", str(serial), serial=serial, ca_fingerprint=cert.ca_fingerprint,
                                  public=None, reason=reason, actor=actor, event_id=event_id, created=now,
                                  if_new=True)
    return RevokeResult("user", user, new, event_id, tuple(serials), tuple(notes))


def revoke_host(log: Store, host: str, reason: str, actor: str | None = None) -> RevokeResult:
    """Revoke every host certificate issued to ``host`` (``revoke --host``): a ``user`` revocation of
    its account ``host:NAME``, so that its unexpired certificates go into the KRL by serial and none
    of its current certificates can be renewed (docs/security.md, "Host certificates")."""
    reason = check_reason(reason)
    account = host_account(check_host_name(host))
    if not log.certificates.any_for_user(account):
        raise UsageError(f"no host certificate was ever issued to {host!r}")
    now = _now(log)
    with log.transaction() as tx:
        serials = tx.certificates.unexpired_serials(cutoff=now - KRL_EXPIRY_GRACE, username=account)
        new, event_id = _record(tx, log, "user", account, reason=reason, actor=actor, now=now,
                                data={"host": host, **_serial_list(serials)}, columns={"user": account})
        for serial in serials:
            cert = tx.certificates.by_serial(serial)
            tx.revocations.insert("serial", str(serial), serial=serial, ca_fingerprint=cert.ca_fingerprint,
                                  public=None, reason=reason, actor=actor, event_id=event_id, created=now,
                                  if_new=True)
    return RevokeResult("host", host, new, event_id, tuple(serials))


def certificate_revocation(source, cert) -> str | None:
    """Why the certificate of row ``cert`` (a CertificateRow) is revoked, or None if it is not.

    ``source`` is a store or a unit of work. Every kind counts: its serial,
    its key ID, its key, the CA key that signed it, and its account (user or
    host) when that was revoked no earlier than the certificate's start.
    """
    repo = source.revocations
    if repo.is_revoked("serial", str(cert.serial)):
        return f"serial {cert.serial} is revoked"
    if repo.is_revoked("key_id", cert.key_id):
        return f"key ID {cert.key_id} is revoked"
    if repo.is_revoked("key", cert.key_fingerprint):
        return f"key {cert.key_fingerprint} is revoked"
    if repo.is_revoked("ca_key", cert.ca_fingerprint):
        return f"CA key {cert.ca_fingerprint} is revoked"
    at = repo.revoked_at("user", cert.username)
    if at is not None and cert.valid_after <= at:
        return f"{cert.username} is revoked"
    return None


def revoke_ca_key(log: Store, fingerprint: str, reason: str, actor: str | None = None, *,
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
    now = _now(log)
    with log.transaction() as tx:
        signed = tx.certificates.signed_by(fingerprint, now - KRL_EXPIRY_GRACE)
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


def list_revocations(log: Store) -> list[Revocation]:
    """Every revocation, oldest first."""
    return [Revocation(*r) for r in log.revocations.all()]


def krl_version(log: Store) -> int:
    """The version of the last KRL built (0 before the first)."""
    state = log.revocations.krl_state()
    return state[0] if state else 0


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


def _contents(repo, keyring: Keyring, now: int, grace: int, extra_ca_keys: tuple[str, ...] = ()):
    cutoff = now - grace
    ca_blobs = {k.fingerprint: k.blob for k in keyring.keys}
    for line in extra_ca_keys:  # the host CA key: its certificates get a section of their own
        blob = base64.b64decode(line.split()[1])
        ca_blobs[fingerprint(blob)] = blob
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

    for serial, ca_fp, key_id in repo.revoked_serial_certificates(cutoff):
        by_serial(serial, ca_fp, key_id)
    for serial, ca_fp, key_id in repo.revoked_user_certificates(cutoff):
        by_serial(serial, ca_fp, key_id)
    for key_id, ca_fp in repo.revoked_key_id_certificates(cutoff):
        key_ids.setdefault(ca_blobs.get(ca_fp, WILDCARD_CA), set()).add(key_id)
    keys: set[bytes] = set()
    sha256s: set[bytes] = set()
    for value, public in repo.revoked_keys():
        if public:
            keys.add(base64.b64decode(public.split()[1]))
        else:
            sha256s.add(sha256_of_fingerprint(value))
    certs = {ca: CertRevocations.of(serials.get(ca, ()), key_ids=key_ids.get(ca, ()))
             for ca in set(serials) | set(key_ids)}
    return certs, keys, sha256s


def build_current_krl(log: Store, keyring: Keyring, now: float | None = None, *,
                      grace: int = KRL_EXPIRY_GRACE, extra_ca_keys: tuple[str, ...] = (),
                      publish: bool = True) -> CurrentKRL:
    """Build the KRL from the database (see the module docstring for what goes in),
    bumping ``krl_version`` if the content changed since the last build.

    ``publish=False`` (``iast-ca krl --text``: a look, not a release) bumps nothing: the KRL
    carries the last published version, and ``changed`` says whether its content differs.

    One ``BEGIN IMMEDIATE`` transaction: two builders never hand out two
    different KRLs with the same version. A version bump is audited
    (``krl_version`` event).
    """
    now = int(log.clock() if now is None else now)
    with log.transaction() as tx:
        # Under the write lock: the revocations (and the certificates they name) must be what
        # the events say, or no KRL is published (docs/security.md, "Derived tables are checked
        # against the chain"): a deleted row must not quietly take a certificate out of it.
        wrong = log.revocations_disagree()
        if wrong:
            raise AuditError(f"the KRL is not published: the database disagrees with the audit log "
                             f"({'; '.join(map(str, wrong[:3]))}{'; ...' if len(wrong) > 3 else ''}); "
                             "run 'iast-ca audit verify'")
        certs, keys, sha256s = _contents(tx.revocations, keyring, now, grace, tuple(extra_ca_keys))
        canonical = build_krl(0, certs=certs, keys=keys, sha256s=sha256s, generated=0, comment=KRL_COMMENT)
        digest = hashlib.sha256(canonical).hexdigest()
        state = tx.revocations.krl_state()
        n_serials = sum(rc.serial_count for rc in certs.values())
        n_ids = sum(len(rc.key_ids) for rc in certs.values())
        n_keys = len(keys) + len(sha256s)
        if state is not None and state[1] == digest:
            version, generated, changed = state[0], state[2], False
        elif not publish:
            version, generated, changed = (state[0] if state else 0), now, True
        else:
            version = state[0] + 1 if state else 1
            generated, changed = now, True
            tx.revocations.set_krl_state(version, digest, generated)
            tx.append("krl_version", {"version": version, "content_sha256": digest, "serials": n_serials,
                                      "key_ids": n_ids, "keys": n_keys})
    data = build_krl(version, certs=certs, keys=keys, sha256s=sha256s, generated=generated, comment=KRL_COMMENT)
    return CurrentKRL(data, version, generated, changed, digest, n_serials, n_ids, n_keys)


def current_krl(log: Store, keyring: Keyring, now: float | None = None, *,
                grace: int = KRL_EXPIRY_GRACE) -> bytes:
    """The binary KRL for sshd's ``RevokedKeys``, built from the database
    (see :func:`build_current_krl`)."""
    return build_current_krl(log, keyring, now, grace=grace).data

