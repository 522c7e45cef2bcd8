"""Schedules: ``@app.schedule`` run by APScheduler 3 in the one elected process.

- Triggers: a 5-field cron (Capsule), ``every=`` seconds (interval) or ``at=`` a datetime (one
  off); ``timezone=``, ``misfire_grace=`` (seconds) and ``coalesce=`` per schedule, defaults from
  ``[scheduler]``.
- Jobs live in APScheduler's ``SQLAlchemyJobStore`` (table ``chatgate_jobs``, same database as
  the store, through a synchronous driver), so a restart keeps each job's next run time: ticks
  missed while the gateway was down run at start-up when they are within the misfire grace
  (once, when coalescing).
- One firing per tick across processes: only the holder of the ``scheduler-leader`` lease runs
  APScheduler, the others stand by and take over when the lease expires; and each tick is
  fenced by a row in ``schedule_runs`` so even a leader that lost its lease unknowingly cannot
  run a tick twice.
- A tick is skipped while the previous run of the same schedule is still going
  (``max_instances=1``), as Capsule does.
- The handler runs with ``current_session()`` set to the synthetic owner session. To talk to a
  real conversation it opens one: ``await app.session(session_id)`` or
  ``await open_conversation(app, SessionChannel(...), user=...)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED, JobExecutionEvent
from apscheduler.executors.base import BaseExecutor
from apscheduler.jobstores.base import BaseJobStore
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.schedulers.base import STATE_STOPPED, BaseScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.combining import OrTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import create_engine, event

from gateway.app import App, ScheduleSpec
from gateway.calls import call_maybe_async
from gateway.context import reset_current_session, set_current_session
from gateway.leases import Lease, process_holder_id
from gateway.session import Session
from gateway.tasks.api import parse_duration
from gateway.tasks.engine import TaskService, synthetic_session

if TYPE_CHECKING:
    from gateway.config import SchedulerSettings
    from gateway.inbound import PlatformUser
    from gateway.runtime import Gateway
    from gateway.types import SessionChannel

log = logging.getLogger("chatgate.scheduler")

LEADER_LEASE = "scheduler-leader"
JOB_PREFIX = "schedule:"
JOB_TABLE = "chatgate_jobs"
TICK_RETENTION = timedelta(days=2)
"""How long a recurring job's tick fences are kept (a tick is never retried after that)."""
STOP_GRACE = 5.0
"""Seconds a running tick may take to finish when the gateway stops (as the dispatcher gives
running handlers)."""
SCHEDULE_OPTIONS = frozenset({"every", "at", "timezone", "misfire_grace", "coalesce"})
SYNC_DRIVERS = {
    "sqlite+aiosqlite": "sqlite",
    "postgresql+asyncpg": "postgresql+psycopg",
    "postgresql+psycopg_async": "postgresql+psycopg",
    "postgresql+psycopg": "postgresql+psycopg",
    "postgresql": "postgresql+psycopg",
    "sqlite": "sqlite",
}
"""APScheduler 3's job store is synchronous: the sync driver for each async store URL."""


# -- triggers --------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlannedJob:
    """A schedule as APScheduler will run it. ``signature`` names the trigger: a stored job
    with the same signature keeps its stored next run time across restarts."""

    job_id: str
    spec: ScheduleSpec
    trigger: BaseTrigger
    signature: str
    one_off: bool
    misfire_grace: int
    coalesce: bool


CRON_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
"""Cron numbers days from Sunday = 0 (7 is Sunday too); APScheduler 3 from Monday = 0 and its
``from_crontab`` passes the field through unchanged, so "1-5" would mean Tuesday to Saturday.
Day-of-week fields are therefore rewritten as explicit day names."""


def cron_weekdays(field: str) -> str:
    """A cron day-of-week field as APScheduler day names: ``"1-5"`` -> ``"mon,tue,wed,thu,fri"``."""
    if field in ("*", "?"):
        return "*"
    days: set[int] = set()
    for part in field.lower().split(","):
        span, _, step_text = part.partition("/")
        step = int(step_text) if step_text else 1
        if step < 1:
            raise ValueError(f"bad step in day-of-week {field!r}")
        if span == "*":
            first, last = 0, 6
        else:
            low, _, high = span.partition("-")
            first = _cron_day(low)
            last = _cron_day(high) if high else (6 if step_text else first)
            if high and last == 0 and first > 0:
                last = 7  # "5-7" / "fri-sun": up to Sunday
        if last < first:
            raise ValueError(f"day-of-week range {span!r} runs backwards")
        days.update(day % 7 for day in range(first, last + 1, step))
    return ",".join(CRON_WEEKDAYS[day] for day in sorted(days, key=lambda d: (d + 6) % 7))


