"""Issue 16, the first hour: a new user and a new administrator, findings 1-5 and 8, end to end.

A real ``iast-ca serve``, a real ``ssh-agent`` and the real ``ssh`` client
(the zero-install path); ``iast-ssh`` and ``iast-ca`` run as installed
console scripts. The fixtures are tests/test_client.py's.
"""

from __future__ import annotations

import json
import os
import subprocess
import tomllib
from pathlib import Path

import pytest

from ca.auth.users import UserStore
from ca.client import Client
from ca.errors import AuthenticationFailed
from ca.state import StatePaths
from ca.store import AuditLog

from .conftest import make_key
from .service_harness import IAST_CA
from .test_client import (  # noqa: F401 - fixtures
    CHEAP,
    agent,
    ca,
    ca_args,
    env,
    events,
    host_fingerprint,
    iast_ssh,
    ssh_add,
    users,
)


def iast_ca(ca, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([IAST_CA, "--config", str(ca.config_path), *args], capture_output=True, text=True,
                          timeout=60)


def client_config(env: dict) -> dict:
    return tomllib.loads((Path(env["XDG_CONFIG_HOME"]) / "iast-ssh" / "config.toml").read_text())


def agent_certs(env: dict) -> list[str]:
    return [line for line in ssh_add(env, "-L").stdout.splitlines() if "-cert-v01@openssh.com " in line]


# --------------------------------------------------------------------------
# Findings 4 and 5: the client that remembers


def test_roles_after_login_works_with_no_flags_and_uses_the_certificate(ca, cfg, users, env, tmp_path):
    key, _ = users["alice"]
    r = iast_ssh(env, "login", *ca_args(ca, cfg), "-l", "alice", "-i", str(key))
    assert r.returncode == 0, r.stderr
    saved = client_config(env)
    assert saved["user"] == "alice" and saved["identity"] == str(key)  # remembered (the config takes identity)
    assert saved["ca_fingerprint"] == host_fingerprint(cfg)

    r = iast_ssh(env, "roles", "--json")  # no flag at all
    assert r.returncode == 0, r.stderr
    assert [v["role"] for v in json.loads(r.stdout)] == ["dev", "prod-readonly"]
    for command in (["whoami", "--json"], ["requests", "--json"]):
        r = iast_ssh(env, *command)
        assert r.returncode == 0, (command, r.stderr)
    who = json.loads(iast_ssh(env, "whoami", "--json").stdout)
    # The certificate just issued proved who we are (rule 80), with no second factor.
    assert who["user"] == "alice" and who["auth_methods"] == ["certificate"] and who["mfa"] is False
    config = iast_ssh(env, "config", "--offline")
    assert config.returncode == 0, config.stderr

    # Without the enrolled key at all (another config, the agent's certificate only): still alice.
    bare = tmp_path / "bare.toml"
    c = Client(f"127.0.0.1:{ca.port}", ca_fingerprint=host_fingerprint(cfg), user="alice",
               agent_path=env["SSH_AUTH_SOCK"], config_file=bare)
    assert c.whoami()["auth_methods"] == ["certificate"]
    # ... but a certificate never gets another certificate (no chain outliving the first login).
    pub = make_key(tmp_path, name="next").with_suffix(".pub").read_text()
    with pytest.raises(AuthenticationFailed, match="cannot get another certificate"):
        c._run(lambda conn: c._json(conn, ["sign", "--json"], pub))
    with pytest.raises(AuthenticationFailed, match="cannot get another certificate"):
        c._run(lambda conn: c._json(conn, ["approve", "req-aaaaaaaaaa", "--json"]))

    # A revoked certificate no longer logs in, and status marks it (from the KRL it fetched).
    serial = max(e.serial for e in events(cfg, "issued"))
    assert iast_ca(ca, "revoke", "--serial", str(serial), "--reason", "test").returncode == 0
    with pytest.raises(AuthenticationFailed):
        Client(f"127.0.0.1:{ca.port}", ca_fingerprint=host_fingerprint(cfg), user="alice",
               agent_path=env["SSH_AUTH_SOCK"], config_file=bare).whoami()
    before = json.loads(iast_ssh(env, "status", "--json").stdout)["certificates"]
    assert [h["revoked"] for h in before] == [False]  # the KRL login fetched predates the revocation
    r = iast_ssh(env, "status", "--refresh")  # authenticates with the remembered key now
    assert r.returncode == 0, r.stderr
    assert "REVOKED" in r.stdout
    (held,) = json.loads(iast_ssh(env, "status", "--json").stdout)["certificates"]
    assert held["revoked"] is True and held["seconds_left"] > 0


def test_login_replaces_the_same_roles_certificate_and_logout_takes_a_role(ca, cfg, users, env, tmp_path):
    key, _ = users["alice"]
    conn = [*ca_args(ca, cfg), "-l", "alice", "-i", str(key)]
    for _ in range(2):
        assert iast_ssh(env, "login", *conn).returncode == 0
    (only,) = agent_certs(env)  # the second dev login replaced the first
    r = iast_ssh(env, "login", "--role", "prod-readonly", "--reason", "INC-1")
    assert r.returncode == 0, r.stderr
    assert len(agent_certs(env)) == 2  # another role: kept beside it
    issued = [e for e in events(cfg, "issued")]
    assert [e.data["auth_methods"] for e in issued] == [["publickey"]] * 3  # login never uses a certificate

    r = iast_ssh(env, "logout", "--role", "dev")
    assert r.returncode == 0, r.stderr
    (left,) = agent_certs(env)
    assert left != only and ":prod-readonly:" in left

    # Files: one pair per role, so a second role does not overwrite the first.
    out = tmp_path / "files"
    for role, more in (("dev", []), ("prod-readonly", ["--reason", "INC-2"]), ("dev", [])):
        r = iast_ssh(env, "login", "--no-agent", "--out-dir", str(out), "--role", role, *more)
        assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "id_ed25519-dev", "id_ed25519-dev-cert.pub", "id_ed25519-prod-readonly", "id_ed25519-prod-readonly-cert.pub"]
    st = json.loads(iast_ssh(env, "status", "--json", "--out-dir", str(out)).stdout)["certificates"]
    assert sorted(h["role"] for h in st if h["where"] == "files") == ["dev", "prod-readonly"]
    r = iast_ssh(env, "logout", "--role", "prod-readonly", "--out-dir", str(out))
    assert sorted(p.name for p in out.iterdir()) == ["id_ed25519-dev", "id_ed25519-dev-cert.pub"]


