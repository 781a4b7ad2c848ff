"""``iast-ssh``: the client people run before ``ssh``.

A thin shell over :mod:`ca.client`: each command parses its options, builds
the prompt callbacks (only when stdin is a terminal: a script is never
asked anything), calls the library and prints. Library errors become one
line on stderr and the error's exit status (1 error, 2 usage, 3 denied by
policy, 4 authentication).

The library (and asyncssh with it) is imported inside the commands, so that
``iast-ssh --help`` starts fast.
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import sys
from collections.abc import Callable
from typing import Any

import click

from ca import __version__
from ca.cli.common import Group, echo, echo_json, echo_table, output_options
from ca.durations import format_duration

_OUT_HELP = "Directory for the key and certificate files (default: ~/.ssh/iast-ssh)."


def _deprecated_alias(f: Callable, new: str, old: str, param: str, **kw: Any) -> Callable:
    """``old`` (hidden) is still read as ``new``: the naming rule of issue 12 (files are -o/--output,
    directories --out-dir), without breaking scripts that use the old name."""
    f = click.option(old, f"_{param}_old", hidden=True, **kw)(f)

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        legacy = kwargs.pop(f"_{param}_old")
        if legacy is not None:
            if kwargs.get(param) is not None:
                raise click.UsageError(f"{old} is the old name of {new}: give one of them")
            echo(f"note: {old} is deprecated; use {new}", err=True)
            kwargs[param] = legacy
        return f(*args, **kwargs)

    return wrapper


def out_dir_option(f: Callable) -> Callable:
    """``--out-dir DIR`` (and the old ``--out DIR``)."""
    f = _deprecated_alias(f, "--out-dir", "--out", "out_dir", type=click.Path(file_okay=False), metavar="DIR")
    return click.option("--out-dir", "out_dir", type=click.Path(file_okay=False), metavar="DIR", help=_OUT_HELP)(f)


def output_file_option(help: str, required: bool = True) -> Callable:
    """``-o/--output FILE`` (and the old ``--out FILE``); required unless the alias is given."""

    def deco(f: Callable) -> Callable:
        @functools.wraps(f)
        def need(*args: Any, **kw: Any) -> Any:
            if required and kw.get("out") is None:
                raise click.UsageError("Missing option '-o' / '--output'.")
            return f(*args, **kw)

        g = _deprecated_alias(need, "--output", "--out", "out", type=click.Path(dir_okay=False), metavar="FILE")
        return click.option("-o", "--output", "out", type=click.Path(dir_okay=False), metavar="FILE",
                            help=help + " (required)" if required else help)(g)

    return deco


def _interactive() -> bool:
    """Prompts only on a terminal: with stdin redirected, nobody can answer them."""
    return sys.stdin.isatty()


def _display() -> bool:
    """Whether a browser can be opened here: a graphical session (not over plain ssh)."""
    import os

    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")) or sys.platform in ("darwin", "win32")


def _sign_in(text: str, url: str | None) -> None:
    """Show the IdP's URL and code (stderr: stdout stays the answer); open a browser when there is one."""
    click.echo(text, err=True)
    if url and _display():
        import webbrowser

        try:
            if webbrowser.open(url):
                click.echo("(opened in your browser)", err=True)
        except webbrowser.Error:
            pass


def _prompter(interactive: bool):
    from ca.client import Prompter

    if not interactive:
        # Nobody can type, but an SSO sign-in URL can still be shown (and opened).
        return Prompter(sign_in=_sign_in)

    def secret(prompt: str) -> str:
        return click.prompt(prompt.rstrip().rstrip(":"), hide_input=True, err=True, prompt_suffix=": ")

    def code(prompt: str) -> str:
        return click.prompt(prompt.rstrip().rstrip(":"), err=True, prompt_suffix=": ").strip()

    def confirm(address: str, fingerprint: str) -> bool:
        echo(f"The CA at {address} presents the service host key {fingerprint}.\n"
                   "Compare it with the 'service host key' line of 'iast-ca info' on the CA (or ask its "
                   "administrator).", err=True)
        return click.confirm("Trust this CA and remember its service host key?", default=False, err=True)

    return Prompter(secret=secret, code=code, confirm_host_key=confirm, sign_in=_sign_in)


