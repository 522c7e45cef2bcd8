"""Rate budgets shared by every process through Redis: sliding windows, pauses, promised slots.

When several processes send for one Telegram bot or one Slack workspace, each keeping its budget
in memory would spend the whole budget on its own and the platform would answer ``429``. The
adapters' pacers keep their in-memory budgets as they are (one process needs nothing else) and,
when ``redis.url`` is set, also take every slot here, so all processes share one budget.

This module is platform-free: it lives in the core so that both adapters can use it without
importing each other (the import contracts forbid that). The pacers say which windows a request
touches; this module only stores and checks them.

A window is a Redis sorted set of events (members are random tokens, scores are times on the
Redis server's clock). One step checks every window a request touches and every pause on it, and
records the event in all of them, or records nothing and says how long to wait. The step is a
server-side Lua script (``register_script``: EVALSHA, EVAL on a cache miss), so two processes can
never both take the last slot, and the time is the server's ``TIME``: processes whose clocks
disagree still count on one clock.

Two details the pacers need:

- **Held events.** A request in flight may count "from when it finished" (Telegram's global
  budget does: nobody knows when Telegram counted it until the answer is back). Such an event is
  recorded at ``now + HOLD_LEASE``, in the future: while it is there, a window it fills waits for
  its settlement (the caller polls at the window's average spacing), and :meth:`SharedBudgets.settle`
  moves it to when the request finished. If the process dies first, the event simply lands at
  ``start + HOLD_LEASE`` and ages out of the window like any other: nothing leaks.
- **Promised slots.** A window may subtract the number of live members of a promise set from the
  room it gives (Slack keeps room for final edits that streams have been promised). Promises
  carry their own deadline and vanish after it, even if their process died.

Every key gets a TTL of its window (plus the hold lease), pauses a TTL of their length: nothing
stays in Redis once it no longer changes an answer.

Written by hand: the well-kept ``limits`` library (its async Redis moving window) checks one key
per call against the *caller's* clock (``time.time()`` is sent to the script), so a per-chat
window joined with the bot's global one cannot be taken in one atomic step, and it has no pauses
from ``retry_after``, no events that count from when a request finished, and no reserves that
grow with promised slots.

**Failure.** If Redis cannot be reached, :class:`SharedBudgetUnavailable` is raised, a warning is
logged and the budgets stay unused for ``OUTAGE_RETRY`` seconds: the pacers fall back to their
in-memory budgets meanwhile (each process then paces only itself, so several processes may earn
a 429, which the pacers honour as always). A reply is never held back, or lost, for want of Redis.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as redis_asyncio
from redis.exceptions import RedisError

log = logging.getLogger("chatgate.ratelimit")

HOLD_LEASE = 60.0
"""Seconds a held event (a request in flight) may stay unsettled before it counts as having
happened then; longer than any request the pacers let run (aiogram's default timeout is 60 s)."""
OUTAGE_RETRY = 5.0
"""Seconds the shared budgets stay unused after Redis failed, before the next attempt."""
REDIS_TIMEOUT = 2.0
"""Seconds to connect to Redis or wait for an answer before the pacers fall back to local budgets."""


class SharedBudgetUnavailable(Exception):
    """Redis could not be reached: pace with the local budgets."""


@dataclass(frozen=True)
class SharedWindow:
    """At most ``limit`` events of the sorted set ``key`` in any ``seconds``.

    Several windows may name the same key with different limits (a chat's one-a-second and
    twenty-a-minute windows count the same messages). ``limit`` is what *this* request may find
    there: a preview passes the budget less its reserve, a final text the whole budget.
    ``promises`` names a promise set whose live members are subtracted from ``limit``. ``hold``
    records the event as in flight until :meth:`SharedBudgets.settle`.
    """

    key: str
    limit: int
    seconds: float
    hold: bool = False
    promises: str | None = None


@dataclass(frozen=True)
class Grant:
    """The answer of one :meth:`SharedBudgets.take` (or :meth:`~SharedBudgets.peek`)."""

    taken: bool
    wait: float
    """Seconds until the request would fit (0 when taken); a poll interval when the window is
    full of events still in flight."""
    now: float
    """The Redis server's time of the answer."""
    token: str
    counts: tuple[int, ...]
    """Events in each window (before this one), in the order the windows were given."""
    paused: tuple[float, ...]
    """Seconds each pause has left (0 when none), in the order the pauses were given."""


# KEYS: the windows' keys, then the pause keys, then the promise keys of the windows that have one.
# ARGV: windows, pauses, token, hold lease, take (1) or peek (0), then per window:
#       limit, seconds, hold (1/0), has promises (1/0).
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local n = tonumber(ARGV[1])
local m = tonumber(ARGV[2])
local token = ARGV[3]
local lease = tonumber(ARGV[4])
local take = ARGV[5] == '1'
local wait = 0
local counts = {}
local paused = {}
for j = 1, m do
  local v = redis.call('GET', KEYS[n + j])
  local left = 0
  if v then left = math.max(0, tonumber(v) - now) end
  paused[j] = tostring(left)
  if left > wait then wait = left end
end
local promise_index = n + m
for i = 1, n do
  local key = KEYS[i]
  local base = 5 + (i - 1) * 4
  local limit = tonumber(ARGV[base + 1])
  local seconds = tonumber(ARGV[base + 2])
  if ARGV[base + 4] == '1' then
    promise_index = promise_index + 1
    local promises = KEYS[promise_index]
    redis.call('ZREMRANGEBYSCORE', promises, '-inf', now)
    limit = limit - redis.call('ZCARD', promises)
  end
  local count = redis.call('ZCOUNT', key, '(' .. tostring(now - seconds), '+inf')
  counts[i] = count
  if limit <= 0 then
    wait = math.max(wait, seconds)
  elseif count >= limit then
    local e = tonumber(redis.call('ZREVRANGE', key, limit - 1, limit - 1, 'WITHSCORES')[2])
    if e > now then
      wait = math.max(wait, seconds / limit)
    else
      wait = math.max(wait, e + seconds - now)
    end
  end
end
local taken = 0
if take and wait <= 0 then
  taken = 1
  local longest = {}
  for i = 1, n do
    local seconds = tonumber(ARGV[5 + (i - 1) * 4 + 2])
    if not longest[KEYS[i]] or longest[KEYS[i]] < seconds then longest[KEYS[i]] = seconds end
  end
  for key, seconds in pairs(longest) do
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now - seconds)
  end
  for i = 1, n do
    local key = KEYS[i]
    local base = 5 + (i - 1) * 4
    local seconds = tonumber(ARGV[base + 2])
    local score = now
    local ttl = math.ceil(seconds * 1000) + 1
    if ARGV[base + 3] == '1' then
      score = now + lease
      ttl = math.ceil((seconds + lease) * 1000) + 1
    end
    redis.call('ZADD', key, score, token)
    if redis.call('PTTL', key) < ttl then redis.call('PEXPIRE', key, ttl) end
  end
