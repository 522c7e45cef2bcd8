"""REST turns: submit a message, know when its turn ends, and answer a re-POST with the same turn.

The PromptRails SDK re-POSTs ``send_message`` when its request times out or gets a 5xx, so the
same content arriving again for the same session while its turn runs (or within
``web.dedup_window`` seconds after) joins the first turn instead of running the handler twice.

Each turn is watched by a background task subscribed to the session's bus topic *before* the
message is submitted, so its ``turn_end`` cannot be missed, and every request that cares (the
first POST, its retries) waits on the same :class:`RestTurn`, whatever happens to the others.
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

from adapters.base import Inbound, SubscriberOverflow

from ..context import WebContext
from ..outbox import session_topic
from .catch_up import turn_outcome

log = logging.getLogger("chatgate.web.rest")

WATCH_GRACE_SECONDS = 30.0
"""How much longer than the handler timeout a watcher waits for ``turn_end`` before giving up."""
UNBOUNDED_WATCH_SECONDS = 6 * 3600.0
"""The watch limit when handlers have no timeout (``dispatch.handler_timeout = 0``)."""


@dataclass
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

    def finish(self, error: str | None) -> None:
        if not self.ended.is_set():
            self.error = error
            self.ended_at = time.monotonic()
            self.ended.set()

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

        Returns the turn and whether it was joined (a duplicate POST).
        """
        self._forget_old()
        existing = self._recent.get(digest)
        if existing is not None and existing.failure is None:
            await existing.wait_submitted()
            return existing, True
        turn = RestTurn(session_id, self._ctx.turn_ledger.process)
        self._recent[digest] = turn  # claimed before any await: a concurrent duplicate joins it
        ready = asyncio.Event()
        watcher = self._ctx.core.spawn(self._watch(digest, turn, ready), name=f"chatgate-web-turn-{session_id}")
        try:
            await ready.wait()
            inbound = make_inbound()
            accepted = await self._ctx.core.submit(inbound)
        except BaseException as exc:
            turn.failure = exc
            turn.submitted.set()
            watcher.cancel()
            self._recent.pop(digest, None)
            raise
        turn.inbound_id = accepted.inbound_id
        turn.joined = accepted.duplicate
        if inbound.message is not None and not accepted.duplicate:
            turn.message_id = inbound.message.id  # the core stored it with the event, under this id
        turn.submitted.set()
        if turn.settle():  # its turn_end came while it was being submitted
            watcher.cancel()
        elif turn.joined:
            self._ctx.core.spawn(self._ask_store(turn, watcher), name=f"chatgate-web-repeat-{session_id}")
        return turn, accepted.duplicate

    async def _ask_store(self, turn: RestTurn, watcher: asyncio.Task[None]) -> None:
        """A repeat of a turn recorded earlier may be over already (no ``turn_end`` will come),
        or still running somewhere (its ``turn_end`` comes on the bus)."""
        done, error = await turn_outcome(self._ctx.core.sessions, turn.inbound_id, 0)
        if done and not turn.ended.is_set():
            turn.finish(error)
            watcher.cancel()

    async def _watch(self, digest: str, turn: RestTurn, ready: asyncio.Event) -> None:
        timeout = self._ctx.settings.dispatch.handler_timeout
        limit = timeout + WATCH_GRACE_SECONDS if timeout else UNBOUNDED_WATCH_SECONDS
        deadline = time.monotonic() + limit
        try:
            try:
                await self._watch_bus(turn, ready, limit)
            except (SubscriberOverflow, ConnectionError):
                # Cut off by the bus (a burst of frames, a lost connection): the turn goes on,
                # its end is in the store.
                ready.set()
                await turn.submitted.wait()
                if turn.failure is None and not turn.ended.is_set():
                    remaining = deadline - time.monotonic()
                    done, error = await turn_outcome(self._ctx.core.sessions, turn.inbound_id, remaining)
                    turn.finish(error if done else "timeout")
        finally:
            ready.set()
            if not turn.ended.is_set() and turn.failure is None:
                turn.finish("timeout")
            if turn.ended.is_set():
                self._ended.append((digest, turn))

    async def _watch_bus(self, turn: RestTurn, ready: asyncio.Event, limit: float) -> None:
        """Feed the session's events to ``turn`` until its ``turn_end`` (``submit`` settles a
        turn whose end came before it returned, and stops this watcher then)."""
        async with self._ctx.core.bus.subscribe(session_topic(turn.session_id)) as events:
            ready.set()
            try:
                async with asyncio.timeout(limit):
                    async for event in events:
                        turn.observe(event)
                        if turn.ended.is_set():
                            return
            except TimeoutError:
                log.warning("turn %s: no turn_end after %.0fs; stopped waiting", turn.inbound_id, limit)
        turn.finish("timeout")  # waited too long, or the bus closed

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
