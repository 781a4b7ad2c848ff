"""Host certificates (docs/security.md, "Host certificates"), against a real sshd and a real ssh.

A real ``iast-ca serve`` enrols the sshd's host key with a one-time join
token (``iast-ssh host enroll``); the sshd serves the certificate
(``HostCertificate``, from the drop-in the client wrote); a real ``ssh`` with
``StrictHostKeyChecking=yes`` and nothing in its known_hosts but the
``@cert-authority`` line of ``iast-ca trust --hosts`` connects to the host by
a name the policy gives it, and refuses it under any other name.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from ca.errors import PolicyDenied, PolicyError
from ca.policy import parse_policy

from .service_harness import CAProcess
from .sshd_harness import IastCA, SshdHarness, make_user_key, ssh_keygen_path, sshd_path

POLICY = """
[roles.dev]
members = ["*"]
principals = ["{user}"]

[hosts.prod]
principals = ["{host}.prod.example.com", "{host}"]
names = ["web-*"]
max_ttl = "30d"
"""
KNOWN_NAME = "web-1.prod.example.com"


# -- the host policy (pure) ---------------------------------------------------------------


def test_host_policy_parses_and_decides():
    p = parse_policy(POLICY.encode())
    d = p.decide_host("web-1", "prod", None, 1_000_000, 60)
    assert d.principals == ("web-1.prod.example.com", "web-1")
    assert (d.valid_after, d.valid_before) == (1_000_000 - 60, 1_000_000 + 30 * 86400)
    assert p.known_hosts_patterns() == ("web-*.prod.example.com", "web-*")
    with pytest.raises(PolicyDenied, match="outside host role prod"):
        p.decide_host("db-1", "prod", None, 1_000_000, 60)
    with pytest.raises(PolicyDenied, match="no such host role"):
        p.decide_host("web-1", "staging", None, 1_000_000, 60)
    with pytest.raises(PolicyDenied, match="exceeds host role prod max_ttl 30d"):
        p.decide_host("web-1", "prod", 31 * 86400, 1_000_000, 60)
    for bad in ("Web-1", "web_1", "web-1.x", "-web", "", "a" * 64):
        with pytest.raises(PolicyDenied, match="invalid host name"):
            p.decide_host(bad, "prod", None, 1_000_000, 60)


@pytest.mark.parametrize("body, message", [
    ('principals = ["{host}.example.com"]\nwho = 1', "unknown key"),
    ('principals = []', "must not be empty"),
    ('max_ttl = "1d"', "principals: required"),
    ('principals = ["{user}.example.com"]', "the only template is {host}"),
    ('principals = ["*.example.com"]', "not a lower-case DNS name"),
    ('principals = ["{host}.Example.com"]', "not a lower-case DNS name"),
    ('principals = ["{host},evil"]', "not a lower-case DNS name"),
    ('principals = ["{host}"]\nnames = ["web/1"]', "not a host name pattern"),
    ('principals = ["{host}"]\nttl = "2d"\nmax_ttl = "1d"', "exceeds hosts.prod.max_ttl"),
    ('principals = ["{host}"]\nmax_ttl = "400d"', "longer than the ceiling"),
])
def test_host_policy_is_strict(body, message):
    text = '[roles.dev]\nmembers = ["*"]\nprincipals = ["{user}"]\n[hosts.prod]\n' + body + "\n"
    with pytest.raises(PolicyError, match=message):
        parse_policy(text.encode())


# -- a CA, its service, and an sshd whose host key it certifies ----------------------------------


class HostCertSshd(SshdHarness):
    """The harness's sshd, also reading ``sshd_config.d/*.conf`` (where ``host enroll`` writes)."""

    @property
    def dropin_dir(self) -> Path:
        return self.workdir / "sshd_config.d"

    def _write_config(self, addresses) -> None:
        super()._write_config(addresses)
        self.dropin_dir.mkdir(exist_ok=True)
        with open(self.config_path, "a") as f:
            f.write(f"Include {self.dropin_dir}/*.conf\n")

    def reload(self) -> None:
        """SIGHUP: sshd re-executes itself and reads its config and host certificates again."""
        mark = self.log_mark()
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)
        self.wait_for_log(rf"Server listening on 127\.0\.0\.1 port {self.port}\.", since=mark, timeout=10)

    def ssh_as(self, name: str, key: Path, known_hosts: Path, *extra: str) -> subprocess.CompletedProcess:
        """Plain ssh to this sshd as if its name were ``name`` (HostKeyAlias), trusting only ``known_hosts``."""
        argv = [self.ssh_bin, "-F", "/dev/null", "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none",
                "-o", "BatchMode=yes", "-o", "PreferredAuthentications=publickey",
                "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known_hosts}",
                "-o", "GlobalKnownHostsFile=/dev/null", "-o", "UpdateHostKeys=no", "-o", "ConnectTimeout=10",
                "-o", f"HostKeyAlias={name}", *extra, "-i", str(key), "-p", str(self.port), "-T",
                f"{self.login_user}@{self.host}", "echo verified"]
        return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    sshd_path()  # skip loudly (fail under CI) without OpenSSH
    work = tmp_path_factory.mktemp("hostcert")
    (work / "policy.toml").write_text(POLICY)
    ca = IastCA.create(work / "state", work / "policy.toml")
    service = CAProcess(ca.state_dir, ca.policy_path, workdir=work).start()
    info = json.loads(ca.cli("info", "--json").stdout)
    sshd = HostCertSshd(work / "sshd", ca.trust_lines())
    sshd.start()
    sshd.allow_principals(sshd.login_user, ["alice"])
    user = ca.sign(make_user_key(work / "alice"), user="alice", role="dev")
    r = ca.cli("trust", "--hosts")
    assert r.exit_code == 0, r.output
    known_hosts = work / "known_hosts"
    known_hosts.write_text(r.stdout)  # the @cert-authority line, and nothing else
    try:
        yield dict(ca=ca, service=service, sshd=sshd, user_key=user.key, known_hosts=known_hosts, work=work,
                   addr=f"127.0.0.1:{service.port}", fp=info["host_key_fingerprint"])
    finally:
        sshd.stop()
        service.stop()


