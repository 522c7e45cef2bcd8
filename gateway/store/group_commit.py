"""Group commit: the write transactions that concurrent turns ask for on SQLite share one COMMIT.

A turn writes three or four times (record the event and the user's message, store the reply,
mark the event done). Run one by one, each write is a hop to the writer thread and back, a
``BEGIN``, a ``COMMIT`` and a wake-up of the event loop, and on a busy gateway that hand-off
costs more CPU than the SQL itself (bench/README.md). Here the writes that arrive while a batch
is being written wait for the next one and go to the writer thread together: one hop, one
transaction, one ``COMMIT`` for all of them.

What does not change:

- **Nothing is acknowledged before it is committed.** Each caller's ``run`` returns (or raises)
  only after the ``COMMIT`` of the batch that holds its work has returned; when that ``COMMIT``
  fails, every caller of the batch gets the error and nothing of the batch is stored.
- **One failing write does not take the others down.** Each piece of work runs in a
  ``SAVEPOINT`` of its own: one that raises (a repeated dedup key, an unknown session, a lost
  lease) is rolled back alone, and its caller gets the exception.
- **Order.** Work runs in the order it was asked for; a caller that awaits its write before the
  next sees them in order, as before.
- **One writer.** Each batch holds the database's write lock (shared with the async engine's
  writes), so SQLite still sees one writer at a time.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError

from gateway.store.driver_thread import DriverThread

T = TypeVar("T")
Work = Callable[[Connection], Any]
Outcome = tuple[bool, Any]  # (True, the work's result) or (False, the exception it raised)

MAX_BATCH = 128
"""At most this many writes share a transaction: a batch holds up the first caller's answer
until the last of its writes is done (about 30-100 us each)."""

SAVEPOINT = "chatgate_write"


class StoreClosed(RuntimeError):
    """A write was asked for while (or after) the store closed; it was not run."""


class GroupCommit:
    """Runs ``Connection`` work in shared write transactions on one writer thread.

    ``engine``'s connections must be in SQLite's autocommit mode (``isolation_level=None`` on
    the driver connection): the transactions here are begun, savepointed and committed
    explicitly, ``BEGIN IMMEDIATE`` so a batch takes SQLite's write lock before its first
    statement and never has to upgrade a read lock (which fails at once when another process
    wrote meanwhile).
    """

    def __init__(self, engine: Engine, writer: DriverThread, lock: asyncio.Lock) -> None:
        self._engine = engine
        self._writer = writer
        self._lock = lock
        self._pending: list[tuple[Work, asyncio.Future[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._closed = False

    async def run(self, work: Callable[[Connection], T]) -> T:
        """Run ``work(connection)`` in the next batch; its result once that batch is committed."""
        if self._closed:
            raise StoreClosed("the store is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._pending.append((work, future))
        if self._flusher is None:
            self._flusher = loop.create_task(self._flush(), name="chatgate-group-commit")
        return await future

    async def close(self) -> None:
        """Let the batch being written finish; writes not yet begun fail with ``StoreClosed``."""
        self._closed = True
        pending, self._pending = self._pending, []
        for _, future in pending:
            if not future.done():
                future.set_exception(StoreClosed("the store closed before this write began"))
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                batch = self._pending[:MAX_BATCH]
                del self._pending[:MAX_BATCH]
                # A caller cancelled before its batch began asked for nothing: as with a write
                # still queued for the writer thread, it is not run.
                batch = [(work, future) for work, future in batch if not future.cancelled()]
                if not batch:
                    continue
                async with self._lock:
                    written = self._writer.run(self._write, [work for work, _ in batch])
                    written.add_done_callback(lambda done, batch=batch: _settle(batch, done))  # type: ignore[misc]
                    # Shielded: if this task is cancelled (the loop shuts down) the batch is still
                    # written and its callers still get their outcomes from the callback.
                    await asyncio.shield(written)
        finally:
            self._flusher = None
            if self._pending and not self._closed:  # arrived as this task was being cancelled
                self._flusher = loop.create_task(self._flush(), name="chatgate-group-commit")

    def _write(self, works: list[Work]) -> list[Outcome]:
        """On the writer thread: one transaction for ``works``, each in its own savepoint."""
        with self._engine.connect() as conn:
            driver = conn.connection.dbapi_connection
            assert driver is not None
            driver.execute("BEGIN IMMEDIATE")
            try:
                outcomes = _run_each(conn, driver, works)
                if driver.in_transaction:  # not when a lone work failed and rolled it back
                    driver.execute("COMMIT")
            except BaseException as error:  # the COMMIT (or the connection) failed: nothing stored
                if driver.in_transaction:
                    driver.execute("ROLLBACK")
                if not isinstance(error, Exception):
                    raise
                return [(False, _as_sqlalchemy_error(error))] * len(works)
            return outcomes


def _run_each(conn: Connection, driver: Any, works: list[Work]) -> list[Outcome]:
    if len(works) == 1:  # alone in its transaction: its failure rolls the transaction back
        try:
            return [(True, works[0](conn))]
        except Exception as error:
            driver.execute("ROLLBACK")
            return [(False, error)]
    outcomes: list[Outcome] = []
    for work in works:
        driver.execute(f"SAVEPOINT {SAVEPOINT}")
        try:
            value = work(conn)
        except Exception as error:
            driver.execute(f"ROLLBACK TO {SAVEPOINT}")
            outcomes.append((False, error))
        else:
            outcomes.append((True, value))
        driver.execute(f"RELEASE {SAVEPOINT}")
    return outcomes


def _as_sqlalchemy_error(error: Exception) -> Exception:
    """A driver error of ``BEGIN``/``COMMIT`` as SQLAlchemy would raise it (``IntegrityError``,
    ``OperationalError``...), as every caller of the store expects."""
    if isinstance(error, sqlite3.Error):
        return DBAPIError.instance("COMMIT", None, error, sqlite3.Error)
    return error


def _settle(batch: list[tuple[Work, asyncio.Future[Any]]], done: asyncio.Future[list[Outcome]]) -> None:
    """Hand each caller of a committed (or failed) batch its own outcome."""
    if done.cancelled():
        outcomes: list[Outcome] = [(False, StoreClosed("the write was cancelled"))] * len(batch)
    elif (error := done.exception()) is not None:
        outcomes = [(False, error)] * len(batch)
    else:
        outcomes = done.result()
    for (_, future), (ok, value) in zip(batch, outcomes, strict=True):
        if future.done():  # its caller was cancelled meanwhile: the write stands, nobody waits
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)
