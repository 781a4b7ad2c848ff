"""Decision + CA key backend -> an OpenSSH user certificate, verified before it is returned.

The signer builds the certificate's to-be-signed bytes itself, every field
explicit (:mod:`ca.sshcert.build`, PROTOCOL.certkeys): no library default
can widen a certificate (valid forever, serial 0, every ``permit-*`` on, any
principal). It asks the CA key backend (:mod:`ca.keys.base`) for one
signature over those bytes. The result is then re-read by our own parser
(:mod:`ca.sshcert.certificates`) and checked field by field against the
decision, with the signature verified by pyca/cryptography against the CA
public key (docs/security.md rules 1-9), whatever backend made it.
"""

from __future__ import annotations

import ipaddress
import os
import re
import struct
from collections.abc import Callable

import asyncssh

from ca.errors import CAError, SigningError
from ca.keys.base import KeyBackend
from ca.keys.file import FileKeyBackend
from ca.models import Decision, HostDecision
from ca.rules import is_dns_name, principal_safe
from ca.sshcert.build import (
    assemble_certificate,
    certificate_line,
    tbs_certificate,
    user_critical_options,
)
from ca.sshcert.certificates import (
    CERT_TYPE_FOR_KEY,
    HOST_CERT,
    USER_CERT,
    Certificate,
    parse_certificate,
    verify_signature,
)
from ca.sshcert.userkey import UserKey
from ca.sshcert.wire import Reader, WireError

# A key ID is built by the server only, from this character set: no spaces or
# quotes, so that sshd's log line "... ID <key-id> (serial N)" parses without
# ambiguity (docs/security.md rule 9).
KEY_ID_PATTERN = re.compile(r"[A-Za-z0-9_.:@+=-]{1,200}")

_EXTENSIONS = frozenset({
    "permit-X11-forwarding",
    "permit-agent-forwarding",
    "permit-port-forwarding",
    "permit-pty",
    "permit-user-rc",
})
_FLAG = b""  # an extension's data: every user extension is a flag
SK_KEY_TYPES = ("sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com")
MAX_SERIAL = 2**64 - 1
NONCE_BYTES = 32


def _random_nonce() -> bytes:
    return os.urandom(NONCE_BYTES)


def make_host_key_id(host: str, role: str, serial: int) -> str:
    """A host certificate's key ID: ``iast-host:HOST:ROLE:SERIAL`` (never mistaken for a user's)."""
    key_id = f"iast-host:{host}:{role}:{serial}"
    if not KEY_ID_PATTERN.fullmatch(key_id):
        raise SigningError(f"cannot build a safe key ID for host {host!r}, role {role!r}")
    return key_id


def make_key_id(user: str, role: str, serial: int) -> str:
    """The certificate's key ID: ``iast:USER:ROLE:SERIAL``, joinable to one audit row."""
    key_id = f"iast:{user}:{role}:{serial}"
    if not KEY_ID_PATTERN.fullmatch(key_id):
        raise SigningError(f"cannot build a safe key ID for user {user!r}, role {role!r}")
    return key_id


def _networks(addrs) -> list[str]:
    return [str(ipaddress.ip_network(a, strict=False)) for a in addrs]


