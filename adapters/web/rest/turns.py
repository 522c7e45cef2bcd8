"""REST turns: submit a message, know when its turn ends, and answer a re-POST with the same turn.

The PromptRails SDK re-POSTs ``send_message`` when its request times out or gets a 5xx, so the
same content arriving again for the same session while its turn runs (or within
``web.dedup_window`` seconds after) joins the first turn instead of running the handler twice.

Each turn is watched through a subscription to the session's bus topic, entered *before* the
message is submitted so its ``turn_end`` cannot be missed, and every request that cares (the
first POST, its retries) waits on the same :class:`RestTurn`, whatever happens to the others.
No task waits on the subscription: the bus calls the watch when an event arrives
(``Subscription.listen``), and the POST that made the turn leaves the subscription once the turn
is over. Only a turn that outlives that POST (it timed out) gets a task to see it end.
A retry that lands on another process (or on this one after a restart) is recognised by the
store: the message is recorded with its content digest as a repeat key, and the core answers a
repeat within the window with the first turn's id, whose end this process then learns from the
bus (a turn still running elsewhere) or from the store (a turn already over).

The watcher also keeps the turn's replies as they pass on the bus. When the turn ran in this
process and its ``turn_end`` says every reply went out as a plain message (``told_all``, see
``outbox.py``), those are exactly the replies stored for it, and ``send_message`` answers from
them without reading the turn back from the store.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from adapters.base import Inbound, SubscriberOverflow, Subscription

from ..context import WebContext
from ..outbox import session_topic
from .catch_up import turn_outcome

log = logging.getLogger("chatgate.web.rest")

WATCH_GRACE_SECONDS = 30.0
"""How much longer than the handler timeout a watcher waits for ``turn_end`` before giving up."""
UNBOUNDED_WATCH_SECONDS = 6 * 3600.0
"""The watch limit when handlers have no timeout (``dispatch.handler_timeout = 0``)."""


def _set_flag() -> asyncio.Event:
    flag = asyncio.Event()
    flag.set()
    return flag


OVER = _set_flag()
"""The ``submitted`` and ``ended`` of every turn that is over: a set ``Event`` binds no loop and
queues no waiter, so one serves them all.

An ended turn is kept ``web.dedup_window`` seconds for a re-POST to join: 15,000 of them at
1,500 turns/s. With two events of its own each (an object, a dict and a waiter deque apiece)
and a reference cycle through ``on_end``, they were most of what the garbage collector walked
on a busy gateway: a full collection took 45-55 ms, 5 % of the CPU (``gc.callbacks``,
bench/README.md)."""


@dataclass(slots=True, weakref_slot=True)
class RestTurn:
    session_id: str
    process: str = ""
    """This process, as ``turn_end``'s ``told_all`` names it (``outbox.TurnLedger``)."""
    inbound_id: str = ""
    submitted: asyncio.Event = field(default_factory=asyncio.Event)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    error: str | None = None
    failure: BaseException | None = None
    """Set when submitting failed; every waiter re-raises it."""
    ended_at: float | None = None
    joined: bool = False
    """The core recognised this as a repeat of a turn recorded earlier (maybe by another process)."""
    message_id: str = ""
    """The stored id of the turn's user message (empty when the core did not say)."""
    replies: list[dict[str, Any]] = field(default_factory=list)
    """The assistant messages published for this turn, as the bus carried them, in id order."""
    told_all: bool = False
    """The turn ran in this process, ``replies`` are all it stored, and this request saw them all:
    its answer needs nothing from the store (see the module docstring)."""
    _ends: dict[str | None, dict[str, Any]] = field(default_factory=dict)
    """Inbound id -> ``turn_end`` seen on the session's topic (until submit returns, any turn's)."""
    _said: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    """Inbound id -> the assistant messages published for that turn, likewise."""
    on_end: Callable[[], None] | None = None
    """Called once when the turn is over (``RestTurns`` starts counting its dedup window)."""
    watch: _Watch | None = None
    """The turn's subscription, until the POST that made it releases it (``RestTurns.wait``)."""

    def finish(self, error: str | None) -> None:
        if not self.ended.is_set():
            self.error = error
            self.ended_at = time.monotonic()
            self.ended.set()  # wakes its waiters; the shared flag takes its place (see OVER)
            self.ended = OVER
            if self.submitted.is_set():
                self.submitted = OVER
            on_end, self.on_end = self.on_end, None
            if on_end is not None:
                on_end()

    def observe(self, event: dict[str, Any]) -> None:
        """Take in one event of the session's topic; finishes the turn on its ``turn_end``."""
        kind = event.get("type")
        if kind == "turn_end":
            self._ends[event.get("inbound_id")] = event
            self.settle()
        elif kind == "message" and event.get("turn") is not None:
            turn = event["turn"]
            message = event.get("message") or {}
            if message.get("role") == "assistant" and (not self.submitted.is_set() or turn == self.inbound_id):
                self._said.setdefault(turn, []).append(message)

    def settle(self) -> bool:
        """Finish once submitted if this turn's ``turn_end`` was seen; True when it is over."""
        if self.ended.is_set():
            return True
        if not self.submitted.is_set() or self.failure is not None:
            return False
        end = self._ends.get(self.inbound_id)
        if end is None:
            return False
        self.replies = sorted(self._said.get(self.inbound_id, []), key=lambda m: str(m.get("id")))
        self.told_all = not self.joined and bool(self.process) and end.get("told_all") == self.process
        self._ends.clear()
        self._said.clear()
        self.finish(end.get("error"))
        return True

    async def wait_submitted(self) -> None:
        await self.submitted.wait()
        if self.failure is not None:
            raise self.failure

    async def wait_ended(self, timeout: float) -> bool:
        """True when the turn ended within ``timeout`` seconds."""
        try:
            async with asyncio.timeout(timeout):  # not wait_for: no task made for the wait (3.11)
                await self.ended.wait()
        except TimeoutError:
            return False
        return True


