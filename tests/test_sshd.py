"""End to end: certificates from iast-ca, used with the real OpenSSH ``ssh`` against a real ``sshd``.

Each test asserts on the client's exit code and output *and* on the lines
sshd logs (LogLevel VERBOSE), so that a test passes only for the reason it
claims. Every refusal is paired with a control that would log in, so a
refusal cannot pass by accident (a broken harness refuses everything).

One sshd and one CA serve the whole module (docs/security.md, "Test harness").
"""

from __future__ import annotations

import re
import secrets
import time
from pathlib import Path

import pytest

from .sshd_harness import (
    IastCA,
    SshdHarness,
    make_ca_fixture,
    make_sshd_fixture,
    make_user_key,
)

pytestmark = pytest.mark.sshd

FORCED_MARKER = f"forced-command-ran-{secrets.token_hex(6)}"
FORCED_SCRIPT = "forced-command.sh"
PRINCIPAL = "alice"  # the only principal the login account accepts (AuthorizedPrincipalsFile)


def _policy(work: Path) -> str:
    """The module's policy. force_command points at a script in the CA's work directory."""
    script = work / FORCED_SCRIPT
    script.write_text(f'#!/bin/sh\necho "{FORCED_MARKER}"\necho "original=$SSH_ORIGINAL_COMMAND"\n')
    script.chmod(0o755)
    return f"""\
[defaults]
ttl = "10m"
max_ttl = "1h"
extensions = ["permit-pty"]

[roles.shell]
members = ["*"]
principals = ["{{user}}"]
extensions = ["permit-pty"]

[roles.no-pty]
members = ["*"]
principals = ["{{user}}"]
extensions = []

[roles.forward]
members = ["*"]
principals = ["{{user}}"]
extensions = ["permit-port-forwarding"]

[roles.forced]
members = ["*"]
principals = ["{{user}}"]
force_command = "{script}"

[roles.pinned]
members = ["*"]
principals = ["{{user}}"]
source_address = ["127.0.0.2/32"]
"""


iast_ca = make_ca_fixture(_policy)
sshd = make_sshd_fixture("iast_ca")


@pytest.fixture(autouse=True)
def _clean_sshd_state(sshd: SshdHarness, iast_ca: IastCA):
    """Each test starts from the same sshd state: our CA trusted, only 'alice' accepted, nothing revoked."""
    sshd.set_trusted_ca_keys(iast_ca.trust_lines())
    sshd.allow_principals(sshd.login_user, [PRINCIPAL])
    sshd.set_revoked_keys(None)
    yield
    assert sshd.running, f"sshd died; log:\n{sshd.log()}"


def _accepted(sshd: SshdHarness, cert, src: str = r"127\.0\.0\.1") -> str:
    """The regex of the line sshd logs when the certificate logs in (joins to the audit row)."""
    return (
        rf"^Accepted publickey for {re.escape(sshd.login_user)} from {src} port \d+ ssh2: "
        rf"ED25519-CERT {re.escape(cert.key_fingerprint)} ID {re.escape(cert.key_id)} "
        rf"\(serial {cert.serial}\) CA ED25519 {re.escape(cert.ca_fingerprint)}$"
    )


def _failed(sshd: SshdHarness, cert, src: str = r"127\.0\.0\.1") -> str:
    """The regex of the line sshd logs when it refuses the certificate."""
    return (
        rf"^Failed publickey for {re.escape(sshd.login_user)} from {src} port \d+ ssh2: "
        rf"ED25519-CERT {re.escape(cert.key_fingerprint)} ID {re.escape(cert.key_id)} "
        rf"\(serial {cert.serial}\) CA ED25519 {re.escape(cert.ca_fingerprint)}$"
    )


def _refused(sshd: SshdHarness, r, mark: int) -> str:
    """Assert the client was refused at authentication; return the connection's log."""
    log = sshd.connection_log(mark)
    assert r.returncode == 255, f"expected a refusal, got {r.returncode}\n{r.stdout}{r.stderr}\n{log}"
    assert "Permission denied (publickey)" in r.stderr, r.stderr
    assert "Accepted publickey" not in log, log
    return log


# --------------------------------------------------------------------------
# 1. principals


