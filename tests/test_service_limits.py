"""Limits per connection and per address, against the running service (docs/security.md,
"Limits per connection and per address"; "The issued event names the login key")."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import time

import asyncssh
import pytest

from ca.sshcert.userkey import parse_user_key
from ca.state import StatePaths
from ca.store import AuditLog

from .conftest import make_key
from .service_harness import CAProcess
from .test_service import store

LIMITS = ('[server]\nmax_unauthenticated = 6\nmax_unauthenticated_per_address = 2\nlogin_timeout = "20s"\n'
          'max_channels_per_connection = 3\nmax_channels_per_user = 4\nrequest_timeout = "2s"\n')


@pytest.fixture
def dave(cfg, tmp_path):
    key = make_key(tmp_path, name="dave_enrolled")
    store(cfg).add("dave", keys=[key.with_suffix(".pub").read_text()], actor="test")
    return key


@pytest.fixture
def ca(cfg, tmp_path, dave):
    p = CAProcess(cfg.state_dir, cfg.policy_path, LIMITS, workdir=tmp_path).start()
    yield p
    p.stop()


def _rss_kb(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _connect(ca, key, **kw):
    return asyncssh.connect("127.0.0.1", ca.port, username="dave", client_keys=[str(key)],
                            known_hosts=str(ca.known_hosts()), agent_path=None, **kw)


def test_environment_flood_is_refused_and_not_kept(ca, dave):
    """2000 x 30 KB of environment requests grew the process by 57 MB; now nothing is kept."""
    big = "x" * 30_000

    async def flood() -> int:
        async with _connect(ca, dave) as conn:
            for round_ in range(4):
                env = {f"V{round_}_{i}": big for i in range(250)}
                r = await conn.run("help", env=env, check=False)
                assert r.exit_status == 0
            return 0

    before = _rss_kb(ca.proc.pid)
    asyncio.run(flood())
    grown = _rss_kb(ca.proc.pid) - before
    assert grown < 10_000, f"the service grew by {grown} KB for 30 MB of environment"


def test_a_request_that_never_ends_its_input_is_cut_at_the_deadline(ca, dave):
    async def endless() -> tuple[float, int | None]:
        async with _connect(ca, dave) as conn:
            t0 = time.monotonic()
            proc = await conn.create_process("sign")
            proc.stdin.write("ssh-ed25519 ")  # and never an end of input
            for _ in range(20):
                await asyncio.sleep(0.5)
                if proc.exit_status is not None:
                    break
                proc.stdin.write("A")
            await asyncio.wait_for(proc.wait_closed(), 15)
            return time.monotonic() - t0, proc.exit_status

    took, status = asyncio.run(asyncio.wait_for(endless(), 30))
    assert status not in (None, 0) and took < 10
    ca.wait_for("request timed out")


def test_channels_per_connection_and_per_user_are_capped(ca, dave):
    async def flood() -> tuple[int, int, int]:
        async with _connect(ca, dave) as conn, _connect(ca, dave) as other:
            held, refused = [], 0
            for _ in range(6):  # sign channels that wait for their input
                try:
                    held.append(await conn.create_process("sign"))
                except asyncssh.ChannelOpenError:
                    refused += 1
            on_one = len(held)
            for _ in range(3):
                try:
                    held.append(await other.create_process("sign"))
                except asyncssh.ChannelOpenError:
                    refused += 1
            for p in held:
                p.close()
            await asyncio.sleep(0.3)
            # once closed, the slots are free again
            again = await conn.run("help", check=False)
            return on_one, len(held), again.exit_status

    on_one, total, again = asyncio.run(asyncio.wait_for(flood(), 30))
    assert on_one == 3  # max_channels_per_connection
    assert total == 4  # max_channels_per_user, over both connections
    assert again == 0
    ca.wait_for("refused: too many channels")


def test_one_address_cannot_starve_another(ca, dave):
    """A slow loris from 127.0.0.1 (banner only) fills only its own share of the slots."""
    loris = []
    for _ in range(10):
        s = socket.create_connection(("127.0.0.1", ca.port))
        s.sendall(b"SSH-2.0-loris\r\n")
        loris.append(s)
    try:
        time.sleep(0.5)
        r = subprocess.run(["ssh", "-F", "/dev/null", "-p", str(ca.port), "-i", str(dave), "-b", "127.0.0.2",
                            "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
                            "-o", f"UserKnownHostsFile={ca.known_hosts()}", "-o", "ConnectTimeout=10",
                            "dave@127.0.0.1", "whoami"], capture_output=True, text=True, timeout=30,
                           env={"PATH": "/usr/bin:/bin", "SSH_AUTH_SOCK": ""})
        assert r.returncode == 0, r.stderr
        ca.wait_for("queued: waiting for a slot to log in")  # the rest of its connections wait (rule 63)
    finally:
        for s in loris:
            s.close()


def test_issued_event_names_the_login_key(ca, dave, cfg, tmp_path):
    pub = make_key(tmp_path, name="session").with_suffix(".pub").read_text()
    r = ca.ssh("dave", dave, "sign --role dev", input=pub)
    assert r.returncode == 0, r.stderr
    issued = AuditLog(StatePaths(cfg.state_dir).db).events(kind="issued", user="dave", limit=1)[0]
    assert issued.data["login_key"] == parse_user_key(dave.with_suffix(".pub").read_text()).fingerprint
    assert issued.data["login_key"] != issued.data["key_fingerprint"]


BURST = 200


def test_a_burst_of_200_logins_is_queued_and_every_one_answered(cfg, dave, tmp_path):
    """Rule 63: 200 plain ``ssh … sign`` started at once, with the default pre-authentication
    limits (32 slots, 8 per address, the queue behind them), each get a certificate, and the
    audit log holds one issued event for each."""
    ca = CAProcess(cfg.state_dir, cfg.policy_path, "[server]\nmax_channels_per_user = 256\n",
                   workdir=tmp_path).start()
    try:
        pub = make_key(tmp_path, name="burst").with_suffix(".pub").read_text()
        argv = ["ssh", "-F", "/dev/null", "-p", str(ca.port), "-i", str(dave), "-o", "IdentitiesOnly=yes",
                "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
                "-o", f"UserKnownHostsFile={ca.known_hosts()}", "-o", "ConnectTimeout=60",
                "dave@127.0.0.1", "sign --role dev --json"]
        env = {"PATH": "/usr/bin:/bin", "SSH_AUTH_SOCK": ""}
        procs = [subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, env=env) for _ in range(BURST)]
        outs = [p.communicate(pub, timeout=120) for p in procs]
        failed = [(p.returncode, err) for p, (_, err) in zip(procs, outs) if p.returncode != 0]
        assert not failed, failed[:3]
        serials = {json.loads(out)["serial"] for out, _ in outs}
        assert len(serials) == BURST
        assert ca.wait_for("queued: waiting for a slot to log in")  # the burst did go through the queue
    finally:
        ca.stop()
    log = AuditLog(StatePaths(cfg.state_dir).db)
    assert {e.serial for e in log.events(kind="issued", limit=None)} == serials
    log.verify()
