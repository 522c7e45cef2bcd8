"""The widget's WebSocket protocol (docs/web-protocol.md) against a real running gateway, with
aiohttp's WebSocket client playing the widget."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import aiohttp
import pytest

import gateway
from adapters.web.testing import base_url, running_gateway
from tests.support import until

FRAME_WAIT = 5.0
_ids = itertools.count()


def frame_id() -> str:
    return f"f{next(_ids)}"


def make_app() -> gateway.App:
    app = gateway.App("widget-bot")

    @app.message()
    async def handle(session: gateway.Session, msg: gateway.Message) -> None:
        text = msg.text
        if text.startswith("stream "):
            words = text.removeprefix("stream ").split()
            delay = 0.03 if len(words) > 10 else 0.01
            async with session.stream_reply() as reply:
                for word in words:
                    reply.write(word + " ")
                    await asyncio.sleep(delay)
            return
        if text == "deploy":
            approved = await session.prompt_approval("Deploy to production?", timeout=5)
            await session.reply("deploying" if approved else "cancelled")
            return
        if text == "suggest":
            await session.show_suggestions(["Yes please", "No"], title="Sure?")
            return
        if text == "upload":
            upload = await session.prompt_file(message="Send a file", timeout=5)
            data = await upload.fetch() if upload.fetch else b""
            await session.reply(f"got {upload.name} {upload.size}: {data.decode()}")
            return
        if msg.attachments:
            contents = [(a.name, (await a.read()).decode()) for a in msg.attachments]
            await session.reply(f"attachments: {contents}")
            return
        if text == "emoji":
            async with session.stream_reply() as reply:
                for part in ("👍🏽 a", "😀 b", " ✓"):
                    reply.write(part)
                    await asyncio.sleep(0.01)
            return
        await session.reply("echo: " + text)

    @app.action("refresh")
    async def refresh(session: gateway.Session, event: gateway.Event) -> None:
        await session.reply(f"refreshed {event.payload.get('what')}")

    return app


@pytest.fixture
async def gw(tmp_path):
    async with running_gateway(make_app(), tmp_path, web={"stream_interval": 0.0}) as gw:
        yield gw


class Widget:
    """A minimal widget: keeps messages the way docs/web-protocol.md tells a client to."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.frames: list[dict[str, Any]] = []
        self.texts: dict[str, str] = {}
        self.order: list[str] = []
        self.session_id: str | None = None
        self.visitor_token: str | None = None

    async def send(self, frame_type: str, **fields: Any) -> str:
        fid = fields.pop("id", None) or frame_id()
        await self.ws.send_json({"type": frame_type, "id": fid, **fields})
        return fid

    async def next(self, timeout: float = FRAME_WAIT) -> dict[str, Any]:
        frame = await self.ws.receive_json(timeout=timeout)
        self.frames.append(frame)
        self._apply(frame)
        return frame

    async def until(self, predicate, timeout: float = FRAME_WAIT) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.next(timeout)
                if predicate(frame):
                    return frame

    async def turn(self, timeout: float = FRAME_WAIT) -> dict[str, Any]:
        return await self.until(lambda f: f["type"] == "turn_end", timeout)

    async def hello(self, session_id: str | None = None, after: str | None = None, **extra: Any) -> dict[str, Any]:
        await self.send("hello", session_id=session_id, after=after, **extra)
        ready = await self.until(lambda f: f["type"] in ("ready", "error"))
        if ready["type"] == "ready":
            self.session_id = ready["session_id"]
            self.visitor_token = ready["visitor_token"] or self.visitor_token
        return ready

    def _apply(self, frame: dict[str, Any]) -> None:
        if frame["type"] == "message":
            message = frame["message"]
            if message["id"] not in self.texts:
                self.order.append(message["id"])
            self.texts[message["id"]] = message["text"]
        elif frame["type"] == "delta":
            have = self.texts[frame["message_id"]]
            have_units = len(have.encode("utf-16-le")) // 2
            assert frame["offset"] <= have_units, "a delta left a gap"
            new_units = frame["offset"] + len(frame["delta"].encode("utf-16-le")) // 2
            if have_units < new_units:
                prefix = have.encode("utf-16-le")[: frame["offset"] * 2].decode("utf-16-le")
                self.texts[frame["message_id"]] = prefix + frame["delta"]
        elif frame["type"] == "done":
            assert self.texts[frame["message_id"]] == frame["text"], "deltas and done disagree"
            self.texts[frame["message_id"]] = frame["text"]