end
return {taken, tostring(math.max(wait, 0)), tostring(now), counts, paused}
"""

# KEYS: windows holding the token. ARGV: token. Moves the token's event to now (when the request finished).
_SETTLE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
for i = 1, #KEYS do
  if redis.call('ZSCORE', KEYS[i], ARGV[1]) then
    redis.call('ZADD', KEYS[i], 'XX', now, ARGV[1])
  end
end
return tostring(now)
"""

# KEYS: the pause, optionally the "last pause" record and the parent pause. ARGV: seconds, source.
# When two different sources are paused within one pause, the parent is paused too.
_PAUSE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local seconds = tonumber(ARGV[1])
local source = ARGV[2]
local function extend(key, untill)
  local v = redis.call('GET', key)
  if v and tonumber(v) >= untill then return end
  redis.call('SET', key, tostring(untill), 'PX', math.max(1, math.ceil((untill - now) * 1000)))
end
local untill = now + seconds
extend(KEYS[1], untill)
local escalated = 0
if #KEYS >= 3 then
  local last = redis.call('HMGET', KEYS[2], 'source', 'until')
  if last[1] and last[1] ~= source and tonumber(last[2]) > now then
    extend(KEYS[3], untill)
    escalated = 1
  end
  redis.call('HSET', KEYS[2], 'source', source, 'until', tostring(untill))
  redis.call('PEXPIRE', KEYS[2], math.max(1, math.ceil(seconds * 1000)))