def _cron_day(text: str) -> int:
    if text.isdigit() and 0 <= int(text) <= 7:
        return int(text)
    if text[:3] in CRON_WEEKDAYS:
        return CRON_WEEKDAYS.index(text[:3])
    raise ValueError(f"not a day of the week: {text!r}")


def plan_job(spec: ScheduleSpec, settings: SchedulerSettings) -> PlannedJob:
    """Validate a schedule and build its trigger; a clear ValueError names what is wrong."""
    unknown = set(spec.options) - SCHEDULE_OPTIONS
    if unknown:
        raise ValueError(f"@app.schedule {spec.name!r}: unknown options {sorted(unknown)}")
    zone_name = spec.options.get("timezone") or settings.timezone
    try:
        zone = ZoneInfo(zone_name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"@app.schedule {spec.name!r}: unknown timezone {zone_name!r}") from None
    if spec.trigger == "every":
        seconds = parse_duration(spec.options["every"])
        if seconds <= 0:
            raise ValueError(f"@app.schedule {spec.name!r}: every= must be positive")
        trigger: BaseTrigger = IntervalTrigger(seconds=seconds, timezone=zone)
        signature = f"every {seconds:g}s"
    elif spec.trigger == "at":
        when = spec.options["at"]
        if not isinstance(when, datetime):
            raise ValueError(f"@app.schedule {spec.name!r}: at= takes a datetime")
        if when.tzinfo is None:
            when = when.replace(tzinfo=zone)
        trigger = DateTrigger(run_date=when, timezone=zone)
        signature = f"at {when.astimezone(UTC).isoformat()}"
    else:
        fields = spec.trigger.split()
        if len(fields) != 5:
            raise ValueError(f"@app.schedule {spec.name!r}: {spec.trigger!r} is not a 5-field cron expression")
        minute, hour, day, month, weekday = fields
        either_day = not day.startswith(("*", "?")) and not weekday.startswith(("*", "?"))
        try:
            days = cron_weekdays(weekday)
            if either_day:
                # cron runs when the day of the month OR the day of the week matches (when both
                # are restricted); APScheduler's fields must all match, so one trigger per field
                trigger = OrTrigger([
                    CronTrigger(minute=minute, hour=hour, day=day, month=month, timezone=zone),
                    CronTrigger(minute=minute, hour=hour, month=month, day_of_week=days, timezone=zone),
                ])
            else:
                trigger = CronTrigger(minute=minute, hour=hour, day=day, month=month, day_of_week=days,
                                      timezone=zone)
        except ValueError as exc:
            raise ValueError(f"@app.schedule {spec.name!r}: bad cron {spec.trigger!r}: {exc}") from None
        # (a stored job of the same cron from before either-day matching gets replaced)
        signature = f"cron {spec.trigger} {zone_name}" + (" day-or-weekday" if either_day else "")
    grace = spec.options.get("misfire_grace", settings.misfire_grace_seconds)
    if isinstance(grace, bool) or not isinstance(grace, int | float) or grace < 1:
        raise ValueError(f"@app.schedule {spec.name!r}: misfire_grace= takes a number of seconds, at least 1")
    coalesce = spec.options.get("coalesce", settings.coalesce)
    if not isinstance(coalesce, bool):
        raise ValueError(f"@app.schedule {spec.name!r}: coalesce= takes True or False")
    return PlannedJob(JOB_PREFIX + spec.name, spec, trigger, signature, spec.trigger == "at",
                      int(grace), coalesce)


async def scheduled_job(name: str) -> None:
    """The callable every stored job names (a job store keeps a textual reference).

    chatgate's executor never calls it: it runs the schedule ``name`` of the app that is
    running. Called by anything else, it refuses rather than run a handler out of context.
    """
    raise RuntimeError(f"schedule {name!r} runs only through chatgate's scheduler executor")


# -- the executor ----------------------------------------------------------------------------


