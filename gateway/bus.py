"""Pub/sub for frames that must reach whichever process holds a client's connection.

In one process this is a dict of subscriptions, each a queue of frames. When scaled out, the same interface is served
by Redis pub/sub (``RedisBus``, ``gateway/redis_bus.py``), so a web process streams what a worker process produces.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

log = logging.getLogger("chatgate.bus")

SUBSCRIBER_BUFFER = 10_000  # frames a slow subscriber may lag before it is cut off


class SubscriberOverflow(Exception):
    """Raised by a subscription's iterator when its reader fell ``SUBSCRIBER_BUFFER`` frames
    behind: frames were lost, so the reader must catch up from the store (the widget reconnects
    and resumes, REST and SSE read the stored reply) instead of going on as if nothing happened."""

    def __init__(self, topic: str) -> None:
        super().__init__(f"the subscriber of {topic!r} fell {SUBSCRIBER_BUFFER} frames behind and was cut off")
        self.topic = topic


class Subscription:
    """One subscriber's frames, in order. They wait in a deque made when a frame arrives and
    dropped once read, and the reader waits on one future: an idle subscriber (a widget socket
    nobody is talking to) holds neither (an ``asyncio.Queue`` held three deques, about 3 KB).

    Two ways to read: ``async for event in subscription`` waits for each frame; or ``listen`` to
    be called when there is something to read and take it with ``read_ready`` until ``ready()``
    is false, so an idle reader needs no task waiting for it (the widget's sockets)."""

    __slots__ = ("_frames", "_listener", "_waiter", "overflowed", "topic")

    def __init__(self, topic: str = "") -> None:
        self.topic = topic
        self.overflowed = False
        self._frames: deque[dict[str, Any] | None] | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._listener: Callable[[], None] | None = None

    def pending(self) -> int:
        """Frames published and not yet read."""
        return len(self._frames) if self._frames is not None else 0

    def put(self, event: dict[str, Any]) -> None:
        if self.overflowed:
            return  # already cut off: the reader catches up from the store, once
        if self.pending() >= SUBSCRIBER_BUFFER:
            self._overflow()
            return
        self._push(event)

    def end(self) -> None:
        """No more frames: the reader's loop ends after those already here."""
        self._push(None)

    def listen(self, listener: Callable[[], None] | None) -> None:
        """Call ``listener()`` each time a frame, the end or the cut-off arrives (synchronously,
        from the publisher: it must be quick, schedule anything that waits, and never raise);
        ``None`` stops it."""
        self._listener = listener

    def ready(self) -> bool:
        """``read_ready`` would not have to wait: a frame, the end or the cut-off is here."""
        return bool(self._frames)

    def read_ready(self) -> dict[str, Any] | None:
        """The next frame, when ``ready()``; ``None`` when the subscription ended (the bus
        closed). Raises ``SubscriberOverflow`` when the reader was cut off (and keeps raising)."""
        if self.overflowed:
            raise SubscriberOverflow(self.topic)
        assert self._frames, "read_ready() without ready()"
        item = self._frames.popleft()
        if not self._frames:
            self._frames = None
        return item

    def _push(self, item: dict[str, Any] | None) -> None:
        if self._frames is None:
            self._frames = deque()
        self._frames.append(item)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        if self._listener is not None:
            self._listener()

    def _overflow(self) -> None:
        """Cut the subscriber off: free the frames it will never read and wake its reader, which
        raises ``SubscriberOverflow``. Logged once per overflow, not once per dropped frame."""
        self.overflowed = True
        log.warning(
            "a subscriber of %s fell %d frames behind and was cut off; it catches up from the store",
            self.topic or "a topic", SUBSCRIBER_BUFFER,
        )
        self._frames = None
        self._push(None)

    async def _wait_ready(self) -> None:
        while not self.ready():
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[dict[str, Any]]:
        while True:
            if self.overflowed:
                raise SubscriberOverflow(self.topic)
            await self._wait_ready()
            event = self.read_ready()
            if event is None:
                return
            yield event


class Bus(Protocol):
    async def publish(self, topic: str, event: dict[str, Any]) -> None: ...

    def subscribe(self, topic: str) -> Any: ...

    def followed_beyond(self, topic: str, mine: Subscription | None) -> bool:
        """Whether anyone but ``mine`` may follow ``topic``: an event only they would read need
        not be published. True whenever the bus cannot tell (another process may follow it)."""
        ...

    async def close(self) -> None: ...


class _LocalSubscription(Subscription):
    """A subscription that is its own ``async with`` block: an idle widget socket holds it
    entered, and an ``asynccontextmanager`` would add its object and suspended frame (~0.5 KB)."""

    __slots__ = ("_topics",)

    def __init__(self, topic: str, topics: dict[str, tuple[Subscription, ...]]) -> None:
        super().__init__(topic)
        self._topics = topics

    async def __aenter__(self) -> Subscription:
        subscribers = self._topics.get(self.topic, ())
        if self not in subscribers:
            self._topics[self.topic] = (*subscribers, self)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        subscribers = tuple(s for s in self._topics.get(self.topic, ()) if s is not self)
        if subscribers:
            self._topics[self.topic] = subscribers
        else:
            self._topics.pop(self.topic, None)


class LocalBus:
    def __init__(self) -> None:
        self._topics: dict[str, tuple[Subscription, ...]] = {}
        """Each topic's subscribers: a tuple, replaced (not changed) when one comes or goes, so
        a publish goes through a snapshot without copying; and one subscriber (a widget socket
        alone on its session, the usual case) costs 48 bytes, not a set's 216."""

    async def publish(self, topic: str, event: dict[str, Any]) -> None:
        for subscription in self._topics.get(topic, ()):
            subscription.put(event)

    def subscribe(self, topic: str) -> _LocalSubscription:
        """``async with bus.subscribe(topic) as subscription``: subscribed inside the block."""
        return _LocalSubscription(topic, self._topics)

    def followed_beyond(self, topic: str, mine: Subscription | None) -> bool:
        return any(subscription is not mine for subscription in self._topics.get(topic, ()))

    async def close(self) -> None:
        for subscribers in self._topics.values():
            for subscription in subscribers:
                subscription.end()


class BusDisconnected(ConnectionError):
    """The bus lost its connection under a subscription: events published since are lost, so
    the reader must catch up another way (the widget resumes from the store) and subscribe again.
    Also raised by a subscription that cannot start, when Redis cannot be reached."""
