"""Join sshd's login lines to the CA's issuances, and flag what does not add up.

Every certificate the CA issues carries a key ID ``iast:USER:ROLE:SERIAL``
and a serial (security.md rule 9), and OpenSSH logs both, with the
fingerprints of the user's key and of the signing CA key, on every
publickey login by certificate. OpenSSH 9.2 (Debian 12), LogLevel INFO or
VERBOSE, for example::

    Accepted publickey for root from 127.0.0.1 port 39550 ssh2: ED25519-CERT SHA256:3/LK/Dbj... ID iast:alice:dev:1 (serial 1) CA ED25519 SHA256:sJ6xYlPs...
    Failed publickey for root from 127.0.0.1 port 39566 ssh2: ED25519-CERT SHA256:TXR5MeYm... ID iast:bob:dev:2 (serial 2) CA ED25519 SHA256:sJ6xYlPs...

(at INFO, sshd logs a ``Failed publickey`` line only once half of
``MaxAuthTries`` is used up; VERBOSE logs every one). A refusal is preceded,
in the same sshd process, by a line that says why::

    Certificate invalid: expired
    Certificate invalid: not yet valid
    Certificate does not contain an authorized principal
    Authentication key ED25519-CERT SHA256:3/LK/Dbj... revoked by file /etc/ssh/revoked_keys
    cert: Authentication tried for root with valid certificate but not from a permitted source address (127.0.0.1).
    Refused by certificate options

and newer OpenSSH releases (not 9.2, which never prints it) name the certificate in a
line of their own; both ``serial=N`` and ``serial N`` forms are read, with or
without ``signed by``::

    Refusing certificate ID "iast:alice:dev:3" serial=3 signed by ED25519 CA SHA256:...: Certificate invalid: expired
    Refusing certificate ID "cert-expired" serial 0 (not valid): Certificate invalid: expired

:func:`correlate` parses those lines (bare, as ``sshd -e`` and
``journalctl -o cat`` print them, or behind a syslog/journald prefix),
joins each login to its issuance in the ``certificates`` table by serial
*and* CA fingerprint, checks the key ID and key fingerprint against that
issuance, the login time against the ``revoked`` audit events, and the
account against the certificate's principals, and records one row per login
in the ``logins`` table, keyed by a hash of host and line so that reading a
log twice records nothing twice. Each run is itself an audit event
(``correlated``, with its counts).

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

Times: ISO 8601 timestamps (``journalctl -o short-iso``, rsyslog's
high-precision format, RFC 5424) are used as written, with the local time
zone (or ``tz``) when they carry no offset; ``journalctl -o short-unix`` is
unix time. Classic syslog timestamps (``Nov 29 15:04:23``) carry no year and
no zone: they are read in ``tz`` (default: the local time zone) in the
current year, and a date more than a day ahead of now is taken to be from
the year before (a December log read in January). Lines without any time
(``sshd -e``, ``journalctl -o cat``) are recorded with no time.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ca.audit.chain import iso
from ca.audit.log import AuditLog, ensure_tables

SEVERITIES = ("critical", "warning", "info")
_RANK = {s: i for i, s in enumerate(SEVERITIES)}
DEFAULT_PRIVILEGED = ("root",)
# An accepted login this far outside the certificate's validity (as issued) is flagged.
VALIDITY_TOLERANCE = 300
MAX_LINE = 8192

# -- the sshd messages ------------------------------------------------------------

_FP = r"(?:SHA256:[A-Za-z0-9+/]+={0,2}|MD5(?::[0-9a-f]{2}){16})"
# auth.c auth_log(): "%s %s%s%s for %s%.100s from %.200s port %d ssh2%s%s", where the
# last part is ": KEYTYPE FP ID KEYID (serial N) CA CATYPE CAFP" for a certificate.
# The key ID is the certificate's own text (sshd escapes non-printables): it is matched
# greedily, so that the serial and CA taken are the last ones on the line, which sshd
# wrote itself.
_PUBKEY = re.compile(
    r"^(?P<verb>Accepted|Failed|Partial) publickey for (?:invalid user )?(?P<account>\S*) "
    r"from (?P<source>\S+) port (?P<port>\d+) ssh2: (?P<key_type>[A-Z0-9-]+-CERT) "
    rf"(?:(?P<key_fp>{_FP}) )?ID (?P<key_id>.*) \(serial (?P<serial>\d+)\) "
    rf"CA (?P<ca_type>\S+) (?P<ca_fp>{_FP})(?: \[preauth\])?\s*$"
)
_PUBKEY_ANY = re.compile(r"^(?:Accepted|Failed|Partial|Postponed) publickey for ")
_REFUSING = re.compile(
    r'^Refusing certificate ID "(?P<key_id>.*?)"'
    r"(?=[ ,:(]|$)(?:,? serial[= ](?P<serial>\d+))?"
    rf"(?: signed by (?P<ca_type>\S+) CA (?P<ca_fp>{_FP}))?(?P<rest>.*)$"
)
# Lines that say why the next "Failed publickey" line failed (same sshd process).
_REASONS = (
    re.compile(r"^Certificate invalid: .*$"),
    re.compile(r"^Certificate does not contain an authorized principal.*$"),
    re.compile(r"^Certificate lacks principal list.*$"),
    re.compile(r"^cert: .*$"),
    re.compile(r"^Refused by certificate options.*$"),
    re.compile(r"^Authentication key \S+ \S+ revoked by file .*$"),
    re.compile(r"^Authentication key \S+ \S+ revoked by .*$"),
)
_CONNECTION = re.compile(r"^Connection from \S+ port \d+ ")

# -- log prefixes ----------------------------------------------------------------

_ISO_TS = r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:[.,]\d+)?(?:Z|[+-]\d{2}(?::?\d{2})?)?"
_SYSLOG_TS = r"[A-Z][a-z]{2} [ \d]?\d \d{2}:\d{2}:\d{2}"
_UNIX_TS = r"\d{9,11}\.\d{1,9}"
_SSHD_PROGRAMS = {"sshd", "sshd-session", "sshd-auth"}
_PREFIXED = re.compile(
    rf"^(?:<\d{{1,3}}>)?(?P<ts>{_ISO_TS}|{_SYSLOG_TS}|{_UNIX_TS})\s+(?:(?P<host>\S+)\s+)??"
    r"(?P<prog>[^\s\[\]:]+)(?:\[(?P<pid>\d+)\])?:\s?(?P<msg>.*)$"
)
# RFC 5424: <PRI>1 TIMESTAMP HOST APP PROCID MSGID STRUCTURED-DATA MSG
_RFC5424 = re.compile(
    r"^<\d{1,3}>1 (?P<ts>\S+) (?P<host>\S+) (?P<prog>\S+) (?P<pid>\S+) \S+ "
    r"(?:-|(?:\[(?:[^\]\\]|\\.)*\])+) ?(?P<msg>.*)$"
)
_BARE_PROGRAM = re.compile(
    r"^(?:(?P<host>\S+)\s+)?(?P<prog>\S*sshd(?:-session|-auth)?)(?:\[(?P<pid>\d+)\])?:\s?(?P<msg>.*)$"
)
_MONTHS = {m: i for i, m in enumerate(("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov",
                                        "Dec"), start=1)}


@dataclass(frozen=True)
class LogLine:
    """One line of a log, split into its syslog/journald prefix (if any) and sshd's message."""

    raw: str
    message: str
    host: str | None = None
    pid: str | None = None
    logged_time: str | None = None  # the time exactly as written in the line
    ts: str | None = None  # that time in UTC, in the audit log's ``ts`` form, if it could be read


