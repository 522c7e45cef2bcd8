"""Bad input on every surface of the web channel: each gets a clear error in its protocol's own
shape, nothing is lost, and the gateway goes on serving."""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import quote

import aiohttp
import pytest
from promptrails import AsyncPromptRails

import gateway
from adapters.web.testing import base_url, running_gateway
from adapters.web.widget.socket import MAX_ATTACHMENTS

KEY = "bad-input-key"
MAX_FRAME = 2048
MAX_UPLOAD = 4096


def make_app() -> gateway.App:
    app = gateway.App("sturdy")

    @app.message()
    async def handle(session: gateway.Session, msg: gateway.Message) -> None:
        if msg.text.startswith("stream "):
            async with session.stream_reply() as reply:
                for word in msg.text.removeprefix("stream ").split():
                    reply.write(word + " ")
                    await asyncio.sleep(0.02)
            return
        await session.reply("echo: " + msg.text)

    return app


@pytest.fixture
async def gw(tmp_path):
    settings = {
        "web": {"api_keys": [KEY], "max_frame_bytes": MAX_FRAME},
        "files": {"max_upload_bytes": MAX_UPLOAD, "accepted_types": ["text/*", "image/png"]},
        "server": {"max_request_bytes": 4096},
    }
    async with running_gateway(make_app(), tmp_path, **settings) as gw:
        yield gw


async def still_serving(http: aiohttp.ClientSession, gw) -> None:
    async with http.get(f"{base_url(gw)}/healthz") as response:
        assert response.status == 200


async def expect_error(ws: aiohttp.ClientWebSocketResponse, code: str) -> dict:
    frame = await ws.receive_json(timeout=5)
    assert frame["type"] == "error" and frame["code"] == code, frame
    assert frame["message"]
    return frame


async def hello(ws: aiohttp.ClientWebSocketResponse, session_id: str | None = None) -> dict:
    await ws.send_json({"type": "hello", "id": "hello", "session_id": session_id})
    return await ws.receive_json(timeout=5)


async def test_malformed_frames_get_error_frames_and_the_socket_stays_usable(gw):
    async with aiohttp.ClientSession() as http, http.ws_connect(f"{base_url(gw)}/ws") as ws:
        await ws.send_json({"type": "message", "id": "early", "text": "hi"})
        assert (await expect_error(ws, "not_ready"))["id"] == "early"
        await ws.send_str("{not json")
        await expect_error(ws, "bad_frame")
        await ws.send_str("[1, 2]")
        await expect_error(ws, "bad_frame")
        await ws.send_json({"type": "message", "text": "no id"})
        await expect_error(ws, "bad_frame")
        await ws.send_json({"type": "message", "id": "a b/c", "text": "bad id"})
        await expect_error(ws, "bad_frame")
        await ws.send_bytes(b"\x00\x01")
        await expect_error(ws, "bad_frame")
        ready = await hello(ws)
        assert ready["type"] == "ready"
        for frame in (
            {"type": "teleport", "id": "t1"},
            {"type": "message", "id": "t2", "text": 42},
            {"type": "message", "id": "t3", "text": "  "},
            {"type": "message", "id": "t4", "text": "x", "attachments": "nope"},
            {"type": "button", "id": "t5", "value": "0"},
            {"type": "action", "id": "t6", "name": "x", "payload": [1]},
            {"type": "upload_done", "id": "t7", "block_id": "b"},
            {"type": "hello", "id": "t8", "session_id": None, "after": 5},
        ):
            await ws.send_json(frame)
            assert (await expect_error(ws, "bad_frame"))["id"] == frame["id"]
        await ws.send_json({"type": "message", "id": "ok", "text": "still here"})
        frames = []
        while not frames or frames[-1]["type"] != "turn_end":
            frames.append(await ws.receive_json(timeout=5))
        assert [f["message"]["text"] for f in frames if f["type"] == "message"] == ["echo: still here"]
        await still_serving(http, gw)


async def test_unknown_sessions_handlers_and_files_are_not_found(gw):
    async with aiohttp.ClientSession() as http, http.ws_connect(f"{base_url(gw)}/ws") as ws:
        await ws.send_json({"type": "hello", "id": "h1", "session_id": "01NOSUCHSESSION00000000000"})
        await expect_error(ws, "not_found")
        await ws.send_json({"type": "hello", "id": "h2", "session_id": None, "handler": "nobody"})
        await expect_error(ws, "not_found")
        assert (await hello(ws))["type"] == "ready"
        await ws.send_json({"type": "message", "id": "m", "text": "x", "attachments": [{"file_id": "01NOFILE"}]})
        await expect_error(ws, "not_found")
        await ws.send_json({"type": "upload_done", "id": "u", "block_id": "b", "file_id": "01NOFILE"})
        await expect_error(ws, "not_found")


