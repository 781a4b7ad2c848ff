"""The CA serves its KRL; hosts fetch it safely (keep the last good one on any failure)."""

from __future__ import annotations

import base64
import json
import subprocess

import pytest

from ca.client import install_krl
from ca.errors import CAError
from ca.sshcert.krl import build_krl, parse_krl

from .conftest import make_key
from .test_client import agent, ca, ca_args, env, host_fingerprint, iast_ssh, users  # noqa: F401 (fixtures)


def sign(ca, users, tmp_path, name):
    key, _ = users["alice"]
    new = make_key(tmp_path, name=name)
    r = ca.ssh("alice", key, "sign --json", input=new.with_suffix(".pub").read_text())
    assert r.returncode == 0, r.stderr
    cert = tmp_path / f"{name}-cert.pub"
    data = json.loads(r.stdout)
    cert.write_text(data["certificate"] + "\n")
    return cert, data["serial"]


def query(krl, cert) -> subprocess.CompletedProcess:
    return subprocess.run(["ssh-keygen", "-Q", "-f", str(krl), str(cert)], capture_output=True, text=True)


def revoke(cfg, serial):
    from click.testing import CliRunner

    from ca.cli.admin import cli

    r = CliRunner().invoke(cli, ["--state-dir", str(cfg.state_dir), "--policy", str(cfg.policy_path), "revoke",
                                 "--serial", str(serial), "--reason", "laptop stolen"])
    assert r.exit_code == 0, r.output


def test_plain_ssh_gets_the_current_krl(ca, cfg, users, tmp_path):
    good, _ = sign(ca, users, tmp_path, "good")
    bad, serial = sign(ca, users, tmp_path, "bad")
    revoke(cfg, serial)
    r = ca.ssh("alice", users["alice"][0], "krl")
    assert r.returncode == 0, r.stderr
    krl = tmp_path / "revoked.krl"
    krl.write_bytes(base64.b64decode(r.stdout))
    assert query(krl, bad).returncode != 0 and "REVOKED" in query(krl, bad).stdout
    assert query(krl, good).returncode == 0


def test_fetch_krl_installs_and_follows_revocations(ca, cfg, users, env, tmp_path):
    out = tmp_path / "etc" / "iast-revoked.krl"
    out.parent.mkdir()
    key = str(users["alice"][0])
    r = iast_ssh(env, "host", "fetch-krl", *ca_args(ca, cfg, "-l", "alice", "-i", key, "-o", str(out), "--json"))
    assert r.returncode == 0, r.stderr
    first = json.loads(r.stdout)
    assert first["previous_version"] is None and oct(out.stat().st_mode)[-3:] == "644"
    cert, serial = sign(ca, users, tmp_path, "victim")
    assert query(out, cert).returncode == 0
    revoke(cfg, serial)  # the service regenerates the KRL from the database on the next fetch
    r = iast_ssh(env, "host", "fetch-krl", *ca_args(ca, cfg, "-l", "alice", "-i", key, "-o", str(out), "--json"))
    second = json.loads(r.stdout)
    assert second["version"] > first["version"] and second["previous_version"] == first["version"]
    assert "REVOKED" in query(out, cert).stdout


def test_fetch_krl_keeps_the_old_file_when_the_ca_is_unreachable(cfg, users, env, tmp_path):
    out = tmp_path / "iast-revoked.krl"
    good = build_krl(5, certs={}, generated=0)
    out.write_bytes(good)
    r = iast_ssh(env, "host", "fetch-krl", "--ca", "127.0.0.1:1", "--ca-fingerprint", host_fingerprint(cfg),
                 "-l", "alice", "-i", str(users["alice"][0]), "-o", str(out))
    assert r.returncode == 1 and "cannot reach the CA" in r.stderr
    assert out.read_bytes() == good


def _textfile(directory) -> dict[str, float]:
    """The samples of DIR/iast_krl.prom as the node exporter's parser (Prometheus text format) reads them."""
    from prometheus_client.parser import text_string_to_metric_families

    assert sorted(p.name for p in directory.iterdir()) == ["iast_krl.prom"]  # no temp file the collector could read
    assert oct((directory / "iast_krl.prom").stat().st_mode)[-3:] == "644"  # the exporter runs as another user
    text = (directory / "iast_krl.prom").read_text()
    return {s.name: s.value for fam in text_string_to_metric_families(text) for s in fam.samples if not s.labels}


