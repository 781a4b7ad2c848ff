"""CA key rotation against a real sshd whose TrustedUserCAKeys comes from ``iast-ca trust``.

    add (next: trusted, not signing) -> activate (signs; the old key stays trusted)
    -> retire (trusted no more; refused while it has unexpired certificates unless --force)
    -> retire --revoke (in the KRL: refused even where the old trust file is still installed)

and the service side: a SIGHUP makes ``iast-ca serve`` sign with the newly
activated key, and ``iast-ssh host fetch-trust`` installs the trusted set on
a host, keeping the last good file (docs/security.md, "Rotation").
"""

from __future__ import annotations

import json
import signal
import subprocess

import pytest

from ca.auth.users import UserStore
from ca.client import install_trust
from ca.errors import CAError
from ca.state import StatePaths
from ca.store import AuditLog

from .conftest import TEST_POLICY, make_key
from .service_harness import CAProcess
from .sshd_harness import IastCA, make_sshd_fixture, make_user_key
from .test_client import IAST_SSH, host_fingerprint

sshd = make_sshd_fixture(None, trust=lambda: [])


def new_ca(tmp_path) -> IastCA:
    tmp_path.mkdir(parents=True, exist_ok=True)
    policy = tmp_path / "policy.toml"
    policy.write_text(TEST_POLICY)
    return IastCA.create(tmp_path / "state", policy)


def ok(result):
    assert result.exit_code == 0, result.output
    return result


def keys(ca: IastCA) -> dict[str, dict]:
    return {r["fingerprint"]: r for r in json.loads(ok(ca.cli("key", "list", "--json")).stdout)}


def add_key(ca: IastCA, kind: str = "ed25519") -> str:
    return json.loads(ok(ca.cli("key", "add", "--type", kind, "--json")).stdout)["fingerprint"]


def audit(ca: IastCA, kind: str) -> list[dict]:
    return json.loads(ok(ca.cli("audit", "list", "--kind", kind, "--json", "--limit", "100")).stdout)


def trust_fps(ca: IastCA) -> set[str]:
    return {fp for fp, r in keys(ca).items() if r["state"] in ("next", "active", "trusted")}


def logs_in(sshd, cert) -> bool:
    r = sshd.ssh(cert.key, sshd.login_user, "true")
    return r.returncode == 0


# --------------------------------------------------------------------------
# against a real sshd


@pytest.mark.sshd
def test_rotation_keeps_every_login_during_the_overlap_and_retire_ends_the_old_key(tmp_path, sshd):
    ca = new_ca(tmp_path)
    sshd.allow_principals(sshd.login_user, ["alice"])
    old_fp = next(iter(keys(ca)))
    old_cert = ca.sign(make_user_key(tmp_path / "old"), user="alice", role="dev", ttl="1h")
    assert old_cert.ca_fingerprint == old_fp

    # add: trusted at once, signs nothing yet
    new_fp = add_key(ca, "ecdsa-p256")
    assert keys(ca)[new_fp]["state"] == "next" and keys(ca)[old_fp]["state"] == "active"
    overlap_trust = ca.trust_lines()
    assert len(overlap_trust) == 2
    sshd.set_trusted_ca_keys(overlap_trust)
    assert ca.sign(make_user_key(tmp_path / "still-old"), user="alice", role="dev").ca_fingerprint == old_fp

    # activate: the new key signs; both keys' certificates log in
    ok(ca.cli("key", "activate", new_fp))
    new_cert = ca.sign(make_user_key(tmp_path / "new"), user="alice", role="dev")
    assert new_cert.ca_fingerprint == new_fp
    assert keys(ca)[old_fp]["state"] == "trusted"
    assert logs_in(sshd, old_cert) and logs_in(sshd, new_cert)
    assert {line.split()[1] for line in ca.trust_lines()} == {line.split()[1] for line in overlap_trust}

    # retire: refused while the old key has an unexpired certificate, and nothing changes
    before = (ca.state_dir / "keyring.json").read_bytes()
    r = ca.cli("key", "retire", old_fp)
    assert r.exit_code == 2 and "2 unexpired certificate" in r.output and "--force" in r.output
    assert (ca.state_dir / "keyring.json").read_bytes() == before and audit(ca, "ca_key_retired") == []
    r = ca.cli("key", "retire", new_fp)
    assert r.exit_code == 2 and "active" in r.output

    ok(ca.cli("key", "retire", old_fp, "--force"))
    assert keys(ca)[old_fp]["state"] == "retired"
    refreshed = ca.trust_lines()
    assert len(refreshed) == 1 and refreshed[0].startswith("ecdsa-sha2-nistp256 ")
    sshd.set_trusted_ca_keys(refreshed)
    assert not logs_in(sshd, old_cert) and logs_in(sshd, new_cert)

    # each step is one audit event, naming the key
    assert audit(ca, "ca_key_added")[0]["data"]["fingerprint"] == new_fp
    act = audit(ca, "ca_key_activated")[0]["data"]
    assert (act["fingerprint"], act["previous"]) == (new_fp, old_fp)
    ret = audit(ca, "ca_key_retired")[0]["data"]
    assert (ret["fingerprint"], ret["forced"], ret["revoked"]) == (old_fp, True, False)


