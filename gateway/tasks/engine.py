"""The task engine: the service that runs ``@app.task`` functions (the API an app sees is
``gateway.tasks.api``).

Tasks live in the ``tasks`` table, so any worker process can run them and a restart loses none:
queued tasks resume, and a task that was running when its process died is marked interrupted
(retried if it has attempts left, ``failed`` otherwise). Attempts are claimed with a conditional
UPDATE, retries wait out tenacity's jittered exponential backoff *in the table* (``status=retry``,
``run_at``) rather than in memory, a ``lock`` template serialises tasks through a database lease,
and a running task is cancelled within one heartbeat even when another process asked.

A task bound to a session gets a standalone Session: its replies reach the conversation as new
messages, and ``session.data`` is saved after every attempt. ``session.show_task(handle)`` makes
the session a *watcher*: every status change re-shows the ``task_card`` block with the same id,
which each adapter updates in place.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

import tenacity

from gateway.calls import call_maybe_async
from gateway.context import reset_current_session, set_current_session
from gateway.dispatch import UnknownSession
from gateway.leases import Lease, process_holder_id, wait_event
from gateway.session import Session
from gateway.store.tables import utcnow
from gateway.store.task_tables import FINISHED, OPEN, TaskRow, TaskWatchRow, as_utc
from gateway.tasks.api import TaskDescriptor, TaskHandle
from gateway.types import Block, SessionChannel, UserInfo

if TYPE_CHECKING:
    from gateway.config import Settings
    from gateway.conversation import Conversation
    from gateway.sessions import SessionDirectory
    from gateway.store import Store
    from gateway.types import IntegrationCredentials


class TaskRegistry(Protocol):
    """The ``App`` as the engine needs it: the registered tasks by name."""

    name: str
    task_descriptors: dict[str, TaskDescriptor]


class TaskHost(Protocol):
    """What the task engine needs from the running gateway (``gateway.runtime.Gateway``)."""

    store: Store
    settings: Settings
    sessions: SessionDirectory

    @property
    def app(self) -> TaskRegistry: ...

    def conversation(self, session_id: str, channel: SessionChannel, *, turn: str | None = None) -> Conversation: ...

    async def integrations_for(self, user: UserInfo) -> dict[str, IntegrationCredentials]: ...

log = logging.getLogger("chatgate.tasks")

ERROR_TEXT_LIMIT = 300  # characters of an exception message kept for task cards
CARD_RESYNC_WAIT = 2.0  # seconds to wait for a freshly shown task card before correcting it


# -- the service ---------------------------------------------------------------------------


class TaskService:
    """Runs the app's tasks in this process, claiming them from the shared table."""

    def __init__(self, runtime: TaskHost) -> None:
        self.rt = runtime
        self.settings = runtime.settings.scheduler
        self.queries = runtime.store.tasks
        self.worker_id = process_holder_id()
        self.worker_lease = Lease(
            runtime.store, f"task-worker:{self.worker_id}", holder=self.worker_id,
            ttl=self.settings.leader_lease_seconds,
        )
        self._running: dict[str, asyncio.Task[None]] = {}
        self._deadlines: dict[str, tuple[asyncio.Timeout, float]] = {}
        self._changed: dict[str, asyncio.Event] = {}
        self._card_locks: dict[str, asyncio.Lock] = {}
        self._card_seen: dict[str, str] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def app(self) -> TaskRegistry:
        return self.rt.app

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        self._stopping = False
        await self.worker_lease.try_acquire()
        self.worker_lease.start()
        await self.recover_interrupted()
        self._loop_task = asyncio.create_task(self._run_forever(), name="chatgate-tasks")

    async def stop(self) -> None:
        """Cancel running attempts; they stay ``running`` and the next start (or another
        worker, once this one's lease is gone) marks them interrupted."""
        self._stopping = True
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None
        running = list(self._running.values())
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self.worker_lease.stop()

    # -- submitting and querying ---------------------------------------------------------

    async def submit(
        self,
        descriptor: TaskDescriptor,
        session_id: str | None,
        display_name: str,
        kwargs: dict[str, Any],
        *,
        run_at: datetime | None = None,
        recurrence: float | None = None,
    ) -> TaskHandle:
        try:
            json.dumps(kwargs)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"task {descriptor.name!r}: kwargs must be JSON-native ({exc})") from None
        if session_id is not None and await self.rt.store.sessions.get(session_id) is None:
            raise UnknownSession(f"task {descriptor.name!r}: no session {session_id!r}")
        lock_key = None
        if descriptor.options.lock:
            try:
                lock_key = descriptor.options.lock.format_map(kwargs)
            except (KeyError, IndexError) as exc:
                raise ValueError(
                    f"task {descriptor.name!r}: lock template {descriptor.options.lock!r} needs kwarg {exc}"
                ) from None
        now = utcnow()
        when = run_at or now
        row = TaskRow(
            name=descriptor.name,
            display_name=display_name,
            session_id=session_id,
            kwargs=kwargs,
            status="scheduled" if when > now else "pending",
            max_attempts=descriptor.options.retries + 1,
            timeout=descriptor.options.timeout,
            lock_key=lock_key,
            recurrence_seconds=recurrence,
            run_at=when,
        )
        await self.queries.add(row)
        self._wake.set()
        return TaskHandle(self, row)

    async def find(
        self,
        name: str | None,
        status: str | Iterable[str] | None,
        session_id: str | None,
        limit: int | None,
        offset: int,
        kwarg_filters: dict[str, Any],
    ) -> list[TaskHandle]:
        if not kwarg_filters:
            rows = await self.queries.find(name=name, status=status, session_id=session_id, limit=limit, offset=offset)
        else:
            rows = await self.queries.find(name=name, status=status, session_id=session_id)
            rows = [r for r in rows if all(r.kwargs.get(k) == v for k, v in kwarg_filters.items())]
            rows = rows[offset:] if limit is None else rows[offset : offset + limit]
        return [TaskHandle(self, r) for r in rows]

    async def count(
        self, name: str | None, status: str | Iterable[str] | None, session_id: str | None,
        kwarg_filters: dict[str, Any],
    ) -> int:
        if not kwarg_filters:
            return await self.queries.count(name=name, status=status, session_id=session_id)
        return len(await self.find(name, status, session_id, None, 0, kwarg_filters))

    async def cancel_matching(
        self, name: str | None, status: str | None, session_id: str | None, kwarg_filters: dict[str, Any]
    ) -> int:
        """Cancel the open tasks matching the filters (all open ones when ``status`` is None)."""
        if status is not None and status not in OPEN:
            return 0  # a finished task cannot be cancelled
        handles = await self.find(name, status or list(OPEN), session_id, None, 0, kwarg_filters)
        cancelled = 0
        for handle in handles:
            cancelled += await self.cancel(handle.task_id)
        return cancelled

    async def row(self, task_id: str) -> TaskRow | None:
        return await self.queries.get(task_id)

    async def handle(self, task_id: str) -> TaskHandle | None:
        row = await self.queries.get(task_id)
        return None if row is None else TaskHandle(self, row)

    async def cancel(self, task_id: str) -> bool:
        """Cancel a task that has not finished; a running attempt is interrupted at once here,
        within one heartbeat when another worker runs it."""
        if not await self.queries.transition(task_id, OPEN, status="cancelled", error="cancelled"):
            return False
        running = self._running.get(task_id)
        if running is not None:
            running.cancel()
        else:
            self._changed_now(task_id)
            await self._update_cards(task_id)
            self._card_seen.pop(task_id, None)
        return True

    async def wait(self, task_id: str, timeout: float | None = None) -> TaskRow:
        async with asyncio.timeout(timeout):
            while True:
                event = self._changed.setdefault(task_id, asyncio.Event())
                event.clear()
                row = await self.queries.get(task_id)
                if row is None:
                    raise LookupError(f"no task {task_id!r}")
                if row.status in FINISHED:
                    return row
                # another process may run it: poll as well as listening
                await wait_event(event, self.settings.task_poll_seconds)

    def extend_deadline(self, task_id: str) -> None:
        found = self._deadlines.get(task_id)
        if found is not None:
            deadline, seconds = found
            deadline.reschedule(asyncio.get_running_loop().time() + seconds)

    # -- task cards ----------------------------------------------------------------------

    async def card_fields(self, task_id: str) -> dict[str, Any]:
        """What a ``task_card`` block shows about a task (``Session.show_task`` merges it)."""
        row = await self.queries.get(task_id)
        if row is None:
            return {"status": "unknown", "error": f"no task {task_id}"}
        self._card_seen[task_id] = row.status
        return _card_fields(row)

    async def watch_card(self, task_id: str, session_id: str, message: str | None = None) -> None:
        """Keep the task card shown in ``session_id`` current as the task's status changes."""
        if not session_id:
            return
        await self.queries.watch(task_id, session_id, message)
        row = await self.queries.get(task_id)
        seen = self._card_seen.pop(task_id, None)
        if row is not None and seen is not None and row.status != seen:
            # the status moved between card_fields() and now: correct the card once it is shown
            self._spawn(self._resync_card(task_id, session_id, seen), f"chatgate-task-card-{task_id}")

    async def _resync_card(self, task_id: str, session_id: str, stale_status: str | None) -> None:
        """Once ``show_task``'s own card is stored, re-show it if it is stale (``stale_status``
        None: whatever it shows)."""
        deadline = time.monotonic() + CARD_RESYNC_WAIT
        while time.monotonic() < deadline:
            block = await self.rt.store.messages.block(session_id, f"task_{task_id}")
            if block is not None:
                if stale_status is None or (block.get("payload") or {}).get("status") == stale_status:
                    await self._update_cards(task_id, only_session=session_id)
                return
            await asyncio.sleep(0.05)

    async def _update_cards(self, task_id: str, *, only_session: str | None = None) -> None:
        lock = self._card_locks.setdefault(task_id, asyncio.Lock())
        async with lock:
            watchers = await self.queries.watchers(task_id)
            if only_session is not None:
                watchers = [w for w in watchers if w.session_id == only_session]
            if not watchers:
                return
            row = await self.queries.get(task_id)
            if row is None:
                return
            fields = _card_fields(row)
            await asyncio.gather(*(self._show_card(w, fields) for w in watchers))

    async def _show_card(self, watcher: TaskWatchRow, fields: dict[str, Any]) -> None:
        block_id = f"task_{watcher.task_id}"
        payload: dict[str, Any] = {"task_id": watcher.task_id}
        shown = await self.rt.store.messages.block(watcher.session_id, block_id)
        if shown is None:
            # show_task registered the watcher but has not stored its card yet: update it once
            # it has (showing now would be overwritten by its card, read before this change, and
            # lose its message). Once stored, shows of one block are serialised (a block lock).
            self._spawn(self._resync_card(watcher.task_id, watcher.session_id, None),
                        f"chatgate-task-card-{watcher.task_id}")
            return
        message = watcher.message
        if message is None:  # show_task's message lives only in the card it showed: keep it
            message = (shown.get("payload") or {}).get("message")
        if message is not None:
            payload["message"] = message
        payload.update(fields)
        try:
            session = await self.rt.sessions.open(watcher.session_id)
            await session.show(Block("task_card", payload, id=block_id))
        except UnknownSession:
            log.info("task card of %s: session %s is gone", watcher.task_id, watcher.session_id)
        except Exception:
            log.exception("updating the task card of %s in session %s failed", watcher.task_id, watcher.session_id)

    # -- the worker loop -----------------------------------------------------------------

    async def _run_forever(self) -> None:
        heartbeat_every = self.settings.leader_lease_seconds / 3
        next_heartbeat = time.monotonic() + heartbeat_every
        while not self._stopping:
            self._wake.clear()
            try:
                delay = await self._start_due()
            except Exception:
                log.exception("looking for due tasks failed; retrying")
                delay = self.settings.task_poll_seconds
            if time.monotonic() >= next_heartbeat:
                next_heartbeat = time.monotonic() + heartbeat_every
                try:
                    await self._heartbeat()
                except Exception:
                    log.exception("task heartbeat failed")
            delay = min(delay, max(0.0, next_heartbeat - time.monotonic()))
            await wait_event(self._wake, delay)

    async def _start_due(self) -> float:
        """Start what is due, within the concurrency bound; seconds until worth looking again."""
        poll = self.settings.task_poll_seconds
        names = list(self.app.task_descriptors)
        free = self.settings.task_concurrency - len(self._running)
        if not names or free <= 0:
            return poll
        now = utcnow()
        rows = await self.queries.due(names, now, free * 2)
        started = 0
        for row in rows:
            if started >= free:
                break
            if row.id in self._running:
                continue
            if row.lock_key and not await self._take_lock(row):
                continue
            claimed = await self.queries.claim(row.id, row.status, self.worker_id)
            if claimed is None:
                if row.lock_key:
                    await self._release_lock(row)
                continue
            started += 1
            task = asyncio.create_task(self._execute(claimed), name=f"chatgate-task-{row.name}-{row.id}")
            self._running[row.id] = task
        if started and len(rows) == free * 2:
            return 0.0
        next_due = await self.queries.next_due(names)
        if next_due is None:
            return poll
        until = (next_due - utcnow()).total_seconds()
        return poll if until <= 0 else min(poll, until)

    async def _heartbeat(self) -> None:
        """Renew lock leases, stop attempts cancelled elsewhere, recover dead workers' tasks."""
        for row in await self.queries.running(self.worker_id):
            if row.lock_key:
                await self.rt.store.leases.acquire(self._lock_name(row), self._lock_holder(row),
                                                  self.settings.leader_lease_seconds)
        for task_id in list(self._running):
            current = await self.queries.get(task_id)
            if current is not None and current.status == "cancelled":
                self._running[task_id].cancel()
        await self.recover_interrupted()

    async def recover_interrupted(self) -> int:
        """Mark tasks whose worker is gone (its process stopped or died) as interrupted:
        retried when attempts remain, ``failed`` otherwise."""
        rows = [r for r in await self.queries.running() if r.id not in self._running]
        if not rows:
            return 0
        live = await self.queries.live_holders({f"task-worker:{r.worker}" for r in rows if r.worker})
        recovered = 0
        for row in rows:
            if row.worker and f"task-worker:{row.worker}" in live:
                continue
            error = "interrupted: the worker running it stopped"
            if row.attempts < row.max_attempts:
                done = await self.queries.transition(row.id, ["running"], status="retry", run_at=utcnow(),
                                                     worker=None, error=error)
            else:
                done = await self.queries.transition(row.id, ["running"], status="failed", worker=None, error=error,
                                                     follow_up=self._next_occurrence(row))
            if done:
                recovered += 1
                log.warning("task %s (%s) was interrupted by a stop; %s", row.id, row.name,
                            "retrying" if row.attempts < row.max_attempts else "failed")
                if row.lock_key:
                    await self.rt.store.leases.release(self._lock_name(row), self._lock_holder(row))
                self._changed_now(row.id)
                await self._update_cards(row.id)
        if recovered:
            self._wake.set()
        return recovered

    # -- running one attempt -------------------------------------------------------------

    async def _execute(self, row: TaskRow) -> None:
        descriptor: TaskDescriptor | None = self.app.task_descriptors.get(row.name)
        session: Session | None = None
        deadline: asyncio.Timeout | None = None
        try:
            if descriptor is None:  # unregistered since it was claimed (cannot happen in one process)
                raise LookupError(f"no @app.task named {row.name!r}")
            self._changed_now(row.id)
            await self._update_cards(row.id)
            session = await self._session_for(row)
            kwargs = dict(row.kwargs)
            if descriptor.session_parameter is not None:
                kwargs[descriptor.session_parameter] = session
            token = set_current_session(session)
            try:
                async with asyncio.timeout(row.timeout or None) as deadline:
                    if row.timeout:
                        self._deadlines[row.id] = (deadline, row.timeout)
                    value = await call_maybe_async(descriptor.fn, **kwargs)
            finally:
                reset_current_session(token)
                self._deadlines.pop(row.id, None)
        except asyncio.CancelledError:
            if self._stopping:
                raise  # left "running": the next start marks it interrupted
            await self.queries.transition(row.id, ["running", "cancelled"], status="cancelled", worker=None)
            await self._finished(row, session, "cancelled", None)
            return
        except Exception as exc:
            timed_out = isinstance(exc, TimeoutError) and deadline is not None and deadline.expired()
            await self._failed(row, descriptor, session, exc, timed_out)
            return
        try:
            json.dumps(value)
            stored = value
        except (TypeError, ValueError):
            log.warning("task %s returned a %s, stored as its repr (results are JSON)", row.name, type(value).__name__)
            stored = repr(value)
        if await self.queries.transition(row.id, ["running"], status="completed", result=stored, error=None,
                                         worker=None, follow_up=self._next_occurrence(row)):
            await self._finished(row, session, "completed", None)
        else:  # cancelled while it finished
            await self._finished(row, session, "cancelled", None)

    async def _failed(
        self, row: TaskRow, descriptor: TaskDescriptor | None, session: Session | None, exc: Exception, timed_out: bool
    ) -> None:
        text = "timed out" if timed_out else _error_text(exc)
        if timed_out:
            log.warning("task %s (%s) timed out after %ss (attempt %d)", row.id, row.name, row.timeout, row.attempts)
        else:
            log.error("task %s (%s) raised (attempt %d of %d)", row.id, row.name, row.attempts, row.max_attempts,
                      exc_info=exc)
        delay = self._retry_delay(descriptor, row, exc) if descriptor is not None else None
        if delay is not None:
            run_at = utcnow() + timedelta(seconds=delay)
            if await self.queries.transition(row.id, ["running"], status="retry", run_at=run_at, worker=None,
                                             error=text):
                await self._finished(row, session, "retry", text)
                return
        status = "timeout" if timed_out else "failed"
        await self.queries.transition(row.id, ["running"], status=status, worker=None, error=text,
                                      follow_up=self._next_occurrence(row))
        await self._finished(row, session, status, text)

    def _retry_delay(self, descriptor: TaskDescriptor, row: TaskRow, exc: Exception) -> float | None:
        """Seconds until the next attempt, or None when the task has no attempt left or the
        exception does not qualify. tenacity decides both; the wait happens in the table."""
        options = descriptor.options
        initial, maximum = options.backoff or (self.settings.task_backoff_initial, self.settings.task_backoff_max)
        retry_for = options.retry_for
        retrying = tenacity.AsyncRetrying(
            stop=tenacity.stop_after_attempt(row.max_attempts),
            wait=tenacity.wait_exponential_jitter(
                multiplier=initial, max=maximum, jitter=self.settings.task_backoff_jitter
            ),
            # Capsule: with retry_for, only an exact type match retries
            retry=tenacity.retry_if_exception(lambda e: retry_for is None or type(e) in retry_for),
        )
        state = tenacity.RetryCallState(retrying, None, (), {})
        state.attempt_number = row.attempts
        state.outcome = tenacity.Future.construct(row.attempts, exc, True)
        if not retrying.retry(state) or retrying.stop(state):
            return None
        return float(retrying.wait(state))

    async def _finished(self, row: TaskRow, session: Session | None, status: str, error: str | None) -> None:
        """After an attempt: save session.data, free the lock, update cards, wake waiters."""
        if session is not None and session.id:
            try:
                await session.flush_data()
            except Exception:
                log.exception("saving session.data after task %s failed", row.id)
        if row.lock_key:
            await self.rt.store.leases.release(self._lock_name(row), self._lock_holder(row))
        self._running.pop(row.id, None)
        self._changed_now(row.id)
        await self._update_cards(row.id)
        if status in FINISHED:
            self._changed.pop(row.id, None)  # waiters hold the event they wait on
            self._card_locks.pop(row.id, None)
            self._card_seen.pop(row.id, None)
            if self.app.task_descriptors.get(row.name) and self.app.task_descriptors[row.name].options.callback_url:
                self._spawn(self._callback(row, status, error), f"chatgate-task-callback-{row.id}")
        self._wake.set()

    @staticmethod
    def _next_occurrence(row: TaskRow) -> TaskRow | None:
        """A recurring task's next run (on its grid, skipping the ticks it overran), or None."""
        if not row.recurrence_seconds:
            return None
        interval = float(row.recurrence_seconds)
        previous = as_utc(row.run_at) or utcnow()
        missed = max(0, int((utcnow() - previous).total_seconds() // interval))
        run_at = previous + timedelta(seconds=interval * (missed + 1))
        return TaskRow(
            name=row.name, display_name=row.display_name, session_id=row.session_id, kwargs=dict(row.kwargs),
            status="scheduled", max_attempts=row.max_attempts, timeout=row.timeout, lock_key=row.lock_key,
            recurrence_seconds=row.recurrence_seconds, run_at=run_at,
        )

    async def _callback(self, row: TaskRow, status: str, error: str | None) -> None:
        import aiohttp

        descriptor = self.app.task_descriptors[row.name]
        started = as_utc(row.started_at) or utcnow()
        body = {"task_id": row.id, "status": status, "duration": (utcnow() - started).total_seconds(), "error": error}
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http, \
                    http.post(str(descriptor.options.callback_url), json=body) as response:
                if response.status >= 400:
                    log.warning("task callback for %s answered HTTP %d", row.id, response.status)
        except Exception as exc:
            log.warning("task callback for %s failed: %s", row.id, exc)

    async def _session_for(self, row: TaskRow) -> Session:
        if row.session_id:
            return await self.rt.sessions.open(row.session_id)
        return await synthetic_session(self.rt)

    # -- locks ---------------------------------------------------------------------------

    @staticmethod
    def _lock_name(row: TaskRow) -> str:
        return f"task-lock:{row.lock_key}"

    @staticmethod
    def _lock_holder(row: TaskRow) -> str:
        """The task holds its lock (not the worker), so whoever recovers the task frees it."""
        return f"task:{row.id}"

    async def _take_lock(self, row: TaskRow) -> bool:
        return await self.rt.store.leases.acquire(
            self._lock_name(row), self._lock_holder(row), self.settings.leader_lease_seconds
        )

    async def _release_lock(self, row: TaskRow) -> None:
        await self.rt.store.leases.release(self._lock_name(row), self._lock_holder(row))

    # -- helpers -------------------------------------------------------------------------

    def _changed_now(self, task_id: str) -> None:
        event = self._changed.get(task_id)
        if event is not None:
            event.set()

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


async def synthetic_session(runtime: TaskHost) -> Session:
    """The owner session of schedules and session-less tasks (Capsule): ``id == ""``, no reply
    target (``reply`` only logs, ``show``/``notify`` do nothing, ``stream_reply`` raises), but
    ``db``, the user/owner/app key-value scopes and ``integrations`` (the owner's connected
    accounts, as Capsule's ``GetUserIntegrations(owner_id)``) work, bound to the owner."""
    owner_id = runtime.settings.scheduler.owner_id
    owner = UserInfo(owner_id, None, UserInfo.org_id_from_owner_id(owner_id))
    integrations = await runtime.integrations_for(owner)
    return Session("", owner, SessionChannel("chat"), integrations=integrations,
                   conversation=runtime.conversation("", SessionChannel("chat")), mode="synthetic")


def _card_fields(row: TaskRow) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "name": row.name,
        "display_name": row.display_name or row.name,
        "status": row.status,
        "attempts": row.attempts,
        "max_attempts": row.max_attempts,
    }
    if row.status == "completed" and row.result is not None:
        fields["result"] = row.result
    if row.status in ("failed", "timeout", "retry") and row.error:
        fields["error"] = row.error
    if row.status in ("retry", "scheduled"):
        fields["next_attempt_at"] = (as_utc(row.run_at) or utcnow()).isoformat()
    return fields


def _error_text(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return text if len(text) <= ERROR_TEXT_LIMIT else text[: ERROR_TEXT_LIMIT - 1] + "…"