async def open_widget(http: aiohttp.ClientSession, gw, **params: str) -> Widget:
    ws = await http.ws_connect(f"{base_url(gw)}/ws", params=params)
    return Widget(ws)


async def test_hello_creates_a_session_and_a_reply_streams(gw):
    async with aiohttp.ClientSession() as http:
        widget = await open_widget(http, gw)
        ready = await widget.hello()
        # A new visitor is stored on their first message: no user id yet.
        assert ready["session_id"] and ready["visitor_token"] and ready["user"]["id"] is None
        fid = await widget.send("message", text="stream a b c")
        ack = await widget.until(lambda f: f["type"] == "ack")
        assert ack["id"] == fid and ack["inbound_id"] and ack["duplicate"] is False
        end = await widget.turn()
        assert end["error"] is None and end["inbound_id"] == ack["inbound_id"]
        kinds = [f["type"] for f in widget.frames]
        assert "delta" in kinds and "done" in kinds
        done = next(f for f in widget.frames if f["type"] == "done")
        assert done["text"] == "a b c " and done["stopped"] is False
        assert widget.texts[done["message_id"]] == "a b c "


async def test_delta_offsets_count_utf16_units(gw):
    async with aiohttp.ClientSession() as http:
        widget = await open_widget(http, gw)
        await widget.hello()
        await widget.send("message", text="emoji")
        await widget.turn()
        done = next(f for f in widget.frames if f["type"] == "done")
        assert widget.texts[done["message_id"]] == "👍🏽 a😀 b ✓"
        deltas = [f for f in widget.frames if f["type"] == "delta"]
        assert deltas and all(f["offset"] > 0 for f in deltas)


