"""The CA service: an asyncssh server whose callbacks delegate to the library.

Authentication is SSH's own: an enrolled public key, or keyboard-interactive
password then one-time code. Every connection must authenticate
(``begin_auth`` returns True for every name, known or not, and unknown names
take the same path). Once in, each SSH channel runs one command of
:mod:`ca.service.protocol`; ``sign`` goes through :meth:`Authority.issue`, the one
path every certificate takes.

Blocking work (SQLite, signing, argon2) runs in two single-thread
executors, each with its own database connection: one for issuance, one for
authentication, so a slow password hash never holds up a signature.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import asyncssh

from ca.access.approvals import AccessRequest, Approvals, run_hook
from ca.access.revocation import build_current_krl, is_revoked
from ca.audit.log import AuditLog
from ca.auth.throttle import Throttle
from ca.auth.users import UserStore
from ca.config import Config
from ca.durations import format_duration
from ca.errors import EXIT_AUTH, EXIT_USAGE, AuthenticationFailed, CAError, UsageError
from ca.issuance.authority import Authority
from ca.keys.keyring import Keyring
from ca.models import Identity, SignRequest
from ca.policy import load_policy
from ca.service.protocol import HELP, Command, parse_command
from ca.sshcert.certificates import fingerprint
from ca.state import StatePaths

log = logging.getLogger("iast.ca")

# Authentication attempts (passwords tried, distinct keys offered) one
# connection may make before it is dropped. OpenSSH's MaxAuthTries is 6;
# keys count too, as an agent may offer several.
MAX_AUTH_ATTEMPTS = 10


class JSONFormatter(logging.Formatter):
    """One JSON object per line (journald and log shippers read these as they are)."""

    def __init__(self, static: dict[str, Any] | None = None):
        super().__init__()
        self.static = static or {}

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": round(record.created, 3), "level": record.levelname.lower(), "msg": record.getMessage()}
        out.update(self.static)
        out.update(getattr(record, "fields", {}))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(stream: Any = None, **static: Any) -> None:
    """JSON lines on stderr; ``static`` fields (e.g. ``worker=1``) go on every line."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JSONFormatter(static))
    root = logging.getLogger("iast")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    root.propagate = False


def event(msg: str, **fields: Any) -> None:
    log.info(msg, extra={"fields": fields})


