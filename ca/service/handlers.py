"""What each channel command does: the command table, one handler per command of :mod:`ca.service.protocol`.

protocol.py says what a command line may contain (the grammar: ``COMMANDS``);
this module says what each command does (``HANDLERS``), and the two name
the same commands (checked at import). A handler gets the parsed command
and the connection's :class:`~ca.models.Identity`, writes its answer to
stdout and returns an exit status (``ca.errors.EXIT_*``). Blocking work
goes to the issue thread (``on_issue``) or the auth thread (``on_auth``).
``sign`` goes through :meth:`Authority.issue`, the one path every
certificate takes.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import asyncssh

from ca.access.approvals import AccessRequest, run_hook
from ca.app import CA
from ca.auth.base import RequestAuthenticator, StepUp
from ca.durations import format_duration
from ca.errors import (
    EXIT_AUTH,
    EXIT_DENIED,
    EXIT_ERROR,
    EXIT_OK,
    EXIT_USAGE,
    AuthenticationFailed,
    CAError,
    UsageError,
)
from ca.models import HostRequest, Identity, SignRequest
from ca.rules import host_of_account
from ca.service import metrics
from ca.service.observe import event
from ca.service.protocol import COMMANDS, HELP, HOST_COMMANDS, SHARED_COMMANDS, Command
from ca.sshcert.certificates import parse_certificate_line
from ca.sshcert.wire import WireError

if TYPE_CHECKING:
    from ca.service.server import Service


@dataclass
class Call:
    """One command on one channel."""

    service: Service
    process: asyncssh.SSHServerProcess
    cmd: Command
    identity: Identity

    @property
    def ca(self) -> CA:
        return self.service.ca

    async def on_issue(self, fn: Callable, *args: Any) -> Any:
        return await self.service.executors.on_issue(fn, *args)

    async def on_auth(self, fn: Callable, *args: Any) -> Any:
        return await self.service.executors.on_auth(fn, *args)

    async def on_commit(self, fn: Callable, *args: Any) -> Any:
        """An issuance on the issue thread, group-committed with the others waiting; its result
        only once the commit holding its rows has returned (docs/security.md rule 64)."""
        return await self.service.executors.on_issue_committed(self.ca.authority.audit, fn, *args)

    def reply(self, obj: Any, text: str) -> int:
        """The answer: ``obj`` as JSON with ``--json``, else ``text``."""
        self.process.stdout.write((json.dumps(obj) if self.cmd.json else text) + "\n")
        return EXIT_OK

    async def read_stdin(self) -> str:
        cap = self.service.cfg.max_request_bytes
        chunks, size = [], 0
        while True:
            chunk = await self.process.stdin.read(4096)
            if not chunk:
                return "".join(chunks)
            size += len(chunk)
            if size > cap:
                raise UsageError(f"request larger than {cap} bytes")
            chunks.append(chunk)


def refused(process: asyncssh.SSHServerProcess, cmd: Command | None, e: CAError) -> int:
    """A refusal: one line on stderr (and the error object with ``--json``); its exit status."""
    if cmd is not None and cmd.json:
        process.stdout.write(json.dumps({"error": e.code, "message": e.message}) + "\n")
    process.stderr.write(f"error: {e.message}\n")
    event("request refused", user=process.get_extra_info("username"), code=e.code, message=e.message)
    return e.exit_status if e.exit_status in (EXIT_USAGE, EXIT_DENIED, EXIT_AUTH) else EXIT_ERROR


# -- blocking work, on the issue thread -----------------------------------------------


def _enabled(ca: CA, identity: Identity) -> None:
    user = ca.users.get(identity.user)
    if user is None or user.disabled:
        raise AuthenticationFailed(f"user {identity.user} is disabled")


def _has_totp(ca: CA, user: str) -> bool:
    row = ca.users.get(user)
    return row is not None and row.has_totp


def _request_access(ca: CA, identity: Identity, cmd: Command) -> AccessRequest:
    _enabled(ca, identity)
    return ca.approvals.create(identity, role=cmd.role, ttl=cmd.ttl, reason=cmd.reason, policy=ca.policy)


def _decide_request(ca: CA, identity: Identity, cmd: Command) -> AccessRequest:
    _enabled(ca, identity)
    policy = ca.policy
    if cmd.name == "approve":
        return ca.approvals.approve(cmd.request_id, identity, policy, cmd.comment)
    if cmd.name == "deny":
        return ca.approvals.deny(cmd.request_id, identity, policy, cmd.comment)
    return ca.approvals.cancel(cmd.request_id, identity, policy)


# -- the handlers ------------------------------------------------------------------------


async def help_(c: Call) -> int:
    c.process.stdout.write(HELP)
    return EXIT_OK


async def ca_keys(c: Call) -> int:
    c.process.stdout.write("\n".join(c.ca.keyring.trust_lines()) + "\n")
    return EXIT_OK


async def known_hosts(c: Call) -> int:
    c.process.stdout.write("".join(line + "\n" for line in c.ca.host_known_hosts_lines()))
    return EXIT_OK


async def host_enroll(c: Call) -> int:
    """``host-enroll``: the host key on stdin, signed once for the join token this connection logged in with."""
    host = host_of_account(c.identity.user)
    key_line = await c.read_stdin()
    req = HostRequest(public_key=key_line, host=host or "", ttl=c.cmd.ttl, proof="token",
                      token_id=c.identity.subject)
    return await _host_issue(c, req)


async def host_renew(c: Call) -> int:
    """``host-renew``: the current certificate on stdin; a fresh one for the same key and role."""
    host = host_of_account(c.identity.user)
    cert_line = (await c.read_stdin()).strip()
    parts = cert_line.split()
    key_line = ""
    if len(parts) >= 2 and parts[0].endswith("-cert-v01@openssh.com"):
        # The certified key, from the certificate itself (the authority checks it is the login key).
        try:
            cert = parse_certificate_line(cert_line)
            key_line = f"{cert.key_type} {base64.b64encode(cert.public_key_blob).decode()}"
        except WireError:
            key_line = ""
    req = HostRequest(public_key=key_line, host=host or "", ttl=c.cmd.ttl, proof="renewal",
                      certificate=cert_line)
    return await _host_issue(c, req)


async def _host_issue(c: Call, req: HostRequest) -> int:
    issued = await c.on_issue(c.ca.authority.issue_host, c.identity, req)
    event("host issued", host=issued.decision.host, role=issued.decision.role, serial=issued.serial,
          key_id=issued.key_id, proof=req.proof, source=c.identity.source_address)
    return c.reply(issued.as_json(), issued.certificate)


async def krl(c: Call) -> int:
    data = await c.on_issue(c.ca.krl)
    c.process.stdout.write(base64.encodebytes(data).decode("ascii"))
    return EXIT_OK


async def whoami(c: Call) -> int:
    i = c.identity
    return c.reply({
        "user": i.user, "auth_methods": list(i.auth_methods), "mfa": i.mfa,
        "source_address": i.source_address,
        "groups": list(c.ca.policy.groups_of(i.user)),
        "now": int(c.ca.clock()),  # the CA's clock, for 'iast-ssh host check' (clock_skew)
    }, f"{i.user} from {i.source_address}, authenticated by {'+'.join(i.auth_methods)}")


async def roles(c: Call) -> int:
    verdicts = [v for v in c.ca.policy.explain(c.identity.user) if v.allowed]
    return c.reply([v.as_json() for v in verdicts], "\n".join(_role_line(v) for v in verdicts) or "no roles")


async def request(c: Call) -> int:
    """``request``: a pending access request; its id is the first word of the answer."""
    req = await c.on_issue(_request_access, c.ca, c.identity, c.cmd)
    event("access requested", user=c.identity.user, role=req.role, request_id=req.id)
    hook = getattr(c.service.cfg, "on_request", None)
    if hook:
        # Off the request path: the reply does not wait for it, and its failure is only logged.
        values = {"id": req.id, "user": req.user, "role": req.role}
        c.service.spawn(asyncio.get_running_loop().run_in_executor(None, functools.partial(run_hook, hook, values)))
    role = c.ca.policy.roles.get(req.role)
    who = f" from {', '.join(role.approval.approvers)}" if role is not None and role.approval else ""
    within = f" within {format_duration(role.approval.expires)}" if role is not None and role.approval else ""
    text = (f"{req.id}\npending: needs {req.required or '?'} approval(s){who} by {req.as_json()['expires']}; "
            f"once approved, use it{within}: iast-ssh login --request {req.id}")
    return c.reply(req.as_json(), text)


async def requests(c: Call) -> int:
    found = await c.on_issue(c.ca.approvals.visible_to, c.identity, c.ca.policy)
    return c.reply([r.as_json() for r in found], "\n".join(r.summary() for r in found) or "no requests")


async def decide(c: Call) -> int:
    """``approve``, ``deny`` and ``cancel``."""
    req = await c.on_issue(_decide_request, c.ca, c.identity, c.cmd)
    event(f"request {c.cmd.name}", user=c.identity.user, request_id=req.id, status=req.status)
    return c.reply(req.as_json(), req.summary())


async def sign(c: Call) -> int:
    started = time.perf_counter()  # iast_issue_seconds: request received to reply sent
    cmd, identity, authority = c.cmd, c.identity, c.ca.authority
    key_line = await c.read_stdin()
    if cmd.token:
        # A workload: the first line is its platform's token, the rest the public key. The token,
        # not the connection, authenticates this request (docs/security.md rule 14, the workload rule).
        token, _, key_line = key_line.partition("\n")
        identity = await _workload_identity(c, token)
    req = SignRequest(public_key=key_line, role=cmd.role, ttl=cmd.ttl, reason=cmd.reason, request_id=cmd.request_id)
    if cmd.otp is not None:
        if not await _step_up(c, cmd.otp):
            # The caller is authenticated as this user: saying that they have no TOTP tells them
            # about their own account only (docs/security.md rule 85).
            has_totp = await c.on_issue(_has_totp, c.ca, identity.user)
            err = AuthenticationFailed("one-time code refused" if has_totp else
                                       f"one-time code refused: {identity.user} has no one-time code (TOTP) "
                                       "enrolled; ask the CA's administrator to set one up")
            await c.on_commit(authority.refuse, identity, req, err)
            raise err
        identity = replace(identity, auth_methods=identity.auth_methods + ("otp-step-up",), mfa=True)
    issued = await c.on_commit(authority.issue, identity, req)
    event("issued", user=identity.user, role=issued.decision.role, serial=issued.serial, key_id=issued.key_id,
          key_fingerprint=issued.key_fingerprint, source=identity.source_address)
    if cmd.json:
        c.process.stdout.write(json.dumps(issued.as_json()) + "\n")
    else:
        c.process.stdout.write(issued.certificate + "\n")
    metrics.observe_issue(time.perf_counter() - started)
    return EXIT_OK


async def enroll(c: Call) -> int:
    """Self-enrolment with the code this login used (ca.auth.enrol): the person's own key (stdin),
    password (``--password-stdin``: the first stdin line) and TOTP secret (``--totp``, in this reply only)."""
    text = await c.read_stdin()
    password = None
    if c.cmd.password_stdin:
        first, _, text = text.partition("\n")
        password = first.rstrip("\r")
    key_line = text.strip() or None
    enrolment = await c.on_issue(functools.partial(c.ca.users.redeem, c.identity.user, c.identity.subject or "",
                                                   key_line=key_line, password=password, totp=c.cmd.totp))
    user = enrolment.user
    event("self-enrolled", user=user.name, source=c.identity.source_address, keys=len(user.keys),
          password=password is not None, totp=c.cmd.totp)
    lines = [f"enrolled {user.name}: {len(user.keys)} key(s), password {'set' if user.has_password else 'none'}, "
             f"TOTP {'set' if user.has_totp else 'none'}"]
    if enrolment.totp_secret:
        lines += [f"TOTP secret (add it to your authenticator app now; it is not shown again): "
                  f"{enrolment.totp_secret}", f"otpauth URI: {enrolment.totp_uri}"]
    return c.reply({"user": user.name, "keys": [k.fingerprint for k in user.keys], "has_password": user.has_password,
                    "has_totp": user.has_totp, "totp_secret": enrolment.totp_secret, "totp_uri": enrolment.totp_uri},
                   "\n".join(lines))


WORKLOAD_REFUSED = "workload token refused (the CA's audit log records why)"


async def _workload_identity(c: Call, token: str) -> Identity:
    """The identity a workload token vouches for, checked through the guard (throttled per
    address, every refusal audited with its reason); AuthenticationFailed (exit 4) if refused."""
    authn = next((a for a in c.ca.authenticators if isinstance(a, RequestAuthenticator)), None)
    if authn is None:
        raise AuthenticationFailed("this CA accepts no workload tokens (no [workload.*] in its config)")
    user = c.process.get_extra_info("username") or "?"
    address = c.identity.source_address or "?"
    verify = await authn.check(token, address)
    identity = await c.on_auth(c.ca.guard.check, authn.guarding, user, address, verify)
    if identity is None:
        raise AuthenticationFailed(WORKLOAD_REFUSED)
    event("workload token accepted", user=identity.user, subject=identity.subject, issuer=identity.issuer,
          source=address)
    return identity


async def _step_up(c: Call, code: str) -> bool:
    """Check a one-time code sent with a request (MFA step-up), through the guard."""
    authn = next((a for a in c.ca.authenticators if isinstance(a, StepUp)), None)
    if authn is None:
        return False
    user, address = c.identity.user, c.identity.source_address
    ok = await c.on_auth(c.ca.guard.check, authn.step_up_guarding, user, address, authn.step_up(user, code))
    return bool(ok)


def _role_line(v) -> str:
    extra = [f"force-command {v.force_command}"] if v.force_command else []
    if v.require_reason:
        extra.append("reason required")
    if v.require_mfa:
        extra.append("one-time code required")
    if v.approval:
        extra.append(f"needs {v.approval.required} approval(s): iast-ssh request --role {v.role}")
    return (f"{v.role}: principals {', '.join(v.principals or ())}; ttl {format_duration(v.ttl or 0)} "
            f"(max {format_duration(v.max_ttl or 0)})" + "".join(f"; {x}" for x in extra))


def _for(kind: str, handler: Callable[[Call], Awaitable[int]]) -> Callable[[Call], Awaitable[int]]:
    """Run ``handler`` only for a login of ``kind``: a host (``host:NAME``) or a user.
    A host's login (a join token, its host key) proves nothing about any user, and no
    user may ask for a host certificate through a host command."""

    @functools.wraps(handler)
    async def run(c: Call) -> int:
        is_host = host_of_account(c.identity.user) is not None
        if is_host != (kind == "host"):
            raise AuthenticationFailed(f"{c.cmd.name} is a command for {'hosts' if kind == 'host' else 'users'}; "
                                       f"you are logged in as {c.identity.user[:70]}")
        return await handler(c)

    return run


_HANDLERS: dict[str, Callable[[Call], Awaitable[int]]] = {
    "host-enroll": host_enroll,
    "host-renew": host_renew,
    "known-hosts": known_hosts,
    "sign": sign,
    "request": request,
    "requests": requests,
    "approve": decide,
    "deny": decide,
    "cancel": decide,
    "roles": roles,
    "whoami": whoami,
    "ca-keys": ca_keys,
    "krl": krl,
    "help": help_,
    "enroll": enroll,
}
HANDLERS: dict[str, Callable[[Call], Awaitable[int]]] = {
    name: fn if name in SHARED_COMMANDS else _for("host" if name in HOST_COMMANDS else "user", fn)
    for name, fn in _HANDLERS.items()
}
# The grammar and the table name the same commands: one cannot gain a command the other lacks.
if set(HANDLERS) != set(COMMANDS):
    raise RuntimeError(f"commands without a handler or a grammar: {sorted(set(HANDLERS) ^ set(COMMANDS))}")
