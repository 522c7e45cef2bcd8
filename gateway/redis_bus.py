"""The bus over Redis pub/sub (``chatgate web`` + ``chatgate worker``): the same interface as
``LocalBus`` (``gateway/bus.py``), so a web process streams what a worker process produces."""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from contextlib import suppress
from typing import Any

from gateway.bus import BusDisconnected, Subscription

log = logging.getLogger("chatgate.bus")


class _RedisSubscription(Subscription):
    """A subscription whose Redis connection may drop: the reader gets :class:`BusDisconnected`
    instead of waiting forever for events that will not come. It is its own ``async with``
    block, as a local one is (an idle widget socket holds it entered)."""

    __slots__ = ("_bus", "channel", "error")

    def __init__(self, topic: str, bus: RedisBus) -> None:
        super().__init__(topic)
        self._bus = bus
        self.channel = bus.channel_of(topic).encode()
        self.error: BaseException | None = None

    def end(self, error: BaseException | None = None) -> None:
        self.error = error
        super().end()

    def read_ready(self) -> dict[str, Any] | None:
        event = super().read_ready()
        if event is None and self.error is not None:
            raise BusDisconnected("the connection to Redis was lost; subscribe again") from self.error
        return event

    async def __aenter__(self) -> Subscription:
        await self._bus._join(self)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._bus._leave(self)


class _Publishes:
    """A process's publishes, one command or pipeline on its way to Redis at a time: those made
    meanwhile go out together as the next pipeline, in the order they were made.

    A publish alone is sent at once. Under load (a worker's turns each publish their replies and
    their end), the publishes of concurrent turns share a round trip, and redis-py's per-command
    work (a pooled connection borrowed and returned, its retry and timeout wrappers) is paid once
    per pipeline. Each publish still returns only once Redis has taken it, or raises what the
    command (or its pipeline's connection) raised. Since a publisher awaits each publish before
    its next, its own publishes stay in order, as they did with a connection each."""

    def __init__(self, redis: Any) -> None:
        self._redis = redis
        self._queued: list[tuple[str, str, asyncio.Future[None]]] = []
        self._busy = False
        """A publish or a pipeline is on its way: new publishes queue for the next pipeline."""
        self._sending: asyncio.Task[None] | None = None

    async def publish(self, channel: str, data: str) -> None:
        if not self._busy:
            self._busy = True
            try:
                await self._redis.publish(channel, data)
            finally:
                self._send_queued()
            return
        sent: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queued.append((channel, data, sent))
        await sent

    def _send_queued(self) -> None:
        if not self._queued:
            self._busy = False
            self._sending = None
            return
        batch, self._queued = self._queued, []
        self._sending = asyncio.create_task(self._send(batch), name="chatgate-bus-publish")

    async def _send(self, batch: list[tuple[str, str, asyncio.Future[None]]]) -> None:
        outcomes: list[Any]
        try:
            if len(batch) == 1:  # a pipeline of one costs more than the command
                outcomes = [await self._redis.publish(batch[0][0], batch[0][1])]
            else:
                async with self._redis.pipeline(transaction=False) as pipeline:
                    for channel, data, _ in batch:
                        pipeline.publish(channel, data)
                    outcomes = await pipeline.execute(raise_on_error=False)
        except asyncio.CancelledError:  # the loop is going away: nothing more will be sent
            self._busy = False
            self._fail([*batch, *self._queued], BusDisconnected("the bus was closed"))
            self._queued = []
            raise
        except Exception as exc:  # the connection failed: every publish of the pipeline
            outcomes = [exc] * len(batch)
        for (_, _, sent), outcome in zip(batch, outcomes, strict=True):
            if sent.done():  # its publisher was cancelled: nobody to tell
                continue
            if isinstance(outcome, BaseException):
                sent.set_exception(outcome)
            else:
                sent.set_result(None)
        self._send_queued()

    async def close(self) -> None:
        """Fail what is queued; wait for what is on its way."""
        queued, self._queued = self._queued, []
        self._fail(queued, BusDisconnected("the bus was closed"))
        if self._sending is not None:
            with suppress(Exception):
                await self._sending

    @staticmethod
    def _fail(batch: list[tuple[str, str, asyncio.Future[None]]], error: BaseException) -> None:
        for _, _, sent in batch:
            if not sent.done():
                sent.set_exception(error)