def test_listed_principal_logs_in_and_the_log_joins_the_audit_row(sshd, iast_ca, tmp_path):
    cert = iast_ca.sign(make_user_key(tmp_path / "alice"), user="alice", role="shell")
    assert cert.principals == ("alice",)
    assert cert.serial > 0  # KRLs ignore serial 0 (docs/security.md rule 9)
    assert cert.key_id == f"iast:alice:shell:{cert.serial}"

    token = secrets.token_hex(6)
    mark = sshd.log_mark()
    # $((6*7)) proves a remote shell ran the command, not just an echo of our own argv.
    r = sshd.ssh(cert.key, sshd.login_user, f"echo hello-$((6*7))-{token}-marker")
    assert r.returncode == 0, f"{r.stderr}\n{sshd.log(mark)}"
    assert r.stdout.strip() == f"hello-42-{token}-marker"

    trusted = re.escape(str(sshd.trusted_ca_path))
    sshd.wait_for_log(
        rf'^Accepted certificate ID "{re.escape(cert.key_id)}" \(serial {cert.serial}\) '
        rf"signed by ED25519 CA {re.escape(cert.ca_fingerprint)} via {trusted}$",
        mark,
    )
    m = sshd.wait_for_log(
        rf"^Accepted publickey for {re.escape(sshd.login_user)} from 127\.0\.0\.1 port \d+ ssh2: "
        rf"ED25519-CERT (?P<fp>\S+) ID (?P<key_id>\S+) \(serial (?P<serial>\d+)\) CA ED25519 (?P<ca>\S+)$",
        mark,
    )
    # docs/security.md rule 9: the sshd line joins to exactly one 'issued' audit row.
    assert m["key_id"] == cert.key_id and int(m["serial"]) == cert.serial
    assert m["fp"] == cert.key_fingerprint and m["ca"] == cert.ca_fingerprint
    row = iast_ca.audit_issued(int(m["serial"]))
    assert row["kind"] == "issued"
    assert row["key_id"] == m["key_id"]
    assert row["user"] == "alice" and row["role"] == "shell"
    assert row["data"]["key_fingerprint"] == m["fp"]
    assert row["data"]["ca_fingerprint"] == m["ca"]
    assert row["data"]["principals"] == ["alice"]
    issued = [e for e in iast_ca.audit_events(cert.serial) if e["kind"] == "issued"]
    assert len(issued) == 1, issued


def test_unlisted_principal_is_refused(sshd, iast_ca, tmp_path):
    # The CA puts the requester's own name in the certificate ({user}), not the
    # account's: mallory's certificate must not open the account that accepts alice.
    cert = iast_ca.sign(make_user_key(tmp_path / "mallory"), user="mallory", role="shell")
    assert cert.principals == ("mallory",)

    mark = sshd.log_mark()
    r = sshd.ssh(cert.key, sshd.login_user, "echo should-not-run")
    log = _refused(sshd, r, mark)
    assert "should-not-run" not in r.stdout
    assert re.search(r"^Certificate does not contain an authorized principal$", log, re.M), log
    assert re.search(_failed(sshd, cert), log, re.M), log

    # Control: the same certificate logs in once its principal is listed, so the
    # principal (and nothing else) was the reason for the refusal.
    sshd.allow_principals(sshd.login_user, [PRINCIPAL, "mallory"])
    mark = sshd.log_mark()
    r = sshd.ssh(cert.key, sshd.login_user, "echo now-listed")
    assert r.returncode == 0 and r.stdout.strip() == "now-listed", f"{r.stderr}\n{sshd.log(mark)}"
    sshd.wait_for_log(_accepted(sshd, cert), mark)


# --------------------------------------------------------------------------
# 2. critical options: force-command, source-address


def test_force_command_runs_instead_of_the_requested_command(sshd, iast_ca, tmp_path):
    script = iast_ca.policy_path.parent / FORCED_SCRIPT
    cert = iast_ca.sign(make_user_key(tmp_path / "forced"), user="alice", role="forced")
    assert cert.force_command == str(script)

    token = secrets.token_hex(6)
    mark = sshd.log_mark()
    r = sshd.ssh(cert.key, sshd.login_user, f"echo other-{token}")
    assert r.returncode == 0, f"{r.stderr}\n{sshd.log(mark)}"
    lines = r.stdout.splitlines()
    assert lines == [FORCED_MARKER, f"original=echo other-{token}"], r.stdout
    assert f"other-{token}" not in lines  # the requested command did not run
    sshd.wait_for_log(_accepted(sshd, cert), mark)
    sshd.wait_for_log(
        rf"^Starting session: forced-command \(key-option\) '{re.escape(str(script))}' "
        rf"for {re.escape(sshd.login_user)} from 127\.0\.0\.1 port \d+ id \d+$",
        mark,
    )