def _program_is_sshd(prog: str) -> bool:
    return prog.rsplit("/", 1)[-1] in _SSHD_PROGRAMS


def parse_timestamp(text: str, *, tz: dt.tzinfo | None = None, now: float | None = None) -> str | None:
    """A log timestamp -> the audit log's UTC ``ts`` form, or None if it cannot be read.

    ISO 8601 without an offset, and syslog's ``Nov 29 15:04:23``, are read in
    ``tz`` (None: the local time zone). Syslog times take the current year, or
    the year before when that would put them more than a day in the future.
    """
    now = time.time() if now is None else now
    text = text.strip()
    try:
        if re.fullmatch(_UNIX_TS, text):
            seconds, _, frac = text.partition(".")
            when = dt.datetime.fromtimestamp(int(seconds), dt.timezone.utc)
            return _utc(when + dt.timedelta(microseconds=int(frac[:6].ljust(6, "0"))))
        if re.fullmatch(_ISO_TS, text):
            norm = text.replace(",", ".").replace(" ", "T", 1)
            m = re.match(r"^(.*?T\d{2}:\d{2}:\d{2})(\.\d+)?(.*)$", norm)
            frac = (m.group(2) or "")[:7]  # Python reads at most 6 digits
            offset = m.group(3)
            if offset == "Z":
                offset = "+00:00"
            elif re.fullmatch(r"[+-]\d{4}", offset):
                offset = offset[:3] + ":" + offset[3:]
            elif re.fullmatch(r"[+-]\d{2}", offset):
                offset += ":00"
            when = dt.datetime.fromisoformat(m.group(1) + frac + offset)
            if when.tzinfo is None:
                when = when.replace(tzinfo=tz) if tz is not None else when.astimezone()
            return _utc(when)
        m = re.fullmatch(r"([A-Z][a-z]{2}) +(\d{1,2}) (\d{2}):(\d{2}):(\d{2})", text)
        if m and m.group(1) in _MONTHS:
            zone = tz if tz is not None else dt.datetime.now().astimezone().tzinfo
            year = dt.datetime.fromtimestamp(now, zone).year
            for y in (year, year - 1):
                try:
                    when = dt.datetime(y, _MONTHS[m.group(1)], int(m.group(2)), int(m.group(3)), int(m.group(4)),
                                       int(m.group(5)))
                except ValueError:  # 29 Feb in a year that has none
                    continue
                when = when.replace(tzinfo=tz) if tz is not None else when.astimezone()
                if when.timestamp() <= now + 86400:
                    return _utc(when)
    except (ValueError, OverflowError, OSError):
        return None
    return None


