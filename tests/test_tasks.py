"""``@app.task``: submit, results, retries with backoff, timeouts, cancel, locks, persistence
across a restart, session-bound replies and live task cards (through the in-process TestClient,
a real Gateway on a SQLite file)."""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path
from typing import Any

import pytest

import gateway
from gateway.context import current_session
from gateway.dispatch import UnknownSession
from gateway.tasks import TaskFailed, parse_duration
from gateway.testing import TestClient, test_settings
from tests.support import until

FAST = {
    "task_backoff_initial": 0.02,
    "task_backoff_max": 0.05,
    "task_backoff_jitter": 0.01,
    "task_poll_seconds": 0.05,
    "leader_lease_seconds": 0.6,
}


def client(app: gateway.App, tmp_path: Path, database_url: str | None = None, **scheduler: Any) -> TestClient:
    return TestClient(app, tmp_path, database_url=database_url, scheduler={**FAST, **scheduler})


async def test_submit_runs_and_returns_a_result(tmp_path: Path) -> None:
    app = gateway.App("tasks")
    seen: list[Any] = []

    @app.task
    async def add(a: int, b: int) -> int:
        seen.append(current_session())
        return a + b

    async with client(app, tmp_path):
        handle = await add.submit(a=2, b=3, display_name="sum")
        assert handle.task_name == "add" and handle.display_name == "sum" and handle.kwargs == {"a": 2, "b": 3}
        assert await handle.result(timeout=5) == 5
        assert await handle.status() == "completed"
        assert await add(1, 1) == 2  # awaiting the descriptor runs inline
        synthetic = seen[0]
        assert synthetic.id == "" and synthetic.user.id == "owner"
        found = await add.find(status="completed", a=2)
        assert [h.task_id for h in found] == [handle.task_id]
        assert await add.count(status="completed") == 1
        assert await add.count(a=99) == 0


async def test_session_bound_task_replies_as_standalone_messages(tmp_path: Path) -> None:
    app = gateway.App("tasks")

    @app.task
    async def report(session: gateway.Session, topic: str) -> None:
        await session.reply(f"report on {topic} is ready")
        session.data["reports"] = session.data.get("reports", 0) + 1

    @app.message()
    async def handle(session: gateway.Session, msg: gateway.Message) -> None:
        await report.submit(session=session, topic=msg.text)
        await session.reply("working on it")

    async with client(app, tmp_path) as tc:
        conversation = await tc.conversation(channel="telegram")
        turn = await conversation.send("sales")
        assert turn.replies == ["working on it"]
        await until(lambda: any(s.text == "report on sales is ready" for s in conversation.sent))
        record = await tc.gateway.store.sessions.get(conversation.session_id)
        await until(lambda: tc.gateway.store.sessions.get(conversation.session_id))
        records, _ = await tc.gateway.store.messages.page(conversation.session_id)
        assert [r.text for r in records if r.role == "assistant"] == ["working on it", "report on sales is ready"]
        record = await until(_data_has(tc, conversation.session_id, "reports"))
        assert record.data["reports"] == 1


def _data_has(tc: TestClient, session_id: str, key: str) -> Any:
    async def check() -> Any:
        record = await tc.gateway.store.sessions.get(session_id)
        return record if record and key in record.data else None

    return check


async def test_retries_with_backoff_then_success(tmp_path: Path, database_url: str) -> None:
    app = gateway.App("tasks")
    attempts: list[float] = []

    @app.task(retries=3)
    async def flaky() -> str:
        attempts.append(time.monotonic())
        if len(attempts) < 3:
            raise ConnectionError("upstream down")
        return "ok"

    async with client(app, tmp_path, database_url):
        handle = await flaky.submit()
        assert await handle.result(timeout=5) == "ok"
        await handle.status()
        assert handle.attempts == 3
        assert len(attempts) == 3
        gaps = [b - a for a, b in itertools.pairwise(attempts)]
        assert all(gap >= 0.02 for gap in gaps)  # waited out the backoff


