"""``iast-ca audit report``: counts checked against a generated log of 100,000 events, and the HTML page.

The large log is written straight into a real audit database, with valid
hash-chain hashes (``verify`` passes), and the generator keeps its own list
of what it wrote: each section of the report is compared with numbers
computed from that list in Python, independently of the report's SQL.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import time
from collections import Counter, defaultdict
from html.parser import HTMLParser

import pytest

from ca.app import open_authority
from ca.audit.chain import GENESIS, chain_hash, encode_data, iso
from ca.cli.audit_cmds import audit
from ca.cli.review_cmds import correlate as correlate_cmd
from ca.cli.review_cmds import report as report_cmd
from ca.errors import PolicyDenied
from ca.keys.keyring import Keyring
from ca.models import Identity, SignRequest
from ca.review.correlate import correlate
from ca.review.render import render_html, render_text
from ca.review.report import ReportOptions, build_report, parse_hours, parse_weekdays
from ca.store import AuditLog

from .conftest import make_key

for _cmd in (correlate_cmd, report_cmd):
    if _cmd.name not in audit.commands:
        audit.add_command(_cmd)

N_EVENTS = 100_000
START = dt.datetime(2026, 6, 1, tzinfo=dt.timezone.utc).timestamp()
CA_FP = "SHA256:" + "C" * 43
FORGED_AT = START + 86400 * 30  # a login with a serial the CA never issued
ROLES = {  # role: (principals, ttls)
    "dev": (["{user}"], [3600, 7200, 28800]),
    "prod-readonly": (["prod-ro", "{user}"], [900, 1800]),
    "breakglass": (["root"], [600, 900]),
    "db-admin": (["postgres", "admin"], [3600]),
    "ops": (["root", "{user}"], [1800, 3600, 14400]),
}
DENIALS = [
    ("denied", "denied", "role breakglass requires a second factor"),
    ("denied", "denied", "requested ttl exceeds the role's max_ttl"),
    ("denied", "denied", "role prod-readonly requires a reason"),
    ("denied", "key", "RSA keys must have at least 3072 bits"),
    ("denied", "denied", "'x' is not a valid user name"),
    ("failed", "signing", "the certificate did not verify against the CA key"),
]
KINDS = (["issued"] * 55 + ["denied"] * 14 + ["failed"] * 2 + ["auth_failed"] * 12 + ["lockout"] * 2
         + ["revoked"] * 3 + ["request_approved"] * 3 + ["request_denied"] * 2 + ["request_expired"] * 1
         + ["checkpoint"] * 1 + ["user_disabled"] * 5)


def generate(log: AuditLog, n: int = N_EVENTS, seed: int = 7) -> dict:
    """Write ``n`` events (and the certificates of the issued ones) in one transaction; return what was written."""
    rnd = random.Random(seed)
    users = [f"user{i:03d}" for i in range(300)]
    rows, certs, prev, t, serial = [], [], GENESIS, START, 0
    events = []
    for event_id in range(1, n + 1):
        t += rnd.uniform(0, 150)
        ts_t = t - rnd.uniform(0, 3600) if rnd.random() < 0.001 else t  # a clock that sometimes steps back
        ts = iso(ts_t)
        kind = rnd.choice(KINDS)
        user = rnd.choice(users)
        role = serial_ = key_id = source = None
        data: dict = {}
        if kind == "issued":
            role = rnd.choice(list(ROLES))
            principals = [p.replace("{user}", user) for p in ROLES[role][0]]
            ttl = rnd.choice(ROLES[role][1])
            serial += 1
            serial_, key_id = serial, f"iast:{user}:{role}:{serial}"
            reason = rnd.choice([None, "deploy", "incident 42", "on call"])
            data = {"principals": principals, "ttl": ttl, "valid_after": int(ts_t) - 60,
                    "valid_before": int(ts_t) + ttl, "reason": reason, "key_fingerprint": f"SHA256:k{serial}",
                    "ca_fingerprint": CA_FP}
            certs.append((serial, key_id, user, role, f"SHA256:k{serial}", CA_FP, int(ts_t) - 60, int(ts_t) + ttl,
                          event_id))
        elif kind in ("denied", "failed"):
            kind, code, message = rnd.choice([d for d in DENIALS if d[0] == kind])
            data = {"code": code, "message": message}
        elif kind == "auth_failed":
            data = {"method": rnd.choice(["publickey", "keyboard-interactive"]),
                    "why": rnd.choice(["no accepted key", "wrong password or one-time code"])}
            source = f"10.0.{rnd.randrange(4)}.{rnd.randrange(256)}"
        elif kind == "lockout":
            data = {"key": f"user:{user}", "failures": 5, "seconds": 900}
        elif kind == "revoked":
            rk = rnd.choice(["serial", "key_id", "key", "user"])
            data = {"kind": rk, "value": str(rnd.randrange(1, 1000)), "reason": "left the company", "actor": "admin"}
        row = (event_id, ts, kind, user, role, serial_, key_id, source, encode_data(data))
        digest = chain_hash(prev, row)
        rows.append(row + (prev, digest))
        prev = digest
        events.append({"id": event_id, "ts": ts, "kind": kind, "user": user, "role": role, "data": data})
    log.conn.execute("BEGIN IMMEDIATE")
    log.conn.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    log.conn.executemany("INSERT INTO certificates VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", certs)
    log.conn.execute("COMMIT")
    return {"events": events, "certs": certs}


def _line(cert: tuple, when: float, port: int, account: str = "deploy") -> str:
    serial, key_id, _, _, key_fp, ca_fp, *_ = cert
    stamp = dt.datetime.fromtimestamp(when, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")
    return (f"{stamp} web{port % 7} sshd[{port}]: Accepted publickey for {account} from 10.9.0.1 port {port} ssh2: "
            f"ED25519-CERT {key_fp} ID {key_id} (serial {serial}) CA ED25519 {ca_fp}")


def expected(gen: dict, opts: ReportOptions, used: set[int], now: float) -> dict:
    """The report's numbers, computed from the generator's own records."""
    since, until = opts.since or "", opts.until or "\uffff"
    ev = [e for e in gen["events"] if since <= e["ts"] < until]
    issued = [e for e in ev if e["kind"] == "issued"]
    priv = set(opts.privileged)
    start, end = opts.hours

    def outside(e: dict) -> bool:
        d = dt.datetime.strptime(e["ts"], "%Y-%m-%dT%H:%M:%S.%fZ")
        hhmm = e["ts"][11:16]
        inside = start <= hhmm < end if start < end else (hhmm >= start or hhmm < end)
        return (d.isoweekday() % 7) not in opts.weekdays or not inside

    by_user = Counter(e["user"] for e in issued)
    denials = [e for e in ev if e["kind"] in ("denied", "failed")]
    groups = Counter((e["kind"], e["data"]["message"]) for e in denials)
    in_window = {e["id"] for e in issued}
    expired = [c for c in gen["certs"] if c[8] in in_window and c[7] < int(now)]
    roles = defaultdict(lambda: [0, set(), 0])
    for e in issued:
        r = roles[e["role"]]
        r[0] += 1
        r[1].add(e["user"])
        r[2] = max(r[2], e["data"]["ttl"])
    return {
        "by_kind": Counter(e["kind"] for e in ev),
        "by_role": {k: (v[0], len(v[1]), v[2]) for k, v in roles.items()},
        "users_total": len(by_user),
        "by_user": sorted(by_user.items(), key=lambda kv: (-kv[1], kv[0]))[:opts.top],
        "per_day": sorted(Counter(e["ts"][:10] for e in issued).items()),
        "privileged": sum(bool(priv & set(e["data"]["principals"])) for e in issued),
        "by_principal": Counter(p for e in issued for p in set(e["data"]["principals"]) if p in priv),
        "longest": [e["id"] for e in sorted(issued, key=lambda e: (-e["data"]["ttl"], -e["id"]))[:opts.top]],
        "outside": sum(outside(e) for e in issued),
        "denials": Counter(e["kind"] for e in denials),
        "denial_groups": sorted(((n, k, m) for (k, m), n in groups.items()), key=lambda x: (-x[0], x[1], x[2])),
        "approvals": Counter(e["kind"] for e in ev if e["kind"].startswith("request_")),
        "revocations": Counter(e["data"]["kind"] for e in ev if e["kind"] == "revoked"),
        "expired": len(expired),
        "unused": sum(c[0] not in used for c in expired),
    }


def check(rep: dict, exp: dict) -> None:
    """Every section of the report against the independently computed numbers."""
    assert rep["events"]["by_kind"] == dict(exp["by_kind"])
    assert rep["events"]["total"] == sum(exp["by_kind"].values())
    iss = rep["issuances"]
    assert iss["total"] == exp["by_kind"]["issued"]
    assert {r["role"]: (r["count"], r["users"], r["max_ttl"]) for r in iss["by_role"]} == exp["by_role"]
    assert iss["users_total"] == exp["users_total"]
    assert [(r["user"], r["count"]) for r in iss["by_user"]] == exp["by_user"]
    assert [(r["day"], r["count"]) for r in iss["per_day"]] == exp["per_day"]
    assert rep["privileged"]["total"] == exp["privileged"]
    assert {r["principal"]: r["count"] for r in rep["privileged"]["by_principal"]} == dict(exp["by_principal"])
    assert [r["id"] for r in rep["longest"]] == exp["longest"]
    assert rep["outside_hours"]["total"] == exp["outside"]
    assert rep["denials"]["by_kind"] == dict(exp["denials"])
    assert rep["denials"]["total"] == sum(exp["denials"].values())
    assert rep["denials"]["groups_total"] == len(exp["denial_groups"])
    assert [(g["count"], g["kind"], g["message"]) for g in rep["denials"]["groups"]] == exp["denial_groups"]
    assert rep["auth_failures"]["total"] == exp["by_kind"]["auth_failed"]
    assert sum(g["count"] for g in rep["auth_failures"]["groups"]) == exp["by_kind"]["auth_failed"]
    assert rep["lockouts"]["total"] == exp["by_kind"]["lockout"]
    assert rep["approvals"]["by_kind"] == dict(exp["approvals"])
    assert rep["revocations"]["by_kind"] == dict(exp["revocations"])
    assert rep["revocations"]["total"] == exp["by_kind"]["revoked"]
    assert rep["unused"]["expired_total"] == exp["expired"]
    assert rep["unused"]["total"] == exp["unused"]
    assert sum(r["unused"] for r in rep["unused"]["by_role"]) == exp["unused"]


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """A CA database with 100,000 generated events, and 2,000 logins correlated from sshd lines."""
    path = tmp_path_factory.mktemp("big") / "ca.db"
    log = AuditLog(path)
    t0 = time.perf_counter()
    gen = generate(log)
    t_gen = time.perf_counter() - t0
    rnd = random.Random(3)
    sample = rnd.sample(gen["certs"], 2000)
    lines = [_line(c, c[6] + 120, port=i + 1) for i, c in enumerate(sample)]
    lines.append(_line((999_999, "forged", None, None, "SHA256:f", CA_FP, 0, 0, 0), FORGED_AT, port=99_999))
    t0 = time.perf_counter()
    result = correlate(log, lines, our_ca_fingerprints=[CA_FP], host=None, privileged=("root",))
    t_corr = time.perf_counter() - t0
    print(f"\ngenerated {N_EVENTS} events in {t_gen:.2f}s; correlated {len(lines)} logins in {t_corr:.2f}s")
    run = log.get(result.event_id)  # the run is an event too
    gen["events"].append({"id": run.id, "ts": run.ts, "kind": run.kind, "user": run.user, "role": None,
                          "data": run.data})
    yield {"log": log, "gen": gen, "used": {c[0] for c in sample}, "result": result}
    log.close()


def test_the_generated_log_is_a_valid_chain(big):
    t0 = time.perf_counter()
    report = big["log"].verify()
    print(f"\nverified {report.count} events in {time.perf_counter() - t0:.2f}s")
    assert report.count == N_EVENTS + 1  # and the 'correlated' event


@pytest.mark.parametrize("window", ["all", "window"])
def test_report_counts_match_the_log(big, window):
    log, gen = big["log"], big["gen"]
    now = START + 86400 * 120  # after every generated certificate expired
    if window == "all":
        opts = ReportOptions(privileged=("root", "admin"), now=now)
    else:
        opts = ReportOptions(since=gen["events"][30_000]["ts"], until=gen["events"][80_000]["ts"],
                             privileged=("root", "admin"), hours=("09:30", "17:00"),
                             weekdays=parse_weekdays("mon-thu"), now=now)
    t0 = time.perf_counter()
    rep = build_report(log, opts)
    t_build = time.perf_counter() - t0
    t0 = time.perf_counter()
    text, page = render_text(rep), render_html(rep)
    t_render = time.perf_counter() - t0
    print(f"\nreport over {window}: built in {t_build:.3f}s, rendered text+html in {t_render:.3f}s "
          f"({len(page) // 1024} KiB of HTML)")
    assert t_build < 10, "the report must aggregate in SQL, not in Python"
    exp = expected(gen, opts, big["used"], now)
    check(rep, exp)
    assert exp["by_kind"]["issued"] > 10_000 and exp["outside"] > 1000 and exp["privileged"] > 1000
    assert f"{rep['issuances']['total']} certificates issued" in text

    cor = rep["correlation"]
    if window == "all":
        # 2,000 genuine logins (as 'deploy', not a principal: info) and one forged serial (critical).
        assert cor["logins"] == 2001 and cor["joined"] == 2000 and cor["runs"] == 1
        assert cor["findings"] == {"critical": 1, "warning": 0, "info": 2000}
        assert [r["serial"] for r in cor["list"]] == ["999999"]
    else:
        since, until = opts.since, opts.until
        in_window = [c for c in gen["certs"] if c[0] in big["used"]
                     and since <= iso(c[6] + 120) < until]
        forged = since <= iso(FORGED_AT) < until
        assert cor["logins"] == len(in_window) + forged and cor["joined"] == len(in_window)
        assert cor["findings"] == {"critical": int(forged), "warning": 0, "info": len(in_window)}


def test_report_only_scans_indexes_in_a_window(big):
    """With a window, no step of any query reads a whole table: the sections are index range scans."""
    log, gen = big["log"], big["gen"]
    statements: list[str] = []
    log.conn.set_trace_callback(statements.append)
    try:
        build_report(log, ReportOptions(since=gen["events"][50_000]["ts"], until=gen["events"][51_000]["ts"],
                                        now=START))
    finally:
        log.conn.set_trace_callback(None)
    full_scans = []
    for sql in statements:
        if not sql.lstrip().upper().startswith("SELECT"):
            continue
        for row in log.conn.execute("EXPLAIN QUERY PLAN " + sql):
            detail = row[-1]
            # "SCAN p VIRTUAL TABLE" is json_each over one row's data, "SCAN (subquery-1)" a temporary
            # result; a table (events, certificates, logins) must be read through an index.
            if (detail.startswith("SCAN") and "VIRTUAL TABLE" not in detail and "INDEX" not in detail
                    and not detail.startswith("SCAN (subquery") and "sqlite_master" not in sql):
                full_scans.append((detail, sql[:200]))
    assert full_scans == []


def test_hours_and_weekdays_options():
    assert parse_hours("8:00-18:00") == ("08:00", "18:00")
    assert parse_hours("22:00-06:00") == ("22:00", "06:00")
    assert parse_hours("00:00-24:00") == ("00:00", "24:00")
    for bad in ("8-18", "25:00-26:00", "08:00-08:00", ""):
        with pytest.raises(ValueError):
            parse_hours(bad)
    assert parse_weekdays("mon-fri") == {1, 2, 3, 4, 5}
    assert parse_weekdays("fri-mon") == {5, 6, 0, 1}
    assert parse_weekdays("Sat,sunday") == {6, 0}
    with pytest.raises(ValueError):
        parse_weekdays("funday")


def test_night_shift_hours_wrap_midnight(tmp_path):
    log = AuditLog(tmp_path / "ca.db")
    try:
        gen = generate(log, n=3000, seed=11)
        opts = ReportOptions(hours=("22:00", "06:00"), weekdays=frozenset(range(7)), now=START)
        rep = build_report(log, opts)
        exp = expected(gen, opts, set(), START)
        assert rep["outside_hours"]["total"] == exp["outside"] > 0
        assert all("06:00" <= r["ts"][11:16] < "22:00" for r in rep["outside_hours"]["recent"])
    finally:
        log.close()


# --------------------------------------------------------------------------
# The HTML page, and the command


class _Checker(HTMLParser):
    """Collects tags, text and attributes, and checks that elements nest and close."""

    VOID = {"meta", "br", "hr", "img", "input", "link", "line", "rect"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.tags: Counter = Counter()
        self.attrs: list[tuple[str, str | None]] = []
        self.text: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags[tag] += 1
        self.attrs += attrs
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags[tag] += 1
        self.attrs += attrs

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


HOSTILE_REASON = '<script>alert("reason")</script> & </td></table>'
HOSTILE_USER = "<img src=x onerror=alert(1)>"
HOSTILE_ACCOUNT = "<i>x</i>"  # sshd's user names have no spaces


def _hostile_log(cfg, authority, tmp_path) -> None:
    """Issue, refuse and revoke, with markup in every field a requester or admin can fill."""
    key = make_key(tmp_path, name="k")
    identity = Identity(user="alice", auth_methods=("admin-offline",), mfa=True, operator="t")
    authority.issue(identity, SignRequest(public_key=(tmp_path / "k.pub").read_text(), role="dev",
                                          reason=HOSTILE_REASON), allow_unenrolled=True)
    with pytest.raises(PolicyDenied):  # the name is refused, and recorded as given
        authority.issue(Identity(user=HOSTILE_USER, auth_methods=("x",), mfa=True, operator="t"),
                        SignRequest(public_key=(tmp_path / "k.pub").read_text(), role="dev"), allow_unenrolled=True)
    authority.audit.record("revoked", {"kind": "user", "value": HOSTILE_USER, "reason": HOSTILE_REASON,
                                       "actor": "<b>admin</b>"}, user=HOSTILE_USER)
    authority.audit.record("lockout", {"key": f"user:{HOSTILE_USER}", "failures": 5, "seconds": 60},
                           user=HOSTILE_USER, source="<svg onload=alert(2)>")
    authority.audit.record("request_approved", {"by": "bob"})
    fp = Keyring.load(cfg.state_dir).active.fingerprint
    issued = authority.audit.issued_by_serial(1)
    correlate(authority.audit, [
        f"Accepted publickey for {HOSTILE_ACCOUNT} from 10.0.0.1 port 5 ssh2: ED25519-CERT SHA256:x "
        f"ID <script>forged</script> (serial 77) CA ED25519 {fp}",
        f"Accepted publickey for root from 10.0.0.1 port 6 ssh2: ED25519-CERT {issued.data['key_fingerprint']} "
        f"ID {issued.key_id} (serial 1) CA ED25519 {fp}",
    ], our_ca_fingerprints=[fp], host="<h1>host</h1>")


def test_html_report_is_self_contained_well_formed_and_escaped(cfg, authority, cli_run, tmp_path):
    _hostile_log(cfg, authority, tmp_path)
    out = tmp_path / "review.html"
    r = cli_run("audit", "report", "--format", "html", "-o", str(out), "--privileged", "root,admin")
    assert r.exit_code == 0, r.output
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>")
    checker = _Checker()
    checker.feed(page)
    checker.close()
    assert checker.errors == [] and checker.stack == []
    assert checker.tags["svg"] == 1 and checker.tags["rect"] >= 1 and checker.tags["style"] == 1
    assert "<svg" in page
    # Nothing is loaded from anywhere, and nothing runs.
    assert "http://" not in page and "https://" not in page
    assert checker.tags["script"] == 0 and checker.tags["img"] == 0 and checker.tags["link"] == 0
    assert checker.tags["h1"] == 1 and checker.tags["i"] == 0  # "<h1>host</h1>", "<i>x</i>" stay text
    names = {name for name, _ in checker.attrs}
    assert not names & {"src", "href", "onerror", "onload", "onclick"}
    assert "url(" not in page and "@import" not in page
    # The hostile text is there, as text.
    text = "".join(checker.text)
    for hostile in (HOSTILE_REASON, HOSTILE_USER, HOSTILE_ACCOUNT, "<b>admin</b>", "<svg onload=alert(2)>",
                    "<h1>host</h1>"):
        assert hostile in text, hostile
    assert "&lt;script&gt;alert(&quot;reason&quot;)&lt;/script&gt; &amp; &lt;/td&gt;&lt;/table&gt;" in page
    assert "critical findings in server logs" in text


def test_text_and_json_reports(cfg, authority, cli_run, tmp_path):
    _hostile_log(cfg, authority, tmp_path)
    r = cli_run("audit", "report", "--privileged", "root", "--since", "1d")
    assert r.exit_code == 0, r.output
    assert "1 certificates issued to 1 users" in r.output
    assert "findings: 1 critical, 1 warning, 0 info" in r.output
    assert "Approvals: 1" in r.output and "request_approved" in r.output
    r = cli_run("audit", "report", "--format", "json")
    rep = json.loads(r.stdout)
    assert rep["issuances"]["total"] == 1 and rep["denials"]["by_kind"] == {"denied": 1}
    assert rep["lockouts"]["total"] == 1 and rep["revocations"]["by_kind"] == {"user": 1}
    assert rep["correlation"]["findings"] == {"critical": 1, "warning": 1, "info": 0}
    assert rep["unused"] == {"available": True, "expired_total": 0, "total": 0, "by_role": [], "recent": []}
    r = cli_run("audit", "report", "--until", "2000-01-01", "--format", "json")
    assert json.loads(r.stdout)["events"]["total"] == 0
    # An empty section says "(none)" once (README walk: "Outside working hours ...: 0" then "(none)" twice).
    lines = cli_run("audit", "report", "--until", "2000-01-01").stdout.splitlines()
    for title in ("Outside working hours", "Privileged principals"):
        at = next(i for i, line in enumerate(lines) if line.startswith(title))
        assert lines[at + 1:at + 3] == ["  (none)", ""], (title, lines[at:at + 3])
    for bad in (["--hours", "9-5"], ["--weekdays", "someday"], ["--since", "yesterday"]):
        r = cli_run("audit", "report", *bad)
        assert r.exit_code == 2, (bad, r.output)


def test_unused_certificates_are_the_expired_ones_never_logged_in_with(cfg, authority, cli_run, tmp_path):

    past = open_authority(cfg, clock=lambda: time.time() - 7200)
    try:
        old = [past.issue(Identity(user=u, auth_methods=("x",), mfa=True, operator="t"),
                          SignRequest(public_key=(make_key(tmp_path, name=u)).with_suffix(".pub").read_text(),
                                      role="dev", ttl=600), allow_unenrolled=True) for u in ("ann", "ben", "cat")]
    finally:
        past.close()
    authority.issue(Identity(user="dan", auth_methods=("x",), mfa=True, operator="t"),
                    SignRequest(public_key=make_key(tmp_path, name="dan").with_suffix(".pub").read_text(), role="dev"), allow_unenrolled=True)
    fp = Keyring.load(cfg.state_dir).active.fingerprint
    used = old[0]
    correlate(authority.audit, [
        f"Accepted publickey for ann from 10.0.0.1 port 5 ssh2: ED25519-CERT {used.key_fingerprint} "
        f"ID {used.key_id} (serial {used.serial}) CA ED25519 {fp}",
        f"Failed publickey for ben from 10.0.0.1 port 6 ssh2: ED25519-CERT {old[1].key_fingerprint} "
        f"ID {old[1].key_id} (serial {old[1].serial}) CA ED25519 {fp}",  # refused: still unused
    ], our_ca_fingerprints=[fp], host="web1")
    rep = json.loads(cli_run("audit", "report", "--format", "json").stdout)
    assert rep["unused"]["expired_total"] == 3  # dan's certificate has not expired yet
    assert sorted(r["serial"] for r in rep["unused"]["recent"]) == sorted([old[1].serial, old[2].serial])
    assert rep["unused"]["by_role"] == [{"role": "dev", "unused": 2, "expired": 3}]