def ca_options(f: Callable) -> Callable:
    """Where the CA is, which host key it must present, who we are and which key proves it."""

    @click.option("--ca", "ca", metavar="HOST[:PORT][,HOST[:PORT]...]",
                  help="The CA service (default: 'ca' in the config file, else 127.0.0.1:2222). Several "
                       "replicas, comma-separated, are tried in order: one that does not answer within 3s is "
                       "skipped, e.g. --ca ca1:2222,ca2:2222.")
    @click.option("--ca-fingerprint", metavar="SHA256:...",
                  help="The pin: the CA service's host key fingerprint (the 'service host key' line of "
                       "'iast-ca info'; not the CA key). Default: the profile's; on a terminal you may confirm "
                       "an unknown key instead.")
    @click.option("-l", "--user", metavar="USER", help="Your user name at the CA (default: config, else your "
                                                       "local user name).")
    @click.option("-i", "--identity", type=click.Path(dir_okay=False), metavar="KEY",
                  help="Authenticate with this enrolled private key (default: the profile's, remembered from "
                       "the first login; else ssh-agent's keys, then password + one-time code on a terminal). "
                       "Commands other than login first try the certificate you hold.")
    @click.option("--profile", "-P", metavar="NAME",
                  help="Use the [profiles.NAME] table of the config file (default: the profile whose ca is "
                       "--ca, else the top-level settings).")
    @functools.wraps(f)
    def wrapper(*args: Any, ca: str | None, ca_fingerprint: str | None, user: str | None,
                identity: str | None, profile: str | None, **kw: Any) -> Any:
        from ca.client import Client

        def make_client(**more: Any) -> Client:
            return Client(ca, ca_fingerprint=ca_fingerprint, user=user, identity=identity, profile=profile,
                          prompter=_prompter(_interactive()), **more)

        return f(*args, make_client=make_client, **kw)

    return wrapper


def _until(ts: int) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def _notes(notes) -> None:
    for note in notes:
        echo(f"note: {note}", err=True)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="iast-ssh")
def cli() -> None:
    """Get short-lived SSH certificates from an iast-ssh CA.

    'login' authenticates to the CA (an enrolled key, or a password and a
    one-time code), gets a certificate for a fresh key and puts it into
    ssh-agent (or into files); then ssh works as usual until it expires.
    Settings live in ~/.config/iast-ssh/config.toml (ca, ca_fingerprint,
    user, identity, role; one [profiles.NAME] table per further CA): the
    first login remembers them, so later commands need no flags.

    \b
    Example:
      iast-ssh login --ca ca.example.com:2222 --ca-fingerprint SHA256:... --role dev
      ssh alice@dev-host
    """


@cli.command()
@ca_options
@click.option("--role", "-r", help="Role to request (default: config, else the CA policy's default).")
@click.option("--ttl", metavar="DURATION", help="Lifetime, e.g. 30m or 2h (default: the role's).")
@click.option("--reason", help="Why you need access (recorded in the CA's audit log; some roles require it).")
@click.option("--otp", metavar="CODE", help="One-time code for roles that require a second factor "
                                            "(on a terminal you are asked when needed).")
@click.option("--request", "request_id", metavar="ID",
              help="Use this approved access request (roles that need approval; see 'iast-ssh request'). "
                   "Role, ttl and reason default to the request's.")
@click.option("--sso", "sso", is_flag=False, flag_value="", default=None, metavar="[NAME]",
              help="Sign in through the CA's identity provider (NAME: one of its [oidc.NAME]; default its "
                   "first): shows a URL and code (and opens a browser when there is a display).")
@click.option("--token-file", type=click.Path(dir_okay=False), metavar="FILE",
              help="A workload (CI job): authenticate with the platform's signed token in FILE.")
@click.option("--token-env", metavar="VAR",
              help="A workload: the token is in this environment variable (e.g. a CI job's ID token).")
@click.option("--no-agent", is_flag=True, help="Write key and certificate files instead of using ssh-agent "
                                               "(one pair per role: id_ed25519-ROLE, id_ed25519-ROLE-cert.pub).")