def sd_notify(message: str) -> None:
    """Tell systemd (Type=notify) about our state; a no-op outside systemd."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.connect(addr)
        s.sendall(message.encode())


class Backend:
    """The blocking side of the service: issuance on one thread, authentication on another."""

    def __init__(self, cfg: Config, authority: Authority, clock: Callable[[], float] = time.time):
        self.cfg = cfg
        self.clock = clock
        self.authority = authority
        self.issue_pool = ThreadPoolExecutor(1, thread_name_prefix="iast-issue")
        self.auth_pool = ThreadPoolExecutor(1, thread_name_prefix="iast-auth")
        # The auth thread's own connection: users, throttle counters, auth events.
        self.auth_log = AuditLog(StatePaths(cfg.state_dir).db, clock=clock)
        self.users = UserStore(self.auth_log, min_rsa_bits=cfg.min_rsa_bits, clock=clock)
        self.throttle = Throttle(self.auth_log, cfg.throttle)
        self.issue_users = UserStore(authority.audit, min_rsa_bits=cfg.min_rsa_bits, clock=clock)
        authority.gate = self.still_allowed
        # Access requests share the issue thread's connection: consuming one is part of issuing.
        self.approvals = Approvals(authority.audit, clock=clock)

    async def on_issue(self, fn: Callable, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.issue_pool, fn, *args)

    async def on_auth(self, fn: Callable, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.auth_pool, fn, *args)

    # -- authentication (auth thread) -----------------------------------

    def key_ok(self, user: str, key_blob: bytes, address: str) -> bool:
        # Keys cannot be guessed, so an account locked by password failures still logs in
        # with its key (else anyone could lock anyone out); a locked address cannot.
        if self.throttle.blocked_for(None, address, self.clock()) > 0:
            return False
        return self.users.key_allowed(user, key_blob) and not is_revoked(
            self.auth_log.conn, "key", fingerprint(key_blob))

    def password_and_code_ok(self, user: str, password: str, code: str, address: str) -> bool:
        """Password, then code; count and audit a failure. The code is checked only after a
        right password: checking uses the code up (no replay), and a stranger must not be
        able to burn the user's current code. The client is not told which factor failed."""
        now = self.clock()
        wait = self.throttle.blocked_for(user, address, now)
        if wait > 0:
            # Refused unchecked; not counted again (that would let the lock grow without bound).
            self._auth_failure(user, address, "keyboard-interactive", f"throttled for {wait:.0f}s more", count=False)
            return False
        # Checked while not locked only: a locked client must not keep the auth thread busy
        # with argon2. (Locks apply to unknown names too, so this tells nothing.)
        pw_ok = self.users.check_password(user, password)
        code_ok = pw_ok and self.users.check_totp(user, code, now)
        if pw_ok and code_ok:
            self.throttle.success(user)
            return True
        self._auth_failure(user, address, "keyboard-interactive",
                           "wrong password or one-time code")
        return False

    def _auth_failure(self, user: str, address: str, method: str, why: str, count: bool = True) -> None:
        verdict = self.throttle.failure(user, address, self.clock()) if count else None
        self.auth_log.record("auth_failed", {"method": method, "why": why,
                                             "failures": verdict.failures if verdict else None},
                             user=user, source=address)
        event("authentication failed", user=user, source=address, method=method, why=why)
        for key in verdict.locked if verdict else ():
            self.auth_log.record("lockout", {"key": key, "failures": verdict.failures[key],
                                             "seconds": self.cfg.throttle.lockout}, user=user, source=address)
            event("locked out", key=key, user=user, source=address)

    def connection_failed(self, user: str | None, address: str, offered: list[str]) -> None:
        """A connection that closed without authenticating: one audit event for it."""
        self.auth_log.record("auth_failed", {"method": "publickey" if offered else "none",
                                             "why": "no accepted key" if offered else "did not authenticate",
                                             "offered_keys": offered[:10]}, user=user, source=address)

    def step_up(self, user: str, code: str, address: str) -> bool:
        """Check a one-time code sent with a request (MFA step-up)."""
        wait = self.throttle.blocked_for(user, address, self.clock())
        if wait > 0:
            self._auth_failure(user, address, "otp-step-up", f"throttled for {wait:.0f}s more", count=False)
            return False
        if self.users.check_totp(user, code, self.clock()):
            return True
        self._auth_failure(user, address, "otp-step-up", "one-time code refused")
        return False

    # -- issuance (issue thread) -----------------------------------------

    def still_allowed(self, tx, identity: Identity) -> None:
        """Authority's gate, inside the issuing transaction: the user is still enabled, and
        the key they logged in with is still enrolled and not revoked (a disable, a
        key-remove or a revoke that commits first stops even an open connection)."""
        row = tx.conn.execute("SELECT disabled FROM users WHERE name = ?", (identity.user,)).fetchone()
        if row is None or row[0]:
            raise AuthenticationFailed(f"user {identity.user} is disabled")
        if identity.login_key is not None and (
                tx.conn.execute("SELECT 1 FROM user_keys WHERE fingerprint = ? AND username = ?",
                                (identity.login_key, identity.user)).fetchone() is None
                or is_revoked(tx.conn, "key", identity.login_key)):
            raise AuthenticationFailed(f"the key you logged in with ({identity.login_key}) is no longer "
                                       "enrolled, or was revoked")

    def issue(self, identity: Identity, request: SignRequest):
        # A role with approval is signed only through an approved request, used up in the
        # issuing transaction itself (Authority.issue calls the hook only for such roles).
        policy = self.authority.policy
        request = self.approvals.prepare(identity.user, request, policy)
        consume = self.approvals.consumer(identity.user, request.request_id, policy)
        return self.authority.issue(identity, request, consume=consume)

    # -- access requests (issue thread) ---------------------------------

    def _enabled(self, identity: Identity) -> None:
        user = self.issue_users.get(identity.user)
        if user is None or user.disabled:
            raise AuthenticationFailed(f"user {identity.user} is disabled")

    def request_access(self, identity: Identity, cmd: Command) -> AccessRequest:
        self._enabled(identity)
        return self.approvals.create(identity, role=cmd.role, ttl=cmd.ttl, reason=cmd.reason,
                                     policy=self.authority.policy)

    def list_requests(self, identity: Identity) -> list[AccessRequest]:
        return self.approvals.visible_to(identity, self.authority.policy)

    def decide_request(self, identity: Identity, cmd: Command) -> AccessRequest:
        self._enabled(identity)
        policy = self.authority.policy
        if cmd.name == "approve":
            return self.approvals.approve(cmd.request_id, identity, policy, cmd.comment)
        if cmd.name == "deny":
            return self.approvals.deny(cmd.request_id, identity, policy, cmd.comment)
        return self.approvals.cancel(cmd.request_id, identity, policy)

    def refuse(self, identity: Identity, request: SignRequest, error: CAError) -> None:
        self.authority.refuse(identity, request, error)

    def krl(self) -> bytes:
        """The current KRL, built from the database (its version moves only when its content does)."""
        return build_current_krl(self.authority.audit, Keyring.load(self.cfg.state_dir)).data

    def reload_policy(self) -> str:
        """Read the policy file again; swap it in only if it is valid. Audited either way."""
        a = self.authority
        try:
            new = load_policy(self.cfg.policy_path, principal_pattern=self.cfg.principal_pattern)
        except CAError as e:
            a.audit.record("policy_reload_failed", {"error": e.message, "kept_sha256": a.policy.sha256})
            raise
        old = a.policy.sha256
        a.policy = new
        a.audit.record("policy_reloaded", {"old_sha256": old, "new_sha256": new.sha256})
        return new.sha256

    def close(self) -> None:
        self.issue_pool.shutdown(wait=True)
        self.auth_pool.shutdown(wait=True)
        self.auth_log.close()
        self.authority.close()