def _utc(when: dt.datetime) -> str:
    """An aware datetime -> the audit log's ``ts`` form, exactly (no float round trip)."""
    return when.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def split_line(raw: str, *, tz: dt.tzinfo | None = None, now: float | None = None) -> LogLine | None:
    """Split a log line into prefix and sshd message.

    Returns None for a line with a syslog/journald prefix from a program
    other than sshd (its text is not sshd's, whatever it says). A line with
    no recognisable prefix is taken as a bare sshd message.
    """
    line = raw.rstrip("\r\n")
    m = _RFC5424.match(line)
    if m:
        if not _program_is_sshd(m.group("prog")):
            return None
        pid = m.group("pid") if m.group("pid") != "-" else None
        return LogLine(line, m.group("msg"), m.group("host"), pid, m.group("ts"),
                       parse_timestamp(m.group("ts"), tz=tz, now=now))
    m = _PREFIXED.match(line)
    if m:
        if not _program_is_sshd(m.group("prog")):
            return None
        return LogLine(line, m.group("msg"), m.group("host"), m.group("pid"), m.group("ts"),
                       parse_timestamp(m.group("ts"), tz=tz, now=now))
    m = _BARE_PROGRAM.match(line)
    if m and _program_is_sshd(m.group("prog")):
        return LogLine(line, m.group("msg"), m.group("host"), m.group("pid"))
    return LogLine(line, line)


# -- parsed logins ------------------------------------------------------------------


@dataclass(frozen=True)
class SshdLogin:
    """One publickey authentication by certificate, as sshd logged it."""

    host: str
    line: str
    outcome: str  # "accepted", "partial" (accepted, more methods required) or "refused"
    serial: int | None
    key_id: str
    account: str | None = None
    source: str | None = None
    port: int | None = None
    key_type: str | None = None
    key_fingerprint: str | None = None
    ca_type: str | None = None
    ca_fingerprint: str | None = None
    logged_time: str | None = None
    ts: str | None = None
    reason: str | None = None
    serial_text: str | None = None  # the serial as logged (it may not fit SQLite's 64-bit signed integers)

    @property
    def line_hash(self) -> str:
        """The key that makes a line count once: SHA-256 of host and line."""
        return hashlib.sha256(self.host.encode() + b"\n" + self.line.encode("utf-8", "replace")).hexdigest()


def _serial(text: str | None) -> int | None:
    if text is None:
        return None
    n = int(text)
    return n if n < 2**63 else None