SUBSCRIBE_TIMEOUT_SECONDS = 10.0
"""How long a join waits for Redis to confirm its SUBSCRIBE. A Redis that keeps the connection
open and answers nothing (stalled, or a network that drops without a reset) would otherwise hold
every request's subscription forever: past it, the shared connection counts as dropped."""
PUBLISH_RETRIES = 3
"""Times a publish is sent again after its connection failed, each on a new connection."""
PUBLISH_BACKOFF_CAP_SECONDS = 1.0
"""The longest wait between those tries (redis-py's exponential backoff)."""
SUBSCRIPTION_LINGER_SECONDS = 30.0
"""How long a channel stays subscribed on the server after its last subscriber here left. A
REST client's next message to the same session (or an SSE stream's) then finds it subscribed:
no SUBSCRIBE, no wait for its confirmation, no UNSUBSCRIBE. What arrives meanwhile finds nobody
and is dropped unread."""
MAX_LINGERING_CHANNELS = 10_000
"""Channels kept subscribed with nobody following them, at most; past it, a channel whose last
subscriber leaves is unsubscribed at once."""


class RedisBus:
    """The bus over Redis pub/sub, for ``chatgate web`` + ``chatgate worker`` deployments.

    Publishes go out one command or pipeline at a time (``_Publishes``). Every subscription of
    the process shares one connection, on which one task reads: a channel is subscribed on the
    server while at least one of the process's subscriptions follows it, and each event is
    decoded once for all of them.
    A connection per subscription cost a new TCP connection, a SUBSCRIBE and an UNSUBSCRIBE per
    REST request (17 % of a web process's CPU under load), and a Redis connection and a task per
    idle widget socket (Redis refuses clients past ``maxclients``, 10,000 by default).

    ``async with bus.subscribe(topic)`` returns once the server has confirmed the subscription,
    so an event published after that arrives. An event published just before may arrive too,
    when the channel was already subscribed (another subscriber here, or lingering): the web
    channel's readers match events to their turn, and the socket's feed skips what its client
    holds. A channel whose last subscriber has left lingers (``SUBSCRIPTION_LINGER_SECONDS``),
    then is unsubscribed with the others that lingered as long. When the shared connection
    drops, every subscription ends with :class:`BusDisconnected` (events published meanwhile are
    lost, and the readers catch up from the store), and the next subscription connects afresh.
    """

    def __init__(
        self, url: str, *, key_prefix: str,
        linger_seconds: float = SUBSCRIPTION_LINGER_SECONDS,
        max_lingering: int = MAX_LINGERING_CHANNELS, subscribe_timeout: float = SUBSCRIBE_TIMEOUT_SECONDS,
    ) -> None:
        import redis.asyncio as redis
        from redis.asyncio.retry import Retry
        from redis.backoff import ExponentialBackoff, NoBackoff
        from redis.exceptions import ConnectionError as RedisConnectionError

        # A publish whose pooled connection was dropped while idle (a Redis restart, a firewall's
        # idle timeout) is sent again on a new one; redis-py does not by default, and the event
        # (a reply, a turn's end) would be lost though every subscriber is still listening.
        self._redis = redis.from_url(
            url, retry=Retry(ExponentialBackoff(cap=PUBLISH_BACKOFF_CAP_SECONDS), PUBLISH_RETRIES),
            retry_on_error=[RedisConnectionError],
        )
        self._channel_prefix = key_prefix + ":"
        self._publishes = _Publishes(self._redis)  # one command or pipeline at a time: one connection
        # No retries on the listening connection: redis-py would reconnect a dropped one and
        # carry on, and the events published meanwhile would be lost without a word. With no
        # error to retry on, it does not even reconnect before it raises.
        self._listening = redis.from_url(url, retry=Retry(NoBackoff(), 0, supported_errors=()))
        self._pubsub: Any = None
        """The shared subscriber connection (a redis-py ``PubSub``), made by the first join."""
        self._reader: asyncio.Task[None] | None = None
        self._connecting: asyncio.Future[Any] | None = None
        self._subscribers: dict[bytes, tuple[_RedisSubscription, ...]] = {}
        """Each channel's subscriptions here; a channel is in it while subscribed on the server
        (with none while it lingers)."""
        self._linger = linger_seconds
        self._subscribe_timeout = subscribe_timeout
        self._max_lingering = max_lingering
        self._lingering: dict[bytes, float] = {}
        """Channels subscribed with nobody here following them, oldest first: since when (the
        loop's clock)."""
        self._sweep: asyncio.TimerHandle | None = None
        self._live: dict[bytes, asyncio.Future[None]] = {}
        """Each subscribed channel's confirmation: done when the server has said ``subscribe``."""
        self._awaiting: dict[tuple[bytes, bytes], deque[asyncio.Future[None]]] = {}
        """(``subscribe``, channel): a future per SUBSCRIBE sent and not yet confirmed, in the order
        sent. The server confirms in that order, one reply per channel of a command; an
        UNSUBSCRIBE in between (the last subscriber left) has its own reply kind."""
        self._closing: set[asyncio.Future[None]] = set()
        self._closed = False

    def channel_of(self, topic: str) -> str:
        """The Redis channel of ``topic``: ``<key_prefix>:<topic>``.

        Pub/sub channels are global to a Redis server: the database number in the URL does not
        separate them. Two deployments on one server (a staging copy of production's database,
        with the same session ids, beside production) are kept apart by their ``key_prefix``
        alone, as their shared budgets are."""
        return self._channel_prefix + topic

    async def publish(self, topic: str, event: dict[str, Any]) -> None:
        await self._publishes.publish(self.channel_of(topic), json.dumps(event))

    def subscribe(self, topic: str) -> _RedisSubscription:
        """``async with bus.subscribe(topic) as subscription``: subscribed inside the block."""
        return _RedisSubscription(topic, self)

    def followed_beyond(self, topic: str, mine: Subscription | None) -> bool:
        return True  # another process may follow it

    async def close(self) -> None:
        self._closed = True
        subscribers, self._subscribers = self._subscribers, {}
        for subscription in _every(subscribers):  # as LocalBus: every subscription ends
            subscription.end()
        self._fail_awaiting(BusDisconnected("the bus was closed"))
        self._live = {}
        self._stop_lingering()
        pubsub, reader = self._pubsub, self._reader
        self._pubsub = self._reader = None
        if reader is not None:
            reader.cancel()
            with suppress(asyncio.CancelledError, Exception):
                await reader
        if pubsub is not None:
            with suppress(Exception):
                await pubsub.aclose()
        for task in list(self._closing):
            with suppress(Exception):
                await task
        await self._publishes.close()
        await self._listening.aclose()
        await self._redis.aclose()

    # -- joining and leaving a channel ---------------------------------------------------------

    async def _join(self, subscription: _RedisSubscription) -> None:
        channel = subscription.channel
        pubsub = None if channel in self._subscribers else await self._connected()
        subscribers = self._subscribers.get(channel)  # another join may have come meanwhile
        if subscribers is not None:  # subscribed already, or on its way: wait for the word
            if subscription in subscribers:
                return
            if not subscribers:  # it was lingering: still subscribed, confirmed long ago
                del self._lingering[channel]
            self._subscribers[channel] = (*subscribers, subscription)
            live = self._live[channel]
        elif pubsub is not self._pubsub:
            raise BusDisconnected("the connection to Redis was lost while subscribing")
        else:
            self._subscribers[channel] = (subscription,)
            live = self._live[channel] = self._awaiting_confirmation(b"subscribe", channel)
        try:
            if pubsub is not None and subscribers is None:
                await self._write(pubsub, "SUBSCRIBE", channel)
            if not live.done():
                await self._confirmed(live)
            live.result()
        except BaseException:
            await self._leave(subscription)
            raise

    async def _confirmed(self, live: asyncio.Future[None]) -> None:
        pubsub = self._pubsub
        try:
            async with asyncio.timeout(self._subscribe_timeout):
                await asyncio.shield(live)  # shared: a cancelled join must not cancel the others'
        except TimeoutError:
            if pubsub is not None:
                self._dropped(pubsub, TimeoutError(
                    f"Redis did not confirm a subscription within {self._subscribe_timeout:g} s"
                ))
            raise BusDisconnected("Redis did not confirm the subscription in time") from None

    async def _leave(self, subscription: _RedisSubscription) -> None:
        channel = subscription.channel
        subscribers = self._subscribers.get(channel)
        if subscribers is None or subscription not in subscribers:
            return  # ended by a dropped connection or by close: nothing here or on the server
        rest = tuple(s for s in subscribers if s is not subscription)
        if rest:
            self._subscribers[channel] = rest
            return
        live = self._live[channel]
        confirmed = live.done() and not live.cancelled() and live.exception() is None
        if confirmed and self._linger > 0 and len(self._lingering) < self._max_lingering:
            self._subscribers[channel] = ()
            self._lingering[channel] = asyncio.get_running_loop().time()
            if self._sweep is None:
                self._sweep = asyncio.get_running_loop().call_later(self._linger, self._start_expiry)
            return
        del self._subscribers[channel]
        del self._live[channel]
        if (pubsub := self._pubsub) is not None:
            # Written before this returns, not waited for: what arrives for the channel until the
            # server has read it finds nobody here, and the block's end waits on no round trip.
            with suppress(Exception):  # a dropped connection unsubscribed everything anyway
                await self._write(pubsub, "UNSUBSCRIBE", channel)

    def _start_expiry(self) -> None:
        self._sweep = None
        expiring = asyncio.ensure_future(self._expire())
        self._closing.add(expiring)
        expiring.add_done_callback(self._closing.discard)

    async def _expire(self) -> None:
        """Unsubscribe the channels that have lingered long enough, in one command. They leave
        the maps and the UNSUBSCRIBE is written in one step, with no await between: a join that
        comes after finds the channel gone, and its SUBSCRIBE is written after."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        expired: list[bytes] = []
        for channel, since in self._lingering.items():
            if now - since < self._linger:
                break
            expired.append(channel)
        for channel in expired:
            del self._lingering[channel], self._subscribers[channel], self._live[channel]
        if self._sweep is not None:  # one timer at a time (a leave may have set one meanwhile)
            self._sweep.cancel()
            self._sweep = None
        if self._lingering:
            oldest = next(iter(self._lingering.values()))
            self._sweep = loop.call_later(max(oldest + self._linger - now, 0.0), self._start_expiry)
        if expired and (pubsub := self._pubsub) is not None:
            with suppress(Exception):
                await self._write(pubsub, "UNSUBSCRIBE", *expired)

    def _stop_lingering(self) -> None:
        self._lingering = {}
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None

    def _awaiting_confirmation(self, kind: bytes, channel: bytes) -> asyncio.Future[None]:
        """A future the reader completes when the server confirms the command about to be sent."""
        confirmed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._awaiting.setdefault((kind, channel), deque()).append(confirmed)
        return confirmed

    async def _write(self, pubsub: Any, command: str, *channels: bytes) -> None:
        """Send a command on the shared connection. A connected redis-py connection writes before
        it can suspend, so commands go out in the order their confirmations were registered; a
        send that fails leaves the connection in an unknown state, which counts as a drop."""
        try:
            await pubsub.execute_command(command, *channels)
        except asyncio.CancelledError:
            raise  # written already: its confirmation comes, and goes to its future
        except Exception as exc:
            self._dropped(pubsub, exc)
            raise

    # -- the shared connection -----------------------------------------------------------------

    async def _connected(self) -> Any:
        """The shared subscriber connection, connected (and its reader started) if need be.
        Raises :class:`BusDisconnected` at once when Redis cannot be reached."""
        if self._pubsub is not None:
            return self._pubsub
        if self._connecting is None or self._connecting.done():  # one connect for all who wait
            self._connecting = asyncio.ensure_future(self._connect())
            self._connecting.add_done_callback(_retrieved)
        return await asyncio.shield(self._connecting)

    async def _connect(self) -> Any:
        from redis.exceptions import RedisError

        pubsub = self._listening.pubsub()
        try:
            try:
                await pubsub.connect()
            except (RedisError, OSError) as exc:
                raise BusDisconnected(f"cannot reach Redis: {exc}") from exc
            if self._closed:
                raise BusDisconnected("the bus was closed")
        except BaseException:
            with suppress(Exception):
                await pubsub.aclose()
            raise
        self._pubsub = pubsub
        self._reader = asyncio.create_task(self._read(pubsub), name="chatgate-bus-reader")
        return pubsub

    async def _read(self, pubsub: Any) -> None:
        """The one reader of the shared connection: events to their channel's subscriptions,
        confirmations to the commands that wait for them."""
        try:
            while True:
                reply = await pubsub.parse_response(block=True)
                if not isinstance(reply, (list, tuple)) or len(reply) < 3:
                    continue  # a pong, or something not meant for us
                kind, channel, payload = _as_bytes(reply[0]), _as_bytes(reply[1]), reply[2]
                if kind == b"message":
                    self._deliver(channel, payload)
                elif (awaiting := self._awaiting.get((kind, channel))) is not None:
                    confirmed = awaiting.popleft()
                    if not awaiting:
                        del self._awaiting[kind, channel]
                    if not confirmed.done():  # a join cancelled meanwhile left it to us
                        confirmed.set_result(None)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the connection dropped
            self._dropped(pubsub, exc)

    def _deliver(self, channel: bytes, payload: Any) -> None:
        subscribers = self._subscribers.get(channel)
        if not subscribers:
            return  # its last subscriber left; the UNSUBSCRIBE is on its way
        try:
            event = json.loads(payload)
        except ValueError:  # UnicodeDecodeError too
            event = None
        if not isinstance(event, dict):  # not ours: someone else published on the channel
            log.warning("bus channel %s: skipped a message that is not a JSON object", channel.decode(errors="replace"))
            return
        for subscription in subscribers:
            subscription.put(event)

    def _dropped(self, pubsub: Any, error: BaseException) -> None:
        """The shared connection is gone: every subscription ends with the error, every command
        waiting for a confirmation fails, and the next join connects afresh."""
        if pubsub is not self._pubsub:
            return  # an older connection, already dealt with
        subscribers, self._subscribers = self._subscribers, {}
        self._live = {}
        self._stop_lingering()
        self._pubsub = None
        reader, self._reader = self._reader, None
        if reader is not None and reader is not asyncio.current_task():
            reader.cancel()
        self._fail_awaiting(BusDisconnected(f"the connection to Redis was lost: {error}"))
        ended = 0
        for subscription in _every(subscribers):
            subscription.end(error)
            ended += 1
        log.warning("the bus lost its Redis connection (%s); %d subscriptions ended", error, ended)
        closing = asyncio.ensure_future(_quietly(pubsub.aclose()))
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)

    def _fail_awaiting(self, error: BaseException) -> None:
        awaiting, self._awaiting = self._awaiting, {}
        for futures in awaiting.values():
            for confirmed in futures:
                if not confirmed.done():
                    confirmed.set_exception(error)
                    confirmed.exception()  # nobody may be waiting (a cancelled join): no warning


def _every(subscribers: dict[bytes, tuple[_RedisSubscription, ...]]) -> list[_RedisSubscription]:
    return [subscription for channel in subscribers.values() for subscription in channel]


def _as_bytes(value: Any) -> Any:
    return value.encode() if isinstance(value, str) else value


def _retrieved(future: asyncio.Future[Any]) -> None:
    """A done-callback that reads a future's outcome, so one nobody awaited logs no warning."""
    if not future.cancelled():
        future.exception()


async def _quietly(closing: Any) -> None:
    with suppress(Exception):
        await closing
