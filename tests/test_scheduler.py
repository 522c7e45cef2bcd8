"""``@app.schedule``: cron, interval and one-off triggers on APScheduler with the SQLAlchemy job
store, the synthetic owner session, overlap skipping, misfires and coalescing across a restart,
one firing per tick across two gateways on one database, and jobs that talk to real sessions.

The clock is controlled, not waited for: a cron job is made due "now" by setting its stored next
run time (the scheduler then computes the following tick from the cron trigger), and triggers
are checked against fixed instants. Nothing sleeps for more than a fraction of a second.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.triggers.cron import CronTrigger
from sqlalchemy import create_engine

import gateway
from gateway.context import current_session
from gateway.inbound import PlatformUser
from gateway.scheduler import (
    JOB_PREFIX,
    JOB_TABLE,
    cron_weekdays,
    open_conversation,
    plan_job,
    sync_database_url,
)
from gateway.testing import TestClient
from gateway.types import SessionChannel
from tests.support import until

FAST = {"enabled": True, "leader_lease_seconds": 0.6, "task_poll_seconds": 0.05}


def client(app: gateway.App, tmp_path: Path, database_url: str | None = None, **scheduler: Any) -> TestClient:
    return TestClient(app, tmp_path, database_url=database_url, scheduler={**FAST, **scheduler})


async def fire_soon(tc: TestClient, name: str, delay: float = 0.05) -> datetime:
    """Make schedule ``name`` due ``delay`` seconds from now (the controllable clock)."""
    when = datetime.now(UTC) + timedelta(seconds=delay)
    await tc.gateway.scheduler.reschedule(name, when)
    return when


def stored_job_store(database_url: str) -> SQLAlchemyJobStore:
    """The job store as a second process (or an operator) sees it, with the gateway stopped."""
    url = sync_database_url(database_url)
    assert url is not None
    return SQLAlchemyJobStore(engine=create_engine(url), tablename=JOB_TABLE)


# -- triggers ------------------------------------------------------------------------------


async def test_cron_trigger_in_the_configured_timezone_and_its_next_tick(tmp_path: Path) -> None:
    app = gateway.App("cron")
    ran: list[datetime] = []

    @app.schedule("30 9 * * 1-5")
    async def weekday_digest() -> None:
        ran.append(datetime.now(UTC))

    async with client(app, tmp_path, timezone="Europe/Berlin") as tc:
        service = tc.gateway.scheduler
        assert service.leading
        job = await service.scheduler.io(service.scheduler.get_job, JOB_PREFIX + "weekday_digest")
        assert isinstance(job.trigger, CronTrigger) and str(job.trigger.timezone) == "Europe/Berlin"
        berlin = ZoneInfo("Europe/Berlin")
        # fixed instants: Friday 10:00 Berlin -> Monday 09:30 Berlin (a weekend skipped; DST-aware)
        friday = datetime(2026, 3, 27, 10, 0, tzinfo=berlin)
        assert job.trigger.get_next_fire_time(None, friday) == datetime(2026, 3, 30, 9, 30, tzinfo=berlin)
        assert app.weekday_digest is weekday_digest  # Capsule keeps schedules as App attributes
        # make it due now: it runs once, and the scheduler computes the next tick from the cron
        await fire_soon(tc, "weekday_digest")
        await until(lambda: ran)
        await until(lambda: service.runs["weekday_digest"] == 1)
        following = job.trigger.get_next_fire_time(None, datetime.now(berlin))
        assert await service.next_run_time("weekday_digest") == following
        await asyncio.sleep(0.2)
        assert len(ran) == 1


async def test_interval_and_one_off_triggers(tmp_path: Path, database_url: str) -> None:
    app = gateway.App("triggers")
    ticks: list[float] = []
    once: list[float] = []

    @app.schedule(every=0.1)
    async def heartbeat() -> None:
        ticks.append(time.monotonic())

    @app.schedule(at=datetime.now(UTC) + timedelta(seconds=0.3))
    async def launch() -> None:
        once.append(time.monotonic())

    async with client(app, tmp_path, database_url) as tc:
        await until(lambda: len(ticks) >= 3 and once)
        assert await tc.gateway.scheduler.next_run_time("launch") is None  # a one-off removes itself
        await asyncio.sleep(0.25)
        assert len(once) == 1
        # the ticks that ran are 0.1 s apart on the trigger's grid (their fences record the
        # scheduled times, so a busy machine running one late cannot make this fail)
        run_times = sorted(f.run_time for f in await _fences(tc, "heartbeat"))
        assert len(run_times) >= 3
        gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(run_times)]
        assert all(gap >= 0.0999 for gap in gaps), gaps
    ticks_before = len(ticks)
    async with client(app, tmp_path, database_url):  # a restart does not run the one-off again
        await until(lambda: len(ticks) > ticks_before)
        await asyncio.sleep(0.2)
    assert len(once) == 1


async def _fences(tc: TestClient, name: str) -> list[Any]:
    from sqlmodel import select

    from gateway.store.task_tables import ScheduleRunRow

    async with tc.gateway.store.session() as db:
        return list((await db.exec(select(ScheduleRunRow).where(ScheduleRunRow.job_id == JOB_PREFIX + name))).all())


def test_bad_schedules_are_refused_clearly() -> None:
    from gateway.config import SchedulerSettings

    settings = SchedulerSettings()
    app = gateway.App("bad")
    with pytest.raises(ValueError, match="needs a cron string"):
        app.schedule()

    def plan(*args: Any, **options: Any) -> Any:
        @app.schedule(*args, **options)
        async def job() -> None:
            return None

        return plan_job(app.schedules[-1], settings)

    with pytest.raises(ValueError, match="5-field"):
        plan("*/5 * * *")
    with pytest.raises(ValueError, match="bad cron"):
        plan("61 * * * *")
    with pytest.raises(ValueError, match="bad cron"):
        plan("0 9 * * 8")
    with pytest.raises(ValueError, match="unknown timezone"):
        plan("* * * * *", timezone="Mars/Olympus")
    with pytest.raises(ValueError, match="unknown options"):
        plan("* * * * *", jitter=3)
    with pytest.raises(ValueError, match="at= takes a datetime"):
        plan(at="tomorrow")
    for grace in (None, 0, -5, "60", True):
        with pytest.raises(ValueError, match="misfire_grace= takes a number"):
            plan("* * * * *", misfire_grace=grace)
    with pytest.raises(ValueError, match="coalesce= takes True or False"):
        plan("* * * * *", coalesce="no")
    assert plan("* * * * *", misfire_grace=90, coalesce=False).misfire_grace == 90
    assert plan("*/5 * * * *", timezone="Asia/Tokyo").signature == "cron */5 * * * * Asia/Tokyo"


@pytest.mark.parametrize(
    ("cron", "after", "fires"),
    [
        # both day fields restricted: either matches (cron), not both (APScheduler's own rule)
        ("0 9 1 * 1", datetime(2026, 3, 2, 10, 0), datetime(2026, 3, 9, 9, 0)),  # the next Monday
        ("0 9 1 * 1", datetime(2026, 3, 30, 10, 0), datetime(2026, 4, 1, 9, 0)),  # the 1st, a Wednesday
        ("0 9 13 * 5", datetime(2026, 2, 14, 0, 0), datetime(2026, 2, 20, 9, 0)),  # Friday before the 13th
        # one of them unrestricted (or a "*/" step): the other alone decides
        ("0 9 1 * *", datetime(2026, 3, 2, 10, 0), datetime(2026, 4, 1, 9, 0)),
        ("0 9 * * 1", datetime(2026, 3, 30, 10, 0), datetime(2026, 4, 6, 9, 0)),
        # Vixie cron: a field starting with "*" counts as unrestricted, so both must match: the
        # first of the 1st/11th/21st/31st that is a Monday
        ("0 9 */10 * 1", datetime(2026, 3, 2, 10, 0), datetime(2026, 5, 11, 9, 0)),
    ],
)
def test_cron_day_fields_combine_as_cron_does(cron: str, after: datetime, fires: datetime) -> None:
    from gateway.config import SchedulerSettings

    app = gateway.App("days")

    @app.schedule(cron)
    async def job() -> None:
        return None

    trigger = plan_job(app.schedules[-1], SchedulerSettings()).trigger
    assert trigger.get_next_fire_time(None, after.replace(tzinfo=UTC)) == fires.replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("field", "days"),
    [
        ("*", "*"),
        ("1-5", "mon,tue,wed,thu,fri"),
        ("0", "sun"),
        ("7", "sun"),
        ("5-7", "fri,sat,sun"),
        ("0,6", "sat,sun"),
        ("*/2", "tue,thu,sat,sun"),
        ("MON-WED", "mon,tue,wed"),
        ("fri-sun", "fri,sat,sun"),
        ("1-5/2", "mon,wed,fri"),
    ],
)
def test_cron_weekdays_mean_what_cron_means(field: str, days: str) -> None:
    assert cron_weekdays(field) == days


def test_sync_urls_for_the_job_store() -> None:
    assert sync_database_url("sqlite+aiosqlite:////data/chatgate.db") == "sqlite:////data/chatgate.db"
    assert sync_database_url("sqlite+aiosqlite:///:memory:") is None
    assert sync_database_url("postgresql+asyncpg://u:p@db/chat") == "postgresql+psycopg://u:p@db/chat"
    with pytest.raises(ValueError, match="no synchronous driver"):
        sync_database_url("mysql+aiomysql://db/chat")


# -- the synthetic session -----------------------------------------------------------------


async def test_schedule_runs_with_the_synthetic_owner_session(tmp_path: Path) -> None:
    app = gateway.App("synthetic")
    seen: dict[str, Any] = {}

    @app.schedule("0 * * * *")
    async def hourly() -> None:
        session = current_session()
        assert session is not None
        seen["id"], seen["user"], seen["channel"] = session.id, session.user.id, session.channel.type
        await session.reply("nobody hears this")
        await session.show(gateway.Block("card", {"x": 1}))
        await session.notify("nor this")
        seen["history"] = [m.text for m in session.history]
        try:
            session.stream_reply()
        except RuntimeError as exc:
            seen["stream"] = str(exc)
        try:
            await session.prompt_integration("github")
        except gateway.IntegrationDeclined as exc:  # nobody could connect it: declined, as in Capsule
            seen["integration"] = str(exc)
        await session.set("runs", 1, scope="owner")  # the owner's key-value scope works
        seen["owner_kv"] = await session.get("runs", scope="owner")

    async with client(app, tmp_path, owner_id="org:acme") as tc:
        await fire_soon(tc, "hourly")
        await until(lambda: "owner_kv" in seen)
        assert seen["id"] == "" and seen["user"] == "org:acme" and seen["channel"] == "chat"
        assert seen["history"][0] == "nobody hears this"
        assert "stream_reply" in seen["stream"]
        assert "needs a session with a user" in seen["integration"]
        assert seen["owner_kv"] == 1
        assert tc._conversations == {}  # nothing reached any adapter
        assert current_session() is None  # the job's context did not leak


async def test_a_schedule_that_raises_is_logged_and_keeps_its_schedule(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = gateway.App("raising")
    calls: list[int] = []

    @app.schedule(every=0.1)
    async def broken() -> None:
        calls.append(1)
        raise RuntimeError("upstream is down")

    async with client(app, tmp_path) as tc:
        await until(lambda: len(calls) >= 3)  # the next ticks still come
        assert tc.gateway.scheduler.leading
    raised = [r for r in caplog.records if r.getMessage() == "schedule broken raised"]
    assert len(raised) >= 3 and raised[0].exc_info and "upstream is down" in str(raised[0].exc_info[1])


# -- overlap, misfire, coalescing, persistence ----------------------------------------------


async def test_overlapping_runs_are_skipped(tmp_path: Path) -> None:
    app = gateway.App("overlap")
    active = {"now": 0, "max": 0, "runs": 0}

    @app.schedule(every=0.05)
    async def slow() -> None:
        active["now"] += 1
        active["max"] = max(active["max"], active["now"])
        await asyncio.sleep(0.3)
        active["now"] -= 1
        active["runs"] += 1

    async with client(app, tmp_path) as tc:
        await until(lambda: active["runs"] >= 2, timeout=5)
        assert active["max"] == 1
        assert tc.gateway.scheduler.skipped["slow"] >= 3


@pytest.mark.parametrize(
    ("late_by", "grace", "expected_runs"),
    [(10, 60, 1), (120, 60, 0)],
    ids=["within-grace-runs-once", "past-grace-skipped"],
)
async def test_a_tick_missed_while_down_runs_at_restart_within_grace(
    tmp_path: Path, database_url: str, late_by: int, grace: int, expected_runs: int
) -> None:
    app = gateway.App("persist")
    runs: list[datetime] = []

    # Yearly, so no real tick falls inside the window the test moves the stored tick into (with
    # "*/15", a quarter-hour boundary in that window made the coalesced run fall within grace).
    @app.schedule("0 0 1 1 *", misfire_grace=grace)
    async def quarterly() -> None:
        runs.append(datetime.now(UTC))

    async with client(app, tmp_path, database_url) as tc:
        assert await tc.gateway.scheduler.next_run_time("quarterly") is not None
    # while the gateway is down, its stored tick passes
    store = stored_job_store(database_url)
    store.start(None, "default")  # type: ignore[arg-type]
    job = store.lookup_job(JOB_PREFIX + "quarterly")
    assert job is not None and job.name == "cron 0 0 1 1 * UTC"
    job.next_run_time = datetime.now(UTC) - timedelta(seconds=late_by)
    store.update_job(job)
    store.shutdown()
    async with client(app, tmp_path, database_url) as tc:
        service = tc.gateway.scheduler
        if expected_runs:
            await until(lambda: len(runs) == expected_runs)
        else:
            await until(lambda: service.missed["quarterly"] == 1)
        await asyncio.sleep(0.2)
        assert len(runs) == expected_runs
        assert await service.next_run_time("quarterly") > datetime.now(UTC)


@pytest.mark.parametrize(("coalesce", "expected"), [(True, 1), (False, 3)])
async def test_coalescing_missed_ticks(tmp_path: Path, database_url: str, coalesce: bool, expected: int) -> None:
    app = gateway.App("coalesce")
    runs: list[float] = []

    @app.schedule(every=30, coalesce=coalesce, misfire_grace=600)
    async def every_half_minute() -> None:
        runs.append(time.monotonic())

    async with client(app, tmp_path, database_url):
        pass
    store = stored_job_store(database_url)
    store.start(None, "default")  # type: ignore[arg-type]
    job = store.lookup_job(JOB_PREFIX + "every_half_minute")
    job.next_run_time = datetime.now(UTC) - timedelta(seconds=75)  # three ticks were due: -75, -45, -15 s
    store.update_job(job)
    store.shutdown()
    async with client(app, tmp_path, database_url):
        await until(lambda: len(runs) >= expected)
        await asyncio.sleep(0.2)
        assert len(runs) == expected


async def test_a_changed_trigger_replaces_the_stored_job_and_removed_schedules_go(tmp_path: Path) -> None:
    first = gateway.App("v1")

    @first.schedule("0 6 * * *")
    async def morning() -> None:
        return None

    @first.schedule("0 18 * * *")
    async def evening() -> None:
        return None

    async with client(first, tmp_path):
        pass
    second = gateway.App("v2")

    @second.schedule("0 7 * * *")
    async def morning() -> None:  # noqa: F811 - the same schedule, moved an hour
        return None

    async with client(second, tmp_path) as tc:
        scheduler = tc.gateway.scheduler.scheduler
        jobs = await scheduler.io(scheduler.get_jobs)
        assert [(j.id, j.name) for j in jobs] == [(JOB_PREFIX + "morning", "cron 0 7 * * * UTC")]


async def test_disabled_scheduler_runs_no_schedules_but_tasks_still_run(tmp_path: Path) -> None:
    app = gateway.App("off")
    ran: list[int] = []

    @app.schedule(every=0.05)
    async def never() -> None:
        ran.append(1)

    @app.task
    async def still_works() -> str:
        return "yes"

    async with client(app, tmp_path, enabled=False) as tc:
        assert not tc.gateway.scheduler.leading
        assert await (await still_works.submit()).result(timeout=5) == "yes"
        await asyncio.sleep(0.2)
    assert ran == []


async def test_stepping_down_does_not_freeze_the_loop_while_a_store_write_is_open(tmp_path: Path) -> None:
    """Losing the lead (or stopping) while a turn's write transaction is open on SQLite: the job
    store's pass over due jobs waits for that transaction, so shutting APScheduler down on the
    loop froze everything for the 10 s busy timeout."""
    from sqlalchemy import text

    app = gateway.App("step-down")

    @app.schedule(every=0.02)  # a pass over due jobs (a job-store write) is nearly always in flight
    async def busy() -> None:
        return None

    async with client(app, tmp_path, leader_lease_seconds=30) as tc:
        service = tc.gateway.scheduler
        await until(lambda: service.runs["busy"] >= 2)
        for attempt in range(6):
            async def turn_saving_messages(n: int = attempt) -> None:
                async with tc.gateway.store.write() as db:
                    await db.exec(text("INSERT INTO leases (name, holder, expires_at) VALUES (:n, 'x', :e)")
                                  .bindparams(n=f"write-{n}", e=datetime.now(UTC)))
                    await asyncio.sleep(0.05)

            writer = asyncio.create_task(turn_saving_messages())
            await asyncio.sleep(0.01)
            began = time.monotonic()
            await service._stand_by()
            await writer
            assert time.monotonic() - began < 3, f"the loop froze on attempt {attempt}"
            await service._lead()
            assert service.leading


# -- several processes ---------------------------------------------------------------------


def twin_app(name: str, ticks: list[tuple[str, float]], running: dict[str, int]) -> gateway.App:
    """The same app as a second process would load it."""
    app = gateway.App("twins")

    @app.schedule(every=0.1)
    async def tick() -> None:
        running["now"] += 1
        try:
            running["max"] = max(running["max"], running["now"])
            ticks.append((name, time.monotonic()))
            await asyncio.sleep(0.01)
        finally:
            running["now"] -= 1

    return app


async def test_one_leader_among_gateways_and_failover(tmp_path: Path, database_url: str) -> None:
    ticks: list[tuple[str, float]] = []
    running = {"now": 0, "max": 0}
    a = client(twin_app("a", ticks, running), tmp_path / "a", database_url)
    b = client(twin_app("b", ticks, running), tmp_path / "b", database_url)
    async with a:
        async with b:
            assert a.gateway.scheduler.leading and not b.gateway.scheduler.leading
            await until(lambda: len(ticks) >= 5)
            await asyncio.sleep(0.3)
            assert {who for who, _ in ticks} == {"a"}
            await a.gateway.stop()  # the leader goes away (and releases its lease)
            a.gateway.stop = _already_stopped  # type: ignore[method-assign]
            handover = time.monotonic()
            await until(lambda: b.gateway.scheduler.leading, timeout=3)
            await until(lambda: any(who == "b" for who, _ in ticks), timeout=3)
            assert time.monotonic() - handover < 1.5
    assert running["max"] == 1


async def _already_stopped() -> None:
    return None


async def test_each_tick_runs_once_even_with_two_schedulers(tmp_path: Path, database_url: str) -> None:
    """A stale leader (one that lost its lease without noticing yet) and the new leader both run
    APScheduler for a moment: the tick fence in the database still lets each tick run once."""
    ticks: list[tuple[str, float]] = []
    running = {"now": 0, "max": 0}
    async with client(twin_app("a", ticks, running), tmp_path / "a", database_url) as a, \
            client(twin_app("b", ticks, running), tmp_path / "b", database_url) as b:
        await b.gateway.scheduler._lead()  # split brain, forced
        assert a.gateway.scheduler.leading and b.gateway.scheduler.leading
        await until(lambda: len(ticks) >= 8, timeout=5)
        store = a.gateway.store
        from sqlmodel import select

        from gateway.store.task_tables import ScheduleRunRow

        async with store.session() as db:
            fences = (await db.exec(select(ScheduleRunRow))).all()
        assert len(ticks) <= len(fences) <= len(ticks) + 1  # + one tick claimed, not yet appended
        assert len({f.run_time for f in fences}) == len(fences)

        # Whether or not the two raced for a tick above, the fence decides: a tick one process
        # ran is not run by the other (as a stale leader with an old next-run time would ask).
        for tc in (a, b):
            tc.gateway.scheduler.scheduler.pause()
            await tc.gateway.scheduler.scheduler.io(lambda: None)  # a pass over due jobs in flight ends
        await until(lambda: not a.gateway.scheduler._executor.running and not b.gateway.scheduler._executor.running)
        ran = min(f.run_time for f in fences)
        ran = ran.replace(tzinfo=UTC) if ran.tzinfo is None else ran
        for tc in (b, a):
            service = tc.gateway.scheduler
            before = (len(ticks), service.runs["tick"])
            events = await service.run_job(JOB_PREFIX + "tick", "tick", "default", None, [ran])
            assert events == [] and (len(ticks), service.runs["tick"]) == before
        # and a tick nobody claimed yet runs exactly once between them
        fresh = datetime.now(UTC) - timedelta(milliseconds=1)
        both = await asyncio.gather(*(tc.gateway.scheduler.run_job(JOB_PREFIX + "tick", "tick", "default", None,
                                                                   [fresh]) for tc in (a, b)))
        assert sorted(len(events) for events in both) == [0, 1]


# -- jobs talking to real sessions ---------------------------------------------------------


async def test_a_job_messages_a_web_session_and_a_telegram_chat(tmp_path: Path) -> None:
    app = gateway.App("proactive")
    targets: dict[str, str] = {}

    @app.schedule("0 8 * * *")
    async def morning() -> None:
        web = await app.session(targets["web"])
        await web.reply(f"good morning, you said {web.history[0].text!r} yesterday")
        web.data["greeted"] = True
        await web.flush_data()
        async with web.stream_reply() as reply:
            reply.write("today's ")
            reply.write("forecast: sun")
        chat = await open_conversation(
            app, SessionChannel("telegram", chat_id="5001"), user=PlatformUser("telegram", "5001")
        )
        await chat.reply("good morning, Telegram")

    @app.message()
    async def echo(session: gateway.Session, msg: gateway.Message) -> None:
        await session.reply("noted")

    async with client(app, tmp_path) as tc:
        conversation = await tc.conversation("ada", channel="chat")
        await conversation.send("remind me about the weather")
        targets["web"] = conversation.session_id
        await fire_soon(tc, "morning")
        # The job over: its stream is recorded as it opens and gets its text as it closes.
        await until(lambda: tc.gateway.scheduler.runs["morning"] == 1)
        texts = [s.text for s in conversation.sent]
        assert texts[1:] == ["good morning, you said 'remind me about the weather' yesterday",
                             "today's forecast: sun"]
        record = await tc.gateway.store.sessions.get(conversation.session_id)
        assert record.data["greeted"] is True
        telegram = await tc.gateway.store.sessions.find(SessionChannel("telegram", chat_id="5001"))
        assert telegram is not None
        await until(lambda: tc._conversations.get(telegram.id) and tc._conversations[telegram.id].sent)
        assert [s.text for s in tc._conversations[telegram.id].sent] == ["good morning, Telegram"]
        with pytest.raises(LookupError, match="pass user="):
            await open_conversation(app, SessionChannel("telegram", chat_id="9999"))
        with pytest.raises(ValueError, match="no address"):
            await open_conversation(app, SessionChannel("chat"))


@asynccontextmanager
async def _noop() -> AsyncIterator[None]:
    yield


async def test_a_job_reaches_a_connected_widget_and_a_telegram_chat_through_real_adapters(tmp_path: Path) -> None:
    """The same job as above, with the real web adapter (a widget connected over WebSocket gets
    the message pushed) and the real Telegram adapter (the local Bot API server shows it)."""
    import aiohttp

    from adapters.telegram import TelegramAdapter
    from adapters.web.adapter import WebAdapter
    from adapters.web.testing import base_url, web_settings
    from gateway.runtime import Gateway
    from tests.fakes.telegram_api import FakeTelegramAPI

    app = gateway.App("proactive")
    targets: dict[str, str] = {}

    @app.message()
    async def echo(session: gateway.Session, msg: gateway.Message) -> None:
        await session.reply(msg.text)

    @app.schedule("0 8 * * *")
    async def morning() -> None:
        web = await app.session(targets["web"])
        await web.reply("good morning, widget")
        chat = await open_conversation(
            app, SessionChannel("telegram", chat_id="5001"), user=PlatformUser("telegram", "5001")
        )
        async with chat.stream_reply() as reply:  # a job's stream is collected and sent once
            reply.write("good morning, ")
            reply.write("**Telegram**")

    async with FakeTelegramAPI(rate_scale=0.05) as api:
        settings = web_settings(
            tmp_path, scheduler=FAST,
            telegram={"bot_token": api.token, "api_url": api.base_url, "rate_scale": 0.05, "poll_timeout": 1},
        )
        gw = Gateway(app, settings, adapters=[WebAdapter(settings), TelegramAdapter(settings)])
        await gw.start()
        try:
            async with aiohttp.ClientSession() as http, http.ws_connect(f"{base_url(gw)}/ws") as ws:
                await ws.send_json({"type": "hello", "id": "h1"})
                async with asyncio.timeout(5):
                    while (frame := await ws.receive_json())["type"] != "ready":
                        assert frame["type"] != "error", frame
                targets["web"] = frame["session_id"]
                # A widget session is stored on its first message (docs/web-protocol.md).
                await ws.send_json({"type": "message", "id": "m1", "text": "hi"})
                async with asyncio.timeout(5):
                    while (frame := await ws.receive_json())["type"] != "turn_end":
                        pass
                await gw.scheduler.reschedule("morning", datetime.now(UTC) + timedelta(seconds=0.05))
                async with asyncio.timeout(5):
                    while True:
                        frame = await ws.receive_json()
                        if frame["type"] == "message" and frame["message"]["role"] == "assistant":
                            break
                assert frame["message"]["text"] == "good morning, widget"
                await until(lambda: api.visible_texts(5001))
        finally:
            await gw.stop()
        assert api.visible_texts(5001) == ["good morning, Telegram"]
        assert len(api.calls_to("sendMessage", ok=True)) == 1  # one message, no frames
        assert api.rate_limited == []
