"""``iast-ca key``: the CA keys (files or PKCS#11 tokens) and their rotation.

A thin shell over :mod:`ca.keys.rotation` (and :mod:`ca.keys.pkcs11` for
keys in a token); every step is one audit event and one atomic
``keyring.json`` write.
"""

from __future__ import annotations

import dataclasses

import click

from ca.access.revocation import revoke_ca_key
from ca.app import pkcs11_settings
from ca.cli.common import echo_json, echo_table, output_options
from ca.cli.context import Env, pass_env
from ca.errors import UsageError
from ca.keys.file import CA_KEY_TYPES, generate_key
from ca.keys.keyring import PURPOSES, Keyring
from ca.keys.pkcs11 import PKCS11_KEY_TYPES, Pkcs11KeyBackend, Pkcs11URI, generate_in_token
from ca.keys.rotation import activate_key, add_key, check_retire, key_rows, retire_key
from ca.state import os_user

_RELOAD = ("A service running elsewhere (a replica) serves the new key set after SIGHUP (iast-ca reload, or "
           "systemctl reload iast-ca, there).")


def _tell_service(env: Env, ca) -> None:  # noqa: ANN001 - the open CA
    """Make the service running from this state directory serve the new key set now (SIGHUP, as
    'iast-ca reload'): until it reloads, 'ca-keys' (what 'host fetch-trust' installs) is the old set,
    and an activated key would sign certificates that hosts do not trust yet (README, "Rotating")."""
    from ca.errors import StateError
    from ca.service.control import reload_service, running_pid

    try:
        running_pid(env.config.state_dir)
    except StateError:
        click.echo("No service runs from this state directory. " + _RELOAD, err=True)
        return
    result = reload_service(env.config.state_dir, ca.audit)
    if result.accepted:
        click.echo(f"The running service (pid {result.pid}) reloaded: it serves the new key set. " + _RELOAD,
                   err=True)
    else:
        click.echo(f"note: the running service (pid {result.pid}) did not reload ({result.detail}): run "
                   "'iast-ca reload' before hosts fetch the trust file", err=True)


@click.group()
def key() -> None:
    """The CA keys: list, add (in a file or a PKCS#11 token), activate, retire.

    Rotation without an outage: 'add' a key (state next: hosts trust it, it
    signs nothing), refresh every host's trust file ('iast-ca trust', or
    'iast-ssh host fetch-trust' on a timer), 'activate' it (the old key stays
    trusted), wait until the old key's certificates expire, 'retire' it.

    \b
    Example:
      iast-ca key add --type ed25519
      iast-ca key add --pkcs11 'pkcs11:token=iast;object=user-ca-2?module-path=/usr/lib/softhsm/libsofthsm2.so' \\
                      --generate --type ed25519 --pin-file /etc/iast-ca/token.pin
      iast-ca key activate SHA256:... && systemctl reload iast-ca
      iast-ca key retire SHA256:...
    """


@key.command("list")
@output_options(csv_ok=False)
@pass_env
def list_(env: Env, fmt: str) -> None:
    """Every CA key: fingerprint, type, backend, state, created, certificates signed, last expiry.

    \b
    Example:
      iast-ca key list --json
    """
    with env.open_ca() as ca:
        keyring = ca.keyring
        ca.require_db()
        rows = key_rows(keyring, ca.audit)
    if fmt == "json":
        echo_json([r.as_json() for r in rows])
        return
    echo_table([[r.fingerprint, r.type, r.backend, r.purpose, r.state, r.created, f"{r.certificates} ({r.unexpired} "
                 "unexpired)", r.as_json()["last_expiry_text"] or "-"] for r in rows],
               ["FINGERPRINT", "TYPE", "BACKEND", "PURPOSE", "STATE", "CREATED", "CERTIFICATES", "LAST EXPIRY"])


@key.command()
@click.option("--type", "key_type", default="ed25519", show_default=True,
              type=click.Choice(sorted(set(CA_KEY_TYPES) | set(PKCS11_KEY_TYPES))),
              help="Algorithm of a new key (file keys: ed25519, ecdsa-p256/p384, rsa-4096; "
                   "token keys: ed25519, ecdsa-p256/p384, rsa-3072/4096).")
@click.option("--pkcs11", "uri", metavar="URI",
              help="Keep the key in a PKCS#11 token, named by an RFC 7512 URI "
                   "(pkcs11:token=LABEL;object=LABEL[?module-path=SO]). Without --generate, use the key already "
                   "there.")
@click.option("--generate", is_flag=True, help="With --pkcs11: create the key inside the token "
                                               "(sensitive, never extractable).")
@click.option("--pin-file", type=click.Path(dir_okay=False), metavar="FILE",
              help="The token PIN, for this command (else pin-source= in the URI, signing.pkcs11_pin_file, or "
                   "the systemd credential 'pkcs11-pin'). Never give the PIN itself.")
@click.option("--purpose", type=click.Choice(PURPOSES), default="user", show_default=True,
              help="Which CA the key is for.")