@pytest.mark.sshd
def test_retire_revoke_puts_the_old_key_in_the_krl_so_sshd_refuses_it_even_with_the_old_trust_file(tmp_path, sshd):
    ca = new_ca(tmp_path)
    sshd.allow_principals(sshd.login_user, ["alice"])
    sshd.set_revoked_keys(None)
    old_fp = next(iter(keys(ca)))
    old_cert = ca.sign(make_user_key(tmp_path / "old"), user="alice", role="dev")
    new_fp = add_key(ca)
    ok(ca.cli("key", "activate", new_fp))
    new_cert = ca.sign(make_user_key(tmp_path / "new"), user="alice", role="dev")
    old_trust = ca.trust_lines()  # a host that never refreshed its trust file
    sshd.set_trusted_ca_keys(old_trust)
    assert logs_in(sshd, old_cert)

    r = ca.cli("key", "retire", old_fp, "--revoke")
    assert r.exit_code == 2 and "unexpired" in r.output  # refused first: nothing revoked
    assert json.loads(ok(ca.cli("krl", "--json")).stdout)["keys"] == 0

    ok(ca.cli("key", "retire", old_fp, "--revoke", "--force", "--reason", "key file copied"))
    krl = tmp_path / "revoked.krl"
    ok(ca.cli("krl", "-o", str(krl)))
    sshd.set_revoked_keys(krl)
    assert sshd.trusted_ca_path.read_text().count("\n") == 2  # still the old, two-key trust file
    mark = sshd.log_mark()
    assert not logs_in(sshd, old_cert)
    assert "revoked" in sshd.connection_log(mark).lower()
    assert logs_in(sshd, new_cert)
    revoked = audit(ca, "revoked")[0]["data"]
    assert (revoked["kind"], revoked["value"], revoked["reason"]) == ("ca_key", old_fp, "key file copied")
    assert audit(ca, "ca_key_retired")[0]["data"]["revoked"] is True
    # a revoked key can never sign again
    r = ca.cli("key", "activate", old_fp)
    assert r.exit_code == 2 and "retired" in r.output


# --------------------------------------------------------------------------
# the keyring's rules


def test_key_list_counts_certificates_and_last_expiry(tmp_path):
    ca = new_ca(tmp_path)
    fp = next(iter(keys(ca)))
    a = ca.sign(make_user_key(tmp_path / "a"), user="alice", role="dev", ttl="1h")
    b = ca.sign(make_user_key(tmp_path / "b"), user="alice", role="dev", ttl="2h")
    row = keys(ca)[fp]
    assert (row["certificates"], row["unexpired"], row["backend"], row["state"]) == (2, 2, "file", "active")
    assert row["last_expiry"] == max(a.valid_before, b.valid_before) == b.valid_before
    new = add_key(ca)
    assert (keys(ca)[new]["certificates"], keys(ca)[new]["last_expiry"]) == (0, None)
    text = ok(ca.cli("key", "list")).stdout
    assert fp in text and "2 (2 unexpired)" in text and "next" in text


