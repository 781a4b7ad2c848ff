"""``iast-ca`` as an administrator uses it: exit codes, one-line errors, files and modes."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from ca.cli.admin import cli

from .conftest import keygen_L, make_key


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.fixture
def ca(cli_run):
    r = cli_run("init")
    assert r.exit_code == 0, r.output
    return cli_run


def test_init_creates_a_private_state_dir(cli_run):
    r = cli_run("init", "--json")
    assert r.exit_code == 0
    info = json.loads(r.stdout)
    state = cli_run.state
    assert mode(state) == 0o700
    keyring = json.loads((state / "keyring.json").read_text())
    (entry,) = keyring["keys"]
    assert entry["state"] == "active" and entry["fingerprint"] == info["ca_fingerprint"]
    for secret in (state / "ca-keys" / entry["name"], state / "audit-key", state / "host-key", state / "keyring.json"):
        assert mode(secret) == 0o600, secret
    assert info["audit_key_fingerprint"] != info["ca_fingerprint"]
    assert (state / "ca.db").exists()


def test_init_refuses_to_overwrite(ca):
    before = (ca.state / "keyring.json").read_text()
    r = ca("init")
    assert r.exit_code == 1
    assert "a CA already exists" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert (ca.state / "keyring.json").read_text() == before


def test_init_rejects_unknown_key_type(cli_run):
    r = cli_run("init", "--key-type", "dsa")
    assert r.exit_code == 2
    assert not cli_run.state.exists()


def test_trust_formats(ca):
    keyring = json.loads((ca.state / "keyring.json").read_text())
    public = keyring["keys"][0]["public"]
    assert ca("trust").stdout.strip() == public



def test_trust_known_hosts_never_names_the_user_ca_key(ca):
    """Finding 3 (issue 16): known_hosts gets the host CA key, for the host policy's names; the CA key
    that signs user certificates in an active '@cert-authority *' line would let it vouch for hosts."""
    public = json.loads((ca.state / "keyring.json").read_text())["keys"][0]["public"]
    r = ca("trust", "--format", "known-hosts")
    assert public.split()[1] not in r.stdout
    assert "@cert-authority *" not in r.stdout
    if r.exit_code == 0:
        assert r.stdout.startswith("@cert-authority ") and r.stdout.strip() == ca("trust", "--hosts").stdout.strip()
    else:
        assert r.exit_code == 2 and "host" in r.output and r.stdout == ""  # no host CA or host role: said so


def test_sign_writes_a_certificate(ca, tmp_path):
    key = make_key(tmp_path)
    out = tmp_path / "alice-cert.pub"
    r = ca("sign", "--allow-unenrolled", "--user", "alice", "--role", "dev", "--ttl", "2h", "-o", str(out), str(key) + ".pub")
    assert r.exit_code == 0, r.output
    assert "signed serial 1 (iast:alice:dev:1) for alice" in r.stderr
    L = keygen_L(out)
    assert L["principals"] == ["alice"] and L["Serial"] == "1"


def test_sign_to_stdout_and_json(ca, tmp_path):
    key = make_key(tmp_path)
    r = ca("sign", "--allow-unenrolled", "--user", "alice", str(key) + ".pub")
    assert r.stdout.startswith("ssh-ed25519-cert-v01@openssh.com ")
    r = ca("sign", "--allow-unenrolled", "--user", "alice", "--json", "-o", str(tmp_path / "c.pub"), str(key) + ".pub")
    data = json.loads(r.stdout)
    assert data["serial"] == 2 and data["principals"] == ["alice"] and data["role"] == "dev"


@pytest.mark.parametrize("args,message", [
    (["--user", "dave", "--role", "prod-readonly", "--reason", "x"], "may not use role prod-readonly"),
    (["--user", "alice", "--role", "nope"], "no such role 'nope'"),
    (["--user", "alice", "--role", "prod-readonly"], "requires a reason"),
    (["--user", "alice", "--role", "prod-readonly", "--reason", "x", "--ttl", "1h"], "30m"),
    (["--user", "Alice Smith"], "not a valid user name"),
])
def test_denials_exit_3_write_nothing_and_are_audited(ca, tmp_path, args, message):
    key = make_key(tmp_path)
    out = tmp_path / "out-cert.pub"
    r = ca("sign", "--allow-unenrolled", *args, "-o", str(out), str(key) + ".pub")
    assert r.exit_code == 3, r.output
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert r.stdout == ""
    assert not out.exists()
    events = json.loads(ca("audit", "list", "--kind", "denied", "--json").stdout)
    assert len(events) == 1 and message in events[0]["data"]["message"]


def test_offline_mfa_role_is_recorded_as_the_administrators_decision(ca, tmp_path):
    key = make_key(tmp_path)
    r = ca("sign", "--allow-unenrolled", "--user", "carol", "--role", "breakglass", "--reason", "INC-9", str(key) + ".pub")
    assert r.exit_code == 0, r.output
    (event,) = json.loads(ca("audit", "list", "--kind", "issued", "--json").stdout)
    assert event["data"]["auth_methods"] == ["admin-offline"]
    assert event["data"]["operator"]  # who ran iast-ca
    assert event["data"]["principals"] == ["root"]


@pytest.mark.parametrize("args", [["--ttl", "forever"], ["--ttl", "0s"]])
def test_usage_errors_exit_2(ca, tmp_path, args):
    key = make_key(tmp_path)
    r = ca("sign", "--allow-unenrolled", "--user", "alice", *args, str(key) + ".pub")
    assert r.exit_code == 2


def test_bad_key_file_is_an_error(ca, tmp_path):
    bad = tmp_path / "bad.pub"
    bad.write_text("ssh-dss AAAAB3NzaC1kc3MAAACBAP")
    r = ca("sign", "--allow-unenrolled", "--user", "alice", str(bad))
    assert r.exit_code == 1 and "DSA keys are refused" in r.stderr
    r = ca("sign", "--allow-unenrolled", "--user", "alice", str(tmp_path / "missing.pub"))
    assert r.exit_code == 2


def test_sign_without_a_ca(cli_run, tmp_path):
    key = make_key(tmp_path)
    r = cli_run("sign", "--allow-unenrolled", "--user", "alice", str(key) + ".pub")
    assert r.exit_code == 1 and "run 'iast-ca init' first" in r.stderr


def test_encrypted_ca_key(cli_run, tmp_path, monkeypatch):
    pw = tmp_path / "pass"
    pw.write_text("correct horse battery staple\n")
    assert cli_run("--passphrase-file", str(pw), "init").exit_code == 0
    keyfile = next((cli_run.state / "ca-keys").iterdir())
    assert b"aes256-ctr" in __import__("base64").b64decode("".join(keyfile.read_text().splitlines()[1:-1]))
    key = make_key(tmp_path)
    r = cli_run("sign", "--allow-unenrolled", "--user", "alice", str(key) + ".pub")
    assert r.exit_code == 1 and "is encrypted" in r.stderr
    wrong = tmp_path / "wrong"
    wrong.write_text("nope")
    r = cli_run("--passphrase-file", str(wrong), "sign", "--allow-unenrolled", "--user", "alice", str(key) + ".pub")
    assert r.exit_code == 1 and "wrong passphrase" in r.stderr
    assert "correct horse" not in r.output
    r = cli_run("--passphrase-file", str(pw), "sign", "--allow-unenrolled", "--user", "alice", str(key) + ".pub")
    assert r.exit_code == 0, r.output
    # Under systemd the passphrase arrives as a credential.
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "ca-passphrase").write_text("correct horse battery staple")
    r = cli_run("sign", "--allow-unenrolled", "--user", "alice", str(key) + ".pub", env={"CREDENTIALS_DIRECTORY": str(creds)})
    assert r.exit_code == 0, r.output


def test_policy_check(ca, tmp_path):
    r = ca("policy", "check")
    assert r.exit_code == 0 and "OK, 3 roles" in r.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text('[roles.ops]\nmembers = ["*"]\nprincipals = []\n')
    r = ca("policy", "check", str(bad))
    assert r.exit_code == 1
    assert "bad.toml" in r.stderr and "roles.ops.principals" in r.stderr


def test_policy_explain(ca):
    r = ca("policy", "explain", "alice")
    lines = dict(line.split(":", 1) for line in r.stdout.splitlines())
    assert lines["dev"].startswith(" yes (default) - principals alice")
    assert "force-command /usr/local/bin/prod-readonly-shell" in lines["prod-readonly"]
    assert lines["breakglass"].startswith(" no")
    data = json.loads(ca("policy", "explain", "dave", "--role", "prod-readonly", "--json").stdout)
    assert data[0]["allowed"] is False and data[0]["reasons"]


def test_audit_list_show_verify(ca, tmp_path):
    key = make_key(tmp_path)
    for user in ("alice", "bob"):
        ca("sign", "--allow-unenrolled", "--user", user, "-o", str(tmp_path / f"{user}-cert.pub"), str(key) + ".pub")
    r = ca("audit", "list")
    assert r.exit_code == 0
    assert r.stdout.splitlines()[0].split() == ["ID", "TIME", "KIND", "USER", "ROLE", "SERIAL", "DETAIL"]
    assert r.stdout.splitlines()[1].split()[2:6] == ["issued", "bob", "dev", "2"]
    csv_lines = ca("audit", "list", "--user", "alice", "--csv").stdout.splitlines()
    assert csv_lines[0].startswith("id,ts,kind,user,role,serial,key_id")
    assert len(csv_lines) == 2 and ",alice,dev,1," in csv_lines[1]
    shown = json.loads(ca("audit", "show", "--serial", "2", "--json").stdout)
    assert shown["user"] == "bob" and shown["key_id"] == "iast:bob:dev:2"
    assert ca("audit", "show").exit_code == 2
    assert ca("audit", "show", "--serial", "99").exit_code == 1
    assert ca("audit", "list", "--since", "yesterday-ish").exit_code == 2
    assert ca("audit", "list", "--since", "1h", "--json").stdout.count('"kind"') == 3
    r = ca("audit", "verify")
    assert r.exit_code == 0 and r.stdout.startswith("OK: 3 events")


def test_audit_verify_and_checkpoint_catch_tampering(ca, tmp_path):
    key = make_key(tmp_path)
    for _ in range(3):
        ca("sign", "--allow-unenrolled", "--user", "alice", "-o", str(tmp_path / "c.pub"), str(key) + ".pub")
    cp = tmp_path / "cp.txt"
    r = ca("audit", "checkpoint", "-o", str(cp))
    assert r.exit_code == 0 and "checkpoint of 4 events" in r.stdout
    assert ca("audit", "verify", "--checkpoint", str(cp)).exit_code == 0
    # Cut the tail, after dropping the append-only triggers.
    conn = sqlite3.connect(ca.state / "ca.db", isolation_level=None)
    conn.execute("DROP TRIGGER events_no_delete")
    conn.execute("DELETE FROM events WHERE id >= 3")
    r = ca("audit", "verify")  # nothing inside the chain is wrong, but the certificates table outlived it
    assert r.exit_code == 1 and "certificates serial 2: has no issued event" in r.stderr
    r = ca("audit", "verify", "--checkpoint", str(cp))
    assert r.exit_code == 1 and "truncated: the checkpoint covers 4 events, the log has 2" in r.stderr
    conn.execute("DROP TRIGGER events_no_update")
    conn.execute("UPDATE events SET role = 'prod-readonly' WHERE id = 2")
    r = ca("audit", "verify")
    assert r.exit_code == 1 and "event 2" in r.stderr


def test_config_file_and_env(tmp_path, policy_file):
    conf = tmp_path / "ca.toml"
    conf.write_text(f'state_dir = "st"\npolicy = "{policy_file}"\n[signing]\nclock_skew = "30s"\n')
    runner = CliRunner()
    r = runner.invoke(cli, ["--config", str(conf), "init"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "st" / "keyring.json").exists()  # relative to the config file
    key = make_key(tmp_path)
    r = runner.invoke(cli, ["sign", "--allow-unenrolled", "--user", "alice", "--json", str(key) + ".pub"], env={"IAST_CA_CONFIG": str(conf)})
    cert = json.loads(r.stdout)
    assert cert["certificate"].startswith("ssh-ed25519-cert-v01@openssh.com ")
    assert cert["valid_before"] - cert["valid_after"] == 3600 + 30
    conf.write_text('state_dir = "st"\nstate_dri = "typo"\n')
    r = runner.invoke(cli, ["--config", str(conf), "trust"])
    assert r.exit_code == 1 and "state_dri: unknown field" in r.stderr


@pytest.mark.parametrize("text,message", [
    ('[signing]\nclock_skew = "10m"', "signing.clock_skew: expected at most 300s"),
    ('[signing]\nmin_rsa_bits = 1024', "signing.min_rsa_bits"),
    ('[signing]\nprincipal_pattern = ".*"', "signing.principal_pattern: must not match"),
    ('[server]\nlisten = "nowhere"', "server.listen: expected HOST:PORT"),
    ("state_dir = ", "not valid TOML"),
])
def test_config_errors_name_the_field(tmp_path, text, message):
    conf = tmp_path / "ca.toml"
    conf.write_text(text)
    r = CliRunner().invoke(cli, ["--config", str(conf), "trust"])
    assert r.exit_code == 1 and message in r.stderr and str(conf) in r.stderr


def test_shipped_config_examples_work():
    root = Path(__file__).resolve().parent.parent
    r = CliRunner().invoke(cli, ["--config", str(root / "config" / "ca.toml"), "--policy",
                                 str(root / "config" / "policy.toml"), "policy", "check"])
    assert r.exit_code == 0, r.output
    assert "warning" not in r.stderr, r.stderr  # README walk: the documented example warned about itself


def test_config_example_documents_every_field_of_the_readme_table():
    # README "Configuration": "config/ca.toml documents every field". The walk found `database` and
    # `metrics.listen` missing from it.
    import re

    root = Path(__file__).resolve().parent.parent
    readme = (root / "README.md").read_text()
    table = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    fields = [f for row in re.findall(r"^\| ((?:`[a-z_.]+`(?:, )?)+) \|", table, re.M)
              for f in re.findall(r"`([a-z_.]+)`", row)]
    assert "database" in fields and "metrics.listen" in fields
    example = (root / "config" / "ca.toml").read_text()
    section, seen = "", set()
    for line in example.splitlines():
        line = line.lstrip("# ").strip()
        if m := re.fullmatch(r"\[([a-z_]+)\]", line):
            section = m.group(1)
        elif m := re.match(r"([a-z_]+) = ", line):
            seen.add(f"{section}.{m.group(1)}" if section else m.group(1))
    assert "throttle.max_backoff" in fields
    for field in fields:
        assert field in seen, f"{field} is in the README's table but not in config/ca.toml"


def test_make_run_main_job(tmp_path):
    """What `make run` runs: a fresh CA on first run, then the service, with the next steps printed."""
    import signal
    import time

    exe = Path(os.sys.executable).parent / "iast-ca"
    proc = subprocess.Popen([str(exe), "--state-dir", str(tmp_path / "var"), "run", "--listen", "127.0.0.1:0"],
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    seen, deadline = [], time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        seen.append(line)
        if "Ctrl-C stops the CA" in line:
            break
    text = "".join(seen)
    assert "Created a new CA" in text and '"msg": "listening"' in text
    fp = json.loads(CliRunner().invoke(cli, ["--state-dir", str(tmp_path / "var"), "info", "--json"]).stdout)
    assert f"--ca-fingerprint {fp['host_key_fingerprint']}" in text
    assert "user add" in text and "iast-ssh login" in text
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0


def test_audit_export_with_cursor(ca, tmp_path):
    key = make_key(tmp_path)
    for _ in range(2):
        ca("sign", "--allow-unenrolled", "--user", "alice", "-o", str(tmp_path / "c.pub"), str(key) + ".pub")
    cursor = tmp_path / "siem.cursor"
    first = [json.loads(line) for line in ca("audit", "export", "--cursor-file", str(cursor)).stdout.splitlines()]
    assert [e["id"] for e in first] == [1, 2, 3] and first[1]["kind"] == "issued"
    assert first[2]["prev_hash"] == first[1]["hash"]
    assert cursor.read_text() == "3\n"
    assert ca("audit", "export", "--cursor-file", str(cursor)).stdout == ""  # nothing new, nothing twice
    ca("sign", "--allow-unenrolled", "--user", "bob", "-o", str(tmp_path / "c.pub"), str(key) + ".pub")
    again = ca("audit", "export", "--cursor-file", str(cursor)).stdout.splitlines()
    assert [json.loads(line)["user"] for line in again] == ["bob"] and cursor.read_text() == "4\n"
    assert [json.loads(x)["id"] for x in ca("audit", "export", "--after", "2").stdout.splitlines()] == [3, 4]


def test_proofs_verify_with_the_standalone_verifier(ca, tmp_path):
    """Inclusion and consistency proofs from iast-ca, checked by ca/audit/merkle.py alone (RFC 6962)."""
    import sys

    merkle_py = str(Path(__file__).resolve().parent.parent / "ca" / "audit" / "merkle.py")
    key = make_key(tmp_path)
    ca("sign", "--allow-unenrolled", "--user", "alice", "-o", str(tmp_path / "c.pub"), str(key) + ".pub")
    old = tmp_path / "cp-old.txt"
    assert ca("audit", "checkpoint", "-o", str(old)).exit_code == 0
    for user in ("bob", "carol", "dave"):
        ca("sign", "--allow-unenrolled", "--user", user, "-o", str(tmp_path / "c.pub"), str(key) + ".pub")
    new = tmp_path / "cp-new.txt"
    assert ca("audit", "checkpoint", "-o", str(new)).exit_code == 0
    assert "root: " in new.read_text() and ca("audit", "verify", "--checkpoint", str(new)).exit_code == 0

    proof = tmp_path / "proof.json"
    r = ca("audit", "prove", "--event", "2", "--checkpoint", str(new))
    assert r.exit_code == 0, r.output
    proof.write_text(r.stdout)
    assert json.loads(r.stdout)["tree_size"] == 6 and '"issued","alice"' in json.loads(r.stdout)["leaf_data"]
    check = subprocess.run([sys.executable, "-I", merkle_py, "inclusion", "--checkpoint", str(new), str(proof)],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    forged = json.loads(r.stdout)
    forged["leaf_data"] = forged["leaf_data"].replace("alice", "mallo")
    proof.write_text(json.dumps(forged))
    bad = subprocess.run([sys.executable, "-I", merkle_py, "inclusion", "--checkpoint", str(new), str(proof)],
                         capture_output=True, text=True)
    assert bad.returncode != 0

    r = ca("audit", "consistency", str(old), str(new))
    assert r.exit_code == 0, r.output
    cons = tmp_path / "cons.json"
    cons.write_text(r.stdout)
    check = subprocess.run([sys.executable, "-I", merkle_py, "consistency", "--old-checkpoint", str(old),
                            "--new-checkpoint", str(new), str(cons)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    # Rewrite an event between the checkpoints: the log can no longer prove the new one extends the old.
    # (Before the old checkpoint, the proof needs only the old root, so it still holds between the two
    # signed checkpoints; verify --checkpoint is what catches that.)
    conn = sqlite3.connect(ca.state / "ca.db", isolation_level=None)
    conn.execute("DROP TRIGGER events_no_update")
    conn.execute("UPDATE events SET username = 'mallory' WHERE id = 5")
    r = ca("audit", "consistency", str(old), str(new))
    assert r.exit_code == 1
    assert ca("audit", "verify", "--checkpoint", str(new)).exit_code == 1


@pytest.mark.parametrize("value,ok", [
    ('["/usr/local/bin/notify", "{id}", "{user}", "{role}"]', True),
    ('"/usr/local/bin/notify {id}"', False),  # a string would need a shell to split it
    ('["notify", "{id}"]', False),            # not an absolute path
    ("[]", False),
])
def test_on_request_hook_config(tmp_path, value, ok):
    from ca.config import load_config
    from ca.errors import ConfigError

    conf = tmp_path / "ca.toml"
    conf.write_text(f"on_request = {value}\n")
    if ok:
        assert load_config(conf).on_request == ("/usr/local/bin/notify", "{id}", "{user}", "{role}")
    else:
        with pytest.raises(ConfigError, match="on_request: expected a command as a list"):
            load_config(conf)


def test_unwritable_output_is_refused_before_issuing(ca, tmp_path):
    key = make_key(tmp_path)
    r = ca("sign", "--allow-unenrolled", "--user", "alice", "-o", str(tmp_path / "missing" / "c.pub"), str(key) + ".pub")
    assert r.exit_code == 2 and "not a writable directory" in r.stderr
    assert json.loads(ca("audit", "list", "--kind", "issued", "--json").stdout) == []  # nothing issued


def test_file_errors_are_one_line_not_tracebacks(ca, tmp_path):
    bad = tmp_path / "cp.txt"
    bad.write_bytes(b"\xff\xfe not text")
    r = ca("audit", "verify", "--checkpoint", str(bad))
    assert r.exit_code == 1 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.output
    r = ca("audit", "export", "--cursor-file", str(tmp_path / "no" / "such" / "cursor"))
    assert r.exit_code == 1 and len(r.stderr.strip().splitlines()) == 1


def test_user_unlock(ca, tmp_path):
    from ca.auth.throttle import Throttle, ThrottleSettings
    from ca.store import AuditLog

    log = AuditLog(ca.state / "ca.db")
    t = Throttle(log, ThrottleSettings(user_limit=2))
    t.failure("alice", "192.0.2.1", 1e10)
    t.failure("alice", "192.0.2.1", 1e10 + 1)
    assert t.blocked_for("alice", None, 1e10 + 2) > 800
    r = ca("user", "unlock", "alice")
    assert r.exit_code == 0 and "cleared 1 counter(s)" in r.stdout
    assert t.blocked_for("alice", None, 1e10 + 2) == 0
    (e,) = json.loads(ca("audit", "list", "--kind", "unlocked", "--json").stdout)
    assert e["user"] == "alice" and e["data"]["keys"] == ["user:alice"] and e["data"]["actor"]
    assert ca("user", "unlock").exit_code == 2
    assert ca("audit", "verify").exit_code == 0
