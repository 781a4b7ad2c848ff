"""Single sign-on against a real OpenID Provider (npm oidc-provider, tests/oidc_harness.py).

Through the real OpenSSH client (keyboard-interactive device flow); token
checks against the provider's own JWKS over HTTPS; the IdP stopped mid-test.
Workload tokens, ``iast-ssh login --sso``, the fresh sign-in a role asks for
and refused tokens throttled are in tests/test_workload.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import threading
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from ca.auth.idp_http import IssuerClient
from ca.auth.tokens import TokenRefused, verify_token
from ca.config import load_config
from ca.errors import IdentityProviderError
from ca.store import AuditLog

from .oidc_harness import CLIENT_ID, OpenIDProvider, unsigned
from .service_harness import CAProcess
from .sshd_harness import make_user_key, require_tool

SSO_POLICY = """\
[defaults]
ttl = "1h"
max_ttl = "8h"

[roles.dev]
members = ["idp:test:dev"]
principals = ["{user}"]

[roles.prod]
members = ["idp:test:sre"]
principals = ["prod-ro", "{user}"]
max_ttl = "30m"

[roles.prod-admin]
members = ["idp:test:sre"]
principals = ["root"]
max_ttl = "15m"
max_auth_age = "10m"

[roles.deploy]
members = ["workload:deploy"]
principals = ["deploy"]
max_ttl = "10m"
"""


@pytest.fixture(scope="module")
def idp(tmp_path_factory):
    with OpenIDProvider(tmp_path_factory.mktemp("idp")) as p:
        yield p


def _state(tmp_path: Path, idp: OpenIDProvider, login_timeout: str = "40s", address_failures: int = 50) -> CAProcess:
    from ca.config import default_config
    from ca.state import init_state

    policy = tmp_path / "policy.toml"
    policy.write_text(SSO_POLICY)
    c = default_config().with_overrides(state_dir=str(tmp_path / "state"), policy=str(policy))
    init_state(c, "ed25519", None)
    workload = (f'[workload.deploy]\nissuer = "{idp.issuer}"\naudience = "iast-ca-deploy"\n'
                f'ca_file = "{idp.ca_file}"\nclaims = {{ repository = "org/app", ref = "refs/heads/main" }}\n')
    conf = (f'[server]\nlogin_timeout = "{login_timeout}"\n[throttle]\naddress_failures = {address_failures}\n'
            + idp.ca_toml() + workload)
    return CAProcess(c.state_dir, policy, conf, workdir=tmp_path)


@pytest.fixture
def ca(tmp_path, idp):
    p = _state(tmp_path, idp).start()
    yield p
    p.stop()


def events(ca: CAProcess, kind: str) -> list:
    a = AuditLog(ca.state_dir / "ca.db")
    try:
        return a.events(kind=kind, limit=None)
    finally:
        a.close()


def _ssh_sso(ca: CAProcess, key_pub: Path, command: str, approve, *, user: str = "anyone", timeout: float = 60):
    """Plain ssh, keyboard-interactive only: read the URL and code from its stderr, call approve(url, code)."""
    ssh = require_tool("ssh")
    argv = [ssh, "-F", "/dev/null", "-p", str(ca.port), "-o", "PreferredAuthentications=keyboard-interactive",
            "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={ca.known_hosts()}",
            "-o", "ConnectTimeout=10", "-o", "NumberOfPasswordPrompts=1", f"{user}@127.0.0.1", command]
    proc = subprocess.Popen(argv, stdin=open(key_pub), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "SSH_AUTH_SOCK": "", "DISPLAY": "", "SSH_ASKPASS": ""},
                            start_new_session=True)
    err: list[str] = []

    def pump():
        for line in proc.stderr:
            err.append(line)
            m = re.search(r"or open (https://\S+)", line)
            if m and approve is not None:
                code = re.search(r"enter the code (\S+)", "".join(err))
                threading.Thread(target=approve, args=(m.group(1), code.group(1) if code else None),
                                 daemon=True).start()

    t = threading.Thread(target=pump, daemon=True)
    t.start()
    out = proc.stdout.read()
    proc.wait(timeout)
    t.join(5)
    return proc.returncode, out, "".join(err)


def _cert_principals(tmp_path: Path, cert_line: str) -> list[str]:
    p = tmp_path / "got-cert.pub"
    p.write_text(cert_line)
    text = subprocess.run([require_tool("ssh-keygen"), "-L", "-f", str(p)], capture_output=True, text=True).stdout
    block = text.split("Principals:")[1].split("Critical Options:")[0]
    return [x.strip() for x in block.strip().splitlines()]


# -- people, through plain ssh -----------------------------------------------------------


@pytest.mark.slow
def test_plain_ssh_device_login_gets_a_certificate_from_idp_groups(ca, idp, tmp_path):
    key = make_user_key(tmp_path / "id_alice")
    shown = {}

    def approve(url, code):
        shown["url"], shown["code"] = url, code
        idp.approve(url, "alice")

    rc, out, err = _ssh_sso(ca, key.with_suffix(".pub"), "sign --role prod --json", approve)
    assert rc == 0, err
    reply = json.loads(out)
    # principals from the IdP group sre (role prod), user name from the verified email
    assert reply["principals"] == ["prod-ro", "alice"]
    assert _cert_principals(tmp_path, reply["certificate"]) == ["prod-ro", "alice"]
    assert "enter the code" in err and shown["code"] and shown["url"].endswith(shown["code"])
    issued = events(ca, "issued")[0]
    assert issued.user == "alice"
    d = issued.data
    assert d["issuer"] == idp.issuer and d["subject"] == "alice"
    assert set(d["groups"]) == {"idp:test:sre", "idp:test:dev"}
    assert isinstance(d["auth_time"], int) and len(d["token_sha256"]) == 64
    assert d["auth_methods"] == ["oidc"]


@pytest.mark.slow
def test_a_group_the_idp_does_not_give_is_denied(ca, idp, tmp_path):
    key = make_user_key(tmp_path / "id_carol")
    rc, out, err = _ssh_sso(ca, key.with_suffix(".pub"), "sign --role prod",
                            lambda url, code: idp.approve(url, "carol"))
    assert rc == 3 and "may not use role prod" in err, err
    assert events(ca, "denied")[0].data["groups"] == ["idp:test:dev"]


@pytest.mark.slow
def test_a_device_login_never_approved_times_out_cleanly(tmp_path, idp):
    ca = _state(tmp_path, idp, login_timeout="9s").start()
    try:
        key = make_user_key(tmp_path / "id_x")
        t0 = time.monotonic()
        rc, out, err = _ssh_sso(ca, key.with_suffix(".pub"), "sign", None)
        assert rc == 255 and "Permission denied" in err, err
        assert time.monotonic() - t0 < 20
        failed = [e for e in events(ca, "auth_failed") if e.data["method"] == "oidc"]
        assert failed and "not approved within" in failed[0].data["why"]
        assert not events(ca, "issued")
    finally:
        ca.stop()


@pytest.mark.slow
def test_max_auth_age_refuses_a_stale_sign_in_and_accepts_a_fresh_one(ca, idp, tmp_path):
    key = make_user_key(tmp_path / "id_alice")
    pub = key.with_suffix(".pub")
    # Signed in at the IdP an hour ago (an old IdP session): prod is fine, prod-admin needs 10m.
    rc, out, err = _ssh_sso(ca, pub, "sign --role prod-admin --json",
                            lambda url, code: idp.approve(url, "alice", auth_age=3600))
    assert rc == 4, err
    assert json.loads(out)["error"] == "reauthentication_required"
    assert "sign-in within 10m" in err
    rc, out, err = _ssh_sso(ca, pub, "sign --role prod-admin --json", lambda url, code: idp.approve(url, "alice"))
    assert rc == 0, err
    assert json.loads(out)["principals"] == ["root"]


# -- token checks, against the provider's own JWKS over HTTPS ------------------------------


def _check(idp: OpenIDProvider, token: str, *, client: IssuerClient | None = None, now: float | None = None):
    client = client or IssuerClient(idp.issuer, ca_file=idp.ca_file, timeout=5)

    async def run():
        try:
            return await verify_token(token, client, CLIENT_ID, now=now or time.time(), skew=60)
        finally:
            await client.aclose()

    return asyncio.run(run())


def test_a_good_token_from_the_providers_keys_verifies(idp):
    claims = _check(idp, idp.mint({"sub": "alice"}))
    assert claims["sub"] == "alice" and claims["iss"] == idp.issuer
    assert _check(idp, idp.mint({"sub": "alice"}, kid="ec-1", alg="ES256"))["sub"] == "alice"


@pytest.mark.parametrize("case, reason", [
    ("wrong_aud", "wrong_audience"),
    ("several_aud_no_azp", "wrong_audience"),
    ("wrong_iss", "wrong_issuer"),
    ("expired", "expired"),
    ("future_iat", "not_yet_valid"),
    ("alg_none", "algorithm"),
    ("hs256_with_public_key", "algorithm"),
    ("unknown_kid", "unknown_kid"),
    ("other_key_same_kid", "bad_signature"),
    ("rsa_kid_with_es256", "algorithm"),
    ("embedded_jwk", "algorithm"),
])
def test_bad_tokens_are_refused_with_their_reason(idp, case, reason):
    now = int(time.time())
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = {
        "wrong_aud": lambda: idp.mint({"sub": "alice", "aud": "someone-else"}),
        "several_aud_no_azp": lambda: idp.mint({"sub": "alice", "aud": [CLIENT_ID, "other"]}),
        "wrong_iss": lambda: idp.mint({"sub": "alice", "iss": idp.issuer + "/evil"}),
        "expired": lambda: idp.mint({"sub": "alice", "iat": now - 900, "exp": now - 600}),
        "future_iat": lambda: idp.mint({"sub": "alice", "iat": now + 600, "exp": now + 900}),
        "alg_none": lambda: unsigned({"alg": "none", "kid": "rsa-1"},
                                     {"sub": "alice", "iss": idp.issuer, "aud": CLIENT_ID, "iat": now, "exp": now + 60}),
        # The classic confusion: HMAC keyed with the provider's public key (PEM) as the secret.
        "hs256_with_public_key": lambda: _hmac_with_public_key(idp, now),
        "unknown_kid": lambda: idp.mint({"sub": "alice"}, key=other, kid="never-published"),
        "other_key_same_kid": lambda: idp.mint({"sub": "alice"}, key=other, kid="rsa-1"),
        "rsa_kid_with_es256": lambda: idp.mint({"sub": "alice"}, key=idp.ec_key, kid="rsa-1", alg="ES256"),
        "embedded_jwk": lambda: idp.mint({"sub": "alice"}, key=other, headers={"jwk": {"kty": "RSA"}}),
    }[case]()
    with pytest.raises(TokenRefused) as e:
        _check(idp, token)
    assert e.value.reason == reason, str(e.value)


def _hmac_with_public_key(idp: OpenIDProvider, now: int) -> str:
    import base64
    import hashlib
    import hmac

    from cryptography.hazmat.primitives import serialization

    pem = idp.rsa_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)
    head = unsigned({"alg": "HS256", "kid": "rsa-1"},
                    {"sub": "alice", "iss": idp.issuer, "aud": CLIENT_ID, "iat": now, "exp": now + 60})
    signing_input = head.rsplit(".", 1)[0]
    sig = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + base64.urlsafe_b64encode(sig).decode().rstrip("=")


def test_an_unknown_kid_refreshes_the_jwks_at_most_once_a_minute(idp):
    clock = [1000.0]
    client = IssuerClient(idp.issuer, ca_file=idp.ca_file, timeout=5, clock=lambda: clock[0])
    fetched = []
    real = client._fetch_keys

    async def counting():
        fetched.append(clock[0])
        return await real()

    client._fetch_keys = counting  # count the real fetches (the provider is real)

    async def run():
        for _ in range(5):
            assert await client.key("never-published") is None
        clock[0] += 61
        assert await client.key("never-published") is None
        assert await client.key("rsa-1") is not None
        await client.aclose()

    asyncio.run(run())
    assert fetched == [1000.0, 1061.0]


def test_html_instead_of_json_and_no_answer_are_one_line_errors(idp, tmp_path):
    # The login page is HTML: pointing discovery at it must give one line, not a traceback.
    client = IssuerClient(idp.issuer, ca_file=idp.ca_file, timeout=5)

    async def html():
        try:
            return await client.request_json("GET", idp.issuer + "/interaction/nothing-here", ok_statuses=(200, 500))
        finally:
            await client.aclose()

    with pytest.raises(IdentityProviderError) as e:
        asyncio.run(html())
    assert "expected JSON, got text/html" in e.value.message and "\n" not in e.value.message
    # A port nobody listens on: a clean one-line error quickly.
    dead = IssuerClient("https://127.0.0.1:9", ca_file=idp.ca_file, timeout=2)
    t0 = time.monotonic()
    with pytest.raises(IdentityProviderError):
        asyncio.run(dead.metadata())
    assert time.monotonic() - t0 < 5


def test_a_replayed_id_token_is_refused(ca, idp):
    from ca.app import open_ca

    cfg = load_config(ca.config_path)
    with open_ca(cfg) as c:
        authn = next(a for a in c.authenticators if getattr(a, "name", None) == "test")
        token = idp.mint({"sub": "alice", "email": "alice@example.test", "email_verified": True})
        claims = _check(idp, token)
        assert authn.remember(claims, token, time.time()) is True
        assert authn.remember(claims, token, time.time()) is False


@pytest.mark.slow
def test_idp_stopped_sso_fails_fast_and_key_logins_still_work(tmp_path):
    idp = OpenIDProvider(tmp_path / "idp2").start()
    ca = _state(tmp_path, idp).start()
    try:
        from ca.app import open_ca

        key = make_user_key(tmp_path / "id_bob")
        with open_ca(load_config(ca.config_path)) as c:
            c.users.add("bob", keys=key.with_suffix(".pub").read_text())
        idp.stop()
        t0 = time.monotonic()
        rc, out, err = _ssh_sso(ca, key.with_suffix(".pub"), "sign", None)
        assert rc == 255 and time.monotonic() - t0 < 10, err
        why = [e.data["why"] for e in events(ca, "auth_failed") if e.data["method"] == "oidc"]
        assert why and "identity provider unavailable" in why[0]
        r = ca.ssh("bob", key, "whoami --json")
        assert r.returncode == 0 and json.loads(r.stdout)["user"] == "bob", r.stderr
    finally:
        ca.stop()
        idp.stop()


def test_policy_explain_with_idp_groups(tmp_path):
    from click.testing import CliRunner

    from ca.cli.admin import cli

    policy = tmp_path / "policy.toml"
    policy.write_text(SSO_POLICY)
    runner = CliRunner()
    r = runner.invoke(cli, ["--state-dir", str(tmp_path / "s"), "--policy", str(policy), "policy", "explain",
                            "alice", "--groups", "idp:test:sre", "--json"])
    assert r.exit_code == 0, r.output
    allowed = {v["role"] for v in json.loads(r.output) if v["allowed"]}
    assert allowed == {"prod", "prod-admin"}
    r = runner.invoke(cli, ["--state-dir", str(tmp_path / "s"), "--policy", str(policy), "policy", "explain",
                            "alice", "--json"])
    assert not any(v["allowed"] for v in json.loads(r.output))
