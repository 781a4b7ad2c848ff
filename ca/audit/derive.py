"""The tables a security decision reads, rebuilt from the audit events alone.

The hash chain covers the events; the tables beside them (users and their
keys, disabled flags, revocations, certificates, access requests and
votes) are derived state: every change to them is written in the same
transaction as the event that records it. :func:`derive` replays the events
into the state those tables must hold, so that ``audit verify`` and the KRL
build can tell a table that was edited behind the log's back
(docs/security.md, "Derived tables are checked against the chain").

Pure code over :class:`ca.models.Event` values: no database here.
Certificates are not kept in memory (a CA may have millions): the replay
yields the row each ``issued`` event implies, in serial order, for a merge
with the table.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from ca.models import Event

__all__ = ["CERTIFICATE_KINDS", "DERIVED_KINDS", "Derived", "Difference", "apply_event", "certificate_of", "compare_certificates",
           "derive", "revocations_of"]

# The kinds of event that add a ``certificates`` row: user and host certificates share one serial
# sequence and one table.
CERTIFICATE_KINDS = ("issued", "host_issued")
# The kinds of event that change a derived table other than ``certificates`` (which ``issued`` fills).
DERIVED_KINDS = ("user_added", "user_disabled", "user_enabled", "key_added", "key_removed", "revoked",
                 "request_created", "request_approved", "request_denied", "request_cancelled", "request_expired",
                 "request_used")


@dataclass(frozen=True)
class Difference:
    """One row where a table and the events disagree."""

    table: str
    row: str
    problem: str

    def __str__(self) -> str:
        return f"{self.table} {self.row}: {self.problem}"


@dataclass
class Derived:
    """What the tables must hold, by the events."""

    users: dict[str, bool] = field(default_factory=dict)  # name -> disabled
    keys: dict[str, str] = field(default_factory=dict)  # fingerprint -> user
    revocations: set[tuple[str, str]] = field(default_factory=set)  # (kind, value)
    # user revocations whose serial list in the event was cut short: serial rows beyond it are not derivable
    revocations_partial: bool = False
    requests: dict[str, tuple[str, int | None]] = field(default_factory=dict)  # id -> (status, used serial)
    votes: set[tuple[str, str, str]] = field(default_factory=set)  # (request id, approver, decision)


def certificate_of(e: Event) -> tuple:
    """The ``certificates`` row an ``issued`` or ``host_issued`` event implies (``CERTIFICATE_COLUMNS`` order)."""
    d = e.data
    return (e.serial, e.key_id, e.user, e.role, d.get("key_fingerprint"), d.get("ca_fingerprint"),
            d.get("valid_after"), d.get("valid_before"), e.id)


def revocations_of(e: Event) -> tuple[set[tuple[str, str]], bool]:
    """The revocation rows one ``revoked`` event stands for, and whether its serial list was cut."""
    d = e.data
    rows = {(str(d.get("kind")), str(d.get("value")))}
    partial = False
    if d.get("kind") == "user":  # a user revocation also revokes each listed certificate by serial
        rows |= {("serial", str(s)) for s in d.get("serials", [])}
        partial = d.get("serials_total") is not None
    return rows, partial


def apply_event(state: Derived, e: Event) -> None:
    """Apply one event of :data:`DERIVED_KINDS` to ``state`` (others change nothing)."""
    d, k = e.data, e.kind
    if k == "user_added":
        state.users[e.user] = False
        for fp in d.get("keys", []):
            state.keys[fp] = e.user
    elif k == "user_disabled":
        state.users[e.user] = True
    elif k == "user_enabled":
        state.users[e.user] = False
    elif k == "key_added":
        state.keys[d["fingerprint"]] = e.user
    elif k == "key_removed":
        state.keys.pop(d["fingerprint"], None)
    elif k == "revoked":
        rows, partial = revocations_of(e)
        state.revocations |= rows
        state.revocations_partial |= partial
    elif k == "request_created":
        state.requests[d["request_id"]] = ("pending", None)
    elif k == "request_approved":
        state.votes.add((d["request_id"], d["approver"], "approve"))
        state.requests[d["request_id"]] = (d.get("status", "pending"), None)
    elif k == "request_denied":
        state.votes.add((d["request_id"], d["approver"], "deny"))
        state.requests[d["request_id"]] = ("denied", None)
    elif k in ("request_cancelled", "request_expired"):
        state.requests[d["request_id"]] = (k[len("request_"):], None)
    elif k == "request_used":
        state.requests[d["request_id"]] = ("used", d.get("serial"))


def derive(events: Iterable[Event], state: Derived) -> Iterator[tuple]:
    """Replay ``events`` (oldest first) into ``state``; yield each issued certificate's row, in order."""
    for e in events:
        if e.kind in CERTIFICATE_KINDS:
            yield certificate_of(e)
        else:
            apply_event(state, e)


def compare_certificates(expected: Iterator[tuple], stored: Iterator[tuple],
                         report: Callable[[Difference], None]) -> None:
    """Merge two serial-ordered streams of certificate rows; report a missing, extra or changed row.
    ``expected`` comes in event order, which is serial order; an issued event whose serial does not
    increase is reported itself (and the merge goes on from it)."""
    last = [0]

    def ordered(rows: Iterator[tuple]) -> Iterator[tuple]:
        for row in rows:
            if row[0] is None or row[0] <= last[0]:
                report(Difference("events", f"{row[8]}", f"issued serial {row[0]} does not increase"))
                continue
            last[0] = row[0]
            yield row

    expected = ordered(expected)
    a, b = next(expected, None), next(stored, None)
    while a is not None or b is not None:
        if b is None or (a is not None and a[0] < b[0]):
            report(Difference("certificates", f"serial {a[0]}", "missing (the issued event "
                                                                  f"{a[8]} says it was issued)"))
            a = next(expected, None)
        elif a is None or b[0] < a[0]:
            report(Difference("certificates", f"serial {b[0]}", "has no issued event"))
            b = next(stored, None)
        else:
            if tuple(a) != tuple(b):
                report(Difference("certificates", f"serial {a[0]}", "differs from its issued event "
                                                                    f"{a[8]}"))
            a, b = next(expected, None), next(stored, None)
