"""The policy parser: the TOML file, read strictly into a frozen :class:`~ca.policy.model.Policy`.

Policy is a TOML file kept in version control like code. It is read and
validated once (:func:`load_policy` / :func:`parse_policy`) into a frozen
:class:`~ca.policy.model.Policy`; every mistake is a :class:`~ca.errors.PolicyError` whose
one-line message names the file, the section or role, and the field::

    policy.toml: roles.prod-readonly.max_ttl: 12h exceeds [defaults].max_ttl 8h

How a parsed policy judges a request is in :mod:`ca.policy.model`.

The file looks like this (``config/policy.toml`` is a documented example)::

    [defaults]
    ttl = "1h"                  # used when a request names none
    max_ttl = "8h"              # no role may allow more
    extensions = ["permit-pty"] # for roles that list none
    role = "dev"                # optional: role used when a request names none

    [groups]
    sre = ["alice", "bob"]

    [roles.prod-readonly]
    description = "Read-only production debugging"
    members = ["group:sre"]     # user names, "group:NAME", or "*"
    principals = ["prod-ro"]    # literal names, or templates with "{user}"
    force_command = "/usr/local/bin/prod-readonly-shell"
    source_address = ["10.20.0.0/16"]
    max_ttl = "30m"
    require_reason = true
    require_mfa = true

    [roles.prod-admin]          # just-in-time access: see ca/access/approvals.py
    members = ["group:sre"]
    principals = ["root"]
    max_ttl = "15m"
    require_reason = true
    approval = { approvers = ["group:security"], required = 1, expires = "1h" }

    [hosts.prod]                # host certificates (iast-ca host sign / host token)
    principals = ["{host}.prod.example.com", "{host}"]  # DNS names; {host} is the host name
    names = ["web-*"]           # optional: which host names this role admits (default: any)
    max_ttl = "30d"             # ttl defaults to max_ttl
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from ca.durations import format_duration, parse_duration
from ca.errors import PolicyError, did_you_mean
from ca.policy.model import (
    EXTENSIONS,
    HOST_TEMPLATE,
    USER_TEMPLATE,
    Approval,
    HostRole,
    Policy,
    Role,
    expand_users,
    show,
)
from ca.rules import (
    DEFAULT_PRINCIPAL_PATTERN,
    MAX_DNS_NAME,
    PRINCIPAL_FORBIDDEN,
    RESERVED_PRINCIPALS,
    USER_NAME_TEXT,
    is_dns_name,
    is_user_name,
)

__all__ = ["load_policy", "parse_policy"]


_FALLBACK_EXTENSIONS = ("permit-pty",)  # docs/security.md rule 5: the default is permit-pty only

_DEFAULT_TTL = "1h"
_DEFAULT_MAX_TTL = "8h"
# A hard ceiling on every duration in the file. Certificates are meant to be
# short-lived (docs/security.md rule 3); a year is already far beyond any sane role,
# and the bound keeps now + ttl comfortably inside the uint64 fields of a cert.
_CEILING = 366 * 86400

_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")  # role and group names
_NAME_TEXT = "^[a-z0-9][a-z0-9_.-]{0,63}$"
# idp:PROVIDER:GROUP (an IdP's group names are its own: letters, digits and a few marks) and workload:NAME.
_VOUCHED_RE = re.compile(r"idp:[a-z0-9][a-z0-9_-]{0,31}:[A-Za-z0-9_.@/ -]{1,128}|workload:[a-z0-9][a-z0-9_-]{0,31}")

_TOP_KEYS = ("defaults", "groups", "roles", "hosts")
_HOST_KEYS = ("description", "principals", "names", "ttl", "max_ttl")
_DEFAULT_HOST_MAX_TTL = "30d"
# A host name pattern: host-name characters and the shell wildcards * and ? (fnmatch).
_HOST_PATTERN_RE = re.compile(r"[a-z0-9*?-]{1,63}")
_DEFAULTS_KEYS = ("ttl", "max_ttl", "extensions", "role", "reserved_principals")
_ROLE_KEYS = (
    "description",
    "members",
    "principals",
    "ttl",
    "max_ttl",
    "extensions",
    "force_command",
    "source_address",
    "require_reason",
    "require_mfa",
    "approval",
    "max_auth_age",
    "require_amr",
    "require_acr",
)
# Keys a future version will understand: refused with a message saying so,
# so that a policy never appears to demand something the CA does not enforce.
_RESERVED_KEYS: dict[str, str] = {}
_APPROVAL_KEYS = ("approvers", "required", "expires", "require_mfa")
_DEFAULT_APPROVAL_EXPIRES = "1h"


# --------------------------------------------------------------------------
# Loading


def load_policy(path: str | os.PathLike[str], principal_pattern: str = DEFAULT_PRINCIPAL_PATTERN) -> Policy:
    """Read and validate the policy file at ``path``; raise PolicyError if it is unusable."""
    shown = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise PolicyError(f"{shown}: cannot read policy: {e.strerror or e}") from None
    return parse_policy(data, path=shown, principal_pattern=principal_pattern)


def parse_policy(
    data: bytes, path: str = "policy.toml", principal_pattern: str = DEFAULT_PRINCIPAL_PATTERN
) -> Policy:
    """Parse and validate policy ``data`` (the file's bytes); ``path`` is used in messages.

    Raises :class:`~ca.errors.PolicyError` and nothing else, whatever the
    input (docs/security.md rule 21: every parser is fuzzed).
    """
    return _Parser(str(path), principal_pattern).parse(data)


class _Reported(Exception):
    """A role whose mistakes were each recorded in ``_Parser.errors``; the role itself is not built."""


class _Parser:
    """One parse of one file; holds the path and pattern for error messages."""

    def __init__(self, path: str, principal_pattern: Any):
        self.errors: list[str] = []  # every mistake of this run; raised together at the end (parse)
        self.path = path
        if not isinstance(principal_pattern, str):
            raise PolicyError(f"{path}: principal pattern must be a string, got {principal_pattern!r}")
        try:
            re.compile(principal_pattern)
        except (re.error, RecursionError, OverflowError) as e:
            raise PolicyError(f"{path}: invalid principal pattern {principal_pattern!r}: {e}") from None
        self.pattern = principal_pattern

    def fail(self, where: str, message: str) -> PolicyError:
        return PolicyError(f"{self.path}: {where}: {message}")

    # -- the document ----------------------------------------------------------

    def parse(self, data: bytes) -> Policy:
        """The policy; or one PolicyError naming every mistake found: each role, host role and
        unknown key is checked even after an earlier one failed (``PolicyError.errors``)."""
        try:
            policy = self._parse(data)
        except PolicyError as e:
            self.errors.append(e.message)
            policy = None
        if self.errors:
            first, more = self.errors[0], len(self.errors) - 1
            raise PolicyError(first + (f" (and {more} more mistake{'s' if more > 1 else ''}: "
                                       "'iast-ca policy check' lists them)" if more else ""),
                              tuple(self.errors))
        return policy  # type: ignore[return-value]

    def _parse(self, data: bytes) -> Policy:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise PolicyError(f"{self.path}: expected the file's bytes, got {type(data).__name__}")
        data = bytes(data)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            line = data.count(b"\n", 0, e.start) + 1
            raise PolicyError(f"{self.path}: not UTF-8 (line {line}, byte {e.start}): {e.reason}") from None
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise PolicyError(f"{self.path}: invalid TOML: {_one_line(str(e))}") from None
        except RecursionError:  # tomllib recurses on deeply nested arrays/tables
            raise PolicyError(f"{self.path}: invalid TOML: nested too deeply") from None

        self.check_keys(doc, _TOP_KEYS, "top level", "")
        defaults = self.table(doc.get("defaults", {}), "defaults")
        self.check_keys(defaults, _DEFAULTS_KEYS, "defaults", "defaults.")

        max_ttl = self.duration(defaults.get("max_ttl", _DEFAULT_MAX_TTL), "defaults.max_ttl")
        default_ttl = self.duration(defaults.get("ttl", _DEFAULT_TTL), "defaults.ttl")
        if "ttl" in defaults and default_ttl > max_ttl:
            raise self.fail(
                "defaults.ttl",
                f"{format_duration(default_ttl)} exceeds [defaults].max_ttl {format_duration(max_ttl)}",
            )
        # With no explicit ttl, the built-in 1h default still must not exceed a smaller max_ttl.
        default_ttl = min(default_ttl, max_ttl)
        if "extensions" in defaults:
            default_ext = self.extensions(defaults["extensions"], "defaults.extensions")
        else:
            default_ext = _FALLBACK_EXTENSIONS

        groups = self.groups(self.table(doc.get("groups", {}), "groups"))
        # docs/security.md "Reserved principals": the fixed list, plus the names the policy adds.
        extra = self.string_list(defaults.get("reserved_principals", []), "defaults.reserved_principals")
        for p in extra:
            self.principal(p, "defaults.reserved_principals")
        reserved = RESERVED_PRINCIPALS | frozenset(extra)

        roles_doc = self.table(doc.get("roles", {}), "roles")
        if not roles_doc:
            raise self.fail("roles", "no roles defined (add at least one [roles.NAME] table)")
        roles: dict[str, Role] = {}
        for name, body in roles_doc.items():
            where = f"roles.{show(name)}"
            try:
                if not _NAME_RE.fullmatch(name):
                    raise self.fail(where, f"invalid role name (expected {_NAME_TEXT})")
                roles[name] = self.role(name, self.table(body, where), groups, default_ttl, max_ttl, default_ext)
            except _Reported:  # each of its mistakes is in self.errors already
                pass
            except PolicyError as e:  # the next role is checked too
                self.errors.append(e.message)

        default_role = None
        if "role" in defaults:
            default_role = self.string(defaults["role"], "defaults.role")
            if default_role not in roles_doc:
                raise self.fail("defaults.role", f"no such role {show(default_role)}")

        hosts_doc = self.table(doc.get("hosts", {}), "hosts")
        hosts: dict[str, HostRole] = {}
        for name, body in hosts_doc.items():
            where = f"hosts.{show(name)}"
            try:
                if not _NAME_RE.fullmatch(name):
                    raise self.fail(where, f"invalid host role name (expected {_NAME_TEXT})")
                hosts[name] = self.host_role(name, self.table(body, where))
            except PolicyError as e:
                self.errors.append(e.message)

        if self.errors:  # parse raises them; a policy is never built from a file with a mistake
            return None  # type: ignore[return-value]
        return Policy(
            path=self.path,
            sha256=hashlib.sha256(data).hexdigest(),
            default_ttl=default_ttl,
            max_ttl=max_ttl,
            default_extensions=default_ext,
            default_role=default_role,
            groups=MappingProxyType(groups),
            roles=MappingProxyType(roles),
            principal_pattern=self.pattern,
            hosts=MappingProxyType(hosts),
            reserved_principals=reserved,
        )

    def host_role(self, name: str, doc: dict[str, Any]) -> HostRole:
        """``[hosts.NAME]``: principals (DNS names and ``{host}`` templates), names, ttl, max_ttl.

        Host certificates are not bound by ``[defaults].max_ttl`` (a user
        session's limit); their own default is 30 days, under the same ceiling.
        """
        at = f"hosts.{name}."
        self.check_keys(doc, _HOST_KEYS, f"host role {name}", at)
        description = self.string(doc.get("description", ""), at + "description")
        if "principals" not in doc:
            raise self.fail(at + "principals", 'required (DNS names, or templates such as "{host}.example.com")')
        principals = self.string_list(doc["principals"], at + "principals", non_empty=True)
        for p in principals:
            # The longest host name (63) must still give a DNS name, so check with one that long.
            sample = p.replace(HOST_TEMPLATE, "a" * 63)
            if "{" in sample or "}" in sample:
                raise self.fail(at + "principals", f"{show(p)}: the only template is {HOST_TEMPLATE}")
            if not is_dns_name(p.replace(HOST_TEMPLATE, "a")):
                raise self.fail(at + "principals", f"{show(p)} is not a lower-case DNS name "
                                                   "(letters, digits, inner hyphens, dot-separated)")
            if len(sample) > MAX_DNS_NAME:
                raise self.fail(at + "principals", f"{show(p)} would be longer than {MAX_DNS_NAME} characters")
        names = self.string_list(doc.get("names", []), at + "names")
        for n in names:
            if not _HOST_PATTERN_RE.fullmatch(n):
                raise self.fail(at + "names", f"{show(n)} is not a host name pattern (a-z, 0-9, '-', '*', '?')")
        max_ttl = self.duration(doc.get("max_ttl", _DEFAULT_HOST_MAX_TTL), at + "max_ttl")
        ttl = max_ttl
        if "ttl" in doc:
            ttl = self.duration(doc["ttl"], at + "ttl")
            if ttl > max_ttl:
                raise self.fail(at + "ttl", f"{format_duration(ttl)} exceeds {at}max_ttl {format_duration(max_ttl)}")
        return HostRole(name=name, description=description, principals=principals, names=names, ttl=ttl,
                        max_ttl=max_ttl)

    def groups(self, doc: dict[str, Any]) -> dict[str, tuple[str, ...]]:
        out: dict[str, tuple[str, ...]] = {}
        for name, users in doc.items():
            where = f"groups.{show(name)}"
            if not _NAME_RE.fullmatch(name):
                raise self.fail(where, f"invalid group name (expected {_NAME_TEXT})")
            users = self.string_list(users, where)
            for user in users:
                if not is_user_name(user):
                    raise self.fail(where, f"invalid user name {show(user)} (expected {USER_NAME_TEXT})")
            out[name] = users
        return out

    def role(
        self,
        name: str,
        doc: dict[str, Any],
        groups: Mapping[str, tuple[str, ...]],
        default_ttl: int,
        default_max_ttl: int,
        default_ext: tuple[str, ...],
    ) -> Role:
        """One role. Every field is checked, even after another one failed: each mistake is recorded
        (``policy check`` lists them all) and the role is then refused as a whole (:class:`_Reported`)."""
        at = f"roles.{name}."
        before = len(self.errors)
        self.check_keys(doc, _ROLE_KEYS, f"role {name}", at)

        def field(check: Callable[[], Any], fallback: Any) -> Any:
            try:
                return check()
            except PolicyError as e:
                self.errors.append(e.message)
                return fallback

        description = field(lambda: self.string(doc.get("description", ""), at + "description"), "")
        members = field(lambda: self.members(doc, at, groups), ())
        principals = field(lambda: self.principals(doc, at), ())
        max_ttl = field(lambda: self.role_max_ttl(doc, at, default_max_ttl), None)
        ttl = field(lambda: self.role_ttl(doc, at, default_ttl, max_ttl if max_ttl is not None else default_max_ttl),
                    0)
        extensions = field(lambda: self.extensions(doc["extensions"], at + "extensions")
                           if "extensions" in doc else default_ext, default_ext)
        force_command = field(lambda: self.force_command(doc, at), None)
        source_address = field(lambda: self.networks(doc["source_address"], at + "source_address")
                               if "source_address" in doc else (), ())
        approval = field(lambda: self.approval(doc["approval"], at + "approval", groups)
                         if "approval" in doc else None, None)
        require_reason = field(lambda: self.boolean(doc.get("require_reason", False), at + "require_reason"), False)
        require_mfa = field(lambda: self.boolean(doc.get("require_mfa", False), at + "require_mfa"), False)
        max_auth_age = field(lambda: self.duration(doc["max_auth_age"], at + "max_auth_age")
                             if "max_auth_age" in doc else None, None)
        require_amr = field(lambda: self.idp_values(doc, "require_amr", at), ())
        require_acr = field(lambda: self.idp_values(doc, "require_acr", at), ())
        if len(self.errors) > before:
            raise _Reported()
        return Role(
            name=name,
            description=description,
            members=members,
            principals=principals,
            ttl=ttl,
            max_ttl=max_ttl,
            extensions=extensions,
            force_command=force_command,
            source_address=source_address,
            require_reason=require_reason,
            require_mfa=require_mfa,
            approval=approval,
            max_auth_age=max_auth_age,
            require_amr=require_amr,
            require_acr=require_acr,
        )

    def members(self, doc: dict[str, Any], at: str, groups: Mapping[str, tuple[str, ...]]) -> tuple[str, ...]:
        if "members" not in doc:
            raise self.fail(at + "members", "required (user names, \"group:NAME\" or \"*\")")
        members = self.string_list(doc["members"], at + "members", non_empty=True)
        for m in members:
            if m == "*":
                continue
            if m.startswith("idp:") or m.startswith("workload:"):
                if not _VOUCHED_RE.fullmatch(m):
                    raise self.fail(at + "members", f"{show(m)}: expected idp:PROVIDER:GROUP or workload:NAME")
                continue
            if m.startswith("group:"):
                if m[len("group:") :] not in groups:
                    raise self.fail(at + "members", f"{show(m)}: no such group in [groups]")
            elif not is_user_name(m):
                raise self.fail(
                    at + "members",
                    f"{show(m)} is not a user name ({USER_NAME_TEXT}), \"group:NAME\" or \"*\"",
                )
        return members

    def principals(self, doc: dict[str, Any], at: str) -> tuple[str, ...]:
        # Rule 1: "any principal" must not be expressible, so the list is
        # required and non-empty, and every entry is checked.
        if "principals" not in doc:
            raise self.fail(at + "principals", "required (at least one name, or \"{user}\")")
        principals = self.string_list(doc["principals"], at + "principals", non_empty=True)
        for p in principals:
            self.principal(p, at + "principals")
        return principals

    def role_max_ttl(self, doc: dict[str, Any], at: str, default_max_ttl: int) -> int:
        if "max_ttl" not in doc:
            return default_max_ttl
        max_ttl = self.duration(doc["max_ttl"], at + "max_ttl")
        if max_ttl > default_max_ttl:
            raise self.fail(
                at + "max_ttl",
                f"{format_duration(max_ttl)} exceeds [defaults].max_ttl {format_duration(default_max_ttl)}",
            )
        return max_ttl

    def role_ttl(self, doc: dict[str, Any], at: str, default_ttl: int, max_ttl: int) -> int:
        if "ttl" not in doc:
            return min(default_ttl, max_ttl)  # the file-wide default is capped by this role's own limit
        ttl = self.duration(doc["ttl"], at + "ttl")
        if ttl > max_ttl:
            raise self.fail(at + "ttl", f"{format_duration(ttl)} exceeds {at}max_ttl {format_duration(max_ttl)}")
        return ttl

    def force_command(self, doc: dict[str, Any], at: str) -> str | None:
        if "force_command" not in doc:
            return None
        force_command = self.string(doc["force_command"], at + "force_command")
        if not force_command.strip():
            raise self.fail(at + "force_command", "must not be empty")
        if any(c in force_command for c in "\x00\r\n"):
            raise self.fail(at + "force_command", "must not contain NUL or line breaks")
        return force_command

    def approval(self, value: Any, where: str, groups: Mapping[str, tuple[str, ...]]) -> Approval:
        """``approval = { approvers = [...], required = N, expires = "1h" }``.

        Approvers are user names or ``group:NAME`` of a declared group (never
        ``*``: approval by anyone at all is no approval). ``required`` is at
        least 1 and no more than the distinct users the approvers expand to,
        or the role could never be used.
        """
        doc = self.table(value, where)
        self.check_keys(doc, _APPROVAL_KEYS, "approval", where + ".")
        if "approvers" not in doc:
            raise self.fail(where + ".approvers", 'required (user names or "group:NAME")')
        approvers = self.string_list(doc["approvers"], where + ".approvers", non_empty=True)
        for a in approvers:
            if a.startswith("group:"):
                if a[len("group:") :] not in groups:
                    raise self.fail(where + ".approvers", f"{show(a)}: no such group in [groups]")
            elif not is_user_name(a):
                raise self.fail(where + ".approvers", f'{show(a)} is not a user name ({USER_NAME_TEXT}) or "group:NAME"')
        required = doc.get("required", 1)
        if type(required) is not int or required < 1:
            raise self.fail(where + ".required", f"expected an integer of at least 1, got {_type(required)}")
        users = expand_users(approvers, groups)
        if required > len(users):
            raise self.fail(
                where + ".required",
                f"{required} exceeds the {len(users)} distinct users the approvers expand to"
                + (f" ({', '.join(users)})" if users else ""),
            )
        expires = self.duration(doc.get("expires", _DEFAULT_APPROVAL_EXPIRES), where + ".expires")
        require_mfa = self.boolean(doc.get("require_mfa", False), where + ".require_mfa")
        return Approval(approvers=approvers, required=required, expires=expires, require_mfa=require_mfa)

    # -- fields --------------------------------------------------------------

    def check_keys(self, doc: dict[str, Any], allowed: tuple[str, ...], section: str, prefix: str) -> None:
        # Unknown keys are errors, not ignored: a misspelt "require_mfa" or an
        # invented critical option ("permit_open") must not silently grant
        # more than the author meant (docs/security.md rule 4).
        for key in doc:
            if key in allowed:
                continue
            # Each unknown key is one mistake of the run (parse raises them together), with the key meant.
            if key in _RESERVED_KEYS:
                self.errors.append(self.fail(prefix + key, _RESERVED_KEYS[key]).message)
                continue
            self.errors.append(self.fail(
                prefix + show(key),
                f"unknown key in {section}{did_you_mean(key, allowed)} (allowed: {', '.join(allowed)})",
            ).message)

    def table(self, value: Any, where: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(where, f"expected a table, got {_type(value)}")
        return value

    def string(self, value: Any, where: str) -> str:
        if not isinstance(value, str):
            raise self.fail(where, f"expected a string, got {_type(value)}")
        return value

    def boolean(self, value: Any, where: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(where, f"expected true or false, got {_type(value)}")
        return value

    def idp_values(self, doc: dict[str, Any], key: str, at: str) -> tuple[str, ...]:
        """``require_amr``/``require_acr``: a non-empty list of the IdP's short method or class names."""
        if key not in doc:
            return ()
        values = self.string_list(doc[key], at + key, non_empty=True)
        for v in values:
            if not (0 < len(v) <= 128 and v.isprintable() and not v.isspace()):
                raise self.fail(at + key, f"{show(v)} is not an IdP method or class name")
        return values

    def string_list(self, value: Any, where: str, non_empty: bool = False) -> tuple[str, ...]:
        if not isinstance(value, list):
            raise self.fail(where, f"expected a list of strings, got {_type(value)}")
        if non_empty and not value:
            raise self.fail(where, "must not be empty")
        seen: set[str] = set()
        for item in value:
            if not isinstance(item, str):
                raise self.fail(where, f"expected a list of strings, found {_type(item)}")
            if item in seen:
                raise self.fail(where, f"{show(item)} is listed twice")
            seen.add(item)
        return tuple(value)  # file order

    def duration(self, value: Any, where: str) -> int:
        try:
            seconds = parse_duration(value)
        except ValueError as e:
            raise self.fail(where, _one_line(str(e))) from None
        if seconds > _CEILING:
            raise self.fail(where, f"{show(value)} is longer than the ceiling {format_duration(_CEILING)}")
        return seconds

    def extensions(self, value: Any, where: str) -> tuple[str, ...]:
        names = self.string_list(value, where)  # rejects duplicates
        for name in names:
            if name not in EXTENSIONS:
                raise self.fail(
                    where, f"unknown extension {show(name)} (known: {', '.join(sorted(EXTENSIONS))})"
                )
        # OpenSSH expects extensions sorted by name (PROTOCOL.certkeys).
        return tuple(sorted(names))

    def principal(self, p: str, where: str) -> None:
        """Check a literal principal, or the fixed parts of a ``{user}`` template.

        A template's expansion depends on the user, so :meth:`Policy.decide`
        checks it against the pattern again on every request.
        """
        literal = p.replace(USER_TEMPLATE, "")
        if PRINCIPAL_FORBIDDEN.search(literal):
            raise self.fail(where, f"{show(p)} contains a comma, '*', whitespace or a control character")
        if "{" in literal or "}" in literal:
            raise self.fail(where, f"{show(p)}: the only template is {USER_TEMPLATE}")
        if USER_TEMPLATE not in p and not re.fullmatch(self.pattern, p):
            raise self.fail(where, f"{show(p)} does not match {self.pattern}")

    def networks(self, value: Any, where: str) -> tuple[str, ...]:
        items = self.string_list(value, where, non_empty=True)
        out: list[str] = []
        for item in items:
            try:
                net = ipaddress.ip_network(item, strict=True)
            except ValueError:
                # Say which mistake it is: a typo, or host bits set (which
                # strict parsing refuses so that "10.20.0.1/16" is not
                # silently widened or misread).
                try:
                    loose = ipaddress.ip_network(item, strict=False)
                except ValueError:
                    raise self.fail(where, f"{show(item)} is not an address or CIDR") from None
                raise self.fail(where, f"{show(item)} has host bits set (did you mean {loose}?)") from None
            text = str(net)
            if text in out:
                raise self.fail(where, f"{show(item)} is listed twice")
            out.append(text)
        return tuple(out)


# --------------------------------------------------------------------------
# Small helpers


def _type(value: Any) -> str:
    """Describe a TOML value for an error: its type, and its text when short."""
    kind = {dict: "a table", list: "a list", str: "a string", bool: "a boolean", int: "an integer", float: "a float"}
    name = kind.get(type(value), type(value).__name__)
    if isinstance(value, (dict, list)):
        return name
    return f"{name} ({show(value)})"


def _one_line(text: str) -> str:
    return " ".join(text.split())