async def test_retries_exhausted_and_retry_for_exact_match(tmp_path: Path) -> None:
    app = gateway.App("tasks")
    calls = {"always": 0, "picky": 0}

    @app.task(retries=2)
    async def always() -> None:
        calls["always"] += 1
        raise RuntimeError("nope")

    @app.task(retries=5, retry_for=[KeyError])
    async def picky() -> None:
        calls["picky"] += 1
        raise LookupError("a parent of KeyError does not qualify")

    async with client(app, tmp_path):
        first, second = await always.submit(), await picky.submit()
        with pytest.raises(TaskFailed) as failed:
            await first.result(timeout=5)
        assert failed.value.status == "failed" and failed.value.error == "RuntimeError: nope"
        assert calls["always"] == 3
        assert await second.wait(timeout=5) == "failed"
        assert calls["picky"] == 1


async def test_timeout_retried_then_marked(tmp_path: Path) -> None:
    app = gateway.App("tasks")
    started: list[int] = []

    @app.task(timeout=0.1, retries=1)
    async def slow() -> None:
        started.append(1)
        await asyncio.sleep(5)

    @app.task(timeout=0.5)
    async def own_timeout_error() -> None:
        raise TimeoutError("the task's own timeout is a failure, not ours")

    async with client(app, tmp_path):
        handle = await slow.submit()
        began = time.monotonic()
        assert await handle.wait(timeout=5) == "timeout"
        assert time.monotonic() - began < 2
        assert len(started) == 2
        assert await (await own_timeout_error.submit()).wait(timeout=5) == "failed"


async def test_refresh_extends_the_timeout(tmp_path: Path) -> None:
    app = gateway.App("tasks")
    handles: list[Any] = []

    @app.task(timeout=1.0)
    async def long_job() -> str:
        for _ in range(4):
            await asyncio.sleep(0.4)  # 0.6 s short of the timeout each time: a loaded machine is fine
            await handles[0].refresh()
        return "done"

    async with client(app, tmp_path):
        handles.append(await long_job.submit())
        assert await handles[0].result(timeout=10) == "done"  # 1.6 s in all, past the 1 s timeout


async def test_cancel_pending_and_running(tmp_path: Path) -> None:
    app = gateway.App("tasks")
    cancelled = asyncio.Event()
    running = asyncio.Event()

    @app.task
    async def later() -> None:
        raise AssertionError("a cancelled task must not run")

    @app.task
    async def busy() -> None:
        running.set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async with client(app, tmp_path):
        scheduled = await later.schedule("1h", display_name="in an hour")
        assert await scheduled.status() == "scheduled"
        assert await scheduled.cancel() is True
        assert await scheduled.status() == "cancelled"
        assert await scheduled.cancel() is False  # already finished
        handle = await busy.submit()
        await asyncio.wait_for(running.wait(), 5)
        assert await handle.cancel() is True
        await asyncio.wait_for(cancelled.wait(), 5)
        assert await handle.wait(timeout=5) == "cancelled"
        # cancel by filter
        await later.schedule("1h", who="a")
        await later.schedule("1h", who="b")
        assert await later.cancel(who="a") == 1
        assert await later.count(status="scheduled") == 1


async def test_lock_template_serialises_tasks_with_the_same_key(tmp_path: Path, database_url: str) -> None:
    app = gateway.App("tasks")
    active: dict[str, int] = {}
    overlap: list[str] = []
    log: list[tuple[str, str]] = []

    @app.task(lock="user:{user_id}")
    async def sync_user(user_id: str, n: int) -> None:
        active[user_id] = active.get(user_id, 0) + 1
        if active[user_id] > 1:
            overlap.append(user_id)
        log.append((user_id, "start"))
        await asyncio.sleep(0.05)
        active[user_id] -= 1

    async with client(app, tmp_path, database_url):
        handles = [await sync_user.submit(user_id=u, n=i) for i in range(3) for u in ("a", "b")]
        for handle in handles:
            assert await handle.wait(timeout=10) == "completed"
        assert overlap == []
        with pytest.raises(ValueError, match="needs kwarg"):
            await sync_user.submit(n=1)


