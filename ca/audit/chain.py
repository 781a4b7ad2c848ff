"""The audit database: one append-only, hash-chained event log in SQLite.

Every issuance, denial and failure is an event, committed before the answer
leaves the CA (docs/security.md rule 10). Each event row carries the hash of the
row before it, so that changing, removing or inserting a row breaks the
chain at that row; a signed checkpoint (:mod:`ca.audit.checkpoint`) pins the
head of the chain outside the database, which also catches truncation and a
rewrite of the whole tail.

Durability: WAL mode, ``synchronous=FULL`` on every connection, and
``BEGIN IMMEDIATE`` for every write, so concurrent writers (several workers)
serialise on the database lock instead of failing half-way.

The hash of event *n* is::

    sha256("iast-audit-v1" 0x00 prev_hash 0x00 canonical(event n))

where ``canonical`` is the compact JSON array of the stored columns
``[id, ts, kind, user, role, serial, key_id, source, data]`` and ``data`` is
the stored JSON text, byte for byte. The first event's ``prev_hash`` is 64
zeros.

The same ``canonical`` bytes are the leaves of an RFC 6962 Merkle tree
(event *n* is leaf *n - 1*, see :mod:`ca.audit.merkle`), whose root a checkpoint
signs; inclusion and consistency proofs then need only the audit public
key. ``canonical`` is therefore a frozen format: changing it changes every
hash and every root.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from typing import Any

GENESIS = "0" * 64



# Built once: json.dumps() would build an encoder per call (half of chain_hash's time).
_CANONICAL = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_DATA = json.JSONEncoder(ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def canonical(row: tuple) -> bytes:
    """The bytes an event's hash covers: its stored columns, ``id`` to ``data``."""
    return _CANONICAL.encode(list(row[:9])).encode("utf-8")


def chain_hash(prev_hash: str, row: tuple) -> str:
    """The hash of an event row, given the hash of the row before it."""
    return hashlib.sha256(b"iast-audit-v1\x00" + prev_hash.encode("ascii") + b"\x00" + canonical(row)).hexdigest()


def encode_data(data: dict[str, Any]) -> str:
    """Event details as canonical JSON text (sorted keys, compact)."""
    return _DATA.encode(data)


def iso(ts: float) -> str:
    """Unix time -> the fixed-width UTC form stored in ``ts`` (sorts as text)."""
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