async def test_oversized_frames(gw):
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(f"{base_url(gw)}/ws") as ws:
            await hello(ws)
            await ws.send_json({"type": "message", "id": "big", "text": "x" * (MAX_FRAME + 10)})
            await expect_error(ws, "too_large")
            many = [{"file_id": f"01NOFILE{i:02d}"} for i in range(MAX_ATTACHMENTS + 1)]
            await ws.send_json({"type": "message", "id": "many", "text": "x", "attachments": many})
            assert "at most" in (await expect_error(ws, "too_large"))["message"]  # before any lookup
            await ws.send_json({"type": "message", "id": "small", "text": "fine"})
            assert (await ws.receive_json(timeout=5))["type"] == "ack"
        # Far over the limit, the server closes the socket (1009) rather than read it.
        async with http.ws_connect(f"{base_url(gw)}/ws") as ws:
            await hello(ws)
            await ws.send_str("x" * (MAX_FRAME * 5))
            closing = await ws.receive(timeout=5)
            assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)
            assert ws.close_code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
        await still_serving(http, gw)


async def test_a_socket_that_disconnects_mid_stream_loses_nothing(gw):
    words = " ".join(f"w{i}" for i in range(15))
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(f"{base_url(gw)}/ws")
        ready = await hello(ws)
        await ws.send_json({"type": "message", "id": "s", "text": f"stream {words}"})
        while (await ws.receive_json(timeout=5))["type"] != "delta":
            pass
        await ws.close()
        await gw.dispatcher.wait_idle(10)
        async with http.ws_connect(f"{base_url(gw)}/ws", params={"visitor": ready["visitor_token"]}) as again:
            await hello(again, ready["session_id"])
            replayed = [await again.receive_json(timeout=5) for _ in range(2)]
            assert [f["message"]["text"] for f in replayed] == [f"stream {words}", words + " "]
            assert replayed[1]["message"]["status"] == "complete"


async def test_an_sse_client_that_disconnects_mid_stream_loses_nothing(gw):
    sdk = AsyncPromptRails(KEY, base_url=base_url(gw), max_retries=0)
    session = await sdk.chat.create_session(agent_id="default")
    words = " ".join(f"w{i}" for i in range(15))
    async for event in sdk.chat.send_message_stream(session.id, content=f"stream {words}"):
        if event.type == "content":
            break  # the SDK closes the connection
    await gw.dispatcher.wait_idle(10)
    listed = await sdk.chat.list_messages(session.id)
    assert [m.content for m in listed.data] == [f"stream {words}", words + " "]
    assert (await sdk.chat.send_message(session.id, content="next")).content == "echo: next"


async def upload(http, gw, *, params=None, data=None, headers=None):
    async with http.post(f"{base_url(gw)}/upload", params=params, data=data, headers=headers) as response:
        return response.status, await response.json()


def form(session_id: str | None, data: bytes = b"hi", ctype: str = "text/plain") -> aiohttp.FormData:
    body = aiohttp.FormData()
    if session_id is not None:
        body.add_field("session_id", session_id)
    body.add_field("file", data, filename="f.txt", content_type=ctype)
    return body


def cut_short(session_id: str) -> bytes:
    """A multipart body whose file part never ends (no closing boundary)."""
    return (
        f'--zzz\r\nContent-Disposition: form-data; name="session_id"\r\n\r\n{session_id}\r\n'
        '--zzz\r\nContent-Disposition: form-data; name="file"; filename="cut.txt"\r\n'
        "Content-Type: text/plain\r\n\r\ncut"
    ).encode()


async def stored_files(gw) -> list[str]:
    root = Path(gw.files.root)
    return await asyncio.to_thread(lambda: sorted(p.name for p in root.iterdir()) if root.exists() else [])


