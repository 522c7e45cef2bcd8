"""Capsule's task API (issue 14.2): ``@app.task`` leaves its ``TaskDescriptor`` at ``app.<name>``,
and ``app.tasks`` is the runtime query over every task of the app (``get``, ``find``, ``count``,
``cancel``), in a real Gateway on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path

import pytest

import gateway
from gateway.tasks import TaskDescriptor, TaskQuery
from gateway.testing import TestClient
from tests.support import until

FAST = {"task_poll_seconds": 0.05, "leader_lease_seconds": 0.6}


def make_app(release: asyncio.Event) -> gateway.App:
    app = gateway.App("exports")

    @app.task(retries=1, timeout=30)
    async def export(session: gateway.Session, fmt: str) -> str:
        await session.reply(f"export as {fmt} ready")
        return f"done:{fmt}"

    @app.task
    async def wait_for_release(tag: str) -> str:
        await release.wait()
        return tag

    @app.message()
    async def handle(session: gateway.Session, msg: gateway.Message) -> None:
        # Capsule code reaches its tasks through the app: app.<name>.submit(...)
        handle = await app.export.submit(session=session, fmt=msg.text)
        await session.reply(f"queued {handle.task_name}")

    return app


def test_the_descriptor_is_left_on_the_app_and_app_tasks_is_the_query() -> None:
    app = make_app(asyncio.Event())
    assert isinstance(app.export, TaskDescriptor) and app.export.name == "export"
    assert callable(app.export.submit) and callable(app.export.schedule)
    assert isinstance(app.tasks, TaskQuery) and app.tasks is app.tasks
    assert sorted(app.task_descriptors) == ["export", "wait_for_release"]
    assert app.manifest()["tasks"] == ["export", "wait_for_release"]


async def test_app_tasks_before_start_says_the_app_is_not_running() -> None:
    app = make_app(asyncio.Event())
    with pytest.raises(RuntimeError, match="not running"):
        await app.tasks.get("x")
    with pytest.raises(RuntimeError, match="not running"):
        await app.export.submit(fmt="csv")


async def test_app_tasks_gets_finds_counts_and_cancels(tmp_path: Path, database_url: str) -> None:
    release = asyncio.Event()
    app = make_app(release)
    async with TestClient(app, tmp_path, database_url=database_url, scheduler=FAST) as client:
        conv = await client.conversation("alice")
        turn = await conv.send("csv")
        assert turn.replies == ["queued export"]
        [exported] = await until(lambda: app.tasks.find(status="completed"))
        assert exported.task_name == "export" and exported.kwargs == {"fmt": "csv"}
        assert exported.session_id == conv.session_id
        await until(lambda: any(s.text == "export as csv ready" for s in conv.sent))

        got = await app.tasks.get(exported.task_id)
        assert got is not None and got.task_id == exported.task_id and await got.status() == "completed"
        assert isinstance(got.created_at, str) and datetime.fromisoformat(got.created_at).tzinfo is not None
        assert datetime.fromisoformat(got.completed_at) >= datetime.fromisoformat(got.started_at)
        assert await app.tasks.get("no-such-task") is None

        waiting = [await app.wait_for_release.submit(tag=f"t{i}") for i in range(3)]
        assert waiting[0].session_id == ""  # Capsule: "" for a task without a session
        assert await app.tasks.count() == 4
        assert await app.tasks.count(status="completed") == 1
        assert await app.tasks.count(tag="t1") == 1  # keywords filter on the task's kwargs
        assert await app.tasks.count(session_id=conv.session_id) == 1
        assert await app.wait_for_release.count() == 3
        newest_first = await app.tasks.find(limit=2)
        assert [h.task_id for h in newest_first] == [waiting[2].task_id, waiting[1].task_id]
        assert [h.task_id for h in await app.tasks.find(limit=2, offset=2)] == [waiting[0].task_id,
                                                                                  exported.task_id]
        assert [h.kwargs for h in await app.tasks.find(tag="t0")] == [{"tag": "t0"}]

        assert await app.tasks.cancel(status="completed") == 0  # a finished task stays finished
        assert await app.tasks.cancel(tag="t0") == 1
        assert await waiting[0].status() == "cancelled"
        assert await app.tasks.cancel() == 2  # every open task
        assert {await h.status() for h in waiting} == {"cancelled"}
        assert await app.tasks.count(status="cancelled") == 3
        assert await app.tasks.cancel() == 0
