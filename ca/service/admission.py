"""Who may start authenticating now, who waits, and who is told to come back later (docs/security.md rule 63).

A new connection takes one of the worker's ``server.max_unauthenticated``
slots (at most ``server.max_unauthenticated_per_address`` of them per
address) and runs its handshake. When no slot is free it *waits*: asyncssh
has sent the server's version line, and the connection's input is paused,
so it costs a socket and its buffers but no CPU (no key exchange has begun).
Each slot given back (a connection authenticated, or closed) admits the
oldest waiting connection whose address has room. A waiting connection's
login timeout runs from the moment it arrived, so a burst is answered
within ``server.login_timeout`` or cut by asyncssh's clean
"Login timeout expired".

The queue is bounded: at most ``server.max_queued`` connections wait at
once *over all the workers of* ``serve --workers N`` (a counter in shared
memory the parent hands each worker), and at most
``server.max_queued_per_address`` from one address within one worker
(the kernel's SO_REUSEPORT hash spreads an address's connections over the
workers). Past either, the connection gets the SSH disconnect
``too many connections waiting to log in; try again later`` right after the
version line, so a client shows a reason, not a broken banner.
"""

from __future__ import annotations

import asyncio
import os
import struct
from collections import deque
from typing import TYPE_CHECKING, Protocol

import asyncssh

from ca.service import metrics
from ca.service.observe import event

if TYPE_CHECKING:
    from ca.config import Config
    from ca.service.connection import Connection

BUSY = "too many connections waiting to log in; try again later"
# Seconds a refused connection stays open for its client to read why (then it is cut).
REFUSED_GRACE = 5


class Counter(Protocol):
    """A shared integer (``multiprocessing.Value('i')``, or :class:`LocalCounter`)."""

    value: int

    def get_lock(self): ...  # noqa: ANN201 - a context manager


class _NoLock:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


class LocalCounter:
    """The queue counter of a single-process service (nobody else shares it)."""

    def __init__(self) -> None:
        self.value = 0

    def get_lock(self) -> _NoLock:
        return _NoLock()


class Admission:
    """One worker's pre-authentication slots and its part of the shared queue."""

    def __init__(self, cfg: Config, queued_total: Counter | None = None):
        self.slots = cfg.max_unauthenticated
        self.slots_per_address = cfg.max_unauthenticated_per_address
        self.depth = cfg.max_queued
        self.depth_per_address = cfg.max_queued_per_address
        self.queued_total = queued_total if queued_total is not None else LocalCounter()
        self.unauthenticated = 0
        self.by_address: dict[str, int] = {}
        self.waiting: deque[Connection] = deque()
        self.waiting_by_address: dict[str, int] = {}

    # -- a new connection ------------------------------------------------------------------

    def arrive(self, c: Connection) -> str:
        """Place a new connection: ``"admitted"`` (its handshake runs), ``"queued"`` (paused
        until a slot is free) or ``"refused"`` (disconnected with :data:`BUSY`)."""
        if self._has_room(c.address):
            self._take(c)
            return "admitted"
        if self.waiting_by_address.get(c.address, 0) < self.depth_per_address and self._enqueue_shared():
            self.waiting.append(c)
            _bump(self.waiting_by_address, c.address, 1)
            c.queued = True
            _pause(c.conn)
            event("queued: waiting for a slot to log in", source=c.address, queued=len(self.waiting))
            return "queued"
        event("refused: the queue of connections waiting to log in is full", source=c.address,
              queued=self.queued_total.value)
        _pause(c.conn)
        # After asyncssh's version line (sent right after connection_made returns): a disconnect
        # before it reads as a garbled banner to the client.
        loop = asyncio.get_running_loop()
        loop.call_soon(_tell_busy, c.conn)
        # Closing at once would make the client's next write (its KEXINIT) fail before it read
        # the reason; it hangs up itself on reading it, or is cut after this grace.
        loop.call_later(REFUSED_GRACE, _abort, c.conn)
        return "refused"

    # -- slots given back ------------------------------------------------------------------

    def release(self, c: Connection) -> None:
        """``c`` no longer waits to authenticate (it did, or it closed): free its slot or its place."""
        if c.queued:
            self._dequeue(c)
            try:
                self.waiting.remove(c)
            except ValueError:
                pass
            return
        if not c.counted:
            return
        c.counted = False
        self.unauthenticated -= 1
        metrics.connection("unauthenticated", -1)
        _bump(self.by_address, c.address, -1)
        self._admit_waiting()

    def _admit_waiting(self) -> None:
        """Give free slots to the oldest waiting connections whose address has room."""
        if not self.waiting or self.unauthenticated >= self.slots:
            return
        for c in list(self.waiting):
            if self.unauthenticated >= self.slots:
                break
            if self.by_address.get(c.address, 0) >= self.slots_per_address:
                continue
            self.waiting.remove(c)
            self._dequeue(c)
            if c.conn is None or c.closed:
                continue
            self._take(c)
            _resume(c.conn)

    # -- bookkeeping -----------------------------------------------------------------------

    def _has_room(self, address: str) -> bool:
        return (self.unauthenticated < self.slots and self.by_address.get(address, 0) < self.slots_per_address
                and address not in self.waiting_by_address)  # never overtaking its own address's queue

    def _take(self, c: Connection) -> None:
        self.unauthenticated += 1
        metrics.connection("unauthenticated", 1)
        _bump(self.by_address, c.address, 1)
        c.counted = True

    def _enqueue_shared(self) -> bool:
        with self.queued_total.get_lock():
            if self.queued_total.value >= self.depth:
                return False
            self.queued_total.value += 1
        metrics.connection("queued", 1)
        return True

    def _dequeue(self, c: Connection) -> None:
        c.queued = False
        _bump(self.waiting_by_address, c.address, -1)
        with self.queued_total.get_lock():
            self.queued_total.value -= 1
        metrics.connection("queued", -1)


def _bump(counts: dict[str, int], key: str, by: int) -> None:
    left = counts.get(key, 0) + by
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)


# asyncssh offers no public pause of a connection's input: these two reach its transport
# (an asyncio.Transport, whose pause_reading/resume_reading are public).

def _pause(conn: asyncssh.SSHServerConnection) -> None:
    conn._transport.pause_reading()  # noqa: SLF001


def _resume(conn: asyncssh.SSHServerConnection) -> None:
    transport = conn._transport  # noqa: SLF001
    if transport is not None and not transport.is_closing():
        transport.resume_reading()


def _tell_busy(conn: asyncssh.SSHServerConnection) -> None:
    """SSH_MSG_DISCONNECT (RFC 4253 11.1), in the clear, as before any key exchange: the
    connection's input stays paused, so asyncssh never starts one."""
    transport = conn._transport  # noqa: SLF001
    if transport is None or transport.is_closing():
        return
    reason = BUSY.encode()
    payload = bytes([1]) + struct.pack(">I", asyncssh.DISC_TOO_MANY_CONNECTIONS) + \
        struct.pack(">I", len(reason)) + reason + struct.pack(">I", 0)
    padding = 8 - (5 + len(payload)) % 8
    padding += 8 if padding < 4 else 0
    transport.write(struct.pack(">IB", 1 + len(payload) + padding, padding) + payload + os.urandom(padding))


def _abort(conn: asyncssh.SSHServerConnection) -> None:
    transport = conn._transport  # noqa: SLF001
    if transport is not None and not transport.is_closing():
        transport.abort()
