"""The bus on its own: ``LocalBus`` in one process, ``RedisBus`` against the local Redis.

What both promise is checked on both (``bus_kind`` parametrises it); what only Redis has (two
processes, a connection that drops, a subscription that must be live when ``subscribe``
returns) runs against real Redis, reached directly or through a loopback TCP proxy that a test
can slow down, cut or shut, as a network or a Redis restart would.

Every topic is unique per test: the Redis server is shared with other test runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import suppress
from typing import Any

import pytest

from gateway import bus as bus_module
from gateway.bus import LocalBus
from gateway.redis_bus import RedisBus
from tests.support import until

WAIT = 5.0  # seconds an awaited event may take before the test fails
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379


class TcpProxy:
    """A loopback TCP proxy in front of Redis that a test can slow down, cut or shut."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.delay_up = 0.0
        """Seconds each chunk from client to server is held (a slow link)."""
        self.port = 0
        self.accepted = 0
        """Connections made through the proxy so far."""
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}
        for task in (asyncio.create_task(self._pipe(reader, up_writer, up=True)),
                     asyncio.create_task(self._pipe(up_reader, writer, up=False))):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, up: bool) -> None:
        try:
            while data := await reader.read(65536):
                if up and self.delay_up:
                    await asyncio.sleep(self.delay_up)
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    def cut(self) -> None:
        """Drop every open connection (a network failure, a Redis restart); new ones still work."""
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    def shut(self) -> None:
        """Redis is down: drop the open connections and refuse new ones."""
        if self._server is not None:
            self._server.close()
            self._server = None
        self.cut()

    async def close(self) -> None:
        self.shut()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


# -- the collaborators, each built in one place ------------------------------------------------


@pytest.fixture
async def make_bus(request) -> AsyncIterator[Callable[..., Any]]:
    """``make_bus("local")`` or ``make_bus("redis", url=..., linger_seconds=...)``; every bus is
    closed after."""
    built: list[Any] = []

    def make(kind: str, url: str | None = None, **options: Any) -> Any:
        if kind == "local":
            made: Any = LocalBus()
        else:  # no lingering unless a test asks: a channel is unsubscribed as its last block ends
            made = RedisBus(url or request.getfixturevalue("redis_url"),
                            **{"key_prefix": "chatgate", "linger_seconds": 0, **options})
        built.append(made)
        return made

    yield make
    for made in built:
        with suppress(Exception):
            await made.close()


@pytest.fixture(params=["local", pytest.param("redis", marks=pytest.mark.redis)])
def bus_kind(request) -> str:
    if request.param == "redis":
        request.getfixturevalue("redis_url")  # skips (or fails in CI) without Redis
    return request.param


@pytest.fixture
def bus(make_bus, bus_kind) -> Any:
    return make_bus(bus_kind)


@pytest.fixture
def topic() -> str:
    return f"test-bus-{secrets.token_hex(6)}"


@pytest.fixture
async def proxy(redis_url) -> AsyncIterator[TcpProxy]:
    running = TcpProxy(REDIS_HOST, REDIS_PORT)
    await running.start()
    yield running
    await running.close()


@pytest.fixture
async def redis_admin(redis_url) -> AsyncIterator[Any]:
    """A plain Redis client to look at the server side (who is subscribed)."""
    import redis.asyncio as redis

    client = redis.from_url(redis_url)
    yield client
    await client.aclose()


async def subscribers_on_server(admin: Any, topic: str, prefix: str = "chatgate") -> int:
    [(_, count)] = await admin.pubsub_numsub(f"{prefix}:{topic}")
    return int(count)


async def unsubscribed_on_server(admin: Any, topic: str) -> None:
    """Wait until nothing follows the topic on the server: a bus sends its UNSUBSCRIBE as the
    last block is left, and the server reads it a moment later (fails after ``WAIT``)."""

    async def nobody() -> bool:
        return await subscribers_on_server(admin, topic) == 0

    await until(nobody, WAIT)


async def receive(subscription: Any, count: int, timeout: float = WAIT) -> list[dict[str, Any]]:
    """The next ``count`` events of a subscription (fails after ``timeout``)."""
    events: list[dict[str, Any]] = []

    async def read() -> None:
        async for event in subscription:
            events.append(event)
            if len(events) == count:
                return

    await asyncio.wait_for(read(), timeout)
    return events


