"""Read sshd's log lines: the publickey logins by certificate they record, as :class:`SshdLogin`.

Every certificate the CA issues carries a key ID ``iast:USER:ROLE:SERIAL``
and a serial (docs/security.md rule 9), and OpenSSH logs both, with the
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

:func:`split_line` takes a line apart (bare, as ``sshd -e`` and ``journalctl
-o cat`` print them, or behind a syslog/journald prefix), and
:class:`SshdLogParser` turns a stream of lines into logins, keeping the
reasons sshd gives before a refusal. Judging the logins against the CA's
records is :mod:`ca.review.correlate`'s job.

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
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

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

