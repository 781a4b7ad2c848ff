"""Frozen values passed between the stages of the issuance path.

authenticate -> :class:`Identity`; parse request -> :class:`SignRequest`;
decide -> :class:`Decision`; sign -> :class:`Issued`. None of them can change
once made, so a later stage cannot quietly alter what an earlier one decided.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Identity:
    """Who is asking, and how we know.

    ``auth_methods`` lists what was proved, e.g. ``("publickey",)``,
    ``("password", "totp")`` or ``("admin-offline",)``. ``mfa`` is true when
    the identity satisfied a second factor for this request (or an
    administrator issued offline, which is recorded as such).

    An authenticator (:mod:`ca.auth`) makes it. ``issuer``, ``subject`` and
    ``auth_time`` are for providers that vouch for someone else's login
    (an OIDC issuer, a workload token): who vouched, their name for the
    subject, and when that login happened (unix seconds). None otherwise.
    Their ``groups`` are qualified, ``idp:NAME:GROUP`` and ``workload:NAME``,
    so an IdP's group can never pass for a ``[groups]`` entry of the policy.
    ``amr`` is the IdP's authentication methods; ``token_hash`` the sha256 of
    the token that proved it (the audit log keeps the hash, never the token).
    """

    user: str
    auth_methods: tuple[str, ...]
    mfa: bool = False
    source_address: str | None = None
    groups: tuple[str, ...] = ()
    operator: str | None = None  # the administrator who issued on the user's behalf (offline)
    login_key: str | None = None  # fingerprint of the enrolled key the user authenticated with, if any
    issuer: str | None = None
    subject: str | None = None
    auth_time: int | None = None
    amr: tuple[str, ...] = ()
    acr: str | None = None  # the IdP's authentication context class (ID token ``acr``)
    token_hash: str | None = None
    # A workload token authenticates one request only: this identity was made for it.
    single_request: bool = False
    # A workload's short default ttl ([workload.NAME] ttl): a request without --ttl gets this,
    # or the role's ttl when that is shorter. None: the role's ttl.
    default_ttl: int | None = None


@dataclass(frozen=True)
class SignRequest:
    """What the requester asked for. Nothing here is trusted: policy decides."""

    public_key: str  # the OpenSSH public key line as received
    role: str | None = None
    ttl: int | None = None  # seconds; None means the policy's default
    reason: str | None = None
    request_id: str | None = None


@dataclass(frozen=True)
class Decision:
    """The final certificate parameters that policy approved.

    Everything the signer puts in a certificate is here, set on purpose;
    the signer adds only the serial, the key ID and the signature.
    """

    user: str
    role: str
    principals: tuple[str, ...]
    valid_after: int  # unix seconds, already includes the clock skew
    valid_before: int  # unix seconds
    ttl: int
    force_command: str | None
    source_address: tuple[str, ...]
    extensions: tuple[str, ...]
    reason: str | None
    policy_sha256: str


@dataclass(frozen=True)
class Issued:
    """A signed, verified and audited certificate."""

    certificate: str  # OpenSSH certificate line
    serial: int
    key_id: str
    decision: Decision
    ca_fingerprint: str
    key_type: str
    key_fingerprint: str
    event_id: int

    def as_json(self) -> dict[str, Any]:
        """The reply object clients and scripts read."""
        d = self.decision
        return {
            "certificate": self.certificate,
            "serial": self.serial,
            "key_id": self.key_id,
            "role": d.role,
            "principals": list(d.principals),
            "valid_after": d.valid_after,
            "valid_before": d.valid_before,
            "force_command": d.force_command,
            "source_address": list(d.source_address),
            "extensions": list(d.extensions),
            "ca_fingerprint": self.ca_fingerprint,
            "event_id": self.event_id,
        }


@dataclass(frozen=True)
class Event:
    """One row of the audit log, as stored (see :mod:`ca.audit`)."""

    id: int
    ts: str
    kind: str
    user: str | None
    role: str | None
    serial: int | None
    key_id: str | None
    source: str | None
    data: dict[str, Any] = field(default_factory=dict)
    prev_hash: str = ""
    hash: str = ""


# -- host certificates ---------------------------------------------------------------


@dataclass(frozen=True)
class HostRequest:
    """A request for a host certificate. Nothing here is trusted: the host policy decides.

    ``proof`` says how the requester showed it may have one, and the
    authority checks that proof inside the issuing transaction:
    ``"operator"`` (offline ``iast-ca host sign``), ``"token"`` (a one-time
    join token, ``token_id``; its role is the token's) or ``"renewal"``
    (``certificate``: the host's current certificate, for the key it logged in with).
    """

    public_key: str  # the host's OpenSSH public key line
    host: str
    role: str | None = None
    ttl: int | None = None
    proof: str = "operator"
    token_id: str | None = None
    certificate: str | None = None  # renewal: the current certificate line


@dataclass(frozen=True)
class HostDecision:
    """The final parameters of a host certificate, as the host policy approved them."""

    host: str
    role: str
    principals: tuple[str, ...]  # the DNS names the host is certified for
    valid_after: int
    valid_before: int
    ttl: int
    policy_sha256: str


@dataclass(frozen=True)
class HostIssued:
    """A signed, verified and audited host certificate."""

    certificate: str
    serial: int
    key_id: str
    decision: HostDecision
    ca_fingerprint: str  # the host CA key that signed it
    key_type: str
    key_fingerprint: str
    event_id: int

    def as_json(self) -> dict[str, Any]:
        d = self.decision
        return {
            "certificate": self.certificate,
            "serial": self.serial,
            "key_id": self.key_id,
            "host": d.host,
            "role": d.role,
            "principals": list(d.principals),
            "valid_after": d.valid_after,
            "valid_before": d.valid_before,
            "ca_fingerprint": self.ca_fingerprint,
            "key_fingerprint": self.key_fingerprint,
            "event_id": self.event_id,
        }


@dataclass(frozen=True)
class Finding:
    """One problem found by ``iast-ssh host check`` or ``iast-ca doctor``: what, how bad, and the fix.

    ``code`` is from the checker's closed list (tests and scripts key on it); ``severity`` is
    "error" (logins are or may be wrong now) or "warning" (a weaker setup than intended)."""

    severity: str
    code: str
    message: str
    fix: str

    def line(self) -> str:
        return f"{self.severity}: {self.code}: {self.message} (fix: {self.fix})"

    def as_json(self) -> dict[str, Any]:
        return {"severity": self.severity, "code": self.code, "message": self.message, "fix": self.fix}