async def ends(subscription: Any, timeout: float = WAIT) -> BaseException | None:
    """Iterate until the subscription ends; returns what it raised, if anything."""

    async def drain() -> None:
        async for _ in subscription:
            pass

    try:
        await asyncio.wait_for(drain(), timeout)
    except TimeoutError:
        raise AssertionError(f"the subscription did not end within {timeout} s") from None
    except Exception as exc:
        return exc
    return None


# -- what both buses promise -----------------------------------------------------------------


async def test_events_of_a_topic_arrive_in_publish_order(bus, topic):
    async with bus.subscribe(topic) as subscription:
        for n in range(200):
            await bus.publish(topic, {"n": n, "text": f"frame {n}"})
        events = await receive(subscription, 200)
    assert events == [{"n": n, "text": f"frame {n}"} for n in range(200)]


async def test_every_subscriber_of_a_topic_gets_every_event(bus, topic):
    async with bus.subscribe(topic) as first, bus.subscribe(topic) as second, bus.subscribe(topic) as third:
        for n in range(20):
            await bus.publish(topic, {"n": n})
        got = await asyncio.gather(*(receive(s, 20) for s in (first, second, third)))
    assert got == [[{"n": n} for n in range(20)]] * 3


async def test_topics_are_kept_apart(bus, topic):
    async with bus.subscribe(topic) as mine, bus.subscribe(topic + "-other") as other:
        await bus.publish(topic + "-other", {"for": "other"})
        await bus.publish(topic, {"for": "mine"})
        assert await receive(mine, 1) == [{"for": "mine"}]
        assert await receive(other, 1) == [{"for": "other"}]


async def test_an_event_is_json_shaped_on_arrival(bus, topic):
    event = {"type": "frame", "text": "ünïcode ✓ 🚀", "n": 1, "ok": True, "none": None, "items": [1, "2"],
             "nested": {"a": [{"b": 1.5}]}}
    async with bus.subscribe(topic) as subscription:
        await bus.publish(topic, event)
        assert await receive(subscription, 1) == [event]


async def test_publishing_to_a_topic_nobody_follows_is_fine(bus, topic):
    await bus.publish(topic, {"into": "the void"})
    async with bus.subscribe(topic) as subscription:  # a later subscriber does not get the past
        await bus.publish(topic, {"n": 1})
        assert await receive(subscription, 1) == [{"n": 1}]


async def test_a_subscriber_stops_receiving_once_its_block_is_left(bus, topic):
    async with bus.subscribe(topic) as staying:
        async with bus.subscribe(topic) as leaving:
            await bus.publish(topic, {"n": 1})
            assert await receive(leaving, 1) == [{"n": 1}]
        await bus.publish(topic, {"n": 2})
        assert await receive(staying, 2) == [{"n": 1}, {"n": 2}]
    assert leaving.pending() == 0  # nothing was queued for the subscriber that left


async def test_breaking_out_of_the_iteration_keeps_the_subscription(bus, topic):
    """Only leaving the ``async with`` block unsubscribes: a reader that stops iterating and
    starts again misses nothing in between."""
    async with bus.subscribe(topic) as subscription:
        for n in range(3):
            await bus.publish(topic, {"n": n})
        async for event in subscription:
            assert event == {"n": 0}
            break
        await bus.publish(topic, {"n": 3})
        assert await receive(subscription, 3) == [{"n": 1}, {"n": 2}, {"n": 3}]


async def test_a_reader_task_cancelled_mid_iteration_unsubscribes(bus, topic):
    """How a web connection that goes away ends its subscription: its task is cancelled."""
    received: list[dict[str, Any]] = []
    first = asyncio.Event()
    kept: list[Any] = []

    async def follow() -> None:
        async with bus.subscribe(topic) as subscription:
            kept.append(subscription)
            async for event in subscription:
                received.append(event)
                first.set()

    reader = asyncio.create_task(follow())
    async with bus.subscribe(topic) as witness:
        await _until_delivered(bus, topic, first)
        reader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reader
        await bus.publish(topic, {"after": "cancel"})
        events: list[dict[str, Any]] = []
        while {"after": "cancel"} not in events:  # the witness also saw the probes
            events += await receive(witness, 1)
    assert {"after": "cancel"} not in received and kept[0].pending() == 0