@out_dir_option
@output_options(csv_ok=False)
def login(make_client, role, ttl, reason, otp, request_id, sso, token_file, token_env, no_agent, out_dir,
          fmt) -> None:
    """Get a certificate from the CA and hand it to ssh.

    The CA's service host key is checked against the pinned fingerprint before
    anything is sent. The certificate goes into ssh-agent (SSH_AUTH_SOCK)
    for exactly its lifetime, replacing the previous certificate of the
    same CA and role; with --no-agent, or without an agent, the key and
    certificate are written (mode 0600) to ~/.ssh/iast-ssh/id_ed25519-ROLE
    (and -cert.pub), replacing that role's pair. The CA, its pin, your user
    name and -i KEY are remembered in the config file for next time.
    Prompts (password, one-time code) appear only on a terminal. A role
    that needs approval is signed once per approved request ('iast-ssh
    request'); '--role R' finds your approved request for R by itself.

    With --sso the CA signs you in through its identity provider: open
    the URL shown (a browser opens by itself when there is a display) and
    approve; a role with max_auth_age asks the IdP for a fresh sign-in.
    With --token-file or --token-env a workload (a CI job) trades its
    platform's token for a short certificate, without any key of its own.

    \b
    Example:
      iast-ssh login --role prod-readonly --reason "INC-1234" --ttl 30m
      iast-ssh login --no-agent -i ~/.ssh/id_ed25519 && ssh -i ~/.ssh/iast-ssh/id_ed25519-dev alice@host
      iast-ssh login --sso --role prod-admin
      iast-ssh login --token-env ACTIONS_ID_TOKEN --role deploy --no-agent --out-dir ./ssh
    """
    token = None
    if token_file is not None or token_env is not None:
        from ca.client.connection import read_token

        token = read_token(file=token_file, env=token_env)
    client = make_client(sso=sso, workload_token=token)
    result = client.login(role=role, ttl=ttl, reason=reason, otp=otp, no_agent=no_agent, out_dir=out_dir,
                          request_id=request_id)
    from ca.cli.fast_login import show_login

    show_login(result, fmt, echo=echo, echo_json=echo_json)


def _left(h) -> str:
    if h.revoked:
        return "REVOKED"
    left = h.seconds_left()
    return format_duration(left) if left else "expired"


@cli.command()
@ca_options
@out_dir_option
@click.option("--refresh", is_flag=True, help="Fetch the CA's KRL first (login fetches it when its copy is over 10 minutes old), so that "
                                              "a revoked certificate shows as REVOKED.")
@output_options(csv_ok=False)
def status(make_client, out_dir, refresh, fmt) -> None:
    """Show the iast certificates you hold (in ssh-agent and in files) and the time they have left.

    A certificate the last KRL fetched from its CA revokes shows as
    REVOKED ("revoked": true in --json), an expired file as expired.

    \b
    Example:
      iast-ssh status --refresh
      iast-ssh status --json | jq '.certificates[] | {key_id, seconds_left, revoked}'
    """
    from ca.client import status as get_status

    if refresh:
        client = make_client()
        client.refresh_krl()
        _notes(client.notes)
    st = get_status(out_dir=out_dir)
    if fmt == "json":
        echo_json(st.as_json())
    elif not st.held:
        echo("No iast certificates held. Get one with 'iast-ssh login'.")
    else:
        rows = [[h.key_id, h.where if not h.path else str(h.path), h.role or "", ", ".join(h.principals), _left(h)]
                for h in st.held]
        echo_table(rows, ["KEY ID", "WHERE", "ROLE", "PRINCIPALS", "LEFT"])
    _notes(st.notes)


@cli.command()
@out_dir_option
@click.option("--role", "-r", help="Remove only this role's certificate (default: every iast certificate).")
@output_options(csv_ok=False)
def logout(out_dir, role, fmt) -> None:
    """Remove your iast certificates from ssh-agent and delete their key and certificate files.

    \b
    Example:
      iast-ssh logout --role prod-readonly
      iast-ssh logout
    """
    from ca.client import logout as do_logout

    result = do_logout(out_dir=out_dir, role=role)
    if fmt == "json":
        echo_json(result.as_json())
    else:
        for key_id in result.removed_from_agent:
            echo(f"Removed {key_id} from ssh-agent.")
        for path in result.deleted_files:
            echo(f"Deleted {path}.")
        if not result.removed_from_agent and not result.deleted_files:
            echo("Nothing to remove." if role is None else f"No certificate for role {role} to remove.")
    _notes(result.notes)


