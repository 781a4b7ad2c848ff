"""Promises of the issuance path that had no test of their own (docs/security.md rules 7, 11 and 22).

Each test drives the real authority on a real state directory and a real
SQLite audit log; the only stand-in is a key backend that fails the way an
unplugged token does (the far side of a device, not a part of ours).
"""

from __future__ import annotations

import dataclasses

import pytest

from ca.access.revocation import revoke_ca_key
from ca.app import open_authority
from ca.errors import BadKey, SigningError
from ca.issuance.signer import Signer
from ca.keys.base import KeyBackend
from ca.models import Identity, SignRequest

from .conftest import make_key

ALICE = Identity(user="alice", auth_methods=("publickey",))


class UnpluggedToken(KeyBackend):
    """A backend whose public key is the CA's but that cannot sign (a token pulled out)."""

    def __init__(self, public_blob: bytes):
        self._blob = public_blob

    @property
    def public_blob(self) -> bytes:
        return self._blob

    def sign(self, data: bytes) -> bytes:
        raise SigningError("the CA key's token is not present")


def _pub(tmp_path, *args, **kw) -> str:
    return make_key(tmp_path, *args, **kw).with_suffix(".pub").read_text()


def test_a_signing_failure_is_audited_as_failed_and_leaves_no_certificate(authority, tmp_path):
    """Rule 11: a failure of the CA key gives an error, a 'failed' event, and no certificate row."""
    authority.signer = Signer(UnpluggedToken(authority.signer.ca_blob))
    with pytest.raises(SigningError, match="token is not present"):
        authority.issue(ALICE, SignRequest(public_key=_pub(tmp_path)), allow_unenrolled=True)
    failed = authority.audit.events(kind="failed")
    assert len(failed) == 1 and failed[0].user == "alice"
    assert failed[0].data["code"] == "signing" and "token is not present" in failed[0].data["message"]
    assert authority.audit.events(kind="issued") == []
    assert authority.audit.certificates.by_serial(1) is None
    authority.audit.verify()


def test_no_certificate_while_the_active_ca_key_is_revoked(authority, tmp_path):
    """Rule 22: once the active CA key is revoked, it signs nothing more (rotate first)."""
    key = _pub(tmp_path)
    first = authority.issue(ALICE, SignRequest(public_key=key), allow_unenrolled=True)
    revoke_ca_key(authority.audit, authority.ca_fingerprint, "key file copied off the host", "sec")
    with pytest.raises(SigningError, match="revoked: rotate it"):
        authority.issue(ALICE, SignRequest(public_key=key), allow_unenrolled=True)
    assert [e.serial for e in authority.audit.events(kind="issued")] == [first.serial]
    assert authority.audit.events(kind="failed")[0].data["code"] == "signing"


def test_the_configured_minimum_rsa_size_is_the_one_applied(cfg, tmp_path):
    """Rule 7: min_rsa_bits from the config decides, both ways (not a constant 3072)."""
    rsa3072 = _pub(tmp_path, "rsa", 3072)
    strict = open_authority(dataclasses.replace(cfg, min_rsa_bits=4096))
    try:
        with pytest.raises(BadKey, match="3072 bits; at least 4096"):
            strict.issue(ALICE, SignRequest(public_key=rsa3072), allow_unenrolled=True)
        assert strict.audit.events(kind="denied")[0].data["code"] == "key"
    finally:
        strict.close()
    relaxed = open_authority(dataclasses.replace(cfg, min_rsa_bits=2048))
    try:
        rsa2048 = _pub(tmp_path, "rsa", 2048, name="id_rsa2048")
        assert relaxed.issue(ALICE, SignRequest(public_key=rsa2048), allow_unenrolled=True).key_type == "ssh-rsa"
    finally:
        relaxed.close()
