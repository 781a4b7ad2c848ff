"""``iast-ca host``: host certificates (sign a host key offline, make a one-time join token).

A thin shell over :meth:`ca.issuance.authority.Authority.issue_host` and
:func:`ca.issuance.hosts.create_join_token`.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import click

from ca.cli.common import echo_json, output_options
from ca.cli.context import DURATION, Env, pass_env
from ca.durations import format_duration
from ca.errors import UsageError
from ca.files import write_atomic
from ca.issuance.hosts import create_join_token
from ca.models import HostRequest, Identity
from ca.state import os_user


def _until(ts: int) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


@click.group()
def host() -> None:
    """Host certificates: hosts prove who they are to users' ssh, with no TOFU prompt.

    The host policy ([hosts.NAME] in the policy file) says which names a
    host of each role may claim. Users trust the host CA with one line
    ('iast-ca trust --hosts' >> ~/.ssh/known_hosts).

    \b
    Example:
      iast-ca host sign --host web-1 --role prod -o web-1-cert.pub /etc/ssh/ssh_host_ed25519_key.pub
      iast-ca host token --host web-1 --role prod --ttl 1h
    """


@host.command("sign")
@click.option("--host", "host_name", required=True, help="The host's name (one DNS label, e.g. web-1).")
@click.option("--role", "-r", help="The host role ([hosts.ROLE] in the policy; default: the only one).")
@click.option("--ttl", type=DURATION, help="Lifetime, e.g. 30d (default: the host role's).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, allow_dash=True), default="-",
              help="Write the certificate here (mode 0644, atomically; default: stdout).")
@output_options(csv_ok=False)
@click.argument("pubkey_file", type=click.File("r"), metavar="HOST_KEY.pub")
@pass_env
def sign(env: Env, host_name: str, role: str | None, ttl: int | None, output: str, fmt: str, pubkey_file) -> None:
    """Sign a host's public key offline (audited as host_issued, revocable with 'revoke --host').

    The host key must be a plain public key (not a certificate), not DSA,
    RSA of at least 3072 bits; the names come from the host policy. A
    refusal exits non-zero with one line on stderr, writes nothing, and is
    recorded as a host_denied event.

    \b
    Example:
      iast-ca host sign --host web-1 --role prod -o /etc/ssh/ssh_host_ed25519_key-cert.pub \\
        /etc/ssh/ssh_host_ed25519_key.pub
    """
    if output != "-":
        parent = Path(output).resolve().parent
        if not parent.is_dir() or not os.access(parent, os.W_OK):
            raise UsageError(f"cannot write {output}: {parent} is not a writable directory")
    key_line = pubkey_file.read(64 * 1024)
    with env.open_ca() as ca:
        identity = Identity(user=f"host:{host_name}"[:70], auth_methods=("admin-offline",), operator=os_user())
        issued = ca.authority.issue_host(identity, HostRequest(public_key=key_line, host=host_name, role=role,
                                                               ttl=ttl, proof="operator"))
    if output != "-":
        write_atomic(output, issued.certificate + "\n", 0o644)
    elif fmt != "json":
        click.echo(issued.certificate)
    if fmt == "json":
        echo_json(issued.as_json())
        return
    d = issued.decision
    click.echo(f"signed host serial {issued.serial} ({issued.key_id}) for {', '.join(d.principals)}, "
               f"valid until {_until(d.valid_before)} ({format_duration(d.ttl)})"
               + (f", written to {output}" if output != "-" else ""), err=True)


@host.command("token")
@click.option("--host", "host_name", required=True, help="The host that may enrol with the token.")
@click.option("--role", "-r", help="The host role it enrols in (default: the policy's only host role).")
@click.option("--ttl", type=DURATION, default="1h", show_default=True,
              help="How long the token may wait to be used (at most 7d).")
@output_options(csv_ok=False)
@pass_env
def token(env: Env, host_name: str, role: str | None, ttl: int, fmt: str) -> None:
    """Print a one-time join token for one host (stored hashed; works once, before it expires).

    Give it to the host (a file only root reads) and run there:
    'iast-ssh host enroll --ca ADDR --ca-fingerprint FP --token-file FILE'.

    \b
    Example:
      iast-ca host token --host web-1 --role prod --ttl 1h > /tmp/web-1.token
    """
    with env.open_ca() as ca:
        ca.require_db()
        made = create_join_token(ca.audit, ca.policy, host=host_name, role=role, ttl=ttl, operator=os_user(),
                                 now=int(ca.clock()), skew=ca.cfg.clock_skew)
    if fmt == "json":
        echo_json(made.as_json())
        return
    click.echo(made.token.text)
    click.echo(f"join token for host {made.token.host}, role {made.role}: works once, until "
               f"{_until(made.expires_at)}", err=True)
