"""Pacing: one budget per chat, shared by everything sent to that chat, plus one for the bot.

Telegram answers a bot that sends too fast with ``429`` and a ``retry_after`` that grows when it
is ignored (minutes, even hours, are reported). The only reliable cure is never to exceed the
budget, so every request that posts or edits a message passes :meth:`Pacer.slot` first:

- the chat's budget: one message a second in any chat, twenty a minute in groups (Bot FAQ);
- the bot's global budget: about thirty messages a second (Bot FAQ);
- drafts (``sendMessageDraft``) have their own per-chat budget and do not use the message budgets
  (they post nothing; Telegram publishes no number: five a second, while streams send a draft
  every ``draft_interval``, 250 ms by default, so frames never queue behind the budget).

A ``429`` pauses the chat's budget for ``retry_after``; when two different chats are told to wait
within one pause the limit is the bot's, not the chat's, so the global budget pauses too.

Windows are measured from the moment earlier requests *finished* (Telegram saw each somewhere
before that), so uneven transit times or a busy event loop cannot make requests arrive too close;
every window also carries a small safety margin (``MARGIN``). The chat's lock is held while the
request is in flight, so a chat's requests leave in order (parts of a split message, stream
frames, the final edit) and one at a time. Written by hand: aiogram has no outbound limiter, and
aiolimiter-style leaky buckets know nothing of per-chat windows shared with a global one, or of
``retry_after``.

**Shared across processes.** Given a :class:`~gateway.ratelimit.SharedBudgets` (``redis.url`` is
set), every slot is also taken in Redis, atomically over the chat's windows, the bot's window and
their pauses, on keys under the bot's id: all processes sending for the bot share one budget, and
a ``retry_after`` seen by one pauses the chat (and, two chats within one pause, the bot) for all.
The in-memory budgets still record this process's own requests: they answer the synchronous
questions (:meth:`Pacer.room_for_preview`, :meth:`Pacer.draft_delay`) together with the last
reading of the bot's shared window, and they pace alone while Redis is unreachable (a warning is
logged; each process then keeps only its own budget, and a 429 is honoured as always).
Ordering: a chat's requests from one process leave in order (the chat's lock is local); across
processes nothing orders them beyond the windows (one session's replies are sent by the one
process that runs its turn, so a stream never interleaves with itself). No lock is held in
Redis while a request is in flight.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Literal

from adapters.base import Grant, SharedBudgets, SharedBudgetUnavailable, SharedWindow

MARGIN = 0.05
"""Fraction added to every window: requests are timed on our clock, counted on Telegram's."""

PRIVATE_CHAT_INTERVAL = 1.0  # Bot FAQ: "avoid sending more than one message per second" in one chat
GROUP_MESSAGES_PER_MINUTE = 20  # Bot FAQ: "no more than 20 messages per minute" in a group
GLOBAL_MESSAGES_PER_SECOND = 30.0  # Bot FAQ: "no more than 30 messages per second" for bulk sending
DRAFT_MIN_INTERVAL = 0.2  # not published; peers stream drafts every 250 ms (vercel/chat), we allow 5/s

SlotKind = Literal["message", "draft"]
PREVIEW_SHARE = 0.8
"""Stream previews (edits) use at most this share of the bot's budget; the rest is kept for final
texts and new messages."""
OPEN = math.inf
"""The time of a request that has not finished yet."""
FORGET_CHATS_ABOVE = 1024
"""Chat budgets kept before quiet ones are forgotten (a bot may see millions of chats)."""


@dataclass(frozen=True)
class RateWindow:
    """At most ``count`` events in any window of ``seconds``."""

    count: int
    seconds: float