class _Connection(asyncssh.SSHServer):
    """Per-connection state; asyncssh makes one per client."""

    def __init__(self, service: Service):
        self.service = service
        self.conn: asyncssh.SSHServerConnection | None = None
        self.address = "?"
        self.authenticated = False
        self.methods: tuple[str, ...] = ()
        self.user: str | None = None
        self.offered: list[str] = []
        self.login_key: str | None = None
        self._key_answers: dict[tuple[str, str], bool] = {}
        self.attempts = 0
        self.counted = False
        self._password: str | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        peer = conn.get_extra_info("peername")
        self.address = peer[0] if peer else "?"
        svc = self.service
        if svc.unauthenticated >= svc.cfg.max_unauthenticated:
            event("refused: too many unauthenticated connections", source=self.address)
            conn.close()
            self.counted = False
            return
        svc.unauthenticated += 1
        self.counted = True

    def connection_lost(self, exc: Exception | None) -> None:
        if self.counted and not self.authenticated:
            self.service.unauthenticated -= 1
            if self.user is not None:
                self.service.spawn(self.service.backend.on_auth(
                    self.service.backend.connection_failed, self.user, self.address, self.offered))

    def begin_auth(self, username: str) -> bool:
        self.user = username
        return True  # every name must authenticate, known or not (security.md rule 14)

    def public_key_auth_supported(self) -> bool:
        return True

    async def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        fp = fingerprint(key.public_data)
        if fp not in self.offered:
            self.offered.append(fp)
            self._attempt()
        # asyncssh asks twice per key (the query, then the signed request): look it up once.
        cached = self._key_answers.get((username, fp))
        if cached is not None:
            return cached
        ok = await self.service.backend.on_auth(self.service.backend.key_ok, username, key.public_data, self.address)
        self._key_answers[(username, fp)] = ok
        if ok:
            self.methods = ("publickey",)
            self.login_key = fp
        return ok

    def kbdint_auth_supported(self) -> bool:
        return True

    def get_kbdint_challenge(self, username: str, lang: str, submethods: str):
        self._password = None
        return "iast-ssh", "", "", [("Password: ", False)]

    def _attempt(self) -> None:
        """Count an authentication attempt; past the cap, hang up on this connection."""
        self.attempts += 1
        if self.attempts > MAX_AUTH_ATTEMPTS and self.conn is not None:
            event("too many authentication attempts; disconnecting", source=self.address, user=self.user)
            self.conn.disconnect(asyncssh.DISC_NO_MORE_AUTH_METHODS_AVAILABLE, "too many authentication attempts")

    async def validate_kbdint_response(self, username: str, responses):
        if self._password is None:
            # Always ask for the code, so the answer never tells whether the password was right.
            self._password = responses[0] if len(responses) == 1 else ""
            return "", "", "", [("One-time code: ", True)]
        password, self._password = self._password, None
        code = responses[0] if len(responses) == 1 else ""
        self._attempt()
        b = self.service.backend
        ok = await b.on_auth(b.password_and_code_ok, username, password, code, self.address)
        if ok:
            self.methods = ("password", "totp")
        return ok

    def auth_completed(self) -> None:
        self.authenticated = True
        if self.counted:
            self.service.unauthenticated -= 1
        event("authenticated", user=self.user, source=self.address, methods=list(self.methods))


