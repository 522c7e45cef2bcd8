"""Keeps Slack Web API calls inside Slack's rate budgets, and honours ``Retry-After`` when Slack says no.

Slack limits each method per workspace over one-minute windows (tiers), and ``chat.postMessage``
also per channel. A 429 answer carries ``Retry-After``; Slack's guidance is to wait that long
before calling the method again *for the whole workspace*. slack_sdk only offers to retry one
call after a 429 (``AsyncRateLimitErrorRetryHandler``); it has no shared budget that keeps many
concurrent streams from earning the 429 in the first place, so this module is written by hand.

Each key (workspace + method, channel + method) keeps a sliding log of recent calls. A call waits
until every key it touches has room. Two priorities: *urgent* calls (final texts, blocks) may
use the whole budget; preview frames leave a reserve so finals are never starved by previews,
and give up (return ``None``) when no slot comes within ``max_wait`` — the next frame carries
the same text, so nothing is lost.

**Shared across processes.** Given a :class:`~gateway.ratelimit.SharedBudgets` (``redis.url`` is
set), every call also takes its slot in Redis, atomically over the workspace's and the channel's
windows and their 429 pauses, on keys under the app's namespace (its token's digest): every
process calling for the workspace shares one budget, and a ``Retry-After`` seen by one blocks the
method (and channel) for all. Promised final edits are shared too (a promise set with a lease,
so a process that dies leaves nothing behind), so previews in any process leave room for them;
the decision to promise, and :meth:`SlackPacer.available_within`, are answered from this process's
own windows (they are synchronous), while the slot itself is always taken in Redis. When Redis is
unreachable the in-memory windows pace alone (a warning is logged) and nothing is held back.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import aiohttp
from slack_sdk.errors import SlackApiError

from adapters.base import SharedBudgets, SharedBudgetUnavailable, SharedWindow, platform_call
from adapters.slack.limits import METHOD_BUDGETS, PER_CHANNEL_BUDGETS, Budget

T = TypeVar("T")
log = logging.getLogger(__name__)

WINDOW_MARGIN = 1.02
WINDOW_MARGIN_SECONDS = 0.5
"""Our windows are 2% + 0.5 s longer than Slack's: calls sent in order may arrive out of order
(a busy event loop, a slow connection), and each must still land in a window Slack has cleared."""
CONNECTION_RETRIES = 2
"""Idempotent calls (edits, lookups, status lines) are retried this often after a lost
connection or a Slack-side failure; a new message or stream piece never is (it may have arrived:
a retry would duplicate)."""
TRANSIENT_ERRORS = frozenset({"internal_error", "fatal_error", "service_unavailable", "request_timeout"})
"""Errors that say Slack failed, not the call (method references' common errors); with any HTTP
5xx they are worth one more try of an idempotent call."""
CONNECTION_RETRY_DELAY = 0.2
"""Seconds before retrying after a lost connection (doubled each time)."""
MAX_RATE_LIMIT_RETRIES = 6
"""Urgent calls retried after this many 429s in a row give up and raise (the core logs it)."""
DEFAULT_RETRY_AFTER = 1.0
"""Seconds to wait after a 429 that names no ``Retry-After`` (slack_sdk uses 1 s too)."""
PROMISE_LEASE = 900.0
"""Seconds a shared promise of a final edit lives unless withdrawn: longer than a stream runs
(Slack ends a stream after about five minutes), short enough that a dead process's promise goes."""


class RateLimited(Exception):
    """Slack kept answering 429 for an urgent call."""


class SlidingWindowBudget:
    """At most ``budget.calls`` calls in any ``budget.window`` seconds, plus a 429 cool-off."""

    def __init__(self, budget: Budget, *, reserve: int) -> None:
        self.budget = budget
        self.window = budget.window * WINDOW_MARGIN + WINDOW_MARGIN_SECONDS
        self.reserve = reserve
        self.sent: deque[float] = deque()
        self.blocked_until = 0.0
        self.pending_finals = 0
        """Conversations that will need one urgent call here (a final edit): kept free of previews."""

    def wait_time(self, now: float, *, urgent: bool) -> float:
        """Seconds until one more call fits (0 when it fits now)."""
        while self.sent and self.sent[0] <= now - self.window:
            self.sent.popleft()
        if urgent:
            limit = self.budget.calls
        else:
            limit = max(1, self.budget.calls - self.reserve) - self.pending_finals
        wait = max(0.0, self.blocked_until - now)
        if limit <= 0:
            return max(wait, self.window)  # previews wait until finals no longer need the room
        if len(self.sent) >= limit:
            oldest_that_must_expire = self.sent[len(self.sent) - limit]
            wait = max(wait, oldest_that_must_expire + self.window - now)
        return wait

    def can_promise(self, now: float) -> bool:
        """Whether one more final call can be promised a slot: the calls in the window plus the
        finals already promised stay within what previews may use, so every promised final finds
        room at once (the reserve is left for other urgent calls)."""
        while self.sent and self.sent[0] <= now - self.window:
            self.sent.popleft()
        return len(self.sent) + self.pending_finals + 1 <= max(1, self.budget.calls - self.reserve)

    def record(self, now: float) -> None:
        self.sent.append(now)

    def block(self, until: float) -> None:
        self.blocked_until = max(self.blocked_until, until)


def reserve_for(budget: Budget) -> int:
    """Slots per window kept back for urgent calls: a tenth of the budget, none for tiny budgets."""
    return budget.calls // 10 if budget.calls >= 10 else 0


@dataclass
class PacerStats:
    calls: Counter[str] = field(default_factory=Counter)
    rate_limited: Counter[str] = field(default_factory=Counter)
    skipped_frames: int = 0
    waited_seconds: float = 0.0
    longest_urgent_wait: float = 0.0
    """The longest an urgent call (a final text, a block) waited for its slot: when final texts
    are late, this says whether the budget is the reason."""


def retry_after_seconds(error: SlackApiError) -> float:
    """The ``Retry-After`` of a 429 answer, in seconds (fractions allowed)."""
    headers = getattr(error.response, "headers", None) or {}
    for name, value in headers.items():
        if name.lower() == "retry-after":
            if isinstance(value, list | tuple):
                value = value[0] if value else ""
            try:
                return max(0.0, float(value))
            except ValueError:
                break
    return DEFAULT_RETRY_AFTER


RATE_LIMIT_ERRORS = frozenset({"ratelimited", "rate_limited"})
"""``ratelimited`` comes with HTTP 429 and ``Retry-After``; ``rate_limited`` ("Application has posted
too many messages") is the posting limit of chat.postMessage and the stream methods, answered
without one (method references, errors)."""


def is_rate_limited(error: SlackApiError) -> bool:
    return getattr(error.response, "status_code", None) == 429 or (
        isinstance(error.response.data, dict) and error.response.data.get("error") in RATE_LIMIT_ERRORS
    )


def is_transient(error: SlackApiError) -> bool:
    status = getattr(error.response, "status_code", None) or 0
    data = error.response.data
    return status >= 500 or (isinstance(data, dict) and data.get("error") in TRANSIENT_ERRORS)


def app_namespace(bot_token: str) -> str:
    """Names the app in shared keys without writing its token to Redis: Slack counts limits per
    app and workspace, and every process sending with one bot token is the same app."""
    return hashlib.sha256(bot_token.encode()).hexdigest()[:16]
def call_status(error: BaseException) -> int | str:
    """What a failed Web API call answered, for the gateway's platform-call counter."""
    if isinstance(error, SlackApiError):
        if is_rate_limited(error):
            return 429
        status = getattr(error.response, "status_code", None) or 200
        return "api_error" if status == 200 else status  # Slack answers most errors 200 {"ok": false}
    if isinstance(error, (TimeoutError, aiohttp.ClientConnectionError)):
        return "network_error"
    return "bad_response"


async def counted(method: str, send: Callable[[], Awaitable[T]]) -> T:
    """``send()``, counted for the gateway's /metrics with the status it ended with."""
    try:
        result = await send()
    except Exception as error:
        platform_call("slack", method, call_status(error))
        raise
    platform_call("slack", method, 200)
    return result


class SlackPacer:
    """Shared by every conversation of one adapter: budgets are per workspace and per channel."""

    def __init__(
        self,
        *,
        method_budgets: dict[str, Budget] | None = None,
        channel_budgets: dict[str, Budget] | None = None,
        clock: Callable[[], float] = time.monotonic,
        shared: SharedBudgets | None = None,
        namespace: str = "slack",
    ) -> None:
        self.method_budgets = METHOD_BUDGETS if method_budgets is None else method_budgets
        self.channel_budgets = PER_CHANNEL_BUDGETS if channel_budgets is None else channel_budgets
        self.clock = clock
        self.stats = PacerStats()
        self._windows: dict[tuple[str, ...], SlidingWindowBudget] = {}
        self.shared = shared
        """The budgets every process calling for this app shares (Redis), or None: this process alone."""
        self.namespace = namespace
        """Prefix of this app's keys in the shared budgets."""
        self._promises: dict[tuple[str, str], list[str]] = {}

    def _window(self, key: tuple[str, ...], budget: Budget) -> SlidingWindowBudget:
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = SlidingWindowBudget(budget, reserve=reserve_for(budget))
        return window

    def windows_for(self, method: str, team: str, channel: str | None) -> list[SlidingWindowBudget]:
        windows = []
        budget = self.method_budgets.get(method)
        if budget is not None:
            windows.append(self._window(("team", team, method), budget))
        channel_budget = self.channel_budgets.get(method)
        if channel_budget is not None and channel:
            windows.append(self._window(("channel", team, channel, method), channel_budget))
        return windows

    def reserve_final(self, method: str, team: str) -> bool:
        """Promise a conversation one urgent ``method`` call (its final edit): previews in the
        workspace leave room for it until ``release_final``. False (nothing promised) when the
        window is too full to keep the promise: previews already spent the room, and a final
        promised anyway could wait for most of a minute."""
        budget = self.method_budgets.get(method)
        if budget is None:
            return True
        window = self._window(("team", team, method), budget)
        if not window.can_promise(self.clock()):
            return False
        window.pending_finals += 1
        if self.shared is not None:
            shared, key, token = self.shared, self._finals_key(team, method), secrets.token_hex(8)
            self._promises.setdefault((team, method), []).append(token)
            shared.defer(lambda: shared.promise(key, token, PROMISE_LEASE))
        return True

    def release_final(self, method: str, team: str) -> None:
        budget = self.method_budgets.get(method)
        if budget is not None:
            window = self._window(("team", team, method), budget)
            window.pending_finals = max(0, window.pending_finals - 1)
            tokens = self._promises.get((team, method))
            if self.shared is not None and tokens:
                shared, key, token = self.shared, self._finals_key(team, method), tokens.pop()
                if not tokens:
                    del self._promises[(team, method)]
                shared.defer(lambda: shared.withdraw(key, token))

    # -- shared budgets (Redis) ------------------------------------------------------------------

    def _shared_key(self, key: tuple[str, ...]) -> str:
        return ":".join((self.namespace, *key))

    def _finals_key(self, team: str, method: str) -> str:
        return self._shared_key(("team", team, method)) + ":finals"

    def _shared_windows(self, method: str, team: str, channel: str | None, *, urgent: bool) -> list[SharedWindow]:
        """The same windows as :meth:`windows_for`, as Redis sees them: a preview may find the
        budget less its reserve, less every process's promised finals (workspace windows)."""
        windows = []
        for key, budget in (
            (("team", team, method), self.method_budgets.get(method)),
            (("channel", team, channel or "", method), self.channel_budgets.get(method) if channel else None),
        ):
            if budget is None:
                continue
            local = self._window(key, budget)
            if urgent:
                windows.append(SharedWindow(self._shared_key(key), budget.calls, local.window))
            else:
                promises = self._finals_key(team, method) if key[0] == "team" else None
                limit = max(1, budget.calls - local.reserve)
                windows.append(SharedWindow(self._shared_key(key), limit, local.window, promises=promises))
        return windows

    async def _acquire_shared(
        self, method: str, team: str, channel: str | None, *, urgent: bool, max_wait: float | None, started: float
    ) -> bool | None:
        """Take the slot in Redis; None when Redis is unreachable (pace locally instead)."""
        assert self.shared is not None
        windows = self._shared_windows(method, team, channel, urgent=urgent)
        pauses = [w.key + ":pause" for w in windows]
        try:
            while True:
                await self.shared.flush()  # our own promises reach Redis before we count them
                grant = await self.shared.take(windows, pauses)
                now = self.clock()
                if grant.taken:
                    return True
                if max_wait is not None and (now - started) + grant.wait > max_wait:
                    return False
                await asyncio.sleep(grant.wait)
        except SharedBudgetUnavailable:
            return None

    async def _pause_shared(self, method: str, team: str, channel: str | None, seconds: float) -> None:
        """Block the call's windows in Redis too: every process waits out Slack's ``Retry-After``."""
        if self.shared is None or not self.shared.available:
            return
        for window in self._shared_windows(method, team, channel, urgent=True):
            try:
                await self.shared.pause(window.key + ":pause", seconds)
            except SharedBudgetUnavailable:
                return  # the local block holds in this process

    def available_within(self, method: str, team: str, channel: str | None, max_wait: float) -> bool:
        """Whether a preview call could go out within ``max_wait`` seconds (takes nothing): lets a
        frame skip its rendering work when the pacer would skip the call anyway."""
        now = self.clock()
        windows = self.windows_for(method, team, channel)
        return max((w.wait_time(now, urgent=False) for w in windows), default=0.0) <= max_wait

    async def acquire(
        self, method: str, team: str, channel: str | None, *, urgent: bool, max_wait: float | None = None
    ) -> bool:
        """Wait for a slot on every budget the call touches and take it. Returns False (taking
        nothing) when the slot would come later than ``max_wait`` seconds from now."""
        windows = self.windows_for(method, team, channel)
        started = self.clock()
        if self.shared is not None and self.shared.available and windows:
            taken = await self._acquire_shared(method, team, channel, urgent=urgent, max_wait=max_wait, started=started)
            if taken is not None:
                if not taken:
                    return False
                now = self.clock()
                for w in windows:  # this process's own view, for the synchronous questions
                    w.record(now)
                self.stats.waited_seconds += now - started
                if urgent:
                    self.stats.longest_urgent_wait = max(self.stats.longest_urgent_wait, now - started)
                return True
        while True:
            now = self.clock()
            wait = max((w.wait_time(now, urgent=urgent) for w in windows), default=0.0)
            if wait <= 0:
                for w in windows:
                    w.record(now)
                self.stats.waited_seconds += now - started
                if urgent:
                    self.stats.longest_urgent_wait = max(self.stats.longest_urgent_wait, now - started)
                return True
            if max_wait is not None and (now - started) + wait > max_wait:
                return False
            await asyncio.sleep(wait)

    async def call(
        self,
        method: str,
        team: str,
        channel: str | None,
        send: Callable[[], Awaitable[T]],
        *,
        urgent: bool = True,
        max_wait: float | None = None,
        idempotent: bool = False,
    ) -> T | None:
        """Run ``send`` (one Web API call of ``method``) inside the budget.

        Urgent calls wait as long as needed and are retried after each 429 (after its
        ``Retry-After``). Non-urgent calls (preview frames) return ``None`` instead of waiting
        longer than ``max_wait`` or retrying a 429.
        """
        windows = self.windows_for(method, team, channel)
        failures = 0
        for _attempt in range(MAX_RATE_LIMIT_RETRIES + CONNECTION_RETRIES + 1):
            if not await self.acquire(method, team, channel, urgent=urgent, max_wait=max_wait):
                self.stats.skipped_frames += 1
                return None
            self.stats.calls[method] += 1
            try:
                return await counted(method, send)
            except (TimeoutError, aiohttp.ClientConnectionError):
                if not idempotent or failures >= CONNECTION_RETRIES:
                    raise
                failures += 1
                log.warning("slack %s lost its connection; retrying (idempotent)", method)
                await asyncio.sleep(CONNECTION_RETRY_DELAY * 2 ** (failures - 1))
            except SlackApiError as error:
                if not is_rate_limited(error):
                    if not idempotent or not is_transient(error) or failures >= CONNECTION_RETRIES:
                        raise
                    failures += 1
                    log.warning("slack %s failed on Slack's side (%s); retrying (idempotent)", method, error)
                    await asyncio.sleep(CONNECTION_RETRY_DELAY * 2 ** (failures - 1))
                    continue
                delay = retry_after_seconds(error)
                self.stats.rate_limited[method] += 1
                until = self.clock() + delay
                for w in windows:
                    w.block(until)
                await self._pause_shared(method, team, channel, delay)  # every process waits too
                log.warning("slack %s rate limited in %s; retrying after %.2fs", method, team, delay)
                if not urgent:
                    self.stats.skipped_frames += 1
                    return None
        raise RateLimited(f"{method} kept answering 429 for workspace {team}")

    async def close(self) -> None:
        """Let the shared budgets hear the last promises, then close them."""
        if self.shared is not None:
            await self.shared.close()
