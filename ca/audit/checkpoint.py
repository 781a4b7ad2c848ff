"""Signed audit checkpoints: (event count, chain head, Merkle root, time), signed with the audit key.

A checkpoint is a small text file to keep *outside* the CA host. It is
signed in OpenSSH's SSHSIG format (PROTOCOL.sshsig), namespace
``iast-audit-checkpoint``, with a key that is not the CA key, so a reviewer
can check it with stock OpenSSH and nothing of ours::

    sed '/BEGIN SSH SIGNATURE/,$d' cp.txt > cp.msg
    sed -n '/BEGIN SSH SIGNATURE/,$p' cp.txt > cp.sig
    echo "iast-audit $(cat audit-key.pub)" > allowed_signers
    ssh-keygen -Y verify -f allowed_signers -I iast-audit -n iast-audit-checkpoint -s cp.sig < cp.msg
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from typing import Protocol

import asyncssh

from ca.errors import ChainBroken
from ca.sshcert.certificates import fingerprint, verify_ssh_signature
from ca.sshcert.wire import Reader, WireError, string, uint32

NAMESPACE = "iast-audit-checkpoint"
HEADER = "iast-ssh audit checkpoint v2"
HEADER_V1 = "iast-ssh audit checkpoint v1"  # before the Merkle root; still read
_BEGIN = "-----BEGIN SSH SIGNATURE-----"
_END = "-----END SSH SIGNATURE-----"
_MAGIC = b"SSHSIG"


@dataclass(frozen=True)
class Checkpoint:
    count: int
    head: str  # hash-chain head (hex) after `count` events
    time: str
    key_fingerprint: str
    root: str | None = None  # RFC 6962 Merkle root (hex) over events 1..count; None in v1


def _signed_data(message: bytes) -> bytes:
    return _MAGIC + string(NAMESPACE) + string(b"") + string("sha512") + string(hashlib.sha512(message).digest())


class SigningKey(Protocol):
    """What a key backend (:class:`ca.keys.base.KeyBackend`, a layer above) gives: duck-typed here."""

    @property
    def public_blob(self) -> bytes: ...

    def sign(self, data: bytes) -> bytes: ...


def _public_blob(key: asyncssh.SSHKey | SigningKey) -> bytes:
    return key.public_blob if hasattr(key, "public_blob") else key.public_data


def sshsig_sign(key: asyncssh.SSHKey | SigningKey, message: bytes) -> str:
    """An armored SSHSIG signature of ``message`` (as ``ssh-keygen -Y sign`` makes).

    ``key`` is an asyncssh private key or a key backend (``public_blob``,
    ``sign(data) -> SSH signature blob``), so the audit key may live in a token.
    """
    data = _signed_data(message)
    if hasattr(key, "public_blob"):
        sig = key.sign(data)
    else:
        sig = key.sign(data, key.get_algorithm().encode())
    blob = (_MAGIC + uint32(1) + string(_public_blob(key)) + string(NAMESPACE) + string(b"") + string("sha512")
            + string(sig))
    b64 = base64.b64encode(blob).decode()
    return "\n".join([_BEGIN, *(b64[i : i + 70] for i in range(0, len(b64), 70)), _END]) + "\n"


def sshsig_verify(armored: str, message: bytes, trusted_key_blob: bytes) -> None:
    """Check an armored SSHSIG signature over ``message`` by ``trusted_key_blob``; raise WireError."""
    body = armored.strip()
    if not (body.startswith(_BEGIN) and body.endswith(_END)):
        raise WireError("no SSH SIGNATURE block")
    try:
        blob = base64.b64decode("".join(body[len(_BEGIN) : -len(_END)].split()), validate=True)
    except ValueError:
        raise WireError("signature block is not base64") from None
    r = Reader(blob)
    if r.raw(6) != _MAGIC or r.uint32() != 1:
        raise WireError("not an SSHSIG version 1 signature")
    key_blob, namespace, _reserved, hash_alg, sig = r.string(), r.string(), r.string(), r.text(), r.string()
    r.end()
    if namespace != NAMESPACE.encode():
        raise WireError(f"signature namespace is {namespace[:64]!r}, expected {NAMESPACE!r}")
    if key_blob != trusted_key_blob:
        raise WireError(f"signed by {fingerprint(key_blob)}, not by the audit key {fingerprint(trusted_key_blob)}")
    if hash_alg != "sha512":
        raise WireError(f"unsupported hash {hash_alg!r}")
    verify_ssh_signature(key_blob, sig, _signed_data(message))


def make_checkpoint(key: asyncssh.SSHKey | SigningKey, count: int, head: str, time: str, root: str) -> str:
    """The text of a signed checkpoint for ``count`` events ending in ``head``, with Merkle ``root``."""
    message = (
        f"{HEADER}\nevents: {count}\nhead: {head}\nroot: {root}\ntime: {time}\n"
        f"audit-key: {fingerprint(_public_blob(key))}\n"
    )
    return message + sshsig_sign(key, message.encode())


_FIELDS = re.compile(
    r"(?:" + re.escape(HEADER) + r"|" + re.escape(HEADER_V1) + r")\nevents: (\d+)\nhead: ([0-9a-f]{64})\n"
    r"(?:root: ([0-9a-f]{64})\n)?time: (\S+)\naudit-key: (\S+)\n\Z"
)


def read_checkpoint(text: str, trusted_key_blob: bytes) -> Checkpoint:
    """Parse a checkpoint and verify its signature; raise :class:`ChainBroken` if either fails."""
    i = text.find(_BEGIN)
    if i < 0:
        raise ChainBroken("the checkpoint has no signature")
    message, armored = text[:i], text[i:]
    m = _FIELDS.match(message)
    if not m:
        raise ChainBroken("the checkpoint is malformed")
    try:
        sshsig_verify(armored, message.encode(), trusted_key_blob)
    except WireError as e:
        raise ChainBroken(f"the checkpoint signature is not valid: {e}") from None
    if message.startswith(HEADER) != (m.group(3) is not None):
        raise ChainBroken("the checkpoint is malformed")  # v2 has a root, v1 has none
    return Checkpoint(int(m.group(1)), m.group(2), m.group(4), m.group(5), m.group(3))
