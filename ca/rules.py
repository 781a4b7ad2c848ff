"""One validator per rule: user names, principals, and free text a reviewer will read.

Every module that accepts one of these calls the function here, so that a
name the user store enrols is exactly a name the authority certifies, a
principal policy accepts is exactly one the signer signs, and a reason is
held to one rule whether it comes with a sign request, a revocation, an
approval or an administrator's command (docs/security.md, rules 2 and 9).
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from ca.errors import AuthenticationFailed, CAError, UsageError

# -- user names ---------------------------------------------------------------
# A user name ends up in key IDs and, through {user}, in principals; the
# rule is the portable POSIX login name, lower case, at most 32 characters.
USER_NAME_TEXT = "^[a-z_][a-z0-9_.-]{0,31}$"
_USER_NAME = re.compile(r"[a-z_][a-z0-9_.-]{0,31}")


def is_user_name(name: Any) -> bool:
    """True if ``name`` is an acceptable user name (``^[a-z_][a-z0-9_.-]{0,31}$``)."""
    return isinstance(name, str) and _USER_NAME.fullmatch(name) is not None


def check_user_name(name: Any, error: type[CAError] = UsageError) -> str:
    """``name`` if it is an acceptable user name, else ``error`` with a one-line message."""
    if not is_user_name(name):
        raise error(f"invalid user name {str(name)[:40]!r}: expected {USER_NAME_TEXT}")
    return name


# -- principals -----------------------------------------------------------------
# The default pattern a principal must match (the config can narrow or widen it).
# The SSH user name a workload connects as (``ssh workload@CA sign --token -``): with a
# [workload.*] section it is no account, and SSH "none" accepts it for one token-authenticated
# request only (docs/security.md rule 14). The client and the service both need the name.
WORKLOAD_USER = "workload"

# -- logins by certificate (docs/security.md rule 80) -------------------------------------
# The key of a current certificate this CA issued to a user proves that user again, for the
# commands that read or ask; never for one that makes a certificate or decides a request.
CERTIFICATE_LOGIN = "certificate"
CERTIFICATE_LOGIN_REFUSED = frozenset({"sign", "approve", "deny"})


def check_certificate_login(command: str, auth_methods: tuple[str, ...]) -> None:
    """AuthenticationFailed when a login by certificate asks for ``sign``, ``approve`` or ``deny``."""
    if CERTIFICATE_LOGIN in auth_methods and command in CERTIFICATE_LOGIN_REFUSED:
        raise AuthenticationFailed(f"{command} needs your key, password or single sign-on: a login with a "
                                   "certificate cannot get another certificate or decide a request")


# A login by a one-time enrolment code (ca.auth.enrol, docs/security.md rule 86) runs ``enroll``
# only, and ``enroll`` runs for such a login only.
ENROLMENT_LOGIN = "enrolment-code"


def check_enrolment_login(command: str, auth_methods: tuple[str, ...]) -> None:
    """AuthenticationFailed unless (an enrolment-code login) == (the command is ``enroll``); ``help`` for all."""
    if command == "help":
        return
    if ENROLMENT_LOGIN in auth_methods and command != "enroll":
        raise AuthenticationFailed(f"an enrolment code logs in for 'enroll' only, not {command}: after enrolling, "
                                   "log in with the key or password you registered")
    if command == "enroll" and ENROLMENT_LOGIN not in auth_methods:
        raise AuthenticationFailed("enroll needs an enrolment code ('iast-ca user invite' prints one): "
                                   "ssh -o KbdInteractiveDevices=enrol USER@CA enroll, or 'iast-ssh enroll'")


DEFAULT_PRINCIPAL_PATTERN = r"^[a-z_][a-z0-9_.-]{0,31}$"
# Never allowed in a principal, whatever the configured pattern says: a comma
# splits principal lists in asyncssh and in sshd's matching (CVE-2026-35414), "*", "?" and "!"
# are sshd pattern syntax, whitespace separates fields in authorized_principals
# files, and control characters reach logs.
PRINCIPAL_FORBIDDEN = re.compile(r"[,\s*?!\x00-\x1f\x7f]")


def principal_ok(principal: Any, pattern: str = DEFAULT_PRINCIPAL_PATTERN) -> bool:
    """True if ``principal`` is non-empty, has no forbidden character, and matches ``pattern``."""
    return (
        isinstance(principal, str)
        and bool(principal)
        and not PRINCIPAL_FORBIDDEN.search(principal)
        and re.fullmatch(pattern, principal) is not None
    )


def principal_safe(principal: Any) -> bool:
    """True if ``principal`` is non-empty and has no forbidden character (the signer's last check)."""
    return isinstance(principal, str) and bool(principal) and not PRINCIPAL_FORBIDDEN.search(principal)


# Principals no ``{user}`` expansion may produce, and user names not enrolled without
# ``--allow-reserved`` (docs/security.md, "Reserved principals"): hosts that map a principal
# to the account of the same name would otherwise let a user enrolled as ``root`` log in as
# root. A fixed list, never read from the CA host's own accounts; a policy may add names.
RESERVED_PRINCIPALS = frozenset({"root", "admin", "administrator", "toor", "daemon", "bin", "sys", "sync",
                                 "shutdown", "halt"})


def check_not_reserved(name: str, reserved: frozenset[str] = RESERVED_PRINCIPALS, *, allow: bool = False,
                       error: type[CAError] = UsageError) -> str:
    """``name`` unless it is a reserved principal (and ``allow`` is false): then ``error``."""
    if name in reserved and not allow:
        raise error(f"{name} is a reserved name (a host would map it to its own {name} account): "
                    "enrol it only on purpose, with --allow-reserved")
    return name


# -- free text --------------------------------------------------------------------
MAX_TEXT = 500
# Unicode categories refused in free text: controls (C0, DEL and C1), format
# characters (bidi overrides and isolates, zero-width joiners), surrogates, and
# line and paragraph separators. A reviewer reads this text in a terminal, a
# CSV or a page, and none of these may change what they see.
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def free_text(value: Any, what: str = "reason", *, limit: int = MAX_TEXT,
              error: type[CAError] = UsageError) -> str | None:
    """Free text (a reason, a comment): stripped, or None when empty; ``error`` when it is
    not text, longer than ``limit`` characters, or holds a control or formatting character."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise error(f"the {what} must be text")
    text = value.strip()
    if len(text) > limit:
        raise error(f"the {what} is too long ({len(text)} characters; at most {limit})")
    for c in text:
        if unicodedata.category(c) in _REFUSED_CATEGORIES:
            raise error(f"the {what} must be one line without control characters (found U+{ord(c):04X})")
    return text or None


# -- host names -------------------------------------------------------------------
# A host name (``--host web-1``) is one DNS label, lower case (RFC 1123: letters,
# digits and inner hyphens, at most 63). It goes into key IDs, into the names a
# host certificate is valid for (through ``{host}``), and into the CA's host
# account ``host:NAME``; one rule keeps all three the same (docs/security.md,
# "Host certificates").
HOST_NAME_TEXT = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
_HOST_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
# The account a host authenticates to the CA service as. ":" is never in a user
# name (USER_NAME_TEXT), so no user can log in as a host, nor a host as a user.
HOST_ACCOUNT_PREFIX = "host:"
MAX_DNS_NAME = 253


def is_host_name(name: Any) -> bool:
    """True if ``name`` is an acceptable host name: one lower-case DNS label."""
    return isinstance(name, str) and _HOST_LABEL.fullmatch(name) is not None


def check_host_name(name: Any, error: type[CAError] = UsageError) -> str:
    """``name`` if it is an acceptable host name, else ``error`` with a one-line message."""
    if not is_host_name(name):
        raise error(f"invalid host name {str(name)[:64]!r}: expected one DNS label, {HOST_NAME_TEXT}")
    return name


def is_dns_name(name: Any) -> bool:
    """True if ``name`` is a lower-case DNS name (dot-separated host labels, at most 253
    characters, no trailing dot): what a host certificate principal must be."""
    return (isinstance(name, str) and 0 < len(name) <= MAX_DNS_NAME
            and all(_HOST_LABEL.fullmatch(label) for label in name.split(".")))


def host_account(host: str) -> str:
    """The CA account of a host: ``host:NAME`` (also the ``username`` of its certificate rows)."""
    return HOST_ACCOUNT_PREFIX + check_host_name(host)


def host_of_account(account: Any) -> str | None:
    """The host name of a ``host:NAME`` account, or None when ``account`` is not one."""
    if isinstance(account, str) and account.startswith(HOST_ACCOUNT_PREFIX):
        name = account[len(HOST_ACCOUNT_PREFIX):]
        return name if is_host_name(name) else None
    return None