class SshdLogParser:
    """Turns log lines into :class:`SshdLogin` records; keeps the reasons sshd gives before a refusal.

    sshd writes why it refused a certificate on a line of its own just before
    the ``Failed publickey`` line, from the same process: the reason is kept
    per process id (all bare lines share one slot) until the next
    ``... publickey for`` line of that process.
    """

    def __init__(self, host: str | None = None, *, tz: dt.tzinfo | None = None, now: float | None = None):
        self.host = host
        self.tz = tz
        self.now = time.time() if now is None else now
        self.lines = 0
        self.sshd_lines = 0
        self._reasons: dict[str | None, list[str]] = {}
        self._refusing: dict[str | None, tuple[LogLine, re.Match]] = {}

    def _host(self, line: LogLine) -> str:
        return line.host or self.host or "unknown"

    def feed(self, raw: str) -> list[SshdLogin]:
        """Read one line; return the logins it completes (usually none or one)."""
        self.lines += 1
        if len(raw) > MAX_LINE:
            return []
        line = split_line(raw, tz=self.tz, now=self.now)
        if line is None:
            return []
        msg = line.message
        out: list[SshdLogin] = []
        m = _PUBKEY.match(msg)
        if m:
            self.sshd_lines += 1
            reasons = self._reasons.pop(line.pid, [])
            refusing = self._refusing.pop(line.pid, None)
            if refusing is not None:
                rl, rm = refusing
                if rm.group("key_id") == m.group("key_id") and rm.group("serial") in (None, m.group("serial")):
                    reasons = reasons or [self._refusing_reason(rm)]
                else:
                    out.append(self._from_refusing(rl, rm))
            verb = m.group("verb")
            outcome = {"Accepted": "accepted", "Partial": "partial", "Failed": "refused"}[verb]
            out.append(SshdLogin(
                host=self._host(line), line=line.raw, outcome=outcome, serial=_serial(m.group("serial")),
                serial_text=m.group("serial"), key_id=m.group("key_id"), account=m.group("account"),
                source=m.group("source"), port=int(m.group("port")), key_type=m.group("key_type"),
                key_fingerprint=m.group("key_fp"), ca_type=m.group("ca_type"), ca_fingerprint=m.group("ca_fp"),
                logged_time=line.logged_time, ts=line.ts,
                reason="; ".join(reasons) if outcome == "refused" and reasons else None,
            ))
            return out
        if _PUBKEY_ANY.match(msg) or _CONNECTION.match(msg):
            # Another key tried (or a new connection): what was pending belongs to nothing we record.
            self._reasons.pop(line.pid, None)
            refusing = self._refusing.pop(line.pid, None)
            if refusing is not None:
                out.append(self._from_refusing(*refusing))
            return out
        m = _REFUSING.match(msg)
        if m:
            self.sshd_lines += 1
            previous = self._refusing.pop(line.pid, None)
            if previous is not None:
                out.append(self._from_refusing(*previous))
            self._refusing[line.pid] = (line, m)
            return out
        if any(r.match(msg) for r in _REASONS):
            self.sshd_lines += 1
            self._reasons.setdefault(line.pid, []).append(msg.strip())
        return out

    def finish(self) -> list[SshdLogin]:
        """The end of the input: refusals still waiting for their ``Failed`` line stand alone."""
        out = [self._from_refusing(*v) for v in self._refusing.values()]
        self._refusing.clear()
        self._reasons.clear()
        return out

    @staticmethod
    def _refusing_reason(m: re.Match) -> str:
        rest = m.group("rest").strip().lstrip(":").strip()
        return rest or "refused"

    def _from_refusing(self, line: LogLine, m: re.Match) -> SshdLogin:
        return SshdLogin(
            host=self._host(line), line=line.raw, outcome="refused", serial=_serial(m.group("serial")),
            serial_text=m.group("serial"), key_id=m.group("key_id"), ca_type=m.group("ca_type"),
            ca_fingerprint=m.group("ca_fp"), logged_time=line.logged_time, ts=line.ts,
            reason=self._refusing_reason(m),
        )

    def parse(self, lines: Iterable[str]) -> Iterator[SshdLogin]:
        """Every login in ``lines``, in order, then :meth:`finish`."""
        for raw in lines:
            yield from self.feed(raw)
        yield from self.finish()


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
        self.conn = log.conn
        self.privileged = frozenset(privileged)
        ours = set(our_ca_fingerprints)
        # Every CA key that ever signed a certificate recorded here is ours too.
        ours.update(fp for (fp,) in self.conn.execute("SELECT DISTINCT ca_fingerprint FROM certificates"))
        self.ours = frozenset(ours)
        self.revocations = self._load_revocations()
        self._by_value: dict[tuple[str, str], list[_Revocation]] = {}
        for r in self.revocations:
            self._by_value.setdefault((r.kind, r.value), []).append(r)
        self._certs: dict[int, tuple | None] = {}

    def _load_revocations(self) -> list[_Revocation]:
        out = []
        for event_id, ts, data in self.conn.execute(
                "SELECT id, ts, data FROM events WHERE kind = 'revoked' ORDER BY id"):
            try:
                d = json.loads(data)
                kind, value = str(d["kind"]), str(d["value"])
            except (ValueError, KeyError, TypeError):
                continue
            serials = frozenset(s for s in d.get("serials", []) if isinstance(s, int))
            out.append(_Revocation(event_id, ts, kind, value, str(d.get("reason") or ""),
                                   d.get("ca_fingerprint"), serials))
        return out

    def _certificate(self, serial: int) -> tuple | None:
        if serial not in self._certs:
            row = self.conn.execute(
                "SELECT c.serial, c.key_id, c.username, c.role, c.key_fingerprint, c.ca_fingerprint, c.valid_after,"
                " c.valid_before, c.event_id, e.data FROM certificates c LEFT JOIN events e ON e.id = c.event_id"
                " WHERE c.serial = ?", (serial,)).fetchone()
            self._certs[serial] = row
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
        try:
            principals = tuple(json.loads(data).get("principals", [])) if data else ()
        except ValueError:
            principals = ()
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
            for r in self._covering(lg, cert):
                what = f"revoked at {r.ts[:19]}Z ({r.kind} {r.value}, event {r.event_id}" + (
                    f", reason: {r.reason})" if r.reason else ")")
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

