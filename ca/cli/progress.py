"""Progress bars for the commands that can run long, on a terminal only.

A bar goes to stderr, and only when stderr is a terminal: piped or captured
output (scripts, --json, cron mail) never gets one, so the bar never changes
what a command prints.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import click

from ca.cli.common import stderr_is_tty


@contextmanager
def progress(label: str, length: int | None = None, *, show: bool = True) -> Iterator[Callable[..., None]]:
    """Yields ``update(n=1)``; draws a bar of ``length`` steps when shown, else does nothing."""
    if not (show and stderr_is_tty()):
        yield lambda *_a, **_k: None
        return
    with click.progressbar(length=length, label=label, file=sys.stderr) as bar:
        yield lambda n=1, *_a: bar.update(n if isinstance(n, int) else 1)


@contextmanager
def progress_iter(label: str, items: Iterable[Any], *, show: bool = True) -> Iterator[Iterable[Any]]:
    """``items``, counted on a bar as they are consumed (no length needed)."""
    if not (show and stderr_is_tty()):
        yield items
        return
    with click.progressbar(items, label=label, file=sys.stderr) as bar:
        yield bar