class Service:
    """The running CA service."""

    def __init__(self, cfg: Config, authority: Authority, clock: Callable[[], float] = time.time):
        self.cfg = cfg
        self.worker: int | None = None
        self.backend = Backend(cfg, authority, clock)
        self.unauthenticated = 0
        self.inflight = 0
        self.server: asyncssh.SSHAcceptor | None = None
        self._tasks: set[asyncio.Task] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = False

    def spawn(self, coro) -> None:
        task = asyncio.ensure_future(self._guarded(coro))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _guarded(coro) -> None:
        try:
            await coro
        except RuntimeError:  # the executors were shut down by a drain: nothing left to record into
            coro.close()
        except CAError as e:
            log.warning("background work failed", extra={"fields": {"error": e.message}})

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.sockets[0].getsockname()[1]

    async def start(self, host: str | None = None, port: int | None = None, *, worker: int | None = None) -> None:
        """Listen. A worker (one of ``serve --workers N``) shares the port with its
        siblings through SO_REUSEPORT; the kernel spreads connections among them."""
        host = host if host is not None else self.cfg.listen_host
        port = port if port is not None else self.cfg.listen_port
        self.worker = worker
        paths = StatePaths(self.cfg.state_dir)
        self.server = await asyncssh.listen(
            host, port,
            server_host_keys=[str(paths.host_key)],
            server_factory=lambda: _Connection(self),
            process_factory=self._handle,
            login_timeout=self.cfg.login_timeout,
            allow_pty=False, agent_forwarding=False, x11_forwarding=False, allow_scp=False,
            encoding="utf-8",
            line_editor=False,
            keepalive_interval=30,
            reuse_port=worker is not None,
        )
        event("listening" if worker is None else "worker listening", host=host, port=self.port,
              state_dir=str(self.cfg.state_dir), ca_fingerprint=self.backend.authority.ca_fingerprint)

    async def _handle(self, process: asyncssh.SSHServerProcess) -> None:
        if self._stopping:
            process.stderr.write("the CA is shutting down; try again\n")
            process.exit(1)
            return
        self.inflight += 1
        self._idle.clear()
        try:
            try:
                status = await self._run(process)
            except Exception:  # a bug must not take the service down; the client gets an error
                log.exception("request failed", extra={"fields": {"user": process.get_extra_info("username")}})
                process.stderr.write("internal error\n")
                status = 1
            # A request is done when the client has its answer, not when we wrote it:
            # a drain must not cut a connection with a certificate still in its buffers.
            process.exit(status)
            await asyncio.wait_for(process.channel.wait_closed(), 10)
        except (OSError, asyncssh.Error, asyncio.TimeoutError):
            pass
        finally:
            self.inflight -= 1
            if self.inflight == 0:
                self._idle.set()

    async def _read_stdin(self, process: asyncssh.SSHServerProcess) -> str:
        cap = self.cfg.max_request_bytes
        chunks, size = [], 0
        while True:
            chunk = await process.stdin.read(4096)
            if not chunk:
                return "".join(chunks)
            size += len(chunk)
            if size > cap:
                raise UsageError(f"request larger than {cap} bytes")
            chunks.append(chunk)

    async def _run(self, process: asyncssh.SSHServerProcess) -> int:
        conn_state: _Connection = process.get_extra_info("connection").get_owner()
        user = process.get_extra_info("username")
        identity = Identity(user=user, auth_methods=conn_state.methods, mfa="totp" in conn_state.methods,
                            source_address=conn_state.address,
                            login_key=conn_state.login_key if "publickey" in conn_state.methods else None)
        cmd: Command | None = None
        try:
            cmd = parse_command(process.command)
            if cmd.name == "help":
                process.stdout.write(HELP)
                return 0
            if cmd.name == "ca-keys":
                process.stdout.write("\n".join(Keyring.load(self.cfg.state_dir).trust_lines()) + "\n")
                return 0
            if cmd.name == "krl":
                data = await self.backend.on_issue(self.backend.krl)
                process.stdout.write(base64.encodebytes(data).decode("ascii"))
                return 0
            if cmd.name == "whoami":
                return self._reply(process, cmd, {
                    "user": user, "auth_methods": list(identity.auth_methods), "mfa": identity.mfa,
                    "source_address": identity.source_address,
                    "groups": list(self.backend.authority.policy.groups_of(user)),
                }, f"{user} from {identity.source_address}, authenticated by {'+'.join(identity.auth_methods)}")
            if cmd.name == "roles":
                verdicts = [v for v in self.backend.authority.policy.explain(user) if v.allowed]
                return self._reply(process, cmd, [v.as_json() for v in verdicts],
                                   "\n".join(_role_line(v) for v in verdicts) or "no roles")
            if cmd.name == "request":
                return await self._request(process, cmd, identity)
            if cmd.name == "requests":
                found = await self.backend.on_issue(self.backend.list_requests, identity)
                return self._reply(process, cmd, [r.as_json() for r in found],
                                   "\n".join(r.summary() for r in found) or "no requests")
            if cmd.name in ("approve", "deny", "cancel"):
                req = await self.backend.on_issue(self.backend.decide_request, identity, cmd)
                event(f"request {cmd.name}", user=user, request_id=req.id, status=req.status)
                return self._reply(process, cmd, req.as_json(), req.summary())
            return await self._sign(process, cmd, identity)
        except CAError as e:
            return self._error(process, cmd, e)

    async def _sign(self, process: asyncssh.SSHServerProcess, cmd: Command, identity: Identity) -> int:
        b = self.backend
        key_line = await self._read_stdin(process)
        request = SignRequest(public_key=key_line, role=cmd.role, ttl=cmd.ttl, reason=cmd.reason,
                              request_id=cmd.request_id)
        if cmd.otp is not None:
            if not await b.on_auth(b.step_up, identity.user, cmd.otp, identity.source_address):
                err = AuthenticationFailed("one-time code refused")
                await b.on_issue(b.refuse, identity, request, err)
                raise err
            identity = replace(identity, auth_methods=identity.auth_methods + ("otp-step-up",), mfa=True)
        issued = await b.on_issue(b.issue, identity, request)
        event("issued", user=identity.user, role=issued.decision.role, serial=issued.serial, key_id=issued.key_id,
              key_fingerprint=issued.key_fingerprint, source=identity.source_address)
        if cmd.json:
            process.stdout.write(json.dumps(issued.as_json()) + "\n")
        else:
            process.stdout.write(issued.certificate + "\n")
        return 0

    async def _request(self, process: asyncssh.SSHServerProcess, cmd: Command, identity: Identity) -> int:
        """``request``: a pending access request; its id is the first word of the answer."""
        b = self.backend
        req = await b.on_issue(b.request_access, identity, cmd)
        event("access requested", user=identity.user, role=req.role, request_id=req.id)
        hook = getattr(self.cfg, "on_request", None)
        if hook:
            # Off the request path: the reply does not wait for it, and its failure is only logged.
            values = {"id": req.id, "user": req.user, "role": req.role}
            self.spawn(asyncio.get_running_loop().run_in_executor(None, functools.partial(run_hook, hook, values)))
        role = b.authority.policy.roles.get(req.role)
        who = f" from {', '.join(role.approval.approvers)}" if role is not None and role.approval else ""
        within = f" within {format_duration(role.approval.expires)}" if role is not None and role.approval else ""
        text = (f"{req.id}\npending: needs {req.required or '?'} approval(s){who} by {req.as_json()['expires']}; "
                f"once approved, use it{within}: iast-ssh login --request {req.id}")
        return self._reply(process, cmd, req.as_json(), text)

    def _reply(self, process, cmd: Command, obj: Any, text: str) -> int:
        process.stdout.write((json.dumps(obj) if cmd.json else text) + "\n")
        return 0

    def _error(self, process, cmd: Command | None, e: CAError) -> int:
        if cmd is not None and cmd.json:
            process.stdout.write(json.dumps({"error": e.code, "message": e.message}) + "\n")
        process.stderr.write(f"error: {e.message}\n")
        event("request refused", user=process.get_extra_info("username"), code=e.code, message=e.message)
        return e.exit_status if e.exit_status in (EXIT_USAGE, 3, EXIT_AUTH) else 1

    async def reload(self) -> None:
        try:
            sha = await self.backend.on_issue(self.backend.reload_policy)
            event("policy reloaded", sha256=sha)
        except CAError as e:
            event("policy reload refused; keeping the old policy", error=e.message)

    async def drain(self) -> None:
        """Stop accepting, let in-flight requests finish (up to drain_timeout), then close."""
        self._stopping = True
        if self.worker is None:
            sd_notify("STOPPING=1")
        if self.server is not None:
            self.server.close()
        try:
            await asyncio.wait_for(self._idle.wait(), self.cfg.drain_timeout)
        except asyncio.TimeoutError:
            event("drain timed out", inflight=self.inflight)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self.backend.close()
        event("stopped")


def _role_line(v) -> str:
    from ca.durations import format_duration

    extra = [f"force-command {v.force_command}"] if v.force_command else []
    if v.require_reason:
        extra.append("reason required")
    if v.require_mfa:
        extra.append("one-time code required")
    if v.approval:
        extra.append(f"needs {v.approval.required} approval(s): iast-ssh request --role {v.role}")
    return (f"{v.role}: principals {', '.join(v.principals or ())}; ttl {format_duration(v.ttl or 0)} "
            f"(max {format_duration(v.max_ttl or 0)})" + "".join(f"; {x}" for x in extra))


async def serve(cfg: Config, authority: Authority, *, host: str | None = None, port: int | None = None,
                ready: Callable[[Service], None] | None = None, worker: int | None = None) -> None:
    """Run the service until SIGTERM or SIGINT; SIGHUP reloads the policy.

    As a worker of :mod:`ca.service.workers` it shares the port, and leaves
    talking to systemd to the parent.
    """
    service = Service(cfg, authority)
    await service.start(host, port, worker=worker)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: service.spawn(service.reload()))
    if worker is None:
        sd_notify("READY=1")
    if ready:
        ready(service)
    await stop.wait()
    await service.drain()
