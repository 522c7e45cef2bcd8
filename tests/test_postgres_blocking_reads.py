"""A read the event loop's thread waits for (gateway/store/postgres_blocking_reads.py), on a real
PostgreSQL: answered while the caller's loop is held, a connection the server closed replaced
without an error, an error of PostgreSQL raised as itself, and the thread gone after ``close``."""

from __future__ import annotations

import asyncio
import threading

import asyncpg
import pytest

from gateway.store.postgres_blocking_reads import BlockingReads

pytestmark = pytest.mark.postgres


@pytest.fixture
def dsn(postgres_url) -> str:
    return "postgresql://" + postgres_url.split("://", 1)[1]


def _threads() -> set[str]:
    return {thread.name for thread in threading.enumerate()}


async def test_a_read_is_answered_while_the_loop_waits_and_survives_a_lost_connection(dsn) -> None:
    opened: list[asyncpg.Connection] = []

    async def connect() -> asyncpg.Connection:
        opened.append(await asyncpg.connect(dsn))
        return opened[-1]

    reads = BlockingReads(connect)
    assert "chatgate-blocking-reads" not in _threads()  # nothing until the first read
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0)
    before = ticks
    [row] = reads.fetch("SELECT $1::int + 1, pg_sleep(0.05)", 41)
    assert row[0] == 42 and ticks == before  # the loop ran nothing while it waited
    ticker.cancel()

    with pytest.raises(asyncpg.UndefinedTableError):
        reads.fetch("SELECT * FROM no_such_table")
    first = reads.fetch("SELECT pg_backend_pid()")[0][0]
    assert len(opened) == 1  # PostgreSQL's error left the connection as it was
    admin = await asyncpg.connect(dsn)
    try:
        await admin.fetchval("SELECT pg_terminate_backend($1)", first)
    finally:
        await admin.close()
    await asyncio.sleep(0.2)  # the reads' own loop sees the connection close
    assert reads.fetch("SELECT 1")[0][0] == 1 and len(opened) == 2  # on a new connection, no error
    await reads.close()
    assert "chatgate-blocking-reads" not in _threads()
    assert all(conn.is_closed() for conn in opened)


async def test_closing_reads_that_never_ran_does_nothing() -> None:
    async def connect() -> asyncpg.Connection:
        raise AssertionError("never connects")

    await BlockingReads(connect).close()
