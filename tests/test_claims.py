"""``SessionClaims`` in process, on PostgreSQL and Redis: a ``web`` and a ``worker`` Gateway in
one event loop (two App objects, one handler), so the worker's LISTEN connection can be cut from
the database side and its return watched."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

import gateway
from adapters.base import Inbound, PlatformUser
from gateway.claims import LISTENER_NAME
from gateway.runtime import Gateway
from gateway.testing import test_settings
from gateway.types import Message, SessionChannel
from tests.support import TextChannel, until

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


async def test_the_worker_listens_again_after_its_connection_is_cut(tmp_path, postgres_url, redis_url):
    outbound = TextChannel("collected")
    worker = Gateway(echo_app(), _settings(tmp_path, postgres_url, redis_url, "worker"), [outbound], role="worker")
    inbound = TextChannel("collected")
    web = Gateway(echo_app(), _settings(tmp_path, postgres_url, redis_url, "web"), [inbound], role="web")
    await worker.start()
    await web.start()
    try:
        assert outbound.roles == [("worker", False)] and inbound.roles == [("web", True)]
        user = await web.sessions.resolve_user(PlatformUser("collected", "u1"))
        record = await web.sessions.create(SessionChannel("collected"), user)

        async def say(key: str, text: str) -> str:
            await web.submit(Inbound("message", key, SessionChannel("collected"), PlatformUser("collected", "u1"),
                                     message=Message(text, "user", "collected"), session_id=record.id))
            return await asyncio.wait_for(outbound.replies.get(), 10)

        assert await say("k1", "before") == "echo: before"
        assert inbound.replies.empty()  # the web process ran no handler
        # This test's own listener: the connection runs in this test's database (other tests or
        # processes on the same server may be listening too).
        cut = await _admin(postgres_url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                         f"WHERE application_name = '{LISTENER_NAME}' AND datname = current_database()")
        assert [row[0] for row in cut] == [True]
        assert worker.claims is not None
        await until(lambda: not worker.claims.listening, timeout=10)
        await until(lambda: worker.claims.listening, timeout=10)
        # Heard through the new connection, well before the 30 s sweep.
        assert await say("k2", "after") == "echo: after"
    finally:
        await web.stop()
        await worker.stop()


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

    outbound = TextChannel("collected")
    worker = Gateway(app, _settings(tmp_path, postgres_url, redis_url, "worker"), [outbound], role="worker")
    inbound = TextChannel("collected")
    web = Gateway(app, _settings(tmp_path, postgres_url, redis_url, "web"), [inbound], role="web")
    await worker.start()
    await web.start()
    try:
        user = await web.sessions.resolve_user(PlatformUser("collected", "u1"))
        record = await web.sessions.create(SessionChannel("collected"), user)

        async def say(key: str, text: str) -> str:
            await web.submit(Inbound("message", key, SessionChannel("collected"), PlatformUser("collected", "u1"),
                                     message=Message(text, "user", "collected"), session_id=record.id))
            reply = await asyncio.wait_for(outbound.replies.get(), 10)
            assert worker.claims is not None
            await until(lambda: record.id not in worker.claims.held, timeout=10)  # released: the next one claims
            return reply

        assert await say("k1", "one") == "one: turn 1, history []"
        turn_statements.clear()
        assert await say("k2", "two") == "two: turn 2, history ['one', 'one: turn 1, history []']"
    finally:
        await web.stop()
        await worker.stop()
    context_reads = [s for s in turn_statements if "FROM sessions LEFT JOIN users" in s]
    assert len(context_reads) == 1, context_reads
    assert "INSERT INTO session_leases" in context_reads[0]  # the claim's own statement