def test_approve_after_login_uses_the_remembered_key_not_the_certificate(ca, cfg, users, env, tmp_path):
    # README "Temporary production access", walked: carol logged in with -i (so she holds a certificate
    # and her profile remembers the key), then 'iast-ssh approve ID' with no flags. The certificate may not
    # decide (rule 80), so the client must prove carol with her remembered key, not offer the certificate.
    alice_key, _ = users["alice"]
    carol_key, _ = users["carol"]
    carol_env = dict(env, HOME=str(tmp_path / "carol"), XDG_CONFIG_HOME=str(tmp_path / "carol-xdg"))
    Path(carol_env["HOME"]).mkdir()
    with open(cfg.policy_path, "a") as f:
        f.write('\n[roles.prod-admin]\nmembers = ["group:sre"]\nprincipals = ["root"]\nmax_ttl = "15m"\n'
                'require_reason = true\napproval = { approvers = ["group:security"], required = 1 }\n')
    r = iast_ca(ca, "reload")
    assert r.returncode == 0, r.stderr
    assert iast_ssh(env, "login", *ca_args(ca, cfg), "-l", "alice", "-i", str(alice_key)).returncode == 0
    r = iast_ssh(env, "request", "--role", "prod-admin", "--ttl", "10m", "--reason", "INC-1", "--json")
    assert r.returncode == 0, r.stderr
    request_id = json.loads(r.stdout)["id"]
    r = iast_ssh(carol_env, "login", "--no-agent", *ca_args(ca, cfg), "-l", "carol", "-i", str(carol_key))
    assert r.returncode == 0, r.stderr
    r = iast_ssh(carol_env, "approve", request_id, "--comment", "ok")
    assert r.returncode == 0, r.stderr
    (approved,) = events(cfg, "request_approved")
    assert approved.data["approver"] == "carol" and approved.data["auth_methods"] == ["publickey"]
    r = iast_ssh(env, "login", "--role", "prod-admin")
    assert r.returncode == 0, r.stderr


