"""The audit key in a PKCS#11 token (a real SoftHSM2 token): checkpoints signed there, old ones still verify.

docs/security.md rule 38: like the CA key, the audit key can live in a token
and only signatures come out; moving it there deletes the key file, records
the move, and keeps the old public key so that checkpoints made before the
move still verify with `iast-ca audit verify --checkpoint`.
"""

from __future__ import annotations

import json
import subprocess

from types import SimpleNamespace

from .conftest import TEST_POLICY
from .service_harness import IAST_CA
from .softhsm import SoftHSM, softhsm  # noqa: F401 (fixture)
from .sshd_harness import IastCA


def _cli(ca: IastCA):
    """Run iast-ca as its own process (a token session lives and dies with the process, as in use)."""
    def run(*args: str):
        r = subprocess.run([IAST_CA, "--state-dir", str(ca.state_dir), "--policy", str(ca.policy_path), *args],
                           capture_output=True, text=True, timeout=120)
        return SimpleNamespace(exit_code=r.returncode, stdout=r.stdout, stderr=r.stderr, output=r.stdout + r.stderr)
    return run


def _ssh_keygen_verifies(checkpoint, pub_line: str, tmp_path) -> bool:
    """Stock OpenSSH checks the checkpoint (ssh-keygen -Y verify), as the README tells a reviewer."""
    text = checkpoint.read_text()
    i = text.index("-----BEGIN SSH SIGNATURE-----")
    (tmp_path / "cp.msg").write_text(text[:i])
    (tmp_path / "cp.sig").write_text(text[i:])
    (tmp_path / "signers").write_text(f"iast-audit {pub_line}")
    with open(tmp_path / "cp.msg", "rb") as msg:
        r = subprocess.run(["ssh-keygen", "-Y", "verify", "-f", str(tmp_path / "signers"), "-I", "iast-audit",
                            "-n", "iast-audit-checkpoint", "-s", str(tmp_path / "cp.sig")], stdin=msg,
                           capture_output=True, text=True)
    return r.returncode == 0


def test_audit_key_moves_into_the_token_and_old_checkpoints_still_verify(tmp_path, softhsm: SoftHSM):
    (tmp_path / "policy.toml").write_text(TEST_POLICY)
    ca = SimpleNamespace(cli=_cli(IastCA.create(tmp_path / "state", tmp_path / "policy.toml")))
    state = tmp_path / "state"
    old_pub = (state / "audit-key.pub").read_text()
    before = tmp_path / "before.txt"
    assert ca.cli("audit", "checkpoint", "-o", str(before)).exit_code == 0

    r = ca.cli("audit", "key-to-token", "--generate", "--pkcs11", softhsm.uri(softhsm.label()), "--json")
    assert r.exit_code == 0, r.output
    moved = json.loads(r.stdout)
    assert moved["backend"] == "pkcs11" and moved["old_fingerprint"] != moved["new_fingerprint"]
    assert not (state / "audit-key").exists(), "the old private key file must be gone"
    new_pub = (state / "audit-key.pub").read_text()
    assert new_pub != old_pub and (state / "audit-key.uri").exists()
    holding_private_keys = {p.name for p in state.iterdir()
                            if p.is_file() and "PRIVATE KEY" in p.read_text(errors="replace")}
    assert holding_private_keys <= {"host-key", "host-ca-key"}, holding_private_keys  # no audit key left

    after = tmp_path / "after.txt"
    r = ca.cli("audit", "checkpoint", "-o", str(after))
    assert r.exit_code == 0, r.output
    assert f"audit-key: {moved['new_fingerprint']}" in after.read_text()
    assert _ssh_keygen_verifies(after, new_pub, tmp_path)
    assert not _ssh_keygen_verifies(after, old_pub, tmp_path)

    # Both checkpoints verify against the log: the old one with the kept public key.
    for cp in (before, after):
        r = ca.cli("audit", "verify", "--checkpoint", str(cp))
        assert r.exit_code == 0, r.output
    r = ca.cli("audit", "list", "--kind", "audit_key_moved", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)[0]["data"]["new_fingerprint"] == moved["new_fingerprint"]


def test_a_token_that_is_away_gives_a_one_line_error_and_no_checkpoint(tmp_path, softhsm: SoftHSM):
    (tmp_path / "policy.toml").write_text(TEST_POLICY)
    ca = SimpleNamespace(cli=_cli(IastCA.create(tmp_path / "state", tmp_path / "policy.toml")))
    assert ca.cli("audit", "key-to-token", "--generate", "--pkcs11", softhsm.uri(softhsm.label())).exit_code == 0
    out = tmp_path / "cp.txt"
    with softhsm.unplugged():
        r = ca.cli("audit", "checkpoint", "-o", str(out))
    assert r.exit_code == 1 and len(r.stderr.strip().splitlines()) == 1, r.output
    assert "PKCS#11" in r.stderr and not out.exists()
    r = ca.cli("audit", "checkpoint", "-o", str(out))
    assert r.exit_code == 0 and out.exists(), r.output  # back by itself when the token returns