def iast_ssh(*args: str):
    from ca.cli.client import cli

    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def token_for(env, host: str, ttl: str = "1h") -> Path:
    r = env["ca"].cli("host", "token", "--host", host, "--role", "prod", "--ttl", ttl)
    assert r.exit_code == 0, r.output
    path = env["work"] / f"{host}-{time.monotonic_ns()}.token"
    path.write_text(r.stdout)
    path.chmod(0o600)
    return path


def enroll(env, token: Path, pub: Path, cert: Path, *extra: str):
    return iast_ssh("host", "enroll", "--ca", env["addr"], "--ca-fingerprint", env["fp"], "--token-file", str(token),
                    "--host-key", str(pub), "--cert", str(cert), "--sshd-config-dir", str(cert.parent), "--json",
                    *extra)


def renew(env, key: Path, cert: Path):
    return iast_ssh("host", "renew", "--ca", env["addr"], "--ca-fingerprint", env["fp"], "--host-key", str(key),
                    "--cert", str(cert), "--force", "--json")


def events(env, kind: str) -> list[dict]:
    r = env["ca"].cli("audit", "list", "--kind", kind, "--json", "--limit", "1000")
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def token_refusals(env, account: str) -> list[str]:
    """Why the CA refused join-token logins of ``account``, newest first (the guard's auth_failed events)."""
    return [e["data"]["why"] for e in events(env, "auth_failed")
            if e["user"] == account and e["data"].get("method") == "join-token"]


