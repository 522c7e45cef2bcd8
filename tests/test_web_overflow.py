"""A burst of more than ``SUBSCRIBER_BUFFER`` frames (issue 13 item 3): a reader the bus cuts off
is told so and catches up from the store instead of going silent.

The widget socket is closed with 4408 and a reconnect resumes from the store; an SSE stream
finishes from the store; the log says it once. A REST turn reads its frames as they are
published, so it is never cut off; when Redis drops its subscription, it answers from the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

import gateway
from adapters.web.testing import base_url, running_gateway
from gateway.bus import SUBSCRIBER_BUFFER, LocalBus, SubscriberOverflow
from gateway.redis_bus import RedisBus
from tests.support import until

KEY = "overflow-key"
CLOSE_FELL_BEHIND = 4408  # docs/web-protocol.md
CLOSE_TRY_AGAIN = 1013
OVERFLOW_LOG = "frames behind and was cut off"


def make_app() -> gateway.App:
    app = gateway.App("burst-bot")

    @app.message()
    async def handle(session: gateway.Session, msg: gateway.Message) -> None:
        if msg.text.startswith("burst "):
            count, size = (int(part) for part in msg.text.split()[1:3])
            pad = "x" * size
            for index in range(count):  # status lines: frames that are never stored
                await session.notify(f"step {index}", detail=pad)
            await session.reply("after the burst")
            return
        await session.reply("echo: " + msg.text)

    return app


@pytest.fixture(params=["local", pytest.param("redis", marks=pytest.mark.redis)])
async def gw(request, tmp_path):
    overrides: dict[str, Any] = {"web": {"api_keys": [KEY]}}
    if request.param == "redis":
        overrides["redis"] = {"url": request.getfixturevalue("redis_url")}
    async with running_gateway(make_app(), tmp_path, **overrides) as running:
        yield running


@pytest.fixture
async def local_gw(tmp_path):
    async with running_gateway(make_app(), tmp_path, web={"api_keys": [KEY]}) as running:
        yield running


@pytest.mark.parametrize("kind", ["local", pytest.param("redis", marks=pytest.mark.redis)])
async def test_a_subscriber_that_falls_behind_is_told_once(kind, request, caplog):
    """The bus itself: frames past the buffer end the subscription with SubscriberOverflow (not
    silently), the frames already queued are freed, and the warning is logged once."""
    bus: Any = RedisBus(request.getfixturevalue("redis_url"), key_prefix="chatgate") if kind == "redis" else LocalBus()
    try:
        async with bus.subscribe("overflow-topic") as events:
            for index in range(SUBSCRIBER_BUFFER + 500):
                await bus.publish("overflow-topic", {"type": "notify", "text": str(index)})
            await until(lambda: events.overflowed, timeout=30)  # over Redis, frames arrive a bit later
            with pytest.raises(SubscriberOverflow):
                async for _event in events:
                    pass
            assert events.pending() <= 1
    finally:
        await bus.close()
    assert len(overflow_lines(caplog)) == 1


def overflow_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "chatgate.bus" and OVERFLOW_LOG in r.getMessage()]


async def receive_until(ws: aiohttp.ClientWebSocketResponse, predicate: Any, timeout: float = 10.0) -> Any:
    async with asyncio.timeout(timeout):
        while True:
            raw = await ws.receive()
            if raw.type != aiohttp.WSMsgType.TEXT:
                return raw
            frame = raw.json()
            if predicate(frame):
                return frame


async def test_a_socket_that_falls_behind_is_closed_with_4408_and_resumes_from_the_store(gw, caplog):
    caplog.set_level(logging.INFO)
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(f"{base_url(gw)}/ws", max_msg_size=0)
        await ws.send_json({"type": "hello", "id": "h1", "session_id": None, "after": None})
        ready = await receive_until(ws, lambda f: f["type"] == "ready")
        session_id, visitor = ready["session_id"], ready["visitor_token"]
        # Frames big enough that an unread socket stops the server's sends (the client does not
        # read until the burst is over) and more of them than the bus keeps for one subscriber.
        count = SUBSCRIBER_BUFFER + 6_000
        await ws.send_json({"type": "message", "id": "m1", "text": f"burst {count} 2000"})

        async def reply_stored() -> str | None:
            records, _ = await gw.store.messages.page(session_id, limit=10)
            return next((r.id for r in records if r.text == "after the burst"), None)

        await until(reply_stored, timeout=60)
        assert len(overflow_lines(caplog)) == 1, "one log line per overflow, not one per dropped frame"

        closed = await receive_until(ws, lambda f: False, timeout=30)
        assert closed.type == aiohttp.WSMsgType.CLOSE, (closed, ws.exception())
        assert closed.data == CLOSE_FELL_BEHIND  # the code in the server's close frame

        # The widget's answer to 4408: reconnect and resume; the replay has the reply it missed.
        records, _ = await gw.store.messages.page(session_id, limit=10)
        user_message = next(r for r in records if r.role == "user")
        again = await http.ws_connect(f"{base_url(gw)}/ws", params={"visitor": visitor})
        await again.send_json({"type": "hello", "id": "h2", "session_id": session_id, "after": user_message.id})
        replayed = await receive_until(again, lambda f: f["type"] == "message")
        assert replayed["message"]["text"] == "after the burst"
        # ...and it is live again.
        await again.send_json({"type": "message", "id": "m2", "text": "still there?"})
        live = await receive_until(again, lambda f: f["type"] == "message" and f["message"]["role"] == "assistant")
        assert live["message"]["text"] == "echo: still there?"
        await again.close()
    assert len(overflow_lines(caplog)) == 1


async def test_rest_send_message_takes_a_burst_as_it_comes(local_gw, caplog):
    """The REST turn's watch reads each frame when the bus publishes it (``Subscription.listen``),
    so a burst past the buffer never cuts it off: the answer comes from the frames it saw."""
    async with aiohttp.ClientSession(headers={"X-API-Key": KEY}) as http:
        url = f"{base_url(local_gw)}/api/v1/chat/sessions"
        async with http.post(url, json={"agent_id": "default"}) as response:
            session = (await response.json())["data"]
        async with http.post(f"{url}/{session['id']}/messages",
                             json={"content": f"burst {SUBSCRIBER_BUFFER + 10} 10"}) as response:
            assert response.status == 201, await response.text()
            body = (await response.json())["data"]
        assert body["assistant_message"]["content"] == "after the burst"
        assert body["content"] == "after the burst"
    assert overflow_lines(caplog) == []


@pytest.mark.redis
@contextlib.asynccontextmanager
async def behind_a_redis_proxy(app: gateway.App, tmp_path: Any) -> AsyncIterator[tuple[Any, Any, Any, str]]:
    """The gateway with its Redis reached through a proxy a test can cut or shut
    (``tests/test_bus.py``), a REST client, and the URL of a session made for the test."""
    from tests.test_bus import REDIS_HOST, REDIS_PORT, TcpProxy

    proxy = TcpProxy(REDIS_HOST, REDIS_PORT)
    await proxy.start()
    try:
        async with running_gateway(app, tmp_path, web={"api_keys": [KEY]}, redis={"url": proxy.url}) as gw, \
                aiohttp.ClientSession(headers={"X-API-Key": KEY}) as http:
            sessions = f"{base_url(gw)}/api/v1/chat/sessions"
            async with http.post(sessions, json={"agent_id": "default"}) as response:
                session_id = (await response.json())["data"]["id"]
            yield gw, http, proxy, f"{sessions}/{session_id}"
    finally:
        await proxy.close()


def app_held_mid_turn(name: str) -> tuple[gateway.App, asyncio.Event, asyncio.Event]:
    """An echo app whose handler sets ``started`` and replies once ``release`` is set: a test
    does something to the bus in between."""
    started, release = asyncio.Event(), asyncio.Event()
    app = gateway.App(name)

    @app.message()
    async def slow(session: gateway.Session, msg: gateway.Message) -> None:
        started.set()
        await release.wait()
        await session.reply("echo: " + msg.text)

    return app, started, release


async def test_rest_send_message_answers_from_the_store_when_the_bus_drops(tmp_path, redis_url):
    """Redis drops the turn's subscription mid-turn (a restart, the network): events published
    meanwhile are gone, so the POST learns the turn's end from the store, with its reply."""
    app, started, release = app_held_mid_turn("dropping-bot")
    async with behind_a_redis_proxy(app, tmp_path) as (_, http, proxy, session_url):
        posted = asyncio.create_task(http.post(f"{session_url}/messages", json={"content": "hello"}))
        await asyncio.wait_for(started.wait(), 10)
        proxy.cut()
        release.set()
        async with await posted as response:
            assert response.status == 201, await response.text()
            body = (await response.json())["data"]
    assert body["assistant_message"]["content"] == "echo: hello"


