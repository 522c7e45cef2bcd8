"""Group commit: the write transactions that concurrent turns ask for on SQLite share one COMMIT.

A turn writes three or four times (record the event and the user's message, store the reply,
mark the event done). Run one by one, each write is a hop to the writer thread and back, a
``BEGIN``, a ``COMMIT`` and a wake-up of the event loop, and on a busy gateway that hand-off
costs more CPU than the SQL itself (bench/README.md). Here the writes asked for in one turn of
the event loop, and in the next few while more keep arriving (``MAX_WAITING_TURNS``), or on the
writer thread while a batch is being written, share one transaction and one ``COMMIT``.

Where a batch is written:

- **On the event loop** (the default, ``database.sqlite_writes = "loop"``). A local SQLite
  file in WAL mode with ``synchronous=NORMAL`` commits into the page cache and the WAL file
  without an fsync: a batch takes tens of microseconds, less than handing it to a thread and
  back (bench/README.md measured 20-25 % of a turn's CPU). What could stall the loop does not
  run there: the loop's connection never waits for a lock (``busy_timeout = 0``; a batch that
  finds another connection writing goes to the writer thread, which waits its turn), and it
  never checkpoints (the writer thread does, every ``CHECKPOINT_EVERY`` commits: see
  ``GroupCommit._checkpoint_wal``).
- **On the writer thread** (``database.sqlite_writes = "thread"``, for a database on a disk
  whose writes can take milliseconds, such as a network file system; and for the batches
  above that find the database busy).

What does not change:

- **Nothing is acknowledged before it is committed.** Each caller's ``run`` returns (or raises)
  only after the ``COMMIT`` of the batch that holds its work has returned; when that ``COMMIT``
  fails, every caller of the batch gets the error and nothing of the batch is stored.
- **One failing write does not take the others down.** When a piece of work raises (a
  repeated dedup key, an unknown session, a lost lease), the batch is undone and run again with
  each piece in a ``SAVEPOINT`` of its own: the one that raises is rolled back alone, and its
  caller gets the exception (``_run_each``).
- **Order.** Work runs in the order it was asked for; a caller that awaits its write before the
  next sees them in order, as before.
- **One writer.** Each batch holds the database's write lock (shared with the async engine's
  writes), so SQLite still sees one writer at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Callable
from typing import Any, Literal, TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError

from gateway.store.driver_thread import DriverThread

T = TypeVar("T")
Work = Callable[[Connection], Any]
Outcome = tuple[bool, Any]  # (True, the work's result) or (False, the exception it raised)
SqliteWrites = Literal["loop", "thread"]
"""Where batches are written: ``database.sqlite_writes`` (see the module's docstring)."""

MAX_WAITING_TURNS = 3
"""At most this many turns of the loop a batch on the loop waits for more writes, and only while
they keep arriving (each turn is one poll for I/O, tens of microseconds). Under load a batch then
holds 5-6 writes, not 3 (8 REST clients, bench/web_echo.py): a commit writes each page it
touched once, and most of the pages a turn touches are its neighbours' too (the tables' last
pages, the index of unfinished events): 15 % less CPU a turn."""

MAX_BATCH = 128
"""At most this many writes share a transaction: a batch holds up the first caller's answer
until the last of its writes is done (about 30-100 us each)."""

log = logging.getLogger("chatgate.store")

SAVEPOINT = "chatgate_write"
BATCH_SAVEPOINT = "chatgate_batch"

CHECKPOINT_EVERY = 250
"""Commits on the event loop between two checkpoints on the writer thread. A batch adds about
17 pages to the WAL under load (bench/README.md), so the WAL stays near 250 x 17 pages (about
20 MB, with what arrives while a checkpoint runs); SQLite's own automatic checkpoint (which the
loop's connection does not run) comes at 1000 pages."""


RESTART_WAIT_MS = 50
"""How long a checkpoint's ``RESTART`` pass waits for readers to leave the WAL (and for a writer
to finish), holding new writes off meanwhile; past it, the WAL starts over at a later round."""


class _DatabaseBusy(Exception):
    """``BEGIN IMMEDIATE`` on the loop's connection found another connection writing."""


class StoreClosed(RuntimeError):
    """A write was asked for while (or after) the store closed; it was not run."""


class GroupCommit:
    """Runs ``Connection`` work in shared write transactions, on the event loop or on the writer
    thread (``on_loop``).

    ``engine``'s connections must be in SQLite's autocommit mode (``isolation_level=None`` on
    the driver connection): the transactions here are begun, savepointed and committed
    explicitly, ``BEGIN IMMEDIATE`` so a batch takes SQLite's write lock before its first
    statement and never has to upgrade a read lock (which fails at once when another process
    wrote meanwhile).
    """

    def __init__(self, engine: Engine, writer: DriverThread, lock: asyncio.Lock, *, on_loop: bool = True) -> None:
        self._engine = engine
        self._writer = writer
        self._lock = lock
        self._on_loop = on_loop
        self._pending: list[tuple[Work, asyncio.Future[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None
        """Writes batches on the writer thread, one after another, while there are any."""
        self._scheduled: asyncio.Handle | None = None
        """Writes the pending batch on the event loop at the end of a turn of the loop."""
        self._hops = 0
        self._pending_at_last_turn = 0
        """Turns of the loop the pending batch waited, and its size at the last of them."""
        self._loop_connection: Connection | None = None
        self._loop_of_connection: asyncio.AbstractEventLoop | None = None
        self._commits_on_loop = 0
        self._checkpoint: asyncio.Future[None] | None = None
        self._closed = False

    async def run(self, work: Callable[[Connection], T]) -> T:
        """Run ``work(connection)`` in the next batch; its result once that batch is committed."""
        if self._closed:
            raise StoreClosed("the store is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._pending.append((work, future))
        if self._flusher is None and self._scheduled is None:
            if self._on_loop:
                self._scheduled = loop.call_soon(self._flush_on_loop)
            else:
                self._flusher = loop.create_task(self._flush(), name="chatgate-group-commit")
        return await future

    async def close(self) -> None:
        """Let the batch being written finish; writes not yet begun fail with ``StoreClosed``."""
        self._closed = True
        if self._scheduled is not None:
            self._scheduled.cancel()
            self._scheduled = None
        pending, self._pending = self._pending, []
        for _, future in pending:
            if not future.done():
                future.set_exception(StoreClosed("the store closed before this write began"))
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)
        if self._checkpoint is not None:
            await asyncio.gather(self._checkpoint, return_exceptions=True)
        self._drop_loop_connection()

    def _next_batch(self) -> list[tuple[Work, asyncio.Future[Any]]]:
        batch = self._pending[:MAX_BATCH]
        del self._pending[:MAX_BATCH]
        # A caller cancelled before its batch began asked for nothing: as with a write still
        # queued for the writer thread, it is not run.
        return [(work, future) for work, future in batch if not future.cancelled()]

    # -- on the event loop ----------------------------------------------------------------

    def _flush_on_loop(self) -> None:
        """Write what is pending, on the loop; what finds the database busy goes to the thread."""
        self._scheduled = None
        if self._closed or self._flusher is not None:  # the thread's batches go first, in order
            return
        if self._hops < MAX_WAITING_TURNS and len(self._pending) > self._pending_at_last_turn:
            # Writes are still arriving: the batch waits one more turn of the loop for them.
            self._hops += 1
            self._pending_at_last_turn = len(self._pending)
            self._scheduled = asyncio.get_running_loop().call_soon(self._flush_on_loop)
            return
        self._hops = self._pending_at_last_turn = 0
        # Another writer of this process is inside a transaction (an ORM write awaiting the
        # async engine): the thread waits for it.
        while self._pending and not self._lock.locked():
            batch = self._next_batch()
            if not batch:
                continue
            try:
                outcomes = self._write_on_loop([work for work, _ in batch])
            except _DatabaseBusy:  # another process writes: nothing of the batch ran
                self._pending[:0] = batch
                break
            _settle_outcomes(batch, outcomes)
        if self._pending:  # to the writer thread, which waits for the lock (or the other process)
            self._flusher = asyncio.get_running_loop().create_task(self._flush(), name="chatgate-group-commit")

    def _write_on_loop(self, works: list[Work]) -> list[Outcome]:
        """One transaction for ``works`` on the loop's connection; raises ``_DatabaseBusy``
        (nothing run) when another connection holds the write lock."""
        try:
            conn = self._connection_on_loop()
            driver = conn.connection.dbapi_connection
            assert driver is not None
            driver.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as error:
            if error.sqlite_errorcode == sqlite3.SQLITE_BUSY:
                raise _DatabaseBusy from error
            self._drop_loop_connection()
            return [(False, _as_sqlalchemy_error(error))] * len(works)
        except Exception as error:  # no connection (the file cannot be opened): the next batch tries again
            self._drop_loop_connection()
            return [(False, _as_sqlalchemy_error(error))] * len(works)
        try:
            outcomes = _commit(conn, driver, works)
        finally:
            if conn.in_transaction():  # an ORM work's own view of the transaction committed above
                conn.rollback()  # (the driver is in autocommit mode again: nothing is rolled back)
        self._commits_on_loop += 1
        if self._commits_on_loop >= CHECKPOINT_EVERY and self._checkpoint is None:
            self._commits_on_loop = 0
            self._checkpoint = self._writer.run(self._checkpoint_wal)
            self._checkpoint.add_done_callback(self._checkpointed)
        return outcomes

    def reading_driver(self) -> sqlite3.Connection | None:
        """The loop's own write connection, for a read on the loop's thread between two batches;
        None elsewhere (another thread, or batches written on the thread).

        SQLite empties a connection's page cache whenever another connection has written since
        its last read, as one always has on a busy gateway: a turn's key lookups on a reader
        connection went to the file for every page (a twelfth of a REST turn, py-spy). The
        connection that wrote those pages still has them."""
        conn = self._loop_connection
        if conn is None or self._closed or asyncio._get_running_loop() is not self._loop_of_connection:
            return None  # nothing written on the loop yet, or another thread (its own loop)
        driver = conn.connection.dbapi_connection
        assert isinstance(driver, sqlite3.Connection)
        return None if driver.in_transaction else driver

    def _connection_on_loop(self) -> Connection:
        if self._loop_connection is None:
            conn = self._engine.connect()
            driver = conn.connection.dbapi_connection
            assert driver is not None
            driver.execute("PRAGMA busy_timeout = 0")
            driver.execute("PRAGMA wal_autocheckpoint = 0")
            self._loop_connection = conn
            self._loop_of_connection = asyncio._get_running_loop()
        return self._loop_connection

    def _drop_loop_connection(self) -> None:
        if self._loop_connection is not None:
            # Not back to the pool: its busy_timeout and checkpoint settings are the loop's own.
            with contextlib.suppress(Exception):
                self._loop_connection.invalidate()
                self._loop_connection.close()
            self._loop_connection = None

    def _checkpoint_wal(self) -> None:
        """On the writer thread: copy what the WAL holds into the database, and have the next
        write start the WAL over from its beginning.

        SQLite starts the WAL over only when a write begins with every frame already copied. A
        checkpoint that runs beside the loop's writes (``PASSIVE``) never sees that moment under
        load, since commits keep adding frames while it copies: the WAL grew without end (280 MB
        after 10,000 turns of bench/web_echo.py, with every write extending the file). So:

        1. ``PASSIVE`` copies the bulk while the loop goes on writing;
        2. ``RESTART`` then holds writers off while it copies the few frames added meanwhile (and
           syncs), and waits for readers to leave the WAL. The loop's batches that find the
           database busy meanwhile go to this thread, behind the checkpoint (milliseconds).
           It waits for a reader at most ``RESTART_WAIT_MS``: a long read (a big listing) would
           otherwise hold every write off with it; the WAL then starts over a round later.

        ``journal_size_limit`` (``gateway.store.database``) cuts a WAL that grew past it (a long
        reader held a checkpoint back) when it starts over."""
        with self._engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            waits = conn.exec_driver_sql("PRAGMA busy_timeout").scalar_one()
            conn.exec_driver_sql(f"PRAGMA busy_timeout = {RESTART_WAIT_MS}")
            try:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(RESTART)").fetchall()
            finally:
                conn.exec_driver_sql(f"PRAGMA busy_timeout = {int(waits)}")

    def _checkpointed(self, done: asyncio.Future[None]) -> None:
        self._checkpoint = None
        if not done.cancelled() and (error := done.exception()) is not None:
            log.warning("checkpointing the SQLite WAL failed (the next one tries again): %s", error)

    # -- on the writer thread -------------------------------------------------------------

    async def _flush(self) -> None:
        """Write the pending batches in order, each once the write lock is free: on the writer
        thread, or (``on_loop``) on the loop unless the database is busy, after which the loop's
        own path takes the rest."""
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                batch = self._next_batch()
                if not batch:
                    continue
                async with self._lock:
                    works = [work for work, _ in batch]
                    if self._on_loop:
                        try:
                            outcomes = self._write_on_loop(works)
                        except _DatabaseBusy:  # another process writes: the thread waits for it
                            pass
                        else:
                            _settle_outcomes(batch, outcomes)
                            break
                    written = self._writer.run(self._write, works)
                    written.add_done_callback(lambda done, batch=batch: _settle(batch, done))  # type: ignore[misc]
                    # Shielded: if this task is cancelled (the loop shuts down) the batch is still
                    # written and its callers still get their outcomes from the callback.
                    await asyncio.shield(written)
        finally:
            self._flusher = None
            if self._pending and not self._closed:  # arrived meanwhile, or as this task was cancelled
                if self._on_loop:
                    if self._scheduled is None:
                        self._scheduled = loop.call_soon(self._flush_on_loop)
                else:
                    self._flusher = loop.create_task(self._flush(), name="chatgate-group-commit")

    def _write(self, works: list[Work]) -> list[Outcome]:
        """On the writer thread: one transaction for ``works`` (``_run_each``)."""
        with self._engine.connect() as conn:
            driver = conn.connection.dbapi_connection
            assert driver is not None
            try:
                driver.execute("BEGIN IMMEDIATE")  # waits up to the engine's busy_timeout
            except sqlite3.Error as error:
                return [(False, _as_sqlalchemy_error(error))] * len(works)
            return _commit(conn, driver, works)


def _commit(conn: Connection, driver: Any, works: list[Work]) -> list[Outcome]:
    """Inside ``BEGIN IMMEDIATE``: run ``works`` (``_run_each``) and commit."""
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
    """Run ``works`` so that each one's failure undoes its own writes alone.

    Works almost never fail, so the batch runs first under one savepoint; only when one of them
    raises is that undone and the batch run again with a savepoint per work (works are SQL
    alone, so running one again is running it once). A savepoint per work up front cost a REST
    turn three pairs of statements."""
    if len(works) == 1:  # alone in its transaction: its failure rolls the transaction back
        try:
            return [(True, works[0](conn))]
        except Exception as error:
            driver.execute("ROLLBACK")
            return [(False, error)]
    driver.execute(f"SAVEPOINT {BATCH_SAVEPOINT}")
    try:
        outcomes: list[Outcome] = [(True, work(conn)) for work in works]
    except Exception:
        driver.execute(f"ROLLBACK TO {BATCH_SAVEPOINT}")
        driver.execute(f"RELEASE {BATCH_SAVEPOINT}")
        return _run_each_alone(conn, driver, works)
    driver.execute(f"RELEASE {BATCH_SAVEPOINT}")
    return outcomes


def _run_each_alone(conn: Connection, driver: Any, works: list[Work]) -> list[Outcome]:
    """Each work in a savepoint of its own: one that raises is rolled back alone."""
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
    """Hand each caller of a batch committed (or failed) on the writer thread its own outcome."""
    if done.cancelled():
        outcomes: list[Outcome] = [(False, StoreClosed("the write was cancelled"))] * len(batch)
    elif (error := done.exception()) is not None:
        outcomes = [(False, error)] * len(batch)
    else:
        outcomes = done.result()
    _settle_outcomes(batch, outcomes)


def _settle_outcomes(batch: list[tuple[Work, asyncio.Future[Any]]], outcomes: list[Outcome]) -> None:
    """Hand each caller of a committed (or failed) batch its own outcome."""
    for (_, future), (ok, value) in zip(batch, outcomes, strict=True):
        if future.done():  # its caller was cancelled meanwhile: the write stands, nobody waits
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)
