"""Just-in-time access with approval (ca/approvals.py), end to end.

A real ``iast-ca serve`` process, the real ``iast-ssh`` and OpenSSH ``ssh``
clients, and a real ``sshd`` that lets the approved certificate (principal
``root``) log in. The library is called directly where a test needs an
injected clock or two Authority instances racing on one database.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from ca.access.approvals import Approvals, expand_hook, run_hook
from ca.app import open_authority, open_audit
from ca.auth.users import UserStore
from ca.errors import CAError, PolicyDenied, UsageError
from ca.keys.keyring import Keyring
from ca.models import Identity, SignRequest
from ca.policy import load_policy
from ca.service.protocol import parse_command
from ca.state import StatePaths

from .conftest import make_key
from .service_harness import CAProcess
from .sshd_harness import make_sshd_fixture

IAST_SSH = str(Path(sys.executable).parent / "iast-ssh")
CHEAP = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)

POLICY = """\
[defaults]
ttl = "1h"
max_ttl = "8h"
role = "dev"

[groups]
sre = ["alice", "bob"]
security = ["carol", "dave"]

[roles.dev]
members = ["*"]
principals = ["{user}"]

[roles.prod-admin]
description = "temporary root on production"
members = ["group:sre"]
principals = ["root"]
max_ttl = "15m"
require_reason = true
approval = { approvers = ["group:security"], required = 1, expires = "1h" }

[roles.prod-two]
description = "two approvers; security may ask too"
members = ["group:sre", "group:security"]
principals = ["root"]
max_ttl = "15m"
approval = { approvers = ["group:security", "alice"], required = 2, expires = "1h" }