@cli.command()
@ca_options
@output_options(csv_ok=False)
def roles(make_client, fmt) -> None:
    """List the roles you may request, with their principals and limits.

    \b
    Example:
      iast-ssh roles --json | jq -r '.[].role'
    """
    client = make_client()
    verdicts = client.roles()
    _notes(client.notes)
    if fmt == "json":
        echo_json(verdicts)
        return
    if not verdicts:
        echo("No roles.")
        return
    rows = []
    for v in verdicts:
        needs = [w for w, flag in (("reason", v.get("require_reason")), ("one-time code", v.get("require_mfa")),
                                   ("approval", v.get("approval"))) if flag]
        rows.append([v.get("role"), ", ".join(v.get("principals") or ()),
                     format_duration(v.get("ttl") or 0), format_duration(v.get("max_ttl") or 0),
                     ", ".join(needs), v.get("description") or ""])
    echo_table(rows, ["ROLE", "PRINCIPALS", "TTL", "MAX", "NEEDS", "DESCRIPTION"])


@cli.command()
@ca_options
@output_options(csv_ok=False)
def whoami(make_client, fmt) -> None:
    """Show who the CA thinks you are and how you authenticated.

    \b
    Example:
      iast-ssh whoami -i ~/.ssh/id_ed25519
    """
    client = make_client()
    who = client.whoami()
    _notes(client.notes)
    if fmt == "json":
        echo_json(who)
        return
    echo(f"{who.get('user')} from {who.get('source_address')}, authenticated by "
               f"{'+'.join(who.get('auth_methods') or ())}; groups: {', '.join(who.get('groups') or ()) or '-'}")


_PAST = {"approve": "approved", "deny": "denied"}


def _request_line(r: dict) -> list:
    votes = ", ".join(f"{v['approver']} {_PAST.get(v['decision'], v['decision'])}"
                      + (f" ({v['comment']})" if v.get("comment") else "")
                      for v in r.get("votes") or ())
    return [r.get("id"), r.get("user"), r.get("role"), format_duration(r.get("ttl") or 0), r.get("status"),
            f"{r.get('approvals', 0)}/{r.get('required') or '?'}", (r.get("expires") or "")[:16],
            r.get("reason") or "", votes]


_REQUEST_HEADERS = ["ID", "USER", "ROLE", "TTL", "STATUS", "OK", "EXPIRES", "REASON", "VOTES"]


def _show_request(r: dict, fmt: str, client) -> None:
    _notes(client.notes)
    if fmt == "json":
        echo_json(r)
    else:
        echo_table([_request_line(r)], _REQUEST_HEADERS)


@cli.command()
@ca_options
@click.option("--role", "-r", required=True, help="The role that needs approval.")
@click.option("--ttl", metavar="DURATION", help="Lifetime of the certificate you will get (default: the role's).")
@click.option("--reason", required=True, help="Why you need access (shown to approvers; recorded in the audit log).")
@output_options(csv_ok=False)
def request(make_client, role, ttl, reason, fmt) -> None:
    """Ask for temporary access to a role that needs approval; print the request's id.

    The approvers the policy names see it in 'iast-ssh requests'. Once
    enough of them approved, 'iast-ssh login --request ID' (or --role R)
    gets one certificate, for at most the ttl asked for, within the
    role's approval window. Unanswered requests expire.

    \b
    Example:
      iast-ssh request --role prod-admin --ttl 15m --reason "INC-4711 disk full on db-3"
      iast-ssh login --request req-abcdefghij
    """
    client = make_client()
    r = client.request_access(role=role, ttl=ttl, reason=reason)
    _notes(client.notes)
    if fmt == "json":
        echo_json(r)
        return
    echo(r["id"])
    echo(f"Pending: needs {r.get('required') or '?'} approval(s) before {r.get('expires')}. "
               f"Once approved: iast-ssh login --request {r['id']}", err=True)


@cli.command("requests")
@ca_options
@output_options(csv_ok=False)
def requests_(make_client, fmt) -> None:
    """List the pending requests you may approve or deny, then your own requests.

    \b
    Example:
      iast-ssh requests --json | jq -r '.[] | select(.status == "pending") | .id'
    """
    client = make_client()
    found = client.requests()
    _notes(client.notes)
    if fmt == "json":
        echo_json(found)
    elif not found:
        echo("No requests.")
    else:
        echo_table([_request_line(r) for r in found], _REQUEST_HEADERS)


