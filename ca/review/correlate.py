"""Join sshd's login lines to the CA's issuances, and flag what does not add up.

Log lines are read by :mod:`ca.review.sshdlog` (the sshd messages and log
formats, and how times are read, are described there).

:func:`correlate` parses sshd's lines (with
:class:`~ca.review.sshdlog.SshdLogParser`), joins each login to its issuance
in the ``certificates`` table by serial *and* CA fingerprint, checks the key
ID and key fingerprint against that issuance, the login time against the
``revoked`` audit events, and the account against the certificate's
principals, and records one row per login in the ``logins`` table, keyed by
a hash of host and line so that reading a log twice records nothing twice.
Each run is itself an audit event (``correlated``, with its counts).

Findings and their severity:

``critical``
    ``not_issued``: a certificate signed by one of *our* CA keys whose serial
    the audit log does not hold (a lost record, or a certificate signed with
    the CA key outside the CA: the key is compromised).
    ``record_mismatch``: the serial is ours but the key ID, the user's key or
    the CA key differs from the issuance (a forged or altered certificate).
    ``used_after_revocation``: an accepted login dated after a ``revoked``
    event covering the certificate (its serial, key ID, key, user or CA key):
    that host does not have a current KRL.
``warning``
    ``privileged_account``: the account is privileged (``root`` by default)
    and is not one of the certificate's principals: the host's
    AuthorizedPrincipalsFile maps a principal to it ("logged in as root via
    principal prod-ro").
    ``maybe_used_after_revocation``: as above, but the line carries no time,
    so the login may predate the revocation.
    ``outside_validity``: accepted more than five minutes outside the
    certificate's validity as issued (the host's clock is off).
``info``
    ``account_not_principal``: the account is not one of the principals (an
    ordinary AuthorizedPrincipalsFile mapping).
    ``other_ca``: sshd accepted a certificate from a CA that is not ours.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ca.audit.chain import iso
from ca.review.sshdlog import SshdLogin, SshdLogParser
from ca.store import AuditLog

SEVERITIES = ("critical", "warning", "info")
_RANK = {s: i for i, s in enumerate(SEVERITIES)}
DEFAULT_PRIVILEGED = ("root",)
# An accepted login this far outside the certificate's validity (as issued) is flagged.
VALIDITY_TOLERANCE = 300

# -- judging a login against the audit log -------------------------------------------


@dataclass(frozen=True)
class Finding:
    severity: str
    code: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"severity": self.severity, "code": self.code, "message": self.message}


@dataclass(frozen=True)
class Judged:
    """A login and what the audit log says about it."""

    login: SshdLogin
    issued_event_id: int | None
    ours: bool  # signed by one of our CA keys
    findings: tuple[Finding, ...]
    user: str | None = None  # from the issuance
    role: str | None = None
    principals: tuple[str, ...] = ()

    @property
    def severity(self) -> str | None:
        return min((f.severity for f in self.findings), key=_RANK.__getitem__, default=None)

    def as_dict(self) -> dict[str, Any]:
        lg = self.login
        return {
            "host": lg.host, "logged_time": lg.logged_time, "ts": lg.ts, "account": lg.account,
            "source": lg.source, "port": lg.port, "serial": lg.serial if lg.serial is not None else lg.serial_text,
            "key_id": lg.key_id, "key_fingerprint": lg.key_fingerprint, "ca_fingerprint": lg.ca_fingerprint,
            "outcome": lg.outcome, "reason": lg.reason, "issued_event_id": self.issued_event_id,
            "user": self.user, "role": self.role, "principals": list(self.principals),
            "findings": [f.as_dict() for f in self.findings], "line": lg.line,
        }


@dataclass(frozen=True)
class _Revocation:
    event_id: int
    ts: str
    kind: str
    value: str
    reason: str
    ca_fingerprint: str | None
    serials: frozenset[int]


class Judge:
    """Checks logins against the CA's records (issuances, revocations, CA keys)."""

    def __init__(self, log: AuditLog, our_ca_fingerprints: Iterable[str],
                 privileged: Iterable[str] = DEFAULT_PRIVILEGED):
        self.rq = log.review
        self.privileged = frozenset(privileged)
        ours = set(our_ca_fingerprints)
        # Every CA key that ever signed a certificate recorded here is ours too.
        ours.update(self.rq.certificate_ca_fingerprints())
        self.ours = frozenset(ours)
        self.revocations = self._load_revocations()
        self._by_value: dict[tuple[str, str], list[_Revocation]] = {}
        for r in self.revocations:
            self._by_value.setdefault((r.kind, r.value), []).append(r)
        self._certs: dict[int, tuple | None] = {}

    def _load_revocations(self) -> list[_Revocation]:
        out = []
        for event_id, ts, d in self.rq.revocation_events():
            try:
                kind, value = str(d["kind"]), str(d["value"])
            except (ValueError, KeyError, TypeError):  # d is None when the data could not be decoded
                continue
            serials = frozenset(s for s in d.get("serials", []) if isinstance(s, int))
            out.append(_Revocation(event_id, ts, kind, value, str(d.get("reason") or ""),
                                   d.get("ca_fingerprint"), serials))
        return out

    def _certificate(self, serial: int) -> tuple | None:
        if serial not in self._certs:
            self._certs[serial] = self.rq.certificate_by_serial(serial)
        return self._certs[serial]

    def _covering(self, lg: SshdLogin, cert: tuple | None) -> list[_Revocation]:
        """The revocations that cover this certificate (as the KRL built from them would)."""
        out = []
        for kind, value in (("serial", lg.serial_text), ("key_id", lg.key_id), ("key", lg.key_fingerprint),
                            ("ca_key", lg.ca_fingerprint), ("user", cert[2] if cert is not None else None)):
            if value is None:
                continue
            for r in self._by_value.get((kind, value), ()):
                if kind in ("serial", "key_id") and r.ca_fingerprint and r.ca_fingerprint != lg.ca_fingerprint:
                    continue  # a serial or key ID is revoked within the section of one CA key (PROTOCOL.krl)
                if kind == "user" and not (lg.serial in r.serials or cert[6] <= _epoch(r.ts)):
                    continue  # a user revocation covers the certificates valid (backdated) no later than it
                out.append(r)
        return sorted(out, key=lambda r: r.event_id)

    def judge(self, lg: SshdLogin) -> Judged:
        findings: list[Finding] = []
        used = lg.outcome in ("accepted", "partial")
        ours = lg.ca_fingerprint in self.ours
        cert = self._certificate(lg.serial) if lg.serial is not None and ours else None
        principals: tuple[str, ...] = ()
        event_id = user = role = None
        serial_shown = lg.serial if lg.serial is not None else lg.serial_text
        if not ours:
            if used and lg.ca_fingerprint:
                findings.append(Finding("info", "other_ca",
                                        f"sshd accepted a certificate (ID {lg.key_id}, serial {serial_shown}) signed "
                                        f"by {lg.ca_fingerprint}, which is not a CA key of this CA"))
            return Judged(lg, None, False, tuple(findings))
        if cert is None or cert[5] != lg.ca_fingerprint:
            if cert is not None:
                what = (f"serial {serial_shown} was issued by CA key {cert[5]}, but this certificate is signed by "
                        f"{lg.ca_fingerprint}")
            else:
                what = f"serial {serial_shown} (ID {lg.key_id}) is signed by our CA key but is not in the audit log"
            findings.append(Finding("critical", "not_issued" if cert is None else "record_mismatch",
                                    f"{what}: lost or forged record (a CA key used outside the CA?)"))
            return Judged(lg, None, True, tuple(findings))
        (_, key_id, user, role, key_fp, _, valid_after, valid_before, event_id, data) = cert
        principals = tuple(data.get("principals", [])) if data else ()  # data: decoded by the store, or None
        mismatches = []
        if lg.key_id != key_id:
            mismatches.append(f"key ID {lg.key_id!r}, issued as {key_id!r}")
        if lg.key_fingerprint and lg.key_fingerprint != key_fp:
            mismatches.append(f"user key {lg.key_fingerprint}, issued for {key_fp}")
        if mismatches:
            findings.append(Finding("critical", "record_mismatch",
                                    f"serial {lg.serial} does not match its issuance (event {event_id}): "
                                    + "; ".join(mismatches) + ": lost or forged record"))
        if used:
            login_epoch = _epoch(lg.ts) if lg.ts else None
            # One finding per login, from the first revocation that covers it: revoking a certificate
            # again (by serial, then with its user) changes nothing for the login and adds no warning.
            covering = self._covering(lg, cert)
            for r in covering[:1]:
                what = f"revoked at {r.ts[:19]}Z ({r.kind} {r.value}, event {r.event_id}" + (
                    f", reason: {r.reason})" if r.reason else ")") + (
                    f" and {len(covering) - 1} more time(s) since" if len(covering) > 1 else "")
                if login_epoch is not None:
                    if r.ts < lg.ts:
                        findings.append(Finding("critical", "used_after_revocation",
                                                f"login at {lg.ts[:19]}Z after the certificate was {what}: "
                                                f"this host does not have a current KRL"))
                elif _epoch(r.ts) <= valid_after:
                    findings.append(Finding("critical", "used_after_revocation",
                                            f"the certificate was {what}, before it became valid: every login with "
                                            "it came after the revocation; this host does not have a current KRL"))
                else:
                    findings.append(Finding("warning", "maybe_used_after_revocation",
                                            f"the certificate was {what}; the log line has no time, so the login "
                                            "may predate the revocation (feed timestamped logs: journalctl -o "
                                            "short-iso)"))
            if lg.account is not None and lg.account not in principals:
                via = ", ".join(principals) or "(none)"
                if lg.account in self.privileged:
                    findings.append(Finding("warning", "privileged_account",
                                            f"logged in as {lg.account} via principal {via}: {lg.account} is not a "
                                            "principal of the certificate (the host's AuthorizedPrincipalsFile "
                                            "maps it)"))
                else:
                    findings.append(Finding("info", "account_not_principal",
                                            f"logged in as {lg.account} via principal {via}"))
            if login_epoch is not None and not (valid_after - VALIDITY_TOLERANCE <= login_epoch
                                                < valid_before + VALIDITY_TOLERANCE):
                findings.append(Finding("warning", "outside_validity",
                                        f"accepted at {lg.ts[:19]}Z, outside the certificate's validity "
                                        f"{iso(valid_after)[:19]}Z to {iso(valid_before)[:19]}Z (host clock off?)"))
        return Judged(lg, event_id, True, tuple(findings), user, role, principals)