async def test_bad_uploads(gw):
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(f"{base_url(gw)}/ws") as ws:
            ready = await hello(ws)
        me = {"visitor": ready["visitor_token"]}
        sid = ready["session_id"]
        status, body = await upload(http, gw, data=form(sid))
        assert (status, body["error"]["code"]) == (401, "unauthorized")
        status, body = await upload(http, gw, params={"visitor": "anon-1.bad"}, data=form(sid))
        assert (status, body["error"]["code"]) == (401, "unauthorized")
        status, body = await upload(http, gw, params=me, data=b"plain", headers={"Content-Type": "text/plain"})
        assert (status, body["error"]["code"]) == (400, "bad_request")
        status, body = await upload(http, gw, params=me, data=form(None))
        assert (status, body["error"]["code"]) == (400, "bad_request")
        status, body = await upload(http, gw, params=me, data=form("01NOSUCHSESSION"))
        assert (status, body["error"]["code"]) == (404, "not_found")
        status, body = await upload(http, gw, params=me, data=form(sid, ctype="application/x-msdownload"))
        assert (status, body["error"]["code"]) == (415, "unsupported_type")
        status, body = await upload(http, gw, params=me, data=form(sid, data=b"x" * (MAX_UPLOAD + 1)))
        assert (status, body["error"]["code"]) == (413, "too_large")
        status, body = await upload(http, gw, params=me, data=form(sid, data=b"x" * (MAX_UPLOAD * 20)))
        assert (status, body["error"]["code"]) == (413, "too_large")
        # An identity token while web.identity_secret is unset is refused like a forged one.
        status, body = await upload(http, gw, params={"token": "a.b.c"}, data=form(sid))
        assert (status, body["error"]["code"]) == (401, "unauthorized")
        for content_type, raw in (
            ("multipart/form-data", b"no boundary"),
            ("multipart/form-data; boundary=zzz", b"no such boundary in here"),
            ("multipart/form-data; boundary=zzz", cut_short(sid)),
        ):
            status, body = await upload(http, gw, params=me, data=raw, headers={"Content-Type": content_type})
            assert (status, body["error"]["code"]) == (400, "bad_request"), (raw, body)
        assert await stored_files(gw) == []  # none of the refused uploads was kept
        status, body = await upload(http, gw, params=me, data=form(sid, data=b"ok"))
        assert status == 201 and body["size"] == 2
        await still_serving(http, gw)


async def test_a_client_that_disconnects_mid_upload_leaves_nothing_behind(gw):
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(f"{base_url(gw)}/ws") as ws:
            ready = await hello(ws)
        head = (
            f"POST /upload?visitor={ready['visitor_token']} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Content-Type: multipart/form-data; boundary=zzz\r\nContent-Length: 3000\r\n\r\n"
        )
        part = (
            f'--zzz\r\nContent-Disposition: form-data; name="session_id"\r\n\r\n{ready["session_id"]}\r\n'
            '--zzz\r\nContent-Disposition: form-data; name="file"; filename="half.txt"\r\n'
            "Content-Type: text/plain\r\n\r\n" + "x" * 1000
        )
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writer.write(head.encode() + part.encode())
        await writer.drain()
        writer.close()  # 3000 bytes promised, about 1200 sent
        await writer.wait_closed()
        assert await reader.read() == b""  # no answer to a request that never ended
        await still_serving(http, gw)
        status, body = await upload(
            http, gw, params={"visitor": ready["visitor_token"]}, data=form(ready["session_id"])
        )
        assert status == 201
        assert await stored_files(gw) == [body["file_id"]]


async def test_files_of_another_session_are_not_found_on_the_socket(gw):
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(f"{base_url(gw)}/ws") as ws:
            owner = await hello(ws)
        _, uploaded = await upload(http, gw, params={"visitor": owner["visitor_token"]}, data=form(owner["session_id"]))
        file_id = uploaded["file_id"]
        # Neither a stranger nor the owner in another of their sessions can use the file.
        for params in ({}, {"visitor": owner["visitor_token"]}):
            async with http.ws_connect(f"{base_url(gw)}/ws", params=params) as ws:
                other = await hello(ws)
                assert other["session_id"] != owner["session_id"]
                await ws.send_json(
                    {"type": "message", "id": "m", "text": "mine?", "attachments": [{"file_id": file_id}]}
                )
                assert (await expect_error(ws, "not_found"))["id"] == "m"
                await ws.send_json({"type": "upload_done", "id": "u", "block_id": "b", "file_id": file_id})
                assert (await expect_error(ws, "not_found"))["id"] == "u"
                stored, _ = await gw.store.messages.page(other["session_id"], offset=0, limit=10)
                assert stored == []


async def rest(http, gw, method: str, path: str, **kwargs):
    headers = {"X-API-Key": KEY, **kwargs.pop("headers", {})}
    async with http.request(method, f"{base_url(gw)}/api/v1{path}", headers=headers, **kwargs) as response:
        return response.status, response.headers, await response.json()


