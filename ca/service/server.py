"""The CA service: listen, run one command per SSH channel, drain on SIGTERM, reload on SIGHUP.

Who may connect and as whom is :mod:`ca.service.connection` (the asyncssh
adapter, over :mod:`ca.auth`); what each command does is the table in
:mod:`ca.service.handlers`; the blocking work runs on the two threads of
:mod:`ca.service.executors`; the CA itself (store, keyring, authority,
authenticators) comes from the composition root, :func:`ca.app.open_ca`.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

import asyncssh

from ca.app import CA
from ca.auth.base import RequestAuthenticator
from ca.config import DEFAULT_ENCRYPTION_ALGS, DEFAULT_KEX_ALGS, Config
from ca.errors import EXIT_ERROR, AuthenticationFailed, CAError, ConfigError
from ca.models import Identity
from ca.rules import check_certificate_login, check_enrolment_login
from ca.service.admission import Admission, Counter
from ca.service.connection import MAX_AUTH_ATTEMPTS, Connection
from ca.service.executors import Executors
from ca.service.handlers import HANDLERS, Call, refused
from ca.service.observe import event, log, sd_notify, setup_logging, warning
from ca.service.protocol import Command, parse_command

__all__ = ["MAX_AUTH_ATTEMPTS", "Service", "serve", "setup_logging", "event", "sd_notify"]


class Service:
    """The running CA service."""

    def __init__(self, ca: CA, *, queued_total: Counter | None = None):
        self.ca = ca
        self.cfg = ca.cfg
        self.worker: int | None = None
        self.executors = Executors()
        # Open everything now, so that a bad key, policy or database fails at start, not at a login.
        for part in ("authority", "users", "guard", "authenticators"):
            getattr(ca, part)
        # Pre-authentication slots and the queue behind them; ``queued_total`` is shared by the
        # workers of ``serve --workers N`` (docs/security.md rule 63).
        self.admission = Admission(self.cfg, queued_total)
        self.channels_by_user: dict[str, int] = {}
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
        self.server = await asyncssh.listen(
            host, port,
            # Read once, as an object: given a path, asyncssh reads and parses the file again at
            # every authentication (bench/README.md, login-fresh: about 1 ms per connection).
            server_host_keys=[asyncssh.read_private_key(self.ca.paths.host_key)],
            server_factory=lambda: Connection(self),
            process_factory=self._handle,
            login_timeout=self.cfg.login_timeout,
            allow_pty=False, agent_forwarding=False, x11_forwarding=False, allow_scp=False,
            encoding="utf-8",
            line_editor=False,
            keepalive_interval=30,
            reuse_port=worker is not None,
            **algorithms(self.cfg),
        )
        event("listening" if worker is None else "worker listening", host=host, port=self.port,
              state_dir=str(self.cfg.state_dir), ca_fingerprint=self.ca.authority.ca_fingerprint)

    async def _handle(self, process: asyncssh.SSHServerProcess) -> None:
        if self._stopping:
            process.stderr.write("the CA is shutting down; try again\n")
            process.exit(EXIT_ERROR)
            return
        self.inflight += 1
        self._idle.clear()
        try:
            try:
                # One deadline for the whole request: reading stdin, deciding, replying
                # (docs/security.md, "Limits per connection and per address").
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for runs the request as a
                # task of its own (one more task and its wake-ups on every request).
                async with asyncio.timeout(self.cfg.request_timeout):
                    status = await self._run(process)
            except asyncio.TimeoutError:
                event("request timed out", user=process.get_extra_info("username"))
                process.stderr.write(f"error: request not finished within {self.cfg.request_timeout}s\n")
                status = EXIT_ERROR
            except Exception:  # a bug must not take the service down; the client gets an error
                log.exception("request failed", extra={"fields": {"user": process.get_extra_info("username")}})
                process.stderr.write("internal error\n")
                status = EXIT_ERROR
            # A request is done when the client has its answer, not when we wrote it:
            # a drain must not cut a connection with a certificate still in its buffers.
            process.exit(status)
            async with asyncio.timeout(10):
                await process.channel.wait_closed()
        except (OSError, asyncssh.Error, asyncio.TimeoutError):
            pass
        finally:
            owner = process.get_extra_info("connection").get_owner()
            if getattr(owner, "deferred", False) and owner.conn is not None:
                owner.conn.close()  # one request per token connection: hang up once it is answered
            self.inflight -= 1
            if self.inflight == 0:
                self._idle.set()

    async def _run(self, process: asyncssh.SSHServerProcess) -> int:
        connection: Connection = process.get_extra_info("connection").get_owner()
        identity = connection.identity
        if connection.deferred:
            return await self._run_deferred(process, connection)
        if identity is None:  # asyncssh runs no channel before authentication; never reached
            identity = Identity(user=process.get_extra_info("username"), auth_methods=(),
                                source_address=connection.address)
        cmd: Command | None = None
        try:
            cmd = parse_command(process.command)
            check_certificate_login(cmd.name, identity.auth_methods)
            check_enrolment_login(cmd.name, identity.auth_methods)
            return await HANDLERS[cmd.name](Call(self, process, cmd, identity))
        except CAError as e:
            return refused(process, cmd, e)

    async def _run_deferred(self, process: asyncssh.SSHServerProcess, connection: Connection) -> int:
        """A connection accepted for a workload token (ca.service.connection): one ``sign --token -``,
        authenticated by its token, within the login timeout; anything else is refused, audited
        and counted against the address (docs/security.md rule 14)."""
        first = not connection.used
        connection.used = True
        # No identity yet: the token, checked by the handler, makes the one the request gets.
        identity = Identity(user=connection.user or "?", auth_methods=(), source_address=connection.address)
        cmd: Command | None = None
        try:
            cmd = parse_command(process.command)
            if not first or cmd.name != "sign" or not cmd.token:
                authn = next(a for a in self.ca.authenticators if isinstance(a, RequestAuthenticator))
                why = ("workload: a second request on one token connection" if not first else
                       f"workload: {cmd.name} without a token (the workload user runs only sign --token -)")
                await self.executors.on_auth(self.ca.guard.failure, authn.guarding, connection.user or "?",
                                             connection.address, why, True, False)
                raise AuthenticationFailed(f"as {connection.user} the CA runs one 'sign --token -' only "
                                           "(the token is the first line of stdin)")
            return await asyncio.wait_for(HANDLERS[cmd.name](Call(self, process, cmd, identity)),
                                          self.cfg.login_timeout)
        except asyncio.TimeoutError:
            return refused(process, cmd, CAError("the token request did not finish within the login timeout"))
        except CAError as e:
            return refused(process, cmd, e)

    async def reload(self) -> None:
        """SIGHUP: the keyring (trust lines, KRL) and the policy, read again."""
        try:
            active = await self.executors.on_issue(self.ca.reload_keyring)
            if active:
                event("signing with a new CA key", fingerprint=active)
        except CAError as e:
            warning("keyring reload refused; keeping the old keyring", error=e.message)
        try:
            sha = await self.executors.on_issue(self.ca.reload_policy)
            event("policy reloaded", sha256=sha)
        except CAError as e:
            warning("policy reload refused; keeping the old policy", error=e.message)

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
        self.executors.close()
        self.ca.close()
        event("stopped")


def algorithms(cfg: Config) -> dict[str, list[str]]:
    """asyncssh's ``kex_algs`` and ``encryption_algs`` from ``server.kex_algs`` / ``server.encryption_algs``
    (README, "Algorithms the service prefers"). The defaults are filtered to what this asyncssh
    supports; a name set in the config that it does not know fails the start, naming it."""
    from asyncssh.encryption import get_encryption_algs
    from asyncssh.kex import get_kex_algs

    out: dict[str, list[str]] = {}
    for key, configured, default, known in (
            ("kex_algs", cfg.kex_algs, DEFAULT_KEX_ALGS, get_kex_algs()),
            ("encryption_algs", cfg.encryption_algs, DEFAULT_ENCRYPTION_ALGS, get_encryption_algs())):
        names = {a.decode() for a in known}
        if configured == default:
            configured = tuple(a for a in default if a in names)
        unknown = [a for a in configured if a not in names]
        if unknown:
            raise ConfigError(f"server.{key}: {', '.join(unknown)} not supported by this asyncssh "
                              f"(known: {', '.join(sorted(names))})")
        if configured:
            out[key] = list(configured)
    return out


async def serve(ca: CA, *, host: str | None = None, port: int | None = None,
                ready: Callable[[Service], None] | None = None, worker: int | None = None,
                queued_total: Counter | None = None) -> None:
    """Run the service until SIGTERM or SIGINT; SIGHUP reloads the keyring and the policy.

    As a worker of :mod:`ca.service.workers` it shares the port, and leaves
    talking to systemd to the parent.
    """
    service = Service(ca, queued_total=queued_total)
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