class ScheduleExecutor(BaseExecutor):
    """Runs a due job on the event loop through ``SchedulerService.run_job``.

    ``BaseExecutor.submit_job`` counts running instances, which is what skips a tick while the
    previous run of the same schedule is still going.
    """

    def __init__(self, service: SchedulerService) -> None:
        super().__init__()
        self.service = service
        self.running: set[asyncio.Task[list[JobExecutionEvent]]] = set()

    def _do_submit_job(self, job: Any, run_times: list[datetime]) -> None:
        """Called in the job-store thread: hand the run to the event loop."""
        loop = self._scheduler._eventloop
        loop.call_soon_threadsafe(self._start, job, run_times)

    def _start(self, job: Any, run_times: list[datetime]) -> None:
        name = job.args[0] if job.args else job.id.removeprefix(JOB_PREFIX)
        task = asyncio.get_running_loop().create_task(
            self.service.run_job(job.id, name, job._jobstore_alias, job.misfire_grace_time, run_times),
            name=f"chatgate-schedule-{name}",
        )
        self.running.add(task)

        def finished(done: asyncio.Task[list[JobExecutionEvent]]) -> None:
            self.running.discard(done)
            if done.cancelled():
                self._run_job_error(job.id, asyncio.CancelledError(), None)
            elif done.exception() is not None:
                exc = done.exception()
                self._run_job_error(job.id, exc, exc.__traceback__ if exc else None)
            else:
                self._run_job_success(job.id, done.result())

        task.add_done_callback(finished)


class JobStoreThreadScheduler(AsyncIOScheduler):
    """An AsyncIOScheduler whose job-store work runs in one worker thread.

    APScheduler 3's job stores are synchronous. Called on the event loop, a SQLite write would
    wait for the write lock held by one of the store's own async transactions, which cannot
    finish while the loop is blocked: a deadlock until ``busy_timeout``. So ``_process_jobs``
    (and every job-store call chatgate makes, through :meth:`io`) runs in ``io_thread``; due
    jobs are handed back to the loop by ``ScheduleExecutor``.
    """

    def __init__(self, io_thread: ThreadPoolExecutor, **options: Any) -> None:
        super().__init__(**options)
        self.io_thread = io_thread
        self._processing = False
        self._wake_again = False

    async def io(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.io_thread, lambda: call(*args, **kwargs))

    async def io_shutdown(self) -> None:
        """Shut down with the job-store part in ``io_thread``. AsyncIOScheduler's own shutdown
        runs on the loop and takes the job-store lock, which a pass over due jobs holds while
        its SQLite write waits for a store transaction that needs the loop: the loop froze for
        the 10 s busy timeout."""
        await self.io(BaseScheduler.shutdown, self, False)
        self._stop_timer()

    def wakeup(self) -> None:  # may be called from any thread
        loop = self._eventloop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._process_in_thread)

    def _process_in_thread(self) -> None:
        self._stop_timer()
        if self.state == STATE_STOPPED or self._eventloop is None:
            return
        if self._processing:
            self._wake_again = True
            return
        self._processing = True
        future = self._eventloop.run_in_executor(self.io_thread, self._process_jobs)
        future.add_done_callback(self._processed)

    def _processed(self, future: asyncio.Future[Any]) -> None:
        self._processing = False
        wait_seconds: float | None = 1.0
        if future.cancelled():
            return
        if future.exception() is not None:
            log.error("scheduler: processing due jobs failed; retrying in 1 s", exc_info=future.exception())
        else:
            wait_seconds = future.result()
        if self._wake_again:
            self._wake_again = False
            self._process_in_thread()
        elif self.state != STATE_STOPPED and self._eventloop is not None:
            self._start_timer(wait_seconds)


# -- the service -----------------------------------------------------------------------------