async def test_an_sse_stream_finishes_from_the_store_when_the_bus_drops(tmp_path, redis_url):
    """As for the POST: the stream's subscription ends with BusDisconnected mid-turn, and the
    stream ends with the reply read from the store, not a server error after its head."""
    app, started, release = app_held_mid_turn("dropping-stream-bot")
    async with behind_a_redis_proxy(app, tmp_path) as (_, http, proxy, session_url):
        async with http.post(f"{session_url}/messages/stream", json={"content": "hello"}) as response:
            assert response.status == 200
            await asyncio.wait_for(started.wait(), 10)
            proxy.cut()
            release.set()
            text = (await response.read()).decode()
    events = [block.split("\n")[0] for block in text.strip().split("\n\n") if not block.startswith(":")]
    assert events[0] == "event: execution" and events[-1] == "event: done", text
    assert '"content":"echo: hello"' in text.split("event: done")[-1]


async def test_a_widget_socket_told_its_live_updates_stopped_when_the_bus_drops_resumes(tmp_path, redis_url, caplog):
    """Redis drops the socket's subscription: the socket says so (``internal``, "send resume",
    which the widget answers with ``resume``), logged as a warning, not a crash; after the resume
    the socket follows its session again."""
    app = gateway.App("dropping-socket-bot")

    @app.message()
    async def echo(session: gateway.Session, msg: gateway.Message) -> None:
        await session.reply("echo: " + msg.text)

    async def reply_to(ws: Any, text: str) -> None:
        await ws.send_json({"type": "message", "id": f"m{len(text)}", "text": text})
        while (frame := await ws.receive_json(timeout=20))["type"] != "message" or \
                frame["message"]["text"] != f"echo: {text}":
            pass

    async with behind_a_redis_proxy(app, tmp_path) as (gw, http, proxy, _):
        async with http.ws_connect(f"{base_url(gw)}/ws") as ws:
            await ws.send_json({"type": "hello", "id": "h1", "session_id": None})
            assert (await ws.receive_json(timeout=20))["type"] == "ready"
            await reply_to(ws, "first")
            proxy.cut()
            while (frame := await ws.receive_json(timeout=20))["type"] != "error":
                pass
            assert frame["code"] == "internal" and "send resume" in frame["message"]
            await ws.send_json({"type": "resume", "id": "r1"})
            await reply_to(ws, "after the drop")
    stopped = [r for r in caplog.records if "live updates of session" in r.getMessage()]
    assert stopped and all(r.levelno == logging.WARNING and r.exc_info is None for r in stopped)


