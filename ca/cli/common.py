"""What both command-line tools share: error mapping, output options, and the two output escapes.

Output cannot attack its reader (docs/security.md, "Output cannot attack its reader"):
every line a command prints goes through :func:`terminal_safe` (via :func:`echo`,
:func:`echo_table` and the error line), and every CSV cell through :func:`csv_cell`.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import logging
import os
import sys
from collections.abc import Callable, Iterable
from typing import Any

import click

from ca.errors import EXIT_INTERRUPTED, EXIT_OK, CAError, did_you_mean


from ca.cli.text import terminal_safe  # noqa: E402,F401 - click-free, for the fast login (ca.cli.fast_login)


# A spreadsheet runs a cell that starts with one of these as a formula (OWASP "CSV Injection").
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """One CSV cell a spreadsheet cannot run: text starting with ``=``, ``+``, ``-``, ``@``,
    tab or CR is prefixed with ``'``; controls are escaped as on a terminal. Numbers and
    None pass as they are."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    text = str(value)
    return ("'" if text.startswith(_FORMULA_START) else "") + terminal_safe(text)


def echo(message: Any = None, nl: bool = True, err: bool = False, **kw: Any) -> None:
    """``click.echo`` for every line a command prints: text through :func:`terminal_safe`
    (the command's own line breaks kept); bytes (a KRL) pass untouched."""
    if isinstance(message, (bytes, bytearray)):
        click.echo(message, nl=nl, err=err, **kw)
        return
    click.echo(None if message is None else terminal_safe(message, keep_newlines=True), nl=nl, err=err, **kw)


class CommandFailed(click.ClickException):
    """A library error shown as one line on stderr, with the error's own exit status."""

    def __init__(self, error: CAError):
        super().__init__(error.message)
        self.exit_code = error.exit_status
        self.code = error.code

    def show(self, file: Any = None) -> None:
        click.echo(f"Error: {terminal_safe(self.message)}", err=True)


def _quiet_stdout() -> None:
    """After the reader of our output went away: point stdout at /dev/null, so the interpreter's
    last flush at exit does not raise (and print) the same broken pipe again."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (a test runner's buffer)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


class Group(click.Group):
    """A click group that turns any :class:`CAError` raised below it into a clean exit.

    Two endings are not errors and print no ``Error:`` line (README, "Exit codes"):
    a closed output pipe (``iast-ca audit list | head -3``) stops the command and exits 0,
    as a reader that has seen enough is not a failure (the command's own transaction, and
    ``audit export``'s cursor, are not advanced past what was written); Ctrl-C exits 130
    (128 + SIGINT) after a line break, without click's ``Aborted!``.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            _quiet_stdout()
            raise click.exceptions.Exit(EXIT_OK) from None
        except KeyboardInterrupt:
            raise _interrupted() from None
        except click.Abort as e:
            if isinstance(e.__context__, KeyboardInterrupt):  # Ctrl-C at a click prompt
                raise _interrupted() from None
            raise
        except CAError as e:
            raise CommandFailed(e) from None
        except OSError as e:  # a file we could not read or write: one line, not a traceback
            where = f"{e.filename}: " if e.filename else ""
            raise CommandFailed(CAError(f"{where}{e.strerror or e}")) from None
        except UnicodeError as e:
            raise CommandFailed(CAError(f"input is not valid UTF-8 text: {e}")) from None


def _interrupted() -> click.exceptions.Exit:
    # The process ends here: asyncio's "Task exception was never retrieved" about the tasks the
    # interrupt cut short (the client's connection attempt) would only print a traceback.
    logging.getLogger("asyncio").disabled = True
    try:
        click.echo("", err=True)  # end the line the ^C was echoed on
    except OSError:
        pass
    return click.exceptions.Exit(EXIT_INTERRUPTED)


class Choice(click.Choice):
    """``click.Choice`` whose refusal names the closest choice: ``'deneid' is not one of ...
    (did you mean 'denied'?)``. Exit 2, like every usage error."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            return super().convert(value, param, ctx)
        except click.BadParameter as e:
            raise click.BadParameter(f"{e.message}{did_you_mean(str(value), self.choices)}", ctx, param) from None


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
    # ensure_ascii: every control, C1 and bidi character is a \\u escape in the JSON text
    click.echo(json.dumps(obj, indent=2, sort_keys=False, default=str))


def echo_csv(rows: Iterable[dict[str, Any]], fields: list[str]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow({k: csv_cell(json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in row.items()})
    click.echo(buf.getvalue(), nl=False)


def echo_table(rows: list[list[Any]], headers: list[str]) -> None:
    cells = [[terminal_safe(c) for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    click.echo("  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip())
    for r in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


def truncated_note(limit: int, what: str) -> None:
    """The note a list command prints on stderr when it stopped at ``--limit`` (more matched)."""
    echo(f"note: showing the first {limit} {what}s; more match (raise --limit, or narrow the filters)", err=True)


def stderr_is_tty() -> bool:
    return sys.stderr.isatty()
