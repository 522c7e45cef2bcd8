"""The per-turn statements' connections (gateway/store/connection_lender.py), on a real
PostgreSQL: lent one caller at a time, never more than its size, waiters served in order, and a
connection in doubt closed rather than lent again."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from gateway.store.connection_lender import ConnectionLender, LenderClosed

pytestmark = pytest.mark.postgres


@pytest.fixture
def dsn(postgres_url) -> str:
    return "postgresql://" + postgres_url.split("://", 1)[1]


@pytest.fixture
async def lender(dsn) -> AsyncIterator[ConnectionLender]:
    opened: list[asyncpg.Connection] = []

    async def connect() -> asyncpg.Connection:
        conn = await asyncpg.connect(dsn)
        opened.append(conn)
        return conn

    lender = ConnectionLender(connect, 2)
    lender.opened = opened  # type: ignore[attr-defined]
    try:
        yield lender
    finally:
        await lender.close()
        for conn in opened:
            conn.terminate()


async def _backend(lender: ConnectionLender) -> int:
    async with lender.lend() as conn:
        return int(await conn.fetchval("SELECT pg_backend_pid()"))


async def test_connections_are_reused_and_never_more_than_its_size(lender) -> None:
    assert await _backend(lender) == await _backend(lender)  # one connection, lent twice
    order: list[str] = []
    release = asyncio.Event()

    async def hold(name: str) -> None:
        async with lender.lend() as conn:
            order.append(name)
            await conn.fetchval("SELECT 1")
            await release.wait()

    holders = [asyncio.create_task(hold(name)) for name in ("a", "b")]
    await asyncio.sleep(0.2)
    waiters = [asyncio.create_task(hold(name)) for name in ("c", "d")]
    await asyncio.sleep(0.2)
    assert order == ["a", "b"] and lender.open_connections == 2  # c and d wait
    release.set()
    await asyncio.gather(*holders, *waiters)
    assert order == ["a", "b", "c", "d"] and len(lender.opened) == 2  # type: ignore[attr-defined]


async def test_a_connection_cancelled_during_a_statement_is_closed_not_lent_again(lender) -> None:
    first = await _backend(lender)

    async def slow() -> None:
        async with lender.lend() as conn:
            await conn.execute("SELECT pg_sleep(5)")

    task = asyncio.create_task(slow())
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert lender.open_connections == 0
    assert await _backend(lender) != first  # a new connection, which works


async def test_a_connection_given_back_inside_a_transaction_is_closed(lender) -> None:
    first = await _backend(lender)
    async with lender.lend() as conn:
        await conn.execute("BEGIN")
    assert lender.open_connections == 0
    assert await _backend(lender) != first


async def test_an_error_of_postgresql_leaves_the_connection_in_use(lender) -> None:
    first = await _backend(lender)
    with pytest.raises(asyncpg.UndefinedTableError):
        async with lender.lend() as conn:
            await conn.fetch("SELECT * FROM no_such_table")
    assert await _backend(lender) == first


async def test_a_connection_the_server_closed_is_replaced_without_an_error(lender, dsn) -> None:
    first = await _backend(lender)
    admin = await asyncpg.connect(dsn)
    try:
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", first)
    finally:
        await admin.close()
    await asyncio.sleep(0.2)  # the lender's idle connection sees its socket close
    assert await _backend(lender) != first


async def test_a_failed_connect_gives_its_place_back(dsn) -> None:
    attempts = 0

    async def connect() -> asyncpg.Connection:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise ConnectionRefusedError("the database is not up yet")
        return await asyncpg.connect(dsn)

    lender = ConnectionLender(connect, 1)
    try:
        with pytest.raises(ConnectionRefusedError):
            await lender.open_first()
        assert lender.open_connections == 0
        await lender.open_first()  # the one place is free again
        assert lender.open_connections == 1
    finally:
        await lender.close()


async def test_closing_refuses_new_loans_and_closes_what_comes_back(lender) -> None:
    await _backend(lender)  # one idle connection
    release = asyncio.Event()
    lent: list[asyncpg.Connection] = []

    async def hold() -> None:
        async with lender.lend() as conn:
            lent.append(conn)
            await release.wait()

    holders = [asyncio.create_task(hold()) for _ in range(2)]
    waiter = asyncio.create_task(_backend(lender))
    await asyncio.sleep(0.2)
    await lender.close()
    with pytest.raises(LenderClosed):
        await waiter
    with pytest.raises(LenderClosed):
        await _backend(lender)
    release.set()
    await asyncio.gather(*holders)
    assert all(conn.is_closed() for conn in lent) and lender.open_connections == 0


def test_a_lender_needs_a_connection() -> None:
    async def connect() -> asyncpg.Connection:
        raise AssertionError

    with pytest.raises(ValueError, match="at least one"):
        ConnectionLender(connect, 0)
