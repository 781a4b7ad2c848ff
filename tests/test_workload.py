"""Workload tokens, ``iast-ssh login --sso``, the fresh sign-in a role asks for, and refused tokens throttled.

Against the real OpenID Provider of tests/oidc_harness.py: workload tokens are
minted with the signing keys the harness made for it and checked by the CA
against the provider's JWKS, fetched over HTTPS (nothing stubbed). Through the
real OpenSSH client (``cat token key.pub | ssh workload@CA sign --token -``)
and the installed ``iast-ssh``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from .oidc_harness import OpenIDProvider
from .service_harness import CAProcess
from .sshd_harness import make_user_key, require_tool
from .test_sso import _ssh_sso, _state, events

IAST_SSH = str(Path(sys.executable).parent / "iast-ssh")
GOOD = {"repository": "org/app", "ref": "refs/heads/main"}


@pytest.fixture(scope="module")
def idp(tmp_path_factory):
    with OpenIDProvider(tmp_path_factory.mktemp("idp")) as p:
        yield p


@pytest.fixture
def ca(tmp_path, idp):
    p = _state(tmp_path, idp).start()
    yield p
    p.stop()


def workload_token(idp: OpenIDProvider, **claims) -> str:
    """A CI job's ID token, as GitHub Actions would send it: signed with the provider's key."""
    return idp.mint({"sub": "repo:org/app:ref:refs/heads/main", "aud": "iast-ca-deploy", "auth_time": None,
                     **GOOD, **claims})


def ssh_token(ca: CAProcess, token: str, pub: Path, command: str = "sign --token - --role deploy --json",
              user: str = "workload") -> subprocess.CompletedProcess:
    """``cat token key.pub | ssh workload@CA sign --token -``: plain OpenSSH, no key, BatchMode (a CI job)."""
    argv = [require_tool("ssh"), "-F", "/dev/null", "-p", str(ca.port), "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={ca.known_hosts()}",
            "-o", "ConnectTimeout=10", "-o", "IdentityFile=/dev/null", f"{user}@127.0.0.1", command]
    return subprocess.run(argv, input=token + "\n" + pub.read_text(), capture_output=True, text=True, timeout=60,
                          env={**os.environ, "SSH_AUTH_SOCK": ""})


def failures(ca: CAProcess, method: str = "workload") -> list[str]:
    return [e.data["why"] for e in events(ca, "auth_failed") if e.data.get("method") == method]


def host_fingerprint(ca: CAProcess) -> str:
    out = subprocess.run([require_tool("ssh-keygen"), "-lf", str(ca.state_dir / "host-key.pub")], check=True,
                         capture_output=True, text=True).stdout
    return out.split()[1]


def client_env(tmp_path: Path) -> dict:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    e = {k: v for k, v in os.environ.items() if k not in ("SSH_AUTH_SOCK", "SSH_AGENT_PID", "XDG_CONFIG_HOME")}
    e.update(HOME=str(home), XDG_CONFIG_HOME=str(tmp_path / "xdg"), DISPLAY="", WAYLAND_DISPLAY="")
    return e


# -- workload tokens through plain ssh --------------------------------------------------


def test_a_workload_token_with_matching_claims_gets_a_short_certificate_through_plain_ssh(ca, idp, tmp_path):
    key = make_user_key(tmp_path / "id_ci")
    token = workload_token(idp)
    t0 = int(time.time())
    r = ssh_token(ca, token, key.with_suffix(".pub"))
    assert r.returncode == 0, r.stderr
    reply = json.loads(r.stdout)
    assert reply["principals"] == ["deploy"] and reply["role"] == "deploy"
    # The workload default: 5 minutes (the role's ttl is 10m), not the policy's 1h.
    assert t0 + 295 <= reply["valid_before"] <= int(time.time()) + 305
    issued = events(ca, "issued")[0]
    assert issued.user == "deploy"
    d = issued.data
    assert d["auth_methods"] == ["workload"] and d["groups"] == ["workload:deploy"]
    assert d["issuer"] == idp.issuer and d["subject"] == "repo:org/app:ref:refs/heads/main"
    assert len(d["token_sha256"]) == 64 and token not in json.dumps(d)


def test_a_token_for_another_branch_is_refused_with_its_reason(ca, idp, tmp_path):
    key = make_user_key(tmp_path / "id_ci")
    r = ssh_token(ca, workload_token(idp, ref="refs/heads/dev"), key.with_suffix(".pub"))
    assert r.returncode == 4 and "workload token refused" in r.stderr, r.stderr
    assert "refs/heads" not in r.stderr  # why is for the audit log, not the client
    why = failures(ca)
    assert why and "claim_mismatch: ref is 'refs/heads/dev', not 'refs/heads/main'" in why[0]
    assert not events(ca, "issued")


@pytest.mark.parametrize("claims, reason", [
    ({"aud": "iast-ca"}, "wrong_audience"),  # the people's client id is not the workload audience
    ({"iat": int(time.time()) - 900, "exp": int(time.time()) - 600}, "expired"),
    ({"repository": None}, "claim_mismatch: repository is missing"),
])
def test_other_bad_workload_tokens_are_refused_with_their_reason(ca, idp, tmp_path, claims, reason):
    key = make_user_key(tmp_path / "id_ci")
    r = ssh_token(ca, workload_token(idp, **claims), key.with_suffix(".pub"))
    assert r.returncode == 4, r.stderr
    assert reason in failures(ca)[0]


def test_a_replayed_workload_token_is_refused(ca, idp, tmp_path):
    key = make_user_key(tmp_path / "id_ci")
    token = workload_token(idp)
    assert ssh_token(ca, token, key.with_suffix(".pub")).returncode == 0
    again = ssh_token(ca, token, make_user_key(tmp_path / "id_ci2").with_suffix(".pub"))
    assert again.returncode == 4, again.stderr
    assert "replay" in failures(ca)[0]
    assert len(events(ca, "issued")) == 1


def test_the_workload_user_runs_nothing_but_sign_with_a_token(ca, idp, tmp_path):
    key = make_user_key(tmp_path / "id_ci")
    for command in ("whoami --json", "sign --role deploy", "roles", "ca-keys"):
        r = ssh_token(ca, "", key.with_suffix(".pub"), command=command)
        assert r.returncode == 4 and "sign --token -" in r.stderr, (command, r.stderr)
    why = failures(ca)
    assert len(why) == 4 and all("without a token" in w for w in why)
    assert not events(ca, "issued")


def test_without_workload_sections_the_name_workload_must_authenticate(tmp_path):
    from ca.config import default_config
    from ca.state import init_state

    policy = tmp_path / "policy.toml"
    policy.write_text('[roles.deploy]\nmembers = ["workload"]\nprincipals = ["deploy"]\n')
    c = default_config().with_overrides(state_dir=str(tmp_path / "state"), policy=str(policy))
    init_state(c, "ed25519", None)
    ca = CAProcess(c.state_dir, policy, "", workdir=tmp_path).start()
    try:
        key = make_user_key(tmp_path / "id_ci")
        r = ssh_token(ca, "x.y.z", key.with_suffix(".pub"), command="whoami")
        assert r.returncode == 255 and "Permission denied" in r.stderr, r.stderr
    finally:
        ca.stop()


# -- workload tokens through iast-ssh -------------------------------------------------------


def test_iast_ssh_login_with_a_token_file_and_env(ca, idp, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(workload_token(idp) + "\n")
    env = client_env(tmp_path)
    common = ["--ca", f"127.0.0.1:{ca.port}", "--ca-fingerprint", host_fingerprint(ca), "--role", "deploy",
              "--no-agent", "--json"]
    r = subprocess.run([IAST_SSH, "login", "--token-file", str(token_file), *common, "--out-dir", str(tmp_path / "o1")],
                       env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["principals"] == ["deploy"] and Path(got["cert_path"]).is_file()
    # --token-env: a fresh token (the first one is used up); a reused one exits 4.
    env["CI_ID_TOKEN"] = workload_token(idp)
    r = subprocess.run([IAST_SSH, "login", "--token-env", "CI_ID_TOKEN", *common, "--out-dir", str(tmp_path / "o2")],
                       env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([IAST_SSH, "login", "--token-env", "CI_ID_TOKEN", *common, "--out-dir", str(tmp_path / "o3")],
                       env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert r.returncode == 4 and "workload token refused" in r.stderr, r.stderr
    assert [e.user for e in events(ca, "issued")] == ["deploy", "deploy"]
    assert "replay" in failures(ca)[0]



def test_iast_ssh_login_with_a_token_fails_over_to_the_next_replica(ca, idp, tmp_path):
    """--ca DOWN,UP with a workload token: the address that refuses the connection is skipped (the
    token is sent only to the CA whose host key matched the pin, docs/security.md rule 38)."""
    import socket

    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    down = closed.getsockname()[1]
    closed.close()
    token_file = tmp_path / "token"
    token_file.write_text(workload_token(idp) + "\n")
    r = subprocess.run([IAST_SSH, "login", "--token-file", str(token_file), "--ca",
                        f"127.0.0.1:{down},127.0.0.1:{ca.port}", "--ca-fingerprint", host_fingerprint(ca),
                        "--role", "deploy", "--no-agent", "--json", "--out-dir", str(tmp_path / "o")],
                       env=client_env(tmp_path), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["principals"] == ["deploy"]

# -- people: iast-ssh login --sso ---------------------------------------------------------------


def _iast_ssh_sso(ca: CAProcess, tmp_path: Path, approve, *more: str):
    """``iast-ssh login --sso`` in a subprocess; approve(url) runs when it shows the URL."""
    argv = [IAST_SSH, "login", "--sso", "--ca", f"127.0.0.1:{ca.port}", "--ca-fingerprint", host_fingerprint(ca),
            "--no-agent", "--out-dir", str(tmp_path / "out"), "--json", *more]
    proc = subprocess.Popen(argv, env=client_env(tmp_path), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    err: list[str] = []

    def pump():
        for line in proc.stderr:
            err.append(line)
            m = re.search(r"or open (https://\S+)", line)
            if m:
                threading.Thread(target=approve, args=(m.group(1),), daemon=True).start()

    t = threading.Thread(target=pump, daemon=True)
    t.start()
    out = proc.stdout.read()
    proc.wait(90)
    t.join(5)
    return proc.returncode, out, "".join(err)


@pytest.mark.slow
def test_iast_ssh_login_sso_shows_the_url_and_code_and_gets_a_certificate(ca, idp, tmp_path):
    rc, out, err = _iast_ssh_sso(ca, tmp_path, lambda url: idp.approve(url, "alice"), "--role", "prod")
    assert rc == 0, err
    got = json.loads(out)
    assert got["principals"] == ["prod-ro", "alice"]
    assert "enter the code" in err and "opened in your browser" not in err  # no display: no browser
    issued = events(ca, "issued")[0]
    assert issued.user == "alice" and issued.data["auth_methods"] == ["oidc"]


@pytest.mark.slow
def test_a_role_with_max_auth_age_asks_the_idp_for_a_fresh_sign_in(ca, idp, tmp_path):
    browser = idp.browser()  # alice's browser, with her IdP session
    try:
        # An hour ago alice signed in at the IdP (through a login for prod, which needs no fresh one).
        logins: list[int] = []
        rc, out, err = _iast_ssh_sso(ca, tmp_path, lambda url: idp.approve(
            url, "alice", auth_age=3600, browser=browser, logins=logins), "--role", "prod")
        assert rc == 0 and logins == [3600], err
        # Plain ssh cannot name the role before authenticating: the IdP reuses the hour-old
        # session (no login page), and the CA refuses it for prod-admin (max_auth_age 10m),
        # saying how to ask for a fresh one.
        logins.clear()
        key = make_user_key(tmp_path / "id_alice")
        rc, out, err = _ssh_sso(ca, key.with_suffix(".pub"), "sign --role prod-admin --json",
                                lambda url, code: idp.approve(url, "alice", browser=browser, logins=logins))
        assert rc == 4 and json.loads(out)["error"] == "reauthentication_required", err
        assert logins == [] and "KbdInteractiveDevices=role:prod-admin" in err
        # iast-ssh login --sso --role prod-admin names the role (the role:prod-admin submethod):
        # the CA asks for max_age=600 and prompt=login, the provider itself shows its login page
        # despite the session, and the fresh sign-in gets the certificate.
        rc, out, err = _iast_ssh_sso(ca, tmp_path, lambda url: idp.approve(
            url, "alice", browser=browser, logins=logins), "--role", "prod-admin")
        assert rc == 0, err
        assert logins == [0] and json.loads(out)["principals"] == ["root"]
    finally:
        browser.close()


# -- refused tokens count toward the address limit ----------------------------------------------


@pytest.mark.slow
def test_refused_tokens_count_toward_the_address_limit(tmp_path, idp):
    ca = _state(tmp_path, idp, address_failures=3).start()
    try:
        from ca.app import open_ca
        from ca.config import load_config

        key = make_user_key(tmp_path / "id_bob")
        with open_ca(load_config(ca.config_path)) as c:
            c.users.add("bob", keys=key.with_suffix(".pub").read_text())
        pub = key.with_suffix(".pub")
        # An ID token refused (mallory's email is in no allowed domain) and two workload tokens refused.
        rc, _, err = _ssh_sso(ca, pub, "sign", lambda url, code: idp.approve(url, "mallory"))
        assert rc == 255, err
        assert "not allowed" in failures(ca, "oidc")[0]
        for ref in ("refs/heads/a", "refs/heads/b"):
            assert ssh_token(ca, workload_token(idp, ref=ref), pub).returncode == 4
        # Now the address is locked: a good token is refused unchecked, and so is bob's key.
        r = ssh_token(ca, workload_token(idp), pub)
        assert r.returncode == 4, r.stderr
        assert failures(ca)[0].startswith("throttled")
        assert ca.ssh("bob", key, "whoami").returncode == 255
        assert any(e.data["key"] == "addr:127.0.0.1" for e in events(ca, "lockout")), events(ca, "lockout")
        assert not events(ca, "issued")
    finally:
        ca.stop()
