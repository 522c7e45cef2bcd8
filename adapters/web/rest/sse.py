"""Server-sent events in the exact framing the PromptRails SDK parses.

The SDK's parser (promptrails/_sse.py) splits on LF only, keeps only the last ``data:`` line of a
frame, drops frames without an ``event:`` line, dispatches on the blank line, and stops only at
EOF. So every frame here is ``event: <name>\\ndata: <one-line JSON object>\\n\\n``, and the
response is closed right after the terminal ``done`` or ``error`` event.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..jsoncodec import compact

SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # nginx: do not buffer the stream
}
TERMINAL_EVENTS = frozenset({"done", "error"})


def sse_frame(event: str, data: dict[str, Any]) -> bytes:
    """One SSE frame. Compact JSON escapes newlines, so ``data`` is one line."""
    if not event or any(c in event for c in "\r\n"):
        raise ValueError(f"bad SSE event name {event!r}")
    payload = compact(data)
    return f"event: {event}\ndata: {payload}\n\n".encode()


class SSEWriter:
    """Writes events to one response. A client that went away makes ``send`` return False
    instead of raising: the turn it was watching goes on and is stored regardless."""

    def __init__(self, request: web.Request) -> None:
        self._request = request
        self._response = web.StreamResponse(status=200, headers=SSE_HEADERS)
        self.connected = True
        self.closed = False

    async def open(self) -> None:
        await self._response.prepare(self._request)

    async def send(self, event: str, data: dict[str, Any]) -> bool:
        if not self.connected or self.closed:
            return False
        try:
            await self._response.write(sse_frame(event, data))
        except (ConnectionError, RuntimeError):
            # aiohttp raises ConnectionResetError, or RuntimeError once the transport is gone.
            self.connected = False
            return False
        if event in TERMINAL_EVENTS:
            await self.close()
        return True

    async def comment(self, text: str) -> bool:
        """A ``: comment`` line: keeps the connection alive; every SSE parser ignores it."""
        if not self.connected or self.closed:
            return False
        try:
            await self._response.write(f": {text}\n\n".encode())
        except (ConnectionError, RuntimeError):
            self.connected = False
            return False
        return True

    async def close(self) -> web.StreamResponse:
        if not self.closed:
            self.closed = True
            if self.connected:
                try:
                    await self._response.write_eof()
                except (ConnectionError, RuntimeError):
                    self.connected = False
        return self._response

    @property
    def response(self) -> web.StreamResponse:
        return self._response