async def test_replay_after_reconnect_has_no_duplicates(gw):
    async with aiohttp.ClientSession() as http:
        widget = await open_widget(http, gw)
        await widget.hello()
        first = await widget.send("message", text="one")
        await widget.turn()
        await widget.send("message", text="two")
        await widget.turn()
        session_id, token = widget.session_id, widget.visitor_token
        await widget.ws.close()

        again = await open_widget(http, gw, visitor=token)
        ready = await again.hello(session_id)
        assert ready["session_id"] == session_id
        messages = [await again.next() for _ in range(4)]
        assert [m["message"]["text"] for m in messages] == ["one", "echo: one", "two", "echo: two"]
        assert [m["message"]["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
        # Re-sending a frame the server already has (a reconnecting client) runs nothing again.
        await again.send("message", id=first, text="one")
        ack = await again.until(lambda f: f["type"] == "ack")
        assert ack["duplicate"] is True
        await again.ws.close()

        # Resuming after the second message replays only what came later.
        third = await open_widget(http, gw, visitor=token)
        await third.hello(session_id, after=messages[1]["message"]["id"])
        later = [await third.next() for _ in range(2)]
        assert [m["message"]["text"] for m in later] == ["two", "echo: two"]
        await third.send("resume", after=messages[2]["message"]["id"])
        last = await third.next()
        assert last["message"]["text"] == "echo: two"
        with pytest.raises(TimeoutError):
            await third.next(timeout=0.3)


async def test_a_socket_joining_mid_stream_gets_the_text_once(gw):
    words = " ".join(f"w{i}" for i in range(30))
    async with aiohttp.ClientSession() as http:
        first = await open_widget(http, gw)
        await first.hello()
        await first.send("message", text=f"stream {words}")
        await first.until(lambda f: f["type"] == "delta")
        second = await open_widget(http, gw, visitor=first.visitor_token)
        await second.hello(first.session_id)
        done = await second.until(lambda f: f["type"] == "done")
        assert second.texts[done["message_id"]] == words + " "
        streaming = [f for f in second.frames if f["type"] == "message" and f["message"]["role"] == "assistant"]
        assert streaming[0]["message"]["status"] == "streaming"
        await first.turn()


async def test_stop_ends_a_streaming_reply(gw):
    words = " ".join(f"w{i}" for i in range(60))
    async with aiohttp.ClientSession() as http:
        widget = await open_widget(http, gw)
        await widget.hello()
        await widget.send("message", text=f"stream {words}")
        await widget.until(lambda f: f["type"] == "delta")
        await widget.send("stop")
        end = await widget.turn()
        assert end["error"] == "stopped"
        done = next(f for f in widget.frames if f["type"] == "done")
        assert done["stopped"] is True and len(done["text"]) < len(words)
        record = await gw.store.messages.get(done["message_id"])
        assert record.status == "stopped" and record.text == done["text"]
        await widget.send("message", text="still there?")
        await widget.until(lambda f: f["type"] == "message" and f["message"]["text"] == "echo: still there?")


async def test_a_suggestion_button_sends_its_prompt(gw):
    async with aiohttp.ClientSession() as http:
        widget = await open_widget(http, gw)
        await widget.hello()
        await widget.send("message", text="suggest")
        block = (await widget.until(lambda f: f["type"] == "block"))["block"]
        assert block["type"] == "suggestions" and block["payload"]["suggestions"][0]["label"] == "Yes please"
        await widget.turn()
        await widget.send("button", block_id=block["id"], value="0")
        reply = await widget.until(lambda f: f["type"] == "message" and f["message"]["role"] == "assistant")
        assert reply["message"]["text"] == "echo: Yes please"


async def test_approval_buttons_answer_a_waiting_prompt(gw):
    async with aiohttp.ClientSession() as http:
        widget = await open_widget(http, gw)
        await widget.hello()
        for value, expected in (("approve", "deploying"), ("reject", "cancelled")):
            await widget.send("message", text="deploy")
            block = (await widget.until(lambda f: f["type"] == "block"))["block"]
            assert block["type"] == "approval_prompt" and block["payload"]["blocking"] is True
            await widget.send("button", block_id=block["id"], value=value)
            reply = await widget.until(lambda f: f["type"] == "message" and f["message"]["role"] == "assistant")
            assert reply["message"]["text"] == expected
            await widget.turn()
            updates = [f["block"] for f in widget.frames if f["type"] == "block" and f["block"]["id"] == block["id"]]
            assert updates[-1]["payload"]["approved"] is (value == "approve")


async def test_an_action_frame_runs_the_action_handler(gw):
    async with aiohttp.ClientSession() as http:
        widget = await open_widget(http, gw)
        await widget.hello()
        await widget.send("action", name="refresh", payload={"what": "prices"})
        reply = await widget.until(lambda f: f["type"] == "message")
        assert reply["message"]["text"] == "refreshed prices"
        assert (await widget.turn())["error"] is None


async def upload(http: aiohttp.ClientSession, gw, widget: Widget, name: str, data: bytes, ctype: str = "text/plain"):
    form = aiohttp.FormData()
    form.add_field("session_id", widget.session_id)
    form.add_field("file", data, filename=name, content_type=ctype)
    params = {"visitor": widget.visitor_token}
    async with http.post(f"{base_url(gw)}/upload", data=form, params=params) as response:
        return response.status, await response.json()


async def test_an_upload_answers_a_file_prompt(gw):
    async with aiohttp.ClientSession() as http:
        widget = await open_widget(http, gw)
        await widget.hello()
        await widget.send("message", text="upload")
        block = (await widget.until(lambda f: f["type"] == "block"))["block"]
        assert block["type"] == "file_upload" and block["payload"]["blocking"] is True
        status, body = await upload(http, gw, widget, "a.txt", b"hello")
        assert status == 201 and body["name"] == "a.txt" and body["size"] == 5
        async with http.get(body["url"]) as response:
            assert response.status == 200 and await response.read() == b"hello"
        await widget.send("upload_done", block_id=block["id"], file_id=body["file_id"])
        reply = await widget.until(lambda f: f["type"] == "message" and f["message"]["role"] == "assistant")
        assert reply["message"]["text"] == "got a.txt 5: hello"
        completed = [f["block"] for f in widget.frames if f["type"] == "block" and f["block"]["id"] == block["id"]]
        assert completed[-1]["payload"]["completed"] is True


async def test_a_message_with_attachments(gw):
    async with aiohttp.ClientSession() as http:
        widget = await open_widget(http, gw)
        await widget.hello()
        _, body = await upload(http, gw, widget, "notes.md", b"# hi", "text/markdown")
        await widget.send("message", text="", attachments=[{"file_id": body["file_id"]}])
        reply = await widget.until(lambda f: f["type"] == "message" and f["message"]["role"] == "assistant")
        assert reply["message"]["text"] == "attachments: [('notes.md', '# hi')]"
        await widget.ws.close()
        # The replayed user message carries a working signed link to the file.
        again = await open_widget(http, gw, visitor=widget.visitor_token)
        await again.hello(widget.session_id)
        user = await again.until(lambda f: f["type"] == "message" and f["message"]["role"] == "user")
        attachment = user["message"]["attachments"][0]
        assert attachment["name"] == "notes.md"
        async with http.get(attachment["url"]) as response:
            assert await response.read() == b"# hi"


async def test_another_tab_sees_the_user_message_and_the_reply(gw):
    async with aiohttp.ClientSession() as http:
        tab1 = await open_widget(http, gw)
        await tab1.hello()
        await tab1.send("message", text="the first message stores the session")
        await tab1.turn()
        tab2 = await open_widget(http, gw, visitor=tab1.visitor_token)
        await tab2.hello(tab1.session_id)
        await tab1.send("message", text="hi from tab 1")
        ack = await tab1.until(lambda f: f["type"] == "ack")
        echoed = await tab2.until(lambda f: f["type"] == "message" and f["message"]["text"] == "hi from tab 1")
        assert echoed["message"]["text"] == "hi from tab 1" and echoed["message"]["inbound_id"] == ack["inbound_id"]
        await tab2.until(lambda f: f["type"] == "message" and f["message"]["text"] == "echo: hi from tab 1")
        await tab1.turn()
        assert not [f for f in tab1.frames if f["type"] == "message" and f["message"]["role"] == "user"]


def socket_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("web-socket-")]


async def test_every_socket_of_a_session_gets_every_event_in_order_and_idles_without_a_task(gw):
    """Live events reach a socket through a task its subscription wakes, which ends once it has
    delivered what was there: many sockets on one session each get a streamed reply whole and in
    order, and once the reply is over no task is left waiting for any of them."""
    async with aiohttp.ClientSession() as http:
        first = await open_widget(http, gw)
        await first.hello()
        await first.send("message", text="the first message stores the session")
        await first.turn()
        tabs = [first] + [await open_widget(http, gw, visitor=first.visitor_token) for _ in range(5)]
        for tab in tabs[1:]:
            assert (await tab.hello(first.session_id))["type"] == "ready"
        words = [f"w{n}" for n in range(40)]
        await first.send("message", text="stream " + " ".join(words))
        expected = "".join(word + " " for word in words)
        for tab in tabs:
            done = await tab.until(lambda f: f["type"] in ("done", "message") and (
                f.get("text") == expected or f.get("message", {}).get("text") == expected))
            message_id = done.get("message_id") or done["message"]["id"]
            assert tab.texts[message_id] == expected  # every delta applied at its offset, none missing
            deltas = [f["delta"] for f in tab.frames if f["type"] == "delta" and f["message_id"] == message_id]
            assert "".join(deltas) == expected[len(expected) - len("".join(deltas)):]
        await first.turn()
        await until(lambda: not socket_tasks(), FRAME_WAIT)
        await first.send("message", text="still live after idling")
        echo = "echo: still live after idling"
        for tab in tabs[1:]:
            await tab.until(lambda f: f["type"] == "message" and f["message"]["text"] == echo)


async def test_idle_sockets_are_pinged_and_a_silent_one_is_dropped(tmp_path, monkeypatch, caplog):
    """One sweeping task pings every idle socket (adapters/web/widget/heartbeat.py): a client
    that answers stays, one that does not is dropped as aiohttp's own heartbeat drops it."""
    from adapters.web.widget import heartbeat

    monkeypatch.setattr(heartbeat, "HEARTBEAT_SECONDS", 0.4)
    monkeypatch.setattr(heartbeat, "PONG_SECONDS", 0.2)
    monkeypatch.setattr(heartbeat, "SWEEP_SECONDS", 0.05)
    caplog.set_level("INFO", logger="chatgate.web.socket")
    async with running_gateway(make_app(), tmp_path) as gw, aiohttp.ClientSession() as http:
        alive = await open_widget(http, gw)  # aiohttp's client answers pings while it reads
        await alive.hello()

        async def read_for_a_while() -> None:  # several ping periods, answering each ping
            with pytest.raises(TimeoutError):  # (receive's own timeout restarts at every ping)
                await asyncio.wait_for(alive.ws.receive(), 2.0)

        reading = asyncio.create_task(read_for_a_while())
        silent = await http.ws_connect(f"{base_url(gw)}/ws", autoping=False)
        await silent.send_json({"type": "hello", "id": frame_id(), "session_id": None})
        assert (await silent.receive_json(timeout=FRAME_WAIT))["type"] == "ready"
        ping = await silent.receive(timeout=FRAME_WAIT)
        assert ping.type == aiohttp.WSMsgType.PING  # after 0.4 s of silence
        dropped = await silent.receive(timeout=FRAME_WAIT)  # it never answers
        assert dropped.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSE) and silent.closed
        await until(lambda: "No PONG received" in caplog.text, FRAME_WAIT)  # the read loop saw ERROR
        await reading
        assert caplog.text.count("No PONG received") == 1
        await alive.send("message", text="still here")
        await alive.until(lambda f: f["type"] == "message" and f["message"]["text"] == "echo: still here")