async def test_bad_rest_requests_get_json_errors(gw):
    async with aiohttp.ClientSession() as http:
        status, _, body = await rest(http, gw, "POST", "/chat/sessions", data=b"{broken", allow_redirects=False)
        assert (status, body["error"]["code"]) == (400, "bad_request")
        status, _, body = await rest(http, gw, "POST", "/chat/sessions", json=[1, 2])
        assert status == 400
        status, _, body = await rest(http, gw, "POST", "/chat/sessions", json={"agent_id": "default", "metadata": 3})
        assert status == 400
        status, _, body = await rest(http, gw, "POST", "/chat/sessions", json={"agent_id": "x" * 5000})
        assert (status, body["error"]["code"]) == (400, "too_large")
        status, _, body = await rest(http, gw, "GET", "/chat/sessions/", allow_redirects=False)
        assert (status, body["error"]["code"]) == (404, "not_found")
        status, _, body = await rest(http, gw, "GET", "/nothing/here")
        assert (status, body["error"]["code"]) == (404, "not_found")
        status, headers, body = await rest(http, gw, "PUT", "/chat/sessions")
        assert status == 405 and "GET" in headers["Allow"] and body["error"]["code"] == "method_not_allowed"
        status, _, body = await rest(http, gw, "GET", "/chat/sessions", params={"page": "abc"})
        assert status == 400
        status, _, body = await rest(http, gw, "GET", "/chat/sessions/bad%20id")
        assert status == 404
        # GET with the SDK's Content-Type and no body is fine; odd page sizes are clamped.
        status, _, body = await rest(
            http,
            gw,
            "GET",
            "/chat/sessions",
            params={"limit": "1000", "page": "0"},
            headers={"Content-Type": "application/json"},
        )
        assert status == 200 and body["meta"]["limit"] == 20 and body["meta"]["page"] == 1
        status, _, body = await rest(http, gw, "GET", "/chat/sessions", headers={"X-API-Key": ""})
        assert (status, body["error"]["code"]) == (401, "unauthorized")
        status, _, created = await rest(http, gw, "POST", "/chat/sessions", json={"agent_id": "default"})
        sid = created["data"]["id"]
        status, _, body = await rest(http, gw, "POST", f"/chat/sessions/{sid}/messages", json={"content": 5})
        assert status == 400
        async with http.post(
            f"{base_url(gw)}/api/v1/chat/sessions/01NOSUCH/messages/stream",
            json={"content": "hi"},
            headers={"X-API-Key": KEY},
        ) as response:
            assert response.status == 404 and (await response.json())["error"]["code"] == "not_found"
        await still_serving(http, gw)


# Valid to Python's json.loads, but not JSON (NaN), not Unicode (a lone surrogate: the store cannot
# encode it), not storable (NUL: PostgreSQL refuses it) or nested past the parser's recursion
# limit: each used to escape as a 500, which the SDK retries three times.
UNPARSABLE_BODIES = {
    "a lone surrogate": b'{"content": "\\ud800 alone"}',
    "a lone low surrogate": b'{"content": "x\\udfff"}',
    "NaN": b'{"content": "hi", "n": NaN}',
    "Infinity": b'{"content": "hi", "n": -Infinity}',
    "deep nesting": b'{"content": "hi", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "encoded surrogate bytes": b'{"content": "\xed\xa0\x80"}',
    "not UTF-8": b'{"content": "\xff\xfe"}',
    "NUL": b'{"content": "a\\u0000b"}',
}


@pytest.mark.parametrize("what", UNPARSABLE_BODIES)
async def test_bodies_python_would_parse_but_the_gateway_cannot_keep_are_400s(tmp_path, what):
    raw = UNPARSABLE_BODIES[what]
    settings = {"web": {"api_keys": [KEY]}, "server": {"max_request_bytes": 1_000_000}}
    async with running_gateway(make_app(), tmp_path, **settings) as gw, aiohttp.ClientSession() as http:
        json_type = {"Content-Type": "application/json"}
        _, _, created = await rest(http, gw, "POST", "/chat/sessions", json={"agent_id": "default"})
        sid = created["data"]["id"]
        title = raw.replace(b'"content"', b'"agent_id": "default", "title"')
        for path, body in (
            (f"/chat/sessions/{sid}/messages", raw),
            (f"/chat/sessions/{sid}/messages/stream", raw),
            ("/chat/sessions", title),
        ):
            status, _, answer = await rest(http, gw, "POST", path, data=body, headers=json_type)
            assert (status, answer["error"]["code"]) == (400, "bad_request"), (path, answer)
            assert "not valid JSON" in answer["error"]["message"]
        # Nothing was stored, and the session and the API go on.
        sdk = AsyncPromptRails(KEY, base_url=base_url(gw), max_retries=0)
        assert (await sdk.chat.list_sessions()).meta.total == 1
        assert (await sdk.chat.list_messages(sid)).data == []
        assert (await sdk.chat.send_message(sid, content="after")).content == "echo: after"