def enrolled_cert(env) -> Path:
    """The sshd's host certificate, enrolling it (web-1) here when this worker's sshd has none yet:
    under pytest-xdist the enrolment test may run in another worker, with another sshd."""
    sshd = env["sshd"]
    cert = sshd.dropin_dir / "host_ed25519_key-cert.pub"
    if not cert.exists():
        r = enroll(env, token_for(env, "web-1"), sshd.host_key.with_name(sshd.host_key.name + ".pub"), cert)
        assert r.exit_code == 0, r.output
        sshd.reload()
    return cert


def host_key(env, name: str) -> Path:
    return make_user_key(env["work"] / name, comment=name)


# -- enrolment, and plain ssh verifying the host ---------------------------------------------------


def test_enrolled_host_is_verified_by_plain_ssh_under_its_policy_names_only(env):
    sshd, kh, key = env["sshd"], env["known_hosts"], env["user_key"]
    line = kh.read_text()
    assert line.startswith("@cert-authority web-*.prod.example.com,web-* ssh-ed25519 ")
    assert len(line.strip().splitlines()) == 1
    # The host CA is a key of its own: not one the hosts trust for user certificates.
    host_ca = line.split()[3]
    assert host_ca not in " ".join(env["ca"].trust_lines())
    # Before enrolment the host presents a plain key: with only the CA line, ssh refuses it.
    before = sshd.ssh_as(KNOWN_NAME, key, kh)
    assert before.returncode == 255 and "Host key verification failed" in before.stderr, before.stderr

    pub = sshd.host_key.with_name(sshd.host_key.name + ".pub")
    cert = sshd.dropin_dir / "host_ed25519_key-cert.pub"
    r = enroll(env, token_for(env, "web-1"), pub, cert)
    assert r.exit_code == 0, r.output
    reply = json.loads(r.stdout)
    assert reply["principals"] == ["web-1.prod.example.com", "web-1"] and reply["host"] == "web-1"
    assert stat.S_IMODE(cert.stat().st_mode) == 0o644
    dropin = Path(reply["dropin_path"])
    assert dropin.read_text().splitlines()[-1] == f"HostCertificate {cert}"
    listed = subprocess.run([ssh_keygen_path(), "-L", "-f", str(cert)], capture_output=True, text=True, check=True)
    assert "host certificate" in listed.stdout and "iast-host:web-1:prod:" in listed.stdout
    sshd.reload()

    for name in (KNOWN_NAME, "web-1"):
        ok = sshd.ssh_as(name, key, kh)
        assert ok.returncode == 0 and ok.stdout.strip() == "verified", (name, ok.stderr)
    # A name the certificate does not list: refused, though the CA line's pattern matches it.
    other = sshd.ssh_as("web-2.prod.example.com", key, kh)
    assert other.returncode == 255 and "Host key verification failed" in other.stderr, other.stderr
    # A name outside the CA line's patterns: nothing vouches for the host at all.
    outside = sshd.ssh_as("web-1.evil.example.com", key, kh)
    assert outside.returncode == 255 and "Host key verification failed" in outside.stderr, outside.stderr

    issued = [e for e in events(env, "host_issued") if e["serial"] == reply["serial"]]
    assert len(issued) == 1 and issued[0]["data"]["proof"] == "token" and issued[0]["user"] == "host:web-1"


def test_a_token_works_once(env):
    token = token_for(env, "web-3")
    pub = host_key(env, "web3-key").with_suffix(".pub")
    out = env["work"] / "web3" / "cert.pub"
    out.parent.mkdir()
    first = enroll(env, token, pub, out)
    assert first.exit_code == 0, first.output
    kept = out.read_bytes()
    # Only the SHA-256 of the secret is stored: the database alone enrols nothing.
    secret = token.read_text().strip().split(".")[3]
    db = b"".join(p.read_bytes() for p in env["ca"].state_dir.glob("ca.db*"))
    assert secret.encode() not in db and hashlib.sha256(secret.encode()).hexdigest().encode() in db
    again = enroll(env, token, pub, out)
    assert again.exit_code == 4, again.output
    assert len([ln for ln in again.output.splitlines() if ln.strip()]) == 1 and "refused the join token" in again.output
    assert out.read_bytes() == kept  # nothing written
    refusals = token_refusals(env, "host:web-3")
    assert len(refusals) == 1 and "already used" in refusals[0]  # asked once, not retried


