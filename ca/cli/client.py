"""``iast-ssh``: the client people run before ``ssh``.

The login flow (authenticate to the CA service, get a short-lived
certificate, put it in ssh-agent) arrives with the CA service.
"""

from __future__ import annotations

import click

from .. import __version__
from .common import Group


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="iast-ssh")
def cli() -> None:
    """Get short-lived SSH certificates from an iast-ssh CA.

    Not yet available: 'iast-ssh login' comes with the CA service. Until
    then an administrator signs keys offline with 'iast-ca sign'.

    \b
    Example:
      iast-ssh --version
    """


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="iast-ssh")