async def _until_delivered(bus: Any, topic: str, delivered: asyncio.Event) -> None:
    """Publish until a subscriber started elsewhere reports its first event (it subscribes in
    its own task, so the first publish may come before it)."""
    async with asyncio.timeout(WAIT):
        while not delivered.is_set():
            await bus.publish(topic, {"probe": True})
            with suppress(TimeoutError):
                await asyncio.wait_for(delivered.wait(), 0.05)


async def test_followed_beyond_tells_whether_an_event_would_reach_anyone_else(make_bus, bus_kind, topic):
    """The widget skips publishing a user's message that only its own socket would read (and
    skip): the local bus knows its subscribers; over Redis another process may follow."""
    bus = make_bus(bus_kind)
    if bus_kind == "redis":
        assert bus.followed_beyond(topic, None)
        return
    assert not bus.followed_beyond(topic, None)
    async with bus.subscribe(topic) as mine:
        assert not bus.followed_beyond(topic, mine) and bus.followed_beyond(topic, None)
        async with bus.subscribe(topic):
            assert bus.followed_beyond(topic, mine)
        assert not bus.followed_beyond(topic, mine)
        assert not bus.followed_beyond(topic + "-other", mine)


async def test_close_ends_every_subscription(bus, topic):
    async with bus.subscribe(topic) as first, bus.subscribe(topic + "-2") as second:
        await bus.publish(topic, {"n": 1})
        assert await receive(first, 1) == [{"n": 1}]
        await bus.close()
        assert await ends(first) is None
        assert await ends(second) is None


async def test_a_listened_subscription_is_read_without_waiting(bus, topic):
    """How a widget socket reads: no task waits on the subscription; the listener is called for
    every arrival, and ``read_ready`` takes the frames in order, then ``None`` for the end."""
    woken: list[int] = []
    async with bus.subscribe(topic) as subscription:
        subscription.listen(lambda: woken.append(subscription.pending()))
        assert not subscription.ready()
        for n in range(5):
            await bus.publish(topic, {"n": n})
        await until(lambda: subscription.pending() == 5, WAIT)  # Redis delivers through its own task
        assert woken == [1, 2, 3, 4, 5]
        got = []
        while subscription.ready():
            got.append(subscription.read_ready())
        assert got == [{"n": n} for n in range(5)]
        subscription.listen(None)
        await bus.publish(topic, {"n": 5})
        await until(subscription.ready, WAIT)
        assert len(woken) == 5  # no longer listened to; the frame still waits to be read
        assert subscription.read_ready() == {"n": 5}
        subscription.listen(lambda: woken.append(-1))
        await bus.close()
        assert woken[-1] == -1 and subscription.ready()
        assert subscription.read_ready() is None and not subscription.ready()


async def test_a_listened_subscription_that_overflows_raises_on_read(make_bus, topic):
    bus = make_bus("local")
    async with bus.subscribe(topic) as subscription:
        woken: list[bool] = []
        subscription.listen(lambda: woken.append(subscription.overflowed))
        for n in range(bus_module.SUBSCRIBER_BUFFER + 1):
            await bus.publish(topic, {"n": n})
        assert woken[-1] is True and subscription.ready()
        for _ in range(2):  # every later read says so too
            with pytest.raises(bus_module.SubscriberOverflow):
                subscription.read_ready()