async def test_bad_submissions_are_refused_clearly(tmp_path: Path) -> None:
    app = gateway.App("tasks")

    @app.task
    async def job(value: Any = None) -> None:
        return None

    with pytest.raises(RuntimeError, match="not running"):
        await job.submit()
    with pytest.raises(TypeError, match="unexpected keyword argument 'retry'"):
        app.task(retry=3)  # Capsule's signature: an unknown option is a TypeError naming it
    async with client(app, tmp_path):
        with pytest.raises(TypeError, match="JSON-native"):
            await job.submit(value=object())
        with pytest.raises(UnknownSession):
            await job.submit(session="no-such-session")
        with pytest.raises(ValueError, match="not a duration"):
            await job.schedule("soon")


def test_durations() -> None:
    assert parse_duration("5s") == 5 and parse_duration("30m") == 1800
    assert parse_duration("1h") == 3600 and parse_duration("3d") == 259200 and parse_duration(2.5) == 2.5


async def test_recurring_schedule_requeues(tmp_path: Path) -> None:
    app = gateway.App("tasks")
    runs: list[float] = []

    @app.task
    async def tick() -> None:
        runs.append(time.monotonic())

    async with client(app, tmp_path):
        first = await tick.schedule("every 0.1s")
        await until(lambda: len(runs) >= 3)
        assert await first.status() == "completed"
        assert await tick.count(status=["scheduled", "pending", "running"]) == 1  # the next one is queued


async def test_restart_resumes_queued_and_marks_interrupted(tmp_path: Path, database_url: str) -> None:
    app = gateway.App("tasks")
    started = asyncio.Event()
    runs: dict[str, int] = {"fragile": 0, "sturdy": 0, "queued": 0}

    @app.task(retries=1)
    async def sturdy() -> str:
        runs["sturdy"] += 1
        if runs["sturdy"] == 1:
            started.set()
            await asyncio.sleep(30)
        return "second attempt"

    @app.task
    async def fragile() -> None:
        runs["fragile"] += 1
        await asyncio.sleep(30)

    @app.task
    async def queued() -> str:
        runs["queued"] += 1
        return "resumed"

    async with client(app, tmp_path, database_url) as tc:
        interrupted_once = await sturdy.submit()
        await asyncio.wait_for(started.wait(), 5)
        no_retries = await fragile.submit()
        await until(lambda: runs["fragile"] == 1)
        later = await queued.schedule(delay=0.5)
        await tc.gateway.stop()  # the running attempts are cut off; the queued task waits
        tc.gateway = type(tc.gateway)(app, tc.settings, adapters=tc.gateway._adapters)
        await tc.gateway.start()
        service = tc.gateway.tasks
        interrupted_once, no_retries, later = [
            await service.handle(h.task_id) for h in (interrupted_once, no_retries, later)
        ]
        assert await interrupted_once.result(timeout=5) == "second attempt"
        assert await no_retries.wait(timeout=5) == "failed"
        assert no_retries.error and no_retries.error.startswith("interrupted")
        assert await later.result(timeout=5) == "resumed"
        assert runs == {"fragile": 1, "sturdy": 2, "queued": 1}


@pytest.mark.parametrize("channel", ["chat", "telegram", "slack"])
async def test_live_task_card_updates_in_place(tmp_path: Path, channel: str) -> None:
    app = gateway.App("tasks")
    release = asyncio.Event()

    @app.task(retries=1)
    async def export(session: gateway.Session, rows: int) -> dict[str, int]:
        await release.wait()
        if not session.data.get("failed_once"):
            session.data["failed_once"] = True
            raise ConnectionError("storage hiccup")
        await session.reply(f"exported {rows} rows")
        return {"rows": rows}

    @app.message()
    async def handle(session: gateway.Session, msg: gateway.Message) -> None:
        handle = await export.submit(session=session, rows=int(msg.text))
        await session.show_task(handle, message="Exporting…")

    async with client(app, tmp_path) as tc:
        conversation = await tc.conversation(channel=channel)
        turn = await conversation.send("42")
        card = turn.block("task_card")
        task_id = card["payload"]["task_id"]
        assert card["id"] == f"task_{task_id}" and card["payload"]["message"] == "Exporting…"
        assert card["payload"]["status"] in ("pending", "running")
        release.set()

        def statuses() -> list[str]:
            return [s.block["payload"]["status"] for s in conversation.sent
                    if s.kind == "block" and s.block and s.block["id"] == f"task_{task_id}"]

        await until(lambda: statuses() and statuses()[-1] == "completed")
        seen = statuses()
        assert "retry" in seen and seen.index("retry") < len(seen) - 1
        final = [s.block for s in conversation.sent if s.kind == "block" and s.block][-1]
        assert final["payload"]["result"] == {"rows": 42} and final["payload"]["attempts"] == 2
        assert final["payload"]["message"] == "Exporting…"
        assert any(s.text == "exported 42 rows" for s in conversation.sent)
        # one stored block, updated in place
        records, _ = await tc.gateway.store.messages.page(conversation.session_id)
        cards = [r for r in records if r.role == "block" and r.block and r.block["id"] == f"task_{task_id}"]
        assert len(cards) == 1 and cards[0].block["payload"]["status"] == "completed"


