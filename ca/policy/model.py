"""The policy model: roles, groups and the pure judgement of a request.

A :class:`Policy` is built once from the TOML file by :mod:`ca.policy.parser`
and is frozen from then on.

:meth:`Policy.decide` is the pure heart of the CA: identity + request + the
time it is given -> a :class:`~ca.models.Decision` holding the *final*
certificate parameters (architecture rule 5), or :class:`~ca.errors.PolicyDenied`.
It does no I/O and reads no clock, so it is easy to test and to reason about.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ca.durations import format_duration
from ca.errors import ConfigError, MFARequired, PolicyDenied, ReauthenticationRequired
from ca.models import Decision, HostDecision, Identity, SignRequest
from ca.rules import RESERVED_PRINCIPALS, free_text, is_dns_name, is_host_name, principal_ok

__all__ = ["EXTENSIONS", "Approval", "HostRole", "Policy", "Role", "RoleVerdict"]


# The user extensions OpenSSH defines (PROTOCOL.certkeys, "Extensions").
# A role grants exactly those it lists (docs/security.md rule 5).
EXTENSIONS = frozenset(
    {
        "permit-X11-forwarding",
        "permit-agent-forwarding",
        "permit-port-forwarding",
        "permit-pty",
        "permit-user-rc",
        "no-touch-required",
    }
)

# Clock skew the caller may pass to decide() (docs/security.md rule 3: max 300 s).
_MAX_SKEW = 300

# Members an identity provider or a workload issuer fills (through Identity.groups).
VOUCHED_PREFIXES = ("idp:", "workload:")

# The one template a principal may contain (expanded per user by decide()).
USER_TEMPLATE = "{user}"
# The one template a host principal may contain (expanded per host by decide_host()).
HOST_TEMPLATE = "{host}"


# --------------------------------------------------------------------------
# Values


@dataclass(frozen=True)
class Approval:
    """A role's ``approval`` table: who must agree before it is signed.

    ``approvers`` are user names and ``"group:NAME"``; ``required`` distinct
    approvers (never the requester) must approve; ``expires`` (seconds)
    bounds both how long a request may stay pending and how long an
    approved request may wait to be used. Enforced by :mod:`ca.access.approvals`
    and :meth:`ca.issuance.authority.Authority.issue`, not by :meth:`Policy.decide`.
    """

    approvers: tuple[str, ...]
    required: int
    expires: int
    # Approvers must have shown a second factor (a password + code login, or a fresh SSO);
    # a key alone, on the service or through the CLI's agent proof, does not do.
    require_mfa: bool = False

    def as_json(self) -> dict[str, Any]:
        return {"approvers": list(self.approvers), "required": self.required, "expires": self.expires,
                "require_mfa": self.require_mfa}


@dataclass(frozen=True)
class Role:
    """One validated role. Durations are seconds; ``ttl`` is the effective
    default (already capped at ``max_ttl``); ``extensions`` are sorted."""

    name: str
    description: str
    members: tuple[str, ...]
    principals: tuple[str, ...]  # literal names and "{user}" templates
    ttl: int
    max_ttl: int
    extensions: tuple[str, ...]
    force_command: str | None
    source_address: tuple[str, ...]
    require_reason: bool
    require_mfa: bool
    approval: Approval | None = None  # None: no approval needed
    # The IdP sign-in (Identity.auth_time) must be at most this old (seconds); None: any age.
    max_auth_age: int | None = None
    # The IdP sign-in must have used every one of these methods (ID token ``amr``), e.g. ["mfa"] or
    # ["hwk"], and/or be of one of these classes (``acr``); empty: no requirement.
    require_amr: tuple[str, ...] = ()
    require_acr: tuple[str, ...] = ()


@dataclass(frozen=True)
class HostRole:
    """One ``[hosts.NAME]`` table: the names a host of this role may claim, and for how long.

    ``principals`` are DNS names and ``{host}`` templates (``"{host}.prod.example.com"``);
    ``names`` are shell-style patterns a host name must match (empty: any valid
    host name). Durations are seconds; ``ttl`` is the default, at most ``max_ttl``.
    """

    name: str
    description: str
    principals: tuple[str, ...]
    names: tuple[str, ...]
    ttl: int
    max_ttl: int

    def admits(self, host: str) -> bool:
        return not self.names or any(fnmatch.fnmatchcase(host, pattern) for pattern in self.names)

    def known_hosts_patterns(self) -> tuple[str, ...]:
        """The known_hosts patterns of the names this role certifies (``{host}`` as each of
        ``names``, or ``*``): where a client should trust the host CA, and nowhere else."""
        out: list[str] = []
        for template in self.principals:
            for name in self.names or ("*",):
                pattern = template.replace(HOST_TEMPLATE, name)
                if pattern not in out:
                    out.append(pattern)
        return tuple(out)


@dataclass(frozen=True)
class RoleVerdict:
    """What ``iast-ca policy explain USER [--role R]`` shows for one role.

    When ``allowed`` is false, ``reasons`` says why and the certificate
    fields are None; when true, they hold what a request with no ttl of its
    own would get (``principals`` already expanded for the user).
    """

    role: str
    allowed: bool
    reasons: tuple[str, ...] = ()
    description: str = ""
    is_default: bool = False
    principals: tuple[str, ...] | None = None
    ttl: int | None = None
    max_ttl: int | None = None
    extensions: tuple[str, ...] | None = None
    force_command: str | None = None
    source_address: tuple[str, ...] | None = None
    require_reason: bool | None = None
    require_mfa: bool | None = None
    approval: Approval | None = None

    def as_json(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists) for ``--json`` output."""

        def lst(v: tuple[str, ...] | None) -> list[str] | None:
            return None if v is None else list(v)

        return {
            "role": self.role,
            "allowed": self.allowed,
            "reasons": list(self.reasons),
            "description": self.description,
            "is_default": self.is_default,
            "principals": lst(self.principals),
            "ttl": self.ttl,
            "max_ttl": self.max_ttl,
            "extensions": lst(self.extensions),
            "force_command": self.force_command,
            "source_address": lst(self.source_address),
            "require_reason": self.require_reason,
            "require_mfa": self.require_mfa,
            "approval": self.approval.as_json() if self.approval else None,
        }


