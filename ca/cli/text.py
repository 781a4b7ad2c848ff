"""The output escape every printed line goes through, without click (``ca.cli.fast_login`` uses it
before click is loaded; :mod:`ca.cli.common` re-exports it). docs/security.md, "Output cannot attack
its reader"."""

from __future__ import annotations

import unicodedata
from typing import Any

__all__ = ["terminal_safe"]


# Unicode categories shown escaped on a terminal: controls (C0, DEL, C1), format characters
# (bidi overrides and isolates, zero-width characters), surrogates, line and paragraph separators.
_ESCAPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def _escape(c: str) -> str:
    n = ord(c)
    return f"\\x{n:02x}" if n <= 0xFF else f"\\u{n:04x}" if n <= 0xFFFF else f"\\U{n:08x}"


def terminal_safe(value: Any, *, keep_newlines: bool = False) -> str:
    """``value`` as text a terminal shows as written: every C0 and C1 control, DEL, bidi
    override or isolate, other format character and line or paragraph separator becomes a
    visible escape (``\\x1b``, ``\\u202e``). With ``keep_newlines``, ``\\n`` stays (for output the
    command itself lays out on several lines)."""
    text = "" if value is None else str(value)
    if text.isprintable():
        return text
    out = []
    for c in text:
        if c == "\n" and keep_newlines:
            out.append(c)
        elif unicodedata.category(c) in _ESCAPED_CATEGORIES:
            out.append(_escape(c))
        else:
            out.append(c)
    return "".join(out)
