"""Man pages for ``iast-ca`` and ``iast-ssh``, generated from the click commands themselves.

One page per command, as git does: ``iast-ca(1)``, ``iast-ca-audit(1)``,
``iast-ca-audit-list(1)``, ... Each has the command's help text, its options (the
same lines ``--help`` prints), its subcommands, the exit codes and SEE ALSO. Nothing
is written by hand, so a page cannot drift from the command. ``make man`` (part of
``make venv``) writes them into ``.venv/share/man/man1``; ``man iast-ca`` then finds them
with ``MANPATH=.venv/share/man:`` (README, "Man pages").

    python -m ca.cli.manpages DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ca import __version__

EXIT_CODES = (
    ("0", "ok; also when the reader of the output went away (a closed pipe)"),
    ("1", "error: config, key, state, audit database, a broken chain"),
    ("2", "usage: the command line is wrong (an unknown option or choice, a bad argument)"),
    ("3", "denied by policy"),
    ("4", "authentication failed"),
    ("5", "not found (no such user)"),
    ("130", "interrupted (Ctrl-C)"),
)


def _roff(text: str) -> str:
    """Text as roff: backslashes doubled, a leading dot or quote escaped."""
    out = []
    for line in text.replace("\\", "\\e").splitlines():
        out.append("\\&" + line if line.startswith((".", "'")) else line)
    return "\n".join(out)


def _description(cmd: click.Command) -> str:
    """The help text with click's ``\\b`` (keep these lines as they are) blocks kept verbatim."""
    paragraphs, out = (cmd.help or "").strip().split("\n\n"), []
    for p in paragraphs:
        lines = [line.strip() if not line.startswith("      ") else line for line in p.splitlines()]
        if lines and lines[0].strip() == "\b":
            out.append(".PP\n.nf\n" + _roff("\n".join(line.rstrip() for line in lines[1:])) + "\n.fi")
        else:
            out.append(".PP\n" + _roff(" ".join(line.strip() for line in lines)))
    return "\n".join(out)


def page(cmd: click.Command, path: list[str], ctx: click.Context) -> str:
    """The roff text of the page for ``cmd``, reached as ``path`` (``["iast-ca", "audit", "list"]``)."""
    name = "-".join(path)
    lines = [f'.TH "{name.upper()}" 1 "" "iast-ssh {__version__}" "iast-ssh manual"',
             ".SH NAME", f"{name} \\- {_roff(cmd.get_short_help_str(limit=200))}",
             ".SH SYNOPSIS", f".B {' '.join(path)}", _roff(" ".join(cmd.collect_usage_pieces(ctx))),
             ".SH DESCRIPTION", _description(cmd)]
    options = [r for p in cmd.get_params(ctx) if (r := p.get_help_record(ctx))]
    if options:
        lines.append(".SH OPTIONS")
        for flags, help_text in options:
            lines += [".TP", f".B {_roff(flags)}", _roff(help_text)]
    if isinstance(cmd, click.Group):
        lines.append(".SH COMMANDS")
        for sub_name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, sub_name)
            if sub is None or sub.hidden:
                continue
            lines += [".TP", f".B {sub_name}", _roff(sub.get_short_help_str(limit=200)) +
                      f" See \\fB{name}-{sub_name}\\fR(1)."]
    lines.append(".SH EXIT STATUS")
    for code, meaning in EXIT_CODES:
        lines += [".TP", f".B {code}", meaning]
    see = sorted({"iast-ca", "iast-ssh", path[0] if len(path) == 1 else "-".join(path[:-1])} - {name})
    lines += [".SH SEE ALSO", ", ".join(f"\\fB{s}\\fR(1)" for s in see) + ", \\fBssh\\fR(1), \\fBsshd_config\\fR(5)"]
    return "\n".join(lines) + "\n"


def pages(cli: click.Command, prog: str) -> dict[str, str]:
    """``{"iast-ca-audit-list.1": text, ...}`` for ``cli`` and every command below it."""
    out: dict[str, str] = {}

    def walk(cmd: click.Command, path: list[str], parent: click.Context | None) -> None:
        ctx = click.Context(cmd, info_name=path[-1], parent=parent)
        out["-".join(path) + ".1"] = page(cmd, path, ctx)
        if isinstance(cmd, click.Group):
            for sub_name in cmd.list_commands(ctx):
                sub = cmd.get_command(ctx, sub_name)
                if sub is not None and not sub.hidden:
                    walk(sub, [*path, sub_name], ctx)

    walk(cli, [prog], None)
    return out


def write_all(directory: Path) -> list[Path]:
    """Write the pages of both tools into ``directory`` (created); returns the files."""
    from ca.cli.admin import cli as admin_cli
    from ca.cli.client import cli as client_cli

    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for cli, prog in ((admin_cli, "iast-ca"), (client_cli, "iast-ssh")):
        for filename, text in pages(cli, prog).items():
            path = directory / filename
            path.write_text(text)
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m ca.cli.manpages DIR", file=sys.stderr)
        return 2
    written = write_all(Path(args[0]))
    print(f"{len(written)} man pages in {args[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