@dataclass(frozen=True)
class Policy:
    """A validated policy. Build it with :func:`load_policy` or :func:`parse_policy`."""

    path: str  # for messages
    sha256: str  # hex SHA-256 of the exact file bytes; recorded in every Decision
    default_ttl: int
    max_ttl: int
    default_extensions: tuple[str, ...]
    default_role: str | None
    groups: Mapping[str, tuple[str, ...]]  # read-only (MappingProxyType)
    roles: Mapping[str, Role]  # read-only, in file order
    principal_pattern: str
    hosts: Mapping[str, HostRole] = field(default_factory=lambda: MappingProxyType({}))  # [hosts.NAME]
    # Names no {user} expansion may produce; a role that lists one literally still grants it.
    reserved_principals: frozenset[str] = RESERVED_PRINCIPALS

    def groups_of(self, user: str) -> tuple[str, ...]:
        """The ``[groups]`` that list ``user``, sorted by name."""
        return tuple(sorted(name for name, users in self.groups.items() if user in users))

    def is_member(self, role: Role, identity: Identity) -> bool:
        """Whether ``identity`` may use ``role``.

        ``"*"`` admits any authenticated user; ``group:NAME`` admits members
        of the ``[groups]`` entry NAME and identities whose ``groups`` contain
        NAME; ``idp:NAME:GROUP`` and ``workload:NAME`` admit identities an
        identity provider or a workload issuer vouched for with that group
        (qualified, so no IdP can name itself into a ``[groups]`` entry);
        anything else is a user name.
        """
        groups = set(self.groups_of(identity.user)) | set(identity.groups)
        for member in role.members:
            if member == "*":
                return True
            if member.startswith(VOUCHED_PREFIXES):
                if member in identity.groups:
                    return True
            elif member.startswith("group:"):
                if member[len("group:") :] in groups:
                    return True
            elif member == identity.user:
                return True
        return False

    def approvers_of(self, role: Role) -> tuple[str, ...]:
        """The distinct users a role's approvers expand to through ``[groups]`` (sorted).

        Members of a group that only an identity provider fills are not known
        here; :meth:`may_approve` still admits them.
        """
        if role.approval is None:
            return ()
        return expand_users(role.approval.approvers, self.groups)

    def may_approve(self, role: Role, identity: Identity) -> bool:
        """Whether ``identity`` is one of ``role``'s approvers (never true for a role without approval).

        Like :meth:`is_member`: a user name, or ``group:NAME`` through
        ``[groups]`` or the identity's own ``groups``. Whether the approver is
        the requester is for the caller to check.
        """
        if role.approval is None:
            return False
        groups = set(self.groups_of(identity.user)) | set(identity.groups)
        for approver in role.approval.approvers:
            if approver.startswith("group:"):
                if approver[len("group:") :] in groups:
                    return True
            elif approver == identity.user:
                return True
        return False

    def decide(self, identity: Identity, request: SignRequest, now: int, skew: int) -> Decision:
        """Judge ``request`` from ``identity`` at time ``now`` (unix seconds).

        Pure: no I/O, no clock. Returns the final certificate parameters, or
        raises :class:`~ca.errors.PolicyDenied` (a message safe to show the
        requester), or :class:`~ca.errors.MFARequired` (an AuthenticationFailed) when the role
        needs a second factor the identity has not shown. ``skew`` (0..300 s)
        back-dates ``valid_after`` to tolerate clocks that run behind.
        """
        # The caller's configuration, not the requester, supplies these; a bad
        # value is a configuration bug, never something to sign around.
        if type(skew) is not int or not 0 <= skew <= _MAX_SKEW:
            raise ConfigError(f"clock skew must be 0..{_MAX_SKEW} seconds, got {skew!r}")
        if type(now) is not int or now < skew:
            raise ConfigError(f"now must be unix seconds, got {now!r}")

        role = self._choose_role(identity, request)
        if not self.is_member(role, identity):
            raise PolicyDenied(
                f"{show(identity.user)} may not use role {role.name} "
                f"(members: {', '.join(role.members)})"
            )

        reason = free_text(request.reason, error=PolicyDenied)
        if role.require_reason and reason is None:
            raise PolicyDenied(f"role {role.name} requires a reason")
        if role.max_auth_age is not None and (
                identity.auth_time is None or now - identity.auth_time > role.max_auth_age):
            # Exit 4: the requester can fix it by signing in at the IdP again (SSO's step-up).
            age = "no IdP sign-in" if identity.auth_time is None else f"signed in {format_duration(max(0, now - identity.auth_time))} ago"
            raise ReauthenticationRequired(
                f"role {role.name} needs an identity-provider sign-in within {format_duration(role.max_auth_age)} "
                f"({age}): sign in again naming the role, so that the IdP asks for a fresh sign-in: "
                f"iast-ssh login --sso --role {role.name}, or ssh -o KbdInteractiveDevices=role:{role.name}")
        missing = [m for m in role.require_amr if m not in identity.amr]
        if missing:
            raise ReauthenticationRequired(
                f"role {role.name} needs an identity-provider sign-in with {', '.join(role.require_amr)} "
                f"(this one used {', '.join(identity.amr) or 'no reported method'}): sign in again at the IdP "
                f"with {', '.join(missing)}")
        if role.require_acr and identity.acr not in role.require_acr:
            raise ReauthenticationRequired(
                f"role {role.name} needs an identity-provider sign-in of class {' or '.join(role.require_acr)} "
                f"(this one: {identity.acr or 'none reported'})")
        if role.require_mfa and not identity.mfa:
            # Exit 4, "authentication insufficient": the requester can fix it
            # by authenticating again with a one-time code.
            raise MFARequired(
                f"role {role.name} requires a second factor (one-time code)"
            )

        ttl = role.ttl if request.ttl is None else request.ttl
        if request.ttl is None and identity.default_ttl is not None:
            ttl = min(ttl, identity.default_ttl)  # a workload's short default (5m unless the role says less)
        if type(ttl) is not int or ttl <= 0:
            raise PolicyDenied(f"requested ttl must be a positive number of seconds, got {quote(ttl)}")
        if ttl > role.max_ttl:
            raise PolicyDenied(
                f"requested ttl {format_duration(ttl)} exceeds role {role.name} "
                f"max_ttl {format_duration(role.max_ttl)}"
            )

        principals = self._expand(role, identity.user)

        # Options and extensions come from the role only (docs/security.md rules 4
        # and 5); SignRequest has no field through which to change them.
        return Decision(
            user=identity.user,
            role=role.name,
            principals=principals,
            valid_after=now - skew,
            valid_before=now + ttl,
            ttl=ttl,
            force_command=role.force_command,
            source_address=role.source_address,
            extensions=role.extensions,
            reason=reason,
            policy_sha256=self.sha256,
        )

    def decide_host(self, host: str, role: str | None, ttl: int | None, now: int, skew: int) -> HostDecision:
        """Judge a host certificate for ``host`` in host role ``role``, at ``now``.

        Pure, like :meth:`decide`. The principals are the role's templates
        with ``{host}`` expanded, each checked as a DNS name; a host name the
        role's ``names`` do not admit, an unknown role, or a ttl above the
        role's ``max_ttl`` raise :class:`~ca.errors.PolicyDenied`.
        """
        if type(skew) is not int or not 0 <= skew <= _MAX_SKEW:
            raise ConfigError(f"clock skew must be 0..{_MAX_SKEW} seconds, got {skew!r}")
        if type(now) is not int or now < skew:
            raise ConfigError(f"now must be unix seconds, got {now!r}")
        if not is_host_name(host):
            raise PolicyDenied(f"invalid host name {quote(host)}")
        if role is None and len(self.hosts) == 1:
            role = next(iter(self.hosts))
        hrole = self.hosts.get(role) if isinstance(role, str) else None
        if hrole is None:
            known = ", ".join(self.hosts) or "none (add a [hosts.NAME] table to the policy)"
            raise PolicyDenied(f"no such host role {quote(role)} (host roles: {known})")
        if not hrole.admits(host):
            raise PolicyDenied(f"host {host} is outside host role {hrole.name} (names: {', '.join(hrole.names)})")
        ttl = hrole.ttl if ttl is None else ttl
        if type(ttl) is not int or ttl <= 0:
            raise PolicyDenied(f"requested ttl must be a positive number of seconds, got {quote(ttl)}")
        if ttl > hrole.max_ttl:
            raise PolicyDenied(f"requested ttl {format_duration(ttl)} exceeds host role {hrole.name} "
                               f"max_ttl {format_duration(hrole.max_ttl)}")
        principals: list[str] = []
        for template in hrole.principals:
            name = template.replace(HOST_TEMPLATE, host)
            if not is_dns_name(name):  # unreachable for a parsed policy and a valid host name
                raise PolicyDenied(f"host role {hrole.name}: {show(name)} is not a DNS name")
            if name not in principals:
                principals.append(name)
        return HostDecision(host=host, role=hrole.name, principals=tuple(principals), valid_after=now - skew,
                            valid_before=now + ttl, ttl=ttl, policy_sha256=self.sha256)

    def known_hosts_patterns(self) -> tuple[str, ...]:
        """Every host role's known_hosts patterns, deduplicated, in file order."""
        out: list[str] = []
        for hrole in self.hosts.values():
            out += [p for p in hrole.known_hosts_patterns() if p not in out]
        return tuple(out)

    def explain(self, user: str, role: str | None = None, groups: tuple[str, ...] = ()) -> list[RoleVerdict]:
        """For each role (or only ``role``), may ``user`` use it, and with what.

        ``[groups]`` count, and ``groups`` stands for what an identity provider
        would vouch for (``idp:NAME:GROUP``, ``workload:NAME``; ``policy explain --groups``).
        An unknown ``role`` gives one verdict that is not allowed, saying so.
        """
        if role is not None and role not in self.roles:
            return [RoleVerdict(role=role, allowed=False, reasons=(f"no such role {quote(role)}",))]
        names = [role] if role is not None else list(self.roles)
        identity = Identity(user=user, auth_methods=(), groups=tuple(groups))
        return [self._verdict(self.roles[name], identity) for name in names]

    # -- helpers -----------------------------------------------------------

    def _choose_role(self, identity: Identity, request: SignRequest) -> Role:
        name = request.role
        if name is None:
            name = self.default_role
        if name is None:
            usable = [r.name for r in self.roles.values() if self.is_member(r, identity)]
            if len(usable) == 1:
                name = usable[0]
            else:
                raise PolicyDenied(
                    "no role requested; roles you may request: " + (", ".join(usable) or "none")
                )
        role = self.roles.get(name) if isinstance(name, str) else None
        if role is None:
            raise PolicyDenied(f"no such role {quote(name)}")
        return role

    def _expand(self, role: Role, user: str) -> tuple[str, ...]:
        """Expand ``{user}`` and check every result (docs/security.md rules 1 and 2)."""
        out: list[str] = []
        for template in role.principals:
            principal = template.replace(USER_TEMPLATE, user)
            if USER_TEMPLATE in template and principal in self.reserved_principals:
                raise PolicyDenied(
                    f"role {role.name}: principal {show(principal)} (from {show(template)}) is reserved; "
                    "only a role that lists it literally grants it"
                )
            if not principal_ok(principal, self.principal_pattern):
                raise PolicyDenied(
                    f"role {role.name}: principal {show(principal)} (from {show(template)}) "
                    f"does not match {self.principal_pattern}"
                )
            if principal not in out:
                out.append(principal)
        if not out:  # unreachable for a parsed policy; rule 1 is worth the line
            raise PolicyDenied(f"role {role.name} grants no principals")
        return tuple(out)

    def _verdict(self, role: Role, identity: Identity) -> RoleVerdict:
        base = dict(role=role.name, description=role.description, is_default=role.name == self.default_role)
        if not self.is_member(role, identity):
            reason = f"{show(identity.user)} is not a member (members: {', '.join(role.members)})"
            return RoleVerdict(allowed=False, reasons=(reason,), **base)
        try:
            principals = self._expand(role, identity.user)
        except PolicyDenied as e:
            return RoleVerdict(allowed=False, reasons=(e.message,), **base)
        return RoleVerdict(
            allowed=True,
            principals=principals,
            ttl=role.ttl,
            max_ttl=role.max_ttl,
            extensions=role.extensions,
            force_command=role.force_command,
            source_address=role.source_address,
            require_reason=role.require_reason,
            require_mfa=role.require_mfa,
            approval=role.approval,
            **base,
        )


# --------------------------------------------------------------------------
# Small helpers, shared with the parser


def expand_users(approvers: tuple[str, ...], groups: Mapping[str, tuple[str, ...]]) -> tuple[str, ...]:
    users: set[str] = set()
    for a in approvers:
        if a.startswith("group:"):
            users.update(groups.get(a[len("group:") :], ()))
        else:
            users.add(a)
    return tuple(sorted(users))


def show(value: Any) -> str:
    """A value as it may appear in a one-line message: plain if tame, repr otherwise."""
    if isinstance(value, str) and re.fullmatch(r"[\x21-\x7e]{1,80}", value):
        return value
    return quote(value)


def quote(value: Any) -> str:
    """Requester-supplied text, quoted and cut short for a one-line message."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
