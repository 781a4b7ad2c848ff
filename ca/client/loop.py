"""Running the client's async parts (asyncssh) from its synchronous API, with Ctrl-C intact."""

from __future__ import annotations

__all__ = ["run_async"]


def run_async(coro):
    """``asyncio.run`` without its SIGINT handler.

    asyncio.run turns Ctrl-C into a task cancellation, which cannot reach a
    prompt blocked reading the terminal (the read is retried after the
    signal), so the user would have to press Enter to get out. With the
    default handler, Ctrl-C raises KeyboardInterrupt inside the read: the
    prompt restores the terminal and the login stops.
    """
    import asyncio

    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        try:
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()
