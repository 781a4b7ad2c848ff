"""The security review report, presented: plain text, one self-contained HTML page, and JSON.

Renders the dict that :func:`ca.review.report.build_report` returns; reads no
database. The HTML report is one self-contained file (inline CSS and an
inline SVG chart, no JavaScript, no external resources) meant for a reviewer
who never used a terminal; every value that comes from the database is
escaped.
"""

from __future__ import annotations

import datetime as dt
import html
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ca.durations import format_duration
from ca.review.correlate import SEVERITIES

# -- text ---------------------------------------------------------------------------------


def _t(ts: str | None) -> str:
    """``2026-11-29T15:04:23.123456Z`` -> ``2026-11-29 15:04Z``."""
    return f"{ts[:10]} {ts[11:16]}Z" if ts and len(ts) >= 16 else (ts or "-")


def _login_time(r: dict) -> str:
    """A login's time in UTC, or as logged when it could not be read, or "no time" (sshd -e)."""
    return _t(r["ts"]) if r["ts"] else (r["logged_time"] or "no time")


def _dur(seconds: Any) -> str:
    try:
        return format_duration(int(seconds))
    except (TypeError, ValueError):
        return "-"


def _table(rows: list[list[Any]], headers: list[str]) -> list[str]:
    if not rows:
        return ["  (none)"]
    cells = [[("-" if c is None else str(c)) for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    out = ["  " + "  ".join(h.ljust(wd) for h, wd in zip(headers, widths)).rstrip()]
    out += ["  " + "  ".join(c.ljust(wd) for c, wd in zip(r, widths)).rstrip() for r in cells]
    return out


def _counts(by_kind: dict) -> str:
    return " (" + ", ".join(f"{k} {n}" for k, n in sorted(by_kind.items(), key=str)) + ")" if by_kind else ""


def _window_text(rep: dict) -> str:
    s, u = rep["window"]["since"], rep["window"]["until"]
    if not s and not u:
        return "the whole audit log"
    return f"from {_t(s) if s else 'the start'} to {_t(u) if u else 'now'}"


def _issued_table(rows: list[dict]) -> list[str]:
    return _table([[r["id"], _t(r["ts"]), r["user"], r["role"], r["serial"], _dur(r["ttl"]),
                    ",".join(map(str, r["principals"])), (r["reason"] or "")[:60]] for r in rows],
                  ["EVENT", "TIME", "USER", "ROLE", "SERIAL", "TTL", "PRINCIPALS", "REASON"])


def render_text(rep: dict[str, Any]) -> str:
    """The report as plain text, for a terminal or an e-mail."""
    out = [f"iast-ssh security review: {_window_text(rep)} (times in UTC), generated {_t(rep['generated'])}", ""]
    iss, priv, oh = rep["issuances"], rep["privileged"], rep["outside_hours"]
    den, cor, un = rep["denials"], rep["correlation"], rep["unused"]
    f = cor["findings"]
    out += [
        "Summary",
        f"  {iss['total']} certificates issued to {iss['users_total']} users; "
        f"{priv['total']} with a privileged principal ({', '.join(priv['principals']) or 'none configured'}); "
        f"{oh['total']} outside working hours ({oh['hours']} {oh['weekdays']})",
        f"  {den['total']} requests refused or failed; {rep['lockouts']['total']} lockouts; "
        f"{rep['revocations']['total']} revocations; {rep['approvals']['total']} approval events",
        (f"  sshd logins: {cor['logins']} recorded ({cor['joined']} joined to an issuance); findings: "
         f"{f['critical']} critical, {f['warning']} warning, {f['info']} info" if cor["available"]
         else "  sshd logins: no sshd log has been correlated (iast-ca audit correlate)"),
        f"  {un['total']} of {un['expired_total']} expired certificates were never used"
        + ("" if un["available"] else " (no login recorded: correlate sshd logs first)"),
        "",
        "Issuances by role",
        *_table([[r["role"], r["count"], r["users"], _dur(r["max_ttl"]), _dur(r["avg_ttl"])] for r in iss["by_role"]],
                ["ROLE", "ISSUED", "USERS", "LONGEST", "AVERAGE"]),
        "",
        f"Issuances by user (top {len(iss['by_user'])} of {iss['users_total']})",
        *_table([[r["user"], r["count"], ",".join(r["roles"]), _t(r["last"])] for r in iss["by_user"]],
                ["USER", "ISSUED", "ROLES", "LAST"]),
        "",
        f"Privileged principals ({', '.join(priv['principals']) or 'none'}): {priv['total']} certificates",
        *((_table([[r["principal"], r["count"], r["users"]] for r in priv["by_principal"]],
                  ["PRINCIPAL", "ISSUED", "USERS"]) + _issued_table(priv["recent"]))
          if priv["by_principal"] or priv["recent"] else ["  (none)"]),
        "",
        "Longest lifetimes",
        *_issued_table(rep["longest"]),
        "",
        f"Outside working hours ({oh['hours']} UTC, {oh['weekdays']}): {oh['total']}",
        *((_table([[r["user"], r["count"]] for r in oh["by_user"]], ["USER", "ISSUED"]) + _issued_table(oh["recent"]))
          if oh["by_user"] or oh["recent"] else ["  (none)"]),
        "",
        f"Denials and failures: {den['total']}" + _counts(den["by_kind"])
        + f", {den['groups_total']} distinct messages",
        *_table([[r["count"], r["kind"], r["users"], _t(r["last"]), (r["message"] or "")[:90]] for r in den["groups"]],
                ["COUNT", "KIND", "USERS", "LAST", "MESSAGE"]),
        "",
        f"Authentication failures at the CA: {rep['auth_failures']['total']}",
        *_table([[r["count"], r["method"], r["users"], r["sources"], r["why"]] for r in rep["auth_failures"]["groups"]],
                ["COUNT", "METHOD", "USERS", "SOURCES", "WHY"]),
        "",
        f"Lockouts: {rep['lockouts']['total']}",
        *_table([[_t(r["ts"]), r["user"], r["source"], r["key"], r["failures"], _dur(r["seconds"])]
                 for r in rep["lockouts"]["recent"]], ["TIME", "USER", "SOURCE", "KEY", "FAILURES", "FOR"]),
        "",
        f"Approvals: {rep['approvals']['total']}",
        *_table([[k, n] for k, n in rep["approvals"]["by_kind"].items()], ["KIND", "COUNT"]),
        "Who approved what (latest first)",
        *_table([[_t(r["ts"]), r["approver"], r["decision"], r["request_id"], r["requester"], r["role"],
                  (r["comment"] or "")[:60]] for r in rep["approvals"].get("votes", [])],
                ["TIME", "APPROVER", "DECISION", "REQUEST", "REQUESTER", "ROLE", "COMMENT"]),
        "",
        f"Revocations: {rep['revocations']['total']}" + _counts(rep["revocations"]["by_kind"]),
        *_table([[_t(r["ts"]), r["kind"], r["value"], r["actor"], (r["reason"] or "")[:60]]
                 for r in rep["revocations"]["recent"]], ["TIME", "KIND", "VALUE", "BY", "REASON"]),
        "",
    ]
    if cor["available"]:
        out += [
            f"sshd logins: {cor['logins']} on {cor['hosts']} hosts from {cor['runs']} correlate runs "
            f"({', '.join(f'{k} {n}' for k, n in sorted(cor['by_outcome'].items())) or 'none'})",
            *_table([[r["severity"], r["code"], r["count"]] for r in cor["by_code"]], ["SEVERITY", "FINDING", "COUNT"]),
            "",
            "Critical and warning findings",
            *_table([[r["severity"].upper(), r["host"], _login_time(r), r["account"], r["source"], r["serial"],
                      r["message"]] for r in cor["list"]],
                    ["SEVERITY", "HOST", "TIME", "ACCOUNT", "FROM", "SERIAL", "FINDING"]),
            "",
        ]
    else:
        out += ["sshd logins: none recorded (feed sshd logs to 'iast-ca audit correlate')", ""]
    out += [
        f"Expired certificates never used: {un['total']} of {un['expired_total']}"
        + ("" if un["available"] else " (no sshd log correlated: every expired certificate counts)"),
        *_table([[r["role"], r["unused"], r["expired"]] for r in un["by_role"]], ["ROLE", "UNUSED", "EXPIRED"]),
        *_table([[r["serial"], r["key_id"], r["user"], _t(r["issued"]), _dur(r["ttl"])] for r in un["recent"]],
                ["SERIAL", "KEY ID", "USER", "ISSUED", "VALID FOR"]),
    ]
    return "\n".join(out) + "\n"


# -- HTML ---------------------------------------------------------------------------------

_CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;color:#1d2430;background:#f6f7f9;margin:0}
main{max-width:1100px;margin:0 auto;padding:24px}
h1{font-size:1.6em;margin:0 0 4px}h2{font-size:1.2em;margin:32px 0 6px;border-bottom:2px solid #d5dae1;
padding-bottom:4px}p.lead{color:#4a5565;margin:0 0 16px}p.help{color:#4a5565;font-size:.92em;margin:4px 0 10px}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:16px 0}.card{background:#fff;border:1px solid #d5dae1;
border-radius:8px;padding:12px 16px;min-width:150px;flex:1}.card b{display:block;font-size:1.7em}
.card span{color:#4a5565;font-size:.9em}.card.bad{border-color:#c0392b;background:#fdecea}
.card.bad b{color:#c0392b}.card.warn{border-color:#d68910;background:#fef5e7}
table{border-collapse:collapse;width:100%;background:#fff;margin:6px 0 12px;font-size:.92em}
th,td{border:1px solid #d5dae1;padding:5px 8px;text-align:left;vertical-align:top}th{background:#eef1f5}
td.n{text-align:right;font-variant-numeric:tabular-nums}.none{color:#6b7685;font-style:italic}
.sev-critical{color:#fff;background:#c0392b;padding:1px 6px;border-radius:4px;font-weight:bold}
.sev-warning{color:#000;background:#f5b041;padding:1px 6px;border-radius:4px}
.sev-info{background:#d6eaf8;padding:1px 6px;border-radius:4px}
.bar{background:#3f6fb5;height:10px;display:inline-block;vertical-align:middle}
svg{background:#fff;border:1px solid #d5dae1;border-radius:6px}code{font-size:.95em}
footer{color:#6b7685;font-size:.85em;margin-top:32px}
"""


def _e(v: Any) -> str:
    """Escape anything for HTML text or an attribute value."""
    return html.escape("-" if v is None else str(v), quote=True)


def _html_table(rows: list[list[Any]], headers: list[str], numeric: Iterable[int] = ()) -> str:
    if not rows:
        return '<p class="none">None.</p>'
    num = set(numeric)
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = []
    for r in rows:
        cells = []
        for i, c in enumerate(r):
            if isinstance(c, _Raw):
                cells.append(f"<td>{c.html}</td>")
            else:
                cells.append(f'<td class="n">{_e(c)}</td>' if i in num else f"<td>{_e(c)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


@dataclass(frozen=True)
class _Raw:
    """Markup built here (already escaped), to put in a table cell as is."""

    html: str


_FINDINGS = {
    "not_issued": "Signed with this authority's key, but never issued by it (forged, or a lost record)",
    "record_mismatch": "Does not match what the authority issued under that serial (forged or altered)",
    "used_after_revocation": "Used after it was revoked (the server lacks the current revocation list)",
    "maybe_used_after_revocation": "Revoked, and used at a time the log does not say",
    "privileged_account": "Logged in to a privileged account that the certificate does not name",
    "outside_validity": "Accepted outside the certificate's validity (the server's clock is off?)",
    "account_not_principal": "Logged in to an account the certificate does not name (mapped by the server)",
    "other_ca": "A certificate from another authority was accepted",
}


def _finding(code: str) -> _Raw:
    label = _FINDINGS.get(code)
    return _Raw(f"{_e(label)} <code>{_e(code)}</code>" if label else f"<code>{_e(code)}</code>")


def _sev(s: str) -> _Raw:
    cls = s if s in SEVERITIES else "info"
    return _Raw(f'<span class="sev-{cls}">{_e(s.upper())}</span>')


def _bar(n: int, biggest: int) -> _Raw:
    width = 0 if not biggest else max(1, round(200 * n / biggest)) if n else 0
    return _Raw(f'<span class="bar" style="width:{width}px"></span> {_e(n)}')


def _chart(per_day: list[dict]) -> str:
    """An SVG bar chart of issuances per day (per month beyond a year), with every day shown."""
    if not per_day:
        return '<p class="none">No certificates were issued in this period.</p>'
    counts = {r["day"]: r["count"] for r in per_day}
    first = dt.date.fromisoformat(per_day[0]["day"])
    last = dt.date.fromisoformat(per_day[-1]["day"])
    labels: list[str] = []
    values: list[int] = []
    if (last - first).days > 366:
        unit = "month"
        monthly: dict[str, int] = {}
        for d, n in counts.items():
            monthly[d[:7]] = monthly.get(d[:7], 0) + n
        y, m = first.year, first.month
        while (y, m) <= (last.year, last.month):
            key = f"{y:04d}-{m:02d}"
            labels.append(key)
            values.append(monthly.get(key, 0))
            y, m = (y + 1, 1) if m == 12 else (y, m + 1)
    else:
        unit = "day"
        d = first
        while d <= last:
            labels.append(d.isoformat())
            values.append(counts.get(d.isoformat(), 0))
            d += dt.timedelta(days=1)
    width, height, left, bottom, top = 900, 220, 50, 30, 14
    plot_w, plot_h = width - left - 10, height - bottom - top
    biggest = max(values) or 1
    step = plot_w / len(values)
    bar_w = max(step * 0.8, 0.5)
    parts = [f'<svg role="img" aria-label="Certificates issued per {unit}" width="100%"'
             f' viewBox="0 0 {width} {height}" preserveAspectRatio="xMinYMin meet">']
    for frac in (0, 0.5, 1):
        y = top + plot_h * (1 - frac)
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - 10}" y2="{y:.1f}" stroke="#e1e5eb"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end" fill="#4a5565">'
                     f"{_e(round(biggest * frac))}</text>")
    for i, (label, v) in enumerate(zip(labels, values)):
        h = plot_h * v / biggest
        x = left + i * step + (step - bar_w) / 2
        parts.append(f'<rect x="{x:.1f}" y="{top + plot_h - h:.1f}" width="{bar_w:.1f}" height="{h:.1f}"'
                     f' fill="#3f6fb5"><title>{_e(label)}: {_e(v)}</title></rect>')
    for i in sorted({0, len(labels) // 2, len(labels) - 1}):
        x = left + i * step + step / 2
        anchor = "start" if i == 0 else "end" if i == len(labels) - 1 else "middle"
        parts.append(f'<text x="{x:.1f}" y="{height - 10}" font-size="11" text-anchor="{anchor}"'
                     f' fill="#4a5565">{_e(labels[i])}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _issued_html(rows: list[dict]) -> str:
    return _html_table([[r["id"], _t(r["ts"]), r["user"], r["role"], r["serial"], _dur(r["ttl"]),
                         ", ".join(map(str, r["principals"])), r["reason"] or ""] for r in rows],
                       ["Event", "Time (UTC)", "User", "Role", "Serial", "Lifetime", "Principals", "Reason given"],
                       numeric=(0, 4))


def render_html(rep: dict[str, Any]) -> str:
    """The report as one self-contained HTML page (no scripts, no external resources)."""
    iss, priv, oh = rep["issuances"], rep["privileged"], rep["outside_hours"]
    den, cor, un = rep["denials"], rep["correlation"], rep["unused"]
    rv, lk, ap = rep["revocations"], rep["lockouts"], rep["approvals"]
    f = cor["findings"]

    def card(n: int, label: str, level: str = "") -> str:
        return f'<div class="card {level}"><b>{_e(n)}</b><span>{_e(label)}</span></div>'

    crit_level = "bad" if f["critical"] else ""
    cards = "".join([
        card(iss["total"], "certificates issued"),
        card(iss["users_total"], "people who received one"),
        card(priv["total"], f"with a privileged principal ({', '.join(priv['principals']) or 'none'})",
             "warn" if priv["total"] else ""),
        card(oh["total"], "issued outside working hours", "warn" if oh["total"] else ""),
        card(den["total"], "requests refused or failed"),
        card(lk["total"], "account lockouts", "warn" if lk["total"] else ""),
        card(rv["total"], "revocations"),
        card(f["critical"], "critical findings in server logs", crit_level),
        card(un["total"], "expired certificates never used"),
    ])
    max_role = max((r["count"] for r in iss["by_role"]), default=0)
    sections = [
        f"<h1>SSH access review</h1><p class=\"lead\">Certificates issued by the iast-ssh certificate authority,"
        f" {_e(_window_text(rep))}. Generated {_e(_t(rep['generated']))}. All times are UTC.</p>",
        '<p class="help">Every SSH login that uses this authority needs a short-lived certificate. This report'
        " shows who received certificates, for what kind of access, which requests were refused, and, where the"
        " servers' SSH logs have been checked, whether each login matches a certificate the authority really"
        " issued. Items in red need a response; items in orange deserve a look.</p>",
        f'<div class="cards">{cards}</div>',
    ]
    if f["critical"]:
        sections.append(
            '<p class="help"><span class="sev-critical">ACTION NEEDED</span> Server logs show logins that the'
            " authority cannot account for, or logins with revoked certificates. See"
            " &ldquo;Logins checked against server logs&rdquo; below.</p>")
    sections += [
        "<h2>Certificates issued per day</h2>",
        '<p class="help">Each bar is one day; hold the pointer over a bar to see its date and count.</p>',
        _chart(iss["per_day"]),
        "<h2>By role</h2>",
        '<p class="help">A role is a kind of access (for example read-only production). &ldquo;Longest&rdquo;'
        " is the longest lifetime granted.</p>",
        _html_table([[r["role"], _bar(r["count"], max_role), r["users"], _dur(r["max_ttl"]), _dur(r["avg_ttl"])]
                     for r in iss["by_role"]], ["Role", "Certificates", "People", "Longest", "Average"],
                    numeric=(2,)),
        f"<h2>By person (top {len(iss['by_user'])} of {iss['users_total']})</h2>",
        _html_table([[r["user"], r["count"], ", ".join(r["roles"]), _t(r["last"])] for r in iss["by_user"]],
                    ["Person", "Certificates", "Roles", "Most recent"], numeric=(1,)),
        f"<h2>Privileged access ({_e(', '.join(priv['principals']) or 'none configured')})</h2>",
        f'<p class="help">{_e(priv["total"])} certificates allowed logging in as a privileged account.</p>',
        _html_table([[r["principal"], r["count"], r["users"]] for r in priv["by_principal"]],
                    ["Account", "Certificates", "People"], numeric=(1, 2)),
        _issued_html(priv["recent"]),
        "<h2>Longest lifetimes</h2>",
        '<p class="help">The certificates that stayed valid longest. Long lifetimes widen the window in which a'
        " stolen certificate works.</p>",
        _issued_html(rep["longest"]),
        f"<h2>Outside working hours ({_e(oh['hours'])} UTC, {_e(oh['weekdays'])})</h2>",
        f'<p class="help">{_e(oh["total"])} certificates were issued outside these hours.</p>',
        _html_table([[r["user"], r["count"]] for r in oh["by_user"]], ["Person", "Certificates"], numeric=(1,)),
        _issued_html(oh["recent"]),
        f"<h2>Refused and failed requests ({_e(den['total'])})</h2>",
        '<p class="help">Requests the authority refused (policy) or could not complete, grouped by message.</p>',
        _html_table([[r["count"], r["kind"], r["users"], _t(r["first"]), _t(r["last"]), r["message"] or ""]
                     for r in den["groups"]], ["Times", "Kind", "People", "First", "Last", "Message"],
                    numeric=(0, 2)),
        f"<h2>Failed sign-ins to the authority ({_e(rep['auth_failures']['total'])})</h2>",
        _html_table([[r["count"], r["method"], r["users"], r["sources"], r["why"]]
                     for r in rep["auth_failures"]["groups"]], ["Times", "Method", "Accounts", "Addresses", "Why"],
                    numeric=(0, 2, 3)),
        f"<h2>Lockouts ({_e(lk['total'])})</h2>",
        '<p class="help">Accounts or addresses blocked after repeated failed sign-ins.</p>',
        _html_table([[_t(r["ts"]), r["user"], r["source"], r["key"], r["failures"], _dur(r["seconds"])]
                     for r in lk["recent"]], ["Time", "Account", "Address", "Blocked", "Failures", "For"],
                    numeric=(4,)),
        f"<h2>Approvals ({_e(ap['total'])})</h2>",
        _html_table([[k, n] for k, n in ap["by_kind"].items()], ["Kind", "Count"], numeric=(1,)),
        '<p class="help">Who approved or denied which access request (latest first).</p>',
        _html_table([[_t(r["ts"]), r["approver"], r["decision"], r["request_id"], r["requester"], r["role"],
                      r["comment"] or ""] for r in ap.get("votes", [])],
                    ["Time", "Approver", "Decision", "Request", "Requester", "Role", "Comment"]),
        f"<h2>Revocations ({_e(rv['total'])})</h2>",
        '<p class="help">Certificates, keys or people whose access was withdrawn before it expired.</p>',
        _html_table([[_t(r["ts"]), r["kind"], r["value"], r["actor"], r["reason"] or ""] for r in rv["recent"]],
                    ["Time", "What", "Which", "By", "Reason"]),
        "<h2>Logins checked against server logs</h2>",
    ]
    if cor["available"]:
        outcome = ", ".join(f"{_e(n)} {_e(k)}" for k, n in sorted(cor["by_outcome"].items())) or "none"
        sections += [
            f'<p class="help">{_e(cor["logins"])} logins by certificate were read from the SSH logs of'
            f" {_e(cor['hosts'])} servers ({outcome}); {_e(cor['joined'])} of them match a certificate this"
            " authority issued. A critical finding means a login with a certificate the authority has no record"
            " of, whose record does not match, or that had been revoked.</p>",
            _html_table([[_sev(r["severity"]), _finding(r["code"]), r["count"]] for r in cor["by_code"]],
                        ["Severity", "Finding", "Logins"], numeric=(2,)),
            _html_table([[_sev(r["severity"]), r["host"], _login_time(r), r["account"],
                          r["source"], r["serial"], r["message"]] for r in cor["list"]],
                        ["Severity", "Server", "Time", "Account", "From", "Serial", "What was found"]),
        ]
    else:
        sections.append('<p class="none">No server SSH logs have been checked yet.</p>')
    sections += [
        f"<h2>Certificates never used ({_e(un['total'])} of {_e(un['expired_total'])} expired)</h2>",
        '<p class="help">Expired certificates with no recorded login on any checked server. Many unused'
        " certificates for a role can mean the access is not needed.</p>"
        + ("" if un["available"] else '<p class="none">No server logs have been checked, so every expired'
                                      " certificate counts as unused.</p>"),
        _html_table([[r["role"], r["unused"], r["expired"]] for r in un["by_role"]],
                    ["Role", "Never used", "Expired"], numeric=(1, 2)),
        _html_table([[r["serial"], r["key_id"], r["user"], _t(r["issued"]), _dur(r["ttl"])] for r in un["recent"]],
                    ["Serial", "Certificate ID", "Person", "Issued", "Valid for"], numeric=(0,)),
        f"<footer>Report options: privileged accounts {_e(', '.join(priv['principals']) or 'none')};"
        f" working hours {_e(oh['hours'])} UTC on {_e(oh['weekdays'])}; lists show at most"
        f" {_e(rep['options']['top'])} rows.</footer>",
    ]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>SSH access review {_e(_window_text(rep))}</title><style>{_CSS}</style></head>"
            f"<body><main>{''.join(sections)}</main></body></html>\n")


def render_json(rep: dict[str, Any]) -> str:
    return json.dumps(rep, indent=2, ensure_ascii=False, default=str) + "\n"