def _epoch(ts: str) -> float:
    return dt.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.timezone.utc).timestamp()


# -- the logins table ------------------------------------------------------------------


def ensure_schema(log: AuditLog) -> None:
    """Create the ``logins`` table if it is missing (writes nothing when it exists)."""
    log.review.ensure_logins_schema()


# -- one run ---------------------------------------------------------------------------


@dataclass
class CorrelationResult:
    """What one run read, matched and recorded."""

    event_id: int
    lines: int = 0
    sshd_lines: int = 0
    logins: int = 0  # certificate logins parsed (including already recorded ones)
    already_recorded: int = 0
    new: list[Judged] = field(default_factory=list)
    hosts: list[str] = field(default_factory=list)

    @property
    def findings(self) -> list[tuple[Judged, Finding]]:
        """Every finding of the newly recorded logins, worst first."""
        out = [(j, f) for j in self.new for f in j.findings]
        out.sort(key=lambda jf: (_RANK[jf[1].severity], jf[0].login.ts or ""))
        return out

    @property
    def severity_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(SEVERITIES, 0)
        for _, f in self.findings:
            counts[f.severity] += 1
        return counts

    @property
    def critical(self) -> bool:
        return self.severity_counts["critical"] > 0

    def counts(self) -> dict[str, Any]:
        new = self.new
        return {
            "lines": self.lines,
            "sshd_lines": self.sshd_lines,
            "certificate_logins": self.logins,
            "new": len(new),
            "already_recorded": self.already_recorded,
            "accepted": sum(j.login.outcome in ("accepted", "partial") for j in new),
            "refused": sum(j.login.outcome == "refused" for j in new),
            "joined": sum(j.issued_event_id is not None for j in new),
            "ours_not_joined": sum(j.ours and j.issued_event_id is None for j in new),
            "other_ca": sum(not j.ours for j in new),
            "findings": self.severity_counts,
        }

    def as_dict(self) -> dict[str, Any]:
        return {"event_id": self.event_id, "hosts": self.hosts, **self.counts(),
                "logins": [j.as_dict() for j in self.new],
                "findings_list": [{**f.as_dict(), "host": j.login.host, "ts": j.login.ts,
                                   "logged_time": j.login.logged_time, "account": j.login.account,
                                   "source": j.login.source, "serial": j.login.serial, "key_id": j.login.key_id,
                                   "issued_event_id": j.issued_event_id} for j, f in self.findings]}


