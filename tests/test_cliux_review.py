"""Issue 16, finding 10, on both storage backends: the report names who approved what; a
certificate revoked twice gives one finding per login, which names the serial; the sshd logins
joined to a certificate show in 'audit show --serial'."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import time

import pytest

from ca.access.approvals import Approvals
from ca.app import open_authority
from ca.models import Identity

from .conftest import make_key
from .test_approvals import POLICY

pytestmark = pytest.mark.both_backends


@pytest.fixture
def policy_file(tmp_path):
    p = tmp_path / "policy.toml"
    p.write_text(POLICY)
    return p


def test_the_report_has_a_who_approved_what_table(cfg, cli_run):
    a = open_authority(cfg)
    ap = Approvals(a.audit)
    alice, bob = Identity("alice", ("publickey",)), Identity("bob", ("publickey",))
    carol, dave = Identity("carol", ("publickey",)), Identity("dave", ("publickey",))
    try:
        first = ap.create(alice, role="prod-admin", ttl=600, reason="INC-1", policy=a.policy)
        ap.approve(first.id, carol, a.policy, "ok for INC-1")
        second = ap.create(bob, role="prod-admin", ttl=600, reason="INC-2", policy=a.policy)
        ap.deny(second.id, dave, a.policy, "use prod-readonly")
    finally:
        a.close()
    report = json.loads(cli_run("audit", "report", "--format", "json").stdout)
    votes = report["approvals"]["votes"]
    assert [(v["approver"], v["decision"], v["request_id"], v["requester"], v["role"], v["comment"])
            for v in votes] == [("dave", "denied", second.id, "bob", "prod-admin", "use prod-readonly"),
                                ("carol", "approved", first.id, "alice", "prod-admin", "ok for INC-1")]
    text = cli_run("audit", "report").stdout
    assert "Who approved what" in text
    assert any(x.split()[2:5] == ["carol", "approved", first.id] for x in text.splitlines() if first.id in x), text
    html = cli_run("audit", "report", "--format", "html").stdout
    assert "Who approved or denied which access request" in html and second.id in html


def _fingerprint(pub) -> str:
    return subprocess.run(["ssh-keygen", "-lf", str(pub)], check=True, capture_output=True,
                          text=True).stdout.split()[1]


def test_revoked_twice_is_one_finding_with_its_serial_and_shows_in_audit_show(cfg, cli_run, tmp_path):
    key = make_key(tmp_path)
    pub = f"{key}.pub"
    signed = json.loads(cli_run("sign", "--allow-unenrolled", "--user", "alice", "--json", pub).stdout)
    serial, key_id = signed["serial"], signed["key_id"]
    ca_fp = json.loads(cli_run("info", "--json").stdout)["active_ca_fingerprint"]
    assert cli_run("revoke", "--serial", str(serial), "--reason", "laptop stolen").exit_code == 0
    assert cli_run("revoke", "--serial", str(serial), "--reason", "again").exit_code == 0  # recorded again
    assert cli_run("revoke", "--key-id", key_id, "--reason", "and by id").exit_code == 0
    when = dt.datetime.fromtimestamp(time.time() + 5, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")
    line = (f"{when} web9 sshd[1]: Accepted publickey for alice from 10.0.0.1 port 4242 ssh2: ED25519-CERT "
            f"{_fingerprint(pub)} ID {key_id} (serial {serial}) CA ED25519 {ca_fp}\n")
    r = cli_run("audit", "correlate", "--host", "web9", "--privileged", "nobody", "-", input=line)
    assert r.exit_code == 1, r.output  # a critical finding
    critical = [x for x in r.stdout.splitlines() if x.startswith("CRITICAL")]
    assert len(critical) == 1, r.stdout  # one per login, not one per revocation
    assert f"serial {serial}  " in critical[0] and "and 2 more time(s) since" in critical[0]
    shown = cli_run("audit", "show", "--serial", str(serial)).stdout
    assert "sshd logins with it ('iast-ca audit correlate'): 1" in shown
    row = shown.strip().splitlines()[-1].split()
    assert row[0] == "web9" and "alice" in row and "accepted" in row and row[-1] == "critical"
    data = json.loads(cli_run("audit", "show", "--serial", str(serial), "--json").stdout)
    assert [(x["host"], x["account"], x["outcome"]) for x in data["logins"]] == [("web9", "alice", "accepted")]