[roles.prod-blink]
members = ["group:sre"]
principals = ["root"]
max_ttl = "15m"
approval = { approvers = ["group:security"], expires = "2s" }
"""

# sshd trusts each test's CA (set per test); it starts trusting nothing.
sshd = make_sshd_fixture(None, trust=lambda: [])


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:  # overrides conftest's: this module's policy
    p = tmp_path / "policy.toml"
    p.write_text(POLICY)
    return p


@pytest.fixture
def users(cfg, tmp_path):
    """alice and bob (sre), carol and dave (security): an enrolled key each."""
    log = open_audit(cfg)
    store = UserStore(log, hasher=CHEAP)
    out = {}
    for name in ("alice", "bob", "carol", "dave"):
        key = make_key(tmp_path, name=f"{name}_enrolled")
        store.add(name, keys=[key.with_suffix(".pub").read_text()], actor="test")
        out[name] = key
    log.close()
    return out


@pytest.fixture
def ca(cfg, users, tmp_path):
    p = CAProcess(cfg.state_dir, cfg.policy_path, workdir=tmp_path, database=cfg.database).start()
    yield p
    p.stop()


pytestmark = pytest.mark.both_backends


def events(cfg, kind: str | None = None) -> list:
    log = open_audit(cfg)
    try:
        return log.events(kind=kind, limit=None)[::-1]  # oldest first
    finally:
        log.close()


def last_event_id(cfg) -> int:
    log = open_audit(cfg)
    try:
        return log.head()[0]
    finally:
        log.close()


def session_key(tmp_path: Path) -> str:
    return make_key(tmp_path, name=f"session-{time.monotonic_ns()}").with_suffix(".pub").read_text()


def ask(ca, users, who: str, role: str = "prod-admin", ttl: str = "10m", reason: str = "INC-4711 disk full") -> str:
    r = ca.ssh(who, users[who], f"request --role {role} --ttl {ttl} --reason '{reason}' --json")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["status"] == "pending" and got["user"] == who and got["role"] == role
    return got["id"]


def ok(ca, users, who: str, command: str, input: str | None = None) -> dict:
    r = ca.ssh(who, users[who], command + " --json", input=input)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def refused(ca, cfg, users, who: str, command: str, message: str, kind: str, *, status: int = 3,
            input: str | None = None, request_id: str | None = None):
    """The command is refused with ``status`` and one line holding ``message``, and exactly that
    refusal is audited as an event of ``kind``."""
    before = last_event_id(cfg)
    r = ca.ssh(who, users[who], command, input=input)
    assert r.returncode == status, (r.returncode, r.stderr)
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    new = [e for e in events(cfg) if e.id > before]
    said = r.stderr.strip().removeprefix("error: ")
    match = [e for e in new if e.kind == kind and e.data.get("message") == said]
    assert len(match) == 1, [(e.kind, e.data) for e in new]
    if request_id is not None:
        assert match[0].data["request_id"] == request_id
    return match[0]


def status_of(cfg, request_id: str) -> str:
    log = open_audit(cfg)
    try:
        return Approvals(log).get(request_id).status
    finally:
        log.close()


# --------------------------------------------------------------------------
# the whole flow: request -> approve -> login -> ssh into a real sshd


def client_env(tmp_path: Path) -> dict:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    e = {k: v for k, v in os.environ.items() if k not in ("SSH_AUTH_SOCK", "SSH_AGENT_PID", "XDG_CONFIG_HOME")}
    e.update(HOME=str(home), XDG_CONFIG_HOME=str(tmp_path / "xdg"))
    return e


def iast_ssh(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([IAST_SSH, *args], env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=60)


def host_fingerprint(cfg) -> str:
    out = subprocess.run(["ssh-keygen", "-lf", str(StatePaths(cfg.state_dir).host_key.with_suffix(".pub"))],
                         check=True, capture_output=True, text=True).stdout
    return out.split()[1]


@pytest.mark.sshd
def test_request_approve_login_and_ssh_in_as_root(sshd, ca, cfg, users, tmp_path, cli_run):
    sshd.set_trusted_ca_keys(Keyring.load(cfg.state_dir).trust_lines())
    sshd.allow_principals(sshd.login_user, ["root"])  # the certificate's principal "root" logs in here
    env = client_env(tmp_path)
    out = tmp_path / "certs"

    def conn(who: str) -> list[str]:
        return ["--ca", f"127.0.0.1:{ca.port}", "--ca-fingerprint", host_fingerprint(cfg), "-l", who,
                "-i", str(users[who])]

    # 1. alice asks, and gets the request's id.
    r = iast_ssh(env, "request", *conn("alice"), "--role", "prod-admin", "--ttl", "10m",
                 "--reason", "INC-4711 disk full on db-3", "--json")
    assert r.returncode == 0, r.stderr
    req = json.loads(r.stdout)
    rid = req["id"]
    assert (req["status"], req["ttl"], req["required"], req["approvals"]) == ("pending", 600, 1, 0)
    # Without --json the id is the first line of stdout, alone (for scripts).
    r = iast_ssh(env, "request", *conn("alice"), "--role", "prod-admin", "--reason", "another one")
    assert r.returncode == 0 and r.stdout.strip().startswith("req-") and len(r.stdout.split()) == 1, r
    other = r.stdout.strip()
    assert iast_ssh(env, "cancel", other, *conn("alice")).returncode == 0

    # Not yet: no certificate before the approval.
    r = iast_ssh(env, "login", *conn("alice"), "--role", "prod-admin", "--no-agent", "--out-dir", str(out))
    assert r.returncode == 3 and f"request {rid} is not approved yet (0 of 1 approvals)" in r.stderr, r.stderr

    # 2. carol (security) sees it among the requests she may decide, and approves it.
    r = iast_ssh(env, "requests", *conn("carol"), "--json")
    assert r.returncode == 0, r.stderr
    assert [x["id"] for x in json.loads(r.stdout)] == [rid]
    text = iast_ssh(env, "requests", *conn("carol")).stdout
    assert rid in text and "INC-4711 disk full on db-3" in text and "pending" in text
    mine = json.loads(iast_ssh(env, "requests", *conn("alice"), "--json").stdout)
    assert {x["id"]: x["status"] for x in mine} == {rid: "pending", other: "cancelled"}
    r = iast_ssh(env, "approve", rid, *conn("carol"), "--comment", "go ahead", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["status"] == "approved"
    assert json.loads(iast_ssh(env, "requests", *conn("carol"), "--json").stdout) == []  # nothing left to decide

    # 3. alice logs in (her approved request is found by its role) and ssh-es in as root.
    r = iast_ssh(env, "login", *conn("alice"), "--role", "prod-admin", "--no-agent", "--out-dir", str(out), "--json")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["role"] == "prod-admin" and got["principals"] == ["root"]
    assert got["valid_before"] - got["valid_after"] == 600 + 60  # the requested ttl (+ clock skew)
    mark = sshd.log_mark()
    s = sshd.ssh(out / "id_ed25519-prod-admin", sshd.login_user, "echo jit-$((6*7))")
    assert s.returncode == 0 and s.stdout.strip() == "jit-42", f"{s.stderr}\n{sshd.log(mark)}"
    sshd.wait_for_log(rf"Accepted publickey for {sshd.login_user} .* ID iast:alice:prod-admin:{got['serial']} "
                      rf"\(serial {got['serial']}\)", mark)

    # The certificate's audit row names the request and its approvers.
    (issued,) = events(cfg, "issued")
    assert issued.serial == got["serial"] and issued.data["request_id"] == rid
    assert issued.data["approvers"] == ["carol"] and issued.data["reason"] == "INC-4711 disk full on db-3"
    assert status_of(cfg, rid) == "used"

    # At most once per request.
    r = iast_ssh(env, "login", *conn("alice"), "--request", rid, "--no-agent", "--out-dir", str(tmp_path / "again"))
    assert r.returncode == 3 and f"request {rid} was already used (serial {got['serial']})" in r.stderr, r.stderr
    assert len(events(cfg, "issued")) == 1

    # iast-ca audit show --request: everything that happened to it, oldest first.
    shown = cli_run("audit", "show", "--request", rid, "--json")
    assert shown.exit_code == 0, shown.output
    history = json.loads(shown.output)
    assert history["request"]["status"] == "used" and history["request"]["used_serial"] == got["serial"]
    assert [e["kind"] for e in history["events"]] == [
        "request_created", "denied", "request_approved", "request_used", "issued", "denied"]
    assert history["events"][2]["data"]["approver"] == "carol"
    assert history["events"][2]["data"]["comment"] == "go ahead"
    text = cli_run("audit", "show", "--request", rid)
    assert text.exit_code == 0 and "used (serial" in text.output and "approved by carol" in text.output
    assert cli_run("audit", "show", "--request", "req-aaaaaaaaaa").exit_code == 1


# --------------------------------------------------------------------------
# refusals: each with a clear message and an audit event


def test_self_approval_double_approval_and_non_approvers_are_refused(ca, cfg, users):
    rid = ask(ca, users, "carol", role="prod-two")  # carol is in security: a member and an approver
    refused(ca, cfg, users, "carol", f"approve {rid}", f"you cannot approve your own request {rid}",
            "request_refused", request_id=rid)
    refused(ca, cfg, users, "bob", f"approve {rid}",
            "bob is not an approver of role prod-two (approvers: group:security, alice)", "request_refused",
            request_id=rid)
    assert ok(ca, users, "dave", f"approve {rid}")["status"] == "pending"  # 1 of 2
    refused(ca, cfg, users, "dave", f"approve {rid} --comment again",
            f"dave already approved request {rid}; an approver counts once", "request_refused", request_id=rid)
    refused(ca, cfg, users, "carol", f"sign --request {rid}", f"request {rid} is not approved yet (1 of 2 approvals)",
            "denied", input=session_key(Path(users["carol"]).parent), request_id=rid)
    got = ok(ca, users, "alice", f"approve {rid} --comment 'fine by me'")  # alice is named as an approver
    assert got["status"] == "approved" and got["approvals"] == 2
    cert = ok(ca, users, "carol", f"sign --request {rid}", input=session_key(Path(users["carol"]).parent))
    assert cert["role"] == "prod-two" and cert["principals"] == ["root"]
    (issued,) = events(cfg, "issued")
    assert issued.data["approvers"] == ["dave", "alice"] and issued.data["request_id"] == rid
    kinds = [e.kind for e in events(cfg) if e.data.get("request_id") == rid]
    assert kinds == ["request_created", "request_refused", "request_refused", "request_approved", "request_refused",
                     "denied", "request_approved", "request_used", "issued"]


def test_login_before_approval_and_a_second_login_are_refused(ca, cfg, users, tmp_path):
    rid = ask(ca, users, "alice")
    pub = session_key(tmp_path)
    refused(ca, cfg, users, "alice", "sign --role prod-admin", f"request {rid} is not approved yet", "denied",
            input=pub, request_id=rid)
    # No request at all (bob never asked): the way to ask is in the message.
    refused(ca, cfg, users, "bob", "sign --role prod-admin --reason x",
            "role prod-admin needs an approved request: iast-ssh request --role prod-admin", "denied", input=pub)
    ok(ca, users, "carol", f"approve {rid}")
    # Someone else's request is no use to them.
    refused(ca, cfg, users, "bob", f"sign --role prod-admin --reason x --request {rid}", f"no request {rid} of bob", "denied",
            input=pub)
    assert ok(ca, users, "alice", "sign --role prod-admin", input=pub)["role"] == "prod-admin"
    refused(ca, cfg, users, "alice", f"sign --request {rid}", f"request {rid} was already used", "denied", input=pub,
            request_id=rid)
    refused(ca, cfg, users, "alice", "sign --role prod-admin", f"request {rid} was already used", "denied",
            input=pub, request_id=rid)
    assert len(events(cfg, "issued")) == 1 and status_of(cfg, rid) == "used"


def test_the_certificate_is_for_at_most_the_ttl_asked_for(ca, cfg, users, tmp_path):
    rid = ask(ca, users, "alice", ttl="5m")
    ok(ca, users, "carol", f"approve {rid}")
    pub = session_key(tmp_path)
    refused(ca, cfg, users, "alice", f"sign --request {rid} --ttl 10m",
            f"ttl 10m exceeds the 5m request {rid} was approved for", "denied", input=pub, request_id=rid)
    # The refusal rolled back with its transaction: the request is still approved, and usable.
    assert status_of(cfg, rid) == "approved" and events(cfg, "request_used") == []
    cert = ok(ca, users, "alice", f"sign --request {rid}", input=pub)  # the request's ttl by default
    assert cert["valid_before"] - cert["valid_after"] == 300 + 60


def test_a_denied_request_is_closed(ca, cfg, users, tmp_path):
    rid = ask(ca, users, "alice")
    r = ca.ssh("carol", users["carol"], f"deny {rid}")  # a usage error, refused before anything is looked up
    assert r.returncode == 2 and "--comment is required" in r.stderr
    refused(ca, cfg, users, "alice", f"deny {rid} --comment no", f"you cannot deny your own request {rid}",
            "request_refused", request_id=rid)
    got = ok(ca, users, "carol", f"deny {rid} --comment 'use prod-readonly for this'")
    assert got["status"] == "denied" and got["votes"][0]["comment"] == "use prod-readonly for this"
    refused(ca, cfg, users, "dave", f"approve {rid}", f"request {rid} is already denied", "request_refused",
            request_id=rid)
    refused(ca, cfg, users, "alice", f"sign --request {rid}", f"request {rid} was denied", "denied",
            input=session_key(tmp_path), request_id=rid)
    (den,) = events(cfg, "request_denied")
    assert den.user == "alice" and den.data["approver"] == "carol"


def test_a_cancelled_request_is_closed(ca, cfg, users, tmp_path):
    rid = ask(ca, users, "alice")
    ok(ca, users, "carol", f"approve {rid}")  # approved and not used yet: still the requester's to withdraw
    refused(ca, cfg, users, "bob", f"cancel {rid}", f"request {rid} is not yours to cancel", "request_refused",
            request_id=rid)
    assert ok(ca, users, "alice", f"cancel {rid}")["status"] == "cancelled"
    refused(ca, cfg, users, "alice", f"sign --request {rid}", f"request {rid} was cancelled", "denied",
            input=session_key(tmp_path), request_id=rid)
    refused(ca, cfg, users, "dave", f"approve {rid}", f"request {rid} is already cancelled", "request_refused",
            request_id=rid)
    refused(ca, cfg, users, "alice", f"cancel {rid}", f"request {rid} is already cancelled", "request_refused",
            request_id=rid)
    (c,) = events(cfg, "request_cancelled")
    assert c.data == {"request_id": rid, "was": "approved", "operator": None}


def test_requests_expire_when_unused_and_when_undecided(ca, cfg, users, tmp_path):
    approved = ask(ca, users, "alice", role="prod-blink")
    ok(ca, users, "carol", f"approve {approved}")
    undecided = ask(ca, users, "bob", role="prod-blink")
    time.sleep(2.5)  # the role's expires is 2s: from the approval, and from the creation
    refused(ca, cfg, users, "alice", f"sign --request {approved}", f"request {approved} was expired", "denied",
            input=session_key(tmp_path), request_id=approved)
    refused(ca, cfg, users, "carol", f"approve {undecided}", f"request {undecided} is already expired",
            "request_refused", request_id=undecided)
    expired = {e.data["request_id"]: e.data["was"] for e in events(cfg, "request_expired")}
    assert expired == {approved: "approved", undecided: "pending"}  # recorded once each, when first observed
    assert events(cfg, "issued") == []


def test_what_a_request_must_be(ca, cfg, users):
    r = ca.ssh("alice", users["alice"], "request --role prod-admin")
    assert r.returncode == 2 and "--reason is required" in r.stderr
    refused(ca, cfg, users, "alice", "request --role prod-admin --reason '  '",
            "role prod-admin requires a reason", "request_refused")
    # A role that does not require a reason for a certificate still needs one for an access request.
    refused(ca, cfg, users, "alice", "request --role prod-two --reason '  '",
            "role prod-two needs a reason for an access request", "request_refused")
    refused(ca, cfg, users, "alice", "request --role dev --reason x",
            "role dev needs no approval: iast-ssh login --role dev", "request_refused")
    refused(ca, cfg, users, "carol", "request --role prod-admin --reason x",
            "carol may not use role prod-admin", "request_refused")
    refused(ca, cfg, users, "alice", "request --role prod-admin --ttl 1h --reason x",
            "requested ttl 1h exceeds role prod-admin max_ttl 15m", "request_refused")
    r = ca.ssh("alice", users["alice"], "approve req-nope")
    assert r.returncode == 2 and "is not a request id" in r.stderr
    r = ca.ssh("carol", users["carol"], "approve req-aaaaaaaaaa")
    assert r.returncode == 1 and "no such request req-aaaaaaaaaa" in r.stderr
    assert events(cfg, "request_created") == []
    # Without --json the answer says what happens next, the id first.
    r = ca.ssh("alice", users["alice"], "request --role prod-admin --reason 'INC-1'")
    rid = r.stdout.split()[0]
    assert r.returncode == 0 and rid.startswith("req-") and f"iast-ssh login --request {rid}" in r.stdout
    assert "needs 1 approval(s) from group:security" in r.stdout


def test_the_protocol_parses_request_commands():
    c = parse_command("approve REQ-ABCDEFGHIJ --comment 'ok, INC-1'")
    assert (c.name, c.request_id, c.comment) == ("approve", "req-abcdefghij", "ok, INC-1")
    c = parse_command("sign --request req-abcdefghij --json")
    assert (c.name, c.request_id, c.json) == ("sign", "req-abcdefghij", True)
    c = parse_command("request --role prod-admin --ttl 15m --reason 'INC-4711 x'")
    assert (c.role, c.ttl, c.reason) == ("prod-admin", 900, "INC-4711 x")
    for line, message in [("approve", "which request?"), ("cancel req-abcdefghij req-bbbbbbbbbb", "one request ID"),
                          ("deny req-abcdefghij", "--comment is required"), ("request --reason x", "--role is"),
                          ("sign --request 42", "is not a request id"), ("requests extra", "unknown option"),
                          ("approve req-abcdefghij --role x", "unknown option")]:
        with pytest.raises(UsageError, match=message):
            parse_command(line)


# --------------------------------------------------------------------------
# two logins racing on one approved request: exactly one certificate


def test_racing_logins_across_two_workers_get_one_certificate(cfg, users, tmp_path):
    # 12 logins at once by one user from one address: above the default per-address share of the
    # slots and the per-user channel limit (8 per worker), which this test is not about
    p = CAProcess(cfg.state_dir, cfg.policy_path,
                  "[server]\nmax_unauthenticated_per_address = 32\nmax_channels_per_user = 32\n",
                  workdir=tmp_path, serve_args=("--workers", "2"), database=cfg.database).start()
    try:
        rid = ask(p, users, "alice")
        ok(p, users, "carol", f"approve {rid}")
        pub = session_key(tmp_path)
        go = threading.Barrier(12)

        def login(_):
            go.wait()
            return p.ssh("alice", users["alice"], f"sign --request {rid} --json", input=pub)

        with ThreadPoolExecutor(12) as pool:
            results = list(pool.map(login, range(12)))
    finally:
        p.stop()
    won = [r for r in results if r.returncode == 0]
    lost = [r for r in results if r.returncode != 0]
    assert len(won) == 1, [r.stderr for r in results]
    odd = [(r.returncode, r.stderr) for r in lost if not (r.returncode == 3 and "already used" in r.stderr)]
    assert not odd, odd
    assert len(events(cfg, "issued")) == 1 and len(events(cfg, "request_used")) == 1
    assert len([e for e in events(cfg, "denied") if e.data["request_id"] == rid]) == 11
    assert open_audit(cfg).verify().count == last_event_id(cfg)


def test_two_authorities_on_one_database_race_for_one_request(cfg, users, tmp_path):
    authorities = [open_authority(cfg) for _ in range(4)]
    approvals = [Approvals(a.audit) for a in authorities]
    try:
        alice, carol = Identity("alice", ("publickey",)), Identity("carol", ("publickey",))
        req = approvals[0].create(alice, role="prod-admin", ttl=600, reason="INC-9", policy=authorities[0].policy)
        approvals[1].approve(req.id, carol, authorities[1].policy)
        pub = session_key(tmp_path)
        go = threading.Barrier(len(authorities))

        def login(i):
            a, ap = authorities[i], approvals[i]
            sreq = ap.prepare("alice", SignRequest(public_key=pub, role="prod-admin"), a.policy)
            go.wait()
            try:
                return a.issue(alice, sreq, consume=ap.consumer("alice", sreq.request_id, a.policy), allow_unenrolled=True)
            except PolicyDenied as e:
                return e

        with ThreadPoolExecutor(len(authorities)) as pool:
            results = list(pool.map(login, range(len(authorities))))
    finally:
        for a in authorities:
            a.close()
    issued = [r for r in results if not isinstance(r, CAError)]
    assert len(issued) == 1 and all("already used" in str(r) for r in results if isinstance(r, CAError))
    log = open_audit(cfg)
    assert Approvals(log).get(req.id).used_serial == issued[0].serial
    assert log.verify().count == log.head()[0]


# --------------------------------------------------------------------------
# the library with an injected clock; the admin CLI; offline signing


def test_windows_with_an_injected_clock(cfg, users, tmp_path):
    now = [1_900_000_000.0]
    a = open_authority(cfg, clock=lambda: now[0])
    ap = Approvals(a.audit, clock=lambda: now[0])
    alice, carol = Identity("alice", ("publickey",)), Identity("carol", ("publickey",))
    pub = session_key(tmp_path)
    try:
        req = ap.create(alice, role="prod-admin", ttl=600, reason="INC-1", policy=a.policy)
        assert req.expires_at == now[0] + 3600  # pending: expires an hour after it was made
        now[0] += 3000
        req = ap.approve(req.id, carol, a.policy, "ok")
        assert req.status == "approved" and req.expires_at == now[0] + 3600  # then an hour after the approval
        now[0] += 3599
        sreq = ap.prepare("alice", SignRequest(public_key=pub, role="prod-admin"), a.policy)
        assert (sreq.request_id, sreq.ttl, sreq.reason) == (req.id, 600, "INC-1")  # filled in from the request
        # One second left: still good; but not after the hour.
        second = ap.create(alice, role="prod-admin", ttl=600, reason="INC-2", policy=a.policy)
        ap.approve(second.id, carol, a.policy)
        issued = a.issue(alice, sreq, consume=ap.consumer("alice", sreq.request_id, a.policy), allow_unenrolled=True)
        assert a.audit.get(issued.event_id).data["request_id"] == req.id
        now[0] += 3601
        sreq = ap.prepare("alice", SignRequest(public_key=pub, request_id=second.id), a.policy)
        with pytest.raises(PolicyDenied, match=f"request {second.id} was expired"):
            a.issue(alice, sreq, consume=ap.consumer("alice", sreq.request_id, a.policy), allow_unenrolled=True)
    finally:
        a.close()


def test_an_approval_that_the_policy_withdrew_no_longer_counts(cfg, users, tmp_path):
    a = open_authority(cfg)
    ap = Approvals(a.audit)
    alice, carol = Identity("alice", ("publickey",)), Identity("carol", ("publickey",))
    try:
        req = ap.create(alice, role="prod-admin", ttl=600, reason="INC-1", policy=a.policy)
        ap.approve(req.id, carol, a.policy)
        cfg.policy_path.write_text(POLICY.replace('security = ["carol", "dave"]', 'security = ["dave"]'))
        a.policy = load_policy(cfg.policy_path)  # as a SIGHUP reload does
        sreq = ap.prepare("alice", SignRequest(public_key=session_key(tmp_path), role="prod-admin"), a.policy)
        with pytest.raises(PolicyDenied, match=r"no longer has the approvals the policy asks for \(0 of 1\)"):
            a.issue(alice, sreq, consume=ap.consumer("alice", sreq.request_id, a.policy), allow_unenrolled=True)
        assert ap.get(req.id).status == "approved"
    finally:
        a.close()


def test_the_authority_never_signs_an_approval_role_without_the_hook(authority, cfg, users, tmp_path):
    pub = session_key(tmp_path)
    with pytest.raises(PolicyDenied, match="role prod-admin needs an approved request: iast-ssh request "
                                           "--role prod-admin"):
        authority.issue(Identity("alice", ("admin-offline",), mfa=True), SignRequest(pub, role="prod-admin",
                                                                                    reason="INC-1"), allow_unenrolled=True)
    with pytest.raises(PolicyDenied, match="role dev takes no access requests"):
        authority.issue(Identity("alice", ("publickey",)), SignRequest(pub, role="dev",
                                                                      request_id="req-aaaaaaaaaa"), allow_unenrolled=True)
    assert [e.data["requested_role"] for e in events(cfg, "denied")] == ["prod-admin", "dev"]
    assert events(cfg, "issued") == []


@pytest.fixture
def approver_agent(users):
    """A real ssh-agent; approver_agent(NAME) loads only NAME's enrolled key and returns the
    environment of NAME running iast-ca (SUDO_USER=NAME, SSH_AUTH_SOCK the agent)."""
    import re
    import signal
    out = subprocess.run(["ssh-agent", "-s"], check=True, capture_output=True, text=True).stdout
    sock = re.search(r"SSH_AUTH_SOCK=([^;]+);", out).group(1)
    pid = int(re.search(r"SSH_AGENT_PID=(\d+);", out).group(1))

    def load(name: str, key_of: str | None = None) -> dict:
        env = {**os.environ, "SSH_AUTH_SOCK": sock}
        subprocess.run(["ssh-add", "-D"], env=env, capture_output=True)
        subprocess.run(["ssh-add", str(users[key_of or name])], env=env, check=True, capture_output=True)
        return {"SSH_AUTH_SOCK": sock, "SUDO_USER": name}

    load.sock = sock
    yield load
    os.kill(pid, signal.SIGTERM)


def test_spoofed_sudo_user_cannot_approve(cfg, users, cli_run, approver_agent):
    """docs/security.md "Approvers prove who they are": SUDO_USER=carol is only a claim."""
    log = open_audit(cfg)
    one = Approvals(log).create(Identity("alice", ("publickey",)), role="prod-admin", ttl=300, reason="INC-1",
                                policy=load_policy(cfg.policy_path)).id
    log.close()
    # bob claims to be carol; his agent holds only his own key
    env = approver_agent("carol", key_of="bob")
    r = cli_run("requests", "approve", one, env=env)
    assert r.exit_code == 4 and "none of your enrolled keys" in r.output
    # no agent at all: refused too, with the way to do it
    r = cli_run("requests", "approve", one, env={"SUDO_USER": "carol", "SSH_AUTH_SOCK": ""})
    assert r.exit_code == 4 and "approve over the service" in r.output
    r = cli_run("requests", "deny", one, "--comment", "no", env=env)
    assert r.exit_code == 4
    assert events(cfg, "request_approved") == [] and events(cfg, "request_denied") == []
    refused = events(cfg, "request_refused")
    assert len(refused) == 3 and {e.data["actor"] for e in refused} == {"carol"}
    assert json.loads(cli_run("requests", "list", "--json").output)[0]["status"] == "pending"


def test_approval_may_require_mfa(cfg, users, cli_run, approver_agent, tmp_path):
    text = cfg.policy_path.read_text().replace('approvers = ["group:security"], required = 1, expires = "1h" }',
                                               'approvers = ["group:security"], required = 1, expires = "1h", '
                                               'require_mfa = true }')
    cfg.policy_path.write_text(text)
    policy = load_policy(cfg.policy_path)
    assert policy.roles["prod-admin"].approval.require_mfa is True
    log = open_audit(cfg)
    ap = Approvals(log)
    one = ap.create(Identity("alice", ("publickey",)), role="prod-admin", ttl=300, reason="INC-1", policy=policy).id
    r = cli_run("requests", "approve", one, env=approver_agent("carol"))  # a key alone is one factor
    assert r.exit_code == 4 and "second factor" in r.output
    from ca.errors import MFARequired
    with pytest.raises(MFARequired):
        ap.approve(one, Identity("carol", ("publickey",), mfa=False), policy)
    r = ap.approve(one, Identity("carol", ("password", "totp"), mfa=True), policy)
    assert r.status == "approved"
    log.close()


def test_admin_cli_lists_approves_denies_and_signs_offline(cfg, users, cli_run, tmp_path, approver_agent):
    log = open_audit(cfg)
    ap = Approvals(log)
    policy = load_policy(cfg.policy_path)
    alice = Identity("alice", ("publickey",))
    one = ap.create(alice, role="prod-admin", ttl=300, reason="INC-1", policy=policy).id
    two = ap.create(alice, role="prod-admin", ttl=300, reason="INC-2", policy=policy).id
    log.close()
    pub = tmp_path / "alice-session.pub"
    pub.write_text(session_key(tmp_path))

    r = cli_run("requests", "list", "--json")
    assert r.exit_code == 0 and [x["id"] for x in json.loads(r.output)] == [two, one]
    assert one in cli_run("requests", "list").output

    # The approver is the person running the command (SUDO_USER, else the OS user), proven by
    # a signature from their own ssh-agent with one of their enrolled keys.
    r = cli_run("requests", "approve", one, env=approver_agent("bob"))
    assert r.exit_code == 3 and "bob is not an approver of role prod-admin" in r.output
    r = cli_run("requests", "approve", one, env=approver_agent("alice"))
    assert r.exit_code == 3 and "cannot approve your own request" in r.output
    r = cli_run("requests", "approve", one, "--comment", "INC-1 ok", "--json", env=approver_agent("carol"))
    assert r.exit_code == 0 and json.loads(r.output)["status"] == "approved"
    r = cli_run("requests", "deny", two, env=approver_agent("dave"))
    assert r.exit_code == 2  # --comment is required
    r = cli_run("requests", "deny", two, "--comment", "one is enough", env=approver_agent("dave"))
    assert r.exit_code == 0 and "denied (by dave: one is enough)" in r.output
    assert [x["status"] for x in json.loads(cli_run("requests", "list", "--all", "--json").output)] == \
        ["denied", "approved"]
    (approved,) = events(cfg, "request_approved")
    assert approved.data["operator"] == "carol" and approved.data["auth_methods"] == ["agent-signature"]

    # Offline signing of an approval role needs --request, and uses it up.
    r = cli_run("sign", "--allow-unenrolled", "--user", "alice", "--role", "prod-admin", "--reason", "INC-1", str(pub))
    assert r.exit_code == 3 and "needs an approved request" in r.output
    r = cli_run("sign", "--allow-unenrolled", "--user", "bob", "--request", one, "--reason", "mine now", str(pub))
    assert r.exit_code == 3 and f"no request {one} of bob" in r.output
    r = cli_run("sign", "--allow-unenrolled", "--user", "alice", "--request", two, str(pub))
    assert r.exit_code == 3 and f"request {two} was denied" in r.output
    r = cli_run("sign", "--allow-unenrolled", "--user", "alice", "--request", one, "--json", str(pub))
    assert r.exit_code == 0, r.output
    cert = json.loads(r.output)
    assert cert["role"] == "prod-admin" and cert["valid_before"] - cert["valid_after"] == 300 + 60
    r = cli_run("sign", "--allow-unenrolled", "--user", "alice", "--request", one, str(pub))
    assert r.exit_code == 3 and "already used" in r.output
    (issued,) = events(cfg, "issued")
    assert issued.data["request_id"] == one and issued.data["approvers"] == ["carol"]


# --------------------------------------------------------------------------
# the on_request hook: arguments, never a shell


DUMP_ARGV = """\
import json, sys
with open(sys.argv[1], "w") as f:
    json.dump(sys.argv[2:], f)