def test_a_token_for_another_host_or_expired_is_refused(env):
    pub = host_key(env, "web4-key").with_suffix(".pub")
    out = env["work"] / "web4-cert.pub"
    r = enroll(env, token_for(env, "web-5"), pub, out, "--host", "web-4")
    assert r.exit_code == 4 and "refused the join token" in r.output, r.output
    why = token_refusals(env, "host:web-4")
    assert why and "for host web-5, not web-4" in why[0]
    expiring = token_for(env, "web-4", ttl="1s")
    time.sleep(1.5)
    r = enroll(env, expiring, pub, out)
    assert r.exit_code == 4, r.output
    why = token_refusals(env, "host:web-4")
    assert "the join token has expired" in why[0]
    assert not out.exists()


def test_a_refused_host_key_leaves_the_token_unused(env):
    token = token_for(env, "web-6")
    weak = env["work"] / "weak-rsa"
    subprocess.run([ssh_keygen_path(), "-q", "-t", "rsa", "-b", "1024", "-N", "", "-f", str(weak)], check=True)
    out = env["work"] / "web6-cert.pub"
    r = enroll(env, token, weak.with_suffix(".pub"), out)
    assert r.exit_code == 1 and "1024 bits" in r.output and not out.exists(), r.output
    denied = [e for e in events(env, "host_denied") if e["user"] == "host:web-6"]
    assert denied and denied[0]["data"]["code"] == "key" and denied[0]["data"]["proof"] == "token"
    good = host_key(env, "web6-key").with_suffix(".pub")
    r = enroll(env, token, good, out)
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("case", ["certificate", "dsa-like", "outside-policy", "unknown-role"])
def test_offline_sign_refuses_bad_input(env, case, tmp_path):
    ca = env["ca"]
    key = host_key(env, f"off-{case}")
    pub = key.with_suffix(".pub")
    host, role = "web-7", "prod"
    if case == "certificate":
        r = ca.cli("host", "sign", "--host", host, "--role", role, "-o", str(tmp_path / "c1"), str(pub))
        assert r.exit_code == 0, r.output
        pub = tmp_path / "c1"
    elif case == "dsa-like":
        pub = tmp_path / "dsa.pub"
        pub.write_text("ssh-dss AAAAB3NzaC1kc3MAAACBAP8= x\n")
    elif case == "outside-policy":
        host = "db-1"
    else:
        role = "staging"
    out = tmp_path / "cert.pub"
    before = len(events(env, "host_denied"))
    r = ca.cli("host", "sign", "--host", host, "--role", role, "-o", str(out), str(pub))
    assert r.exit_code in (1, 3), r.output
    assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("Error: ")
    assert not out.exists()
    assert len(events(env, "host_denied")) == before + 1
    r = ca.cli("host", "token", "--host", host, "--role", role)
    if case in ("outside-policy", "unknown-role"):  # no token for a name or role outside the policy either
        assert r.exit_code == 3 and not r.stdout.strip(), r.output


# -- renewal ----------------------------------------------------------------------------------


def test_renewal_with_the_host_key_gives_a_fresh_certificate(env):
    sshd = env["sshd"]
    cert = enrolled_cert(env)
    old = json.loads(subprocess.run([ssh_keygen_path(), "-L", "-f", str(cert)], capture_output=True, text=True,
                                    check=True).stdout.split("Serial: ")[1].split()[0])
    r = renew(env, sshd.host_key, cert)
    assert r.exit_code == 0, r.output
    reply = json.loads(r.stdout)
    assert reply["serial"] > old and reply["renewed"]
    assert stat.S_IMODE(cert.stat().st_mode) == 0o644
    renewed = [e for e in events(env, "host_issued") if e["serial"] == reply["serial"]]
    assert renewed[0]["data"]["proof"] == "renewal" and renewed[0]["data"]["renewed_serial"] == old
    sshd.reload()
    ok = sshd.ssh_as(KNOWN_NAME, env["user_key"], env["known_hosts"])
    assert ok.returncode == 0, ok.stderr


