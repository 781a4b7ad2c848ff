"""Rotating CA keys: add (next), activate, retire; each step one audit event and one atomic keyring write.

    add        a new key, state ``next``: hosts trust it (``iast-ca trust``), it signs nothing yet
    activate   it signs from now on; the key that signed until now becomes ``trusted`` (its
               certificates keep working)
    retire     no longer trusted; refused while it has unexpired certificates unless forced

Each step writes its audit event and ``keyring.json`` together: the event is
appended inside a store transaction, the keyring file is replaced (temp file,
fsync, rename) before COMMIT, and if the write fails the event is rolled
back. A running service picks a new active key up on SIGHUP
(:meth:`ca.app.CA.reload_keyring`). Putting a retired key in the KRL
(``--revoke``) is :func:`ca.access.revocation.revoke_ca_key`, a layer above.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, replace
from typing import Any

from ca.errors import UsageError
from ca.keys.keyring import PURPOSES, CAKey, Keyring
from ca.store import AuditLog

# A certificate counts as unexpired this long after its valid_before: a host whose clock
# lags the CA's still accepts it (the same grace as the KRL's, docs/security.md rule 20).
RETIRE_GRACE = 3600


@dataclass(frozen=True)
class KeyRow:
    """What ``iast-ca key list`` shows of one key."""

    fingerprint: str
    name: str
    type: str
    backend: str
    purpose: str
    state: str
    created: str
    certificates: int
    unexpired: int
    last_expiry: int | None
    uri: str | None

    def as_json(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["last_expiry_text"] = _ts(self.last_expiry)
        return d


def _ts(ts: int | None) -> str | None:
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def key_rows(keyring: Keyring, log: AuditLog, now: int | None = None) -> list[KeyRow]:
    """Every key of the keyring with how many certificates it signed and when the last one expires."""
    now = int(log.clock() if now is None else now)
    rows = []
    for k in keyring.keys:
        count, unexpired = log.certificates.signed_by(k.fingerprint, now - RETIRE_GRACE)
        rows.append(KeyRow(k.fingerprint, k.name, k.algorithm, k.backend, k.purpose, k.state, k.created,
                           count, unexpired, log.certificates.last_expiry(k.fingerprint), k.uri))
    return rows


def _commit(log: AuditLog, ring: Keyring, kind: str, data: dict[str, Any], actor: str | None) -> int:
    with log.transaction() as tx:
        event_id = tx.append(kind, {**data, "actor": actor}, user=actor)
        ring.save()  # before COMMIT: a keyring that cannot be written rolls the event back
    return event_id


def add_key(keyring: Keyring, log: AuditLog, entry: CAKey, actor: str | None, *, generated: bool) -> Keyring:
    """Add ``entry`` (state ``next``) to the keyring; audited ``ca_key_added``."""
    if entry.purpose not in PURPOSES:
        raise UsageError(f"unknown key purpose {entry.purpose!r}; choose one of {', '.join(PURPOSES)}")
    if any(k.fingerprint == entry.fingerprint for k in keyring.keys):
        raise UsageError(f"{entry.fingerprint} is already in the keyring")
    if log.revocations.is_revoked("ca_key", entry.fingerprint):
        raise UsageError(f"{entry.fingerprint} is a revoked CA key")
    entry = replace(entry, state="next")
    ring = keyring.replace(entry)
    _commit(log, ring, "ca_key_added", {
        "fingerprint": entry.fingerprint, "name": entry.name, "algorithm": entry.algorithm,
        "backend": entry.backend, "uri": entry.uri, "purpose": entry.purpose, "state": "next",
        "generated": generated}, actor)
    return ring


def activate_key(keyring: Keyring, log: AuditLog, fp: str, actor: str | None) -> tuple[Keyring, CAKey | None]:
    """Make the key ``fp`` the active key of its purpose; the previous active key becomes
    ``trusted``. Audited ``ca_key_activated``. Returns the new keyring and the previous key."""
    entry = keyring.find(fp)
    if entry.state == "active":
        raise UsageError(f"{entry.fingerprint} is already the active {entry.purpose} CA key")
    if entry.state == "retired":
        raise UsageError(f"{entry.fingerprint} is retired: hosts no longer trust it; add a new key instead")
    if log.revocations.is_revoked("ca_key", entry.fingerprint):
        raise UsageError(f"{entry.fingerprint} is a revoked CA key")
    previous = next((k for k in keyring.keys if k.state == "active" and k.purpose == entry.purpose), None)
    changed = [replace(entry, state="active")]
    if previous is not None:
        changed.append(replace(previous, state="trusted"))
    ring = keyring.replace(*changed)
    _commit(log, ring, "ca_key_activated", {
        "fingerprint": entry.fingerprint, "name": entry.name, "purpose": entry.purpose, "backend": entry.backend,
        "previous": previous.fingerprint if previous else None}, actor)
    return ring, previous


def check_retire(keyring: Keyring, log: AuditLog, fp: str, *, force: bool) -> tuple[CAKey, int]:
    """The key to retire and how many unexpired certificates it has; UsageError if it may not be."""
    entry = keyring.find(fp)
    if entry.state == "active":
        raise UsageError(f"{entry.fingerprint} is the active {entry.purpose} CA key: activate another one first")
    if entry.state == "retired":
        raise UsageError(f"{entry.fingerprint} is already retired")
    _, unexpired = log.certificates.signed_by(entry.fingerprint, int(log.clock()) - RETIRE_GRACE)
    if unexpired and not force:
        last = _ts(log.certificates.last_expiry(entry.fingerprint))
        raise UsageError(f"{entry.fingerprint} still has {unexpired} unexpired certificate(s) (the last expires "
                         f"{last}): hosts would refuse them; wait, or --force (and --revoke if it is compromised)")
    return entry, unexpired


def retire_key(keyring: Keyring, log: AuditLog, fp: str, actor: str | None, *, force: bool,
               revoked: bool = False) -> Keyring:
    """Retire the key ``fp``: no longer trusted. Audited ``ca_key_retired``."""
    entry, unexpired = check_retire(keyring, log, fp, force=force)
    ring = keyring.replace(replace(entry, state="retired"))
    _commit(log, ring, "ca_key_retired", {
        "fingerprint": entry.fingerprint, "name": entry.name, "purpose": entry.purpose,
        "previous_state": entry.state, "unexpired_certificates": unexpired, "forced": bool(force and unexpired),
        "revoked": revoked}, actor)
    return ring
