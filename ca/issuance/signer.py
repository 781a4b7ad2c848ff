"""Decision + CA key -> an OpenSSH user certificate, verified before it is returned.

asyncssh builds and signs the certificate. Its defaults are unsafe for a CA
(valid forever, serial 0, every ``permit-*`` on, any principal), so every
field is passed explicitly here. The result is then re-read by our own
parser (:mod:`ca.sshcert.certificates`) and checked field by field against the
decision, with the signature verified by pyca/cryptography against the CA
public key (security.md rules 1-9).
"""

from __future__ import annotations

import ipaddress
import re

import asyncssh

from ca.errors import SigningError
from ca.models import Decision
from ca.rules import principal_safe
from ca.sshcert.certificates import (
    CERT_TYPE_FOR_KEY,
    USER_CERT,
    Certificate,
    parse_certificate,
    verify_signature,
)
from ca.sshcert.userkey import UserKey
from ca.sshcert.wire import Reader, WireError

# A key ID is built by the server only, from this character set: no spaces or
# quotes, so that sshd's log line "... ID <key-id> (serial N)" parses without
# ambiguity (security.md rule 9).
KEY_ID_PATTERN = re.compile(r"[A-Za-z0-9_.:@+=-]{1,200}")

_EXTENSION_FLAGS = {
    "permit-X11-forwarding": "permit_x11_forwarding",
    "permit-agent-forwarding": "permit_agent_forwarding",
    "permit-port-forwarding": "permit_port_forwarding",
    "permit-pty": "permit_pty",
    "permit-user-rc": "permit_user_rc",
}
SK_KEY_TYPES = ("sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com")
MAX_SERIAL = 2**64 - 1


def make_key_id(user: str, role: str, serial: int) -> str:
    """The certificate's key ID: ``iast:USER:ROLE:SERIAL``, joinable to one audit row."""
    key_id = f"iast:{user}:{role}:{serial}"
    if not KEY_ID_PATTERN.fullmatch(key_id):
        raise SigningError(f"cannot build a safe key ID for user {user!r}, role {role!r}")
    return key_id


def _sig_alg(ca_key: asyncssh.SSHKey) -> str:
    # Never SHA-1 "ssh-rsa" for the CA signature (security.md rule 8).
    alg = ca_key.get_algorithm()
    return "rsa-sha2-512" if alg == "ssh-rsa" else alg


def _networks(addrs) -> list[str]:
    return [str(ipaddress.ip_network(a, strict=False)) for a in addrs]


class Signer:
    """Signs user certificates with one CA key."""

    def __init__(self, ca_key: asyncssh.SSHKey):
        self.ca_key = ca_key
        self.ca_blob = ca_key.public_data
        self.sig_alg = _sig_alg(ca_key)

    def sign(self, decision: Decision, user_key: UserKey, serial: int, key_id: str) -> tuple[str, Certificate]:
        """Sign ``user_key`` as ``decision`` says; return the certificate line and its parsed form.

        Raises :class:`SigningError` if the decision is unsafe to sign (no
        principals, serial 0, empty window) or if the certificate we produced
        does not read back exactly as decided.
        """
        if not decision.principals:
            raise SigningError("refusing to sign a certificate with no principals")
        for p in decision.principals:
            if not principal_safe(p):  # whatever policy said (defence in depth, rule 2)
                raise SigningError(f"refusing unsafe principal {p!r}")
        if not 0 < serial <= MAX_SERIAL:
            raise SigningError(f"serial {serial} is out of range")
        if not KEY_ID_PATTERN.fullmatch(key_id):
            raise SigningError(f"unsafe key ID {key_id!r}")
        if not 0 <= decision.valid_after < decision.valid_before:
            raise SigningError("empty validity window")
        unknown = set(decision.extensions) - set(_EXTENSION_FLAGS) - {"no-touch-required"}
        if unknown:
            raise SigningError(f"unknown extensions {sorted(unknown)}")
        flags = {flag: name in decision.extensions for name, flag in _EXTENSION_FLAGS.items()}
        is_sk = user_key.algorithm in SK_KEY_TYPES
        try:
            cert = self.ca_key.generate_user_certificate(
                user_key.key,
                key_id,
                version=1,
                serial=serial,
                principals=list(decision.principals),  # a list: strings get split on commas
                valid_after=decision.valid_after,
                valid_before=decision.valid_before,
                force_command=decision.force_command,
                source_address=list(decision.source_address) or None,
                touch_required=not (is_sk and "no-touch-required" in decision.extensions),
                sig_alg=self.sig_alg,
                comment=key_id,
                **flags,
            )
            line = cert.export_certificate("openssh").decode("ascii").strip()
        except (ValueError, TypeError, asyncssh.KeyGenerationError) as e:
            raise SigningError(f"signing failed: {e}") from None
        parsed = self._check(cert.public_data, decision, user_key, serial, key_id, is_sk)
        return line, parsed

    def _check(self, blob: bytes, d: Decision, user_key: UserKey, serial: int, key_id: str, is_sk: bool) -> Certificate:
        """Re-read the certificate independently and compare every field with the decision."""
        try:
            c = parse_certificate(blob)
            verify_signature(c, self.ca_blob)
            if Reader(c.signature).text() != self.sig_alg:
                raise WireError("unexpected signature algorithm")
            want_ext = set(d.extensions) if is_sk else set(d.extensions) - {"no-touch-required"}
            want_opts = {"force-command"} if d.force_command else set()
            if d.source_address:
                want_opts.add("source-address")
            checks = [
                ("type", c.cert_type_name, CERT_TYPE_FOR_KEY[user_key.algorithm]),
                ("key", c.public_key_blob, user_key.blob),
                ("cert type", c.cert_type, USER_CERT),
                ("serial", c.serial, serial),
                ("key id", c.key_id, key_id),
                ("principals", c.principals, tuple(d.principals)),
                ("valid_after", c.valid_after, d.valid_after),
                ("valid_before", c.valid_before, d.valid_before),
                ("critical options", set(c.critical_options), want_opts),
                ("force-command", c.force_command, d.force_command),
                ("source-address", c.source_address and _networks(c.source_address), d.source_address and _networks(d.source_address)),
                ("extensions", set(c.extensions), want_ext),
            ]
        except WireError as e:
            raise SigningError(f"issued certificate does not verify: {e}") from None
        for name, got, want in checks:
            if got != want:
                raise SigningError(f"issued certificate has the wrong {name}")
        return c
