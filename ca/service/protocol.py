"""The request protocol spoken on the CA's SSH channel.

A client runs one command per SSH channel, as the exec command line (so a
plain OpenSSH client can use it: ``ssh -p 2222 alice@ca sign --role dev <
key.pub``). Stdin carries the public key for ``sign``. The answer is on
stdout; on failure, one line on stderr and an exit status:

    0 ok, 1 error, 2 usage, 3 denied by policy, 4 authentication insufficient

With ``--json`` the answer (or ``{"error": CODE, "message": TEXT}``) is one
JSON object on stdout.

This parser is the first thing requester bytes reach after authentication;
it is fuzzed, and it accepts only the options listed here.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from ca.durations import parse_duration
from ca.errors import UsageError

MAX_COMMAND_LINE = 4096

# command -> the options it takes (flags are True, valued options False)
COMMANDS: dict[str, dict[str, bool]] = {
    "sign": {"--role": False, "--ttl": False, "--reason": False, "--otp": False, "--request": False,
             "--token": False, "--json": True},
    "request": {"--role": False, "--ttl": False, "--reason": False, "--json": True},
    "requests": {"--json": True},
    "approve": {"--comment": False, "--json": True},
    "deny": {"--comment": False, "--json": True},
    "cancel": {"--json": True},
    "roles": {"--json": True},
    "whoami": {"--json": True},
    "ca-keys": {},
    "known-hosts": {},
    "krl": {},
    "help": {},
    # Self-enrolment: only for a login by a one-time enrolment code, see ca.auth.enrol.
    "enroll": {"--totp": True, "--password-stdin": True, "--json": True},
    # Host commands: only for a host's login (host:NAME), see ca.auth.hosts.
    "host-enroll": {"--ttl": False, "--json": True},
    "host-renew": {"--ttl": False, "--json": True},
}
# Commands a host login may run; every other command is for users only (ca.service.handlers).
HOST_COMMANDS = frozenset({"host-enroll", "host-renew"})
SHARED_COMMANDS = frozenset({"ca-keys", "known-hosts", "krl", "help"})
# Commands that take one request ID as their only positional argument.
TAKES_ID = frozenset({"approve", "deny", "cancel"})
# Options a command cannot do without.
REQUIRED: dict[str, tuple[str, ...]] = {"request": ("--role", "--reason"), "deny": ("--comment",)}

HELP = """\
iast-ssh certificate authority. Commands (run as: ssh -p PORT USER@CA COMMAND):
  sign [--role R] [--ttl D] [--reason T] [--otp CODE] [--json] < key.pub
                       sign the public key on stdin; prints the certificate line
  sign ... --request ID  use an approved access request (roles with approval)
  sign --token - [--role R] [--json] < token-then-key
                       a workload (CI job): stdin is its platform's token (one line), then the
                       public key; as user 'workload': cat token key.pub | ssh workload@CA sign --token -
  request --role R [--ttl D] --reason T [--json]
                       ask for temporary access to a role that needs approval; prints the request id
  requests [--json]    requests you may approve or deny, and your own
  approve ID [--comment T] [--json]   approve someone's request (you must be one of its approvers)
  deny ID --comment T [--json]        deny it; one denial closes the request
  cancel ID [--json]   withdraw your own request
  roles [--json]       the roles you may request, with their limits
  whoami [--json]      who the CA thinks you are, and how you authenticated
  ca-keys              the CA public keys hosts trust (TrustedUserCAKeys)
  known-hosts          '@cert-authority PATTERN KEY' lines for known_hosts (the host CA)
  krl                  the current KRL (sshd RevokedKeys), base64: ... krl | base64 -d > revoked.krl
Self-enrolment (log in with the code from 'iast-ca user invite': ssh -o KbdInteractiveDevices=enrol USER@CA):
  enroll [--totp] [--password-stdin] [--json] < key.pub
                       register your own public key (stdin), and/or a password (the first stdin line,
                       with --password-stdin) and a new TOTP secret (--totp; shown to you only); the code
                       works once
