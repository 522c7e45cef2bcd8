"""The per-turn statements' connections to PostgreSQL: asyncpg connections lent one caller at a time.

asyncpg's ``Pool`` checks a connection out and back in through a holder, a proxy object, a
timeout context, an inactivity timer re-armed on every release and a shielded release task:
25-45 us of CPU a checkout on this machine, two to three times a prepared ``fetchrow`` itself
(bench/README.md), and a turn checks out three or four times. Its statements need none of it:
they set no session state, leave no transaction open and run one at a time on a connection.

Here a checkout is a pop from a list and a return an append. A connection whose state is in
doubt is closed rather than lent again (its caller was cancelled during a statement, so the
connection may still be cancelling it; or it came back inside a transaction, or closed); a new
one is opened when one is wanted. At most ``size`` are open; a caller beyond that waits for the
first one back, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from types import TracebackType

import asyncpg

__all__ = ["ConnectionLender", "LenderClosed"]

log = logging.getLogger("chatgate.store")


class LenderClosed(RuntimeError):
    """The store is closing: no connection is lent any more."""


class ConnectionLender:
    """Lends up to ``size`` connections made by ``connect`` (see the module's docstring)."""

    def __init__(self, connect: Callable[[], Awaitable[asyncpg.Connection]], size: int) -> None:
        if size < 1:
            raise ValueError("a lender needs at least one connection")
        self._connect = connect
        self.size = size
        self._idle: list[asyncpg.Connection] = []
        self._waiting: deque[asyncio.Future[asyncpg.Connection | None]] = deque()
        self._open = 0  # open or being opened, lent or idle
        self._closed = False

    @property
    def open_connections(self) -> int:
        return self._open

    def lend(self) -> Loan:
        """``async with lender.lend() as conn:`` one connection, given back on the way out."""
        return Loan(self)

    async def open_first(self) -> None:
        """Open one connection now, so that a wrong address or password fails the start."""
        self.give_back(await self.acquire(), clean=True)

    async def acquire(self) -> asyncpg.Connection:
        while True:
            if self._closed:
                raise LenderClosed("the store is closed")
            while self._idle:
                conn = self._idle.pop()
                if not conn.is_closed():
                    return conn
                self._open -= 1  # closed while idle (the server restarted, say)
            if self._open < self.size:
                self._open += 1
                try:
                    return await self._connect()
                except BaseException:
                    self._open -= 1
                    self._wake_one(None)  # a caller waiting behind this one may try its luck
                    raise
            waiter: asyncio.Future[asyncpg.Connection | None] = asyncio.get_running_loop().create_future()
            self._waiting.append(waiter)
            try:
                conn = await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled() and waiter.result() is not None:
                    self.give_back(waiter.result(), clean=True)  # handed over just as it gave up
                with contextlib.suppress(ValueError):
                    self._waiting.remove(waiter)
                raise
            if conn is not None:
                return conn
            # None: a connection was closed instead of given back; there is room to open one

    def give_back(self, conn: asyncpg.Connection, *, clean: bool) -> None:
        """Take ``conn`` back; ``clean`` says its last caller ended normally (not cancelled)."""
        if self._closed or not clean or conn.is_closed() or conn.is_in_transaction():
            self._open -= 1
            if not conn.is_closed():
                if not self._closed and clean:
                    log.warning("a PostgreSQL connection came back inside a transaction: closed")
                conn.terminate()
            self._wake_one(None)
            return
        if not self._wake_one(conn):
            self._idle.append(conn)

    def _wake_one(self, conn: asyncpg.Connection | None) -> bool:
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return True
        return False

    async def close(self) -> None:
        """Close the idle connections; those still lent are closed as they come back."""
        self._closed = True
        idle, self._idle = self._idle, []
        self._open -= len(idle)
        for conn in idle:
            try:
                await conn.close(timeout=5)
            except Exception:  # closing: a connection that cannot say goodbye is cut
                conn.terminate()
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_exception(LenderClosed("the store is closed"))


def _leaves_it_idle(error: BaseException) -> bool:
    """Whether a connection is idle after ``error`` ended its caller: yes after PostgreSQL's
    answer or an error of ours between statements; not after a cancellation or a timeout, which
    may have come during a statement that asyncpg is still cancelling, nor after a failure of
    the connection itself."""
    return isinstance(error, Exception) and not isinstance(
        error, TimeoutError | OSError | asyncpg.InterfaceError
    )


class Loan:
    """One connection of a :class:`ConnectionLender`, for an ``async with`` block."""

    __slots__ = ("_conn", "_lender")

    def __init__(self, lender: ConnectionLender) -> None:
        self._lender = lender
        self._conn: asyncpg.Connection | None = None

    async def __aenter__(self) -> asyncpg.Connection:
        self._conn = await self._lender.acquire()
        return self._conn

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        assert self._conn is not None
        self._lender.give_back(self._conn, clean=error is None or _leaves_it_idle(error))
        self._conn = None
