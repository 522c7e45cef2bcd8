"""What one client IP and one widget identity may use: sockets, sessions, messages, uploads.

Rates (``"30/minute"``) are sliding-window counters from the ``limits`` library (O(1) memory per
key, and a cost per hit, so upload bytes count as they arrive). Counts of things open at once
(sockets, uploads in progress) are plain counters: ``limits`` has no notion of a release. Both
live in this process: with several web processes each one enforces the limits on its own
share of the traffic (docs/security.md).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from aiohttp import web
from limits import RateLimitItem, parse
from limits.storage import MemoryStorage
from limits.strategies import SlidingWindowCounterRateLimiter

from gateway.config import WebLimits

BUSY_RETRY_SECONDS = 5
"""What ``Retry-After`` says when too many things are open at once (nothing tells when one closes)."""


class RateLimited(Exception):
    """A limit is reached. ``retry_after`` is whole seconds; the message names the limit."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = max(1, retry_after)


@dataclass(frozen=True)
class Rate:
    name: str
    item: RateLimitItem | None


class WebQuotas:
    def __init__(self, limits: WebLimits, *, client_ip_header: str | None = None) -> None:
        self.limits = limits
        self._client_ip_header = client_ip_header
        self._limiter = SlidingWindowCounterRateLimiter(MemoryStorage())
        self._open: Counter[tuple[str, str]] = Counter()

    # -- who ----------------------------------------------------------------------------------

    def client_ip(self, request: web.BaseRequest) -> str:
        """The caller's address: the last one in ``web.client_ip_header`` (what the nearest proxy
        saw) when configured and present, else the TCP peer's."""
        if self._client_ip_header:
            forwarded = request.headers.get(self._client_ip_header, "")
            last = forwarded.rsplit(",", 1)[-1].strip()
            if last:
                return last
        return request.remote or "unknown"

    # -- rates --------------------------------------------------------------------------------

    def spend(self, what: str, ip: str, visitor: str | None, *, cost: int = 1) -> None:
        """Count ``cost`` against ``what``'s per-IP and per-visitor rates, or raise
        :class:`RateLimited` without counting anything."""
        rates = [(self._rate(what, "ip"), f"ip:{ip}")]
        if visitor is not None:
            rates.append((self._rate(what, "visitor"), f"visitor:{visitor}"))
        active = [(rate, key) for rate, key in rates if rate.item is not None]
        for rate, key in active:
            assert rate.item is not None
            if not self._limiter.test(rate.item, what, key, cost=cost):
                raise RateLimited(
                    f"too many {what.replace('_', ' ')}: at most {rate.item} (web.limits.{rate.name})",
                    self._retry_after(rate.item, what, key),
                )
        for rate, key in active:  # no await since the test: nothing else spent meanwhile
            assert rate.item is not None
            self._limiter.hit(rate.item, what, key, cost=cost)

    def _rate(self, what: str, per: str) -> Rate:
        name = f"{what}_per_{per}"
        value = getattr(self.limits, name)
        return Rate(name, parse(value) if value else None)

    def _retry_after(self, item: RateLimitItem, what: str, key: str) -> int:
        stats = self._limiter.get_window_stats(item, what, key)
        return math.ceil(stats.reset_time - time.time())

    # -- things open at once ------------------------------------------------------------------

    def acquire(self, what: str, ip: str, visitor: str | None) -> Callable[[], None]:
        """Count one open ``what`` (sockets, uploads) for the IP and the visitor until the returned
        release is called; raise :class:`RateLimited` when either is at its limit."""
        limits = [(f"{what}_per_ip", (what, f"ip:{ip}"))]
        if visitor is not None:
            limits.append((f"{what}_per_visitor", (what, f"visitor:{visitor}")))
        for name, key in limits:
            limit = getattr(self.limits, name)
            if limit and self._open[key] >= limit:
                raise RateLimited(
                    f"too many {what} open at once: at most {limit} (web.limits.{name})", BUSY_RETRY_SECONDS
                )
        for _, key in limits:
            self._open[key] += 1
        return _Release(self._open, tuple(key for _, key in limits))

    @contextlib.contextmanager
    def hold(self, what: str, ip: str, visitor: str | None) -> Iterator[None]:
        """:meth:`acquire` for the length of a ``with`` block."""
        release = self.acquire(what, ip, visitor)
        try:
            yield
        finally:
            release()

    def open_count(self, what: str, ip: str) -> int:
        return self._open[(what, f"ip:{ip}")]


class _Release:
    """What :meth:`WebQuotas.acquire` returns: call it once to release (later calls do nothing).
    A slotted object holding only the counted keys, not a closure: every idle widget socket
    holds one for its whole life (issue 12)."""

    __slots__ = ("_keys", "_open")

    def __init__(self, open_counts: Counter[tuple[str, str]], keys: tuple[tuple[str, str], ...]) -> None:
        self._open = open_counts
        self._keys = keys

    def __call__(self) -> None:
        keys, self._keys = self._keys, ()
        for key in keys:
            self._open[key] -= 1
            if self._open[key] <= 0:
                del self._open[key]
