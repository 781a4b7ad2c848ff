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

from ca.errors import CAError, UsageError

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