@cli.command()
@ca_options
@click.argument("request_id", metavar="ID")
@click.option("--comment", help="A note for the requester and the audit log.")
@output_options(csv_ok=False)
def approve(make_client, request_id, comment, fmt) -> None:
    """Approve someone's access request (you must be one of the role's approvers).

    Nobody approves their own request, and each approver counts once.

    \b
    Example:
      iast-ssh approve req-abcdefghij --comment "ok for INC-4711"
    """
    client = make_client()
    _show_request(client.approve(request_id, comment), fmt, client)


@cli.command()
@ca_options
@click.argument("request_id", metavar="ID")
@click.option("--comment", required=True, help="Why (shown to the requester; recorded in the audit log).")
@output_options(csv_ok=False)
def deny(make_client, request_id, comment, fmt) -> None:
    """Deny an access request; one denial closes it.

    \b
    Example:
      iast-ssh deny req-abcdefghij --comment "use prod-readonly for this"
    """
    client = make_client()
    _show_request(client.deny(request_id, comment), fmt, client)


@cli.command()
@ca_options
@click.argument("request_id", metavar="ID")
@output_options(csv_ok=False)
def cancel(make_client, request_id, fmt) -> None:
    """Withdraw your own access request (pending, or approved and not used).

    \b
    Example:
      iast-ssh cancel req-abcdefghij
    """
    client = make_client()
    _show_request(client.cancel(request_id), fmt, client)


@cli.command()
@ca_options
@out_dir_option
@click.option("--host", "host_pattern", default="*", show_default=True, metavar="PATTERN",
              help="The ssh_config Host pattern the block applies to.")
@click.option("--offline", is_flag=True, help="Do not ask the CA for its keys (no @cert-authority lines).")
def config(make_client, out_dir, host_pattern, offline) -> None:
    """Print an ssh_config block for the certificate files, and known_hosts lines for the CA.

    With ssh-agent (what 'login' uses by default) ssh needs no settings:
    it offers the agent's certificate by itself. The block is for
    'login --no-agent' (one IdentityFile per role's pair found). The
    '@cert-authority' lines are the CA's host CA,
    for the names its host policy certifies: put them in ~/.ssh/known_hosts
    and ssh verifies every enrolled host with no "authenticity of host"
    prompt (and refuses a host whose certificate does not name it).

    \b
    Example:
      iast-ssh config --host '*.example.com' >> ~/.ssh/config
      iast-ssh config | grep '^@cert-authority' >> ~/.ssh/known_hosts
    """
    from pathlib import Path

    from ca.client import default_out_dir
    from ca.client.files import cert_files, key_file
    from ca.client.hostcert import fetch_known_hosts

    out = Path(out_dir).expanduser().absolute() if out_dir else default_out_dir()
    known: list[str] = []
    if not offline:
        client = make_client()
        known = fetch_known_hosts(client)
        _notes(client.notes)
    pairs = [c.with_name(c.name[:-len("-cert.pub")]) for c in cert_files(out)] or [out / key_file("ROLE")]
    lines = [
        "# iast-ssh: short-lived certificates ('iast-ssh login').",
        "# With ssh-agent nothing is needed: ssh offers the agent's certificate by itself.",
        "# For 'iast-ssh login --no-agent', point ssh at the files (one pair per role):",
        f"Host {host_pattern}",
    ]
    for key in pairs:
        lines += [f"    IdentityFile {key}", f"    CertificateFile {key}-cert.pub"]
    if known:
        lines += ["", "# For ~/.ssh/known_hosts: the CA's host CA, for the names its host policy certifies",
                  "# (hosts enrolled with 'iast-ssh host enroll' are then verified with no prompt):"]
        lines += known
    echo("\n".join(lines))


@cli.command()
@ca_options
@click.option("--code", metavar="CODE", help="The one-time enrolment code from 'iast-ca user invite' "
                                             "(default: asked for on a terminal).")
@click.option("--key", "key_file", type=click.Path(dir_okay=False), metavar="FILE.pub",
              help="Register this public key (your enrolled key for 'login -i').")