# -- live task cards on the real adapters ------------------------------------------------------


def card_app(release: asyncio.Event) -> gateway.App:
    """A handler that starts a task and shows its card; the task fails once, then succeeds."""
    app = gateway.App("cards")

    @app.task(retries=1, backoff=(0.02, 0.05))
    async def export(session: gateway.Session, rows: int) -> dict[str, int]:
        await release.wait()
        if not session.data.get("failed_once"):
            session.data["failed_once"] = True
            raise ConnectionError("storage hiccup")
        await session.reply(f"exported {rows} rows")
        return {"rows": rows}

    @app.message()
    async def handle(session: gateway.Session, msg: gateway.Message) -> None:
        handle = await export.submit(session=session, rows=int(msg.text.strip() or 0))
        await session.show_task(handle, message="Exporting…")

    return app


async def test_live_task_card_on_the_web_socket(tmp_path: Path) -> None:
    import aiohttp

    from adapters.web.testing import base_url, running_gateway

    release = asyncio.Event()
    async with running_gateway(card_app(release), tmp_path, scheduler=FAST) as gw, aiohttp.ClientSession() as http:
        ws = await http.ws_connect(f"{base_url(gw)}/ws")
        await ws.send_json({"type": "hello", "id": "h1"})
        cards: list[dict[str, Any]] = []
        texts: list[str] = []

        async def read_until(predicate: Any) -> None:
            async with asyncio.timeout(5):
                while not predicate():
                    frame = await ws.receive_json()
                    if frame["type"] == "block" and frame["block"]["type"] == "task_card":
                        cards.append(frame["block"])
                    elif frame["type"] == "message" and frame["message"]["role"] == "assistant":
                        texts.append(frame["message"]["text"])

        await ws.send_json({"type": "message", "id": "m1", "text": "7"})
        await read_until(lambda: cards)
        release.set()
        await read_until(lambda: cards[-1]["payload"]["status"] == "completed" and texts)
        assert len({c["id"] for c in cards}) == 1  # one card, re-shown in place
        assert [c["payload"]["status"] for c in cards][-2:] == ["running", "completed"]
        assert "retry" in [c["payload"]["status"] for c in cards]
        assert cards[-1]["payload"]["result"] == {"rows": 7} and cards[-1]["payload"]["message"] == "Exporting…"
        assert texts == ["exported 7 rows"]
        await ws.close()