@pytest.mark.postgres
async def test_nul_characters_are_refused_before_postgresql_sees_them(tmp_path, postgres_url):
    """PostgreSQL's text columns refuse U+0000 (SQLite takes it): on PostgreSQL a NUL in a
    message or a title was a 500 and an ``internal`` frame."""
    settings = {"web": {"api_keys": [KEY]}, "database": {"url": postgres_url}}
    async with running_gateway(make_app(), tmp_path, **settings) as gw, aiohttp.ClientSession() as http:
        json_type = {"Content-Type": "application/json"}
        _, _, created = await rest(http, gw, "POST", "/chat/sessions", json={"agent_id": "default"})
        sid = created["data"]["id"]
        for path, body in (
            (f"/chat/sessions/{sid}/messages", b'{"content": "a\\u0000b"}'),
            ("/chat/sessions", b'{"agent_id": "default", "title": "a\\u0000b"}'),
        ):
            status, _, answer = await rest(http, gw, "POST", path, data=body, headers=json_type)
            assert (status, answer["error"]["code"]) == (400, "bad_request"), answer
        for path in ("/executions/a%00b", "/executions/a%00b/stream"):
            status, _, answer = await rest(http, gw, "GET", path)
            assert (status, answer["error"]["code"]) == (404, "not_found"), answer
        async with http.ws_connect(f"{base_url(gw)}/ws") as ws:
            ready = await hello(ws)
            await ws.send_str('{"type": "message", "id": "z", "text": "a\\u0000b"}')
            await expect_error(ws, "bad_frame")
        me = {"visitor": ready["visitor_token"]}
        status, body = await upload(
            http, gw, params=me, data=multipart(ready["session_id"] + "\0", "a.txt"), headers=MP
        )
        assert (status, body["error"]["code"]) == (404, "not_found")
        status, body = await upload(http, gw, params=me, data=multipart(ready["session_id"], "a\0b.txt"), headers=MP)
        assert (status, body["name"]) == (201, "ab.txt")
        sdk = AsyncPromptRails(KEY, base_url=base_url(gw), max_retries=0)
        assert (await sdk.chat.send_message(sid, content="ab")).content == "echo: ab"


MP = {"Content-Type": "multipart/form-data; boundary=zzz"}


def multipart(session_id: str, filename: str, content_type: str = "text/plain") -> bytes:
    """A multipart body written by hand: aiohttp's FormData would refuse some of these values.
    The name goes RFC 5987-encoded (``filename*=UTF-8''...``), which can carry any character."""
    return (
        f'--zzz\r\nContent-Disposition: form-data; name="session_id"\r\n\r\n{session_id}\r\n'
        f"--zzz\r\nContent-Disposition: form-data; name=\"file\"; filename*=UTF-8''{quote(filename)}\r\n"
        f"Content-Type: {content_type}\r\n\r\nhello\r\n--zzz--\r\n"
    ).encode()


async def test_upload_names_and_types_are_cleaned(gw):
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(f"{base_url(gw)}/ws") as ws:
            ready = await hello(ws)
        me, sid = {"visitor": ready["visitor_token"]}, ready["session_id"]
        for filename, content_type, expected in (
            ("no\x01tes\x7f.txt", "text/plain", ("notes.txt", "text/plain")),
            ("\x00\x00", "text/plain", ("file", "text/plain")),
            ("x" * 300 + ".txt", "text/plain", ("x" * 255, "text/plain")),
            ("notes.txt", "not a type", ("notes.txt", "text/plain")),  # judged by the name
            ("notes.txt", "text/plain; charset=utf-8", ("notes.txt", "text/plain; charset=utf-8")),
        ):
            status, body = await upload(http, gw, params=me, data=multipart(sid, filename, content_type), headers=MP)
            assert status == 201, body
            assert (body["name"], body["content_type"]) == expected
        # A control character in a part's header itself: the multipart body is malformed.
        status, body = await upload(http, gw, params=me, data=multipart(sid, "a.txt", "text/pl\x00ain"), headers=MP)
        assert (status, body["error"]["code"]) == (400, "bad_request")
        await still_serving(http, gw)
        status, body = await upload(http, gw, params=me, data=multipart(sid + "\n", "a.txt"), headers=MP)
        assert (status, body["error"]["code"]) == (404, "not_found")


