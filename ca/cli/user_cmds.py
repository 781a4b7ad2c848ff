"""``iast-ca user``: enrol the people who may log in to the CA service.

A thin shell over :class:`ca.users.UserStore`. Passwords are read from
standard input only (never from the command line, where ``ps`` and shell
history would see them); a TOTP secret is printed once, when it is made.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

import click

from ca.auth.users import MIN_PASSWORD_LENGTH, Enrolment, User, UserStore
from ca.cli.common import echo, echo_csv, echo_json, echo_table, output_options
from ca.cli.context import Env, pass_env
from ca.errors import BadKey, CAError, NotFound, UsageError
from ca.rules import RESERVED_PRINCIPALS
from ca.sshcert.userkey import parse_user_key
from ca.state import os_user

MAX_KEY_FILE = 64 * 1024


@contextmanager
def _store(env: Env) -> Iterator[UserStore]:
    with env.open_ca(require_db=True) as ca:
        yield ca.users


def _reserved(ca) -> frozenset[str]:  # noqa: ANN001 - the open CA
    """The policy's reserved names; the fixed list when the policy cannot be read (never fewer)."""
    try:
        return ca.policy.reserved_principals
    except CAError:
        return RESERVED_PRINCIPALS


def _read_password() -> str:
    """One password from standard input: typed twice, hidden, on a terminal; else its first line."""
    if sys.stdin.isatty():
        return click.prompt("Password", hide_input=True, confirmation_prompt=True, err=True)
    line = sys.stdin.readline()
    password = line.removesuffix("\n").removesuffix("\r")
    if not password:
        raise UsageError("no password on standard input")
    return password


def _read_key(file) -> str:  # noqa: ANN001 - a click.File
    text = file.read(MAX_KEY_FILE + 1)
    if len(text) > MAX_KEY_FILE:
        raise UsageError(f"{file.name}: longer than {MAX_KEY_FILE} bytes; expected one public key line")
    return text


def _yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


def _state(u: User) -> str:
    return "disabled" if u.disabled else "enabled"


def _show_secret(enrolment: Enrolment, fmt: str) -> None:
    u = enrolment.user
    if fmt == "json":
        echo_json({"user": u.name, "totp_uri": enrolment.totp_uri, "totp_secret": enrolment.totp_secret,
                   "keys": [k.fingerprint for k in u.keys], "has_password": u.has_password, "has_totp": u.has_totp})
        return
    if enrolment.totp_secret:
        echo(f"TOTP secret: {enrolment.totp_secret}")
        echo(f"TOTP URI:    {enrolment.totp_uri}")
        echo("Give these to the user now, over a safe channel: they will not be shown again. "
                   "Add the secret to an authenticator app, or show the URI as a QR code "
                   "(e.g. qrencode -t ANSIUTF8 'URI').")


def _get(store: UserStore, name: str) -> User:
    user = store.get(name)
    if user is None:
        raise NotFound(f"no such user {name!r}")
    return user


@click.group()
def user() -> None:
    """Enrol, list, disable and re-key the users of the CA service.

    A user logs in with an enrolled public key, or with a password followed
    by a TOTP code. Every change is recorded in the audit log.

    \b
    Example:
      iast-ca user add alice --key alice.pub && iast-ca user list
    """


@user.command()
@click.argument("name")
@click.option("--key", "key_files", multiple=True, type=click.File("r"), metavar="FILE",
              help="A public key file to enrol (repeatable).")
@click.option("--password-stdin", is_flag=True,
              help=f"Read a password (at least {MIN_PASSWORD_LENGTH} characters) from standard input; "
                   "needs --totp.")
@click.option("--totp", is_flag=True, help="Make a TOTP secret; it is printed once.")
@click.option("--allow-reserved", is_flag=True,
              help="Enrol a reserved name (root, admin, ...: the policy's reserved_principals); audited.")
@output_options(csv_ok=False)
@pass_env
def add(env: Env, name: str, key_files, password_stdin: bool, totp: bool, allow_reserved: bool, fmt: str) -> None:
    """Create user NAME with public keys, and/or a password and a TOTP secret.

    A user needs a way to log in: a key, or a password with --totp (the
    service asks for the password, then a code). The TOTP secret and its
    otpauth:// URI are printed once, here. A reserved name (root, admin,
    ... and the policy's reserved_principals) needs --allow-reserved.

    \b
    Example:
      iast-ca user add alice --key alice.pub
      printf '%s\\n' "$PW" | iast-ca user add bob --password-stdin --totp --json
    """
    if password_stdin and not totp:
        raise UsageError("--password-stdin needs --totp: the service asks for a password and then a TOTP code")
    if not key_files and not password_stdin:
        raise UsageError(f"user {name} needs a way to log in: give --key FILE, or --password-stdin with --totp")
    keys = [_read_key(f) for f in key_files]
    password = _read_password() if password_stdin else None
    with env.open_ca(require_db=True) as ca:
        enrolment = ca.users.add(name, keys=keys, password=password, totp=totp, actor=os_user(),
                                 allow_reserved=allow_reserved, reserved=_reserved(ca))
    u = enrolment.user
    if fmt != "json":
        ways = [f"{len(u.keys)} key{'s' if len(u.keys) != 1 else ''}"] if u.keys else []
        ways += ["password"] * u.has_password + ["TOTP"] * u.has_totp
        echo(f"Created user {u.name} ({', '.join(ways)}).")
        for k in u.keys:
            echo(f"  key {k.algorithm} {k.fingerprint}")
    _show_secret(enrolment, fmt)