class RateBudget:
    """A set of sliding windows plus a pause; answers "how long until one more event fits".

    Events are kept sorted, and each is moved to when its request *finished* (:meth:`settle`).
    A request still waiting or in flight holds an open slot (:meth:`claim`): it counts as
    happening "at infinity" until it settles, since nobody knows yet when Telegram will count it.
    With the ``count``-th latest event at ``e``, a new event at ``e + seconds`` or later leaves
    every window of ``seconds`` with at most ``count`` events; when ``e`` is an open slot, the
    next request waits for a settlement.
    """

    def __init__(self, windows: Sequence[RateWindow], clock: Callable[[], float] = time.monotonic) -> None:
        self.windows = tuple(RateWindow(w.count, w.seconds * (1 + MARGIN)) for w in windows)
        self._clock = clock
        self._size = max((w.count for w in self.windows), default=1)
        self._events: list[float] = []
        self._settled = asyncio.Event()
        self.paused_until = 0.0

    def earliest(self, now: float) -> float:
        """The earliest time at or after ``now`` at which one more event fits."""
        at = max(now, self.paused_until)
        for window in self.windows:
            if len(self._events) >= window.count:
                at = max(at, self._events[-window.count] + window.seconds)
        return at

    async def claim(self) -> float:
        """Open a slot and return when its request may start; :meth:`settle` it with ``OPEN``."""
        while True:
            at = self.earliest(self._clock())
            if at != OPEN:
                self.record(OPEN)
                return at
            self._settled.clear()
            await self._settled.wait()

    def record(self, at: float) -> None:
        bisect.insort(self._events, at)
        if len(self._events) > self._size:
            del self._events[: len(self._events) - self._size]

    def settle(self, started: float, finished: float) -> None:
        """Move an event from when its request started to when it finished: Telegram saw it
        somewhere in between, so spacing from the finish holds whatever the transit times."""
        index = bisect.bisect_left(self._events, started)
        if index < len(self._events) and self._events[index] == started:
            del self._events[index]
            self.record(finished if started == OPEN else max(started, finished))
        if started == OPEN:
            self._settled.set()

    def pause(self, seconds: float) -> None:
        self.paused_until = max(self.paused_until, self._clock() + seconds)

    def quiet(self, now: float) -> bool:
        """Nothing in flight, no pause, and every event older than every window: a fresh budget
        would answer exactly the same."""
        if self.paused_until > now:
            return False
        longest = max((w.seconds for w in self.windows), default=0.0)
        return not self._events or self._events[-1] + longest <= now

    def load(self, now: float) -> float:
        """The fullest window's share in use (requests in flight count), 1.0 when paused."""
        if self.paused_until > now:
            return 1.0
        load = 0.0
        for window in self.windows:
            used = len(self._events) - bisect.bisect_right(self._events, now - window.seconds)
            load = max(load, used / window.count)
        return load


class ChatBudget:
    """A chat's message and draft budgets and the lock that keeps its requests in order."""

    def __init__(self, message_windows: Sequence[RateWindow], draft_interval: float, clock: Callable[[], float]):
        self.messages = RateBudget(message_windows, clock)
        self.drafts = RateBudget([RateWindow(1, draft_interval)], clock)
        self.lock = asyncio.Lock()

    def forgettable(self, now: float) -> bool:
        return not self.lock.locked() and self.messages.quiet(now) and self.drafts.quiet(now)


