"""``iast-ca audit correlate``: sshd's login lines joined to the CA's issuances.

The end-to-end tests log in to a real sshd (LogLevel VERBOSE) with
certificates from the CA under test, and feed what sshd logged to the
command. The parser and judge tests below them use lines in the exact
format the real sshd wrote (copied from its log), to cover each prefix
format and each kind of revocation without a login per case.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from ca.app import open_authority
from ca.audit.chain import iso
from ca.cli.admin import cli
from ca.cli.audit_cmds import audit
from ca.cli.review_cmds import correlate as correlate_cmd
from ca.cli.review_cmds import report as report_cmd
from ca.issuance.authority import Authority
from ca.keys.keyring import Keyring
from ca.models import Identity, SignRequest
from ca.review.correlate import correlate
from ca.review.sshdlog import SshdLogParser, parse_timestamp, split_line
from ca.store import AuditLog

from .conftest import TEST_POLICY, make_key
from .sshd_harness import (
    IastCA,
    SshdHarness,
    make_ca_fixture,
    make_sshd_fixture,
    make_user_key,
)

# Until admin.py registers them (see ca/cli/review_cmds.py), the tests do.
for _cmd in (correlate_cmd, report_cmd):
    if _cmd.name not in audit.commands:
        audit.add_command(_cmd)

iast_ca = make_ca_fixture(TEST_POLICY)
sshd = make_sshd_fixture("iast_ca")


def run(ca: IastCA, *args: str, input: str | None = None):
    """``iast-ca --state-dir ... ARGS`` in-process, with stdin."""
    base = ["--state-dir", str(ca.state_dir), "--policy", str(ca.policy_path)]
    return CliRunner().invoke(cli, base + list(args), input=input, catch_exceptions=False)


def login(sshd: SshdHarness, key: Path, expect: int = 0) -> str:
    """Log in with ``key`` (and its certificate) and return what sshd logged for that connection."""
    mark = sshd.log_mark()
    r = sshd.ssh(key, sshd.login_user, "true")
    text = sshd.connection_log(mark)
    assert r.returncode == expect, f"ssh exited {r.returncode}, expected {expect}\n{r.stderr}\n{text}"
    return text


def journald(text: str, host: str, when: float, pid: int = 4242) -> str:
    """sshd's lines as ``journalctl -o short-iso-precise`` prints them, stamped ``when``
    (journald stamps a line when it receives it; here, just after the login)."""
    stamp = dt.datetime.fromtimestamp(when, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")
    return "".join(f"{stamp} {host} sshd[{pid}]: {line}\n" for line in text.splitlines() if line.strip())


def logins_rows(ca: IastCA, host: str) -> list[dict]:
    conn = sqlite3.connect(ca.state_dir / "ca.db")
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM logins WHERE host = ? ORDER BY id", (host,))]
    finally:
        conn.close()


@pytest.fixture(autouse=True)
def _clean_sshd(request):
    """sshd tests start from the same sshd state: our CA trusted, nothing revoked."""
    if "sshd" not in request.fixturenames:
        yield
        return
    harness: SshdHarness = request.getfixturevalue("sshd")
    ca: IastCA = request.getfixturevalue("iast_ca")
    harness.set_trusted_ca_keys(ca.trust_lines())
    harness.set_revoked_keys(None)
    harness.allow_principals(harness.login_user, ["alice", "bob", "carol"])
    yield
    assert harness.running, f"sshd died; log:\n{harness.log()}"


# --------------------------------------------------------------------------
# Real sshd, real logins


@pytest.mark.sshd
def test_every_login_is_joined_to_its_issuance(sshd, iast_ca, tmp_path):
    certs = [iast_ca.sign(make_user_key(tmp_path / name), user=name, role="dev") for name in ("alice", "bob", "carol")]
    dave = iast_ca.sign(make_user_key(tmp_path / "dave"), user="dave", role="dev")  # principal not listed
    expired = iast_ca.issue_at(make_user_key(tmp_path / "old"), time.time() - 600, user="alice", role="dev", ttl=120)
    text = "".join(login(sshd, c.key) for c in certs + [certs[0]])  # alice twice
    text += login(sshd, dave.key, expect=255) + login(sshd, expired.key, expect=255)
    log_file = tmp_path / "sshd.log"
    log_file.write_text(text)

    t0 = time.perf_counter()
    r = run(iast_ca, "audit", "correlate", "--host", "web1", "--privileged", "nobody", "--json", str(log_file))
    elapsed = time.perf_counter() - t0
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    print(f"correlated {out['lines']} lines in {elapsed:.3f}s")

    accepted = [x for x in out["logins"] if x["outcome"] == "accepted"]
    want = sorted((c.serial, iast_ca.audit_issued(c.serial)["id"]) for c in certs + [certs[0]])
    assert sorted((x["serial"], x["issued_event_id"]) for x in accepted) == want
    by_serial = {c.serial: c for c in certs}
    for x in accepted:
        c = by_serial[x["serial"]]
        assert (x["key_id"], x["key_fingerprint"], x["ca_fingerprint"]) == (c.key_id, c.key_fingerprint,
                                                                            c.ca_fingerprint)
        assert (x["account"], x["source"], x["host"]) == (sshd.login_user, "127.0.0.1", "web1")
        assert x["logged_time"] is None and x["ts"] is None  # sshd -e prints no time
        assert x["principals"] == [c.key_id.split(":")[1]]

    refused = {x["serial"]: x for x in out["logins"] if x["outcome"] == "refused"}
    assert set(refused) == {dave.serial, expired.serial}
    assert refused[dave.serial]["reason"] == "Certificate does not contain an authorized principal"
    assert refused[expired.serial]["reason"] == "Certificate invalid: expired"
    assert refused[dave.serial]["issued_event_id"] == iast_ca.audit_issued(dave.serial)["id"]
    assert refused[expired.serial]["issued_event_id"] == iast_ca.audit_issued(expired.serial)["id"]

    assert out["new"] == 6 and out["joined"] == 6 and out["findings"]["critical"] == 0
    # Logging in as an account that is not a principal (the AuthorizedPrincipalsFile maps it): info only.
    assert {f["code"] for f in out["findings_list"]} == {"account_not_principal"}
    rows = logins_rows(iast_ca, "web1")
    assert sorted((r["serial"], r["issued_event_id"], r["outcome"]) for r in rows) == sorted(
        (x["serial"], x["issued_event_id"], x["outcome"]) for x in out["logins"])
    assert {r["correlated_event_id"] for r in rows} == {out["event_id"]}
    event = iast_ca.cli("audit", "show", str(out["event_id"]), "--json")
    data = json.loads(event.stdout)
    assert data["kind"] == "correlated"
    assert data["data"]["new"] == 6 and data["data"]["accepted"] == 4 and data["data"]["refused"] == 2


@pytest.mark.sshd
def test_privileged_account_reached_through_another_principal_is_a_warning(sshd, iast_ca, tmp_path):
    cert = iast_ca.sign(make_user_key(tmp_path / "alice"), user="alice", role="dev")
    text = login(sshd, cert.key)
    r = run(iast_ca, "audit", "correlate", "--host", "web-priv", "--privileged", f"admin,{sshd.login_user}", "-",
            input=text)
    assert r.exit_code == 0, r.output
    assert f"WARNING   web-priv  (no time)  {sshd.login_user}@127.0.0.1  serial {cert.serial}  logged in as " \
           f"{sshd.login_user} via principal alice" in r.output, r.output  # the finding names its serial
    assert "findings: 0 critical, 1 warning, 0 info" in r.output


@pytest.mark.sshd
def test_certificate_signed_with_the_ca_key_outside_the_ca_is_critical(sshd, iast_ca, tmp_path):
    # Someone with a copy of the CA key signs a certificate the CA never issued. sshd accepts it
    # (the CA key is trusted): only the audit log can tell.
    ca_key = iast_ca.state_dir / "ca-keys" / Keyring.load(iast_ca.state_dir).active.name
    key = make_user_key(tmp_path / "forged")
    subprocess.run(["ssh-keygen", "-q", "-s", str(ca_key), "-I", "forged", "-n", "alice", "-z", "9999",
                    "-V", "-5m:+1h", f"{key}.pub"], check=True, capture_output=True)
    genuine = iast_ca.sign(make_user_key(tmp_path / "genuine"), user="alice", role="dev")
    text = login(sshd, key) + login(sshd, genuine.key)
    assert "ID forged (serial 9999) CA ED25519" in text

    r = run(iast_ca, "audit", "correlate", "--host", "web-forged", "--privileged", "nobody", "-", input=text)
    assert r.exit_code == 1, r.output  # a cron job alerts on it
    assert "findings: 1 critical, 0 warning, 1 info" in r.output
    assert "CRITICAL  web-forged  (no time)" in r.output
    assert "serial 9999 (ID forged) is signed by our CA key but is not in the audit log" in r.output
    rows = {r["serial"]: r for r in logins_rows(iast_ca, "web-forged")}
    assert rows[9999]["issued_event_id"] is None and rows[9999]["severity"] == "critical"
    assert [f["code"] for f in json.loads(rows[9999]["findings"])] == ["not_issued"]
    assert rows[genuine.serial]["issued_event_id"] == iast_ca.audit_issued(genuine.serial)["id"]
    assert rows[genuine.serial]["severity"] == "info"


@pytest.mark.sshd
def test_login_after_revocation_on_a_host_without_the_krl_is_critical(sshd, iast_ca, tmp_path):
    cert = iast_ca.sign(make_user_key(tmp_path / "alice"), user="alice", role="dev")
    log = AuditLog(iast_ca.state_dir / "ca.db")
    try:
        revoked_id = log.record("revoked", {"kind": "serial", "value": str(cert.serial), "reason": "laptop stolen"},
                                serial=cert.serial)
        revoked_ts = log.get(revoked_id).ts
    finally:
        log.close()
    sshd.set_revoked_keys(None)  # this host never received the KRL
    text = login(sshd, cert.key)  # so sshd lets it in
    when = time.time()

    r = run(iast_ca, "audit", "correlate", "--privileged", "nobody", "--json", "-",
            input=journald(text, "web-nokrl", when))
    assert r.exit_code == 1, r.output
    out = json.loads(r.stdout)
    assert out["exit_status"] == 1 and out["hosts"] == ["web-nokrl"]
    (x,) = out["logins"]
    assert x["serial"] == cert.serial and x["issued_event_id"] == iast_ca.audit_issued(cert.serial)["id"]
    assert x["ts"] == iso(when) and x["ts"] > revoked_ts
    crit = [f for f in x["findings"] if f["severity"] == "critical"]
    assert [f["code"] for f in crit] == ["used_after_revocation"]
    assert f"serial {cert.serial}, event {revoked_id}, reason: laptop stolen" in crit[0]["message"]

    # The same lines with no time (sshd -e, journalctl -o cat): the login may predate the revocation.
    r = run(iast_ca, "audit", "correlate", "--host", "web-notime", "--privileged", "nobody", "-", input=text)
    assert r.exit_code == 0, r.output
    assert "findings: 0 critical, 1 warning, 1 info" in r.output
    assert "the log line has no time, so the login may predate the revocation" in r.output

    # Dated before the revocation: nothing wrong with it.
    before = dt.datetime.strptime(revoked_ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.timezone.utc).timestamp()
    r = run(iast_ca, "audit", "correlate", "--privileged", "nobody", "--json", "-",
            input=journald(text, "web-before", before - 1))
    assert r.exit_code == 0, r.output
    assert [f["code"] for f in json.loads(r.stdout)["findings_list"]] == ["account_not_principal"]


@pytest.mark.sshd
def test_reading_the_same_log_twice_records_nothing_twice(sshd, iast_ca, tmp_path):
    cert = iast_ca.sign(make_user_key(tmp_path / "alice"), user="alice", role="dev")
    log_file = tmp_path / "sshd.log"
    log_file.write_text(login(sshd, cert.key) + login(sshd, cert.key))

    first = json.loads(run(iast_ca, "audit", "correlate", "--host", "web-dup", "--json", str(log_file)).stdout)
    assert (first["certificate_logins"], first["new"], first["already_recorded"]) == (2, 2, 0)
    # Again, and the file twice over in one run: nothing new.
    r = run(iast_ca, "audit", "correlate", "--host", "web-dup", "--json", str(log_file), str(log_file))
    second = json.loads(r.stdout)
    assert r.exit_code == 0
    assert (second["certificate_logins"], second["new"], second["already_recorded"]) == (4, 0, 4)
    assert second["findings_list"] == [] and second["logins"] == []
    assert len(logins_rows(iast_ca, "web-dup")) == 2
    # Each run is audited, with its counts.
    events = json.loads(iast_ca.cli("audit", "list", "--kind", "correlated", "--limit", "2", "--json").stdout)
    assert [e["data"]["new"] for e in events] == [0, 2]
    assert events[0]["data"]["inputs"] == [str(log_file), str(log_file)]


# --------------------------------------------------------------------------
# The parser, on sshd's own lines behind each kind of prefix

FP = "SHA256:3/LK/DbjRV5IL/hslM5D+D28CYohHNEsTPwbhcbNF7M"
CA_FP = "SHA256:sJ6xYlPsQ5ylt5H1QA8NozC3SRi1MOP1w4JugdMW0CQ"
ACCEPTED = (f"Accepted publickey for root from 127.0.0.1 port 39550 ssh2: ED25519-CERT {FP} "
            f"ID iast:alice:dev:1 (serial 1) CA ED25519 {CA_FP}")
NOW = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.timezone.utc).timestamp()


@pytest.mark.parametrize("line, host, pid, logged, ts", [
    (ACCEPTED, None, None, None, None),
    (ACCEPTED + "\r\n", None, None, None, None),  # sshd -e ends lines with CRLF
    (f"Nov 29 15:04:23 web1 sshd[1234]: {ACCEPTED}", "web1", "1234", "Nov 29 15:04:23", "2026-11-29T15:04:23.000000Z"),
    (f"Nov  9 15:04:23 web1 sshd[1234]: {ACCEPTED}", "web1", "1234", "Nov  9 15:04:23", "2026-11-09T15:04:23.000000Z"),
    (f"2026-11-29T16:04:23+0100 web1 sshd[77]: {ACCEPTED}", "web1", "77", "2026-11-29T16:04:23+0100",
     "2026-11-29T15:04:23.000000Z"),
    (f"2026-11-29T16:04:23.250000+01:00 web1 sshd-session[77]: {ACCEPTED}", "web1", "77",
     "2026-11-29T16:04:23.250000+01:00", "2026-11-29T15:04:23.250000Z"),
    (f"<38>1 2026-11-29T15:04:23.5Z web1 sshd 991 - - {ACCEPTED}", "web1", "991", "2026-11-29T15:04:23.5Z",
     "2026-11-29T15:04:23.500000Z"),
    (f"1795964663.000001 web1 sshd[5]: {ACCEPTED}", "web1", "5", "1795964663.000001", "2026-11-29T15:04:23.000001Z"),
    (f"sshd[5]: {ACCEPTED}", None, "5", None, None),
])
def test_the_sshd_message_is_found_behind_each_prefix(line, host, pid, logged, ts):
    parser = SshdLogParser("fallback", tz=dt.timezone.utc, now=NOW)
    (lg,) = list(parser.parse([line]))
    assert (lg.host, lg.logged_time, lg.ts) == (host or "fallback", logged, ts)
    assert (lg.outcome, lg.account, lg.source, lg.port) == ("accepted", "root", "127.0.0.1", 39550)
    assert (lg.serial, lg.key_id, lg.key_fingerprint, lg.ca_fingerprint) == (1, "iast:alice:dev:1", FP, CA_FP)
    assert split_line(line, tz=dt.timezone.utc, now=NOW).pid == pid


def test_partial_and_invalid_user_lines():
    partial = ACCEPTED.replace("Accepted", "Partial")
    invalid = ACCEPTED.replace("Accepted publickey for root", "Failed publickey for invalid user bob")
    got = list(SshdLogParser("h").parse([partial, invalid]))
    assert [(g.outcome, g.account, g.serial) for g in got] == [("partial", "root", 1), ("refused", "bob", 1)]


def test_lines_of_other_programs_are_not_sshd_s():
    fake = f"Nov 29 15:04:23 web1 logger[99]: {ACCEPTED}"
    assert split_line(fake) is None
    assert list(SshdLogParser("h").parse([fake, "Nov 29 15:04:23 web1 CRON[5]: (root) CMD (x)"])) == []


def test_syslog_times_assume_the_current_year_or_the_one_before():
    jan = dt.datetime(2027, 1, 2, 9, 0, tzinfo=dt.timezone.utc).timestamp()
    assert parse_timestamp("Dec 31 23:59:00", tz=dt.timezone.utc, now=jan) == "2026-12-31T23:59:00.000000Z"
    assert parse_timestamp("Jan  2 08:59:00", tz=dt.timezone.utc, now=jan) == "2027-01-02T08:59:00.000000Z"
    berlin = dt.timezone(dt.timedelta(hours=1))
    assert parse_timestamp("Nov 29 16:04:23", tz=berlin, now=NOW) == "2026-11-29T15:04:23.000000Z"
    assert parse_timestamp("2026-11-29T15:04:23", tz=berlin, now=NOW) == "2026-11-29T14:04:23.000000Z"
    assert parse_timestamp("not a time") is None


def test_a_key_id_cannot_spoof_the_serial_or_the_ca():
    # The key ID is the certificate's own text; sshd writes the serial and CA after it.
    spoof = (f"Accepted publickey for root from 10.0.0.9 port 2222 ssh2: ED25519-CERT {FP} "
             f"ID x (serial 1) CA ED25519 {CA_FP} y (serial 77) CA ED25519 SHA256:otherCA")
    (lg,) = list(SshdLogParser("h").parse([spoof]))
    assert lg.serial == 77 and lg.ca_fingerprint == "SHA256:otherCA"
    assert lg.key_id == f"x (serial 1) CA ED25519 {CA_FP} y"


def test_refusal_reasons_and_refusing_lines():
    lines = [
        # OpenSSH 9.2, VERBOSE: the reason, then the Failed line (copied from the harness's log).
        "Connection from 127.0.0.1 port 39576 on 127.0.0.1 port 35785 rdomain \"\"",
        "Failed publickey for root from 127.0.0.1 port 39576 ssh2: ED25519 "
        "SHA256:lKKoU9WASsm8H6uz/pVHBqqu25UzLgJFKVJUUZDs5UA",
        "Certificate invalid: expired",
        "Failed publickey for root from 127.0.0.1 port 39576 ssh2: ED25519-CERT "
        "SHA256:lKKoU9WASsm8H6uz/pVHBqqu25UzLgJFKVJUUZDs5UA ID iast:alice:dev:3 (serial 3) CA ED25519 " + CA_FP,
        # A reason for a plain key is not carried over to the next certificate.
        "Authentication key ED25519 SHA256:TXR5MeYm2cKfIF1dHIjlhRE6gwb/ycProYxQu7t8nFM revoked by file /k",
        "Failed publickey for root from 127.0.0.1 port 39644 ssh2: ED25519 "
        "SHA256:TXR5MeYm2cKfIF1dHIjlhRE6gwb/ycProYxQu7t8nFM",
        "Failed publickey for root from 127.0.0.1 port 39644 ssh2: ED25519-CERT "
        "SHA256:TXR5MeYm2cKfIF1dHIjlhRE6gwb/ycProYxQu7t8nFM ID iast:bob:dev:2 (serial 2) CA ED25519 " + CA_FP,
        # Newer OpenSSH names the certificate on its own line; merged with the Failed line that follows.
        'Refusing certificate ID "iast:carol:dev:5" serial=5 signed by ED25519 CA ' + CA_FP
        + ": Certificate invalid: expired",
        "Failed publickey for carol from 10.1.1.1 port 4000 ssh2: ED25519-CERT "
        "SHA256:lKKoU9WASsm8H6uz/pVHBqqu25UzLgJFKVJUUZDs5UA ID iast:carol:dev:5 (serial 5) CA ED25519 " + CA_FP,
        # ... and stands alone when no Failed line follows (LogLevel INFO).
        'Refusing certificate ID "cert-expired" serial 0 (not valid): Certificate invalid: expired',
    ]
    got = list(SshdLogParser("h").parse(lines))
    assert [(g.serial, g.outcome, g.reason) for g in got] == [
        (3, "refused", "Certificate invalid: expired"),
        (2, "refused", None),
        (5, "refused", "Certificate invalid: expired"),
        (0, "refused", "(not valid): Certificate invalid: expired"),
    ]
    assert got[2].account == "carol" and got[2].ca_fingerprint == CA_FP
    assert got[3].key_id == "cert-expired" and got[3].account is None


# --------------------------------------------------------------------------
# The judge: each kind of revocation, mismatches, other CAs


def _issue(authority: Authority, key: Path, user: str = "alice", role: str = "dev"):
    return authority.issue(Identity(user=user, auth_methods=("admin-offline",), mfa=True, operator="test"),
                           SignRequest(public_key=key.with_name(key.name + ".pub").read_text(), role=role), allow_unenrolled=True)


def _line(issued, *, port: int, account: str = "alice", key_id: str | None = None, key_fp: str | None = None,
          serial: int | None = None, ca_fp: str | None = None, verb: str = "Accepted",
          when: float | None = None) -> str:
    msg = (f"{verb} publickey for {account} from 10.0.0.1 port {port} ssh2: ED25519-CERT "
           f"{key_fp or issued.key_fingerprint} ID {key_id or issued.key_id} (serial {serial or issued.serial}) "
           f"CA ED25519 {ca_fp or issued.ca_fingerprint}")
    if when is None:
        return msg
    return dt.datetime.fromtimestamp(when, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f+00:00") \
        + f" web9 sshd[1]: {msg}"


def _codes(result) -> dict[int, list[str]]:
    return {j.login.port: sorted(f.code for f in j.findings) for j in result.new}


def test_each_kind_of_revocation_is_caught(cfg, authority, tmp_path):
    log = authority.audit
    ours = [k.fingerprint for k in Keyring.load(cfg.state_dir).keys]
    a = [_issue(authority, make_key(tmp_path, name=f"k{i}")) for i in range(6)]
    bob = _issue(authority, make_key(tmp_path, name="bob"), user="bob")
    log.record("revoked", {"kind": "key_id", "value": a[0].key_id, "reason": "r",
                           "ca_fingerprint": a[0].ca_fingerprint})
    log.record("revoked", {"kind": "key", "value": a[1].key_fingerprint, "reason": "r"})
    log.record("revoked", {"kind": "serial", "value": str(a[2].serial), "reason": "r",
                           "ca_fingerprint": "SHA256:someOtherCA"})  # another CA's serial 3: not ours
    log.record("revoked", {"kind": "user", "value": "bob", "reason": "r"})
    later = time.time() + 5
    lines = [_line(a[0], port=1, when=later), _line(a[1], port=2, when=later), _line(a[2], port=3, when=later),
             _line(bob, port=4, account="bob", when=later), _line(a[3], port=5, when=later)]
    got = _codes(correlate(log, lines, our_ca_fingerprints=ours, host="h1"))
    assert got == {1: ["used_after_revocation"], 2: ["used_after_revocation"], 3: [],
                   4: ["used_after_revocation"], 5: []}

    # A user revocation does not cover certificates issued after it; a CA key revocation covers all.
    fresh = open_authority(cfg, clock=lambda: time.time() + 3600)
    try:
        bob_later = _issue(fresh, make_key(tmp_path, name="bob2"), user="bob")
    finally:
        fresh.close()
    log.record("revoked", {"kind": "ca_key", "value": a[4].ca_fingerprint, "reason": "r"})
    lines = [_line(bob_later, port=6, account="bob", when=time.time() + 3700),
             _line(a[5], port=7, when=time.time() + 10)]
    got = _codes(correlate(log, lines, our_ca_fingerprints=ours, host="h2"))
    assert got == {6: ["used_after_revocation"], 7: ["used_after_revocation"]}  # port 6: by the CA key only
    (j6,) = [j for j in correlate(log, [_line(bob_later, port=8, account="bob", when=time.time() + 3700)],
                                  our_ca_fingerprints=ours, host="h3").new]
    (finding,) = j6.findings
    assert f"(ca_key {a[4].ca_fingerprint}, event" in finding.message


def test_undated_logins_and_revocations_before_validity(cfg, authority, tmp_path):
    log = authority.audit
    ours = [k.fingerprint for k in Keyring.load(cfg.state_dir).keys]
    old = _issue(authority, make_key(tmp_path, name="old"))
    log.record("revoked", {"kind": "key", "value": old.key_fingerprint, "reason": "r"})
    fresh = open_authority(cfg, clock=lambda: time.time() + 3600)
    try:
        new = _issue(fresh, make_key(tmp_path, name="new"))
        # The same key, certified again after the key was revoked: every use of it is after the revocation.
        again = fresh.issue(Identity(user="alice", auth_methods=("x",), mfa=True, operator="t"),
                            SignRequest(public_key=(tmp_path / "old.pub").read_text(), role="dev"), allow_unenrolled=True)
    finally:
        fresh.close()
    got = correlate(log, [_line(old, port=1), _line(again, port=2), _line(new, port=3)], our_ca_fingerprints=ours,
                    host="h")
    assert _codes(got) == {1: ["maybe_used_after_revocation"], 2: ["used_after_revocation"], 3: []}
    assert got.severity_counts == {"critical": 1, "warning": 1, "info": 0}


def test_records_that_do_not_match_are_critical(cfg, authority, tmp_path):
    log = authority.audit
    ours = [k.fingerprint for k in Keyring.load(cfg.state_dir).keys]
    a = _issue(authority, make_key(tmp_path, name="a"))
    lines = [
        _line(a, port=1, key_id="iast:mallory:dev:1"),  # key ID altered
        _line(a, port=2, key_fp="SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),  # another user key
        _line(a, port=3, serial=424242, key_id="iast:alice:dev:424242"),  # never issued
        _line(a, port=4, verb="Failed", serial=424243),  # refused, but still signed by our key
        _line(a, port=5, ca_fp="SHA256:notOurs"),  # another CA: not ours to judge
        _line(a, port=6, ca_fp="SHA256:notOurs", verb="Failed"),
        _line(a, port=7, when=a.decision.valid_before + 3600),  # after it expired: host clock off
        _line(a, port=8, account="alice"),
    ]
    result = correlate(log, lines, our_ca_fingerprints=ours, host="h")
    assert _codes(result) == {1: ["record_mismatch"], 2: ["record_mismatch"], 3: ["not_issued"], 4: ["not_issued"],
                              5: ["other_ca"], 6: [], 7: ["outside_validity"], 8: []}
    assert result.severity_counts == {"critical": 4, "warning": 1, "info": 1}
    joined = {j.login.port: j.issued_event_id for j in result.new}
    assert joined == {1: a.event_id, 2: a.event_id, 3: None, 4: None, 5: None, 6: None, 7: a.event_id, 8: a.event_id}


def test_a_serial_beyond_63_bits_is_recorded(cfg, authority, tmp_path):
    ours = [k.fingerprint for k in Keyring.load(cfg.state_dir).keys]
    a = _issue(authority, make_key(tmp_path, name="a"))
    result = correlate(authority.audit, [_line(a, port=1, serial=2**64 - 1)], our_ca_fingerprints=ours, host="h")
    (j,) = result.new
    assert j.login.serial is None and j.login.serial_text == str(2**64 - 1)
    assert [f.code for f in j.findings] == ["not_issued"]
    assert "serial 18446744073709551615" in j.findings[0].message


def test_the_logins_table_refuses_edits(cfg, authority, tmp_path):
    ours = [k.fingerprint for k in Keyring.load(cfg.state_dir).keys]
    a = _issue(authority, make_key(tmp_path, name="a"))
    correlate(authority.audit, [_line(a, port=1)], our_ca_fingerprints=ours, host="h")
    with pytest.raises(sqlite3.IntegrityError):
        authority.audit.conn.execute("UPDATE logins SET severity = NULL")
    with pytest.raises(sqlite3.IntegrityError):
        authority.audit.conn.execute("DELETE FROM logins")
