"""The Prometheus metrics of one gateway (prometheus-client), served at ``/metrics``.

Each :class:`GatewayMetrics` has a registry of its own, never the library's global one: tests run
several gateways in one process, and each must count only its own turns. docs/scaling.md lists
every metric with its labels and meaning.

Adapters count their platform traffic with the hooks :func:`platform_call` and
:func:`socket_opened` (re-exported by ``adapters/base.py``). The hooks find the metrics of the
gateway they run for in a context variable (``gateway.context.current_metrics``): the gateway binds
it while it starts, so everything started then (the HTTP server, an adapter's poller or socket)
inherits it, and for each turn. Outside a gateway (an adapter's part in a unit test) they count
nothing.

Two gauges are read from the database at scrape time, not kept in memory, so they mean the same in
``chatgate run`` and in many web/worker processes: the inbox's depth and the age of its oldest
unfinished event. One indexed query answers both, and its answer is kept for
``QUEUE_CACHE_SECONDS``, so a scrape storm costs the database one query per interval.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, PlatformCollector, ProcessCollector
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from gateway.context import current_metrics
from gateway.health import within

log = logging.getLogger("chatgate.metrics")

QUEUE_CACHE_SECONDS = 2.0
"""How long one answer of the inbox query serves scrapes (Prometheus scrapes every 15 s or so;
several scrapers, or a person reloading, cost one query per this many seconds)."""
TURN_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
"""Seconds. An echo turn takes milliseconds, a model call tens of seconds; the last bucket is the
default ``dispatch.handler_timeout``."""

TURN_OUTCOMES = ("done", "handler_error", "timeout", "stopped", "session_deleted", "failed", "interrupted")
"""How a turn can end (the ``outcome`` label of ``chatgate_turns_total``): ``failed`` is an event
the gateway could not run (its user is gone), ``interrupted`` a turn cut off by shutdown (it runs
again at the next start); the others are the turn's inbox outcome."""

Status = int | str
"""What a platform call ended with: the HTTP status (any 2xx counts as ``ok``), or a word for
what has none: ``api_error`` (the platform answered 200 with an error), ``network_error`` (no
answer), ``bad_response`` (an answer that could not be read)."""

BacklogQuery = Callable[[], Awaitable[tuple[int, datetime | None]]]
"""Events recorded and not finished, and when the oldest of them was recorded."""


def status_label(status: Status) -> str:
    if isinstance(status, int):
        return "ok" if 200 <= status < 300 else str(status)
    return status


