"""Small helpers shared by the test modules."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any, ClassVar

from adapters.base import Adapter, Capabilities, Limits, SessionChannel
from gateway.config import settings_class

ShippedSettings = settings_class(distribution="chatgate")
"""Every option chatgate ships (the core's and its own adapters' sections): what
config.example.toml documents. Third-party adapters installed for the tests are left out."""


async def blocked_on_a_lock(dsn: str, timeout: float = 10.0, *, waiters: int = 1) -> None:
    """Until ``waiters`` backends of the PostgreSQL database ``dsn`` wait for a lock (a row lock a
    test holds from another connection). Asked on a connection of its own: a transaction sees
    ``pg_stat_activity`` as it was when it first read it."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + timeout
        while await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ) < waiters:
            assert time.monotonic() < deadline, "nothing waited for the lock held"
            await asyncio.sleep(0.01)
    finally:
        await conn.close()


async def holding_a_row(dsn: str, table: str, key_column: str, key: str, lock: str = "FOR UPDATE") -> Any:
    """A connection in a transaction that holds the row of ``table`` whose ``key_column`` is
    ``key`` under ``lock``: ``ROLLBACK`` and close it to let go."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    await conn.execute("BEGIN")
    await conn.execute(f"SELECT 1 FROM {table} WHERE {key_column} = $1 {lock}", key)
    return conn


async def lockable_now(dsn: str, table: str, key_column: str, key: str) -> bool:
    """Whether that row can be locked (``FOR NO KEY UPDATE``) at once: nobody holds it."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            await conn.execute(f"SELECT 1 FROM {table} WHERE {key_column} = $1 FOR NO KEY UPDATE NOWAIT", key)
        return True
    except asyncpg.LockNotAvailableError:
        return False
    finally:
        await conn.close()


async def until(predicate: Callable[[], Any], timeout: float = 5.0) -> Any:
    """Poll ``predicate`` until it returns something truthy (returned), or fail after ``timeout``.

    For conditions that live in another process or a fake server with no event to wait on."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if inspect.isawaitable(value):  # an async check (a store query)
            value = await value
        if value:
            return value
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


class TextChannel(Adapter):
    """A channel whose outbox takes text only, for tests that drive a real Gateway directly: every
    reply is kept in order (``texts``) and queued to wait on (``replies``); ``ended`` is set when
    a turn ends; ``roles`` records the gateway role each start saw."""

    limits: ClassVar[Limits] = Limits(max_text=4096)
    capabilities: ClassVar[Capabilities] = Capabilities()

    def __init__(self, channel_type: str) -> None:
        self.channel_types = (channel_type,)
        self.texts: list[str] = []
        self.replies: asyncio.Queue[str] = asyncio.Queue()
        self.ended = asyncio.Event()
        self.roles: list[tuple[str, bool]] = []

    async def start(self, gateway: Any) -> None:
        self.roles.append((gateway.role, gateway.inbound))

    async def stop(self) -> None:
        return None

    def outbox(self, channel: SessionChannel, session_id: str, turn: str | None = None) -> Any:
        channel_ = self

        class Outbox:
            async def send_text(self, message_id: str, text: str) -> list[str]:
                channel_.texts.append(text)
                channel_.replies.put_nowait(text)
                return [message_id]

            async def end_turn(self, inbound_id: str | None, error: str | None) -> None:
                channel_.ended.set()

        return Outbox()
