"""``iast-ca revoke`` and ``iast-ca krl``: revoke certificates, publish the KRL.

A thin shell over :mod:`ca.access.revocation` and :mod:`ca.sshcert.krl`.
"""

from __future__ import annotations

import sys

import click

from ca.access.revocation import (
    build_current_krl,
    revoke_ca_key,
    revoke_host,
    revoke_key,
    revoke_key_id,
    revoke_serial,
    revoke_user,
)
from ca.cli.common import echo, echo_json, output_options
from ca.cli.context import Env, pass_env
from ca.errors import BadKey, UsageError
from ca.files import write_atomic
from ca.sshcert.krl import describe, parse_krl
from ca.state import os_user

MAX_KEY_FILE = 64 * 1024


def _serials_text(serials: tuple[int, ...]) -> str:
    if not serials:
        return "no unexpired certificate"
    shown = ", ".join(map(str, serials[:20])) + (", ..." if len(serials) > 20 else "")
    return f"{len(serials)} unexpired certificate(s): serial {shown}"


def _read_key_arg(path: str) -> str:
    """The text of --key FILE ('-': stdin). A missing file and a file that holds no key are the
    same mistake, a bad --key, and exit 2 alike (README, "Exit codes")."""
    if path == "-":
        return sys.stdin.read(MAX_KEY_FILE)
    try:
        with open(path) as f:
            return f.read(MAX_KEY_FILE)
    except OSError as e:
        raise UsageError(f"--key {path}: {e.strerror or e}") from None


@click.command()
@click.option("--serial", type=click.IntRange(1, 2**64 - 1), help="Revoke the certificate with this serial.")
@click.option("--key-id", help="Revoke the certificate with this key ID (iast:USER:ROLE:SERIAL).")
@click.option("--key", "key_file", type=click.Path(dir_okay=False, allow_dash=True), metavar="FILE",
              help="Revoke this public key (a .pub file, '-' for stdin): every certificate for it, "
                   "past and future.")
@click.option("--user", help="Revoke every unexpired certificate of this user, and disable the user.")
@click.option("--ca-key", metavar="FINGERPRINT",
              help="Revoke a CA key (SHA256:...): every certificate it signed.")
@click.option("--host", "host_name", metavar="HOST",
              help="Revoke every unexpired host certificate of this host; none of them renews.")
@click.option("--reason", required=True, help="Why (recorded in the audit log).")
@output_options(csv_ok=False)
@pass_env
def revoke(env: Env, serial: int | None, key_id: str | None, key_file, user: str | None, ca_key: str | None,
           host_name: str | None, reason: str, fmt: str) -> None:
    """Revoke certificates: give exactly one of --serial, --key-id, --key, --user, --ca-key, --host.

    The revocation is recorded in the audit log; it reaches hosts with the
    next KRL ('iast-ca krl -o FILE', installed as sshd's RevokedKeys).
    Revoking something already revoked is recorded again and changes
    nothing else. Exits 2 if the serial or key ID was never issued, or if
    --key names a file that is missing or holds no public key.

    \b
    Example:
      iast-ca revoke --serial 1042 --reason "laptop stolen" && iast-ca krl -o /srv/iast/revoked_keys
      iast-ca revoke --host web-1 --reason "decommissioned"
    """
    chosen = [name for name, v in (("--serial", serial), ("--key-id", key_id), ("--key", key_file),
                                   ("--user", user), ("--ca-key", ca_key), ("--host", host_name)) if v is not None]
    if len(chosen) != 1:
        raise UsageError("give exactly one of --serial, --key-id, --key, --user, --ca-key, --host"
                         + (f" (got {', '.join(chosen)})" if chosen else ""))
    actor = os_user()
    with env.open_ca(require_db=True) as ca:
        log = ca.audit
        if serial is not None:
            result = revoke_serial(log, serial, reason, actor)
            what = f"certificate serial {serial}"
        elif key_id is not None:
            result = revoke_key_id(log, key_id, reason, actor)
            what = f"certificate {key_id} (serial {result.serials[0]})"
        elif key_file is not None:
            try:
                result = revoke_key(log, _read_key_arg(key_file), reason, actor, keyring=ca.keyring)
            except BadKey as e:
                raise UsageError(f"--key {key_file}: {e.message}") from None
            what = f"key {result.value}: every certificate for it, now and later ({_serials_text(result.serials)})"
        elif user is not None:
            result = revoke_user(log, user, reason, actor)
            what = f"user {user}: {_serials_text(result.serials)}"
        elif host_name is not None:
            result = revoke_host(log, host_name, reason, actor)
            what = f"host {host_name}: {_serials_text(result.serials)}"
        else:
            result = revoke_ca_key(log, ca_key, reason, actor, keyring=ca.keyring)
            what = f"CA key {ca_key}: every certificate it signed"
    if fmt == "json":
        echo_json(result.as_json())
        return
    echo(("revoked " if result.new else "already revoked (recorded again): ") + what)
    for note in result.notes:
        echo(f"note: {note}", err=True)
    if host_name is not None:  # host certificates are checked by the clients that connect to the host
        echo("Publish it: iast-ca krl -o FILE (clients read it as ssh's RevokedHostKeys)", err=True)
    else:
        echo("Publish it: iast-ca krl -o FILE (hosts read it as sshd's RevokedKeys)", err=True)


@click.command()
@click.option("-o", "--output", type=click.Path(dir_okay=False), metavar="FILE",
              help="Write the KRL here (temp file + rename, mode 0644). Default: stdout, unless --text/--json.")
@click.option("--text", is_flag=True, help="Print what the KRL revokes (ssh-keygen -k spec syntax).")
@output_options(csv_ok=False)
@pass_env
def krl(env: Env, output: str | None, text: bool, fmt: str) -> None:
    """Build the key revocation list (KRL) from the audit database.

    sshd reads it as RevokedKeys. Its version only increases and changes
    only when its content does (--text alone only looks: it bumps nothing); expired certificates are left out. An
    unreadable KRL makes sshd refuse every login: hosts must check a fetched
    KRL ('ssh-keygen -Q -l -f KRL') and keep the last good one if a refresh
    fails.

    \b
    Example:
      iast-ca krl -o /srv/iast/revoked_keys && iast-ca krl --text
    """
    if text and fmt == "json":
        raise UsageError("--text and --json cannot be used together")
    with env.open_ca() as ca:
        keyring = ca.keyring  # first, as before: "no CA" comes before "no audit database"
        ca.require_db()
        # only a KRL that leaves this command (a file, stdout, --json) is a new version; --text alone is a look
        publish = bool(output) or not text
        built = build_current_krl(ca.audit, keyring, extra_ca_keys=(ca.host_ca_public,) if ca.host_ca_public else (),
                                  publish=publish)
    if output:
        write_atomic(output, built.data, 0o644)
    elif not text and fmt != "json":
        if sys.stdout.isatty():
            raise UsageError("the KRL is binary: give -o FILE, redirect stdout, or use --text")
        echo(built.data, nl=False)  # bytes go to the binary stream
    if fmt == "json":
        echo_json({**built.as_json(), "file": output})
        return
    if text:
        names = {k.blob: f"(CA key {k.name}, {k.state})" for k in keyring.keys}
        echo(describe(parse_krl(built.data), names), nl=False)
        if not publish and built.changed:
            echo(f"note: this differs from the published KRL version {built.version}; "
                 "'iast-ca krl -o FILE' publishes it as the next version", err=True)
    if output:
        echo(f"KRL version {built.version} ({len(built.data)} bytes"
                   + (", changed" if built.changed else ", unchanged") + f") written to {output}", err=True)

