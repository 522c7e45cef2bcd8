"""Pings for idle widget sockets: one sweeping task for all of them, not timers per socket.

A socket that has received nothing for ``HEARTBEAT_SECONDS`` is pinged (that keeps proxies from
closing it); one that then receives nothing, not even the pong, for ``PONG_SECONDS`` is dead
and is dropped as aiohttp's own ``heartbeat=`` drops it (close code 1006, the read loop gets an
``ERROR`` message). aiohttp's heartbeat does the same with a timer handle and two more attributes
per socket, and those push its ``WebSocketResponse`` past the 30 attributes CPython shares among
instances: about 2 KB per idle socket (issue 12). The sweep runs every ``SWEEP_SECONDS``, so a
ping leaves up to that much later than aiohttp's would.

"Received" is counted by the connection: the server's protocol (``GuardedRequestHandler`` in
gateway/connections.py) sees every byte, pongs included, and keeps the time in ``last_read``. A
socket served by a protocol without it keeps aiohttp's heartbeat (``watchable``).
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from typing import Any, Protocol

from aiohttp import web

HEARTBEAT_SECONDS = 30.0
"""Silence after which a socket is pinged: keeps proxies from closing an idle socket."""
PONG_SECONDS = HEARTBEAT_SECONDS / 2
"""How long a pinged socket may stay silent before it is dropped as dead (aiohttp's ratio)."""
SWEEP_SECONDS = 5.0
"""How often the sockets are looked at."""


class ReadClock(Protocol):
    last_read: float
    """Loop time of the connection's last received bytes."""


def watchable(request: web.BaseRequest) -> bool:
    """Whether the sweep can watch this request's socket (else it takes aiohttp's heartbeat)."""
    return isinstance(getattr(request.protocol, "last_read", None), float)


class Heartbeat:
    """The sockets of one event loop; its task runs while there are any."""

    def __init__(self) -> None:
        self._sockets: dict[web.WebSocketResponse, ReadClock] = {}
        self._pinged: dict[web.WebSocketResponse, float] = {}
        """Sockets pinged and silent since: when the ping left."""
        self._task: asyncio.Task[None] | None = None
        self._pings: set[asyncio.Task[None]] = set()

    def watch(self, ws: web.WebSocketResponse, request: web.BaseRequest) -> None:
        assert watchable(request), "check watchable() first"
        self._sockets[ws] = request.protocol  # type: ignore[assignment]
        if self._task is None:
            self._task = asyncio.create_task(self._sweep(), name="chatgate-web-heartbeat")

    def unwatch(self, ws: web.WebSocketResponse) -> None:
        self._sockets.pop(ws, None)
        self._pinged.pop(ws, None)

    async def _sweep(self) -> None:
        try:
            while self._sockets:
                await asyncio.sleep(SWEEP_SECONDS)
                self.sweep(asyncio.get_running_loop().time())
        finally:
            self._task = None

    def sweep(self, now: float) -> None:
        for ws, protocol in list(self._sockets.items()):
            if ws.closed:
                continue
            pinged = self._pinged.get(ws)
            if pinged is not None:
                if protocol.last_read < pinged:  # silent since the ping
                    if now - pinged >= PONG_SECONDS:
                        self.unwatch(ws)
                        _drop(ws, TimeoutError(f"No PONG received after {PONG_SECONDS} seconds"))
                    continue
                del self._pinged[ws]  # it answered (any data counts, as for aiohttp)
            if now - protocol.last_read >= HEARTBEAT_SECONDS:
                self._pinged[ws] = now
                self._ping(ws)

    def _ping(self, ws: web.WebSocketResponse) -> None:
        # A task, as aiohttp's heartbeat does: a ping to a peer that stopped reading may wait
        # for the transport to drain, and must not hold up the sweep of the others.
        task = asyncio.create_task(_send_ping(ws))
        self._pings.add(task)
        task.add_done_callback(self._pings.discard)


async def _send_ping(ws: web.WebSocketResponse) -> None:
    try:
        await ws.ping()
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # the connection broke under the ping
        _drop(ws, exc)


def _drop(ws: web.WebSocketResponse, exc: BaseException) -> None:
    """Close a dead socket exactly as aiohttp's heartbeat does (a private method of aiohttp's:
    tests/test_web_socket.py checks what the client and the read loop see)."""
    handle: Any = getattr(ws, "_handle_ping_pong_exception", None)
    if handle is not None:
        handle(exc)
    else:  # an aiohttp without it: at least the connection goes, and the read loop ends
        with contextlib.suppress(Exception):
            ws._req.transport.close()  # type: ignore[union-attr]


_by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Heartbeat] = weakref.WeakKeyDictionary()


def heartbeat() -> Heartbeat:
    """The running loop's heartbeat."""
    loop = asyncio.get_running_loop()
    beat = _by_loop.get(loop)
    if beat is None:
        beat = _by_loop[loop] = Heartbeat()
    return beat