def test_source_address_limits_where_the_certificate_works(sshd, iast_ca, tmp_path):
    cert = iast_ca.sign(make_user_key(tmp_path / "pinned"), user="alice", role="pinned")
    assert cert.source_address == ("127.0.0.2/32",)

    mark = sshd.log_mark()
    r = sshd.ssh(cert.key, sshd.login_user, "echo from-127.0.0.1")
    log = _refused(sshd, r, mark)
    assert "from-127.0.0.1" not in r.stdout
    assert re.search(
        rf"^cert: Authentication tried for {re.escape(sshd.login_user)} with valid certificate "
        rf"but not from a permitted source address \(127\.0\.0\.1\)\.$", log, re.M), log
    assert re.search(r"^Refused by certificate options$", log, re.M), log
    assert re.search(_failed(sshd, cert), log, re.M), log

    # From the permitted source address (still connecting to 127.0.0.1) it logs in.
    mark = sshd.log_mark()
    r = sshd.ssh(cert.key, sshd.login_user, "echo from-127.0.0.2", bind="127.0.0.2")
    assert r.returncode == 0, f"{r.stderr}\n{sshd.log(mark)}"
    assert r.stdout.strip() == "from-127.0.0.2"
    sshd.wait_for_log(_accepted(sshd, cert, src=r"127\.0\.0\.2"), mark)


# --------------------------------------------------------------------------
# 3. validity window


def test_expired_certificate_is_refused(sshd, iast_ca, tmp_path):
    # Signed five minutes ago for two minutes: it expired three minutes ago. A CA
    # that dropped the requested ttl (role default: 10m) or left the library's
    # "forever" default would hand out a certificate that still logs in.
    now = int(time.time())
    cert = iast_ca.issue_at(make_user_key(tmp_path / "expired"), now - 300, user="alice", role="shell", ttl=120)

    mark = sshd.log_mark()
    r = sshd.ssh(cert.key, sshd.login_user, "echo should-not-run")
    log = _refused(sshd, r, mark)
    assert "should-not-run" not in r.stdout
    assert re.search(r"^Certificate invalid: expired$", log, re.M), log
    assert re.search(_failed(sshd, cert), log, re.M), log
    assert cert.valid_before == now - 180
    assert cert.valid_after == now - 300 - 60  # the default clock skew


def test_not_yet_valid_certificate_is_refused(sshd, iast_ca, tmp_path):
    # Signed "in an hour": valid_after is an hour (minus the skew) away. A CA that
    # wrote valid_after = 0 would hand out a certificate that logs in now.
    now = int(time.time())
    cert = iast_ca.issue_at(make_user_key(tmp_path / "future"), now + 3600, user="alice", role="shell", ttl=600)

    mark = sshd.log_mark()
    r = sshd.ssh(cert.key, sshd.login_user, "echo should-not-run")
    log = _refused(sshd, r, mark)
    assert "should-not-run" not in r.stdout
    assert re.search(r"^Certificate invalid: not yet valid$", log, re.M), log
    assert re.search(_failed(sshd, cert), log, re.M), log
    assert cert.valid_after == now + 3600 - 60


# --------------------------------------------------------------------------
# 4. extensions: a role gets exactly what it lists


def test_without_permit_pty_there_is_no_pty(sshd, iast_ca, tmp_path):
    cert = iast_ca.sign(make_user_key(tmp_path / "nopty"), user="alice", role="no-pty")
    assert cert.extensions == ()

    mark = sshd.log_mark()
    r = sshd.ssh(cert.key, sshd.login_user, "tty", tty=True)
    log = sshd.connection_log(mark)
    # ssh -tt treats a refused pty as fatal (exit 255) once logged in.
    assert r.returncode == 255, f"{r.returncode}\n{r.stdout}{r.stderr}\n{log}"
    assert "PTY allocation request failed on channel 0" in r.stderr, r.stderr
    assert "/dev/pts" not in r.stdout
    assert re.search(_accepted(sshd, cert), log, re.M), log  # authentication itself succeeded
    assert not re.search(r"^Starting session: .* on pts/", log, re.M), log


def test_with_permit_pty_there_is_a_pty(sshd, iast_ca, tmp_path):
    cert = iast_ca.sign(make_user_key(tmp_path / "pty"), user="alice", role="shell")
    assert cert.extensions == ("permit-pty",)

    mark = sshd.log_mark()
    r = sshd.ssh(cert.key, sshd.login_user, "tty", tty=True)
    assert r.returncode == 0, f"{r.stderr}\n{sshd.log(mark)}"
    assert re.fullmatch(r"/dev/pts/\d+", r.stdout.strip()), r.stdout
    sshd.wait_for_log(_accepted(sshd, cert), mark)
    sshd.wait_for_log(
        rf"^Starting session: command on pts/\d+ for {re.escape(sshd.login_user)} "
        rf"from 127\.0\.0\.1 port \d+ id \d+$", mark)


