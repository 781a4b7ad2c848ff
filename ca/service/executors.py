"""The service's two single-thread executors: one for issuance, one for authentication.

Blocking work (SQLite, signing, argon2) runs off the event loop, each kind
on its own thread with its own database connection (see :class:`ca.app.CA`:
``audit`` for the issue thread, ``auth_audit`` for the auth thread), so a
slow password hash never holds up a signature.

Issuances take :meth:`Executors.on_issue_committed`: the calls waiting for
the issue thread when it gets to them run as one group of the store
(:meth:`ca.store.base.Store.group`, docs/security.md rule 64), each in its
own savepoint, and share one durable commit; each caller gets its result
(a certificate, or the error its refusal was audited with) only after that
commit returned. Nobody waits for a group to fill: the first call of a
quiet service runs at once, alone, and the calls that arrive while it
commits form the next group.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ca.store.base import Store

# Tests only (tests/test_service.py, the group-commit crash test): hold the first group's commit
# this many seconds, then SIGKILL the service, as a power cut between signing and commit would.
KILL_BEFORE_COMMIT = "IAST_CA_TEST_KILL_BEFORE_COMMIT"

# The most issuances one commit carries (a bound on how long the first of them waits).
MAX_GROUP = 64


class Executors:
    def __init__(self) -> None:
        self.issue_pool = ThreadPoolExecutor(1, thread_name_prefix="iast-issue")
        self.auth_pool = ThreadPoolExecutor(1, thread_name_prefix="iast-auth")
        self._lock = threading.Lock()
        self._pending: list[tuple[Store, Callable[[], Any], asyncio.Future]] = []
        self._scheduled = False
        self.groups = 0  # commits made by groups, and the calls they carried (figures for bench/)
        self.grouped = 0
        self._kill_before_commit = os.environ.get(KILL_BEFORE_COMMIT)

    async def on_issue(self, fn: Callable, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.issue_pool, fn, *args)

    async def on_auth(self, fn: Callable, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.auth_pool, fn, *args)

    async def on_issue_committed(self, store: Store, fn: Callable, *args: Any, **kw: Any) -> Any:
        """``fn(*args, **kw)`` on the issue thread, inside a group of ``store`` with the other calls
        waiting; its result (or its exception) once the group's commit has returned. If the
        commit fails, every call of the group gets that error instead of its result."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        with self._lock:
            self._pending.append((store, lambda: fn(*args, **kw), fut))
            schedule = not self._scheduled
            self._scheduled = True
        if schedule:
            try:
                # submit(), not run_in_executor(): nobody awaits the drain itself, so no asyncio
                # future is chained to it (that was one more wake-up of the loop per group).
                self.issue_pool.submit(self._drain, loop)
            except RuntimeError:  # shut down by a drain: nothing will run what is pending
                self._cancel_pending()
                raise
        return await fut

    def _cancel_pending(self) -> list:
        with self._lock:
            pending, self._pending, self._scheduled = self._pending, [], False
        for _, _, f in pending:
            f.get_loop().call_soon_threadsafe(f.cancel)
        return pending

    def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        """On the issue thread: run what is pending, one group (and one commit) per store and MAX_GROUP."""
        with self._lock:
            batch, self._pending = self._pending[:MAX_GROUP], self._pending[MAX_GROUP:]
            self._scheduled = bool(self._pending)
        if self._scheduled:
            # The rest goes behind whatever else waits for the issue thread (fair to on_issue),
            # queued from here: no hop through the event loop.
            try:
                self.issue_pool.submit(self._drain, loop)
            except RuntimeError:  # shutting down: what is pending will not run
                self._cancel_pending()
        while batch:
            store = batch[0][0]
            group = [b for b in batch if b[0] is store]
            batch = [b for b in batch if b[0] is not store]
            self._commit(store, group, loop)

    def _commit(self, store: Store, group: list, loop: asyncio.AbstractEventLoop) -> None:
        outcomes: list[tuple[bool, Any]] = []
        try:
            with store.group():
                for _, call, _ in group:
                    try:
                        outcomes.append((True, call()))
                    except Exception as e:  # its refusal is audited inside the group; raised after commit
                        outcomes.append((False, e))
                if self._kill_before_commit:
                    time.sleep(float(self._kill_before_commit))
                    os.kill(os.getpid(), signal.SIGKILL)
        except Exception as e:  # the commit failed: nothing of the group exists, nobody gets a result
            outcomes = [(False, e)] * len(group)
        self.groups += 1
        self.grouped += len(group)
        # One wake-up of the event loop for the whole group, after its commit.
        loop.call_soon_threadsafe(_settle_all, [(fut, ok, value) for (ok, value), (_, _, fut) in zip(outcomes, group)])

    def close(self) -> None:
        self.issue_pool.shutdown(wait=True)
        self.auth_pool.shutdown(wait=True)


def _settle_all(results: list[tuple[asyncio.Future, bool, Any]]) -> None:
    for fut, ok, value in results:
        if fut.cancelled():
            continue
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)
