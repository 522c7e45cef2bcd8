"""Streamed replies: ``ReplyStream`` (what a handler writes to) and the pump that feeds a sink.

A handler's ``write()`` is synchronous and may be called for every token. The pump turns that
into frames a channel can afford: it hands the sink the whole text so far, at most every
``sink.min_interval`` seconds, never the same text twice, and awaits the sink, so a platform that
paces itself (Telegram's per-chat budget, Slack's tiers) receives fewer, larger frames and no text
is ever dropped. ``close`` always delivers the complete text, exactly once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any

from gateway.outbound import MessageRef, StreamSink
from gateway.stream_text import StreamText

log = logging.getLogger("chatgate.streaming")


class StreamPump:
    def __init__(self, sink: StreamSink) -> None:
        self.sink = sink
        self.text = ""
        self._sent = ""
        self._changed = asyncio.Event()
        self._closing = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.frames = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="chatgate-stream-pump")

    def push(self, text: str) -> None:
        self.text = text
        self._changed.set()

    async def _run(self) -> None:
        interval = max(0.0, float(getattr(self.sink, "min_interval", 0.0)))
        while not self._closing.is_set():
            await self._changed.wait()
            self._changed.clear()
            if self._closing.is_set():
                break
            text = self.text
            if text == self._sent:
                continue
            started = time.monotonic()
            try:
                await self.sink.frame(text)
                self._sent = text
                self.frames += 1
            except Exception:  # a failed intermediate frame is not fatal: close() sends all
                log.warning("stream frame failed; the final message will carry the text", exc_info=True)
            remaining = interval - (time.monotonic() - started)
            if remaining > 0:
                with suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), remaining)

    async def close(self, *, stopped: bool) -> list[MessageRef]:
        """Finish the in-flight frame, then deliver the whole text once."""
        self._closing.set()
        self._changed.set()
        if self._task is not None:
            with suppress(asyncio.CancelledError):
                await self._task
        return await self.sink.close(self.text, stopped=stopped)


class ReplyStream:
    """``async with session.stream_reply() as reply: reply.write(token)``.

    ``write`` takes deltas or cumulative snapshots and tells them apart once per stream (see
    ``gateway.stream_text``): ``"You", "You said"`` gives ``"You said"``, and writing ``"ha"``
    twice gives ``"haha"`` (Capsule's rule would swallow the second one). ``replace(text)`` sets
    the whole text, whatever the mode.
    """

    def __init__(
        self,
        open_sink: Callable[[], Awaitable[tuple[StreamSink | None, Any]]],
        finish: Callable[[Any, str, bool, list[MessageRef]], Awaitable[None]],
    ) -> None:
        self._open_sink = open_sink
        self._finish = finish
        self._pump: StreamPump | None = None
        self._handle: Any = None
        self._text = StreamText()
        self._entered = False
        self._closed = False

    @property
    def text(self) -> str:
        return self._text.text

    def write(self, text: str) -> None:
        """One streamed item: a delta or the whole text so far (the stream's first two different
        items decide which)."""
        if not isinstance(text, str):
            raise TypeError(f"write() takes str, not {type(text).__name__}")
        if self._closed:
            return
        if self._text.add(text):
            self._push()

    def replace(self, text: str) -> None:
        """Set the whole text so far (for sources that yield snapshots, not deltas)."""
        if not isinstance(text, str):
            raise TypeError(f"replace() takes str, not {type(text).__name__}")
        if self._closed:
            return
        self._text.replace(text)
        self._push()

    def _push(self) -> None:
        if self._pump is not None:
            self._pump.push(self._text.text)

    async def __aenter__(self) -> ReplyStream:
        if self._entered:
            raise RuntimeError("a ReplyStream can be entered once")
        self._entered = True
        sink, self._handle = await self._open_sink()
        if sink is not None:
            self._pump = StreamPump(sink)
            self._pump.start()
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self._text.finish()
        self._closed = True
        stopped = exc_type is not None and issubclass(exc_type, asyncio.CancelledError)
        # Shielded: a stop (cancellation) must still finalise what was written.
        await asyncio.shield(self._deliver(stopped))

    async def _deliver(self, stopped: bool) -> None:
        refs: list[MessageRef] = []
        if self._pump is not None:
            try:
                refs = await self._pump.close(stopped=stopped)
            except Exception:
                log.exception("could not deliver the final text of a streamed reply")
        await self._finish(self._handle, self._text.text, stopped, refs)