class SchedulerService:
    """``runtime.scheduler``: the task service always; APScheduler while this process leads."""

    def __init__(self, runtime: Gateway, tasks: TaskService) -> None:
        self.rt = runtime
        self.settings = runtime.settings.scheduler
        self.tasks = tasks
        self.queries = runtime.store.tasks
        self.holder = process_holder_id()
        self.planned = {spec.name: plan_job(spec, self.settings) for spec in runtime.app.schedules}
        self.lease = Lease(
            runtime.store, LEADER_LEASE, holder=self.holder, ttl=self.settings.leader_lease_seconds,
            on_acquired=self._lead, on_lost=self._stand_by,
        )
        self.scheduler: JobStoreThreadScheduler | None = None
        self._executor: ScheduleExecutor | None = None
        self.runs: Counter[str] = Counter()
        """Completed runs per schedule name, in this process."""
        self.skipped: Counter[str] = Counter()
        """Ticks skipped because the previous run was still going."""
        self.missed: Counter[str] = Counter()
        """Ticks dropped because they were later than the misfire grace."""
        self._started = False

    @property
    def leading(self) -> bool:
        return self.scheduler is not None

    @property
    def schedules_enabled(self) -> bool:
        return self.settings.enabled and bool(self.planned)

    async def start(self) -> None:
        await self.tasks.start()
        self._started = True
        if self.schedules_enabled:
            await self.lease.campaign_once()  # lead at once when nobody else does
            self.lease.start()

    async def stop(self) -> None:
        if self._started and self.schedules_enabled:
            await self.lease.stop()
        await self._stand_by()
        if self._executor is not None and self._executor.running:
            # a tick that already started may finish (its fence is taken: nobody reruns it)
            _, unfinished = await asyncio.wait(set(self._executor.running), timeout=STOP_GRACE)
            for task in unfinished:
                log.warning("scheduler: %s did not finish within %ss of the stop; cancelled",
                            task.get_name(), STOP_GRACE)
                task.cancel()
            await asyncio.gather(*unfinished, return_exceptions=True)
        if self._started:
            await self.tasks.stop()
        self._started = False

    # -- leadership ----------------------------------------------------------------------

    async def _lead(self) -> None:
        if self.scheduler is not None:
            return
        executor = ScheduleExecutor(self)
        io_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chatgate-jobstore")
        scheduler = JobStoreThreadScheduler(
            io_thread,
            event_loop=asyncio.get_running_loop(),
            timezone=ZoneInfo(self.settings.timezone),
            jobstores={"default": self._job_store()},
            executors={"default": executor},
            job_defaults={
                "coalesce": self.settings.coalesce,
                "misfire_grace_time": self.settings.misfire_grace_seconds,
                "max_instances": 1,
            },
        )
        scheduler.add_listener(self._on_event, EVENT_JOB_MAX_INSTANCES | EVENT_JOB_MISSED)
        already_ran = {p.job_id for p in self.planned.values() if p.one_off and await self.queries.has_run(p.job_id)}
        try:
            await scheduler.io(scheduler.start, paused=True)
            await scheduler.io(self._sync_jobs, scheduler, already_ran)
        except Exception:
            log.exception("scheduler: could not start as the leader; giving the lease up")
            with contextlib.suppress(Exception):
                await scheduler.io_shutdown()
            io_thread.shutdown(wait=False)
            await self.lease.abdicate()
            return
        scheduler.resume()
        self.scheduler, self._executor = scheduler, executor
        log.info("scheduler: leading (%d schedule(s)) as %s", len(self.planned), self.holder)

    async def _stand_by(self) -> None:
        scheduler, self.scheduler = self.scheduler, None
        if scheduler is not None and scheduler.running:
            await scheduler.io_shutdown()
            await asyncio.get_running_loop().run_in_executor(None, scheduler.io_thread.shutdown)
            log.info("scheduler: standing by (%s)", self.holder)

    def _job_store(self) -> BaseJobStore:
        url = sync_database_url(self.rt.settings.database.url)
        if url is None:
            return MemoryJobStore()
        engine = create_engine(url, pool_pre_ping=True)
        if url.startswith("sqlite"):
            event.listen(engine, "connect", _sqlite_busy_timeout)
        return SQLAlchemyJobStore(engine=engine, tablename=JOB_TABLE)

    def _sync_jobs(self, scheduler: AsyncIOScheduler, already_ran: set[str]) -> None:
        """Make the stored jobs match the app's schedules, keeping each unchanged job's stored
        next run time (so ticks missed during a restart are honoured). Runs in the job-store
        thread."""
        for planned in self.planned.values():
            options = {"misfire_grace_time": planned.misfire_grace, "coalesce": planned.coalesce, "max_instances": 1}
            existing = scheduler.get_job(planned.job_id)
            if existing is not None and existing.name == planned.signature:
                scheduler.modify_job(planned.job_id, **options)
                continue
            if planned.job_id in already_ran:
                continue  # a one-off that already ran (its job removed itself)
            scheduler.add_job(
                scheduled_job, planned.trigger, args=[planned.spec.name], id=planned.job_id,
                name=planned.signature, replace_existing=True, **options,
            )
        wanted = {p.job_id for p in self.planned.values()}
        for job in scheduler.get_jobs():
            if job.id.startswith(JOB_PREFIX) and job.id not in wanted:
                log.info("scheduler: removing stored job %s (no such @app.schedule any more)", job.id)
                job.remove()

    def _on_event(self, happened: Any) -> None:
        name = str(happened.job_id).removeprefix(JOB_PREFIX)
        if happened.code == EVENT_JOB_MAX_INSTANCES:
            self.skipped[name] += 1
        elif happened.code == EVENT_JOB_MISSED:
            self.missed[name] += 1

    # -- running a tick ------------------------------------------------------------------

    async def run_job(
        self, job_id: str, name: str, store_alias: str, grace: int | None, run_times: list[datetime]
    ) -> list[JobExecutionEvent]:
        from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED

        events: list[JobExecutionEvent] = []
        for run_time in run_times:
            late = datetime.now(UTC) - run_time
            if grace is not None and late > timedelta(seconds=grace):
                log.warning("schedule %s: the %s tick is %s late (grace %ss): skipped", name, run_time, late, grace)
                events.append(JobExecutionEvent(EVENT_JOB_MISSED, job_id, store_alias, run_time))
                continue
            if not await self.queries.claim_tick(job_id, run_time, self.holder):
                log.info("schedule %s: the %s tick already ran in another process", name, run_time)
                continue
            try:
                await self.fire(name)
            except Exception as exc:
                events.append(JobExecutionEvent(EVENT_JOB_ERROR, job_id, store_alias, run_time, exception=exc))
            else:
                events.append(JobExecutionEvent(EVENT_JOB_EXECUTED, job_id, store_alias, run_time))
        planned = self.planned.get(name)
        if planned is not None and not planned.one_off:
            with contextlib.suppress(Exception):
                await self.queries.forget_ticks(job_id, TICK_RETENTION)
        return events

    async def fire(self, name: str) -> None:
        """Run schedule ``name``'s handler now, as a tick would (the synthetic owner session
        is ``current_session()``). Exceptions are logged and re-raised to the caller."""
        planned = self.planned.get(name)
        if planned is None:
            raise LookupError(f"no @app.schedule named {name!r}")
        started = time.perf_counter()
        session = await synthetic_session(self.rt)
        token = set_current_session(session)
        try:
            await call_maybe_async(planned.spec.handler)
        except Exception:
            log.exception("schedule %s raised", name)
            raise
        finally:
            reset_current_session(token)
            self.runs[name] += 1
        log.info("schedule %s ran in %.3fs", name, time.perf_counter() - started)

    async def next_run_time(self, name: str) -> datetime | None:
        """When schedule ``name`` fires next (None when it will not, or this process does not lead)."""
        scheduler = self.scheduler
        if scheduler is None:
            return None
        job = await scheduler.io(scheduler.get_job, JOB_PREFIX + name)
        return None if job is None else job.next_run_time

    async def reschedule(self, name: str, next_run_time: datetime) -> None:
        """Move schedule ``name``'s next tick (an operator's "run it at 5"; tests' clock)."""
        scheduler = self.scheduler
        if scheduler is None:
            raise RuntimeError("this process does not run the scheduler (it is not the leader)")
        if name not in self.planned:
            raise LookupError(f"no @app.schedule named {name!r}")
        await scheduler.io(scheduler.modify_job, JOB_PREFIX + name, next_run_time=next_run_time)


