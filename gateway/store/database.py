"""The database a Store speaks to: the engine, its connections and its transactions.

SQLite gets a synchronous twin of the engine: concurrent writes share a transaction, written on
the event loop or on a writer thread (``run_write``, ``gateway.store.group_commit``); reads go to a reader
thread (``run_read``), or run where they are asked for when they are a turn's own key lookups
(``run_driver_read``). PostgreSQL goes through SQLAlchemy's async engine, and a turn's own
statements through an asyncpg pool (``postgres_turns``). The query modules (``users``,
``sessions``, ``messages``, ``inbox``, ``files``, ``leases``, ``documents``, ``kv``, ``tasks``)
each take this and open short transactions of their own, so no caller holds a database session
across an ``await`` on the network.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, PoolProxiedConnection, create_engine, event
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlmodel.ext.asyncio.session import AsyncSession

import gateway.store.schema  # noqa: F401  (every table, registered before the schema is made)
from gateway.store.driver_thread import DriverThread
from gateway.store.fence import Fence
from gateway.store.group_commit import GroupCommit, SqliteWrites
from gateway.store.postgres_turns import PostgresTurns

log = logging.getLogger("chatgate.store")

T = TypeVar("T")


WAL_SIZE_LIMIT = 64 * 1024 * 1024
"""Bytes a WAL that grew past them is cut back to when it starts over (``journal_size_limit``):
it stays near 20 MB under load (``group_commit.CHECKPOINT_EVERY``); a long reader can hold a
checkpoint back and let it grow meanwhile."""


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
    # SQLite's temporary tables and statement journals in memory: on a file they cost a turn an
    # open, two stats and an unlink in /var/tmp about every third turn (strace, bench/README.md).
    cursor.execute("PRAGMA temp_store=MEMORY")
    cursor.close()


def _explicit_transactions(dbapi_connection: Any, _record: Any) -> None:
    """The driver in SQLite's autocommit mode: the writer begins and commits explicitly
    (``gateway.store.group_commit``); a read outside a transaction sees the latest commit."""
    dbapi_connection.isolation_level = None


def _fenced(work: Callable[[Connection], T], fence: Fence) -> Callable[[Connection], T]:
    """``work`` preceded, in its transaction, by the check of ``fence``."""

    def fenced(conn: Connection) -> T:
        fence.verify(conn)
        return work(conn)

    return fenced


class Database:
    def __init__(
        self, url: str, *, echo: bool = False, pool_size: int = 10, sqlite_writes: SqliteWrites = "loop"
    ) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self._echo = echo
        self._pool_size = pool_size
        self._sqlite_writes = sqlite_writes
        self._engine: AsyncEngine | None = None
        self._sync_engine: Engine | None = None
        self._writer: DriverThread | None = None
        self._reader: DriverThread | None = None
        self._group_commit: GroupCommit | None = None
        self.postgres_turns: PostgresTurns | None = None
        """PostgreSQL only: the per-turn statements on asyncpg directly (``gateway.store.postgres_turns``)."""
        self._thread_drivers = threading.local()
        self._held_drivers: list[PoolProxiedConnection] = []
        # SQLite has one writer at a time; queueing writers here avoids "database is locked"
        # when a deferred transaction tries to upgrade to a write lock.
        self._write_lock = asyncio.Lock()

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise RuntimeError("the store is not open: call await store.open() first")
        return self._engine

    async def open(self) -> None:
        if self.is_sqlite:
            path = self.url.split("///", 1)[1] if "///" in self.url else ""
            if path and path != ":memory:":
                directory = os.path.dirname(path) or "."
                await asyncio.to_thread(os.makedirs, directory, exist_ok=True)
            engine = create_async_engine(self.url, echo=self._echo)
            event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
            if path and path != ":memory:":
                self._open_sqlite_threads(path)
        else:
            # ``pool_size`` connections for the turns' statements (asyncpg, below) and up to as many
            # again for everything else (SQLAlchemy: half kept, half overflow): 2 x pool_size per
            # process at most, as before the turns had a pool of their own (docs/scaling.md).
            orm_share = max(1, self._pool_size // 2)
            engine = create_async_engine(
                self.url, echo=self._echo, pool_size=orm_share, max_overflow=max(1, self._pool_size - orm_share),
                pool_pre_ping=True,
            )
        self._engine = engine
        done = await self.create_schema()
        if done.startswith("upgraded"):  # "created", "stamped" and "current" need no word
            from gateway.store.migrate import HEAD_REVISION

            log.info("database schema %s to %s (gateway/migrations)", done, HEAD_REVISION)
        if not self.is_sqlite:
            self.postgres_turns = await PostgresTurns.open(self.url, max_size=self._pool_size)

    async def create_schema(self) -> str:
        """Make the schema on first start, migrate it with Alembic afterwards (gateway.store.migrate)."""
        from gateway.store.migrate import migrate

        async with self.engine.begin() as conn:
            if not self.is_sqlite:
                # Two processes starting together must not race on CREATE TABLE.
                await conn.exec_driver_sql("SELECT pg_advisory_xact_lock(727274)")
            return await conn.run_sync(migrate)

    def _open_sqlite_threads(self, path: str) -> None:
        """A synchronous twin of the engine for the per-turn statements.

        aiosqlite hops to its thread for every driver call (a write transaction is a dozen hops);
        running the whole transaction in one hop to a thread of our own is several times faster,
        and concurrent writes share that hop and their COMMIT (``gateway.store.group_commit``).
        Writes keep going through ``_write_lock``, so SQLite still sees one writer at a time.
        With ``sqlite_writes = "loop"`` the batches are written on the event loop itself, and the
        thread takes only those that find the database busy, and the WAL's checkpoints.
        """
        self._sync_engine = create_engine(
            f"sqlite:///{path}", echo=self._echo, connect_args={"check_same_thread": False}
        )
        event.listen(self._sync_engine, "connect", _sqlite_pragmas)
        event.listen(self._sync_engine, "connect", _explicit_transactions)
        self._writer = DriverThread("chatgate-sqlite-write")
        # One reader thread: measured, more only contend for the GIL (bench/web_echo.py).
        self._reader = DriverThread("chatgate-sqlite-read")
        self._group_commit = GroupCommit(
            self._sync_engine, self._writer, self._write_lock, on_loop=self._sqlite_writes == "loop"
        )

    async def run_write(self, work: Callable[[Connection], T], fence: Fence | None = None) -> T:
        """Run ``work(connection)`` in one write transaction, in one hop; with a ``fence``, only
        while the session's lease stands (checked in the same transaction: ``gateway.store.fence``)."""
        if fence is not None:
            fence.check_local()
            work = _fenced(work, fence)
        if self._group_commit is not None:
            return await self._group_commit.run(work)
        async with self.writing() as conn:
            return await conn.run_sync(work)

    @property
    def queues_writes(self) -> bool:
        """Whether a turn's replies and status can be queued without waiting
        (``MessageQueries.queue_add``, ``InboxQueries.queue_status``): PostgreSQL's group commit
        sends writes in the order they were asked for, so a write queued now is ahead of every
        write asked for later."""
        return self.postgres_turns is not None

    @property
    def has_driver(self) -> bool:
        """Whether ``run_driver_write``/``run_driver_read`` serve this database: a SQLite file
        (``gateway.store.sqlite_turns`` runs a turn's own statements there)."""
        return self._group_commit is not None

    async def run_driver_write(self, work: Callable[[sqlite3.Connection], T], fence: Fence | None = None) -> T:
        """``run_write`` for work on the ``sqlite3`` connection itself (``has_driver`` only)."""

        def on_driver(conn: Connection) -> T:
            driver = conn.connection.dbapi_connection
            assert isinstance(driver, sqlite3.Connection)
            return work(driver)

        return await self.run_write(on_driver, fence)

    async def run_driver_read(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work`` on a ``sqlite3`` connection of the calling thread's own, *on* that thread
        (``has_driver`` only).

        A turn's own reads (its session and user, the turn's messages) are key lookups in a local
        file's page cache: tens of microseconds, less than handing them to a thread and back
        costs; and with one GIL a thread would not run them beside the event loop anyway. WAL
        readers never wait for the writer. Anything bigger goes through ``run_read``.

        On the event loop's thread, with the batches written there, the read goes to the loop's
        own write connection (``GroupCommit.reading_driver``)."""
        if self._sync_engine is None:
            raise RuntimeError("no driver reads on this database (see Database.has_driver)")
        if self._group_commit is not None and (driver := self._group_commit.reading_driver()) is not None:
            return work(driver)
        return work(self._driver_of_this_thread())

    def _driver_of_this_thread(self) -> sqlite3.Connection:
        driver: sqlite3.Connection | None = getattr(self._thread_drivers, "driver", None)
        if driver is None:
            # Taken from the engine's pool for the thread's life: its "connect" listeners (the
            # pragmas, a test's statement log) apply as to every connection of the engine.
            assert self._sync_engine is not None
            held = self._sync_engine.raw_connection()
            raw = held.dbapi_connection
            assert isinstance(raw, sqlite3.Connection)
            self._thread_drivers.driver = driver = raw
            self._held_drivers.append(held)
        return driver

    async def run_read(self, work: Callable[[Connection], T]) -> T:
        if self._sync_engine is not None and self._reader is not None:
            return await self._reader.run(self._sync_connect, work)
        async with self.reading() as conn:
            return await conn.run_sync(work)

    @property
    def reads_now(self) -> bool:
        """Whether ``read_now`` can serve this database: a SQLite file, whose reads are local and
        take well under a millisecond. Not PostgreSQL: a read there waits on the network, and a
        synchronous wait would stall the event loop (so ``session.history`` is read before the
        handler runs instead), nor an in-memory SQLite database (only its own engine sees it)."""
        return self._sync_engine is not None

    def read_now(self, work: Callable[[Connection], T]) -> T:
        """Run ``work(connection)`` on the calling thread and return its result *synchronously*.

        For the few reads a synchronous API needs on first use (``session.history``), on a
        SQLite file only (``reads_now``): WAL readers never wait for the writer. Raises
        ``RuntimeError`` elsewhere."""
        if self._sync_engine is None:
            raise RuntimeError("no synchronous reads on this database (see Database.reads_now)")
        return self._sync_connect(work)

    def _sync_connect(self, work: Callable[[Connection], T]) -> T:
        assert self._sync_engine is not None
        with self._sync_engine.connect() as conn:
            return work(conn)

    async def close(self) -> None:
        if self.postgres_turns is not None:
            await self.postgres_turns.close()
            self.postgres_turns = None
        if self._group_commit is not None:
            await self._group_commit.close()
            self._group_commit = None
        for thread in (self._writer, self._reader):
            if thread is not None:
                await asyncio.to_thread(thread.shutdown)
        self._writer = self._reader = None
        for held in self._held_drivers:
            held.close()  # back to the pool, which the engine's dispose() below closes
        self._held_drivers.clear()
        self._thread_drivers = threading.local()
        if self._sync_engine is not None:
            self._sync_engine.dispose()
            self._sync_engine = None
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        async with AsyncSession(self.engine, expire_on_commit=False) as db:
            yield db

    @asynccontextmanager
    async def reading(self) -> AsyncIterator[AsyncConnection]:
        """A plain connection for the per-turn reads (Core: no ORM unit-of-work on the hot path)."""
        async with self.engine.connect() as conn:
            yield conn

    @asynccontextmanager
    async def writing(self) -> AsyncIterator[AsyncConnection]:
        """A Core write transaction, committed on exit (serialised on SQLite)."""
        if self.is_sqlite:
            async with self._write_lock, self.engine.begin() as conn:
                yield conn
        else:
            async with self.engine.begin() as conn:
                yield conn

    @asynccontextmanager
    async def write(self, fence: Fence | None = None) -> AsyncIterator[AsyncSession]:
        """A write transaction, committed on exit (serialised on SQLite); with a ``fence``, it
        commits only while the session's lease stands (``gateway.store.fence``)."""
        if fence is not None:
            fence.check_local()
        if self.is_sqlite:
            async with self._write_lock, self.session() as db:
                yield db
                if fence is not None:
                    await fence.verify_async(await db.connection())
                await db.commit()
        else:
            async with self.session() as db:
                # The lease row first, as every fenced write locks it (the group commit's batches
                # too, before the rows they write): in any other order, a batch holding this
                # session's lease and waiting to check a reply's session row could deadlock
                # with this transaction, holding that row (``save_data``) and waiting for the lease.
                if fence is not None:
                    await fence.verify_async(await db.connection())
                yield db
                await db.commit()

    async def ping(self) -> None:
        """One trivial query: the database answers (readiness probes)."""
        await self.run_read(lambda conn: conn.exec_driver_sql("SELECT 1").scalar())
