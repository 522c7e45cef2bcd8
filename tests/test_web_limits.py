"""Anonymous abuse of the widget: nothing stored until a visitor says something, and the limits
of ``web.limits`` answered with 429 + Retry-After or ``rate_limited`` frames; uploads streamed to
disk. All through real sockets and real multipart uploads against a running gateway."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import gateway
from adapters.web.testing import base_url, running_gateway
from tests.support import until

BOUNDARY = "chatgate-test-boundary"


def make_app() -> gateway.App:
    app = gateway.App("limits")

    @app.message()
    async def echo(session: gateway.Session, msg: gateway.Message) -> None:
        names = [f"{a.name}:{a.size}" for a in msg.attachments or []]
        await session.reply(" ".join([msg.text, *names]))

    @app.message("support")
    async def support(session: gateway.Session, msg: gateway.Message) -> None:
        await session.reply(f"support: {msg.text}")

    return app


def count_rows(root: Path) -> dict[str, int]:
    with sqlite3.connect(root / "chatgate.db") as db:
        return {table: db.execute(f"SELECT count(*) FROM {table}").fetchone()[0] for table in ("users", "identities", "sessions")}  # noqa: E501


async def hello(ws: aiohttp.ClientWebSocketResponse, session_id: str | None = None, **extra: Any) -> dict:
    await ws.send_json({"type": "hello", "id": "h", "session_id": session_id, **extra})
    while True:
        frame = await ws.receive_json(timeout=5)
        if frame["type"] in ("ready", "error"):
            return frame


async def answer(ws: aiohttp.ClientWebSocketResponse, frame_id: str, text: str) -> dict:
    """Send a message; the first frame answering it (ack or error)."""
    await ws.send_json({"type": "message", "id": frame_id, "text": text})
    while True:
        frame = await ws.receive_json(timeout=5)
        if frame.get("id") == frame_id and frame["type"] in ("ack", "error"):
            return frame


async def turn(ws: aiohttp.ClientWebSocketResponse) -> None:
    while (await ws.receive_json(timeout=5))["type"] != "turn_end":
        pass


async def test_sockets_opened_and_dropped_store_nothing(tmp_path):
    async with running_gateway(make_app(), tmp_path) as gw, aiohttp.ClientSession() as http:

        async def drive_by() -> None:
            async with http.ws_connect(f"{base_url(gw)}/ws") as ws:
                assert (await hello(ws))["type"] == "ready"

        for _ in range(10):
            await asyncio.gather(*(drive_by() for _ in range(10)))
        async with http.get(f"{base_url(gw)}/api/widget/identity") as response:
            assert (await response.json())["user"]["id"] is None
        assert count_rows(tmp_path) == {"users": 0, "identities": 0, "sessions": 0}

        # The first message stores the visitor and the session, once.
        async with http.ws_connect(f"{base_url(gw)}/ws") as ws:
            ready = await hello(ws, handler="support")
            assert ready["user"]["id"] is None and ready["handler"] == "support"
            assert (await answer(ws, "m1", "hi"))["type"] == "ack"
            await turn(ws)
            assert (await answer(ws, "m2", "again"))["type"] == "ack"
            await turn(ws)
            assert (await hello(ws, ready["session_id"]))["user"]["id"]
        assert count_rows(tmp_path) == {"users": 1, "identities": 1, "sessions": 1}
        record = await gw.store.sessions.get(ready["session_id"])
        assert record is not None and record.chat_name == "support"


async def test_too_many_sockets_from_one_ip_get_429_with_retry_after(tmp_path):
    limits = {"sockets_per_ip": 3, "sockets_per_visitor": 0}
    async with running_gateway(make_app(), tmp_path, web={"limits": limits}) as gw, aiohttp.ClientSession() as http:
        url = f"{base_url(gw)}/ws"
        open_sockets = [await http.ws_connect(url) for _ in range(3)]
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(url)
        assert refused.value.status == 429 and int(refused.value.headers["Retry-After"]) >= 1
        await open_sockets.pop().close()

        async def try_again() -> aiohttp.ClientWebSocketResponse | None:
            try:
                return await http.ws_connect(url)
            except aiohttp.WSServerHandshakeError:
                return None  # the server has not seen the close yet

        again = await until(try_again)
        assert (await hello(again))["type"] == "ready"
        for ws in [*open_sockets, again]:
            await ws.close()


async def test_the_client_ip_header_tells_clients_behind_a_proxy_apart(tmp_path):
    web = {"client_ip_header": "X-Forwarded-For", "limits": {"sockets_per_ip": 1, "sockets_per_visitor": 0}}
    async with running_gateway(make_app(), tmp_path, web=web) as gw, aiohttp.ClientSession() as http:
        url = f"{base_url(gw)}/ws"
        first = await http.ws_connect(url, headers={"X-Forwarded-For": "203.0.113.9, 198.51.100.1"})
        second = await http.ws_connect(url, headers={"X-Forwarded-For": "198.51.100.2"})
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(url, headers={"X-Forwarded-For": "203.0.113.7, 198.51.100.1"})
        assert refused.value.status == 429
        await first.close()
        await second.close()


async def test_a_visitors_sockets_are_limited_too(tmp_path):
    limits = {"sockets_per_visitor": 2}
    async with running_gateway(make_app(), tmp_path, web={"limits": limits}) as gw, aiohttp.ClientSession() as http:
        url = f"{base_url(gw)}/ws"
        first = await http.ws_connect(url)
        token = (await hello(first))["visitor_token"]
        second = await http.ws_connect(url, params={"visitor": token})
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(url, params={"visitor": token})
        assert refused.value.status == 429
        other = await http.ws_connect(url)  # another visitor on the same IP
        for ws in (first, second, other):
            await ws.close()


async def test_messages_per_minute_answer_rate_limited_frames(tmp_path):
    limits = {"messages_per_visitor": "3/minute"}
    async with running_gateway(make_app(), tmp_path, web={"limits": limits}) as gw, aiohttp.ClientSession() as http:
        async with http.ws_connect(f"{base_url(gw)}/ws") as ws:
            ready = await hello(ws)
            for n in range(3):
                assert (await answer(ws, f"m{n}", f"message {n}"))["type"] == "ack"
            refused = await answer(ws, "m3", "one too many")
            assert refused["type"] == "error" and refused["code"] == "rate_limited"
            assert 1 <= refused["retry_after"] <= 60 and "messages_per_visitor" in refused["message"]
            await asyncio.sleep(0.2)  # the three replies land; the fourth message never runs
        stored = (await gw.store.messages.page(ready["session_id"], offset=0, limit=50))[0]
        assert "one too many" not in [m.text for m in stored]
        assert len([m for m in stored if m.role == "user"]) == 3


async def test_new_sessions_are_limited_per_visitor(tmp_path):
    limits = {"new_sessions_per_visitor": "2/hour"}
    async with running_gateway(make_app(), tmp_path, web={"limits": limits}) as gw, aiohttp.ClientSession() as http:
        async with http.ws_connect(f"{base_url(gw)}/ws") as ws:
            first = await hello(ws)
            assert (await answer(ws, "a", "one"))["type"] == "ack"
            await turn(ws)
            await hello(ws)
            assert (await answer(ws, "b", "two"))["type"] == "ack"
            await turn(ws)
            for _ in range(5):  # saying hello costs nothing
                third = await hello(ws)
            refused = await answer(ws, "c", "three")
            assert refused["code"] == "rate_limited" and "new_sessions_per_visitor" in refused["message"]
            # An existing conversation goes on.
            await hello(ws, first["session_id"])
            assert (await answer(ws, "d", "still here"))["type"] == "ack"
        assert await gw.store.sessions.get(third["session_id"]) is None


def multipart_head(session_id: str, name: str = "notes.txt") -> bytes:
    return (
        f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"session_id\"\r\n\r\n{session_id}\r\n"
        f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
        "Content-Type: text/plain\r\n\r\n"
    ).encode()


async def slow_body(session_id: str, first: bytes, go_on: asyncio.Event, rest: bytes) -> AsyncIterator[bytes]:
    yield multipart_head(session_id)
    yield first
    await go_on.wait()
    yield rest
    yield f"\r\n--{BOUNDARY}--\r\n".encode()


async def post_file(http, gw, visitor: str, session_id: str, data: bytes, name: str = "notes.txt"):
    form = aiohttp.FormData()
    form.add_field("session_id", session_id)
    form.add_field("file", data, filename=name, content_type="text/plain")
    async with http.post(f"{base_url(gw)}/upload", params={"visitor": visitor}, data=form) as response:
        return response.status, dict(response.headers), await response.json()


async def new_visitor(http, gw) -> tuple[str, str]:
    async with http.ws_connect(f"{base_url(gw)}/ws") as ws:
        ready = await hello(ws)
    return ready["visitor_token"], ready["session_id"]


def staged_files(root: Path) -> list[Path]:
    return list((root / "files").glob(".upload-*.part")) if (root / "files").exists() else []


async def test_uploads_stream_to_disk_and_concurrent_uploads_are_limited(tmp_path):
    limits = {"uploads_per_visitor": 1}
    async with running_gateway(make_app(), tmp_path, web={"limits": limits}) as gw, aiohttp.ClientSession() as http:
        visitor, session_id = await new_visitor(http, gw)
        first_part, rest = b"a" * 300_000, b"b" * 200_000
        go_on = asyncio.Event()
        headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
        slow = asyncio.create_task(
            http.post(
                f"{base_url(gw)}/upload",
                params={"visitor": visitor},
                data=slow_body(session_id, first_part, go_on, rest),
                headers=headers,
            )
        )
        # What arrived so far is on disk while the rest is still on its way: not held in memory.
        staged = await until(lambda: [p for p in staged_files(tmp_path) if p.stat().st_size >= 200_000])
        assert staged
        status, response_headers, body = await post_file(http, gw, visitor, session_id, b"second")
        assert status == 429 and body["error"]["code"] == "rate_limited"
        assert int(response_headers["Retry-After"]) >= 1 and body["error"]["details"]["retry_after"] >= 1
        other_visitor, other_session = await new_visitor(http, gw)
        assert (await post_file(http, gw, other_visitor, other_session, b"meanwhile"))[0] == 201
        go_on.set()
        response = await slow
        assert response.status == 201, await response.text()
        stored = await response.json()
        assert stored["size"] == 500_000
        assert (tmp_path / "files" / stored["file_id"]).read_bytes() == first_part + rest
        response.release()
        assert staged_files(tmp_path) == []
        assert (await post_file(http, gw, visitor, session_id, b"after"))[0] == 201


async def test_upload_bytes_per_visitor_are_limited_and_refused_uploads_leave_no_file(tmp_path):
    limits = {"upload_bytes_per_visitor": "100000/hour"}
    async with running_gateway(make_app(), tmp_path, web={"limits": limits}) as gw, aiohttp.ClientSession() as http:
        visitor, session_id = await new_visitor(http, gw)
        assert (await post_file(http, gw, visitor, session_id, b"x" * 60_000))[0] == 201
        status, headers, body = await post_file(http, gw, visitor, session_id, b"y" * 60_000)
        assert status == 429 and "upload_bytes_per_visitor" in body["error"]["message"] and "Retry-After" in headers
        assert staged_files(tmp_path) == []
        assert len([p for p in (tmp_path / "files").iterdir() if not p.name.startswith(".")]) == 1


async def test_an_upload_before_the_first_message_stores_the_session_for_its_owner_only(tmp_path):
    async with running_gateway(make_app(), tmp_path) as gw, aiohttp.ClientSession() as http:
        async with http.ws_connect(f"{base_url(gw)}/ws") as ws:
            ready = await hello(ws, handler="support")
            visitor = ready["visitor_token"]
            stranger, _ = await new_visitor(http, gw)
            assert (await post_file(http, gw, stranger, ready["session_id"], b"mine?"))[0] == 404
            assert count_rows(tmp_path)["sessions"] == 0
            status, _, uploaded = await post_file(http, gw, visitor, ready["session_id"], b"first a file")
            assert status == 201
            record = await gw.store.sessions.get(ready["session_id"])
            assert record is not None and record.chat_name == "support"
            await ws.send_json(
                {"type": "message", "id": "m", "text": "then words", "attachments": [{"file_id": uploaded["file_id"]}]}
            )
            while True:
                frame = await ws.receive_json(timeout=5)
                if frame["type"] == "message" and frame["message"]["role"] == "assistant":
                    assert frame["message"]["text"] == "support: then words"
                    break
        # A made-up id is not a reservation.
        made_up = "01" + "Z" * 24
        assert (await post_file(http, gw, visitor, made_up, b"x"))[0] == 404
        assert count_rows(tmp_path) == {"users": 1, "identities": 1, "sessions": 1}


def test_reserved_ids_name_their_owner_and_handler_and_never_repeat():
    from adapters.web.reservations import SessionReservations

    reservations = SessionReservations("k" * 32)
    ids = {reservations.reserve("anon-1", "support").session_id for _ in range(1000)}
    assert len(ids) == 1000  # many in one millisecond still differ
    one = next(iter(ids))
    found = reservations.find(one, "anon-1", [None, "support"])
    assert found is not None and found.handler == "support"
    assert reservations.find(one, "anon-2", [None, "support"]) is None
    assert reservations.find(one, "anon-1", [None]) is None
    assert SessionReservations("another-key-" + "k" * 32).find(one, "anon-1", ["support"]) is None
    assert reservations.find("not-a-ulid", "anon-1", [None]) is None


async def test_the_documented_defaults_hold_a_visitor_to_30_messages_a_minute(tmp_path):
    from gateway.config import WebLimits

    defaults = WebLimits().model_dump()
    assert defaults["messages_per_visitor"] == "30/minute"
    async with running_gateway(make_app(), tmp_path, web={"limits": defaults}) as gw, aiohttp.ClientSession() as http:
        async with http.ws_connect(f"{base_url(gw)}/ws") as ws:
            await hello(ws)
            answers = [(await answer(ws, f"m{n}", f"message {n}"))["type"] for n in range(31)]
        assert answers == ["ack"] * 30 + ["error"]


async def test_a_visitor_refused_a_new_session_leaves_no_row(tmp_path):
    limits = {"new_sessions_per_ip": "1/hour"}
    async with running_gateway(make_app(), tmp_path, web={"limits": limits}) as gw, aiohttp.ClientSession() as http:
        async with http.ws_connect(f"{base_url(gw)}/ws") as ws:
            await hello(ws)
            assert (await answer(ws, "a", "first"))["type"] == "ack"
            await turn(ws)
        for n in range(3):  # fresh visitors from the same address
            async with http.ws_connect(f"{base_url(gw)}/ws") as ws:
                await hello(ws)
                refused = await answer(ws, f"b{n}", "me too")
                assert refused["code"] == "rate_limited" and "new_sessions_per_ip" in refused["message"]
        assert count_rows(tmp_path) == {"users": 1, "identities": 1, "sessions": 1}


async def test_an_upload_to_a_session_id_that_is_no_id_is_not_found_on_postgresql(tmp_path, postgres_url):
    async with running_gateway(make_app(), tmp_path, database={"url": postgres_url}) as gw:
        async with aiohttp.ClientSession() as http:
            visitor, session_id = await new_visitor(http, gw)
            assert (await post_file(http, gw, visitor, session_id, b"stored"))[0] == 201  # now the visitor exists
            for bad in ("a\x00b", "x" * 200, "../" + session_id):
                status, _, body = await post_file(http, gw, visitor, bad, b"x")
                assert status == 404 and body["error"]["code"] == "not_found", bad


async def test_frames_that_need_a_stored_session_store_nothing(tmp_path):
    async with running_gateway(make_app(), tmp_path) as gw, aiohttp.ClientSession() as http:
        async with http.ws_connect(f"{base_url(gw)}/ws") as ws:
            await hello(ws)
            for frame in (
                {"type": "button", "id": "b", "block_id": "x", "value": "0"},
                {"type": "upload_done", "id": "u", "block_id": "x", "file_id": "01ABC"},
                {"type": "stop", "id": "s"},
            ):
                await ws.send_json(frame)
                answer_frame = await ws.receive_json(timeout=5)
                assert answer_frame["code"] == "not_found" and answer_frame["id"] == frame["id"]
        assert count_rows(tmp_path) == {"users": 0, "identities": 0, "sessions": 0}