def test_renewal_of_a_revoked_or_expired_certificate_is_refused(env, tmp_path):
    ca = env["ca"]
    # Revoked: web-8's certificate, then 'revoke --host web-8'.
    key = host_key(env, "web8-key")
    cert = tmp_path / "web8-cert.pub"
    assert ca.cli("host", "sign", "--host", "web-8", "-o", str(cert), str(key.with_suffix(".pub"))).exit_code == 0
    r = ca.cli("revoke", "--host", "web-8", "--reason", "decommissioned")
    assert r.exit_code == 0 and "1 unexpired certificate" in r.stdout, r.output
    kept = cert.read_bytes()
    r = renew(env, key, cert)
    assert r.exit_code == 3 and "is revoked" in r.output, r.output
    assert cert.read_bytes() == kept
    denied = [e for e in events(env, "host_denied") if e["user"] == "host:web-8"]
    assert denied and denied[0]["data"]["proof"] == "renewal"

    # Expired: web-9's certificate, issued by the CA with its clock two hours back, for one hour.
    from ca.app import open_ca
    from ca.config import default_config
    from ca.models import HostRequest, Identity

    key = host_key(env, "web9-key")
    cfg = default_config().with_overrides(state_dir=str(ca.state_dir), policy=str(ca.policy_path))
    with open_ca(cfg, clock=lambda: time.time() - 7200) as past:
        issued = past.authority.issue_host(
            Identity(user="host:web-9", auth_methods=("admin-offline",), operator="test"),
            HostRequest(public_key=key.with_suffix(".pub").read_text(), host="web-9", ttl=3600))
    cert = tmp_path / "web9-cert.pub"
    cert.write_text(issued.certificate + "\n")
    r = renew(env, key, cert)
    assert r.exit_code == 3 and "has expired" in r.output, r.output
    assert cert.read_text().strip() == issued.certificate

    # Another host's key: web-9 logging in with web-8's key gets nothing.
    r = renew(env, env["work"] / "web8-key", cert)
    assert r.exit_code != 0 and cert.read_text().strip() == issued.certificate


def test_host_logins_run_host_commands_only(env):
    """A host's login proves nothing about a user: 'sign' refuses it (and a user cannot use host commands)."""
    import asyncio

    import asyncssh

    token = token_for(env, "web-10").read_text().strip()
    service = env["service"]

    class Token(asyncssh.SSHClient):
        def kbdint_auth_requested(self):
            return ""

        def kbdint_challenge_received(self, name, instructions, lang, prompts):
            return [token for _ in prompts]

    async def run():
        async with asyncssh.connect("127.0.0.1", service.port, username="host:web-10",
                                    known_hosts=str(service.known_hosts()), client_factory=Token, client_keys=None,
                                    agent_path=None, preferred_auth=["keyboard-interactive"]) as conn:
            return await conn.run("sign --role dev", check=False)  # refused before stdin is read

    result = asyncio.run(run())
    assert result.exit_status == 4 and "sign is a command for users" in result.stderr
    # And a user's login runs no host command, whatever it sends.
    bob = make_user_key(env["work"] / "bob")
    assert env["ca"].cli("user", "add", "bob", "--key", str(bob.with_suffix(".pub"))).exit_code == 0
    r = service.ssh("bob", bob, "host-enroll --json")
    assert r.returncode == 4 and "host-enroll is a command for hosts" in r.stderr, r.stderr
    assert not [e for e in events(env, "host_issued") if e["user"] in ("bob", "host:bob")]


# -- revocation reaches the client's KRL ----------------------------------------------------------