class Signer:
    """Signs user certificates with one CA key backend.

    ``backend`` is a :class:`~ca.keys.base.KeyBackend`; an asyncssh private
    key is taken as a :class:`~ca.keys.file.FileKeyBackend`. ``nonce``
    returns the certificate's random nonce (32 bytes from ``os.urandom``);
    tests inject a fixed one to compare certificates byte for byte.
    """

    def __init__(self, backend: KeyBackend | asyncssh.SSHKey, *, nonce: Callable[[], bytes] = _random_nonce):
        if isinstance(backend, asyncssh.SSHKey):
            backend = FileKeyBackend(backend)
        self.backend = backend
        self.ca_blob = backend.public_blob
        self.sig_alg = backend.signature_algorithm
        self.nonce = nonce

    def sign(self, decision: Decision, user_key: UserKey, serial: int, key_id: str) -> tuple[str, Certificate]:
        """Sign ``user_key`` as ``decision`` says; return the certificate line and its parsed form.

        Raises :class:`SigningError` if the decision is unsafe to sign (no
        principals, serial 0, empty window), if the backend cannot sign, or
        if the certificate we produced does not read back exactly as decided.
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
        unknown = set(decision.extensions) - _EXTENSIONS - {"no-touch-required"}
        if unknown:
            raise SigningError(f"unknown extensions {sorted(unknown)}")
        is_sk = user_key.algorithm in SK_KEY_TYPES
        # no-touch-required means something for a FIDO key only; on any other key it is dropped.
        extensions = {name: _FLAG for name in decision.extensions if is_sk or name != "no-touch-required"}
        try:
            tbs = tbs_certificate(
                public_key_blob=user_key.blob,
                nonce=self.nonce(),
                serial=serial,
                cert_type=USER_CERT,
                key_id=key_id,
                principals=decision.principals,
                valid_after=decision.valid_after,
                valid_before=decision.valid_before,
                critical_options=user_critical_options(
                    decision.force_command,
                    [str(ipaddress.ip_network(a)) for a in decision.source_address],
                ),
                extensions=extensions,
                signature_key=self.ca_blob,
            )
        except (ValueError, TypeError, OverflowError, struct.error) as e:  # WireError is a ValueError
            raise SigningError(f"signing failed: {e}") from None
        try:
            signature = self.backend.sign(tbs)
        except CAError:
            raise
        except Exception as e:  # a backend must raise SigningError; anything else is audited as one
            raise SigningError(f"CA key backend failed: {type(e).__name__}: {e}".replace("\n", " ")) from None
        blob = assemble_certificate(tbs, signature)
        parsed = self._check(blob, decision, user_key, serial, key_id, is_sk)
        return certificate_line(blob, key_id), parsed

    def sign_host(self, decision: HostDecision, host_key: UserKey, serial: int,
                  key_id: str) -> tuple[str, Certificate]:
        """Sign ``host_key`` as a host certificate (type 2) as ``decision`` says; return the line and its parse.

        A host certificate carries no critical options and no extensions
        (PROTOCOL.certkeys defines none for hosts); its principals are the DNS
        names from the host policy. Re-read and verified like a user certificate.
        """
        if not decision.principals:
            raise SigningError("refusing to sign a host certificate with no principals")
        for p in decision.principals:
            if not is_dns_name(p):  # whatever policy said (defence in depth)
                raise SigningError(f"refusing host principal {p!r}: not a DNS name")
        if host_key.algorithm in SK_KEY_TYPES:
            raise SigningError("refusing to certify a FIDO key as a host key")
        if not 0 < serial <= MAX_SERIAL:
            raise SigningError(f"serial {serial} is out of range")
        if not KEY_ID_PATTERN.fullmatch(key_id):
            raise SigningError(f"unsafe key ID {key_id!r}")
        if not 0 <= decision.valid_after < decision.valid_before:
            raise SigningError("empty validity window")
        try:
            tbs = tbs_certificate(
                public_key_blob=host_key.blob, nonce=self.nonce(), serial=serial, cert_type=HOST_CERT,
                key_id=key_id, principals=decision.principals, valid_after=decision.valid_after,
                valid_before=decision.valid_before, critical_options={}, extensions={}, signature_key=self.ca_blob,
            )
        except (ValueError, TypeError, OverflowError, struct.error) as e:
            raise SigningError(f"signing failed: {e}") from None
        blob = assemble_certificate(tbs, self._signature(tbs))
        try:
            c = parse_certificate(blob)
            verify_signature(c, self.ca_blob)
            if Reader(c.signature).text() != self.sig_alg:
                raise WireError("unexpected signature algorithm")
        except WireError as e:
            raise SigningError(f"issued certificate does not verify: {e}") from None
        checks = [
            ("type", c.cert_type_name, CERT_TYPE_FOR_KEY[host_key.algorithm]),
            ("key", c.public_key_blob, host_key.blob),
            ("cert type", c.cert_type, HOST_CERT),
            ("serial", c.serial, serial),
            ("key id", c.key_id, key_id),
            ("principals", c.principals, tuple(decision.principals)),
            ("valid_after", c.valid_after, decision.valid_after),
            ("valid_before", c.valid_before, decision.valid_before),
            ("critical options", c.critical_options, {}),
            ("extensions", c.extensions, {}),
        ]
        for name, got, want in checks:
            if got != want:
                raise SigningError(f"issued certificate has the wrong {name}")
        return certificate_line(blob, key_id), c

    def _signature(self, tbs: bytes) -> bytes:
        try:
            return self.backend.sign(tbs)
        except CAError:
            raise
        except Exception as e:  # a backend must raise SigningError; anything else is audited as one
            raise SigningError(f"CA key backend failed: {type(e).__name__}: {e}".replace("\n", " ")) from None

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