class Pacer:
    """Every paced request of one bot goes through ``async with pacer.slot(chat_id, kind):``."""

    def __init__(
        self,
        *,
        chat_interval: float = PRIVATE_CHAT_INTERVAL,
        group_per_minute: int = GROUP_MESSAGES_PER_MINUTE,
        global_per_second: float = GLOBAL_MESSAGES_PER_SECOND,
        draft_interval: float = DRAFT_MIN_INTERVAL,
        scale: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        shared: SharedBudgets | None = None,
        namespace: str = "telegram",
    ) -> None:
        self.scale = scale
        self._clock = clock
        self._chat_window = RateWindow(1, chat_interval * scale)
        self._group_window = RateWindow(group_per_minute, 60.0 * scale)
        self._draft_interval = draft_interval * scale
        per_second = max(1, int(global_per_second))
        self.global_budget = RateBudget([RateWindow(per_second, per_second / global_per_second * scale)], clock)
        self._chats: dict[int, ChatBudget] = {}
        self._forget_above = FORGET_CHATS_ABOVE
        self._last_429: tuple[int, float] | None = None
        self.waited = 0.0
        """Total seconds requests spent waiting for budget (for the benchmark and the logs)."""
        self.shared = shared
        """The budgets every process of this bot shares (Redis), or None: this process alone."""
        self.namespace = namespace
        """Prefix of this bot's keys in the shared budgets (it names the bot)."""
        self._shared_global_load = 0.0
        self._shared_global_seen = -math.inf
        self._shared_refresh: asyncio.Task[None] | None = None

    def chat(self, chat_id: int) -> ChatBudget:
        budget = self._chats.get(chat_id)
        if budget is None:
            windows = [self._chat_window]
            if chat_id < 0:  # groups, supergroups and channels have negative ids
                windows.append(self._group_window)
            budget = ChatBudget(windows, self._draft_interval, self._clock)
            if len(self._chats) >= self._forget_above:
                self._forget_quiet_chats()
            self._chats[chat_id] = budget
        return budget

    def _forget_quiet_chats(self) -> None:
        """Drop the budgets that remember nothing that matters any more; amortised O(1) per new
        chat, since the next sweep waits until the number of budgets has doubled."""
        now = self._clock()
        self._chats = {chat_id: b for chat_id, b in self._chats.items() if not b.forgettable(now)}
        self._forget_above = max(FORGET_CHATS_ABOVE, 2 * len(self._chats))

    @property
    def chats_remembered(self) -> int:
        return len(self._chats)

    def room_for_preview(self, chat_id: int) -> bool:
        """Whether a stream preview (an intermediate edit) may go now without queueing: the chat's
        budget is free and the bot's is below ``PREVIEW_SHARE``, so final texts and new messages
        never wait behind previews when many streams share the bot."""
        now = self._clock()
        if self.chat(chat_id).messages.earliest(now) > now:
            return False
        load = self.global_budget.load(now)
        if self.shared is not None and self.shared.available:
            window = self.global_budget.windows[0].seconds
            if now - self._shared_global_seen > window:
                self._refresh_shared_load()
            if now - self._shared_global_seen <= 2 * window:  # an older reading says nothing any more
                load = max(load, self._shared_global_load)
        return load < PREVIEW_SHARE

    def draft_delay(self, chat_id: int) -> float:
        """Seconds until the chat's draft budget has room (0: now)."""
        now = self._clock()
        return max(0.0, self.chat(chat_id).drafts.earliest(now) - now)

    @asynccontextmanager
    async def slot(self, chat_id: int, kind: SlotKind = "message") -> AsyncIterator[None]:
        """Wait for the chat's (and for messages the bot's) budget; hold the chat while inside."""
        chat = self.chat(chat_id)
        async with chat.lock:
            if self.shared is not None and self.shared.available:
                grant = await self._take_shared(chat_id, kind)
                if grant is not None:
                    async with self._shared_slot(chat_id, kind, grant.token):
                        yield
                    return
            async with self._local_slot(chat, kind):
                yield

    @asynccontextmanager
    async def _local_slot(self, chat: ChatBudget, kind: SlotKind) -> AsyncIterator[None]:
        """This process's own budgets (no Redis, or Redis unreachable); the chat's lock is held."""
        own = chat.messages if kind == "message" else chat.drafts
        claimed = False
        started: float | None = None
        try:
            while True:
                await self._sleep_until(own.earliest(self._clock()))
                if kind == "message":
                    at = await self.global_budget.claim()
                    claimed = True
                    await self._sleep_until(at)
                now = self._clock()
                if own.earliest(now) <= now:  # no pause arrived while we waited for the bot's budget
                    own.record(now)
                    started = now
                    break
                if claimed:  # the chat was paused meanwhile: give the bot's slot back
                    self.global_budget.settle(OPEN, now)
                    claimed = False
            yield
        finally:
            finished = self._clock()
            if started is not None:
                own.settle(started, finished)
            if claimed:
                self.global_budget.settle(OPEN, finished)

    # -- shared budgets (Redis) ------------------------------------------------------------------

    def _chat_key(self, chat_id: int, kind: SlotKind) -> str:
        return f"{self.namespace}:chat:{chat_id}:{kind}"

    @property
    def _global_key(self) -> str:
        return f"{self.namespace}:bot"

    def _shared_windows(self, chat_id: int, kind: SlotKind) -> list[SharedWindow]:
        chat = self.chat(chat_id)
        own = chat.messages if kind == "message" else chat.drafts
        key = self._chat_key(chat_id, kind)
        # held: a chat's request in flight in another process blocks the chat until it settles
        # (as the chat's lock does in one process), so spacing is measured from its finish
        windows = [SharedWindow(key, w.count, w.seconds, hold=True) for w in own.windows]
        if kind == "message":
            bot = self.global_budget.windows[0]
            windows.append(SharedWindow(self._global_key, bot.count, bot.seconds, hold=True))
        return windows

    def _shared_pauses(self, chat_id: int, kind: SlotKind) -> list[str]:
        pauses = [self._chat_key(chat_id, kind) + ":pause"]
        if kind == "message":
            pauses.append(self._global_key + ":pause")
        return pauses

    async def _take_shared(self, chat_id: int, kind: SlotKind) -> Grant | None:
        """Take the slot in Redis (waiting as long as it says); None: Redis is unreachable."""
        assert self.shared is not None
        windows = self._shared_windows(chat_id, kind)
        pauses = self._shared_pauses(chat_id, kind)
        own = self.chat(chat_id).messages if kind == "message" else self.chat(chat_id).drafts
        try:
            while True:
                await self.shared.flush()  # our own pauses and settlements reach Redis first
                # this process's own pause (a 429 it saw) holds even if Redis lost it
                await self._sleep_until(max(self._clock(), own.paused_until, self._global_pause(kind)))
                grant = await self.shared.take(windows, pauses)
                if kind == "message":
                    self._note_shared_load(grant.counts[-1], grant.paused[-1])
                if grant.taken:
                    return grant
                self.waited += grant.wait
                await asyncio.sleep(grant.wait)
        except SharedBudgetUnavailable:
            return None

    def _global_pause(self, kind: SlotKind) -> float:
        return self.global_budget.paused_until if kind == "message" else 0.0

    @asynccontextmanager
    async def _shared_slot(self, chat_id: int, kind: SlotKind, token: str) -> AsyncIterator[None]:
        """Inside a slot taken in Redis: record it locally too, settle both when done (the
        settlement reaches Redis in the background, before this process's next take)."""
        chat = self.chat(chat_id)
        own = chat.messages if kind == "message" else chat.drafts
        started = self._clock()
        own.record(started)
        if kind == "message":
            self.global_budget.record(OPEN)
        try:
            yield
        finally:
            finished = self._clock()
            own.settle(started, finished)
            if kind == "message":
                self.global_budget.settle(OPEN, finished)
            keys = sorted({w.key for w in self._shared_windows(chat_id, kind)})
            shared = self.shared
            assert shared is not None
            shared.defer(lambda: shared.settle(keys, token))

    def _note_shared_load(self, count: int, paused: float) -> None:
        bot = self.global_budget.windows[0]
        self._shared_global_load = 1.0 if paused > 0 else count / bot.count
        self._shared_global_seen = self._clock()

    def _refresh_shared_load(self) -> None:
        """Read the bot's shared window in the background (a synchronous caller asked)."""
        if self.shared is None or (self._shared_refresh is not None and not self._shared_refresh.done()):
            return
        self._shared_global_seen = self._clock()  # one reading at a time
        self._shared_refresh = asyncio.get_running_loop().create_task(
            self.read_shared_load(), name="chatgate-telegram-load"
        )

    async def read_shared_load(self) -> None:
        """Read how full the bot's budget is across every process (for :meth:`room_for_preview`)."""
        if self.shared is None:
            return
        bot = self.global_budget.windows[0]
        try:
            grant = await self.shared.peek(
                [SharedWindow(self._global_key, bot.count, bot.seconds)], [self._global_key + ":pause"]
            )
        except SharedBudgetUnavailable:
            return
        self._note_shared_load(grant.counts[0], grant.paused[0])

    def retry_after(self, chat_id: int, seconds: float, kind: SlotKind = "message") -> None:
        """Telegram said "retry after": pause the chat, and the bot when it looks global."""
        chat = self.chat(chat_id)
        (chat.messages if kind == "message" else chat.drafts).pause(seconds)
        now = self._clock()
        last = self._last_429
        if last is not None and last[0] != chat_id and last[1] > now:
            self.global_budget.pause(seconds)
        self._last_429 = (chat_id, now + seconds)
        if self.shared is not None:  # every process sending for this bot pauses too
            shared = self.shared
            key = self._chat_key(chat_id, kind) + ":pause"
            if kind == "message":
                last_key, parent = self._global_key + ":last429", self._global_key + ":pause"
                shared.defer(lambda: shared.pause(key, seconds, source=str(chat_id), last=last_key, parent=parent))
            else:
                shared.defer(lambda: shared.pause(key, seconds))

    async def close(self) -> None:
        """Let the shared budgets hear the last settlements and pauses, then close them."""
        if self._shared_refresh is not None:
            self._shared_refresh.cancel()
        if self.shared is not None:
            await self.shared.close()

    async def _sleep_until(self, at: float) -> None:
        delay = at - self._clock()
        if delay > 0:
            self.waited += delay
            await asyncio.sleep(delay)
