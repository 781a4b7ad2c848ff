"""The security review report: what the CA issued, refused and revoked, and how certificates were used.

:func:`build_report` turns the audit log into the report's sections (a
JSON-ready dict) through the review queries of the store
(:mod:`ca.store.sqlite.review`): each is a ``GROUP BY`` over the ``events``
indexes and only the top rows of each list come back to Python, so that it
stays fast on a log of millions of events. :mod:`ca.review.render` presents
the result (text, HTML, JSON).

Time window: ``since``/``until`` select events by their ``ts`` (UTC); the
store turns the window into the range of event ids it spans, so that each
section is a range scan of the ``(kind, id)`` index, and keeps the ``ts``
condition too, so the result is exact even if the clock went backwards at
some point.

Working hours are judged in UTC on the issuance's own date: with
``hours=("08:00", "18:00")`` and Monday to Friday, an issuance at 18:00:00
on a Friday, or at any time on a Saturday, is outside. A range that wraps
midnight (``22:00-06:00``) is a night shift.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ca.audit.chain import iso
from ca.review.correlate import DEFAULT_PRIVILEGED, SEVERITIES
from ca.store import AuditLog

WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")  # index = SQLite strftime('%w')
DEFAULT_HOURS = ("08:00", "18:00")
DEFAULT_WEEKDAYS = frozenset({1, 2, 3, 4, 5})
DENIAL_KINDS = ("denied", "failed")


# -- options ------------------------------------------------------------------------------


def parse_hours(text: str) -> tuple[str, str]:
    """``08:00-18:00`` -> ``("08:00", "18:00")``; ``24:00`` is allowed as an end."""
    m = re.fullmatch(r"\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*", text or "")
    if not m:
        raise ValueError(f"working hours look like 08:00-18:00, got {text!r}")
    h1, m1, h2, m2 = (int(x) for x in m.groups())
    if not (0 <= h1 <= 23 and 0 <= m1 <= 59 and (0 <= h2 <= 23 and 0 <= m2 <= 59 or (h2, m2) == (24, 0))):
        raise ValueError(f"working hours look like 08:00-18:00 (00:00 to 24:00), got {text!r}")
    start, end = f"{h1:02d}:{m1:02d}", f"{h2:02d}:{m2:02d}"
    if start == end:
        raise ValueError(f"working hours {text!r} are empty (start equals end)")
    return start, end


def parse_weekdays(text: str) -> frozenset[int]:
    """``mon-fri``, ``mon,wed,fri``, ``sun-thu`` or ``fri-mon`` (wraps) -> SQLite ``%w`` numbers."""
    days: set[int] = set()
    for part in (text or "").lower().split(","):
        part = part.strip()
        if not part:
            continue
        ends = [p.strip()[:3] for p in part.split("-")]
        if len(ends) > 2 or any(e not in WEEKDAYS for e in ends):
            raise ValueError(f"weekdays look like mon-fri or mon,tue,wed, got {text!r}")
        a, b = WEEKDAYS.index(ends[0]), WEEKDAYS.index(ends[-1])
        i = a
        while True:
            days.add(i)
            if i == b:
                break
            i = (i + 1) % 7
    if not days:
        raise ValueError(f"no weekdays in {text!r}")
    return frozenset(days)


def weekdays_text(days: Iterable[int]) -> str:
    """SQLite ``%w`` numbers -> ``mon-fri`` / ``mon,wed,fri`` (weeks start on Monday)."""
    order = sorted({(d + 6) % 7 for d in days})  # 0 = Monday
    runs: list[list[int]] = []
    for i in order:
        if runs and runs[-1][-1] == i - 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    name = [WEEKDAYS[(i + 1) % 7] for i in range(7)]
    return ",".join(f"{name[r[0]]}-{name[r[-1]]}" if len(r) > 2 else ",".join(name[i] for i in r) for r in runs)


@dataclass(frozen=True)
class ReportOptions:
    """What to report on. ``since``/``until`` are ``ts`` strings (see :func:`ca.audit.iso`)."""

    since: str | None = None
    until: str | None = None
    privileged: tuple[str, ...] = DEFAULT_PRIVILEGED
    hours: tuple[str, str] = DEFAULT_HOURS
    weekdays: frozenset[int] = field(default=DEFAULT_WEEKDAYS)
    top: int = 20
    now: float | None = None



# -- the report ---------------------------------------------------------------------------


# The sections build_report fills after its header, one query (or a few) each: what a progress bar counts.
REPORT_SECTIONS = 12


class _Sections(dict):
    """The report dict; ``progress(name)`` is called as each section is filled."""

    def __init__(self, progress: Callable[[str], None] | None, *args: Any, **kw: Any):
        super().__init__(*args, **kw)
        self._progress = progress

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        if self._progress is not None:
            self._progress(key)


def build_report(log: AuditLog, opts: ReportOptions,
                 progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Aggregate the audit log into the report's sections (a JSON-ready dict); ``progress(section)``
    is called after each of the REPORT_SECTIONS sections."""
    rq = log.review
    now = log.clock() if opts.now is None else opts.now
    win = rq.event_window(opts.since, opts.until)  # the store's own token for the window; passed back, never read
    top = opts.top

    rep: dict[str, Any] = _Sections(progress, {
        "generated": iso(now),
        "window": {"since": opts.since, "until": opts.until},
        "options": {"privileged": list(opts.privileged), "hours": "-".join(opts.hours),
                    "weekdays": weekdays_text(opts.weekdays), "timezone": "UTC", "top": top},
    })

    # Events by kind.
    by_kind = rq.events_by_kind(win)
    rep["events"] = {"total": sum(by_kind.values()), "by_kind": by_kind}

    # Issuances.
    by_role = [
        {"role": r, "count": n, "users": u, "max_ttl": mx, "avg_ttl": round((avg or 0) / 60) * 60}
        for r, n, u, mx, avg in rq.issued_by_role(win)
    ]
    users_total = rq.issued_users_total(win)
    by_user = [
        {"user": u, "count": n, "roles": sorted(roles), "last": last}
        for u, n, roles, last in rq.issued_by_user(win, top)
    ]
    per_day = [{"day": d, "count": n} for d, n in rq.issued_per_day(win)]
    rep["issuances"] = {"total": sum(r["count"] for r in by_role), "users_total": users_total,
                        "by_role": by_role, "by_user": by_user, "per_day": per_day}

    # Privileged principals.
    priv = list(opts.privileged)
    if priv:
        by_principal = [
            {"principal": p, "count": n, "users": u}
            for p, n, u in rq.issued_by_principal(win, priv)
        ]
        priv_total = rq.issued_with_principal_total(win, priv)
        priv_users = [{"user": u, "count": n}
                      for u, n in rq.issued_with_principal_by_user(win, priv, top)]
        priv_recent = _issued_rows(rq.issued_with_principal_recent(win, priv, top))
    else:
        by_principal, priv_total, priv_users, priv_recent = [], 0, [], []
    rep["privileged"] = {"principals": priv, "total": priv_total, "by_principal": by_principal,
                         "by_user": priv_users, "recent": priv_recent}

    # Longest lifetimes.
    rep["longest"] = _issued_rows(rq.issued_longest(win, top))

    # Outside working hours (UTC).
    start, end = opts.hours
    out_total = rq.issued_outside_hours_total(win, opts.hours, opts.weekdays)
    out_users = [{"user": u, "count": n}
                 for u, n in rq.issued_outside_hours_by_user(win, opts.hours, opts.weekdays, top)]
    out_recent = _issued_rows(rq.issued_outside_hours_recent(win, opts.hours, opts.weekdays, top))
    rep["outside_hours"] = {"hours": f"{start}-{end}", "weekdays": weekdays_text(opts.weekdays),
                            "total": out_total, "by_user": out_users, "recent": out_recent}

    # Denials and failures, messages grouped.
    den_by_kind = rq.denials_by_kind(win, DENIAL_KINDS)
    den_groups_total = rq.denial_groups_total(win, DENIAL_KINDS)
    den_groups = [
        {"kind": k, "code": c, "message": m, "count": n, "users": u, "first": first, "last": last}
        for k, c, m, n, u, first, last in rq.denial_groups(win, DENIAL_KINDS, top)
    ]
    rep["denials"] = {"total": sum(den_by_kind.values()), "by_kind": den_by_kind,
                      "groups_total": den_groups_total, "groups": den_groups}

    # Authentication failures at the CA service, grouped by why.
    af_groups = [
        {"method": m, "why": y, "count": n, "users": u, "sources": s}
        for m, y, n, u, s in rq.auth_failure_groups(win, top)
    ]
    rep["auth_failures"] = {"total": by_kind.get("auth_failed", 0), "groups": af_groups}

    # Lockouts.
    lock_recent = [
        {"id": i, "ts": ts, "user": u, "source": s, "key": k, "failures": f, "seconds": sec}
        for i, ts, u, s, k, f, sec in rq.lockouts_recent(win, top)
    ]
    lock_users = [{"user": u, "count": n} for u, n in rq.lockouts_by_user(win, top)]
    rep["lockouts"] = {"total": by_kind.get("lockout", 0), "by_user": lock_users, "recent": lock_recent}

    # Approvals: every kind starting with "request_".
    appr = rq.approvals_by_kind(win)
    votes = [{"id": i, "ts": ts, "decision": "approved" if k == "request_approved" else "denied", "request_id": rid,
              "requester": u, "role": r, "approver": a, "comment": c}
             for i, ts, k, rid, u, r, a, c in rq.approval_votes_recent(win, top)]
    rep["approvals"] = {"total": sum(appr.values()), "by_kind": appr, "votes": votes}

    # Revocations.
    rv_by_kind = rq.revocations_by_kind(win)
    rv_recent = [
        {"id": i, "ts": ts, "kind": k, "value": v, "reason": r, "actor": a}
        for i, ts, k, v, r, a in rq.revocations_recent(win, top)
    ]
    rep["revocations"] = {"total": sum(rv_by_kind.values()), "by_kind": rv_by_kind, "recent": rv_recent}

    rep["correlation"] = _correlation(rq, win, opts)
    rep["unused"] = _unused(rq, win, opts, now, rep["correlation"]["available"])
    return dict(rep)


