"""Concurrent callers' statements sent to PostgreSQL together: one round trip, one commit.

The group commit (``postgres_group_commit``: replies and event statuses) and the recordings of
events (``postgres_recording``) work alike: a caller queues its row and waits for its future;
the rows queued while the previous batch was on its way to the database, or in the same turn of
the event loop, go out as one statement. The busier the gateway, the bigger the batches. What a
kind of batch adds is its statement (``_write_batch``) and which rows may share one
(``_take_batch``).

What every kind keeps:

- **Nothing is answered before it is committed.** A future is done once the statement holding
  its row has returned, that is, committed (PostgreSQL commits a statement run outside a
  transaction on its own, durably: ``synchronous_commit`` stays on).
- **One failing row does not take the others down.** When PostgreSQL refuses a batch, nothing
  of it is stored, and every row of it runs again alone (``alone``), in order, with the
  statements it would have run without batching; only the row at fault fails.
- **Order.** Rows go out in the order they were queued: a row queued after another goes in the
  same batch or a later one, never an earlier.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Generic, Protocol, TypeVar

import asyncpg

from gateway.store.connection_lender import ConnectionLender

__all__ = ["MAX_BATCHES_IN_FLIGHT", "Batched", "StatementBatches", "outcome_of"]

log = logging.getLogger("chatgate.store")

MAX_BATCHES_IN_FLIGHT = 1
"""Batches of one kind on their way to PostgreSQL at once. While one is, the rows queued
meanwhile wait and then go together: under load a batch then holds what arrived during one
round trip."""


class Batched(Protocol):
    """One caller's row: ``alone`` runs it without the others (when its batch was refused);
    ``done`` is its caller's answer."""

    @property
    def alone(self) -> Callable[[], Awaitable[Any]]: ...

    @property
    def done(self) -> asyncio.Future[Any]: ...


Row = TypeVar("Row", bound=Batched)


class StatementBatches(Generic[Row]):
    """Collects rows and sends them in batches (see the module's docstring)."""

    def __init__(self, connections: ConnectionLender) -> None:
        self._connections = connections
        self._pending: list[Row] = []
        self._in_flight = 0
        self._scheduled = False
        self._idle = asyncio.Event()
        self._idle.set()
        self.batches = 0
        """Batches sent so far, and the rows in them (the tests read them)."""
        self.writes = 0

    def enqueue(self, pending: Row) -> asyncio.Future[Any]:
        """Queue ``pending`` for the next batch now, in order; its future is done once it is
        committed (or failed)."""
        self._pending.append(pending)
        self._idle.clear()
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._send_next)
        return pending.done

    async def drain(self) -> None:
        """Wait until every row queued so far is written (before the connections close)."""
        await self._idle.wait()

    def _take_batch(self) -> list[Row]:
        """The rows of the next batch, from the front of ``_pending`` (removed from it)."""
        raise NotImplementedError

    async def _write_batch(self, batch: list[Row]) -> list[Any]:
        """Send ``batch`` as one statement: each row's answer, or the exception its caller gets.
        Raises ``asyncpg.PostgresError`` when PostgreSQL refused the batch (nothing stored)."""
        raise NotImplementedError

    def _send_next(self) -> None:
        self._scheduled = False
        if not self._pending or self._in_flight >= MAX_BATCHES_IN_FLIGHT:
            return  # the batch on its way starts the next one when it is back
        batch = self._take_batch()
        if not batch:  # every row taken had lost its caller: nothing to send
            self._continue()
            return
        self._in_flight += 1
        asyncio.get_running_loop().create_task(self._send(batch))

    def _continue(self) -> None:
        """The next batch soon if rows wait; idle once none waits and none is on its way."""
        if self._pending:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._send_next)
        elif not self._in_flight:
            self._idle.set()

    async def _send(self, batch: list[Row]) -> None:
        outcomes: list[Any]
        try:
            outcomes = await self._write_batch(batch)
            self.batches += 1
            self.writes += len(batch)
        except asyncpg.PostgresError as error:
            # PostgreSQL refused the statement and stored none of it: each row alone, in order.
            log.debug("a batch of %d rows was refused (%s): writing each alone", len(batch), error)
            outcomes = [await outcome_of(pending.alone()) for pending in batch]
        except Exception as error:  # the connection failed: whether it committed is unknown
            outcomes = [error] * len(batch)
        except BaseException:  # cancelled (the loop is closing): so are its callers
            for pending in batch:
                pending.done.cancel()
            raise
        finally:
            self._in_flight -= 1
            self._continue()
        for pending, outcome in zip(batch, outcomes, strict=True):
            if pending.done.done():  # its caller was cancelled; the row went out all the same
                continue
            if isinstance(outcome, BaseException):
                pending.done.set_exception(outcome)
            else:
                pending.done.set_result(outcome)


async def outcome_of(write: Awaitable[Any]) -> Any:
    """What ``write`` returns, or the exception it raised."""
    try:
        return await write
    except Exception as error:
        return error
