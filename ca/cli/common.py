"""What both command-line tools share: error mapping and output options."""

from __future__ import annotations

import csv
import functools
import io
import json
import sys
from collections.abc import Callable, Iterable
from typing import Any

import click

from ca.errors import CAError


class CommandFailed(click.ClickException):
    """A library error shown as one line on stderr, with the error's own exit status."""

    def __init__(self, error: CAError):
        super().__init__(error.message)
        self.exit_code = error.exit_status
        self.code = error.code

    def show(self, file: Any = None) -> None:
        click.echo(f"Error: {self.message}", err=True)


class Group(click.Group):
    """A click group that turns any :class:`CAError` raised below it into a clean exit."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CAError as e:
            raise CommandFailed(e) from None
        except OSError as e:  # a file we could not read or write: one line, not a traceback
            where = f"{e.filename}: " if e.filename else ""
            raise CommandFailed(CAError(f"{where}{e.strerror or e}")) from None
        except UnicodeError as e:
            raise CommandFailed(CAError(f"input is not valid UTF-8 text: {e}")) from None


def output_options(*, csv_ok: bool = True) -> Callable:
    """``--json`` (and ``--csv``) for every command a person might script; passes ``fmt``."""

    def decorator(f: Callable) -> Callable:
        @click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
        @functools.wraps(f)
        def wrapper(*args: Any, as_json: bool, as_csv: bool = False, **kw: Any) -> Any:
            if as_json and as_csv:
                raise click.UsageError("--json and --csv cannot be used together")
            return f(*args, fmt="json" if as_json else "csv" if as_csv else "text", **kw)

        if csv_ok:
            wrapper = click.option("--csv", "as_csv", is_flag=True, help="Print CSV instead of text.")(wrapper)
        return wrapper

    return decorator


def echo_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=False, default=str))


def echo_csv(rows: Iterable[dict[str, Any]], fields: list[str]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in row.items()})
    click.echo(buf.getvalue(), nl=False)


def echo_table(rows: list[list[Any]], headers: list[str]) -> None:
    cells = [[("" if c is None else str(c)) for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    click.echo("  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip())
    for r in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


def stderr_is_tty() -> bool:
    return sys.stderr.isatty()