@click.option("--password", "ask_password", is_flag=True, help="Set your password (asked twice on a terminal).")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input instead.")
@click.option("--totp", is_flag=True, help="Make your TOTP secret (shown once, to you only).")
@output_options(csv_ok=False)
def enroll(make_client, code, key_file, ask_password, password_stdin, totp, fmt) -> None:
    """Redeem an enrolment code: register your own key, and/or password and TOTP, at the CA.

    Your administrator ran 'iast-ca user invite NAME' and gave you the code;
    it works once, for a short time. The administrator never sees your
    password or TOTP secret. Afterwards log in as usual ('iast-ssh login').

    \b
    Example:
      iast-ssh enroll --ca ca.example.com:2222 --ca-fingerprint SHA256:... -l alice --key ~/.ssh/id_ed25519.pub
      iast-ssh enroll -l alice --password --totp
    """
    from pathlib import Path

    from ca.errors import UsageError

    if not key_file and not (ask_password or password_stdin) and not totp:
        raise UsageError("nothing to enrol: give --key FILE.pub, and/or --password (or --password-stdin) with --totp")
    key_line = None
    if key_file:
        try:
            key_line = Path(key_file).expanduser().read_text()
        except (OSError, UnicodeError) as e:
            raise UsageError(f"--key: cannot read {key_file}: {getattr(e, 'strerror', None) or e}") from None
    password = None
    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    elif ask_password:
        if not _interactive():
            raise UsageError("--password asks on a terminal; in a script use --password-stdin")
        password = click.prompt("New password", hide_input=True, confirmation_prompt=True, err=True)
    if code is None:
        if not _interactive():
            raise UsageError("give --code CODE (no terminal to ask for it)")
        code = click.prompt("Enrolment code", err=True).strip()
    client = make_client()
    got = client.enroll(code, key_line=key_line, password=password, totp=totp)
    _notes(client.notes)
    if fmt == "json":
        echo_json(got)
        return
    echo(f"Enrolled {got['user']}: {len(got['keys'])} key(s), password {'set' if got['has_password'] else 'none'}, "
         f"TOTP {'set' if got['has_totp'] else 'none'}.")
    if got.get("totp_secret"):
        echo(f"TOTP secret (add it to your authenticator app now; it is not shown again): {got['totp_secret']}")
        echo(f"  {got['totp_uri']}")
    echo("Next: iast-ssh login" + (f" -i {key_line and Path(key_file).with_suffix('')}" if key_file else ""))


@cli.command("trust-ca")
@click.argument("address", metavar="HOST[:PORT]")
@click.option("--ca-fingerprint", required=True, metavar="SHA256:...",
              help="The CA service's host key fingerprint (the 'service host key' line of 'iast-ca info').")
@click.option("--known-hosts", "known_hosts", type=click.Path(dir_okay=False), metavar="FILE",
              help="The known_hosts file to add the line to (default: the one plain ssh uses, the first "
                   "UserKnownHostsFile of 'ssh -G': ~/.ssh/known_hosts of your passwd home, not $HOME).")
@output_options(csv_ok=False)
def trust_ca(address, ca_fingerprint, known_hosts, fmt) -> None:
    """Let plain ssh talk to the CA service: check its host key against the fingerprint, then add
    its '[host]:port KEY' line to your known_hosts (once; a line already there is kept).

    Nothing but the key exchange happens: no credential is sent. Afterwards
    the zero-install path works, e.g. 'ssh -p 2222 alice@ca sign < key.pub'.
    The CA's administrator prints the same line with 'iast-ca info --known-hosts'.

    \b
    Example:
      iast-ssh trust-ca ca.example.com:2222 --ca-fingerprint SHA256:...
      ssh -p 2222 alice@ca.example.com sign < ~/.ssh/id_ed25519.pub > ~/.ssh/id_ed25519-cert.pub
    """
    from ca.client.known_hosts import trust_service

    result = trust_service(address, ca_fingerprint, known_hosts)
    if fmt == "json":
        echo_json(result.as_json())
        return
    echo(f"{result.path}: {'added' if result.added else 'already had'} {result.line}")
    home = os.path.expanduser("~")
    if known_hosts is None and not result.path.is_relative_to(home):
        echo(f"note: written where ssh looks ({result.path}), not under $HOME ({home}): ssh takes ~ from the "
             "passwd entry; --known-hosts FILE names another file", err=True)
    echo(f"Plain ssh now knows the CA service, e.g.:  ssh -p {result.port} USER@{result.host} help")


