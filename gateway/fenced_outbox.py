"""An outbox that sends nothing once its turn's session lease is known lost (``chatgate worker``).

The store refuses a fenced write in its own transaction (``gateway.store.fence``); a platform send
has no transaction, so the best a worker can do is not to start one after its lease lapsed on the
local clock or was found taken over. A send that started before is not undone: that is the one
message a platform may see twice (docs/scaling.md, "Topology and failure model").
"""

from __future__ import annotations

from typing import Any

from gateway.outbound import MessageRef, Outbox, StreamSink
from gateway.store.fence import Fence


class FencedStreamSink:
    def __init__(self, sink: StreamSink, fence: Fence) -> None:
        self._sink = sink
        self._fence = fence
        self.min_interval = sink.min_interval

    async def frame(self, text: str) -> None:
        self._fence.check_local()
        await self._sink.frame(text)

    async def close(self, text: str, *, stopped: bool) -> list[MessageRef]:
        self._fence.check_local()
        return await self._sink.close(text, stopped=stopped)


class FencedOutbox:
    """``outbox``, with the fence checked (locally: no round trip) before every send."""

    def __init__(self, outbox: Outbox, fence: Fence) -> None:
        self._outbox = outbox
        self._fence = fence

    async def send_text(self, message_id: str, text: str) -> list[MessageRef]:
        self._fence.check_local()
        return await self._outbox.send_text(message_id, text)

    def open_stream(self, message_id: str) -> StreamSink:
        self._fence.check_local()
        return FencedStreamSink(self._outbox.open_stream(message_id), self._fence)

    async def show_block(
        self, message_id: str, envelope: dict[str, Any], previous: list[MessageRef] | None
    ) -> list[MessageRef]:
        self._fence.check_local()
        return await self._outbox.show_block(message_id, envelope, previous)

    async def notify(self, text: str, detail: str) -> None:
        self._fence.check_local()
        await self._outbox.notify(text, detail)

    async def end_turn(self, inbound_id: str | None, error: str | None) -> None:
        self._fence.check_local()
        await self._outbox.end_turn(inbound_id, error)

    def __getattr__(self, name: str) -> Any:
        """Anything else an adapter's outbox offers (read-only helpers) passes through."""
        return getattr(self._outbox, name)