def sync_database_url(url: str) -> str | None:
    """The synchronous URL of the store's database for the job store; None for an in-memory
    SQLite database, which no second connection can see."""
    scheme, separator, rest = url.partition("://")
    if not separator:
        raise ValueError(f"not a database URL: {url!r}")
    if scheme.startswith("sqlite") and (rest in ("", "/", "/:memory:") or ":memory:" in rest):
        return None
    driver = SYNC_DRIVERS.get(scheme)
    if driver is None:
        raise ValueError(f"the scheduler's job store has no synchronous driver for {scheme!r}")
    return f"{driver}://{rest}"


def _sqlite_busy_timeout(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


# -- wiring and helpers for apps -------------------------------------------------------------


async def attach(runtime: Gateway) -> None:
    """Called by ``Gateway`` at start: the task service always, schedules when enabled."""
    tasks = TaskService(runtime)
    runtime.tasks = tasks
    runtime.scheduler = SchedulerService(runtime, tasks)


async def open_conversation(
    app: App, channel: SessionChannel, *, user: PlatformUser | None = None
) -> Session:
    """A real Session for the conversation at a platform address (a Telegram chat, a Slack
    channel or thread), made when the bot has not talked there yet; ``user`` is who the
    conversation belongs to and is needed only then. Replies are standalone messages paced by
    the channel's adapter, with the conversation's history and ``data``."""
    runtime = app.runtime
    if runtime is None:
        raise RuntimeError(f"app {app.name!r} is not running: open_conversation needs a running gateway")
    if channel.chat_id is None:
        raise ValueError("a web conversation has no address: open it by id with `await app.session(session_id)`")
    record = await runtime.store.sessions.find(channel)
    if record is None:
        if user is None:
            raise LookupError(f"no {channel.type} conversation at {channel.chat_id!r} yet: pass user= to start one")
        owner = await runtime.store.users.resolve(user)
        record = await runtime.store.sessions.for_address(channel, owner)
    return await runtime.sessions.open(record.id)


__all__ = [
    "ScheduleExecutor",
    "SchedulerService",
    "attach",
    "open_conversation",
    "plan_job",
    "scheduled_job",
    "sync_database_url",
]