def test_revoked_host_is_refused_by_ssh_with_the_krl(env):
    sshd = env["sshd"]
    enrolled_cert(env)
    ca = env["ca"]
    before = sshd.ssh_as(KNOWN_NAME, env["user_key"], env["known_hosts"])
    assert before.returncode == 0, before.stderr  # verified by its certificate until revoked
    r = ca.cli("revoke", "--host", "web-1", "--reason", "compromised")
    assert r.exit_code == 0 and "RevokedHostKeys" in r.output, r.output  # clients check host certificates
    krl = env["work"] / "hosts.krl"
    assert ca.cli("krl", "-o", str(krl)).exit_code == 0
    refused = sshd.ssh_as(KNOWN_NAME, env["user_key"], env["known_hosts"], "-o", f"RevokedHostKeys={krl}")
    assert refused.returncode == 255 and "Host key verification failed" in refused.stderr, refused.stderr
    # And the revoked host cannot renew its way back.
    r = renew(env, sshd.host_key, sshd.dropin_dir / "host_ed25519_key-cert.pub")
    assert r.exit_code == 3 and "revoked" in r.output, r.output
    assert os.path.exists(krl)


# -- the token is used inside the issuing transaction; parsers never crash ------------------------


@pytest.mark.both_backends
def test_two_enrolments_racing_with_one_token_get_one_certificate(tmp_path, database):
    """Both pass the check made before the transaction; the one made inside it lets only one through
    (on PostgreSQL: two connections, as two replicas would race)."""
    import threading

    from ca.app import open_ca
    from ca.auth.hosts import parse_join_token
    from ca.config import default_config
    from ca.issuance.hosts import create_join_token
    from ca.models import HostRequest, Identity
    from ca.state import init_state

    (tmp_path / "policy.toml").write_text(POLICY)
    cfg = default_config().with_overrides(state_dir=str(tmp_path / "state"), policy=str(tmp_path / "policy.toml"),
                                          database=database)
    init_state(cfg, "ed25519", None)
    with open_ca(cfg) as one:
        made = create_join_token(one.audit, one.policy, host="web-1", role="prod", ttl=600, operator="t",
                                 now=int(time.time()))
    token = parse_join_token(made.token.text)
    identity = Identity(user="host:web-1", auth_methods=("join-token",), subject=token.token_id)
    pub = make_user_key(tmp_path / "k").with_suffix(".pub").read_text()
    barrier, outcomes = threading.Barrier(2), []

    def enrol():
        with open_ca(cfg) as mine:
            authority = mine.authority
            authority.host_ca()  # unlock first, so both race on the transaction alone
            barrier.wait()
            try:
                outcomes.append(authority.issue_host(identity, HostRequest(
                    public_key=pub, host="web-1", proof="token", token_id=token.token_id)).serial)
            except PolicyDenied as e:
                outcomes.append(e.message)

    threads = [threading.Thread(target=enrol) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    serials = [o for o in outcomes if isinstance(o, int)]
    assert len(serials) == 1 and len(outcomes) == 2, outcomes
    assert "already used" in next(o for o in outcomes if isinstance(o, str))
    with open_ca(cfg) as after:
        assert after.audit.join_tokens.get(token.token_id).used_serial == serials[0]


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=120))
def test_join_token_parser_refuses_cleanly(text):
    from ca.auth.hosts import parse_join_token
    from ca.errors import UsageError

    try:
        token = parse_join_token(text)
    except UsageError:
        return
    assert parse_join_token(token.text) == token


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80), st.one_of(st.none(), st.text(max_size=20)), st.one_of(st.none(), st.integers()))
def test_decide_host_refuses_cleanly(host, role, ttl):
    p = parse_policy(POLICY.encode())
    try:
        d = p.decide_host(host, role, ttl, 1_000_000, 60)
    except PolicyDenied:
        return
    assert all(name.endswith(".prod.example.com") or name == host for name in d.principals)
    assert host.startswith("web-") and d.ttl <= 30 * 86400