@user.command("list")
@output_options()
@pass_env
def list_(env: Env, fmt: str) -> None:
    """List every user: state, number of keys, password, TOTP.

    \b
    Example:
      iast-ca user list --json | jq -r '.[] | select(.disabled) | .name'
    """
    with _store(env) as store:
        users = store.list()
    if fmt == "json":
        echo_json([u.as_json() for u in users])
    elif fmt == "csv":
        rows = [{**u.as_json(), "keys": " ".join(k.fingerprint for k in u.keys)} for u in users]
        echo_csv(rows, ["name", "disabled", "disabled_reason", "has_password", "has_totp", "keys", "created"])
    else:
        echo_table([[u.name, _state(u), len(u.keys), _yes_no(u.has_password), _yes_no(u.has_totp), u.created]
                    for u in users], ["NAME", "STATE", "KEYS", "PASSWORD", "TOTP", "CREATED"])


def _print_user(u: User, fmt: str) -> None:
    if fmt == "json":
        echo_json(u.as_json())
        return
    echo(f"{'name':10} {u.name}")
    echo(f"{'state':10} {_state(u)}" + (f" ({u.disabled_reason})" if u.disabled_reason else ""))
    echo(f"{'password':10} {_yes_no(u.has_password)}")
    echo(f"{'totp':10} {_yes_no(u.has_totp)}")
    echo(f"{'created':10} {u.created}")
    if not u.keys:
        echo(f"{'keys':10} none")
    for i, k in enumerate(u.keys):
        echo(f"{'keys' if i == 0 else '':10} {k.fingerprint} {k.algorithm}" + (f" {k.comment}" if k.comment else "")
             + f" (added {k.added})")


@user.command()
@click.argument("name")
@output_options(csv_ok=False)
@pass_env
def show(env: Env, name: str, fmt: str) -> None:
    """Show one user: state, keys (fingerprint, type, the comment of the enrolled line), password and TOTP set or not.

    \b
    Example:
      iast-ca user show alice --json
    """
    with _store(env) as store:
        u = _get(store, name)
    _print_user(u, fmt)


@user.command()
@click.argument("name")
@click.option("--reason", help="Why (recorded in the audit log and shown by 'user show').")
@output_options(csv_ok=False)
@pass_env
def disable(env: Env, name: str, reason: str | None, fmt: str) -> None:
    """Refuse every login of NAME until 'user enable'.

    Certificates already issued stay valid until they expire (they are
    short-lived).

    \b
    Example:
      iast-ca user disable alice --reason "left the company"
    """
    with _store(env) as store:
        store.disable(name, reason, actor=os_user())
        u = _get(store, name)
    if fmt == "json":
        echo_json(u.as_json())
    else:
        echo(f"user {name} disabled")


@user.command()
@click.argument("name")
@output_options(csv_ok=False)
@pass_env
def enable(env: Env, name: str, fmt: str) -> None:
    """Allow NAME to log in again.

    \b
    Example:
      iast-ca user enable alice
    """
    with _store(env) as store:
        store.enable(name, actor=os_user())
        u = _get(store, name)
    if fmt == "json":
        echo_json(u.as_json())
    else:
        echo(f"user {name} enabled")


@user.command()
@click.argument("name")
@click.option("--password-stdin", is_flag=True,
              help=f"Read the new password (at least {MIN_PASSWORD_LENGTH} characters) from standard input "
                   "(needed when it is not a terminal).")
@pass_env
def passwd(env: Env, name: str, password_stdin: bool) -> None:
    """Set a new password for NAME.

    On a terminal the password is asked for twice, hidden; from a pipe give
    --password-stdin, and the first line of standard input is the password
    (never the command line, where ps and shell history would see it).

    \b
    Example:
      iast-ca user passwd alice
      printf '%s\\n' "$NEW_PW" | iast-ca user passwd alice --password-stdin
    """
    if not password_stdin and not sys.stdin.isatty():
        raise UsageError("standard input is not a terminal: give --password-stdin to read the password from it")
    with _store(env) as store:
        _get(store, name)  # before asking for a password
        store.set_password(name, _read_password(), actor=os_user())
    echo(f"password of user {name} changed")


@user.command()
@click.argument("name")
@output_options(csv_ok=False)
@pass_env
def totp(env: Env, name: str, fmt: str) -> None:
    """Give NAME a new TOTP secret; the old one stops working. Prints it once.

    \b
    Example:
      iast-ca user totp alice
    """
    with _store(env) as store:
        enrolment = store.reset_totp(name, actor=os_user())
    if fmt != "json":
        echo(f"New TOTP secret for user {name}; the old one no longer works.")
    _show_secret(enrolment, fmt)


