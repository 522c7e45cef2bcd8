"""A bus subscription read through a queue, so a reader can wait with a timeout.

Timing out an ``await anext(events)`` would cancel the bus's async generator and end the
subscription; a pump task that copies events into a queue makes ``wait_for(queue.get())`` safe.
``None`` in the queue means the subscription ended (the bus closed). A reader the bus cut off
for falling behind gets ``SubscriberOverflow`` from ``next_event``, and one whose Redis connection
dropped gets ``BusDisconnected``: either way frames were lost, so it reads what it needs from the
store instead (``catch_up.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from adapters.base import BusDisconnected, SubscriberOverflow

CUT_OFF = (SubscriberOverflow, BusDisconnected)
"""What ends a subscription with frames lost: the reader goes on from the store."""
EventQueue = asyncio.Queue[dict[str, Any] | SubscriberOverflow | BusDisconnected | None]


@contextlib.asynccontextmanager
async def subscribed(bus: Any, topic: str) -> AsyncIterator[EventQueue]:
    queue: EventQueue = asyncio.Queue()
    async with bus.subscribe(topic) as events:

        async def pump() -> None:
            try:
                async for event in events:
                    queue.put_nowait(event)
            except CUT_OFF as cut_off:
                queue.put_nowait(cut_off)
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
    """The next event, ``None`` when the subscription ended, ``False`` on timeout.

    Raises ``SubscriberOverflow`` when the bus cut this reader off (it fell too far behind), and
    ``BusDisconnected`` when its connection dropped."""
    try:
        event = await asyncio.wait_for(queue.get(), timeout)
    except TimeoutError:
        return False
    if isinstance(event, CUT_OFF):
        queue.put_nowait(event)  # every later read says so too
        raise event
    return event
