"""The Dispatcher: inbound event -> durable inbox -> one ordered lane per session -> handler.

- ``submit`` stores the event in the inbox before it returns (adapters acknowledge the platform
  only then); a repeated dedup key is dropped there. Keys are remembered for
  ``dispatch.dedup_retention_hours`` (24 h by default: Slack redelivers for up to an hour and
  Telegram keeps unconfirmed updates for 24 h) and purged hourly after that.
- A session's events run one at a time in arrival order; sessions run concurrently, at most
  ``dispatch.max_concurrent_sessions`` at once.
- A waiting prompt takes the next event that answers it before the event would queue.
- ``stop`` cancels the session's running handler at once (it never queues).
- At start-up, every event recorded but not finished (the process died) runs again, in order.

Split into ``chatgate web`` and ``chatgate worker`` (``gateway.claims``), the web process's
dispatcher only records (``runs_handlers=False``: the event is stored and the workers are told
over PostgreSQL ``NOTIFY``); a worker's dispatcher is fed the recorded events of the sessions it
holds the lease of (``route``), each with the lease's fence, and tells the claims when a lane
runs dry (``on_idle``) so the lease can be given back.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from gateway.ids import new_id
from gateway.inbound import Accepted, Inbound
from gateway.prompts import PromptRegistry
from gateway.store import Store
from gateway.store.fence import Fence
from gateway.store.records import TurnContext
from gateway.types import UnknownSession, UserInfo

__all__ = ["Dispatcher", "Lane", "UnknownSession", "WorkItem"]

log = logging.getLogger("chatgate.dispatch")

PURGE_EVERY = 3600.0  # seconds between inbox purges of expired dedup keys
MAX_ATTEMPTS = 3  # an event interrupted this many times (it keeps killing the process) is given up


@dataclass
class WorkItem:
    inbox_id: str
    session_id: str
    inbound: Inbound
    message_id: str | None = None
    """The stored user message of a ``message`` event (``None`` for a recovered event: look it up)."""
    sender: UserInfo | None = None
    """The chatgate user behind ``inbound.user`` when intake already resolved it (``None``: ask the store)."""
    received_at: float | None = None
    """Wall-clock time (``time.time()``) the event was recorded: its turn's latency is timed from it."""
    fence: Fence | None = None
    """The session lease this event runs under (``chatgate worker``); ``None`` in one process."""
    context: TurnContext | None = None
    """The turn's context, read as the event was recorded, for a turn that starts at once (see
    ``Dispatcher.submit``); ``None``: the turn reads it."""
    retried: bool = False
    """The event ran before and was interrupted: replies it already stored are not sent again."""
    finishing: bool = False
    """Its handler is over and its turn records the outcome: a stop no longer cancels it (the
    runner sets it; see ``Dispatcher.stop``)."""
    hand_over: Callable[[asyncio.Future[None]], None] | None = None
    """Set by the dispatcher while the turn runs: the runner calls it with the write of the turn's
    final status once it is queued, and the session's next event may start (``Dispatcher._hand_over``)."""
    after: asyncio.Future[None] | None = None
    """The previous turn's status write, still on its way when this turn started: the turn runs
    nothing before it is done (``Dispatcher._hand_over``)."""


@dataclass
class Lane:
    """One session's events: run one at a time, in arrival order."""

    session_id: str
    queue: deque[WorkItem] = field(default_factory=deque)
    running: asyncio.Task[None] | None = None
    """The task running ``current``'s turn; ``None`` between turns."""
    current: WorkItem | None = None
    waiting: bool = False
    """Queued for a slot (``Dispatcher._waiting_for_slot``)."""
    finishing: set[asyncio.Task[None]] = field(default_factory=set)
    """Turns that handed the lane over and still wait for their status to commit: the lane is
    not dry (nor its lease free) until they are done."""
    unwritten: asyncio.Future[None] | None = None
    """The status write of the last handed-over turn (``Dispatcher._hand_over``)."""

    def free(self) -> bool:
        """Nothing runs or waits to run here: an event for the session would start at once."""
        return self.running is None and not self.queue and not self.waiting

    def caught_up(self) -> bool:
        """``free``, and the last turn's status is stored, its replies with it: a read now sees them."""
        return self.free() and (self.unwritten is None or self.unwritten.done())