async def test_live_task_card_on_telegram_edits_one_message(tmp_path: Path) -> None:
    from gateway.runtime import Gateway
    from tests.fakes.telegram_api import FakeTelegramAPI

    release = asyncio.Event()
    chat = 5001
    async with FakeTelegramAPI(rate_scale=0.05) as api:
        settings = test_settings(tmp_path, scheduler={**FAST, "enabled": False}, telegram=api.settings(rate_scale=0.05))
        gw = Gateway(card_app(release), settings)
        await gw.start()
        try:
            api.send_text(chat, "12")
            card = await until(lambda: next((m for m in api.visible(chat) if "Exporting" in m.text), None))
            release.set()
            await until(lambda: "exported 12 rows" in api.visible_texts(chat) and "completed" in card.text)
        finally:
            await gw.stop()
        texts = api.visible_texts(chat)
        assert len([t for t in texts if "Exporting" in t]) == 1  # the card is one message, edited
        assert texts[-1] == "exported 12 rows"
        edits = [c for c in api.calls_to("editMessageText", ok=True)
                 if str(c.params.get("message_id")) == str(card.message_id)]
        # The card went from its first render to "completed" by editing that message; how many of
        # the states in between (retry, running) get an edit of their own depends on how fast
        # they follow each other against the chat's edit budget (under load they coalesce).
        assert edits and "completed" in edits[-1].params["text"]
        assert api.rate_limited == []


async def test_live_task_card_on_slack_updates_one_message(tmp_path: Path) -> None:
    from tests.fakes.slack_api import FakeSlack, SlackGateway

    release = asyncio.Event()
    async with FakeSlack(time_scale=0.01) as slack:
        slack.add_user("U1", email="ada@example.com")
        async with SlackGateway(card_app(release), tmp_path, slack, dm_sessions="per_dm") as gw:
            event = {"type": "message", "channel": "D1", "channel_type": "im", "user": "U1", "text": "3",
                     "ts": "100.000001"}
            await slack.deliver_event(gw.events_url, event, event_id="Ev1")

            def card() -> Any:
                return next((m for m in slack.thread("D1", None) if "Exporting" in m.visible_text), None)

            await until(card)
            release.set()
            await until(lambda: "completed" in card().visible_text
                        and any("exported 3 rows" in m.visible_text for m in slack.thread("D1", None)))
        assert card().edits >= 2  # one message, updated in place
        assert card().visible_text.startswith(":white_check_mark: *export* — completed")
        assert len([m for m in slack.thread("D1", None) if "Exporting" in m.visible_text]) == 1
        assert slack.rate_limited_calls() == []


# -- several worker processes on one database --------------------------------------------------


def worker_app(name: str, runs: list[tuple[str, int]], hold: dict[str, asyncio.Event]) -> gateway.App:
    """The same app as a second gateway process would load it."""
    app = gateway.App("workers")

    @app.task
    async def job(n: int) -> str:
        runs.append((name, n))
        await hold["release"].wait()  # a worker holds at most task_concurrency: the other must help
        return f"{n} by {name}"

    @app.task(retries=1)
    async def long_job(tag: str) -> str:
        runs.append((name, -1))
        if len([r for r in runs if r[1] == -1]) == 1:
            hold["started"].set()
            await asyncio.sleep(30)  # the first attempt is cut off by its worker's stop
        return f"{tag} finished by {name}"

    @app.task
    async def endless() -> None:
        hold["endless"].set()
        await asyncio.sleep(30)

    return app