@pytest.mark.parametrize("args, message", [
    (["activate", "SHA256:nonesuch"], "no CA key"),
    (["retire", "SHA256:nonesuch"], "no CA key"),
    (["add", "--generate"], "--pkcs11"),
    (["add", "--type", "rsa-3072"], "a file key is one of"),
])
def test_bad_rotation_commands_change_nothing(tmp_path, args, message):
    ca = new_ca(tmp_path)
    before = (ca.state_dir / "keyring.json").read_bytes()
    n = len(json.loads(ok(ca.cli("audit", "list", "--json", "--limit", "1000")).stdout))
    r = ca.cli("key", *args)
    assert r.exit_code == 2 and message in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert (ca.state_dir / "keyring.json").read_bytes() == before
    assert len(json.loads(ok(ca.cli("audit", "list", "--json", "--limit", "1000")).stdout)) == n


def test_activating_the_active_or_a_retired_key_is_refused(tmp_path):
    ca = new_ca(tmp_path)
    old = next(iter(keys(ca)))
    r = ca.cli("key", "activate", old)
    assert r.exit_code == 2 and "already the active" in r.output
    new = add_key(ca)
    ok(ca.cli("key", "activate", new))
    ok(ca.cli("key", "retire", old))  # no certificates: no --force needed
    r = ca.cli("key", "activate", old)
    assert r.exit_code == 2 and "retired" in r.output
    assert trust_fps(ca) == {new}


def test_keyring_is_replaced_atomically_with_mode_0600(tmp_path):
    ca = new_ca(tmp_path)
    add_key(ca)
    ring = ca.state_dir / "keyring.json"
    assert oct(ring.stat().st_mode)[-3:] == "600"
    assert [p.name for p in ca.state_dir.iterdir() if p.name.startswith(".keyring")] == []  # no temp file left
    entries = json.loads(ring.read_text())["keys"]
    assert [k["state"] for k in entries] == ["active", "next"] and all(k["purpose"] == "user" for k in entries)


# --------------------------------------------------------------------------
# the service and the hosts


