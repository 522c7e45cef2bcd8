"""Readiness: can this process take work now? (``/readyz``; ``/healthz`` only says it answers.)

A :class:`Readiness` runs named checks at once, each within ``timeout`` seconds (a database that
accepts the connection and never answers fails its check; it cannot hang the probe), and reports
each check's latency. The gateway's checks: the database answers a trivial query, Redis answers
PING when ``redis.url`` is set, the dispatcher accepts work (started, not shutting down).

What a failing check says is safe to show anyone who can reach the probe: the exception's class
and message with any credentials in a URL blanked, never a setting. The log says more, once per
change (failing, then back), not at every probe.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

log = logging.getLogger("chatgate.health")

T = TypeVar("T")
Check = Callable[[], Awaitable[Any]]
"""A readiness check: returns when ready, raises (``NotReady`` or any error) when not."""

MAX_ERROR_LENGTH = 200
_URL_CREDENTIALS = re.compile(r"(\w[\w+.-]*://)\S*@")
"""A URL's user and password: up to its last ``@`` (a password may hold ``@`` or ``/``
unencoded); blanking too much of a message is harmless, too little is not."""


class NotReady(Exception):
    """A check's own verdict; its message is shown as it is."""


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    seconds: float
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"ok": self.ok, "latency_ms": round(self.seconds * 1000, 2)}
        if self.error is not None:
            body["error"] = self.error
        return body


class Readiness:
    def __init__(self, checks: dict[str, Check], *, timeout: float) -> None:
        self.checks = checks
        self.timeout = timeout
        self._failing: set[str] = set()
        self._unwinding: set[asyncio.Future[Any]] = set()

    async def run(self) -> list[CheckResult]:
        """Every check, run concurrently; in the order they were given."""
        return list(await asyncio.gather(*(self._run(name, check) for name, check in self.checks.items())))

    async def _run(self, name: str, check: Check) -> CheckResult:
        started = time.perf_counter()
        error: str | None = None
        try:
            await within(check(), self.timeout, self._unwinding)
        except NoAnswer:
            error = f"no answer within {self.timeout:g} s"
        except NotReady as exc:
            error = str(exc)
        except Exception as exc:
            error = safe_error(exc)
        result = CheckResult(name, error is None, time.perf_counter() - started, error)
        self._note(result)
        return result

    def _note(self, result: CheckResult) -> None:
        if not result.ok and result.name not in self._failing:
            self._failing.add(result.name)
            log.warning("readiness: %s is failing: %s", result.name, result.error)
        elif result.ok and result.name in self._failing:
            self._failing.discard(result.name)
            log.info("readiness: %s is back", result.name)


class NoAnswer(Exception):
    """``within``'s deadline passed."""


async def within(work: Awaitable[T], timeout: float, unwinding: set[asyncio.Future[Any]]) -> T:
    """``await work``, but stop waiting after ``timeout`` seconds (raises ``NoAnswer``).

    Not ``asyncio.timeout``: that waits for the cancelled work to unwind, and a database driver
    cancelling a query on a hung server unwinds slowly (asyncpg opens a connection to send the
    cancel request, which hangs too: 2 s more, measured). Here the work is cancelled and left to
    unwind on its own, kept in ``unwinding`` (asyncio holds tasks only weakly) until it has."""
    task = asyncio.ensure_future(work)
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if not done:
        task.cancel()
        unwinding.add(task)
        task.add_done_callback(lambda finished: _forget(finished, unwinding))
        raise NoAnswer(f"no answer within {timeout:g} s")
    return task.result()


def _forget(task: asyncio.Future[Any], unwinding: set[asyncio.Future[Any]]) -> None:
    unwinding.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved: an error after the deadline is not worth a warning


def safe_error(exc: BaseException) -> str:
    """``Class: message``, credentials in URLs blanked, cut to ``MAX_ERROR_LENGTH``."""
    text = str(exc).strip()
    text = _URL_CREDENTIALS.sub(r"\1***@", text)
    described = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return described if len(described) <= MAX_ERROR_LENGTH else described[: MAX_ERROR_LENGTH - 1] + "…"


class RedisPing:
    """PINGs Redis on a connection of its own (opened at the first check), so a bus busy with
    subscriptions does not decide the answer, and without redis-py's retries: a probe wants the
    first answer, and ``Readiness`` bounds the wait."""

    def __init__(self, url: str, *, timeout: float) -> None:
        self.url = url
        self.timeout = timeout
        self._client: Any = None

    async def __call__(self) -> None:
        if self._client is None:
            import redis.asyncio as redis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff

            self._client = redis.from_url(
                self.url,
                socket_connect_timeout=self.timeout,
                socket_timeout=self.timeout,
                retry=Retry(NoBackoff(), 0),
            )
        await self._client.ping()

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()