async def test_two_workers_run_each_task_once_cancel_across_and_recover_a_stopped_worker(
    tmp_path: Path, database_url: str
) -> None:
    runs: list[tuple[str, int]] = []
    hold = {"started": asyncio.Event(), "endless": asyncio.Event(), "release": asyncio.Event()}
    # a 3 s worker lease (heartbeat every second): a loaded machine's stall must not make one
    # worker take the other for dead and mark its running tasks interrupted
    options = {"task_concurrency": 4, "leader_lease_seconds": 3.0}
    a = client(worker_app("a", runs, hold), tmp_path / "a", database_url, **options)
    b = client(worker_app("b", runs, hold), tmp_path / "b", database_url, **options)
    async with a, b:
        service_a, service_b = a.gateway.tasks, b.gateway.tasks
        descriptor = a.gateway.app.task_descriptors["job"]
        handles = [await descriptor.submit(n=n) for n in range(40)]
        await until(lambda: {who for who, _ in runs} == {"a", "b"})
        hold["release"].set()
        results = [await (await service_b.handle(h.task_id)).result(timeout=10) for h in handles]
        assert sorted(n for _, n in runs) == list(range(40))  # every task ran exactly once
        assert results == [f"{n} by {who}" for who, n in sorted(runs, key=lambda r: r[1])]

        # a task running in one process is cancelled from the other within a heartbeat
        endless = await a.gateway.app.task_descriptors["endless"].submit()
        await asyncio.wait_for(hold["endless"].wait(), 5)
        row = await service_a.queries.get(endless.task_id)
        assert row is not None and row.worker in (service_a.worker_id, service_b.worker_id)
        elsewhere = service_b if row.worker == service_a.worker_id else service_a
        assert await (await elsewhere.handle(endless.task_id)).cancel() is True
        runner = service_a if elsewhere is service_b else service_b
        await until(lambda: endless.task_id not in runner._running, timeout=5)
        assert await endless.wait(timeout=5) == "cancelled"

        # the worker running a task stops: the other marks it interrupted and runs it again
        runs.clear()
        first = await a.gateway.app.task_descriptors["long_job"].submit(tag="t1")
        await asyncio.wait_for(hold["started"].wait(), 5)
        row = await service_a.queries.get(first.task_id)
        assert row is not None
        stopping, surviving = (a, b) if row.worker == service_a.worker_id else (b, a)
        await stopping.gateway.stop()
        stopping.gateway.stop = _already_stopped  # type: ignore[method-assign]
        survivor_name = "b" if surviving is b else "a"
        handle = await surviving.gateway.tasks.handle(first.task_id)
        assert handle is not None
        assert await handle.result(timeout=10) == f"t1 finished by {survivor_name}"
        assert handle.attempts == 2
        assert runs[-1] == (survivor_name, -1)


async def _already_stopped() -> None:
    return None


async def test_a_card_shown_as_its_task_changes_ends_up_current(tmp_path: Path) -> None:
    """``show_task`` reads the task, then shows the card: a change in between (here a cancel)
    must not leave the card showing the status it read."""
    app = gateway.App("tasks")

    @app.task
    async def later() -> None:
        return None

    async with client(app, tmp_path) as tc:
        conversation = await tc.conversation(channel="telegram")
        handle = await later.schedule("1h")
        service = tc.gateway.tasks
        session = await tc.gateway.sessions.open(conversation.session_id)
        block_id = f"task_{handle.task_id}"
        # show_task's steps, with the task cancelled between reading the card and showing it
        await service.watch_card(handle.task_id, session.id, "Later…")
        fields = await service.card_fields(handle.task_id)
        assert fields["status"] == "scheduled"
        assert await handle.cancel() is True
        await session.show(gateway.Block("task_card", {"task_id": handle.task_id, "message": "Later…", **fields},
                                         id=block_id))

        def last_card() -> dict[str, Any] | None:
            cards = [s.block for s in conversation.sent if s.kind == "block" and s.block and s.block["id"] == block_id]
            return cards[-1]["payload"] if cards else None

        await until(lambda: (last_card() or {}).get("status") == "cancelled")
        card = last_card()
        assert card is not None and card["message"] == "Later…" and card["task_id"] == handle.task_id
        stored = await tc.gateway.store.messages.block(session.id, block_id)
        assert stored is not None and stored["payload"]["status"] == "cancelled"


