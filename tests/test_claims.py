"""``SessionClaims`` in process, on PostgreSQL and Redis: a ``web`` and a ``worker`` Gateway in
one event loop (two App objects, one handler), so the worker's LISTEN connection can be cut from
the database side and its return watched."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest

import gateway
from adapters.base import Inbound, PlatformUser
from gateway.claims import LISTENER_NAME
from gateway.runtime import Gateway
from gateway.testing import test_settings
from gateway.types import Message, SessionChannel
from tests.support import TextChannel, blocked_on_a_lock, holding_a_row, until

pytestmark = pytest.mark.postgres


def echo_app() -> gateway.App:
    app = gateway.App("echo")

    @app.message()
    async def echo(session: gateway.Session, msg: gateway.Message) -> None:
        await session.reply(f"echo: {msg.text}")

    return app


def _settings(tmp_path: Any, postgres_url: str, redis_url: str, port_name: str) -> Any:
    return test_settings(
        tmp_path / port_name,
        database={"url": postgres_url},
        redis={"url": redis_url},
        dispatch={"lease_ttl": 30.0},  # the sweep (every ttl) must not be what finds the work
        worker={"port": 0},
    )


async def _admin(postgres_url: str, sql: str) -> list[Any]:
    connection = await asyncpg.connect(postgres_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        return await connection.fetch(sql)
    finally:
        await connection.close()


@dataclass
class WebAndWorker:
    """A ``web`` and a ``worker`` Gateway of one app, and a session of user ``u1`` to talk in."""

    web: Gateway
    worker: Gateway
    inbound: TextChannel
    """The web process's channel: it receives events and runs no handler."""
    outbound: TextChannel
    """The worker's channel: the replies arrive on it."""
    session_id: str = ""

    async def say(self, key: str, text: str) -> str:
        """Submit a message through the web process; the worker's reply."""
        await self.web.submit(Inbound("message", key, SessionChannel("collected"), PlatformUser("collected", "u1"),
                                      message=Message(text, "user", "collected"), session_id=self.session_id))
        return await asyncio.wait_for(self.outbound.replies.get(), 10)


@contextlib.asynccontextmanager
async def web_and_worker(app: gateway.App, tmp_path: Any, postgres_url: str, redis_url: str
                         ) -> AsyncIterator[WebAndWorker]:
    outbound, inbound = TextChannel("collected"), TextChannel("collected")
    pair = WebAndWorker(
        Gateway(app, _settings(tmp_path, postgres_url, redis_url, "web"), [inbound], role="web"),
        Gateway(app, _settings(tmp_path, postgres_url, redis_url, "worker"), [outbound], role="worker"),
        inbound, outbound,
    )
    await pair.worker.start()
    await pair.web.start()
    try:
        user = await pair.web.sessions.resolve_user(PlatformUser("collected", "u1"))
        pair.session_id = (await pair.web.sessions.create(SessionChannel("collected"), user)).id
        yield pair
    finally:
        await pair.web.stop()
        await pair.worker.stop()


async def test_the_worker_listens_again_after_its_connection_is_cut(tmp_path, postgres_url, redis_url):
    async with web_and_worker(echo_app(), tmp_path, postgres_url, redis_url) as pair:
        assert pair.outbound.roles == [("worker", False)] and pair.inbound.roles == [("web", True)]
        assert await pair.say("k1", "before") == "echo: before"
        assert pair.inbound.replies.empty()  # the web process ran no handler
        # This test's own listener: the connection runs in this test's database (other tests or
        # processes on the same server may be listening too).
        cut = await _admin(postgres_url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                         f"WHERE application_name = '{LISTENER_NAME}' AND datname = current_database()")
        assert [row[0] for row in cut] == [True]
        claims = pair.worker.claims
        assert claims is not None
        await until(lambda: not claims.listening, timeout=10)
        await until(lambda: claims.listening, timeout=10)
        # Heard through the new connection, well before the 30 s sweep.
        assert await pair.say("k2", "after") == "echo: after"