_SCHEMA = (
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
_SCHEMA_OBJECTS = {"logins", "logins_serial", "logins_ts", "logins_run", "logins_severity", "logins_no_update",
                   "logins_no_delete"}


def has_logins(conn: sqlite3.Connection) -> bool:
    """Whether ``correlate`` ever created the ``logins`` table in this database."""
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'logins'").fetchone() is not None


def ensure_schema(log: AuditLog) -> None:
    """Create the ``logins`` table if it is missing (writes nothing when it exists)."""
    ensure_tables(log.conn, _SCHEMA_OBJECTS, _SCHEMA, "logins")


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


def _existing(conn: sqlite3.Connection, hashes: list[str]) -> set[str]:
    found: set[str] = set()
    for i in range(0, len(hashes), 500):
        chunk = hashes[i:i + 500]
        found.update(h for (h,) in conn.execute(
            f"SELECT line_hash FROM logins WHERE line_hash IN ({', '.join('?' * len(chunk))})", chunk))
    return found


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
    known = _existing(log.conn, list(parsed))
    judge = Judge(log, our_ca_fingerprints, privileged)
    candidates = {h: judge.judge(lg) for h, lg in parsed.items() if h not in known}
    with log.transaction() as tx:
        # Again under the write lock: another run may have recorded some of them meanwhile.
        late = _existing(log.conn, list(candidates))
        result.new = [j for h, j in candidates.items() if h not in late]
        result.already_recorded += len(known) + len(late)
        result.hosts = sorted({j.login.host for j in result.new} | ({host} if host else set()))
        data = {"inputs": list(inputs), "host": host, "privileged": sorted(set(privileged)), **result.counts()}
        result.event_id = tx.append("correlated", data, user=actor)
        log.conn.executemany(
            "INSERT INTO logins (line_hash, host, logged_time, ts, account, source, port, serial, serial_text,"
            " ca_fingerprint, key_id, key_fingerprint, issued_event_id, outcome, reason, severity, findings,"
            " correlated_event_id, line) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(j.login.line_hash, j.login.host, j.login.logged_time, j.login.ts, j.login.account, j.login.source,
              j.login.port, j.login.serial, j.login.serial_text, j.login.ca_fingerprint, j.login.key_id,
              j.login.key_fingerprint, j.issued_event_id, j.login.outcome, j.login.reason, j.severity,
              json.dumps([f.as_dict() for f in j.findings], ensure_ascii=False), result.event_id, j.login.line)
             for j in result.new])
    return result
