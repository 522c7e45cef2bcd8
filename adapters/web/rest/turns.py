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
from ..subscription import next_event, subscribed
from .catch_up import turn_outcome

log = logging.getLogger("chatgate.web.rest")

WATCH_GRACE_SECONDS = 30.0
"""How much longer than the handler timeout a watcher waits for ``turn_end`` before giving up."""
UNBOUNDED_WATCH_SECONDS = 6 * 3600.0
"""The watch limit when handlers have no timeout (``dispatch.handler_timeout = 0``)."""
SUBMIT_POLL_SECONDS = 0.01
"""Until ``submit`` returns the inbound id, how often the watcher checks for it."""


@dataclass
class RestTurn:
    session_id: str
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

    def finish(self, error: str | None) -> None:
        if not self.ended.is_set():
            self.error = error
            self.ended_at = time.monotonic()
            self.ended.set()

    async def wait_submitted(self) -> None:
        await self.submitted.wait()
        if self.failure is not None:
            raise self.failure

    async def wait_ended(self, timeout: float) -> bool:
        """True when the turn ended within ``timeout`` seconds."""
        try:
            await asyncio.wait_for(self.ended.wait(), timeout)
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
        turn = RestTurn(session_id)
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
        return turn, accepted.duplicate

    async def _watch(self, digest: str, turn: RestTurn, ready: asyncio.Event) -> None:
        timeout = self._ctx.settings.dispatch.handler_timeout
        limit = timeout + WATCH_GRACE_SECONDS if timeout else UNBOUNDED_WATCH_SECONDS
        deadline = time.monotonic() + limit
        ended: dict[str | None, dict[str, Any]] = {}
        try:
            try:
                await self._watch_bus(turn, ready, deadline, limit, ended)
            except SubscriberOverflow:
                # Cut off by the bus (a burst of frames): the turn goes on, its end is in the store.
                await turn.submitted.wait()
                if turn.failure is None:
                    remaining = deadline - time.monotonic()
                    done, error = await turn_outcome(self._ctx.core.sessions, turn.inbound_id, remaining)
                    turn.finish(error if done else "timeout")
        finally:
            ready.set()
            if not turn.ended.is_set() and turn.failure is None:
                turn.finish("timeout")
            if turn.ended.is_set():
                self._ended.append((digest, turn))

    async def _watch_bus(
        self,
        turn: RestTurn,
        ready: asyncio.Event,
        deadline: float,
        limit: float,
        ended: dict[str | None, dict[str, Any]],
    ) -> None:
        said: dict[str, list[dict[str, Any]]] = {}
        """Turn id -> the assistant messages published for it (until submit returns, every turn's)."""
        async with subscribed(self._ctx.core.bus, session_topic(turn.session_id)) as queue:
            ready.set()
            asked_store = False
            while True:
                if turn.submitted.is_set() and turn.inbound_id in ended:
                    end = ended[turn.inbound_id]
                    replies = said.get(turn.inbound_id, [])
                    turn.replies = sorted(replies, key=lambda m: str(m.get("id")))
                    turn.told_all = not turn.joined and end.get("told_all") == self._ctx.turn_ledger.process
                    turn.finish(end.get("error"))
                    return
                if turn.submitted.is_set() and turn.joined and not asked_store:
                    # A repeat of a turn recorded earlier: it may be over already (no turn_end
                    # will come), or still running somewhere (its turn_end comes on the bus).
                    asked_store = True
                    done, error = await turn_outcome(self._ctx.core.sessions, turn.inbound_id, 0)
                    if done:
                        turn.finish(error)
                        return
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    log.warning("turn %s: no turn_end after %.0fs; stopped waiting", turn.inbound_id, limit)
                    turn.finish("timeout")
                    return
                # Until submit returns, poll briefly: a turn_end may already be queued for it.
                wake = SUBMIT_POLL_SECONDS if not turn.submitted.is_set() else remaining
                event = await next_event(queue, min(remaining, wake))
                if event is None:
                    turn.finish("timeout")
                    return
                if not event:
                    continue
                kind = event.get("type")
                if kind == "turn_end":
                    ended[event.get("inbound_id")] = event
                elif kind == "message" and event.get("turn") is not None:
                    message = event.get("message") or {}
                    if message.get("role") == "assistant" and (
                        not turn.submitted.is_set() or event["turn"] == turn.inbound_id
                    ):
                        said.setdefault(event["turn"], []).append(message)

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