class GatewayMetrics:
    """The instruments of one gateway, in a registry of its own."""

    def __init__(self, *, backlog: BacklogQuery | None = None, held_leases: Callable[[], int] | None = None) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.turns = Counter(
            "chatgate_turns", "Turns that ended, by channel type and outcome.",
            ["channel", "outcome"], registry=registry,
        )
        self.turn_seconds = Histogram(
            "chatgate_turn_duration_seconds",
            "Seconds from the event's intake (recorded in the inbox) to the end of its turn: queueing, "
            "the handler and the replies.",
            ["channel"], buckets=TURN_BUCKETS, registry=registry,
        )
        self.handler_seconds = Histogram(
            "chatgate_handler_duration_seconds", "Seconds the handler of a turn ran (hooks and prompts included).",
            ["channel"], buckets=TURN_BUCKETS, registry=registry,
        )
        self.handler_errors = Counter(
            "chatgate_handler_errors", "Handlers that raised, by channel type and exception class.",
            ["channel", "exception"], registry=registry,
        )
        self.platform_calls = Counter(
            "chatgate_platform_calls", "Requests to a platform's API (every attempt), by platform, method and status.",
            ["platform", "method", "status"], registry=registry,
        )
        self.platform_rate_limited = Counter(
            "chatgate_platform_rate_limited", "Requests a platform refused with 429 (rate limited).",
            ["platform", "method"], registry=registry,
        )
        self.open_sockets = Gauge(
            "chatgate_open_sockets", "Client connections held open now, by adapter (the web widget's sockets).",
            ["adapter"], registry=registry,
        )
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        self._backlog_query = backlog
        self._held_leases = held_leases
        self._backlog: tuple[int, datetime | None] | None = None
        self._backlog_read_at: float | None = None
        self._backlog_failing = False
        self._refresh_lock = asyncio.Lock()
        self._unwinding: set[asyncio.Future[Any]] = set()
        registry.register(_ReadAtScrape(self))
        self._children: dict[tuple[Any, ...], Any] = {}
        """Labelled children by (metric, labels...): ``labels()`` validates and locks on every
        call (three calls, 8 us, a turn); a child, once made, is the same object for good."""

    # -- what the core counts ------------------------------------------------------------

    def turn_ended(
        self, channel: str, outcome: str, *, received_at: float | None, handler_seconds: float | None
    ) -> None:
        """One turn is over. ``received_at``: the wall-clock time its event was recorded (the
        inbox row's, so a turn run by another process than the one that took the event is timed
        from intake too); ``handler_seconds``: how long its handler ran (``None``: it never ran)."""
        self._child(self.turns, channel, outcome).inc()
        if handler_seconds is not None:
            self._child(self.handler_seconds, channel).observe(handler_seconds)
        if received_at is not None and outcome != "interrupted":
            self._child(self.turn_seconds, channel).observe(max(0.0, time.time() - received_at))

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (metric, *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def handler_failed(self, channel: str, error: BaseException | None) -> None:
        self.handler_errors.labels(channel, type(error).__name__ if error is not None else "unknown").inc()

    # -- what adapters count (through the module's hooks) ----------------------------------

    def platform_call(self, platform: str, method: str, status: Status) -> None:
        label = status_label(status)
        self.platform_calls.labels(platform, method, label).inc()
        if label == "429":
            self.platform_rate_limited.labels(platform, method).inc()

    def socket_opened(self, adapter: str) -> Callable[[], None]:
        gauge = self.open_sockets.labels(adapter)
        gauge.inc()
        return _SocketClosed(gauge)

    # -- the scrape ------------------------------------------------------------------------

    async def refresh(self, timeout: float) -> None:
        """Read the inbox gauges again when the last answer is older than ``QUEUE_CACHE_SECONDS``
        (waiting at most ``timeout`` seconds; concurrent scrapes share one query). When the
        database does not answer, the queue gauges are left out of the scrape rather than
        reported stale: an absent series is what Prometheus alerting expects of an unknown."""
        if self._backlog_query is None or self._fresh():
            return
        async with self._refresh_lock:
            if self._fresh():
                return
            try:
                self._backlog = await within(self._backlog_query(), timeout, self._unwinding)
            except Exception as exc:
                self._backlog = None
                if not self._backlog_failing:
                    log.warning("metrics: reading the inbox for the queue gauges failed (%s: %s); they are "
                                "left out until the database answers", type(exc).__name__, exc)
                self._backlog_failing = True
            else:
                if self._backlog_failing:
                    log.info("metrics: the queue gauges are back")
                self._backlog_failing = False
            self._backlog_read_at = time.monotonic()

    def _fresh(self) -> bool:
        return self._backlog_read_at is not None and time.monotonic() - self._backlog_read_at < QUEUE_CACHE_SECONDS

    def render(self, accept: str) -> tuple[bytes, str]:
        """The exposition (Prometheus text, or OpenMetrics when ``accept`` asks for it) and its
        content type."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type


class _ReadAtScrape(Collector):
    """The gauges whose values are read when scraped: the inbox (refreshed by ``refresh`` just
    before) and the leases this process holds."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        backlog = self.metrics._backlog
        if backlog is not None:
            depth, oldest = backlog
            yield GaugeMetricFamily(
                "chatgate_queue_depth", "Inbound events recorded and not yet finished (waiting or running), "
                "in the whole deployment (the shared inbox).", value=depth,
            )
            age = 0.0 if oldest is None else max(0.0, time.time() - _aware(oldest).timestamp())
            yield GaugeMetricFamily(
                "chatgate_queue_oldest_age_seconds", "Seconds since the oldest unfinished inbound event was "
                "recorded (0 when none is).", value=age,
            )
        if self.metrics._held_leases is not None:
            yield GaugeMetricFamily(
                "chatgate_leases_held", "Leases this process holds now (scheduler leader, Telegram poller, "
                "task locks...).", value=self.metrics._held_leases(),
            )


def _aware(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes; the store writes UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


# -- the hooks adapters call ------------------------------------------------------------------


def platform_call(platform: str, method: str, status: Status) -> None:
    """Count one request to a platform's API: call it once per attempt, at the adapter's single
    request point, with the HTTP status or one of ``api_error``, ``network_error``,
    ``bad_response``. A 429 is counted as rate limited too."""
    metrics = current_metrics()
    if metrics is not None:
        metrics.platform_call(platform, method, status)


class _SocketClosed:
    """What ``socket_opened`` returns: the first call counts the socket closed, later ones do
    nothing. A slotted object rather than a closure and its cells: every open socket (thousands
    of idle widget sockets) holds one."""

    __slots__ = ("_gauge",)

    def __init__(self, gauge: Any) -> None:
        self._gauge: Any = gauge

    def __call__(self) -> None:
        gauge, self._gauge = self._gauge, None
        if gauge is not None:
            gauge.dec()


def socket_opened(adapter: str) -> Callable[[], None]:
    """Count one client connection of ``adapter`` as open; call what it returns (once, more calls
    do nothing) when it closes."""
    metrics = current_metrics()
    if metrics is None:
        return lambda: None
    return metrics.socket_opened(adapter)