"""


def test_the_hook_gets_its_arguments_literally_and_never_a_shell(tmp_path):
    script = tmp_path / "dump-argv"
    script.write_text(f"#!{sys.executable}\n" + DUMP_ARGV)
    script.chmod(0o755)
    out = tmp_path / "argv.json"
    pwned = tmp_path / "pwned"
    hostile = f"; touch {pwned}"
    argv = [str(script), str(out), "{id}", "user={user}", "{role}", "$(id)", "{unknown} {0} {{id}}", "`id` &&"]
    values = {"id": "req-abcdefghij", "user": "alice", "role": f"prod-admin{hostile}"}
    assert run_hook(argv, values) is True
    got = json.loads(out.read_text())
    assert got == ["req-abcdefghij", "user=alice", f"prod-admin{hostile}", "$(id)", "{unknown} {0} {req-abcdefghij}",
                   "`id` &&"]
    assert not pwned.exists()
    # One pass: a value that looks like a placeholder is not expanded again.
    assert expand_hook(["{user}:{role}"], {"id": "i", "user": "{role}", "role": "r"}) == ["{role}:r"]


def test_a_failing_hook_is_logged_and_never_raises(tmp_path):
    values = {"id": "req-abcdefghij", "user": "alice", "role": "prod-admin"}
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("iast.ca.approvals")
    logger.addHandler(handler)  # directly: "iast" may not propagate to the root (ca.server.setup_logging)
    try:
        _failing_hooks(tmp_path, values)
    finally:
        logger.removeHandler(handler)
    messages = [r.getMessage() for r in records]
    assert messages == ["on_request hook failed", "on_request hook could not run", "on_request hook timed out"]
    assert records[0].fields["status"] == 7 and records[0].fields["stderr"] == "broken"


def _failing_hooks(tmp_path, values):
    assert run_hook(["/bin/sh", "-c", "echo broken >&2; exit 7"], values) is False
    assert run_hook([str(tmp_path / "missing")], values) is False
    started = time.monotonic()
    assert run_hook(["/bin/sleep", "10"], values, timeout=0.5) is False
    assert time.monotonic() - started < 5
    assert run_hook(None, values) is False and run_hook([], values) is False


def test_the_service_runs_the_hook_when_the_config_has_one(cfg, users, tmp_path):
    """Once Config has ``on_request`` (see the README), the service runs it for each new request."""
    import dataclasses

    from ca.config import Config

    if "on_request" not in {f.name for f in dataclasses.fields(Config)}:
        pytest.skip("ca.config.Config has no on_request field yet")
    script = tmp_path / "dump-argv"
    script.write_text(f"#!{sys.executable}\n" + DUMP_ARGV)
    script.chmod(0o755)
    out = tmp_path / "argv.json"
    config = f'on_request = ["{script}", "{out}", "{{id}}", "{{user}}", "{{role}}"]\n'
    p = CAProcess(cfg.state_dir, cfg.policy_path, textwrap.dedent(config), workdir=tmp_path, database=cfg.database).start()
    try:
        rid = ask(p, users, "alice")
        deadline = time.monotonic() + 10
        while not out.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        p.stop()
    assert json.loads(out.read_text()) == [rid, "alice", "prod-admin"]