async def test_a_slow_subscriber_neither_blocks_the_publisher_nor_the_fast_subscribers(make_bus, topic):
    """A subscriber more than ``SUBSCRIBER_BUFFER`` frames behind is cut off: its reader gets
    ``SubscriberOverflow`` (the web channel then resumes from the store) and the frames it would
    never read are freed. The publisher never waits for it, and fast readers get everything."""
    bus = make_bus("local")
    total = bus_module.SUBSCRIBER_BUFFER + 500
    fast_events: list[int] = []

    async with bus.subscribe(topic) as slow, bus.subscribe(topic) as fast:

        async def read_fast() -> None:
            async for event in fast:
                fast_events.append(event["n"])
                if event["n"] == total - 1:
                    return

        reader = asyncio.create_task(read_fast())
        for n in range(total):  # the slow subscriber reads nothing meanwhile
            await asyncio.wait_for(bus.publish(topic, {"n": n}), WAIT)
            if n % 100 == 0:
                await asyncio.sleep(0)  # a real publisher awaits between frames; the fast reader runs
        await asyncio.wait_for(reader, WAIT)
        assert fast_events == list(range(total))
        slow_events: list[int] = []
        with pytest.raises(bus_module.SubscriberOverflow):
            async for event in slow:
                slow_events.append(event["n"])
        assert slow_events == []  # cut off at once: nothing stale is delivered after the overflow


# -- RedisBus: two processes, the connection -------------------------------------------------


@pytest.mark.redis
async def test_redis_bus_carries_events_between_two_processes(make_bus, redis_url, topic):
    worker, web = make_bus("redis"), make_bus("redis")  # each with its own connections
    async with web.subscribe(topic) as subscription:
        for n in range(50):
            await worker.publish(topic, {"n": n})
        assert await receive(subscription, 50) == [{"n": n} for n in range(50)]
    async with worker.subscribe(topic) as back:
        await web.publish(topic, {"reply": "the other way"})
        assert await receive(back, 1) == [{"reply": "the other way"}]


@pytest.mark.redis
async def test_buses_with_different_key_prefixes_on_one_redis_are_kept_apart(make_bus, redis_admin, topic):
    """Two deployments on one Redis server (a staging copy of production's database has the same
    session ids): each bus hears its own prefix's events only, whatever the database number."""
    staging, production = f"staging-{topic}", f"production-{topic}"
    staging_web, staging_worker = make_bus("redis", key_prefix=staging), make_bus("redis", key_prefix=staging)
    production_worker = make_bus("redis", key_prefix=production)
    async with staging_web.subscribe(topic) as subscription:
        assert await subscribers_on_server(redis_admin, topic, prefix=staging) == 1
        assert await subscribers_on_server(redis_admin, topic) == 0
        await production_worker.publish(topic, {"from": "production"})
        await staging_worker.publish(topic, {"from": "staging"})
        assert await receive(subscription, 1) == [{"from": "staging"}]
        await staging_worker.publish(topic, {"from": "staging", "n": 2})
        assert await receive(subscription, 1) == [{"from": "staging", "n": 2}]  # nothing else came between


@pytest.mark.redis
async def test_redis_subscription_is_live_when_subscribe_returns(make_bus, proxy, topic):
    """The web process subscribes, then the turn starts: an event published right after
    ``subscribe`` returned must arrive even when the SUBSCRIBE travels a slow link."""
    worker = make_bus("redis")
    web = make_bus("redis", proxy.url)
    proxy.delay_up = 0.1
    async with web.subscribe(topic) as subscription:
        await worker.publish(topic, {"n": 1})
        assert await receive(subscription, 1) == [{"n": 1}]


@pytest.mark.redis
async def test_redis_unsubscribes_on_the_server_when_the_block_is_left(make_bus, redis_admin, topic):
    """The process's subscriptions share one connection: a channel is subscribed on the server
    once, while any of them follows it, and not after the last has left its block."""
    web = make_bus("redis")
    async with web.subscribe(topic):
        async with web.subscribe(topic):
            assert await subscribers_on_server(redis_admin, topic) == 1
        assert await subscribers_on_server(redis_admin, topic) == 1
    await unsubscribed_on_server(redis_admin, topic)