Runner = Callable[[WorkItem], Coroutine[Any, Any, None]]


class Dispatcher:
    def __init__(
        self,
        store: Store,
        runner: Runner,
        *,
        max_concurrent: int = 64,
        dedup_retention: timedelta = timedelta(hours=24),
        runs_handlers: bool = True,
        notify: str | None = None,
        context_rows: Callable[[], int] | None = None,
    ) -> None:
        """``runs_handlers=False`` (``chatgate web``): ``submit`` records and returns, and the
        PostgreSQL channel ``notify`` is told the session id in the same transaction.
        ``context_rows`` says how many history rows a turn reads with its session now; when
        given, a message for a session with nothing running here has its turn's context read as
        it is recorded."""
        self.store = store
        self.runner = runner
        self.prompts = PromptRegistry()
        self._lanes: dict[str, Lane] = {}
        self._free_slots = max_concurrent
        self._waiting_for_slot: deque[Lane] = deque()
        """Lanes with an event to run and no slot yet, in the order they asked."""
        self._retention = dedup_retention
        self._closed = False
        self._background: set[asyncio.Task[None]] = set()
        self._in_hand: set[str] = set()
        self._held: list[WorkItem] | None = None
        """Events recorded while start-up recovery is pending (``hold_until_recovered``)."""
        """Inbox ids queued or running here: unfinished in the inbox, yet not for ``recover``."""
        self._idle = asyncio.Event()
        self._idle.set()
        self.runs_handlers = runs_handlers
        self._notify = notify
        self._context_rows = context_rows if runs_handlers else None
        self.interrupted: set[str] = set()
        """Sessions whose running handler ``close`` had to cancel (past its grace)."""
        self.on_idle: Callable[[str], None] | None = None
        """Called with a session id when its lane ran dry (the worker's claims release the lease)."""

    # -- intake --------------------------------------------------------------------------

    async def submit(self, inbound: Inbound, session_id: str, *, sender: UserInfo | None = None) -> Accepted:
        """Record ``inbound`` for the session ``session_id`` and route it. Safe to acknowledge on
        return. Raises ``UnknownSession`` when there is no such session (checked in the same
        transaction that records the event, so a session deleted meanwhile records nothing)."""
        if self._closed:
            raise RuntimeError("the dispatcher is shutting down")
        received_at = time.time()
        message = inbound.message if inbound.kind == "message" else None
        # A message for a session idle here starts its turn as soon as it is recorded: on
        # PostgreSQL the statement that records it reads what the turn needs too, a round trip
        # fewer (``InboxQueries.record``; elsewhere the turn's read stays in this process).
        context = None if message is None else self.context_to_read(session_id)
        entry = await self.store.inbox.record(
            session_id,
            inbound.dedup_key,
            inbound.kind,
            inbound.to_json(),
            user_text=None if message is None else message.text,
            attachments=None if message is None else [a.to_dict() for a in message.attachments or []],
            repeat=(inbound.repeat_key, inbound.repeat_window) if inbound.repeat_key else None,
            notify=self._notify,
            context=context,
        )
        if entry.duplicate:
            log.info("dropped duplicate %s event %s", inbound.kind, inbound.dedup_key)
            return Accepted(entry.id, session_id, duplicate=True)
        if message is not None and entry.message_id:
            message.id = entry.message_id
        if not self.runs_handlers:  # a worker holding the session's lease runs it
            return Accepted(entry.id, session_id)
        item = WorkItem(entry.id, session_id, inbound, entry.message_id, sender, received_at=received_at,
                        context=entry.context)
        if self._held is not None:  # older interrupted events run first (see recover)
            item.context = None
            self._held.append(item)
        else:
            self._route(item)
        return Accepted(entry.id, session_id)

    def context_to_read(self, session_id: str) -> tuple[str, int] | None:
        """What an event of the session routed now would have its turn's context read with,
        ``(history cut-off id, history rows)``: when the event would start at once (a slot is
        free, the session has nothing running here) and the store reads contexts with its
        statements (PostgreSQL). ``None``: the turn reads its own as it starts."""
        if self._context_rows is None or not self._free_slots or self._held is not None:
            return None
        rows = self._context_rows()
        return (new_id(), rows) if self._starts_at_once(session_id, with_history=rows > 0) else None

    def _starts_at_once(self, session_id: str, *, with_history: bool) -> bool:
        """Whether an event for the session recorded now would start at once, with a context
        read as it is recorded still true: history read then must not miss a reply of the last
        turn still on its way with its status (``Lane.unwritten``); the session's row and user
        are written by then."""
        lane = self._lanes.get(session_id)
        return lane is None or (lane.caught_up() if with_history else lane.free())

    def route(self, item: WorkItem) -> None:
        """Route an event already recorded: a stop, a prompt's answer, or the session's lane."""
        self._route(item)

    def _route(self, item: WorkItem) -> None:
        kind = item.inbound.kind
        if kind == "stop":
            self.stop(item.session_id)
            self._mark(item.inbox_id, "done", fence=item.fence)
            return
        if self.prompts.offer(item.session_id, item.inbound):
            # The answer is kept in the inbox row (done) and reaches the waiting handler.
            self._mark(item.inbox_id, "done", fence=item.fence)
            return
        if kind == "signal":  # an answer to a prompt nobody waits for any more
            self._mark(item.inbox_id, "done", "no prompt was waiting", fence=item.fence)
            return
        lane = self._lanes.get(item.session_id)
        if lane is None:
            lane = self._lanes[item.session_id] = Lane(item.session_id)
            self._idle.clear()
        if item.context is not None and (lane.queue or lane.running is not None or not self._free_slots):
            item.context = None  # it waits for another turn or a slot: read afresh when it starts
        lane.queue.append(item)
        self._in_hand.add(item.inbox_id)
        if lane.running is None and not lane.waiting:
            self._start_next(lane)

    def _mark(self, inbox_id: str, status: str, error: str | None = None, *, fence: Fence | None = None) -> None:
        task = asyncio.create_task(self.store.inbox.set_status(inbox_id, status, error, fence=fence))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(_log_failure)

    # -- lanes ---------------------------------------------------------------------------

    def _start_next(self, lane: Lane) -> None:
        """Run the lane's next event in a task of its own if a slot is free, else queue the lane
        for one; forget the lane when it ran dry. No task waits between turns: each turn's end
        starts the next one (a task per lane cost a REST turn 3 % of its CPU).

        An event leaves its queue only once a slot is held: a session waiting for a slot is still
        busy, and shutdown starting meanwhile leaves it for the next start."""
        while lane.queue and not self._closed:
            if self._free_slots == 0:
                lane.waiting = True
                self._waiting_for_slot.append(lane)
                return
            item = lane.queue.popleft()
            if item.fence is not None and item.fence.lost:  # another worker runs it now
                self._in_hand.discard(item.inbox_id)
                continue
            self._free_slots -= 1
            lane.current = item
            if lane.unwritten is not None and not lane.unwritten.done():
                item.after = lane.unwritten
                if item.context is not None and item.context.history is not None:
                    item.context = None  # its history may miss the last turn's reply: read afresh
            item.hand_over = functools.partial(self._hand_over, lane, item)
            lane.running = asyncio.create_task(self.runner(item), name=f"chatgate-turn-{item.inbox_id}")
            lane.running.add_done_callback(functools.partial(self._turn_over, lane, item))
            return
        dry = not lane.queue and not lane.finishing and self._lanes.get(lane.session_id) is lane
        if dry:
            del self._lanes[lane.session_id]
        if not self._lanes:
            self._idle.set()
        if dry and self.on_idle is not None:
            self.on_idle(lane.session_id)

    def _hand_over(self, lane: Lane, item: WorkItem, unwritten: asyncio.Future[None]) -> None:
        """The turn of ``item`` queued its final status (``unwritten``, done once stored): let
        the lane's next event start now rather than once the turn's task is over. It runs
        nothing before that status is stored (``WorkItem.after``), so a crash still leaves at
        most one event of the session to run again, as before; what it gains is that its
        context may be read as it is recorded, while the status is on its way: its session and
        user, which the turn wrote before (history only once the status is in, as the turn's
        last replies share its batch: ``Dispatcher._starts_at_once``).

        The turn's slot is freed here; the session stays busy here (``busy``, the lease) until
        the turn's task is over."""
        item.hand_over = None
        if lane.current is not item or lane.running is None:
            return
        lane.unwritten = unwritten
        lane.finishing.add(lane.running)
        lane.running = None
        lane.current = None
        self._release_slot(lane)

    def _turn_over(self, lane: Lane, item: WorkItem, task: asyncio.Task[None]) -> None:
        """A turn's task is done: free its slot, give it to the lane that waited longest, and go
        on with this lane (behind those, as a slot's waiters are served in order). A turn that
        handed the lane over (``_hand_over``) only leaves it, maybe dry now."""
        if task.cancelled():
            if not self._closed:
                log.info("turn %s in session %s was stopped", item.inbox_id, lane.session_id)
        elif (error := task.exception()) is not None:  # the runner handles handler errors; this is a bug
            log.error("turn %s failed outside the handler", item.inbox_id, exc_info=error)
        item.hand_over = None
        self._in_hand.discard(item.inbox_id)
        if task in lane.finishing:
            lane.finishing.discard(task)
            if lane.free():
                self._start_next(lane)  # nothing to start: forgets the lane once its last turn is over
            return
        lane.running = None
        lane.current = None
        self._release_slot(lane)

    def _release_slot(self, lane: Lane) -> None:
        self._free_slots += 1
        if self._waiting_for_slot and lane.queue and not self._closed:
            lane.waiting = True
            self._waiting_for_slot.append(lane)
        else:
            self._start_next(lane)
        while self._free_slots and self._waiting_for_slot and not self._closed:
            waited = self._waiting_for_slot.popleft()
            waited.waiting = False
            self._start_next(waited)

    def stop(self, session_id: str) -> bool:
        """Cancel the session's running handler; True if one was running. A turn whose handler
        is over is left to record its outcome (``WorkItem.finishing``)."""
        lane = self._lanes.get(session_id)
        if lane is None or lane.running is None or lane.running.done():
            return False
        if lane.current is not None and lane.current.finishing:
            return False
        lane.running.cancel()
        return True

    async def settled(self) -> None:
        """Wait for the inbox statuses still being recorded (stops and prompt answers are marked
        done in the background): a worker does so before it gives a session's lease back."""
        if self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)

    def abandon(self, session_id: str) -> None:
        """The session's lease was lost: run none of its queued events here, and cancel the
        running one (another worker runs them all now; the turn writes nothing more)."""
        lane = self._lanes.get(session_id)
        if lane is None:
            return
        for item in lane.queue:
            self._in_hand.discard(item.inbox_id)
        lane.queue.clear()
        if lane.running is not None and not lane.running.done():
            if lane.current is None or not lane.current.finishing:  # a finishing turn's writes carry the fence
                lane.running.cancel()

    @property
    def closing(self) -> bool:
        """True once shutdown began: a cancelled turn is then an interruption, not a stop."""
        return self._closed

    def running_inbound(self, session_id: str) -> str | None:
        """The inbox id of the event whose handler runs in this session now, if any."""
        lane = self._lanes.get(session_id)
        if lane is None or lane.current is None or lane.running is None or lane.running.done():
            return None
        return lane.current.inbox_id

    def busy(self, session_id: str) -> bool:
        """Whether anything of the session is here: queued, running, or recording its outcome."""
        lane = self._lanes.get(session_id)
        return lane is not None and (lane.running is not None or bool(lane.queue) or bool(lane.finishing))

    async def wait_idle(self, timeout: float | None = None) -> None:
        """Wait until every lane is empty (tests, graceful shutdown)."""
        await asyncio.wait_for(self._idle.wait(), timeout)

    # -- start-up and shutdown -----------------------------------------------------------

    def hold_until_recovered(self) -> None:
        """Record the events submitted from now on, but route them only once ``recover`` has
        routed the interrupted ones: adapters start taking events (Telegram's backlog after a
        restart) before recovery runs, and one session's events must still run in arrival order."""
        self._held = []

    async def recover(self) -> int:
        """Run again every event that was recorded but not finished before a crash, then the
        events held meanwhile (``hold_until_recovered``), in the order they arrived.

        Events this dispatcher already holds are left alone: they are unfinished in the inbox too."""
        held = self._held or []
        fresh = {item.inbox_id for item in held}
        rows = [row for row in await self.store.inbox.unfinished()
                if row.id not in self._in_hand and row.id not in fresh]
        try:
            for row in rows:
                inbound = Inbound.from_json(row.payload)
                item = WorkItem(row.id, row.session_id, inbound, received_at=_epoch(row.created_at))
                await self.recover_item(item)
        finally:
            self._held = None
            for item in held:
                self._route(item)
        return len(rows)

    async def recover_item(self, item: WorkItem) -> None:
        """Route an event whose run was interrupted (its process died): a stop or an answer is
        moot; a turn's half-streamed replies are settled, the attempt counted, and it runs again
        unless it was interrupted ``MAX_ATTEMPTS`` times. Every write carries the item's fence."""
        inbound, fence = item.inbound, item.fence
        if inbound.kind in ("stop", "signal"):
            await self.store.inbox.set_status(item.inbox_id, "done", "process restarted", fence=fence)
            return
        await self.store.messages.fail_streams_of(item.inbox_id, fence=fence)
        interruptions = await self.store.inbox.count_attempt(item.inbox_id, fence=fence)
        if interruptions >= MAX_ATTEMPTS:
            log.error("giving up %s event %s: it was interrupted %d times (does it crash the process?)",
                      inbound.kind, inbound.dedup_key, interruptions)
            error = f"interrupted {interruptions} times"
            await self.store.inbox.set_status(item.inbox_id, "failed", error, fence=fence)
            return
        log.info("re-running %s event %s (interrupted by a restart)", inbound.kind, inbound.dedup_key)
        item.retried = True
        self._route(item)

    async def purge_forever(self) -> None:
        """Forget expired dedup keys every hour."""
        while True:
            try:
                removed = await self.store.inbox.purge(self._retention)
                if removed:
                    log.info("forgot %d inbox entries older than %s", removed, self._retention)
            except Exception:
                log.warning("inbox purge failed; will retry", exc_info=True)
            await asyncio.sleep(PURGE_EVERY)

    async def close(self, grace: float = 5.0) -> None:
        """Stop taking events; give running handlers ``grace`` seconds, then cancel them.

        A cancelled turn stays ``running`` in the inbox, so it runs again at the next start.
        """
        self._closed = True
        turns = {lane.running: lane for lane in self._lanes.values() if lane.running is not None}
        turns.update((task, lane) for lane in self._lanes.values() for task in lane.finishing)
        if turns:
            _, pending = await asyncio.wait(turns, timeout=grace)
            for task in pending:  # a turn recording its outcome gets another grace to finish
                current = turns[task].current
                handed_over = task in turns[task].finishing
                if not handed_over and (current is None or not current.finishing):
                    self.interrupted.add(turns[task].session_id)
                    task.cancel()
            if pending:
                _, hung = await asyncio.wait(pending, timeout=grace)
                for task in hung:
                    self.interrupted.add(turns[task].session_id)
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("recording an inbox status failed: %s", task.exception())


def _epoch(moment: datetime) -> float:
    """A stored time as ``time.time()`` counts (SQLite hands back naive datetimes; the store writes UTC)."""
    return (moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)).timestamp()