async def test_a_page_far_past_the_end_is_empty_not_an_overflow(gw):
    sdk = AsyncPromptRails(KEY, base_url=base_url(gw), max_retries=0)
    session = await sdk.chat.create_session(agent_id="default")
    await sdk.chat.send_message(session.id, content="one")
    for page in (3, 2**62, 10**20):
        sessions = await sdk.chat.list_sessions(page=page, limit=5)
        assert (sessions.data, sessions.meta.total, sessions.meta.pages) == ([], 1, 1)
        messages = await sdk.chat.list_messages(session.id, page=page, limit=5)
        assert (messages.data, messages.meta.total, messages.meta.pages) == ([], 2, 1)
    assert [m.content for m in (await sdk.chat.list_messages(session.id, page=1, limit=5)).data] == ["one", "echo: one"]


async def test_frames_python_would_parse_but_the_gateway_cannot_keep_are_bad_frames(tmp_path):
    # The default max_frame_bytes (64 KiB): room for nesting deeper than the parser's limit.
    async with (
        running_gateway(make_app(), tmp_path) as gw,
        aiohttp.ClientSession() as http,
        http.ws_connect(f"{base_url(gw)}/ws") as ws,
    ):
        ready = await hello(ws)
        for raw in (
            '{"type": "message", "id": "s1", "text": "\\ud800 alone"}',
            '{"type": "action", "id": "s2", "name": "x", "payload": {"\\udc00": 1}}',
            '{"type": "message", "id": "n1", "text": "hi", "n": NaN}',
            '{"type": "action", "id": "n2", "name": "x", "payload": {"n": Infinity}}',
            '{"type": "message", "id": "d1", "text": "hi", "x": ' + "[" * 30_000 + "]" * 30_000 + "}",
            '{"type": "message", "id": "z1", "text": "a\\u0000b"}',
            '{"type": "action", "id": "z2", "name": "x", "payload": {"deep": [{"k": "\\u0000"}]}}',
        ):
            await ws.send_str(raw)
            frame = await expect_error(ws, "bad_frame")
            assert "not valid JSON" in frame["message"], frame
        # The socket is still open and attached to its session; nothing of the above was stored.
        # A surrogate pair and a literal backslash-u0000 (an escaped backslash) are fine.
        text = "fine \U0001f44b C:\\u0000"
        await ws.send_str('{"type": "message", "id": "ok", "text": "fine \\ud83d\\udc4b C:\\\\u0000"}')
        frames = []
        while not frames or frames[-1]["type"] != "turn_end":
            frames.append(await ws.receive_json(timeout=5))
        assert [f["message"]["text"] for f in frames if f["type"] == "message"] == ["echo: " + text]
        stored, _ = await gw.store.messages.page(ready["session_id"], offset=0, limit=10)
        assert [m.text for m in stored] == [text, "echo: " + text]
        await still_serving(http, gw)


async def test_the_rest_api_is_closed_without_keys(tmp_path):
    async with running_gateway(make_app(), tmp_path) as gw, aiohttp.ClientSession() as http:
        status, _, body = await rest(http, gw, "GET", "/chat/sessions")
        assert status == 401 and "api_keys" in body["error"]["message"]


async def test_a_deleted_session_is_not_found_on_the_socket(gw):
    async with aiohttp.ClientSession() as http, http.ws_connect(f"{base_url(gw)}/ws") as ws:
        ready = await hello(ws)
        await ws.send_json({"type": "message", "id": "m0", "text": "store the session"})
        while (await ws.receive_json(timeout=5))["type"] != "turn_end":
            pass
        assert await gw.store.sessions.delete(ready["session_id"])
        # The frame is not run, and the answer says to hello again (the widget keeps the frame).
        await ws.send_json({"type": "message", "id": "m1", "text": "anyone?"})
        assert "send hello" in (await expect_error(ws, "not_ready"))["message"]
        await ws.send_json({"type": "message", "id": "m2", "text": "anyone?"})
        await expect_error(ws, "not_ready")
        await ws.send_json({"type": "hello", "id": "h2", "session_id": ready["session_id"]})
        await expect_error(ws, "not_found")
        assert (await hello(ws))["type"] == "ready"