def test_fetch_krl_reports_its_age_for_the_textfile_collector(ca, cfg, users, env, tmp_path):
    import os
    import time

    out, metrics = tmp_path / "iast-revoked.krl", tmp_path / "textfile"
    metrics.mkdir()
    key = str(users["alice"][0])
    r = iast_ssh(env, "host", "fetch-krl", *ca_args(ca, cfg, "-l", "alice", "-i", key, "-o", str(out), "--json",
                                                    "--textfile-dir", str(metrics)))
    assert r.returncode == 0, r.stderr
    got = _textfile(metrics)
    assert got["iast_krl_refresh_success"] == 1 and got["iast_krl_version"] == json.loads(r.stdout)["version"]
    assert 0 <= got["iast_krl_age_seconds"] < 30
    assert got["iast_krl_generated_timestamp_seconds"] == parse_krl(out.read_bytes()).generated

    # A metrics directory that is missing (node exporter not installed) never fails the refresh.
    r = iast_ssh(env, "host", "fetch-krl", *ca_args(ca, cfg, "-l", "alice", "-i", key, "-o", str(out),
                                                    "--textfile-dir", str(tmp_path / "absent")))
    assert r.returncode == 0 and r.stderr.startswith("warning: cannot write") and "iast_krl.prom" in r.stderr

    # The refresh then fails for an hour (the CA unreachable): the installed KRL stays and the
    # age, written by the failed run too (here through the unit's environment variable), says so.
    hour_ago = time.time() - 3600
    os.utime(out, (hour_ago, hour_ago))
    r = iast_ssh({**env, "IAST_KRL_TEXTFILE_DIR": str(metrics)}, "host", "fetch-krl", "--ca", "127.0.0.1:1",
                 "--ca-fingerprint", host_fingerprint(cfg), "-l", "alice", "-i", key, "-o", str(out))
    assert r.returncode == 1 and "cannot reach the CA" in r.stderr
    failed = _textfile(metrics)
    assert failed["iast_krl_refresh_success"] == 0 and failed["iast_krl_age_seconds"] >= 3600
    assert failed["iast_krl_version"] == got["iast_krl_version"]
    assert failed["iast_krl_last_success_timestamp_seconds"] == pytest.approx(hour_ago, abs=1)
    assert failed["iast_krl_last_refresh_timestamp_seconds"] > got["iast_krl_last_refresh_timestamp_seconds"]


def test_the_textfile_without_an_installed_krl_reports_failure_and_no_age(tmp_path):
    from ca.client import krl_textfile

    metrics, krl = tmp_path / "textfile", tmp_path / "iast-revoked.krl"
    metrics.mkdir()
    for content in (None, b"not a krl"):  # never installed, then a file sshd cannot read
        if content is not None:
            krl.write_bytes(content)
        krl_textfile.write(metrics, krl, ok=False, now=1000.0)
        assert _textfile(metrics) == {"iast_krl_last_refresh_timestamp_seconds": 1000.0,
                                      "iast_krl_refresh_success": 0}


@pytest.mark.parametrize("fetched,message", [
    (b"<html>502 Bad Gateway</html>", "not valid"),
    (b"", "not valid"),
    (build_krl(3, certs={}, generated=0), "older than the installed 5"),
])
def test_install_keeps_the_last_good_krl(tmp_path, fetched, message):
    out = tmp_path / "iast-revoked.krl"
    good = build_krl(5, certs={}, generated=0)
    out.write_bytes(good)
    with pytest.raises(CAError, match=message):
        install_krl(fetched, out)
    assert out.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["iast-revoked.krl"]  # no temp file left behind


def test_install_accepts_same_or_newer_and_replaces_an_unreadable_file(tmp_path):
    out = tmp_path / "iast-revoked.krl"
    out.write_bytes(b"corrupt")
    assert install_krl(build_krl(5, certs={}, generated=0), out) == (5, None)
    assert install_krl(build_krl(5, certs={}, generated=1), out) == (5, 5)
    assert install_krl(build_krl(6, certs={}, generated=2), out) == (6, 5)
    assert parse_krl(out.read_bytes()).version == 6