async def test_callback_url_is_told_how_each_task_ended(tmp_path: Path) -> None:
    """Capsule's ``callback_url``: a POST of ``{task_id, status, duration, error}`` once a task
    finished (a real HTTP server on a loopback port)."""
    from aiohttp import web

    received: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.Response(status=204)

    site_app = web.Application()
    site_app.router.add_post("/done", hook)
    runner = web.AppRunner(site_app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        app = gateway.App("tasks")

        @app.task(callback_url=f"http://127.0.0.1:{port}/done")
        async def reported(fail: bool) -> str:
            if fail:
                raise ValueError("bad input")
            return "fine"

        async with client(app, tmp_path):
            good, bad = await reported.submit(fail=False), await reported.submit(fail=True)
            assert await good.wait(timeout=5) == "completed" and await bad.wait(timeout=5) == "failed"
            await until(lambda: len(received) == 2)
    finally:
        await runner.cleanup()
    by_id = {body["task_id"]: body for body in received}
    assert by_id[good.task_id]["status"] == "completed" and by_id[good.task_id]["error"] is None
    assert by_id[bad.task_id]["status"] == "failed" and by_id[bad.task_id]["error"] == "ValueError: bad input"
    assert all(isinstance(body["duration"], float) and body["duration"] >= 0 for body in received)


async def test_a_recurring_task_interrupted_by_a_restart_keeps_recurring(tmp_path: Path, database_url: str) -> None:
    """The interrupted run is marked failed (no retries left), and the next run is still queued:
    a crash mid-run must not end a recurring task's schedule."""
    app = gateway.App("tasks")
    started = asyncio.Event()
    runs: list[int] = []

    @app.task
    async def nightly() -> str:
        runs.append(1)
        if len(runs) == 1:
            started.set()
            await asyncio.sleep(30)  # cut off by the stop
        return "ran"

    async with client(app, tmp_path, database_url) as tc:
        first = await nightly.schedule("every 0.2s")
        await asyncio.wait_for(started.wait(), 5)
        await tc.gateway.stop()
        tc.gateway = type(tc.gateway)(app, tc.settings, adapters=tc.gateway._adapters)
        await tc.gateway.start()
        interrupted = await tc.gateway.tasks.handle(first.task_id)
        assert interrupted is not None
        assert await interrupted.wait(timeout=5) == "failed"
        assert interrupted.error is not None and interrupted.error.startswith("interrupted")
        await until(lambda: len(runs) >= 2)  # the schedule goes on
        await until(lambda: nightly.count(status="completed"))
        assert await nightly.count(status=["scheduled", "pending", "running"]) == 1


async def test_tasks_waiting_for_a_busy_lock_do_not_hold_up_other_keys(tmp_path: Path) -> None:
    app = gateway.App("tasks")
    release = asyncio.Event()
    done: list[str] = []

    @app.task(lock="user:{user}")
    async def sync_user(user: str, n: int) -> None:
        if user == "a":
            await release.wait()
        done.append(f"{user}{n}")

    async with client(app, tmp_path, task_concurrency=2):
        queued = [await sync_user.submit(user="a", n=n) for n in range(8)]
        other = await sync_user.submit(user="b", n=0)
        assert await other.wait(timeout=5) == "completed"  # while "a" holds its lock
        assert done == ["b0"]
        release.set()
        for handle in queued:
            assert await handle.wait(timeout=10) == "completed"
        assert sorted(done[1:]) == [f"a{n}" for n in range(8)]


async def test_backoff_grows_exponentially_to_its_cap_and_waits_in_the_table(tmp_path: Path) -> None:
    """tenacity's exponential backoff (no jitter here): 10 s, 20 s, then the 25 s cap, each kept
    as the row's ``run_at`` (not in memory); the test moves ``run_at`` instead of waiting."""
    from sqlalchemy import update
    from sqlmodel import col

    from gateway.store.tables import utcnow
    from gateway.store.task_tables import TaskRow, as_utc

    app = gateway.App("tasks")
    attempts: list[int] = []

    @app.task(retries=3, backoff=(10, 25))
    async def stubborn() -> None:
        attempts.append(1)
        raise ConnectionError("still down")

    async with client(app, tmp_path, task_backoff_jitter=0) as tc:
        service = tc.gateway.tasks
        handle = await stubborn.submit()
        waits = []
        for attempt in (1, 2, 3):
            row = await until(_row_in(service, handle.task_id, "retry", attempt))
            waits.append(round((as_utc(row.run_at) - as_utc(row.updated_at)).total_seconds()))
            assert len(attempts) == attempt  # nothing ran early
            async with tc.gateway.store.write() as db:  # the clock moves on to the next attempt
                await db.exec(update(TaskRow).where(col(TaskRow.id) == handle.task_id).values(run_at=utcnow()))
            service._wake.set()
        assert waits == [10, 20, 25]
        assert await handle.wait(timeout=5) == "failed" and len(attempts) == 4


def _row_in(service: Any, task_id: str, status: str, attempts: int) -> Any:
    async def check() -> Any:
        row = await service.queries.get(task_id)
        return row if row is not None and row.status == status and row.attempts == attempts else None

    return check