@cli.group()
def host() -> None:
    """Commands for the hosts that trust the CA (run as root on the host, e.g. from a systemd timer).

    \b
    Example:
      iast-ssh host fetch-krl --ca ca.example.com:2222 --ca-fingerprint SHA256:... \\
        -l krl-web1 -i /etc/ssh/ssh_host_ed25519_key -o /etc/ssh/iast-revoked.krl
      iast-ssh host fetch-trust --ca ca.example.com:2222 --ca-fingerprint SHA256:... \\
        -l krl-web1 -i /etc/ssh/ssh_host_ed25519_key -o /etc/ssh/iast-user-ca.pub
    """


@host.command("fetch-krl")
@ca_options
@output_file_option("The KRL file sshd reads (RevokedKeys).")
@click.option("--textfile-dir", type=click.Path(file_okay=False), metavar="DIR",
              envvar="IAST_KRL_TEXTFILE_DIR", show_envvar=True,
              help="Also write DIR/iast_krl.prom after every run, successful or not, for the node exporter's "
                   "textfile collector (iast_krl_age_seconds, iast_krl_refresh_success, iast_krl_version, ...); "
                   "a metrics file that cannot be written is a warning, never a failed refresh.")
@output_options(csv_ok=False)
def fetch_krl(make_client, out: str, textfile_dir: str | None, fmt: str) -> None:
    """Fetch the CA's KRL and install it for sshd, keeping the last good one on any failure.

    The fetched file must be a valid KRL whose version is not older than
    the installed one; only then does it replace the file (atomically). On
    any failure the old file stays and the exit status is non-zero: sshd
    refuses every login when RevokedKeys is unreadable, so never install a
    bad one. The host authenticates as an enrolled user (its host key makes
    a good identity: 'iast-ca user add krl-web1 --key ssh_host_ed25519_key.pub').

    \b
    Example:
      iast-ssh host fetch-krl --ca ca:2222 --ca-fingerprint SHA256:... -l krl-web1 \\
        -i /etc/ssh/ssh_host_ed25519_key -o /etc/ssh/iast-revoked.krl \\
        --textfile-dir /var/lib/prometheus/node-exporter
    """
    from ca.client import install_krl
    from ca.errors import CAError

    ok = False
    try:
        new, old = install_krl(make_client(remember=False).krl(), out)  # names `out` in every error, never a temp file
        ok = True
    finally:
        if textfile_dir is not None:  # also after a failure: the age keeps growing where refresh fails
            from ca.client import krl_textfile

            try:
                krl_textfile.write(textfile_dir, out, ok)
            except CAError as e:  # the KRL is what sshd needs; the metrics must never fail it
                echo(f"warning: {e.message}", err=True)
    if fmt == "json":
        echo_json({"path": out, "version": new, "previous_version": old})
    else:
        echo(f"{out}: KRL version {new}" + (f" (was {old})" if old is not None else " (new file)"))


@host.command("fetch-trust")
@ca_options
@output_file_option("The file sshd reads as TrustedUserCAKeys.")
@click.option("--replace", is_flag=True, help="Accept a set of CA keys that shares no key with the installed one.")
@output_options(csv_ok=False)
def fetch_trust(make_client, out: str, replace: bool, fmt: str) -> None:
    """Fetch the CA keys to trust and install them for sshd, keeping the last good file on any failure.

    The CA publishes every key hosts must trust: the active one, a new one
    about to sign, and old ones whose certificates are still valid (see
    'iast-ca key'). Run it on a timer (systemd/iast-trust-refresh.timer) so a
    rotation reaches every host before the new key signs. A fetched set that
    is empty, malformed, or shares no key with the installed one is refused
    (exit 1) and the installed file stays.

    \b
    Example:
      iast-ssh host fetch-trust --ca ca:2222 --ca-fingerprint SHA256:... -l krl-web1 \\
        -i /etc/ssh/ssh_host_ed25519_key -o /etc/ssh/iast-user-ca.pub
    """
    from ca.client import install_trust

    client = make_client(remember=False)
    update = install_trust("\n".join(client.ca_keys()) + "\n", out, replace=replace)
    if fmt == "json":
        echo_json(update.as_json())
        return
    click.echo(f"{out}: {len(update.keys)} trusted CA key(s)"
               + (f", added {', '.join(update.added)}" if update.added else "")
               + (f", removed {', '.join(update.removed)}" if update.removed else "")
               + ("" if update.changed else " (unchanged)"))