def test_host_commands_leave_the_users_profile_alone(ca, cfg, users, env, tmp_path):
    # README walk: as root, 'iast-ssh host fetch-krl -l krl-web1 -i /etc/ssh/ssh_host_ed25519_key' saved the
    # host key as root's own 'identity' (and the host's user name), so root's next 'iast-ssh login' logged in
    # as the host. A host's settings are its command line; nothing goes into the client profile.
    key, _ = users["alice"]  # stands in for the host's enrolled refresh identity
    conn = [*ca_args(ca, cfg), "-l", "alice", "-i", str(key)]
    r = iast_ssh(env, "host", "fetch-krl", *conn, "-o", str(tmp_path / "revoked.krl"))
    assert r.returncode == 0, r.stderr
    r = iast_ssh(env, "host", "fetch-trust", *conn, "-o", str(tmp_path / "ca.pub"))
    assert r.returncode == 0, r.stderr
    r = iast_ssh(env, "host", "check", *conn, "--config", str(tmp_path / "no-such-sshd_config"))
    assert "saved" not in r.stderr
    assert not (Path(env["XDG_CONFIG_HOME"]) / "iast-ssh" / "config.toml").exists()


def test_profiles_keep_each_cas_pin(tmp_path):
    from ca.client.config import ClientConfig, Profile, load_config, save_config
    from ca.errors import ConfigError

    path = tmp_path / "config.toml"
    fp = "SHA256:" + "A" * 43
    save_config(ClientConfig(ca="a:2222", ca_fingerprint=fp, user="alice", identity="/k", role="dev",
                             profiles=(("lab", Profile(ca="b:2222", user="al")),)), path)
    c = Client("b:2222", config_file=path)
    assert c.profile_name == "lab" and c.user == "al" and c.pin is None and c.identity is None
    c = Client(config_file=path)
    assert c.pin == fp and c.user == "alice" and str(c.identity) == "/k"
    assert Client(config_file=path, profile="lab").address == "b:2222"
    path.write_text('[profiles.x]\nca = "a"\nidentty = "/k"\n')
    with pytest.raises(ConfigError, match=r"profiles\.x\.unknown field 'identty'"):
        load_config(path)


# --------------------------------------------------------------------------
# Findings 1 and 2: first contact through plain ssh, one name for each key


