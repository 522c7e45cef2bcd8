"""A read on PostgreSQL that the event loop's thread waits for: ``session.history`` on first use.

``session.history`` is a plain attribute in Capsule's API: a handler reads it without ``await``.
On a SQLite file the first read runs there and then (well under a millisecond). On PostgreSQL a
turn fetches the rows before its handler runs instead, while handlers read their history
(``gateway.history.HistoryPrefetch``); once they have stopped, the rows are no longer fetched,
and the one handler that reads its history again waits here for a round trip, with the whole
event loop (then fetching resumes).

The read runs on a thread of its own, with an event loop and a connection of its own (an asyncpg
connection belongs to the loop that opened it): the caller's thread hands the statement over and
blocks on the answer, at most ``READ_TIMEOUT`` seconds.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import asyncpg

__all__ = ["READ_TIMEOUT", "BlockingReads"]

READ_TIMEOUT = 10.0
"""Seconds a blocking read may hold the caller (and its event loop) before it raises."""


class BlockingReads:
    """Statements run on a thread of their own, their caller waiting (see the module's docstring)."""

    def __init__(self, connect: Callable[[], Awaitable[asyncpg.Connection]]) -> None:
        self._connect = connect
        self._conn: asyncpg.Connection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def fetch(self, statement: str, *arguments: Any) -> Sequence[asyncpg.Record]:
        """The rows of ``statement``, read now: the calling thread waits for them."""
        loop = self._started()
        future = asyncio.run_coroutine_threadsafe(self._fetch(statement, arguments), loop)
        try:
            return future.result(READ_TIMEOUT)
        except TimeoutError:
            future.cancel()
            raise TimeoutError(f"PostgreSQL did not answer a blocking read within {READ_TIMEOUT:.0f} s") from None

    async def _fetch(self, statement: str, arguments: Sequence[Any]) -> Sequence[asyncpg.Record]:
        if self._conn is None or self._conn.is_closed():
            self._conn = await self._connect()
        try:
            return await self._conn.fetch(statement, *arguments)
        except asyncpg.PostgresError:
            raise  # PostgreSQL answered: the connection is fine
        except BaseException:
            if not self._conn.is_closed():
                self._conn.terminate()  # cut off or cancelled mid-read: the next read opens another
            self._conn = None
            raise

    def _started(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="chatgate-blocking-reads", daemon=True)
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop

    async def close(self) -> None:
        """Close the connection and stop the thread (if a read ever started them)."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return

        async def close_connection() -> None:
            if self._conn is not None and not self._conn.is_closed():
                try:
                    await self._conn.close(timeout=5)
                except Exception:
                    self._conn.terminate()
            self._conn = None

        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(close_connection(), loop))
        loop.call_soon_threadsafe(loop.stop)
        await asyncio.to_thread(thread.join, 5)
        loop.close()