@pytest.mark.redis
async def test_every_subscription_of_a_process_shares_one_redis_connection(make_bus, redis_url, proxy, topic):
    """A web process holds a subscription per open widget socket and per REST request: one
    connection each would cost a TCP connection per request, and Redis refuses clients past
    ``maxclients`` (and redis-py's pool past 100 connections)."""
    worker, web = make_bus("redis"), make_bus("redis", proxy.url)
    topics = [f"{topic}-{n}" for n in range(150)]
    async with contextlib.AsyncExitStack() as stack:
        subscriptions = [await stack.enter_async_context(web.subscribe(name)) for name in topics]
        for n, name in enumerate(topics):
            await worker.publish(name, {"n": n})
        for n, subscription in enumerate(subscriptions):
            assert await receive(subscription, 1) == [{"n": n}]
    for _ in range(20):  # a REST request's subscribe, turn, leave
        async with web.subscribe(topic) as subscription:
            await worker.publish(topic, {"again": True})
            assert await receive(subscription, 1) == [{"again": True}]
    assert proxy.accepted == 1


@pytest.mark.redis
async def test_concurrent_publishes_share_one_connection_and_each_publisher_keeps_its_order(
    make_bus, proxy, topic
):
    """A worker's concurrent turns publish at once: their publishes go out in pipelines on one
    connection, every publish returns once Redis has it, and each publisher's events arrive in
    the order it published them."""
    worker, web = make_bus("redis", proxy.url), make_bus("redis")
    publishers, each = 20, 30

    async def publish_in_turn(publisher: int) -> None:
        for n in range(each):
            await worker.publish(topic, {"publisher": publisher, "n": n})

    async with web.subscribe(topic) as subscription:
        await asyncio.gather(*(publish_in_turn(p) for p in range(publishers)))
        events = await receive(subscription, publishers * each)
    for publisher in range(publishers):
        assert [e["n"] for e in events if e["publisher"] == publisher] == list(range(each))
    assert proxy.accepted == 1


@pytest.mark.redis
async def test_publishes_go_on_after_the_connection_drops(make_bus, proxy, topic):
    worker, web = make_bus("redis", proxy.url), make_bus("redis")
    async with web.subscribe(topic) as subscription:
        await asyncio.gather(*(worker.publish(topic, {"n": n}) for n in range(10)))
        proxy.cut()
        for n in range(10, 20):  # redis-py reconnects the publishing connection
            await worker.publish(topic, {"n": n})
        events = await receive(subscription, 20)
    assert sorted(e["n"] for e in events) == list(range(20))


async def _subscribe_commands(admin: Any) -> int:
    return int((await admin.info("commandstats")).get("cmdstat_subscribe", {}).get("calls", 0))


@pytest.mark.redis
async def test_a_channel_lingers_after_its_last_subscriber_and_is_taken_up_again_at_once(
    make_bus, redis_admin, topic
):
    """A REST client's next message to a session finds its channel still subscribed: no
    SUBSCRIBE and no wait for its confirmation. Once it has lingered long enough, it is
    unsubscribed on the server."""
    worker, web = make_bus("redis"), make_bus("redis", linger_seconds=0.5)
    before = await _subscribe_commands(redis_admin)
    for n in range(5):
        async with web.subscribe(topic) as subscription:
            await worker.publish(topic, {"n": n})
            assert await receive(subscription, 1) == [{"n": n}]
        assert await subscribers_on_server(redis_admin, topic) == 1  # lingering
    async with web.subscribe(topic) as subscription:
        await worker.publish(topic, {"n": 5})
        assert await receive(subscription, 1) == [{"n": 5}]
    assert await _subscribe_commands(redis_admin) - before == 1
    await unsubscribed_on_server(redis_admin, topic)


@pytest.mark.redis
async def test_a_join_as_its_channel_expires_is_live(make_bus, redis_admin, topic):
    """Joins and leaves around the moment a lingering channel is unsubscribed: the expiry's
    UNSUBSCRIBE and a new join's SUBSCRIBE go out in the order that leaves the join subscribed."""
    worker, web = make_bus("redis"), make_bus("redis", linger_seconds=0.02)
    rng = random.Random(7)
    for n in range(60):
        async with web.subscribe(topic) as subscription:
            await worker.publish(topic, {"n": n})
            assert await receive(subscription, 1) == [{"n": n}]
        await asyncio.sleep(rng.random() * 0.04)
    await unsubscribed_on_server(redis_admin, topic)


