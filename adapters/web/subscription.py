"""A bus subscription read through a queue, so a reader can wait with a timeout.

Timing out an ``await anext(events)`` would cancel the bus's async generator and end the
subscription; a pump task that copies events into a queue makes ``wait_for(queue.get())`` safe.
``None`` in the queue means the subscription ended (the bus closed, or the reader fell behind).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

EventQueue = asyncio.Queue[dict[str, Any] | None]


@contextlib.asynccontextmanager
async def subscribed(bus: Any, topic: str) -> AsyncIterator[EventQueue]:
    queue: EventQueue = asyncio.Queue()
    async with bus.subscribe(topic) as events:

        async def pump() -> None:
            try:
                async for event in events:
                    queue.put_nowait(event)
            finally:
                queue.put_nowait(None)

        task = asyncio.create_task(pump(), name=f"chatgate-web-pump-{topic}")
        try:
            yield queue
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def next_event(queue: EventQueue, timeout: float | None) -> dict[str, Any] | bool | None:
    """The next event, ``None`` when the subscription ended, ``False`` on timeout."""
    try:
        return await asyncio.wait_for(queue.get(), timeout)
    except TimeoutError:
        return False