def correlate(
    log: AuditLog,
    lines: Iterable[str],
    *,
    our_ca_fingerprints: Iterable[str],
    host: str | None = None,
    privileged: Iterable[str] = DEFAULT_PRIVILEGED,
    tz: dt.tzinfo | None = None,
    now: float | None = None,
    inputs: Iterable[str] = (),
    actor: str | None = None,
) -> CorrelationResult:
    """Read sshd log ``lines``, record each new certificate login in ``logins``, and judge it.

    ``host`` names the host for lines that do not carry a host name (bare
    sshd messages); a syslog/journald prefix's own host name wins. The run
    is recorded as a ``correlated`` event, in the same transaction as the
    logins, with its counts; the findings of the logins recorded now are
    returned (a login already recorded by an earlier run is not judged
    again).
    """
    ensure_schema(log)
    now = log.clock() if now is None else now
    parser = SshdLogParser(host, tz=tz, now=now)
    parsed: dict[str, SshdLogin] = {}
    count = 0
    for lg in parser.parse(lines):
        count += 1
        parsed.setdefault(lg.line_hash, lg)
    result = CorrelationResult(event_id=0, lines=parser.lines, sshd_lines=parser.sshd_lines, logins=count)
    result.already_recorded = count - len(parsed)
    known = log.review.existing_line_hashes(list(parsed))
    judge = Judge(log, our_ca_fingerprints, privileged)
    candidates = {h: judge.judge(lg) for h, lg in parsed.items() if h not in known}
    with log.transaction() as tx:
        # Again under the write lock: another run may have recorded some of them meanwhile.
        late = log.review.existing_line_hashes(list(candidates))
        result.new = [j for h, j in candidates.items() if h not in late]
        result.already_recorded += len(known) + len(late)
        result.hosts = sorted({j.login.host for j in result.new} | ({host} if host else set()))
        data = {"inputs": list(inputs), "host": host, "privileged": sorted(set(privileged)), **result.counts()}
        result.event_id = tx.append("correlated", data, user=actor)
        log.review.insert_logins([
            (j.login.line_hash, j.login.host, j.login.logged_time, j.login.ts, j.login.account, j.login.source,
             j.login.port, j.login.serial, j.login.serial_text, j.login.ca_fingerprint, j.login.key_id,
             j.login.key_fingerprint, j.issued_event_id, j.login.outcome, j.login.reason, j.severity,
             [f.as_dict() for f in j.findings], result.event_id, j.login.line)
            for j in result.new])
    return result