async def test_a_new_conversation_is_only_on_the_socket_that_said_hello_until_its_first_message(gw):
    async with aiohttp.ClientSession() as http:
        tab1 = await open_widget(http, gw)
        ready = await tab1.hello()
        tab2 = await open_widget(http, gw, visitor=tab1.visitor_token)
        refused = await tab2.hello(ready["session_id"])
        assert refused["type"] == "error" and refused["code"] == "not_found"
        assert await gw.store.sessions.get(ready["session_id"]) is None
        await tab1.send("message", text="now it exists")
        await tab1.turn()
        assert (await tab2.hello(ready["session_id"]))["type"] == "ready"


async def test_config_and_identity_endpoints(gw):
    # unsafe=True: aiohttp's jar otherwise ignores cookies from an IP address such as 127.0.0.1.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.get(f"{base_url(gw)}/api/widget/config") as response:
            config = await response.json()
        assert config["title"] == "chatgate" and config["handlers"] == [{"name": None, "label": "chatgate"}]
        assert config["max_upload_bytes"] > 0
        async with http.get(f"{base_url(gw)}/api/widget/identity") as response:
            first = await response.json()
            assert "chatgate_uid" in response.cookies
        # The cookie jar now holds the visitor cookie: the same user comes back.
        async with http.get(f"{base_url(gw)}/api/widget/identity") as response:
            assert (await response.json())["user"]["id"] == first["user"]["id"]
        widget = await open_widget(http, gw)
        ready = await widget.hello()
        assert ready["user"]["id"] == first["user"]["id"]


