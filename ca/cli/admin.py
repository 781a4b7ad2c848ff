"""``iast-ca``: create and run the CA, check policy, sign offline, read the audit log.

A thin shell: every command parses its options, calls the library, and
prints. Library errors become one line on stderr and the error's exit
status (0 ok, 1 error, 2 usage, 3 denied by policy, 4 authentication).
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import click

from ca import __version__
from ca.cli.audit_cmds import audit
from ca.cli.common import Group, echo, echo_json, output_options
from ca.cli.context import DURATION, Env, pass_env
from ca.cli.db_cmds import db
from ca.cli.doctor_cmd import doctor
from ca.cli.host_cmds import host
from ca.cli.key_cmds import key
from ca.cli.policy_cmds import policy
from ca.cli.requests_cmds import requests
from ca.cli.review_cmds import correlate, report
from ca.cli.revoke_cmds import krl, revoke
from ca.cli.serve_cmd import info, reload, run, serve
from ca.cli.user_cmds import user
from ca.durations import format_duration
from ca.errors import UsageError
from ca.files import write_atomic
from ca.keys.keyring import CA_KEY_TYPES
from ca.models import Identity, SignRequest
from ca.state import init_state, os_user


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", envvar="IAST_CA_CONFIG", metavar="FILE",
              help="Config file (TOML). Default: built-in defaults (state in ./var). Env: IAST_CA_CONFIG.")
@click.option("--state-dir", envvar="IAST_CA_STATE_DIR", metavar="DIR",
              help="State directory (keys, audit database). Env: IAST_CA_STATE_DIR.")
@click.option("--policy", envvar="IAST_CA_POLICY", metavar="FILE",
              help="Policy file. Default: STATE/policy.toml. Env: IAST_CA_POLICY.")
@click.option("--passphrase-file", envvar="IAST_CA_PASSPHRASE_FILE", metavar="FILE",
              help="File holding the CA key passphrase. Under systemd the credential "
                   "'ca-passphrase' is used instead. Env: IAST_CA_PASSPHRASE_FILE.")
@click.version_option(__version__, prog_name="iast-ca")
@click.pass_context
def cli(ctx: click.Context, config, state_dir, policy, passphrase_file) -> None:
    """The iast-ssh certificate authority: administration and the service.

    \b
    Example:
      iast-ca init && iast-ca trust > /etc/ssh/iast-user-ca.pub
    """
    ctx.obj = Env(config, state_dir, policy, passphrase_file)


@cli.command()
@click.option("--key-type", type=click.Choice(list(CA_KEY_TYPES)), default="ed25519", show_default=True,
              help="Algorithm of the CA key.")
@output_options(csv_ok=False)
@pass_env
def init(env: Env, key_type: str, fmt: str) -> None:
    """Create a new CA: state directory, CA key, audit key, host key, audit database.

    The CA key is encrypted when --passphrase-file is given. Refuses to
    overwrite an existing CA.

    \b
    Example:
      iast-ca --state-dir /var/lib/iast-ca --passphrase-file /root/ca.pass init --key-type ed25519
    """
    summary = init_state(env.config, key_type, env.passphrase())
    if fmt == "json":
        echo_json(summary)
        return
    enc = "encrypted" if summary["ca_encrypted"] else "NOT encrypted (use --passphrase-file to encrypt it)"
    echo(f"Created a CA in {summary['state_dir']}")
    echo(f"  CA key      {summary['ca_algorithm']} {summary['ca_fingerprint']}  {enc}")
    echo(f"  audit key   {summary['audit_key_fingerprint']}  (signs audit checkpoints)")
    echo(f"  service host key {summary['host_key_fingerprint']}  (clients pin it: --ca-fingerprint)")
    echo(f"  host CA     {summary['host_ca_fingerprint']}  (signs host certificates: 'iast-ca trust --hosts')")
    echo(f"  policy      {summary['policy']}" + ("  (starter policy installed)" if summary["policy_installed"] else ""))
    echo("Next: 'iast-ca trust' prints the line hosts put in TrustedUserCAKeys.")


@cli.command()
@click.option("--format", "fmt", type=click.Choice(["trusted-user-ca-keys", "known-hosts"]),
              default="trusted-user-ca-keys", show_default=True, help="Output format.")
@click.option("--host-pattern", default="*", show_default=True,
              help="Host pattern for --format known-hosts (default: the names the host policy certifies).")
@click.option("--hosts", "hosts", is_flag=True,
              help="Print the host CA instead: '@cert-authority PATTERNS KEY' for users' known_hosts, "
                   "the patterns from the host policy.")
@pass_env
def trust(env: Env, fmt: str, host_pattern: str, hosts: bool) -> None:
    """Print every trusted CA public key: the active key, a 'next' key being rolled in,
    and previous keys not yet retired ('iast-ca key list' shows which is which).

    The default output is a TrustedUserCAKeys file for sshd; known-hosts
    (the same as --hosts) prints the host CA's '@cert-authority PATTERN KEY'
    line for clients: the CA key that signs user certificates never goes
    into a known_hosts file. Hosts can fetch
    it from the service on a timer: 'iast-ssh host fetch-trust'. --hosts
    prints the line that makes users' ssh verify host certificates (the host
    CA key, a key of its own, trusted only for the names the host policy gives).

    \b
    Example:
      iast-ca trust > /etc/ssh/iast-user-ca.pub
      # and in /etc/ssh/sshd_config:  TrustedUserCAKeys /etc/ssh/iast-user-ca.pub
      iast-ca trust --hosts >> ~/.ssh/known_hosts
    """
    if hosts or fmt == "known-hosts":
        # known_hosts trusts a CA to vouch for *hosts*: that is the host CA key, never the CA key
        # that signs user certificates (docs/security.md rule 83).
        with env.open_ca() as ca:
            ca.keyring  # "no CA here" first
            if ca.host_ca_public is None:
                raise UsageError("this CA has no host CA key yet: 'iast-ca host sign' creates it")
            lines = ca.host_known_hosts_lines(None if host_pattern == "*" else host_pattern)
        if not lines:
            raise UsageError("the policy has no host roles: add a [hosts.NAME] table")
        click.echo("\n".join(lines))
        return
    with env.open_ca() as ca:
        keyring = ca.keyring
    echo("\n".join(keyring.trust_lines()))


@cli.command()
@click.option("--user", "-u", required=True, help="The user the certificate is for.")
@click.option("--role", "-r", help="Role to request (default: the policy's default role).")
@click.option("--ttl", type=DURATION, help="Lifetime, e.g. 30m (default: the role's default).")
@click.option("--reason", help="Why access is needed (recorded in the audit log).")
@click.option("--request", "request_id", metavar="ID",
              help="An approved access request to use (required for roles that need approval); "
                   "role, ttl and reason default to the request's.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, allow_dash=True), default="-",
              help="Write the certificate here (default: stdout).")
@click.option("--allow-unenrolled", is_flag=True,
              help="Sign for a USER the user store does not hold (recorded in the audit log).")
@output_options(csv_ok=False)
@click.argument("pubkey_file", type=click.File("r"), metavar="PUBKEY_FILE")
@pass_env
def sign(env: Env, user: str, role: str | None, ttl: int | None, reason: str | None, request_id: str | None,
         allow_unenrolled: bool, output: str, fmt: str, pubkey_file) -> None:
    """Sign a user's public key offline, through the same decide -> sign -> audit path as the service.

    The issuance is recorded as made by the administrator running this
    command. A request that policy refuses exits 3, with the reason on stderr,
    writes no certificate, and is recorded as a 'denied' event. Use '-' to
    read the key from stdin. With --json and no -o, stdout is one JSON
    object whose 'certificate' field holds the certificate line. A role
    that needs approval is signed only with --request ID, a request of
    USER's that its approvers approved; it is then used up. USER must be
    enrolled ('iast-ca user add') and enabled: a disabled or revoked user is
    refused; --allow-unenrolled signs for a name nobody enrolled.

    \b
    Example:
      iast-ca sign --user alice --role dev --ttl 2h -o alice-cert.pub alice.pub
      iast-ca sign --user alice --request req-abcdefghij -o alice-cert.pub alice.pub
      iast-ca sign --user build-bot --allow-unenrolled --role ci -o bot-cert.pub bot.pub
    """
    if output != "-":  # fail before issuing, not after: a certificate must never be issued into the void
        parent = Path(output).resolve().parent
        if not parent.is_dir() or not os.access(parent, os.W_OK):
            raise UsageError(f"cannot write {output}: {parent} is not a writable directory")
    key_line = pubkey_file.read(64 * 1024)
    with env.open_ca() as ca:
        # Offline: an operator acting for the user. The authority uses an access request only
        # when one is named, and does not re-check a login (there was none): see ca.app.
        identity = Identity(user=user, auth_methods=("admin-offline",), mfa=True, operator=os_user())
        request = SignRequest(public_key=key_line, role=role, ttl=ttl, reason=reason, request_id=request_id)
        issued = ca.authority.issue(identity, request, allow_unenrolled=allow_unenrolled)
    if output != "-":
        write_atomic(output, issued.certificate + "\n", 0o644)
    elif fmt != "json":  # with --json the certificate is a field of the object
        echo(issued.certificate)
    d = issued.decision
    if fmt == "json":
        echo_json(issued.as_json())
    else:
        until = dt.datetime.fromtimestamp(d.valid_before, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
        echo(
            f"signed serial {issued.serial} ({issued.key_id}) for {', '.join(d.principals)}, "
            f"role {d.role}, valid until {until} ({format_duration(d.ttl)})"
            + (f", written to {output}" if output != "-" else ""),
            err=True,
        )


cli.add_command(key)
cli.add_command(host)
cli.add_command(policy)
cli.add_command(audit)
audit.add_command(correlate)
audit.add_command(report)
cli.add_command(user)
cli.add_command(requests)
cli.add_command(revoke)
cli.add_command(krl)
cli.add_command(run)
cli.add_command(serve)
cli.add_command(info)
cli.add_command(reload)
cli.add_command(db)
cli.add_command(doctor)


def main() -> None:
    """Console-script entry point: the only place (with click) that exits."""
    cli(prog_name="iast-ca")