def _issued_rows(rows: list[tuple]) -> list[dict[str, Any]]:
    return [{"id": i, "ts": ts, "user": u, "role": r, "serial": s, "ttl": ttl, "principals": p,
             "reason": reason} for i, ts, u, r, s, ttl, p, reason in rows]


def _correlation(rq: Any, win: Any, opts: ReportOptions) -> dict[str, Any]:
    if not rq.has_logins():
        return {"available": False, "runs": 0, "logins": 0, "by_outcome": {}, "hosts": 0, "joined": 0,
                "findings": dict.fromkeys(SEVERITIES, 0), "by_code": [], "list": []}
    runs = rq.correlate_runs(win)
    by_outcome = rq.logins_by_outcome(win)
    hosts, joined = rq.logins_hosts_and_joined(win)
    by_code = [{"severity": s, "code": c, "count": n} for s, c, n in rq.login_findings_by_code(win)]
    by_code.sort(key=lambda r: (SEVERITIES.index(r["severity"]) if r["severity"] in SEVERITIES else 9, -r["count"]))
    findings = dict.fromkeys(SEVERITIES, 0)
    for r in by_code:
        if r["severity"] in findings:
            findings[r["severity"]] += r["count"]
    listed = [
        {"severity": s, "code": c, "message": m, "host": h, "ts": ts, "logged_time": lt, "account": a,
         "source": src, "serial": ser, "key_id": k, "issued_event_id": ev, "outcome": o}
        for s, c, m, h, ts, lt, a, src, ser, k, ev, o in rq.login_findings_serious(win,
                                                                                          max(opts.top, 100))
    ]
    return {"available": True, "runs": runs, "logins": sum(by_outcome.values()), "by_outcome": by_outcome,
            "hosts": hosts, "joined": joined, "findings": findings, "by_code": by_code, "list": listed}


def _unused(rq: Any, win: Any, opts: ReportOptions, now: float,
            correlated: bool) -> dict[str, Any]:
    expired_total = rq.expired_certificates_total(win, now)
    total = rq.unused_certificates_total(win, now, correlated)
    by_role = [{"role": r, "unused": n, "expired": m}
               for r, n, m in rq.unused_certificates_by_role(win, now, correlated)]
    recent = [
        {"serial": s, "key_id": k, "user": u, "role": r, "issued": ts, "valid_before": iso(vb), "ttl": vb - va}
        for s, k, u, r, ts, va, vb in rq.unused_certificates_recent(win, now, correlated, opts.top)
    ]
    return {"available": correlated, "expired_total": expired_total, "total": total, "by_role": by_role,
            "recent": recent}