end
return {tostring(untill), escalated}
"""

# KEYS: the promise set. ARGV: token, lease seconds (0: withdraw the promise).
_PROMISE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local lease = tonumber(ARGV[2])
if lease <= 0 then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return redis.call('ZCARD', KEYS[1])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], now + lease, ARGV[1])
local ttl = math.ceil(lease * 1000)
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
return redis.call('ZCARD', KEYS[1])
"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class SharedBudgets:
    """The Redis side of the pacers: atomic take/settle/pause/promise on namespaced keys."""

    def __init__(
        self,
        client: redis_asyncio.Redis,
        *,
        hold_lease: float = HOLD_LEASE,
        outage_retry: float = OUTAGE_RETRY,
        owns_client: bool = False,
    ) -> None:
        self.redis = client
        self.hold_lease = hold_lease
        self.outage_retry = outage_retry
        self._owns_client = owns_client
        self._take = client.register_script(_TAKE)
        self._settle = client.register_script(_SETTLE)
        self._pause = client.register_script(_PAUSE)
        self._promise = client.register_script(_PROMISE)
        self._down_until = 0.0
        self._deferred: list[asyncio.Task[Any]] = []
        self.outages = 0
        """Times Redis failed (for the logs and the tests)."""

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> SharedBudgets:
        client = redis_asyncio.Redis.from_url(url, socket_timeout=REDIS_TIMEOUT, socket_connect_timeout=REDIS_TIMEOUT)
        return cls(client, owns_client=True, **kwargs)

    # -- availability ------------------------------------------------------------------------

    @property
    def available(self) -> bool:
        """False for ``outage_retry`` seconds after Redis failed: use the local budgets."""
        return time.monotonic() >= self._down_until

    async def _run(self, call: Callable[[], Awaitable[Any]]) -> Any:
        if not self.available:
            raise SharedBudgetUnavailable("Redis is unavailable; pacing with this process's own budgets")
        try:
            return await call()
        except (RedisError, OSError) as exc:
            self.outages += 1
            self._down_until = time.monotonic() + self.outage_retry
            log.warning(
                "shared rate budgets: Redis failed (%s); pacing with this process's own budgets for %.0f s "
                "(check redis.url / REDIS_URL)",
                exc,
                self.outage_retry,
            )
            raise SharedBudgetUnavailable(str(exc)) from exc

    # -- the operations ----------------------------------------------------------------------

    async def take(
        self, windows: Sequence[SharedWindow], pauses: Sequence[str] = (), *, token: str | None = None
    ) -> Grant:
        """Record one event in every window if all have room and no pause is on; else record
        nothing and say how long to wait."""
        return await self._check(windows, pauses, token or secrets.token_hex(8), take=True)

    async def peek(self, windows: Sequence[SharedWindow], pauses: Sequence[str] = ()) -> Grant:
        """What :meth:`take` would answer now, taking nothing."""
        return await self._check(windows, pauses, "", take=False)

    async def _check(self, windows: Sequence[SharedWindow], pauses: Sequence[str], token: str, *, take: bool) -> Grant:
        keys = [w.key for w in windows] + list(pauses) + [w.promises for w in windows if w.promises]
        args: list[Any] = [len(windows), len(pauses), token, self.hold_lease, 1 if take else 0]
        for w in windows:
            args += [max(0, w.limit), repr(w.seconds), 1 if w.hold else 0, 1 if w.promises else 0]
        taken, wait, now, counts, paused = await self._run(lambda: self._take(keys=keys, args=args))
        return Grant(
            taken=bool(taken),
            wait=float(_text(wait)),
            now=float(_text(now)),
            token=token,
            counts=tuple(int(c) for c in counts),
            paused=tuple(float(_text(p)) for p in paused),
        )

    async def settle(self, keys: Sequence[str], token: str) -> float:
        """Move the token's event to now in each of ``keys`` (its request just finished)."""
        if not keys:
            return 0.0
        return float(_text(await self._run(lambda: self._settle(keys=list(keys), args=[token]))))

    async def pause(
        self, key: str, seconds: float, *, source: str = "", last: str | None = None, parent: str | None = None
    ) -> bool:
        """Pause ``key`` for ``seconds`` (never shortening a longer pause). With ``last`` and
        ``parent``: when a *different* source was paused less than its pause ago, ``parent`` is
        paused too (two chats told to wait within one pause: the limit is the bot's). Returns
        whether the parent was paused."""
        keys = [key] + ([last, parent] if last and parent else [])
        _until, escalated = await self._run(lambda: self._pause(keys=keys, args=[repr(max(0.0, seconds)), source]))
        return bool(escalated)

    async def promise(self, key: str, token: str, lease: float) -> int:
        """Add a promised slot to ``key`` for ``lease`` seconds; returns the live promises."""
        return int(await self._run(lambda: self._promise(keys=[key], args=[token, repr(lease)])))

    async def withdraw(self, key: str, token: str) -> int:
        return int(await self._run(lambda: self._promise(keys=[key], args=[token, 0])))

    async def server_time(self) -> float:
        seconds, micros = await self._run(self.redis.time)
        return float(seconds) + float(micros) / 1_000_000

    # -- writes from synchronous callers ---------------------------------------------------

    def defer(self, operation: Callable[[], Awaitable[Any]]) -> None:
        """Run ``operation`` soon, in order with the other deferred ones: for callers that cannot
        await (a ``retry_after`` seen inside a retry policy's callback, a promise made while
        deciding a frame). :meth:`flush` before the next :meth:`take` keeps the order."""
        previous = self._deferred[-1] if self._deferred else None

        async def run() -> None:
            if previous is not None:
                await asyncio.gather(previous, return_exceptions=True)
            try:
                await operation()
            except SharedBudgetUnavailable:
                pass  # logged; the local budgets carry the pause/promise meanwhile

        task = asyncio.get_running_loop().create_task(run(), name="chatgate-shared-budget")
        self._deferred.append(task)
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[Any]) -> None:
        if task in self._deferred:
            self._deferred.remove(task)

    async def flush(self) -> None:
        """Wait until every deferred write has reached Redis (or failed)."""
        if self._deferred:
            await asyncio.gather(*list(self._deferred), return_exceptions=True)

    async def close(self) -> None:
        await self.flush()
        if self._owns_client:
            await self.redis.aclose()