async def test_while_redis_is_down_sockets_close_with_1013_and_rest_answers_503(tmp_path, redis_url, caplog):
    """Redis is unreachable: a widget's hello cannot follow its session, so the socket is closed
    with 1013 (try again later: the widget reconnects with backoff) instead of never answering,
    and REST answers 503 ``unavailable`` with Retry-After (the SDK retries a 5xx) rather than a
    500 with a traceback. Nothing is submitted meanwhile; once Redis is back both work again."""
    app = gateway.App("bus-down-bot")

    @app.message()
    async def echo(session: gateway.Session, msg: gateway.Message) -> None:
        await session.reply("echo: " + msg.text)

    async with behind_a_redis_proxy(app, tmp_path) as (gw, http, proxy, session_url):
        proxy.shut()
        for path in ("messages", "messages/stream"):
            async with http.post(f"{session_url}/{path}", json={"content": "hello"}) as response:
                assert response.status == 503, await response.text()
                assert (await response.json())["error"]["code"] == "unavailable"
                assert response.headers["Retry-After"] == "1"
        async with http.ws_connect(f"{base_url(gw)}/ws") as ws:
            await ws.send_json({"type": "hello", "id": "h1", "session_id": None})
            closed = await ws.receive(timeout=20)
            assert closed.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), closed
            assert ws.close_code == CLOSE_TRY_AGAIN
        assert any("cannot follow session" in r.getMessage() for r in caplog.records)
        async with http.get(f"{base_url(gw)}/healthz") as response:
            assert response.status == 200
        await proxy.start()  # Redis is back, on the same port
        async with http.ws_connect(f"{base_url(gw)}/ws") as ws:
            await ws.send_json({"type": "hello", "id": "h2", "session_id": None})
            assert (await ws.receive_json(timeout=20))["type"] == "ready"
            await ws.send_json({"type": "message", "id": "m1", "text": "hi"})
            while (frame := await ws.receive_json(timeout=20))["type"] != "message" or \
                    frame["message"]["role"] != "assistant":
                pass
            assert frame["message"]["text"] == "echo: hi"
        async with http.post(f"{session_url}/messages", json={"content": "again"}) as response:
            assert response.status == 201, await response.text()
            assert (await response.json())["data"]["content"] == "echo: again"
        async with http.get(f"{session_url}/messages") as response:
            stored = [m["content"] for m in (await response.json())["data"]]
        assert "hello" not in stored and stored[-2:] == ["again", "echo: again"]