async def test_a_server_restart_mid_conversation(tmp_path):
    """The widget reconnects to the new process and resumes: nothing lost, nothing repeated."""
    async with aiohttp.ClientSession() as http:
        async with running_gateway(make_app(), tmp_path) as first_gw:
            widget = await open_widget(http, first_gw)
            await widget.hello()
            await widget.send("message", text="before")
            await widget.turn()
            last_id = widget.order[-1]
            port = first_gw.port
        # The old process said "going away" to the socket as it stopped.
        closing = await widget.ws.receive(timeout=5)
        assert (closing.type, closing.data) == (aiohttp.WSMsgType.CLOSE, aiohttp.WSCloseCode.GOING_AWAY)
        async with running_gateway(make_app(), tmp_path, server={"port": port}) as second_gw:
            again = await open_widget(http, second_gw, visitor=widget.visitor_token)
            await again.hello(widget.session_id, after=last_id)
            await again.send("message", text="after")
            await again.turn()
            texts = [again.texts[m] for m in again.order if again.texts[m]]
            assert texts == ["echo: after"]  # the replay after last_id repeats nothing
            records, _ = await second_gw.store.messages.page(widget.session_id)
            assert [r.text for r in records] == ["before", "echo: before", "after", "echo: after"]


async def test_the_feed_never_repeats_text():
    from datetime import datetime

    from adapters.web.widget.feed import ClientFeed
    from gateway.store.records import MessageRecord

    sent: list[dict[str, Any]] = []

    async def send(frame: dict[str, Any]) -> None:
        sent.append(frame)

    live = {"m1": "Hello wor"}
    feed = ClientFeed(send, connection_id="c1", live_texts=live, sign_file=lambda f, s: f"signed:{f}")
    record = MessageRecord(
        "m1", "s1", "assistant", "", None, [], "in1", "streaming", [], datetime(2026, 1, 1), datetime(2026, 1, 1)
    )
    await feed.replay(record)  # joins mid-stream: starts from the live text, not the stored ""
    await feed.deliver({"type": "stream", "message_id": "m1", "text": "Hello wor", "turn": "in1"})  # already has it
    await feed.deliver({"type": "stream", "message_id": "m1", "text": "Hello world 😀", "turn": "in1"})
    await feed.deliver({"type": "done", "message_id": "m1", "text": "Hello world 😀!", "stopped": False})
    await feed.deliver({"type": "done", "message_id": "m1", "text": "Hello world 😀!", "stopped": False})
    await feed.deliver({"type": "message", "message": {"id": "u2", "text": "mine"}, "origin": "c1"})
    await feed.deliver({"type": "stream", "message_id": "m2", "text": "new", "turn": "in2"})
    assert [f["type"] for f in sent] == ["message", "delta", "done", "message"]
    assert sent[0]["message"]["text"] == "Hello wor"
    assert sent[1] == {"type": "delta", "message_id": "m1", "offset": 9, "delta": "ld 😀"}
    assert sent[3]["message"] | {"created_at": None} == {
        "id": "m2",
        "role": "assistant",
        "text": "new",
        "status": "streaming",
        "attachments": [],
        "inbound_id": "in2",
        "created_at": None,
    }


@pytest.mark.parametrize("enabled", [False, True], ids=["default", "socket_compression"])
async def test_a_browsers_offer_of_compression_is_declined_unless_turned_on(tmp_path, enabled: bool) -> None:
    """Every browser offers permessage-deflate. Accepted, it keeps zlib's state for the socket's
    life: about 110 KiB an idle socket (bench/web_echo.py's idle line). So it is declined unless
    ``web.socket_compression`` is on, and then frames go compressed both ways."""
    settings = {"stream_interval": 0.0, "socket_compression": enabled}
    async with running_gateway(make_app(), tmp_path, web=settings) as gw, aiohttp.ClientSession() as http:
        ws = await http.ws_connect(f"{base_url(gw)}/ws", compress=15)  # the offer Chromium makes
        assert ws.compress == (15 if enabled else 0)
        widget = Widget(ws)
        assert (await widget.hello())["type"] == "ready"
        long_text = "chat " * 4000  # 20 KB: compressed to a few hundred bytes when on
        await widget.send("message", text=long_text)
        await widget.turn()
        assert widget.texts[widget.order[-1]] == "echo: " + long_text
        await ws.close()
