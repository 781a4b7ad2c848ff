"""``iast-ssh host setup`` and ``iast-ssh host check`` against a real CA service and a real sshd
(docs/security.md rules 73, 74).

setup --root TMP must produce what ``sshd -t`` accepts and a real sshd started on it
uses: a certificate logs in, a revoked one does not. Broken input leaves TMP exactly as
it was. check finds each misconfiguration on purpose-broken configs, and none on what
setup wrote.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from ca.app import open_audit
from ca.auth.users import UserStore
from ca.client.hostcheck import CODES, check_host
from ca.config import default_config
from ca.state import init_state

from .conftest import TEST_POLICY, make_key
from .service_harness import IAST_CA, CAProcess
from .sshd_harness import SshdHarness, _free_port, require_tool, sshd_path

pytestmark = pytest.mark.sshd

IAST_SSH = str(Path(sys.executable).parent / "iast-ssh")
CHEAP = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    """A CA service with alice (a user) and krl-web1 (the host's refresh identity) enrolled."""
    d = tmp_path_factory.mktemp("hostsetup-ca")
    policy = d / "policy.toml"
    policy.write_text(TEST_POLICY)
    cfg = default_config().with_overrides(state_dir=str(d / "state"), policy=str(policy))
    init_state(cfg, "ed25519", None)
    alice, krl_key = make_key(d, name="alice_enrolled"), make_key(d, name="krl_web1")
    log = open_audit(cfg)
    try:
        users = UserStore(log, hasher=CHEAP)
        users.add("alice", keys=[alice.with_suffix(".pub").read_text()], actor="test")
        users.add("krl-web1", keys=[krl_key.with_suffix(".pub").read_text()], actor="test")
    finally:
        log.close()
    ca = CAProcess(cfg.state_dir, cfg.policy_path, workdir=d).start()
    info = json.loads(subprocess.run([IAST_CA, "--config", str(ca.config_path), "info", "--json"],
                                     capture_output=True, text=True, check=True).stdout)
    ca.fingerprint = info["host_key_fingerprint"]
    ca.alice, ca.krl_key, ca.dir = alice, krl_key, d
    yield ca
    ca.stop()


def _cert(ca, tmp_path: Path, name: str) -> tuple[Path, int]:
    key = make_key(tmp_path, name=name)
    r = ca.ssh("alice", ca.alice, "sign --json", input=key.with_suffix(".pub").read_text())
    assert r.returncode == 0, r.stderr
    reply = json.loads(r.stdout)
    Path(f"{key}-cert.pub").write_text(reply["certificate"] + "\n")
    return key, reply["serial"]


def _main_config(root: Path, port: int, include: bool = True, extra: str = "") -> Path:
    etc = root / "etc" / "ssh"
    etc.mkdir(parents=True, exist_ok=True)
    host_key = etc / "ssh_host_ed25519_key"
    if not host_key.exists():
        subprocess.run([require_tool("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True)
    lines = ([f"Include {etc}/sshd_config.d/*.conf"] if include else []) + [
        "ListenAddress 127.0.0.1", f"Port {port}", f"HostKey {host_key}", f"PidFile {root}/sshd.pid",
        "UsePAM no", "StrictModes no", "PermitRootLogin prohibit-password", "AuthorizedKeysFile none",
        "PasswordAuthentication no", "KbdInteractiveAuthentication no", "LogLevel VERBOSE",
    ]
    path = etc / "sshd_config"
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


def _setup(ca, root: Path, *args: str, principals: str | None = 'root = ["alice"]\n') -> subprocess.CompletedProcess:
    argv = [IAST_SSH, "host", "setup", "--ca", f"127.0.0.1:{ca.port}", "--ca-fingerprint", ca.fingerprint,
            "-l", "krl-web1", "-i", str(ca.krl_key), "--root", str(root), "--sshd", sshd_path(), *args]
    if principals is not None:
        pmap = root.parent / f"{root.name}-principals.toml"
        pmap.write_text(principals)
        argv += ["--principals-map", str(pmap)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "XDG_CONFIG_HOME": str(root.parent / "xdg"), "SSH_AUTH_SOCK": ""})


def _snapshot(root: Path) -> dict[str, tuple]:
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        out[str(p.relative_to(root))] = (st.st_mode, p.read_bytes() if p.is_file() and not p.is_symlink() else None)
    return out


class _RootSshd(SshdHarness):
    """The harness's sshd, started on the config in ROOT (the one host setup completed)."""

    def __init__(self, workdir: Path, root: Path):
        super().__init__(workdir, [])
        self.second_address = False  # the config in ROOT listens on 127.0.0.1 only
        self.root = root
        self.config_path = root / "etc" / "ssh" / "sshd_config"

    def _write_config(self, addresses) -> None:
        _main_config(self.root, self.port)
        self.host_key = self.root / "etc" / "ssh" / "ssh_host_ed25519_key"

    def _write_known_hosts(self, addresses) -> None:
        key = " ".join((self.root / "etc/ssh/ssh_host_ed25519_key.pub").read_text().split()[:2])
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {key}\n")


def test_setup_root_is_accepted_by_sshd_which_takes_a_certificate_and_refuses_a_revoked_one(service, tmp_path):
    ca = service
    good, _ = _cert(ca, tmp_path, "good")
    revoked, serial = _cert(ca, tmp_path, "revoked")
    r = subprocess.run([IAST_CA, "--config", str(ca.config_path), "revoke", "--serial", str(serial),
                        "--reason", "test"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    root = tmp_path / "root"
    _main_config(root, _free_port(["127.0.0.1"]))

    before = _snapshot(root)
    r = _setup(ca, root, "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "would write" in r.stdout and str(root / "etc/ssh/sshd_config.d/40-iast-ssh.conf") in r.stdout
    assert _snapshot(root) == before  # a dry run writes nothing

    r = _setup(ca, root, "--json", "--textfile-dir", "/var/lib/prometheus/node-exporter")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["validated"] and result["reloaded"] is None  # a tree is never reloaded
    etc = root / "etc" / "ssh"
    assert (etc / "iast-principals" / "root").read_text() == "alice\n"
    timer = root / "etc/systemd/system/timers.target.wants/iast-krl-refresh.timer"
    assert timer.is_symlink() and (root / "etc/systemd/system/iast-krl-refresh.service").is_file()
    unit = (root / "etc/systemd/system/iast-krl-refresh.service").read_text()
    assert f"-o {etc / 'iast-revoked.krl'}" in unit and str(root / "etc/iast-ssh/krl-refresh.env") in unit
    env = (root / "etc/iast-ssh/krl-refresh.env").read_text()
    assert f"IAST_CA_FINGERPRINT={ca.fingerprint}" in env and "IAST_KRL_USER=krl-web1" in env
    metrics = root / "var/lib/prometheus/node-exporter"
    assert f"IAST_KRL_TEXTFILE_DIR={metrics}\n" in env and f"ReadWritePaths=-{metrics}\n" in unit
    # The unit's ExecStart, as systemd would run it (its ${VARS} from the environment file), works: it names
    # the iast-ssh that ran setup, not /usr/local/bin/iast-ssh (absent from a checkout's venv; README walk).
    exec_start = re.search(r"^ExecStart=(.*?[^\\])$", unit.replace("\\\n", " "), re.M).group(1)
    variables = dict(line.split("=", 1) for line in env.splitlines() if "=" in line)
    argv = [re.sub(r"\$\{(\w+)\}", lambda m: variables[m.group(1)], a) for a in exec_start.split()]
    assert argv[0] == IAST_SSH
    metrics.mkdir(parents=True)
    fetched = subprocess.run(argv, capture_output=True, text=True, timeout=60,
                             env={**os.environ, **variables, "XDG_CONFIG_HOME": str(tmp_path / "xdg"), "SSH_AUTH_SOCK": ""})
    assert fetched.returncode == 0 and "KRL version" in fetched.stdout, fetched.stderr
    assert "iast_krl_refresh_success 1" in (metrics / "iast_krl.prom").read_text()
    check = subprocess.run([sshd_path(), "-t", "-f", str(etc / "sshd_config")], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr

    sshd = _RootSshd(tmp_path / "run", root).start()
    try:
        ok = sshd.ssh(good, "root", "echo in")
        assert ok.returncode == 0 and ok.stdout.strip() == "in", ok.stderr
        refused = sshd.ssh(revoked, "root", "echo in")
        assert refused.returncode == 255 and "in" not in refused.stdout.split()
        assert "revoked" in sshd.log().lower()
    finally:
        sshd.stop()

    # What setup wrote is clean for host check (through the CLI, asking the CA).
    r = subprocess.run([IAST_SSH, "host", "check", "--config", str(etc / "sshd_config"), "--sshd", sshd_path(),
                        "--ca", f"127.0.0.1:{ca.port}", "--ca-fingerprint", ca.fingerprint, "-l", "krl-web1",
                        "-i", str(ca.krl_key)], capture_output=True, text=True,
                       env={**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "xdg"), "SSH_AUTH_SOCK": ""})
    assert r.returncode == 0 and "no findings" in r.stdout, r.stdout + r.stderr
    # ... and named as setup named it (README walk: 'host check --root' did not exist beside 'setup --root').
    r = subprocess.run([IAST_SSH, "host", "check", "--root", str(root), "--sshd", sshd_path(), "--offline"],
                       capture_output=True, text=True, env={**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "xdg")})
    assert r.returncode == 0 and f"{etc / 'sshd_config'}: no findings" in r.stdout, r.stdout + r.stderr


@pytest.mark.parametrize("case", ["bad-map", "sshd-t-fails", "no-include", "bad-textfile-dir"])
def test_broken_input_leaves_the_tree_unchanged(service, tmp_path, case):
    root = tmp_path / "root"
    port = _free_port(["127.0.0.1"])
    _main_config(root, port, include=case != "no-include",
                 extra="NoSuchKeyword yes\n" if case == "sshd-t-fails" else "")
    (root / "etc/ssh/sshd_config.d").mkdir()
    (root / "etc/ssh/sshd_config.d/40-iast-ssh.conf").write_text("# an older drop-in, kept on failure\n")
    before = _snapshot(root)
    more = ("--textfile-dir", "/var/lib/node exporter\nIAST_CA=evil:22") if case == "bad-textfile-dir" else ()
    r = _setup(service, root, *more,
               principals='"bad name" = ["alice"]\n' if case == "bad-map" else 'root = ["alice"]\n')
    assert r.returncode == (2 if case in ("bad-map", "bad-textfile-dir") else 1), r.stdout + r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert {"bad-map": "not a valid account name", "sshd-t-fails": "sshd -t rejected",
            "no-include": "not in effect", "bad-textfile-dir": "expected an absolute path"}[case] in r.stderr
    assert _snapshot(root) == before


# -- host check on purpose-broken configs ---------------------------------------------------


def _write_case(d: Path, service, **changes) -> Path:
    """A complete, clean sshd config in ``d`` (its own files), with ``changes`` applied."""
    d.mkdir(parents=True, exist_ok=True)
    host_key = d / "host_key"
    subprocess.run([require_tool("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True)
    trust = d / "trust.pub"
    trust.write_text("".join(line + "\n" for line in service.trust_lines))
    krl = d / "revoked.krl"
    krl.write_bytes(service.krl)
    (d / "principals").mkdir()
    (d / "principals" / "root").write_text("alice\n")
    settings = {
        "HostKey": str(host_key), "TrustedUserCAKeys": str(trust), "RevokedKeys": str(krl),
        "AuthorizedPrincipalsFile": f"{d}/principals/%u", "PasswordAuthentication": "no",
        "KbdInteractiveAuthentication": "no", "UsePAM": "no", "PidFile": str(d / "pid"), "Port": "2299",
    }
    for k, v in changes.items():
        if v is None:
            settings.pop(k)
        else:
            settings[k] = v
    config = d / "sshd_config"
    config.write_text("".join(f"{k} {v}\n" for k, v in settings.items()))
    return config


@pytest.fixture(scope="module")
def published(service):
    from ca.client import Client

    client = Client(f"127.0.0.1:{service.port}", ca_fingerprint=service.fingerprint, user="krl-web1",
                    identity=str(service.krl_key), use_agent=False, config_file=service.dir / "client.toml")
    service.trust_lines = client.ca_keys()
    service.krl = client.krl()
    return service


def _codes(config: Path, published, **kw) -> set[str]:
    found = check_host(sshd=sshd_path(), config=config, published_keys=published.trust_lines, **kw)
    for f in found:
        assert f.code in CODES and f.severity in ("error", "warning") and f.fix
    return {f.code for f in found}


def test_host_check_finds_each_misconfiguration(published, tmp_path):
    base = _write_case(tmp_path / "clean", published)
    assert _codes(base, published) == set()

    assert _codes(_write_case(tmp_path / "a", published, RevokedKeys=None), published) == {"revoked_keys_missing"}
    missing = _write_case(tmp_path / "b", published)
    (tmp_path / "b" / "revoked.krl").unlink()
    assert _codes(missing, published) == {"revoked_keys_missing"}
    garbage = _write_case(tmp_path / "c", published)
    (tmp_path / "c" / "revoked.krl").write_bytes(b"not a KRL at all")
    assert _codes(garbage, published) == {"revoked_keys_unreadable"}
    stale = _write_case(tmp_path / "d", published)
    old = time.time() - 3600
    os.utime(tmp_path / "d" / "revoked.krl", (old, old))
    assert _codes(stale, published) == {"revoked_keys_stale"}

    retired = _write_case(tmp_path / "e", published)
    other = make_key(tmp_path, name="retired_ca")
    with open(tmp_path / "e" / "trust.pub", "a") as f:
        f.write(other.with_suffix(".pub").read_text())
    assert _codes(retired, published) == {"trusted_key_retired"}
    assert _codes(_write_case(tmp_path / "f", published, TrustedUserCAKeys=None), published) == \
        {"trusted_ca_keys_missing"}

    assert _codes(_write_case(tmp_path / "g", published, AuthorizedPrincipalsFile=None), published) == \
        {"no_principals_file"}
    assert _codes(_write_case(tmp_path / "h", published, PasswordAuthentication="yes"), published) == \
        {"password_authentication"}

    loose = _write_case(tmp_path / "i", published)
    os.chmod(tmp_path / "i" / "trust.pub", 0o666)
    assert _codes(loose, published) == {"permissions"}
    loose_key = _write_case(tmp_path / "j", published)
    second = make_key(tmp_path / "j", name="second_host_key")  # sshd skips a loose key when it has another
    os.chmod(second, 0o644)
    with open(loose_key, "a") as f:
        f.write(f"HostKey {second}\n")
    assert _codes(loose_key, published) == {"permissions"}

    now = time.time()
    assert _codes(base, published, ca_clock=(now, now + 600, now + 1)) == {"clock_skew"}
    assert _codes(base, published, ca_clock=(now, now + 0.5, now + 1)) == set()

    broken = _write_case(tmp_path / "k", published, NoSuchKeyword="yes")
    assert _codes(broken, published) == {"sshd_config_invalid"}


def test_host_check_cli_exit_status_and_json(published, tmp_path):
    config = _write_case(tmp_path / "p", published, PasswordAuthentication="yes", AuthorizedPrincipalsFile=None)
    r = subprocess.run([IAST_SSH, "host", "check", "--offline", "--config", str(config), "--sshd", sshd_path(),
                        "--json"], capture_output=True, text=True)
    assert r.returncode == 1
    assert sorted(f["code"] for f in json.loads(r.stdout)) == ["no_principals_file", "password_authentication"]
    r = subprocess.run([IAST_SSH, "host", "check", "--offline", "--config", str(config), "--sshd", sshd_path()],
                       capture_output=True, text=True)
    lines = r.stdout.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 2
    assert all(line.startswith("warning: ") and "(fix: " in line for line in lines)
    shutil.rmtree(tmp_path / "p")