def content_digest(owner_key: str, session_id: str, content: str) -> str:
    return hashlib.sha256(f"{owner_key}\0{session_id}\0{content}".encode()).hexdigest()


class RestTurns:
    def __init__(self, ctx: WebContext) -> None:
        self._ctx = ctx
        self._recent: dict[str, RestTurn] = {}
        self._ended: deque[tuple[str, RestTurn]] = deque()
        """Ended turns in the order they ended, so forgetting old ones never scans live ones."""

    async def submit(self, digest: str, session_id: str, make_inbound: Callable[[], Inbound]) -> tuple[RestTurn, bool]:
        """Run a turn for this content, or join the identical one still running or just ended.

        Returns the turn and whether it was joined (a duplicate POST). The caller that did not
        join owns the turn's watch: it waits with :meth:`wait`, which also releases the watch.
        """
        self._forget_old()
        existing = self._recent.get(digest)
        if existing is not None and existing.failure is None:
            await existing.wait_submitted()
            return existing, True
        turn = RestTurn(session_id, self._ctx.turn_ledger.process)
        turn.on_end = lambda: self._ended.append((digest, turn))
        self._recent[digest] = turn  # claimed before any await: a concurrent duplicate joins it
        watch: _Watch | None = None
        try:
            joining = self._ctx.core.bus.subscribe(session_topic(session_id))
            watch = _Watch(turn, joining, await joining.__aenter__(), self._cut_off)
            inbound = make_inbound()
            accepted = await self._ctx.core.submit(inbound)
        except BaseException as exc:
            turn.failure = exc
            turn.submitted.set()
            self._recent.pop(digest, None)
            if watch is not None:
                await watch.leave()
            raise
        turn.inbound_id = accepted.inbound_id
        turn.joined = accepted.duplicate
        if inbound.message is not None and not accepted.duplicate:
            turn.message_id = inbound.message.id  # the core stored it with the event, under this id
        turn.submitted.set()
        if turn.ended.is_set():  # over before it was submitted (the bus closed)
            turn.submitted = OVER
        turn.watch = watch
        if not turn.settle():  # its turn_end may have come while it was being submitted
            watch.wake()  # what arrived meanwhile
            if not turn.ended.is_set() and turn.joined:
                self._ctx.core.spawn(self._ask_store(turn), name=f"chatgate-web-repeat-{session_id}")
        return turn, accepted.duplicate

    async def wait(self, turn: RestTurn, joined: bool, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the turn's end; True when it ended. The POST that
        made the turn (``joined`` false) then leaves its watch, or hands it to a task when the
        turn goes on."""
        try:
            return await turn.wait_ended(timeout)
        finally:
            if not joined and (watch := turn.watch) is not None:
                turn.watch = None
                if turn.ended.is_set():
                    await watch.leave()
                else:
                    self._ctx.core.spawn(self._outlive(turn, watch), name=f"chatgate-web-turn-{turn.session_id}")

    async def _outlive(self, turn: RestTurn, watch: _Watch) -> None:
        """Keep watching a turn its POST stopped waiting for, so a re-POST can still join it,
        until it ends or runs past the handler timeout (and a grace)."""
        timeout = self._ctx.settings.dispatch.handler_timeout
        limit = timeout + WATCH_GRACE_SECONDS if timeout else UNBOUNDED_WATCH_SECONDS
        try:
            if not await turn.wait_ended(limit):
                log.warning("turn %s: no turn_end after %.0fs; stopped waiting", turn.inbound_id, limit)
                turn.finish("timeout")
        finally:
            await watch.leave()

    async def _ask_store(self, turn: RestTurn) -> None:
        """A repeat of a turn recorded earlier may be over already (no ``turn_end`` will come),
        or still running somewhere (its ``turn_end`` comes on the bus)."""
        done, error = await turn_outcome(self._ctx.core.sessions, turn.inbound_id, 0)
        if done:
            turn.finish(error)

    def _cut_off(self, turn: RestTurn) -> None:
        self._ctx.core.spawn(self._from_store(turn), name=f"chatgate-web-turn-{turn.session_id}")

    async def _from_store(self, turn: RestTurn) -> None:
        """The bus cut the watch off (a burst of frames, a lost connection): the turn goes on,
        and its end is in the store."""
        await turn.submitted.wait()
        if turn.failure is None and not turn.ended.is_set():
            timeout = self._ctx.settings.dispatch.handler_timeout
            limit = timeout + WATCH_GRACE_SECONDS if timeout else UNBOUNDED_WATCH_SECONDS
            done, error = await turn_outcome(self._ctx.core.sessions, turn.inbound_id, limit)
            turn.finish(error if done else "timeout")

    def _forget_old(self) -> None:
        window = self._ctx.settings.web.dedup_window
        now = time.monotonic()
        while self._ended:
            digest, turn = self._ended[0]
            if turn.ended_at is not None and now - turn.ended_at <= window:
                break
            self._ended.popleft()
            if self._recent.get(digest) is turn:
                del self._recent[digest]


class _Watch:
    """One turn's subscription to its session's events, read when the bus says there is
    something to read: ``wake`` feeds them to the turn until its ``turn_end``. ``cut_off`` is
    told when the bus cut the subscription off (its end must then come from the store)."""

    __slots__ = ("_cut_off", "_events", "_joining", "_left", "_turn")

    def __init__(
        self, turn: RestTurn, joining: Any, events: Subscription, cut_off: Callable[[RestTurn], None]
    ) -> None:
        self._turn, self._cut_off = turn, cut_off
        self._joining, self._events = joining, events
        self._left = False
        events.listen(self.wake)

    def wake(self) -> None:
        """Called by the publisher (synchronously): take in what arrived; never raises."""
        turn, events = self._turn, self._events
        try:
            while not turn.ended.is_set() and events.ready():
                event = events.read_ready()
                if event is None:  # the bus closed: no end will come
                    turn.finish("timeout")
                    break
                turn.observe(event)
        except (SubscriberOverflow, ConnectionError):
            events.listen(None)
            self._cut_off(turn)
        except Exception:
            events.listen(None)
            log.exception("watching REST turn %s failed", turn.inbound_id)
            turn.finish("timeout")
        if turn.ended.is_set():
            events.listen(None)

    async def leave(self) -> None:
        """Leave the subscription (once)."""
        if not self._left:
            self._left = True
            self._events.listen(None)
            await self._joining.__aexit__(None, None, None)
