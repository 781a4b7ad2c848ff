"""``iast-ca audit correlate`` and ``iast-ca audit report``: the security reviewer's commands.

Both are registered under the ``audit`` group (see :mod:`ca.cli.admin`).
"""

from __future__ import annotations

import gzip
import time
import zoneinfo
from collections.abc import Iterator

import click

from ca.audit.chain import iso
from ca.cli.common import echo, echo_json, output_options
from ca.cli.progress import progress, progress_iter
from ca.cli.context import Env, pass_env
from ca.durations import parse_time
from ca.errors import StateError, UsageError
from ca.files import write_atomic
from ca.review.correlate import correlate as run_correlate
from ca.review.render import render_html, render_json, render_text
from ca.review.report import REPORT_SECTIONS, ReportOptions, build_report, parse_hours, parse_weekdays
from ca.state import os_user


def _names(text: str) -> tuple[str, ...]:
    return tuple(n for n in (p.strip() for p in (text or "").split(",")) if n)


def _lines(paths: tuple[str, ...]) -> Iterator[str]:
    """Every line of every input in order; '-' is stdin, *.gz is read through gzip."""
    for path in paths:
        if path == "-":
            with click.open_file("-", "r", encoding="utf-8", errors="replace") as stdin:
                yield from stdin
            continue
        try:
            f = (gzip.open(path, "rt", encoding="utf-8", errors="replace") if path.endswith(".gz")
                 else open(path, encoding="utf-8", errors="replace"))
        except OSError as e:
            raise StateError(f"cannot read {path}: {e.strerror}") from None
        with f:
            try:
                yield from f
            except (OSError, EOFError) as e:
                raise StateError(f"cannot read {path}: {e}") from None


def _zone(name: str | None):
    if not name:
        return None
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise UsageError(f"unknown time zone {name!r} (use an IANA name such as UTC or Europe/Berlin)") from None


@click.command("correlate")
@click.argument("files", nargs=-1, required=True, metavar="FILE...",
                type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--host", metavar="NAME",
              help="The host the log comes from, for lines that do not name one (sshd -e, journalctl -o cat). "
                   "Lines with a syslog/journald prefix keep their own host name. Use the same name every run: "
                   "a line counts once per host.")
@click.option("--privileged", metavar="NAMES", default="root", show_default=True,
              help="Comma-separated privileged accounts: logging in to one of them through a principal of "
                   "another name is a warning.")
@click.option("--tz", metavar="ZONE",
              help="Time zone of log times that carry none (syslog 'Nov 29 15:04:23'). Default: local time.")
@click.option("--all", "show_all", is_flag=True, help="List every newly recorded login, not only the findings.")
@output_options(csv_ok=False)
@pass_env
def correlate(env: Env, files: tuple[str, ...], host: str | None, privileged: str, tz: str | None,
              show_all: bool, fmt: str) -> None:
    """Join sshd logins to the CA's issuances and flag what does not add up.

    Reads sshd log lines (FILE, '-' for stdin, *.gz) bare or behind a
    syslog/journald prefix, and records each login by certificate in the
    audit database ('Accepted/Failed publickey ... ID KEYID (serial N) CA
    ...', 'Refusing certificate ID ...'). Each login is joined to its
    issuance by serial and CA key, and checked:

    \b
      critical  our CA key signed it but the serial is not in the audit log,
                or its key ID / user key differs from the issuance
                (lost or forged record); or it logged in after the
                certificate was revoked (the host lacks a current KRL)
      warning   logged in to a privileged account (--privileged) that is
                not one of its principals; used after a revocation but
                the line has no time; accepted outside its validity
      info      account not one of its principals; another CA's certificate

    A line is recorded once (by host and line): reading the same log again
    records and reports nothing twice. Findings are reported when first
    recorded; 'iast-ca audit report' lists them all. Syslog times ('Nov 29
    15:04:23') have no year: the current year is assumed (the previous one
    for dates ahead of now). Lines without a time (sshd -e, journalctl -o
    cat) cannot be dated against revocations: prefer 'journalctl -o
    short-iso'.

    Exit status: 0 when no critical finding was recorded, 1 when at least
    one was (or on error), so that a cron job can alert on it.

    \b
    Example:
      journalctl -u ssh -o short-iso --since -1h | iast-ca audit correlate --host web1 -
    """
    names = _names(privileged)
    zone = _zone(tz)
    with env.open_ca() as ca:
        keyring = ca.keyring  # first: with no CA here, the error says to run 'iast-ca init'
        ca.require_db()
        with progress_iter("reading sshd logs", _lines(files), show=fmt == "text") as lines:
            result = run_correlate(
                ca.audit, lines, our_ca_fingerprints=[k.fingerprint for k in keyring.keys], host=host,
                privileged=names, tz=zone, inputs=list(files), actor=os_user(),
            )
    c = result.counts()
    if fmt == "json":
        echo_json({**result.as_dict(), "exit_status": 1 if result.critical else 0})
    else:
        f = c["findings"]
        echo(f"read {c['lines']} lines ({c['sshd_lines']} sshd certificate lines): "
                   f"{c['certificate_logins']} certificate logins, {c['new']} new, "
                   f"{c['already_recorded']} already recorded")
        echo(f"new: {c['accepted']} accepted, {c['refused']} refused; {c['joined']} joined to an issuance, "
                   f"{c['ours_not_joined']} signed by our CA but not joined, {c['other_ca']} from other CAs")
        echo(f"findings: {f['critical']} critical, {f['warning']} warning, {f['info']} info "
                   f"(recorded as event {result.event_id})")
        for judged, finding in result.findings:
            lg = judged.login
            when = lg.logged_time or "(no time)"
            echo(f"{finding.severity.upper():8}  {lg.host}  {when}  {lg.account or '-'}@{lg.source or '-'}  "
                 f"serial {lg.serial_text or '-'}  {finding.message}")
        if show_all:
            for j in result.new:
                lg = j.login
                echo(f"login  {lg.host}  {lg.logged_time or '(no time)'}  {lg.outcome}  {lg.account or '-'}  "
                           f"from {lg.source or '-'}  serial {lg.serial_text}  {lg.key_id}  "
                           f"issued event {j.issued_event_id or '-'}")
    if result.critical:
        click.get_current_context().exit(1)