@user.command()
@click.argument("name")
@click.option("--ttl", default="1h", show_default=True, metavar="DURATION",
              help="How long the code works (at most 24h); it works once.")
@click.option("--allow-reserved", is_flag=True,
              help="Invite a reserved name (root, admin, ...: the policy's reserved_principals); audited.")
@output_options(csv_ok=False)
@pass_env
def invite(env: Env, name: str, ttl: str, allow_reserved: bool, fmt: str) -> None:
    """Print a one-time enrolment code for NAME: they register their own key, password and TOTP with it.

    NAME becomes a user with no credential if it is not one yet. Give the
    code to the person (it is shown once; the CA keeps only its hash). They
    redeem it with 'iast-ssh enroll' or plain ssh; the TOTP secret they set
    is shown to them only. Every step is audited (enrolment_code_created,
    enrolment_code_used, key_added, password_changed, totp_reset).

    \b
    Example:
      iast-ca user invite alice --ttl 2h
      # alice:  iast-ssh enroll --ca ca:2222 --ca-fingerprint SHA256:... -l alice --key ~/.ssh/id_ed25519.pub
      # or:     ssh -p 2222 -o KbdInteractiveDevices=enrol alice@ca enroll < ~/.ssh/id_ed25519.pub
    """
    from ca.durations import parse_duration

    try:
        seconds = parse_duration(ttl)
    except ValueError as e:
        raise UsageError(f"--ttl: {e}") from None
    with env.open_ca(require_db=True) as ca:
        inv = ca.users.invite(name, ttl=seconds, actor=os_user(), allow_reserved=allow_reserved,
                              reserved=_reserved(ca))
    if fmt == "json":
        echo_json(inv.as_json())
        return
    if inv.user_created:
        echo(f"Created user {name} (no credential yet).", err=True)
    echo(inv.code)
    echo(f"One-time enrolment code for {name}, valid for {ttl} (shown once). They run:\n"
         f"  iast-ssh enroll -l {name} --key ~/.ssh/id_ed25519.pub [--password --totp]\n"
         f"  or: ssh -p PORT -o KbdInteractiveDevices=enrol {name}@CA enroll < ~/.ssh/id_ed25519.pub", err=True)


@user.command("key-add")
@click.argument("name")
@click.argument("file", type=click.File("r"))
@output_options(csv_ok=False)
@pass_env
def key_add(env: Env, name: str, file, fmt: str) -> None:  # noqa: ANN001 - a click.File
    """Enrol the public key in FILE for NAME ('-' reads standard input).

    \b
    Example:
      iast-ca user key-add alice ~alice/.ssh/id_ed25519.pub
    """
    line = _read_key(file)
    with _store(env) as store:
        key = store.add_key(name, line, actor=os_user())
    if fmt == "json":
        echo_json({"user": name, **key.as_json()})
    else:
        echo(f"key {key.algorithm} {key.fingerprint} enrolled for user {name}")


@user.command("key-remove")
@click.argument("name")
@click.argument("key", metavar="FINGERPRINT|FILE")
@pass_env
def key_remove(env: Env, name: str, key: str) -> None:
    """Remove a key from NAME: by its FINGERPRINT (SHA256:..., see 'user show'), or the .pub FILE it was enrolled from.

    Certificates already issued for the key stay valid until they expire
    (they are short-lived).

    \b
    Example:
      iast-ca user key-remove alice SHA256:nThbg6kXUpJWGl7E1IGOCspRomTxdCARLviKw6E5SY8
      iast-ca user key-remove alice ~alice/.ssh/old_laptop.pub
    """
    fingerprint = key if key.startswith("SHA256:") else _fingerprint_of_file(key)
    with _store(env) as store:
        store.remove_key(name, fingerprint, actor=os_user())
    echo(f"key {fingerprint} removed from user {name}")


def _fingerprint_of_file(path: str) -> str:
    """The fingerprint of the public key in ``path`` (a .pub file); a usage error when it is none."""
    try:
        with open(path) as f:
            text = f.read(MAX_KEY_FILE)
    except OSError as e:
        raise UsageError(f"{path}: not a SHA256:... fingerprint, and not a readable .pub file "
                         f"({e.strerror or e})") from None
    try:
        return parse_user_key(text).fingerprint
    except BadKey as e:
        raise UsageError(f"{path}: {e.message}") from None


@user.command()
@click.argument("name", required=False)
@click.option("--address", metavar="IP", help="Also (or only) unlock this client address.")
@pass_env
def unlock(env: Env, name: str | None, address: str | None) -> None:
    """Clear the failed-login counters (and any lock) of NAME and/or a client address.

    Audited as an 'unlocked' event.

    \b
    Example:
      iast-ca user unlock alice --address 192.0.2.10
    """
    if name is None and address is None:
        raise UsageError("give a user NAME, --address IP, or both")
    with env.open_ca(require_db=True) as ca:
        cleared = ca.throttle.unlock(name, address, log=ca.audit, actor=os_user())
    echo(f"cleared {cleared} counter(s)" + ("" if cleared else " (nothing was locked)"))