@output_options(csv_ok=False)
@pass_env
def add(env: Env, key_type: str, uri: str | None, generate: bool, pin_file: str | None, purpose: str,
        fmt: str) -> None:
    """Add a CA key in state 'next': trusted by hosts, not signing yet.

    A file key is written to STATE/ca-keys (encrypted with --passphrase-file
    when given). A token key never leaves the token: only its URI and
    public key go into keyring.json. Audited (ca_key_added).

    \b
    Example:
      iast-ca key add --type ecdsa-p256
      iast-ca key add --pkcs11 'pkcs11:token=iast;object=user-ca' --generate --type ed25519
    """
    if generate and not uri:
        raise UsageError("--generate creates a key in a token: give --pkcs11 URI too")
    if pin_file and not uri:
        raise UsageError("--pin-file is for a token key (--pkcs11 URI)")
    with env.open_ca(require_db=True) as ca:
        keyring = ca.keyring
        if uri:
            parsed = Pkcs11URI.parse(uri)
            settings = pkcs11_settings(env.config)
            if pin_file:
                settings = dataclasses.replace(settings, pin_file=pin_file)
            if generate:
                if key_type not in PKCS11_KEY_TYPES:
                    raise UsageError(f"a token key is one of {', '.join(PKCS11_KEY_TYPES)}")
                backend = generate_in_token(parsed, key_type, settings=settings)
            else:
                backend = Pkcs11KeyBackend(parsed, settings=settings)
            try:
                entry = Keyring.token_entry(backend, backend.uri.text(), "next", purpose)
            finally:
                backend.close()
        else:
            if key_type not in CA_KEY_TYPES:
                raise UsageError(f"a file key is one of {', '.join(CA_KEY_TYPES)}")
            entry = Keyring.new_entry(keyring.state_dir, generate_key(key_type), env.passphrase(), "next", purpose)
        add_key(keyring, ca.audit, entry, os_user(), generated=generate or not uri)
        _tell_service(env, ca)
    if fmt == "json":
        echo_json(dataclasses.asdict(entry) | {"state": "next"})
        return
    click.echo(f"added {entry.algorithm} {entry.fingerprint} ({entry.backend}{', ' + entry.uri if entry.uri else ''}),"
               f" state next: trusted, not signing")
    click.echo("Next: install the new trust file on every host ('iast-ca trust', or 'iast-ssh host fetch-trust'), "
               f"then 'iast-ca key activate {entry.fingerprint}'.", err=True)


@key.command()
@click.argument("fingerprint", metavar="FINGERPRINT")
@output_options(csv_ok=False)
@pass_env
def activate(env: Env, fingerprint: str, fmt: str) -> None:
    """Sign with this key from now on; the key that signed until now stays trusted.

    Make sure every host trusts the key first (it was added as 'next' and
    'iast-ca trust' has listed it since). Audited (ca_key_activated).

    \b
    Example:
      iast-ca key activate SHA256:... && systemctl reload iast-ca
    """
    with env.open_ca(require_db=True) as ca:
        ring, previous = activate_key(ca.keyring, ca.audit, fingerprint, os_user())
        _tell_service(env, ca)
    entry = ring.find(fingerprint)
    if fmt == "json":
        echo_json({"active": entry.fingerprint, "previous": previous.fingerprint if previous else None})
        return
    click.echo(f"{entry.fingerprint} now signs {entry.purpose} certificates"
               + (f"; {previous.fingerprint} stays trusted until retired" if previous else ""))


@key.command()
@click.argument("fingerprint", metavar="FINGERPRINT")
@click.option("--force", is_flag=True, help="Retire even though certificates it signed have not expired yet "
                                            "(hosts that refresh their trust file will refuse them).")
@click.option("--revoke", is_flag=True, help="Also revoke it: the KRL names it, so sshd refuses every "
                                             "certificate it signed even where it is still trusted.")
@click.option("--reason", help="Why (recorded with --revoke). Default: 'CA key retired'.")
@output_options(csv_ok=False)
@pass_env
def retire(env: Env, fingerprint: str, force: bool, revoke: bool, reason: str | None, fmt: str) -> None:
    """Stop trusting a CA key (it no longer appears in 'iast-ca trust').

    Refused for the active key, and while the key has unexpired
    certificates unless --force. --revoke puts it in the KRL too (for a
    compromised key). Audited (ca_key_retired, and revoked with --revoke).

    \b
    Example:
      iast-ca key retire SHA256:...
      iast-ca key retire SHA256:... --revoke --force --reason "key file leaked" && iast-ca krl -o /srv/iast/krl
    """
    actor = os_user()
    with env.open_ca(require_db=True) as ca:
        keyring = ca.keyring
        entry, _ = check_retire(keyring, ca.audit, fingerprint, force=force)  # refuse before revoking anything
        if revoke:
            revoke_ca_key(ca.audit, entry.fingerprint, reason or "CA key retired", actor, keyring=keyring)
        retire_key(keyring, ca.audit, entry.fingerprint, actor, force=force, revoked=revoke)
        _tell_service(env, ca)
    if fmt == "json":
        echo_json({"retired": entry.fingerprint, "revoked": revoke})
        return
    click.echo(f"retired {entry.fingerprint}" + (" and revoked it" if revoke else "") + "; hosts stop trusting it "
               "with their next trust file")
    if revoke:
        click.echo("Publish the KRL: iast-ca krl -o FILE (hosts read it as sshd's RevokedKeys)", err=True)