def test_port_forwarding_only_with_permit_port_forwarding(sshd, iast_ca, tmp_path):
    # asyncssh turns every permit-* on unless told otherwise; the 'shell' role lists
    # permit-pty only, so its certificate must not forward ports.
    forward = ["-o", "ExitOnForwardFailure=yes", "-R", "127.0.0.1:0:127.0.0.1:9"]
    shell = iast_ca.sign(make_user_key(tmp_path / "shell"), user="alice", role="shell")
    mark = sshd.log_mark()
    r = sshd.ssh(shell.key, sshd.login_user, "echo forwarded", extra_opts=forward)
    log = sshd.connection_log(mark)
    assert r.returncode == 255, f"{r.returncode}\n{r.stdout}{r.stderr}\n{log}"
    assert "remote port forwarding failed for listen" in r.stderr, r.stderr
    assert "forwarded" not in r.stdout
    assert re.search(_accepted(sshd, shell), log, re.M), log

    fwd = iast_ca.sign(make_user_key(tmp_path / "fwd"), user="alice", role="forward")
    assert fwd.extensions == ("permit-port-forwarding",)
    mark = sshd.log_mark()
    r = sshd.ssh(fwd.key, sshd.login_user, "echo forwarded", extra_opts=forward)
    assert r.returncode == 0, f"{r.stderr}\n{sshd.log(mark)}"
    assert r.stdout.strip() == "forwarded"
    assert re.search(r"Allocated port \d+ for remote forward", r.stderr), r.stderr
    sshd.wait_for_log(_accepted(sshd, fwd), mark)


# --------------------------------------------------------------------------
# 5. trust and revocation


def test_certificate_from_another_ca_is_refused(sshd, iast_ca, tmp_path):
    other = IastCA.create(tmp_path / "other-ca", iast_ca.policy_path)
    cert = other.sign(make_user_key(tmp_path / "other"), user="alice", role="shell")
    ours = iast_ca.trust_lines()
    assert cert.ca_fingerprint not in " ".join(ours)

    mark = sshd.log_mark()
    r = sshd.ssh(cert.key, sshd.login_user, "echo should-not-run")
    log = _refused(sshd, r, mark)
    assert "should-not-run" not in r.stdout
    assert "Accepted certificate ID" not in log, log
    assert re.search(_failed(sshd, cert), log, re.M), log  # names the foreign CA's fingerprint

    # Control: trusting the other CA as well lets the very same certificate in.
    sshd.set_trusted_ca_keys(ours + other.trust_lines())
    mark = sshd.log_mark()
    r = sshd.ssh(cert.key, sshd.login_user, "echo trusted-now")
    assert r.returncode == 0 and r.stdout.strip() == "trusted-now", f"{r.stderr}\n{sshd.log(mark)}"
    sshd.wait_for_log(_accepted(sshd, cert), mark)


@pytest.mark.parametrize("by", ["serial", "id"])
def test_revoked_certificate_is_refused(sshd, iast_ca, tmp_path, by):
    # A KRL names certificates by the serial and key ID the CA wrote; only the
    # revoked one is refused, so serials and key IDs must be what the CA reported
    # and unique (never 0: KRLs ignore serial 0).
    revoked = iast_ca.sign(make_user_key(tmp_path / "revoked"), user="alice", role="shell")
    kept = iast_ca.sign(make_user_key(tmp_path / "kept"), user="alice", role="shell")
    assert revoked.serial != kept.serial and revoked.key_id != kept.key_id
    spec = f"serial: {revoked.serial}" if by == "serial" else f"id: {revoked.key_id}"
    sshd.set_revoked_keys(sshd.make_krl(iast_ca.trust_lines(), spec))

    mark = sshd.log_mark()
    r = sshd.ssh(revoked.key, sshd.login_user, "echo should-not-run")
    log = _refused(sshd, r, mark)
    assert re.search(
        rf"^Authentication key ED25519-CERT {re.escape(revoked.key_fingerprint)} "
        rf"revoked by file {re.escape(str(sshd.krl_path))}$", log, re.M), log
    assert re.search(_failed(sshd, revoked), log, re.M), log

    mark = sshd.log_mark()
    r = sshd.ssh(kept.key, sshd.login_user, "echo still-valid")
    assert r.returncode == 0 and r.stdout.strip() == "still-valid", f"{r.stderr}\n{sshd.log(mark)}"
    sshd.wait_for_log(_accepted(sshd, kept), mark)