def test_trust_ca_writes_the_known_hosts_file_ssh_reads_not_one_under_home(monkeypatch, tmp_path):
    # README walk: with HOME pointing elsewhere (sudo -E, a scratch HOME), trust-ca wrote $HOME/.ssh/known_hosts
    # while ssh, which takes ~ from the passwd entry, kept saying "Host key verification failed". The default
    # is the file ssh itself names (ssh -G), whatever $HOME says.
    import pwd

    from ca.client.known_hosts import ssh_known_hosts_file

    monkeypatch.setenv("HOME", str(tmp_path))
    path = ssh_known_hosts_file("127.0.0.1", 2222)
    assert not path.is_relative_to(tmp_path)
    shown = subprocess.run(["ssh", "-G", "-p", "2222", "127.0.0.1"], capture_output=True, text=True,
                           stdin=subprocess.DEVNULL, env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    (line,) = [x for x in shown.stdout.splitlines() if x.startswith("userknownhostsfile ")]
    assert str(path) == line.split()[1]  # the one ssh reads first
    assert path.is_relative_to(pwd.getpwuid(os.getuid()).pw_dir)


def test_trust_ca_then_plain_ssh_signs(ca, cfg, users, env, tmp_path):
    key, _ = users["alice"]
    known = tmp_path / "known_hosts"
    fp = host_fingerprint(cfg)
    info = iast_ca(ca, "info")
    assert f"service host key {fp}" in info.stdout and "\nhost key " not in info.stdout
    line = iast_ca(ca, "info", "--known-hosts", "--host", "127.0.0.1").stdout.strip()
    host_key = StatePaths(cfg.state_dir).host_key.with_suffix(".pub").read_text().split()
    assert line == f"[127.0.0.1]:2222 {host_key[0]} {host_key[1]}"  # the config's listen port

    wrong = iast_ssh(env, "trust-ca", f"127.0.0.1:{ca.port}", "--ca-fingerprint", "SHA256:" + "B" * 43,
                     "--known-hosts", str(known))
    assert wrong.returncode == 1 and "does not match the service host key" in wrong.stderr
    assert not known.exists()
    r = iast_ssh(env, "trust-ca", f"127.0.0.1:{ca.port}", "--ca-fingerprint", fp, "--known-hosts", str(known))
    assert r.returncode == 0, r.stderr
    assert known.read_text() == f"[127.0.0.1]:{ca.port} {host_key[0]} {host_key[1]}\n"
    again = iast_ssh(env, "trust-ca", f"127.0.0.1:{ca.port}", "--ca-fingerprint", fp, "--known-hosts", str(known))
    assert "already had" in again.stdout and len(known.read_text().splitlines()) == 1

    ssh = ["ssh", "-F", "/dev/null", "-p", str(ca.port), "-i", str(key), "-o", "IdentitiesOnly=yes",
           "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known}",
           "-o", "GlobalKnownHostsFile=/dev/null", "alice@127.0.0.1", "sign"]
    new = make_key(tmp_path, name="fresh")
    s = subprocess.run(ssh, stdin=new.with_suffix(".pub").open(), capture_output=True, text=True, timeout=30)
    assert s.returncode == 0, s.stderr
    assert s.stdout.startswith("ssh-ed25519-cert-v01@openssh.com ")

    # Finding 8: the private key piped by mistake is refused, and no byte of it is kept anywhere.
    secret = new.read_text()
    s = subprocess.run(ssh, stdin=new.open(), capture_output=True, text=True, timeout=30)
    assert s.returncode != 0 and "that is a private key" in s.stderr
    body = "".join(secret.splitlines()[1:-1])
    db = StatePaths(cfg.state_dir).db.read_bytes()
    assert body[:40].encode() not in db and not any(body[:40] in line for line in ca.lines)
    (refusal,) = [e for e in events(cfg) if e.kind == "denied" or e.kind == "refused"][-1:]
    assert "private key" in json.dumps(refusal.data)


# --------------------------------------------------------------------------
# Finding 8: errors that say what happened


def test_errors_say_what_happened(ca, cfg, users, env, tmp_path):
    key, _ = users["alice"]
    r = iast_ssh(env, "roles", "--ca", "nosuchhost.invalid:2222", "--ca-fingerprint", "SHA256:" + "A" * 43,
                 "-i", str(key))
    assert r.returncode == 1 and "cannot resolve host nosuchhost.invalid" in r.stderr, r.stderr
    assert "Unknown error" not in r.stderr
    with socket_closed_port() as port:
        r = iast_ssh(env, "roles", "--ca", f"127.0.0.1:{port}", "-i", str(key))  # no pin either
    assert r.returncode == 1 and "Connection refused" in r.stderr and "not pinned" not in r.stderr, r.stderr
    # ... also with no key at all (README walk: a typo'd port said "no way to authenticate", exit 4)
    with socket_closed_port() as port:
        r = iast_ssh(env, "roles", "--ca", f"127.0.0.1:{port}", "--ca-fingerprint", host_fingerprint(cfg))
    assert r.returncode == 1 and "Connection refused" in r.stderr, r.stderr
    r = iast_ssh(env, "roles", *ca_args(ca, cfg), "-l", "alice")  # the CA answers: now the missing key is the news
    assert r.returncode == 4 and "no way to authenticate" in r.stderr, r.stderr
    r = iast_ssh(env, "roles", *ca_args(ca, cfg), "-l", "alice", "-i", str(key) + ".pub")
    assert r.returncode != 0 and f"{key}.pub is a public key: give the private key with -i ({key})" in r.stderr
    r = iast_ssh(env, "host", "fetch-krl", *ca_args(ca, cfg), "-l", "alice", "-i", str(key),
                 "-o", "/nonexistent/x.krl")
    assert r.returncode == 1 and "cannot write /nonexistent/x.krl" in r.stderr and ".tmp" not in r.stderr

    # --otp for a user who has no TOTP: said so (to that user, authenticated: rule 85).
    bob = make_key(tmp_path, name="bob")
    store = UserStore(AuditLog(StatePaths(cfg.state_dir).db), hasher=CHEAP)
    store.add("bob", keys=[bob.with_suffix(".pub").read_text()], actor="test")
    r = iast_ssh(env, "login", *ca_args(ca, cfg), "-l", "bob", "-i", str(bob), "--otp", "123456")
    assert r.returncode == 4 and "bob has no one-time code (TOTP) enrolled" in r.stderr, r.stderr
    r = iast_ssh(env, "login", *ca_args(ca, cfg), "-l", "alice", "-i", str(key), "--otp", "000000")
    assert r.returncode == 4 and "no one-time code" not in r.stderr  # alice has one: the plain refusal


class socket_closed_port:
    """A loopback port nobody listens on."""

    def __enter__(self) -> int:
        import socket

        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        return self.port

    def __exit__(self, *exc) -> None:
        pass


# --------------------------------------------------------------------------
# Self-enrolment (rule 86): invite, then the person enrols through plain ssh, or through iast-ssh


def _askpass(tmp_path: Path, answer: str) -> dict:
    script = tmp_path / "askpass.sh"
    script.write_text(f"#!/bin/sh\necho '{answer}'\n")
    script.chmod(0o700)
    return {"SSH_ASKPASS": str(script), "SSH_ASKPASS_REQUIRE": "force", "DISPLAY": ":0"}


def test_self_enrolment_through_plain_ssh_then_login(ca, cfg, users, env, tmp_path):
    inv = iast_ca(ca, "user", "invite", "dana", "--ttl", "30m")
    assert inv.returncode == 0, inv.stderr
    code = inv.stdout.strip()
    assert len(code) == 29 and "Created user dana" in inv.stderr
    known = tmp_path / "known_hosts"
    assert iast_ssh(env, "trust-ca", f"127.0.0.1:{ca.port}", "--ca-fingerprint", host_fingerprint(cfg),
                    "--known-hosts", str(known)).returncode == 0
    key = make_key(tmp_path, name="dana")
    ssh = ["ssh", "-F", "/dev/null", "-p", str(ca.port), "-o", "KbdInteractiveDevices=enrol",
           "-o", "PreferredAuthentications=keyboard-interactive", "-o", "StrictHostKeyChecking=yes",
           "-o", f"UserKnownHostsFile={known}", "-o", "GlobalKnownHostsFile=/dev/null", "-o", "NumberOfPasswordPrompts=1",
           "dana@127.0.0.1", "enroll", "--totp", "--json"]
    run_env = {**env, **_askpass(tmp_path, code.lower())}  # case and dashes do not matter
    r = subprocess.run(ssh, stdin=key.with_suffix(".pub").open(), capture_output=True, text=True, env=run_env,
                       timeout=30)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["user"] == "dana" and len(got["keys"]) == 1 and got["has_totp"] and got["totp_secret"]
    # The secret went to dana only: not into any event, nor the service's log.
    assert got["totp_secret"] not in json.dumps([e.data for e in events(cfg)])
    assert not any(got["totp_secret"] in line for line in ca.lines)
    kinds = [e.kind for e in events(cfg) if e.user == "dana"]
    assert kinds == ["enrolment_code_used", "totp_reset", "key_added", "enrolment_code_created", "user_added"]
    # The key's comment is kept, as 'user add' and 'key-add' keep it (README walk: 'user show' listed a
    # self-enrolled key bare).
    shown = iast_ca(ca, "user", "show", "dana").stdout
    assert " ssh-ed25519 test (added " in shown, shown

    # The code works once; and it is no password for anything else.
    again = subprocess.run(ssh, stdin=key.with_suffix(".pub").open(), capture_output=True, text=True, env=run_env,
                           timeout=30)
    assert again.returncode != 0 and "Permission denied" in again.stderr
    # Now dana logs in with the key she registered, and the profile remembers it.
    r = iast_ssh(env, "login", *ca_args(ca, cfg), "-l", "dana", "-i", str(key))
    assert r.returncode == 0, r.stderr
    assert iast_ssh(env, "roles").returncode == 0


def test_self_enrolment_with_iast_ssh_and_a_wrong_code(ca, cfg, users, env, tmp_path):
    code = iast_ca(ca, "user", "invite", "erin").stdout.strip()
    key = make_key(tmp_path, name="erin")
    conn = [*ca_args(ca, cfg), "-l", "erin"]
    r = iast_ssh(env, "enroll", *conn, "--code", "AAAA-AAAA-AAAA-AAAA-AAAA-AAAA", "--key", str(key) + ".pub")
    assert r.returncode == 4, r.stderr  # a wrong code: an authentication failure, nothing registered
    assert json.loads(iast_ca(ca, "user", "show", "erin", "--json").stdout)["keys"] == []
    r = iast_ssh(env, "enroll", *conn, "--code", code, "--key", str(key))  # the private key: never sent
    assert r.returncode != 0 and "that is a private key" in r.stderr
    r = iast_ssh(env, "enroll", *conn, "--code", code, "--key", str(key) + ".pub", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["keys"] and json.loads(r.stdout)["totp_secret"] is None
    # An enrolment login runs nothing but enroll.
    code2 = iast_ca(ca, "user", "invite", "erin").stdout.strip()
    c = Client(f"127.0.0.1:{ca.port}", ca_fingerprint=host_fingerprint(cfg), user="erin",
               config_file=tmp_path / "c.toml")
    c.enrol_code = code2
    with pytest.raises(AuthenticationFailed, match="for 'enroll' only"):
        c._run(lambda conn: c._json(conn, ["roles", "--json"]), certificates=False)
