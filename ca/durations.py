"""Durations as OpenSSH and systemd users write them: ``90s``, ``30m``, ``8h``, ``1d``, ``1h30m``."""

from __future__ import annotations

import re

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_PART = re.compile(r"(\d{1,9})([smhdw])")


def parse_duration(text: str) -> int:
    """Return the number of seconds in ``text``; raise ValueError if it is not a duration.

    >>> parse_duration("1h30m")
    5400
    """
    if not isinstance(text, str):
        raise ValueError(f"expected a duration such as '30m', '8h' or '1d', got {text!r}")
    s = text.strip().lower()
    if s.isdigit():
        seconds = int(s)
    else:
        pos, seconds = 0, 0
        for m in _PART.finditer(s):
            if m.start() != pos:
                break
            seconds += int(m.group(1)) * _UNITS[m.group(2)]
            pos = m.end()
        if pos != len(s) or not s:
            raise ValueError(f"expected a duration such as '30m', '8h' or '1d', got {text!r}")
    if seconds <= 0:
        raise ValueError(f"a duration must be positive, got {text!r}")
    return seconds


def format_duration(seconds: int) -> str:
    """Format seconds the way :func:`parse_duration` reads them (``5400`` -> ``1h30m``)."""
    seconds = int(seconds)
    if seconds <= 0:
        return "0s"
    out = []
    for unit in ("d", "h", "m", "s"):
        n, seconds = divmod(seconds, _UNITS[unit])
        if n:
            out.append(f"{n}{unit}")
    return "".join(out)


def parse_time(text: str, now: float) -> float:
    """A point in time for filters: ISO 8601 (``2026-11-01``, ``2026-11-01T12:00:00Z``;
    UTC unless an offset is given) or a duration ago (``24h`` means 24 hours before ``now``)."""
    import datetime as dt

    try:
        return now - parse_duration(text)
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"expected a time such as '2026-11-01', '2026-11-01T12:00Z' or '24h' (ago), got {text!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return when.timestamp()


def clock_offset(before: float, theirs: float, after: float) -> float:
    """How far another clock read ``theirs`` lies outside the local interval [``before``,
    ``after``] in which it was read: positive when it is ahead of ours, negative when behind,
    0 when it falls inside (the round trip is the precision; no skew can be claimed below it)."""
    if theirs > after:
        return theirs - after
    if theirs < before:
        return theirs - before
    return 0.0