@pytest.mark.slow
def test_sighup_makes_the_service_sign_with_the_new_key_and_fetch_trust_follows(tmp_path):
    ca = new_ca(tmp_path)
    old = next(iter(keys(ca)))
    enrolled = make_key(tmp_path, name="host_enrolled")
    UserStore(AuditLog(StatePaths(ca.state_dir).db)).add("alice", keys=[enrolled.with_suffix(".pub").read_text()],
                                                         actor="test")
    service = CAProcess(ca.state_dir, ca.policy_path, workdir=tmp_path).start()
    trust = tmp_path / "etc" / "iast-user-ca.pub"
    trust.parent.mkdir()
    env = {"HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "xdg"), "PATH": "/usr/bin:/bin"}

    def fetch(*more: str) -> subprocess.CompletedProcess:
        return subprocess.run([IAST_SSH, "host", "fetch-trust", "--ca", f"127.0.0.1:{service.port}",
                               "--ca-fingerprint", host_fingerprint_of(ca), "-l", "alice", "-i", str(enrolled),
                               "-o", str(trust), "--json", *more],
                              capture_output=True, text=True, timeout=60, env=env)

    def sign(name: str) -> dict:
        r = service.ssh("alice", enrolled, "sign --json", input=make_key(tmp_path, name=name).with_suffix(".pub")
                        .read_text())
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    def hup(since: int, msg: str) -> dict:
        service.signal(signal.SIGHUP)
        return service.wait_for(msg, since=since)

    try:
        r = fetch()
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["keys"] == [old] and oct(trust.stat().st_mode)[-3:] == "644"

        # 'key add' tells the service running from this state directory (README walk: until a SIGHUP its
        # ca-keys kept the old set, so 'host fetch-trust' never saw the next key before it was activated).
        since = len(service.lines)
        new = add_key(ca)
        service.wait_for("policy reloaded", since=since)
        r = fetch()
        assert json.loads(r.stdout)["added"] == [new], r.stdout
        assert sign("before")["ca_fingerprint"] == old  # 'next' never signs

        since = len(service.lines)
        r = ca.cli("key", "activate", new)
        assert r.exit_code == 0 and "reloaded: it serves the new key set" in r.stderr, r.output
        rec = service.wait_for("signing with a new CA key", since=since)
        assert rec["fingerprint"] == new
        assert sign("after")["ca_fingerprint"] == new
        rec = hup(len(service.lines), "policy reloaded")  # a SIGHUP by hand still works, and changes nothing
        assert sign("again")["ca_fingerprint"] == new

        since = len(service.lines)
        ok(ca.cli("key", "retire", old, "--force"))
        service.wait_for("policy reloaded", since=since)
        r = fetch()
        assert json.loads(r.stdout)["removed"] == [old] and json.loads(r.stdout)["keys"] == [new]
        assert trust.read_text().split()[1] == ca.trust_lines()[0].split()[1]
    finally:
        service.stop()
    assert audit(ca, "ca_key_reloaded")[0]["data"]["active"] == new


def host_fingerprint_of(ca: IastCA) -> str:
    class _Cfg:
        state_dir = ca.state_dir

    return host_fingerprint(_Cfg)


def test_a_new_key_that_cannot_be_opened_keeps_the_old_signer(cfg):
    """SIGHUP is all or nothing: an active key that will not unlock leaves the old one signing."""
    from ca.app import open_ca
    from ca.errors import BadKey
    from ca.keys.file import generate_key
    from ca.keys.keyring import Keyring

    ca = open_ca(cfg, for_service=True)
    try:
        old = ca.authority.ca_fingerprint
        ring = ca.keyring
        entry = Keyring.new_entry(ring.state_dir, generate_key("ed25519"), b"a passphrase", "next")
        from dataclasses import replace

        ring.replace(replace(entry, state="active"), replace(ring.active, state="trusted")).save()
        with pytest.raises(BadKey, match="encrypted"):
            ca.reload_keyring()
        assert ca.authority.ca_fingerprint == old and ca.keyring.active.fingerprint == old
    finally:
        ca.close()


# --------------------------------------------------------------------------
# install_trust: the last good copy


def _line(ca: IastCA) -> str:
    return ca.trust_lines()[0]


@pytest.mark.parametrize("fetched, message", [
    ("", "no CA key"),
    ("<html>502 Bad Gateway</html>\n", "not a CA public key"),
    ("ssh-ed25519 AAAA!!notbase64 x\n", "malformed"),
    ("ssh-dss AAAAB3NzaC1kc3M= x\n", "not a CA public key"),
    ("ssh-ed25519-cert-v01@openssh.com AAAA x\n", "not a CA public key"),
])
def test_install_trust_keeps_the_last_good_file(tmp_path, fetched, message):
    ca = new_ca(tmp_path)
    out = tmp_path / "iast-user-ca.pub"
    good = _line(ca) + "\n"
    out.write_text(good)
    with pytest.raises(CAError, match=message):
        install_trust(fetched, out)
    assert out.read_text() == good
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".iast-user-ca")] == []


def test_install_trust_refuses_a_set_with_no_key_in_common_unless_replace(tmp_path):
    a, b = new_ca(tmp_path / "a"), new_ca(tmp_path / "b")
    out = tmp_path / "iast-user-ca.pub"
    install_trust(_line(a) + "\n", out)
    with pytest.raises(CAError, match="share none"):
        install_trust(_line(b) + "\n", out)
    assert out.read_text().split()[1] == _line(a).split()[1]
    update = install_trust(_line(b) + "\n", out, replace=True)
    assert update.changed and out.read_text().split()[1] == _line(b).split()[1]
    assert install_trust(_line(b) + "\n", out).changed is False


# The trust file parser reads what the network gave: fuzzed (docs/security.md rule 21).

from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from ca.client.trust import parse_trust_lines  # noqa: E402


@given(st.text(max_size=400))
def test_trust_parser_on_arbitrary_text(text):
    try:
        keys = parse_trust_lines(text)
    except CAError as e:
        assert "\n" not in str(e)
        return
    assert keys and all(fp.startswith("SHA256:") for fp in keys)