@pytest.mark.redis
async def test_past_the_most_lingering_channels_a_channel_is_unsubscribed_at_once(make_bus, redis_admin, topic):
    web = make_bus("redis", linger_seconds=60, max_lingering=2)
    for name in (f"{topic}-1", f"{topic}-2", f"{topic}-3"):
        async with web.subscribe(name):
            pass
    assert [await subscribers_on_server(redis_admin, f"{topic}-{n}") for n in (1, 2)] == [1, 1]
    await unsubscribed_on_server(redis_admin, f"{topic}-3")


@pytest.mark.redis
async def test_leaving_and_joining_a_channel_at_once_stays_subscribed(make_bus, redis_admin, proxy, topic):
    """The last subscriber leaves (UNSUBSCRIBE) while a new one joins (SUBSCRIBE) over a slow
    link: each waits for its own confirmation, and the new one is live when it returns."""
    worker, web = make_bus("redis"), make_bus("redis", proxy.url)
    proxy.delay_up = 0.05
    joined: list[Any] = []

    async def join_and_hold(ready: asyncio.Event, done: asyncio.Event) -> None:
        async with web.subscribe(topic) as subscription:
            joined.append(subscription)
            ready.set()
            await done.wait()

    leaving = web.subscribe(topic)
    await leaving.__aenter__()
    ready, done = asyncio.Event(), asyncio.Event()
    holder = asyncio.create_task(join_and_hold(ready, done))
    await asyncio.sleep(0)  # the new join is on its way when the last one leaves
    await leaving.__aexit__(None, None, None)
    await asyncio.wait_for(ready.wait(), WAIT)
    await worker.publish(topic, {"n": 1})
    assert await receive(joined[0], 1) == [{"n": 1}]
    assert await subscribers_on_server(redis_admin, topic) == 1
    done.set()
    await holder
    await unsubscribed_on_server(redis_admin, topic)


@pytest.mark.redis
async def test_a_join_cancelled_before_its_confirmation_leaves_the_others_live(make_bus, redis_admin, proxy, topic):
    worker, web = make_bus("redis"), make_bus("redis", proxy.url)
    proxy.delay_up = 0.1
    cancelled = asyncio.create_task(web.subscribe(topic).__aenter__())
    await asyncio.sleep(0.02)  # its SUBSCRIBE is on the slow link
    staying = web.subscribe(topic)
    waiting = asyncio.create_task(staying.__aenter__())
    await asyncio.sleep(0)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    subscription = await asyncio.wait_for(waiting, WAIT)
    await worker.publish(topic, {"n": 1})
    assert await receive(subscription, 1) == [{"n": 1}]
    await staying.__aexit__(None, None, None)
    await unsubscribed_on_server(redis_admin, topic)
    # Alone and cancelled: nothing stays subscribed on the server.
    alone = asyncio.create_task(web.subscribe(topic + "-alone").__aenter__())
    await asyncio.sleep(0.02)
    alone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await alone
    await unsubscribed_on_server(redis_admin, topic + "-alone")


@pytest.mark.redis
async def test_concurrent_requests_on_shared_topics_each_get_their_own_events(make_bus, redis_admin, topic):
    """Many REST-like requests at once, several per session: each subscribes, publishes its
    marker, must see it (and its session's other markers, never another session's), and leaves;
    afterwards nothing is subscribed on the server."""
    worker, web = make_bus("redis"), make_bus("redis")
    rng = random.Random(12)
    sessions = [f"{topic}-s{n}" for n in range(6)]

    async def request(n: int) -> None:
        session = rng.choice(sessions)
        await asyncio.sleep(rng.random() / 100)
        async with web.subscribe(session) as subscription:
            await worker.publish(session, {"session": session, "n": n})
            async with asyncio.timeout(WAIT):
                async for event in subscription:
                    assert event["session"] == session
                    if event["n"] == n:
                        break

    await asyncio.gather(*(request(n) for n in range(200)))
    for session in sessions:
        await unsubscribed_on_server(redis_admin, session)


@pytest.mark.redis
async def test_redis_unsubscribes_on_the_server_when_the_reader_is_cancelled(make_bus, redis_admin, topic):
    web = make_bus("redis")
    subscribed = asyncio.Event()

    async def follow() -> None:
        async with web.subscribe(topic) as subscription:
            subscribed.set()
            async for _ in subscription:
                pass

    reader = asyncio.create_task(follow())
    await asyncio.wait_for(subscribed.wait(), WAIT)
    assert await subscribers_on_server(redis_admin, topic) == 1
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    await unsubscribed_on_server(redis_admin, topic)