def _host_ca_options(f: Callable) -> Callable:
    f = click.option("--ca-fingerprint", required=True, metavar="SHA256:...",
                     help="The pin: the CA service's host key fingerprint (the 'service host key' line of "
                          "'iast-ca info'; not the CA key).")(f)
    return click.option("--ca", "ca", required=True, metavar="HOST[:PORT]", help="The CA service.")(f)


@host.command("enroll")
@_host_ca_options
@click.option("--token-file", required=True, type=click.Path(dir_okay=False),
              help="The one-time join token from 'iast-ca host token' (keep it 0600; it works once).")
@click.option("--host-key", default="/etc/ssh/ssh_host_ed25519_key.pub", show_default=True,
              type=click.Path(dir_okay=False), help="The host public key to certify.")
@click.option("--cert", "cert_path", type=click.Path(dir_okay=False),
              help="Where to install the certificate (default: beside the key, KEY-cert.pub).")
@click.option("--sshd-config-dir", default="/etc/ssh/sshd_config.d", show_default=True,
              type=click.Path(file_okay=False), help="Where to write the drop-in with HostCertificate.")
@click.option("--host", "host_name", help="This host's name at the CA (default: the one in the token).")
@output_options(csv_ok=False)
def host_enroll(ca, ca_fingerprint, token_file, host_key, cert_path, sshd_config_dir, host_name, fmt) -> None:
    """Enrol this host: send its public key with a one-time join token, install the host certificate.

    The certificate is written 0644 by temp file and rename, with an
    sshd_config.d drop-in naming it (HostCertificate); reload sshd
    afterwards. A used, expired or another host's token is refused (one
    line, exit non-zero) and nothing is written.

    \b
    Example:
      iast-ssh host enroll --ca ca.example.com:2222 --ca-fingerprint SHA256:... \\
        --token-file /root/web-1.token && systemctl reload ssh
    """
    from ca.client.hostcert import enroll, read_token

    result = enroll(ca=ca, ca_fingerprint=ca_fingerprint, token=read_token(token_file), host_key=host_key,
                    cert_path=cert_path, dropin_dir=sshd_config_dir, host=host_name)
    if fmt == "json":
        echo_json(result.as_json())
        return
    click.echo(f"{result.cert_path}: host certificate serial {result.serial} for {', '.join(result.principals)}, "
               f"valid until {_until(result.valid_before)}")
    click.echo(f"{result.dropin_path}: HostCertificate {result.cert_path} (reload sshd to use it)")


@host.command("renew")
@_host_ca_options
@click.option("--host-key", default="/etc/ssh/ssh_host_ed25519_key", show_default=True,
              type=click.Path(dir_okay=False), help="The host's private key (proves possession).")
@click.option("--cert", "cert_path", type=click.Path(dir_okay=False),
              help="The current certificate, replaced by the new one (default: KEY-cert.pub).")
@click.option("--force", is_flag=True, help="Renew even if more than half of the lifetime is left.")
@output_options(csv_ok=False)
def host_renew(ca, ca_fingerprint, host_key, cert_path, force, fmt) -> None:
    """Renew this host's certificate with its host key and current certificate (no token needed).

    Does nothing while more than half of the current certificate's lifetime
    is left (unless --force). A revoked or expired certificate is refused:
    enrol again with a new token. Exits non-zero on any failure, keeping the
    current certificate.

    \b
    Example:
      iast-ssh host renew --ca ca.example.com:2222 --ca-fingerprint SHA256:... && systemctl reload ssh
    """
    from ca.client.hostcert import renew

    result = renew(ca=ca, ca_fingerprint=ca_fingerprint, host_key=host_key, cert_path=cert_path, force=force)
    if fmt == "json":
        echo_json(result.as_json())
        return
    if not result.renewed:
        click.echo(f"{result.cert_path}: serial {result.serial} is valid until {_until(result.valid_before)}; "
                   "not renewed yet (--force to renew now)")
        return
    click.echo(f"{result.cert_path}: renewed, serial {result.serial}, valid until {_until(result.valid_before)}")


# host setup and host check live in their own module and register on the host group above.
import ca.cli.host_setup_cmds  # noqa: E402,F401


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="iast-ssh")
