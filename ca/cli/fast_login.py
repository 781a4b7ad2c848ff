"""The ``iast-ssh`` entry point: ``iast-ssh login`` with common options starts without click.

Loading click and the command modules costs a login more than the ``ssh``
that carries it (README, "What changed for issue 14"). So the console script
starts here: a ``login`` whose every argument is one of the options in
:data:`_VALUE_OPTIONS` / :data:`_FLAGS` (each spelled as ``iast-ssh login
--help`` shows it, with one value each, given at most once) runs
:meth:`ca.client.Client.login` directly and prints what the click command
prints (:func:`show_login`, shared with it). Anything else (another command,
``--help``, another option, a value that looks like an option) goes to the
click application (:mod:`ca.cli.client`) untouched, which also gives every
usage error. tests/test_fast_login.py checks that the two parse alike.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

__all__ = ["main", "parse_login", "show_login"]

# option spelling -> keyword, for the options of 'iast-ssh login' this path reads (all take one value)
_VALUE_OPTIONS = {
    "--ca": "ca", "--ca-fingerprint": "ca_fingerprint", "-l": "user", "--user": "user",
    "-i": "identity", "--identity": "identity", "-P": "profile", "--profile": "profile",
    "-r": "role", "--role": "role", "--ttl": "ttl", "--reason": "reason", "--otp": "otp",
}
_FLAGS = {"--json": "as_json"}


def parse_login(argv: list[str]) -> dict[str, Any] | None:
    """The options of ``login ARGS...`` as keywords, or None when click must parse them."""
    import os

    if not argv or argv[0] != "login":
        return None
    out: dict[str, Any] = {}
    args = argv[1:]
    i = 0
    while i < len(args):
        a = args[i]
        if a in _FLAGS:
            name, value = _FLAGS[a], True
        elif a.startswith("--") and "=" in a and a.split("=", 1)[0] in _VALUE_OPTIONS:
            opt, value = a.split("=", 1)
            name = _VALUE_OPTIONS[opt]
        elif a in _VALUE_OPTIONS and i + 1 < len(args):
            name, value = _VALUE_OPTIONS[a], args[i + 1]
            i += 1
        else:
            return None
        if name in out or (value is not True and (not value or value.startswith("-"))):
            return None
        out[name] = value
        i += 1
    if "identity" in out and os.path.isdir(out["identity"]):
        return None  # click's error
    return out


def _write(text: str, err: bool = False) -> None:
    from ca.cli.text import terminal_safe

    stream = sys.stderr if err else sys.stdout
    stream.write(terminal_safe(text, keep_newlines=True) + "\n")
    stream.flush()


def _write_json(obj: Any) -> None:
    import json

    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")
    sys.stdout.flush()


def show_login(result, fmt: str, echo: Callable[..., None] = _write, echo_json: Callable[[Any], None] = _write_json) -> None:
    """What ``iast-ssh login`` prints (both entry points)."""
    import datetime as dt

    from ca.durations import format_duration

    if fmt == "json":
        echo_json(result.as_json())
    else:
        until = dt.datetime.fromtimestamp(result.valid_before, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
        echo(f"Certificate {result.key_id} (serial {result.serial}): principals {', '.join(result.principals)}, "
             f"role {result.role}, valid for {format_duration(result.seconds_left())} (until {until}).")
        if result.force_command:
            echo(f"  force-command: {result.force_command}")
        if result.source_address:
            echo(f"  usable only from: {', '.join(result.source_address)}")
        login_name = result.principals[0] if result.principals else "USER"
        if result.where == "agent":
            echo(f"Added to ssh-agent ({result.agent_socket}); the agent drops it when it expires.")
            echo(f"Use ssh as usual:  ssh {login_name}@HOST")
        else:
            echo(f"Wrote {result.key_path} and {result.cert_path} (mode 0600).")
            echo(f"Use them with:  ssh -i {result.key_path} {login_name}@HOST")
            echo("(ssh reads the certificate from the -cert.pub file beside the key.)")
    for note in result.notes:
        echo(f"note: {note}", err=True)


class _Aborted(Exception):
    """The input ended at a prompt (click.Abort without Ctrl-C)."""


def _prompter():
    """The click command's prompts (ca.cli.client._prompter), loaded only if one is needed."""
    from ca.client.connection import Prompter

    def later(name: str, interactive: bool):
        def call(*args: Any) -> Any:
            import click

            from ca.cli.client import _prompter as prompter

            try:
                return getattr(prompter(interactive), name)(*args)
            except click.Abort as e:  # as ca.cli.common.Group reads it: Ctrl-C, or the end of input
                if isinstance(e.__context__, KeyboardInterrupt):
                    raise KeyboardInterrupt from None
                raise _Aborted from None
        return call

    if not sys.stdin.isatty():
        return Prompter(sign_in=later("sign_in", False))
    return Prompter(secret=later("secret", True), code=later("code", True),
                    confirm_host_key=later("confirm_host_key", True), sign_in=later("sign_in", True))


def _login(opts: dict[str, Any]) -> int:
    """Run the login; errors end as the click Group ends them (ca.cli.common.Group)."""
    from ca.errors import EXIT_INTERRUPTED, EXIT_OK, CAError

    try:
        try:
            from ca.client.connection import Client

            client = Client(opts.get("ca"), ca_fingerprint=opts.get("ca_fingerprint"), user=opts.get("user"),
                            identity=opts.get("identity"), profile=opts.get("profile"), prompter=_prompter())
            result = client.login(role=opts.get("role"), ttl=opts.get("ttl"), reason=opts.get("reason"),
                                  otp=opts.get("otp"))
            show_login(result, "json" if opts.get("as_json") else "text")
            return EXIT_OK
        except OSError as e:
            if isinstance(e, BrokenPipeError):
                raise
            where = f"{e.filename}: " if e.filename else ""
            raise CAError(f"{where}{e.strerror or e}") from None
        except UnicodeError as e:
            raise CAError(f"input is not valid UTF-8 text: {e}") from None
    except CAError as e:
        from ca.cli.text import terminal_safe

        sys.stderr.write(f"Error: {terminal_safe(e.message)}\n")
        return e.exit_status
    except BrokenPipeError:
        from ca.cli.common import _quiet_stdout

        _quiet_stdout()
        return EXIT_OK
    except _Aborted:
        sys.stderr.write("Aborted!\n")  # what click prints
        return 1
    except KeyboardInterrupt:
        if "asyncio" in sys.modules:  # as ca.cli.common._interrupted: no traceback of cut-short tasks
            import logging

            logging.getLogger("asyncio").disabled = True
        try:
            sys.stderr.write("\n")
        except OSError:
            pass
        return EXIT_INTERRUPTED


def main() -> int | None:
    """Console-script entry point of ``iast-ssh``."""
    opts = parse_login(sys.argv[1:])
    if opts is None:
        from ca.cli.client import main as click_main

        return click_main()
    return _login(opts)