async def test_an_sse_stream_finishes_from_the_store_after_an_overflow(local_gw, caplog):
    async with aiohttp.ClientSession(headers={"X-API-Key": KEY}) as http:
        url = f"{base_url(local_gw)}/api/v1/chat/sessions"
        async with http.post(url, json={"agent_id": "default"}) as response:
            session = (await response.json())["data"]
        async with http.post(f"{url}/{session['id']}/messages/stream",
                             json={"content": f"burst {SUBSCRIBER_BUFFER + 10} 10"}) as response:
            assert response.status == 200
            text = (await response.read()).decode()
    events = [block.split("\n")[0] for block in text.strip().split("\n\n") if not block.startswith(":")]
    assert events[0] == "event: execution" and events[-1] == "event: done", text[-500:]
    assert '"content":"after the burst"' in text.split("event: done")[-1]
    assert len(overflow_lines(caplog)) == 1


@pytest.mark.browser
@pytest.mark.timeout(90)
async def test_the_widget_reconnects_after_4408_and_shows_the_reply_it_missed(local_gw, chromium_path):
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium_path, args=["--no-sandbox"])
        try:
            page = await browser.new_page()
            sockets: list[Any] = []
            page.on("websocket", lambda socket: sockets.append(socket))
            await page.goto(base_url(local_gw) + "/")
            await page.wait_for_function("() => window.chatgate && window.chatgate.client.ready")
            await page.fill(".cg-input", f"burst {SUBSCRIBER_BUFFER + 100} 10")
            await page.press(".cg-input", "Enter")
            await page.wait_for_function(
                """() => Array.from(document.querySelectorAll('.cg-row[data-role=assistant] .cg-md'))
                      .some(node => node.innerText.trim() === 'after the burst')""",
                timeout=30_000,
            )
            assert len(sockets) >= 2  # it was cut off and came back
            await page.fill(".cg-input", "and now?")
            await page.press(".cg-input", "Enter")
            await page.wait_for_function(
                """() => Array.from(document.querySelectorAll('.cg-row[data-role=assistant] .cg-md'))
                      .some(node => node.innerText.trim() === 'echo: and now?')""",
                timeout=15_000,
            )
            rows = await page.evaluate(
                """() => Array.from(document.querySelectorAll('.cg-log > .cg-row[data-role]'))
                      .map(row => row.dataset.role + ': ' + row.innerText.trim().split('\\n')[0])"""
            )
            assert rows == [  # resumed: nothing missing, nothing repeated
                f"user: burst {SUBSCRIBER_BUFFER + 100} 10", "assistant: after the burst",
                "user: and now?", "assistant: echo: and now?",
            ]
        finally:
            await browser.close()
