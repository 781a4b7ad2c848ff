"""The service's two single-thread executors: one for issuance, one for authentication.

Blocking work (SQLite, signing, argon2) runs off the event loop, each kind
on its own thread with its own database connection (see :class:`ca.app.CA`:
``audit`` for the issue thread, ``auth_audit`` for the auth thread), so a
slow password hash never holds up a signature.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any


class Executors:
    def __init__(self) -> None:
        self.issue_pool = ThreadPoolExecutor(1, thread_name_prefix="iast-issue")
        self.auth_pool = ThreadPoolExecutor(1, thread_name_prefix="iast-auth")

    async def on_issue(self, fn: Callable, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.issue_pool, fn, *args)

    async def on_auth(self, fn: Callable, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.auth_pool, fn, *args)

    def close(self) -> None:
        self.issue_pool.shutdown(wait=True)
        self.auth_pool.shutdown(wait=True)