def _when(text: str | None, now: float) -> str | None:
    if text is None:
        return None
    try:
        return iso(parse_time(text, now))
    except ValueError as e:
        raise UsageError(str(e)) from None


@click.command("report")
@click.option("--since", metavar="TIME", help="From this time: 2026-11-01, 2026-11-01T12:00Z, or 30d (ago). "
                                               "Default: the start of the log.")
@click.option("--until", metavar="TIME", help="Before this time (same forms). Default: now.")
@click.option("--format", "fmt", type=click.Choice(["text", "json", "html"]), default="text", show_default=True,
              help="html: one self-contained page (no scripts, no external resources) for reviewers.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, allow_dash=True), default="-",
              help="Write the report to this file (default: stdout).")
@click.option("--privileged", metavar="NAMES", default="root", show_default=True,
              help="Comma-separated principals that count as privileged.")
@click.option("--hours", metavar="HH:MM-HH:MM", default="08:00-18:00", show_default=True,
              help="Working hours, in UTC (22:00-06:00 wraps midnight).")
@click.option("--weekdays", metavar="DAYS", default="mon-fri", show_default=True,
              help="Working days, judged on the UTC date: mon-fri, or mon,tue,thu.")
@click.option("--top", type=click.IntRange(min=1, max=10_000), default=20, show_default=True,
              help="Rows in each list.")
@pass_env
def report(env: Env, since, until, fmt, output, privileged, hours, weekdays, top) -> None:
    """Summarise the audit log for a security review.

    Issuances by role and by user, certificates with privileged principals,
    the longest lifetimes, issuances outside working hours (UTC), refusals
    with their messages grouped, authentication failures and lockouts,
    approvals (every 'request_*' event), revocations, the findings of
    'iast-ca audit correlate', and expired certificates with no recorded
    login. Everything is counted in SQL, so a large log is fast.

    \b
    Example:
      iast-ca audit report --since 30d --format html -o review-$(date +%F).html
    """
    now = time.time()
    try:
        opts = ReportOptions(since=_when(since, now), until=_when(until, now), privileged=_names(privileged),
                             hours=parse_hours(hours), weekdays=parse_weekdays(weekdays), top=top, now=now)
    except ValueError as e:
        raise UsageError(str(e)) from None
    with env.open_ca(require_db=True) as ca:
        with progress("building the report", REPORT_SECTIONS) as update:
            rep = build_report(ca.audit, opts, progress=update)
    text = {"text": render_text, "json": render_json, "html": render_html}[fmt](rep)
    if output == "-":
        echo(text, nl=False)
    else:
        write_atomic(output, text, 0o600)
        echo(f"report written to {output}", err=True)


__all__ = ["correlate", "report"]