Host commands (log in as host:NAME; run by 'iast-ssh host enroll' and 'iast-ssh host renew'):
  host-enroll [--ttl D] [--json] < ssh_host_ed25519_key.pub   (login: the one-time join token)
  host-renew [--ttl D] [--json] < ssh_host_ed25519_key-cert.pub   (login: the host key)
Exit status: 0 ok, 1 error, 2 usage, 3 denied by policy, 4 authentication insufficient.
"""


@dataclass(frozen=True)
class Command:
    """One parsed channel command."""

    name: str
    role: str | None = None
    ttl: int | None = None
    reason: str | None = None
    otp: str | None = None
    json: bool = False
    request_id: str | None = None  # sign --request ID, and the ID of approve/deny/cancel
    comment: str | None = None
    token: bool = False  # sign --token -: the first line of stdin is a workload token
    totp: bool = False  # enroll --totp
    password_stdin: bool = False  # enroll --password-stdin: the first line of stdin is the new password


def parse_command(line: str | None) -> Command:
    """Parse an exec command line; raise :class:`UsageError` with a one-line message."""
    if not line or not line.strip():
        raise UsageError("no command given; try 'help'")
    if len(line) > MAX_COMMAND_LINE:
        raise UsageError(f"command line longer than {MAX_COMMAND_LINE} characters")
    if "\x00" in line:
        raise UsageError("command line contains a NUL byte")
    try:
        words = shlex.split(line)
    except ValueError as e:
        raise UsageError(f"cannot parse the command line: {e}") from None
    if not words:
        raise UsageError("no command given; try 'help'")
    name, args = words[0], words[1:]
    if name not in COMMANDS:
        raise UsageError(f"unknown command {name[:40]!r}; try 'help'")
    allowed = COMMANDS[name]
    values: dict[str, str | bool] = {}
    positional: list[str] = []
    i = 0
    while i < len(args):
        word = args[i]
        opt, eq, inline = word.partition("=")
        if name in TAKES_ID and not word.startswith("-"):
            if positional:
                raise UsageError(f"{name}: one request ID only")
            positional.append(word)
            i += 1
            continue
        if opt not in allowed:
            raise UsageError(f"{name}: unknown option {opt[:40]!r}")
        if opt in values:
            raise UsageError(f"{name}: {opt} given twice")
        if allowed[opt]:
            if eq:
                raise UsageError(f"{name}: {opt} takes no value")
            values[opt] = True
        elif eq:
            values[opt] = inline
        else:
            i += 1
            if i == len(args):
                raise UsageError(f"{name}: {opt} needs a value")
            values[opt] = args[i]
        i += 1
    for opt in REQUIRED.get(name, ()):
        if not values.get(opt):
            raise UsageError(f"{name}: {opt} is required")
    request_id = None
    if name in TAKES_ID:
        if not positional:
            raise UsageError(f"{name}: which request? give its ID (see 'requests')")
        request_id = _request_id(name, positional[0])
    elif "--request" in values:
        request_id = _request_id(name, str(values["--request"]))
    token = "--token" in values
    if token:
        if values["--token"] != "-":
            raise UsageError(f"{name}: --token takes '-': the token is the first line of stdin, then the public key")
        if "--otp" in values or "--request" in values:
            raise UsageError(f"{name}: --token (a workload) takes no --otp or --request")
    ttl = None
    if "--ttl" in values:
        try:
            ttl = parse_duration(str(values["--ttl"]))
        except ValueError as e:
            raise UsageError(f"{name}: --ttl: {e}") from None
    return Command(
        name=name,
        role=values.get("--role") or None,  # type: ignore[arg-type]
        ttl=ttl,
        reason=values.get("--reason"),  # type: ignore[arg-type]
        otp=values.get("--otp"),  # type: ignore[arg-type]
        json=bool(values.get("--json", False)),
        request_id=request_id,
        comment=values.get("--comment"),  # type: ignore[arg-type]
        token=token,
        totp=bool(values.get("--totp", False)),
        password_stdin=bool(values.get("--password-stdin", False)),
    )


def _request_id(name: str, text: str) -> str:
    from ca.access.approvals import check_request_id

    try:
        return check_request_id(text)
    except UsageError as e:
        raise UsageError(f"{name}: {e}") from None