@pytest.mark.redis
async def test_a_malformed_message_on_the_channel_is_skipped(make_bus, redis_admin, topic):
    """Something else publishes on our channel (an older version, a person with redis-cli):
    the subscription skips what is not a JSON object and goes on."""
    web = make_bus("redis")
    async with web.subscribe(topic) as subscription:
        for junk in (b"not json", b"\xff\xfe", b"[1, 2]", b"42"):
            await redis_admin.publish(f"chatgate:{topic}", junk)
        await web.publish(topic, {"n": 1})
        assert await receive(subscription, 1) == [{"n": 1}]


@pytest.mark.redis
async def test_a_dropped_redis_connection_ends_the_subscription_with_an_error(make_bus, proxy, topic):
    """Redis restarts (or the network drops): events published meanwhile are gone, so the reader
    must learn it (the widget then resumes from the store) rather than wait forever."""
    worker, web = make_bus("redis"), make_bus("redis", proxy.url)
    async with web.subscribe(topic) as subscription:
        await worker.publish(topic, {"n": 1})
        assert await receive(subscription, 1) == [{"n": 1}]
        proxy.cut()
        error = await ends(subscription)
    assert isinstance(error, bus_module.BusDisconnected) and isinstance(error, ConnectionError)
    # The bus itself reconnects: a new subscription and a publish through the same bus work.
    async with web.subscribe(topic) as again:
        await web.publish(topic, {"n": 2})
        assert await receive(again, 1) == [{"n": 2}]


@pytest.mark.redis
async def test_a_dropped_shared_connection_ends_every_subscription_and_fails_a_pending_join(make_bus, proxy, topic):
    worker, web = make_bus("redis"), make_bus("redis", proxy.url)
    async with web.subscribe(topic) as first, web.subscribe(topic + "-2") as second:
        proxy.delay_up = 0.5  # the next SUBSCRIBE is still on its way when the connection drops
        pending = asyncio.create_task(web.subscribe(topic + "-3").__aenter__())
        await asyncio.sleep(0.05)
        proxy.cut()
        for subscription in (first, second):
            assert isinstance(await ends(subscription), bus_module.BusDisconnected)
        with pytest.raises(ConnectionError):
            await asyncio.wait_for(pending, WAIT)
    proxy.delay_up = 0.0
    async with web.subscribe(topic) as again:  # the next join connects afresh
        await worker.publish(topic, {"n": 1})
        assert await receive(again, 1) == [{"n": 1}]
    assert proxy.accepted == 2


@pytest.mark.redis
async def test_a_redis_that_does_not_confirm_a_subscription_counts_as_dropped(make_bus, proxy, topic):
    """Redis keeps the connection open and answers nothing (stalled, or a network that drops
    without a reset): a join fails after ``subscribe_timeout`` instead of holding its request
    forever, the shared connection's subscriptions end, and the next join connects afresh."""
    worker, web = make_bus("redis"), make_bus("redis", proxy.url, subscribe_timeout=0.3)
    async with web.subscribe(topic) as first:
        proxy.delay_up = 2.0  # its SUBSCRIBE would be confirmed after 2 s: long past the timeout
        with pytest.raises(bus_module.BusDisconnected, match="in time"):
            async with web.subscribe(topic + "-2"):
                pass
        assert isinstance(await ends(first), bus_module.BusDisconnected)
    proxy.delay_up = 0.0
    async with web.subscribe(topic) as again:
        await worker.publish(topic, {"n": 1})
        assert await receive(again, 1) == [{"n": 1}]


@pytest.mark.redis
async def test_subscribing_while_redis_is_down_fails_instead_of_hanging(make_bus, proxy, topic):
    web = make_bus("redis", proxy.url)
    proxy.shut()
    with pytest.raises(bus_module.BusDisconnected, match="cannot reach Redis"):
        async with asyncio.timeout(30):  # redis-py retries the connect with backoff first
            async with web.subscribe(topic):
                pass
