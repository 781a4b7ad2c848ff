"""The asyncssh adapter: one :class:`Connection` per client, from connect to an :class:`~ca.models.Identity`.

Authentication is SSH's own, delegated to the CA's authenticators
(:mod:`ca.auth`): an enrolled public key, or keyboard-interactive password
then one-time code. Every connection must authenticate (``begin_auth``
returns True for every name, known or not, and unknown names take the same
path). Every check runs on the auth thread through the guard
(:class:`ca.auth.guard.Guard`), which throttles, locks out and audits.

The one exception is the reserved name :data:`ca.auth.workload.WORKLOAD_USER`
when ``[workload.*]`` is configured: SSH ``none`` accepts it (a workload's
token does not fit into SSH authentication), and the connection is
*deferred* (:attr:`Connection.deferred`): it has no identity, may run one
``sign --token -`` whose token authenticates it (:mod:`ca.service.server`
refuses anything else), must do so within the login timeout, and keeps
its place among the unauthenticated connections until it closes
(docs/security.md rules 14 and 19).

Limits (docs/security.md, "Limits per connection and per address"): the
pre-authentication slots and the queue behind them are
:mod:`ca.service.admission`'s; environment requests are refused and never kept
(sshd's default ``AcceptEnv`` none); a connection has at most
``server.max_channels_per_connection`` channels open and a user at most
``server.max_channels_per_user`` over all their connections.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING

import asyncssh

from ca.auth.base import Conversation, InteractiveAuthenticator, KeyAuthenticator, RequestAuthenticator
from ca.auth.workload import WORKLOAD_USER
from ca.models import Identity
from ca.service import metrics
from ca.service.observe import event
from ca.sshcert.certificates import fingerprint

if TYPE_CHECKING:
    from ca.service.server import Service

# Authentication attempts (passwords tried, distinct keys offered) one
# connection may make before it is dropped. OpenSSH's MaxAuthTries is 6;
# keys count too, as an agent may offer several.
MAX_AUTH_ATTEMPTS = 10


class LimitedChannel(asyncssh.SSHServerChannel):
    """A session channel that refuses environment requests (nothing is kept) and gives its
    slot back to its connection and its user when it is cleaned up."""

    release: Callable[[], None] | None = None

    def _process_env_request(self, packet) -> bool:  # noqa: ANN001 - asyncssh's SSHPacket
        packet.get_string()
        packet.get_string()
        packet.check_end()
        return False

    def _cleanup(self, exc: Exception | None = None) -> None:
        release, self.release = self.release, None
        if release is not None:
            release()
        super()._cleanup(exc)


class Connection(asyncssh.SSHServer):
    """Per-connection state; asyncssh makes one per client."""

    def __init__(self, service: Service):
        self.service = service
        self.conn: asyncssh.SSHServerConnection | None = None
        self.address = "?"
        self.authenticated = False
        self.identity: Identity | None = None  # set by the check that succeeded last
        self.user: str | None = None
        self.offered: list[str] = []
        self._key_answers: dict[tuple[str, str], Identity | None] = {}
        self.attempts = 0
        self.counted = False  # holds a pre-authentication slot (ca.service.admission)
        self.queued = False  # waits for one
        self.closed = False
        self.channels = 0
        self._conversation: tuple[InteractiveAuthenticator, Conversation] | None = None
        authenticators = service.ca.authenticators
        self._keys = [a for a in authenticators if isinstance(a, KeyAuthenticator)]
        self._interactive = [a for a in authenticators if isinstance(a, InteractiveAuthenticator)]
        self._workload = any(isinstance(a, RequestAuthenticator) for a in authenticators)
        self.deferred = False  # accepted by "none" for one token-authenticated request (see the module doc)
        self.used = False  # a deferred connection's one request has started
        self._expiry = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        peer = conn.get_extra_info("peername")
        self.address = peer[0] if peer else "?"
        if self.service.admission.arrive(self) == "refused":
            return
        # Every session channel of this connection is a LimitedChannel, counted (see create_channel).
        original = conn.create_server_channel
        conn.create_server_channel = functools.partial(self._create_channel, original)  # type: ignore[method-assign]

    def _create_channel(self, original: Callable[..., asyncssh.SSHServerChannel], *args, **kw):
        """A session channel, unless this connection or its user already has too many open."""
        svc, user = self.service, self.user or "?"
        per_user = svc.channels_by_user
        if self.channels >= svc.cfg.max_channels_per_connection or \
                per_user.get(user, 0) >= svc.cfg.max_channels_per_user:
            event("refused: too many channels", user=user, source=self.address)
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_RESOURCE_SHORTAGE, "too many channels open")
        chan = original(*args, **kw)
        chan.__class__ = LimitedChannel  # same object, two methods changed (see LimitedChannel)
        self.channels += 1
        per_user[user] = per_user.get(user, 0) + 1

        def release() -> None:
            self.channels -= 1
            left = per_user.get(user, 1) - 1
            if left > 0:
                per_user[user] = left
            else:
                per_user.pop(user, None)

        chan.release = release
        return chan

    def connection_lost(self, exc: Exception | None) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
        self.closed = True
        if self.authenticated and not self.deferred:
            metrics.connection("authenticated", -1)
        if self.counted or self.queued:
            self.service.admission.release(self)
            if self.user is not None and not self.used:
                svc = self.service
                svc.spawn(svc.executors.on_auth(svc.ca.guard.connection_failed, self.user, self.address,
                                                self.offered))

    def begin_auth(self, username: str) -> bool:
        self.user = username
        if username == WORKLOAD_USER and self._workload:
            # Accepted by "none", deferred: only a token-authenticated sign --token - may run.
            self.deferred = True
            return False
        return True  # every other name must authenticate, known or not (docs/security.md rule 14)

    def _attempt(self) -> None:
        """Count an authentication attempt; past the cap, hang up on this connection."""
        self.attempts += 1
        if self.attempts > MAX_AUTH_ATTEMPTS and self.conn is not None:
            event("too many authentication attempts; disconnecting", source=self.address, user=self.user)
            self.conn.disconnect(asyncssh.DISC_NO_MORE_AUTH_METHODS_AVAILABLE, "too many authentication attempts")

    async def _checked(self, authn, username: str, verify) -> Identity | None:
        """Run one authenticator's check on the auth thread, through the guard."""
        svc = self.service
        return await svc.executors.on_auth(svc.ca.guard.check, authn.guarding, username, self.address, verify)

    # -- publickey -----------------------------------------------------------------

    def public_key_auth_supported(self) -> bool:
        return bool(self._keys)

    async def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        fp = fingerprint(key.public_data)
        if fp not in self.offered:
            self.offered.append(fp)
            self._attempt()
        # asyncssh asks twice per key (the query, then the signed request): look it up once.
        if (username, fp) in self._key_answers:
            return self._key_answers[(username, fp)] is not None
        identity = None
        for authn in self._keys:
            check = functools.partial(authn.check_key, username, key.public_data, self.address)
            identity = await self._checked(authn, username, check)
            if identity is not None:
                break
        self._key_answers[(username, fp)] = identity
        if identity is not None:
            self.identity = identity
        return identity is not None

    # -- keyboard-interactive --------------------------------------------------------

    def kbdint_auth_supported(self) -> bool:
        return bool(self._interactive)

    def _choose(self, submethods: str, username: str) -> InteractiveAuthenticator:
        """Among the authenticators that answer for ``username`` (a host's join token for
        ``host:NAME``, the people's ones for everyone else), the one the client's submethods ask
        for (``sso:NAME``, ``sso``, ``password``), else the first: SSO when an identity provider
        is configured (see ca.app)."""
        pool = [a for a in self._interactive if a.accepts(username)] or self._interactive
        for wanted in (s.strip() for s in submethods.split(",")):
            for authn in pool:
                if wanted and wanted in authn.submethods:
                    return authn
        return pool[0]

    async def get_kbdint_challenge(self, username: str, lang: str, submethods: str):
        authn = self._choose(submethods, username)
        hints = [s.strip() for s in submethods.split(",") if s.strip()]
        conversation = authn.begin(username, self.address, hints)
        self._conversation = (authn, conversation)
        return (await conversation.start()).as_asyncssh()

    async def validate_kbdint_response(self, username: str, responses):
        if self._conversation is None:
            return False
        authn, conversation = self._conversation
        following = await conversation.answer(list(responses))
        if following is not None:
            return following.as_asyncssh()
        self._conversation = None
        self._attempt()
        identity = await self._checked(authn, username, conversation.verify)
        if identity is not None:
            self.identity = identity
        return identity is not None

    def auth_completed(self) -> None:
        self.authenticated = True
        if self.deferred:
            # Still unauthenticated in substance: counted until it closes, and given the login
            # timeout to start its one request.
            self._expiry = asyncio.get_running_loop().call_later(self.service.cfg.login_timeout, self._expire)
            event("workload connection accepted; waiting for sign --token -", user=self.user,
                  source=self.address)
            return
        self.service.admission.release(self)
        metrics.connection("authenticated", 1)
        methods = list(self.identity.auth_methods) if self.identity else []
        event("authenticated", user=self.user, source=self.address, methods=methods)

    def _expire(self) -> None:
        if not self.used and self.conn is not None:
            event("workload connection sent no request in time; closing", source=self.address)
            self.conn.close()