async def test_a_workers_turn_reads_its_context_with_the_claim(tmp_path, postgres_url, redis_url, turn_statements):
    """A worker claiming an idle session reads what its turn reads (the session with its data, its
    user, its history) in the claim's round trip: the turn runs no read of its own, and sees what
    the last turn left."""
    app = gateway.App("counting")

    @app.message()
    async def count(session: gateway.Session, msg: gateway.Message) -> None:
        turns = session.data.get("turns", 0) + 1
        session.data["turns"] = turns
        history = [m.text for m in session.history]
        await session.reply(f"{msg.text}: turn {turns}, history {history}")

    async with web_and_worker(app, tmp_path, postgres_url, redis_url) as pair:
        claims = pair.worker.claims
        assert claims is not None

        async def say(key: str, text: str) -> str:
            reply = await pair.say(key, text)
            await until(lambda: pair.session_id not in claims.held, timeout=10)  # released: the next one claims
            return reply

        assert await say("k1", "one") == "one: turn 1, history []"
        turn_statements.clear()
        assert await say("k2", "two") == "two: turn 2, history ['one', 'one: turn 1, history []']"
    context_reads = [s for s in turn_statements if "FROM sessions LEFT JOIN users" in s]
    assert len(context_reads) == 1, context_reads
    assert "INSERT INTO session_leases" in context_reads[0]  # the claim's own statement


async def test_a_session_a_stopping_worker_claimed_goes_to_another_worker_at_once(tmp_path, postgres_url, redis_url):
    """A worker whose claim of a session completes after its SIGTERM runs none of its events and
    gives the lease back: the other workers are told, and one runs them at once, not at its next
    sweep (every lease ttl, 30 s here). The first worker's claim is held on the lease row's lock
    until the stop has begun; the second worker's claim waits behind it and finds it taken."""
    app = echo_app()
    settings = functools.partial(_settings, tmp_path, postgres_url, redis_url)
    on_b = TextChannel("collected")
    web = Gateway(app, settings("web"), [TextChannel("collected")], role="web")
    worker_a = Gateway(app, settings("worker-a"), [TextChannel("collected")], role="worker")
    worker_b = Gateway(app, settings("worker-b"), [on_b], role="worker")
    dsn = postgres_url.replace("postgresql+asyncpg://", "postgresql://")
    started: list[Gateway] = []
    stopping: asyncio.Task[None] | None = None
    locker = None
    try:
        for process in (worker_a, web):
            await process.start()
            started.append(process)
        user = await web.sessions.resolve_user(PlatformUser("collected", "u1"))
        session_id = (await web.sessions.create(SessionChannel("collected"), user)).id
        await _admin(postgres_url, f"INSERT INTO session_leases VALUES ('{session_id}', '', 1,"
                                   " now() - interval '1 second', '')")  # given back: claimable
        locker = await holding_a_row(dsn, "session_leases", "session_id", session_id)
        await web.submit(Inbound("message", "k1", SessionChannel("collected"), PlatformUser("collected", "u1"),
                                 message=Message("hi", "user", "collected"), session_id=session_id))
        await blocked_on_a_lock(dsn)  # worker A's claim
        await worker_b.start()  # its start-up sweep claims too, behind A
        started.append(worker_b)
        await blocked_on_a_lock(dsn, waiters=2)
        started.remove(worker_a)
        stopping = asyncio.create_task(worker_a.stop())
        await until(lambda: worker_a.dispatcher.closing, timeout=10)
        await locker.execute("COMMIT")  # A's claim takes the lease now, as it stops; B's finds it taken
        await asyncio.wait_for(stopping, 10)
        assert await asyncio.wait_for(on_b.replies.get(), 10) == "echo: hi"
    finally:
        if locker is not None:
            await locker.close()
        if stopping is not None:
            await asyncio.gather(stopping, return_exceptions=True)
        for process in reversed(started):
            await process.stop()
