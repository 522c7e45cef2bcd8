"""The HTTP layer under every route (issue 13 items 4 and 5), over raw sockets that send exactly
the bytes a broken or hostile client would, and over aiohttp's client.

- headers that are not UTF-8 get a JSON 401 (credentials) or 400 (anything else), never a 500;
  a cookie that is not UTF-8 is ignored;
- requests aiohttp cannot parse (over-long lines, TLS on the HTTP port) get a JSON 400;
- a client that trickles its headers or stalls its body gets 408 and is closed, while the server
  keeps serving others; one address cannot hold more than ``max_connections_per_ip`` connections.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
from aiohttp import web

import gateway
from adapters.web.testing import base_url, running_gateway

KEY = "transport-key"
BAD = b"\xff\xfe\x80"  # not UTF-8
WS_UPGRADE = (b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
              b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n")


def make_app() -> gateway.App:
    app = gateway.App("transport-bot")

    @app.message()
    async def handle(session: gateway.Session, msg: gateway.Message) -> None:
        await session.reply("echo: " + msg.text)

    @app.endpoint("GET", "/whoami", authorized=False)
    async def whoami(request: Any) -> dict[str, Any]:
        return {"user_agent": request.headers.get("User-Agent", ""), "cookies": dict(request.cookies)}

    return app


@pytest.fixture
async def gw(tmp_path):
    server = {"header_timeout": 0.5, "body_timeout": 0.5, "max_connections_per_ip": 6}
    async with running_gateway(make_app(), tmp_path, web={"api_keys": [KEY]}, server=server) as running:
        yield running


class RawResponse:
    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        head, _, self.body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1]) if lines and lines[0].startswith("HTTP/") else 0
        self.headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}

    def json(self) -> Any:
        assert self.headers.get("content-type", "").startswith("application/json"), self.raw[:300]
        return json.loads(self.body)

    def error_code(self) -> str:
        body = self.json()
        assert set(body) == {"error"} and isinstance(body["error"]["message"], str) and body["error"]["message"]
        return body["error"]["code"]


async def connect(gw) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", gw.port)


async def read_all(reader: asyncio.StreamReader, timeout: float = 5.0) -> bytes:
    """Everything until the server closes the connection (fails if it does not within ``timeout``).
    A reset counts as closed: a server that closes while the client is still sending resets."""
    received = b""
    async with asyncio.timeout(timeout):
        try:
            while chunk := await reader.read(65536):
                received += chunk
        except ConnectionResetError:
            pass
    return received


async def exchange(gw, data: bytes) -> RawResponse:
    reader, writer = await connect(gw)
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(5):
            head = await reader.readuntil(b"\r\n\r\n")
            response = RawResponse(head)
            length = int(response.headers.get("content-length", "0"))
            body = await reader.readexactly(length)
        return RawResponse(head + body)
    finally:
        writer.close()


async def healthy(gw) -> bool:
    async with aiohttp.ClientSession() as http, http.get(f"{base_url(gw)}/healthz") as response:
        return response.status == 200


# -- headers that are not UTF-8 ---------------------------------------------------------------

HEADER_CASES = [
    ("X-API-Key on the REST API", b"GET /api/v1/chat/sessions HTTP/1.1\r\nX-API-Key: " + BAD + b"\r\n", 401,
     "unauthorized"),
    ("Authorization on the widget identity", b"GET /api/widget/identity HTTP/1.1\r\nAuthorization: Bearer " + BAD
     + b"\r\n", 401, "unauthorized"),
    ("Origin on the widget config", b"GET /api/widget/config HTTP/1.1\r\nOrigin: http://" + BAD + b"\r\n", 400,
     "bad_request"),
    ("Origin on the REST preflight", b"OPTIONS /api/v1/chat/sessions HTTP/1.1\r\nOrigin: " + BAD
     + b"\r\nAccess-Control-Request-Method: POST\r\n", 400, "bad_request"),
    ("Origin on the socket handshake", b"GET /ws HTTP/1.1\r\nOrigin: http://" + BAD + b"\r\n" + WS_UPGRADE, 400,
     "bad_request"),
    ("X-Capsule-Session-Id on an endpoint", b"GET /whoami HTTP/1.1\r\nX-Capsule-Session-Id: " + BAD + b"\r\n", 400,
     "bad_request"),
    ("Content-Type on a REST POST", b"POST /api/v1/chat/sessions HTTP/1.1\r\nX-API-Key: " + KEY.encode()
     + b"\r\nContent-Type: application/" + BAD + b"\r\nContent-Length: 2\r\n\r\n{}", 400, "bad_request"),
    ("Content-Type on an upload", b"POST /upload HTTP/1.1\r\nContent-Type: multipart/form-data; boundary=" + BAD
     + b"\r\nContent-Length: 2\r\n\r\n{}", 400, "bad_request"),
    ("Host", b"GET /healthz HTTP/1.1\r\nHost: " + BAD + b"\r\n", 400, "bad_request"),
]


@pytest.mark.parametrize(("case", "request_bytes", "status", "code"), HEADER_CASES, ids=[c[0] for c in HEADER_CASES])
async def test_a_header_that_is_not_utf8_is_a_json_error(gw, case, request_bytes, status, code):
    head, sep, body = request_bytes.partition(b"\r\n\r\n")
    if not sep:
        head = head.removesuffix(b"\r\n")
    if b"\r\nHost:" not in head:
        head += b"\r\nHost: 127.0.0.1"
    response = await exchange(gw, head + b"\r\n\r\n" + body)
    assert response.status == status, response.raw[:400]
    assert response.error_code() == code
    assert await healthy(gw)


async def test_a_cookie_that_is_not_utf8_is_ignored_and_free_text_headers_are_cleaned(gw):
    response = await exchange(gw, b"GET /api/widget/identity HTTP/1.1\r\nHost: x\r\nCookie: chatgate_uid=" + BAD
                              + b"\r\n\r\n")
    # a new visitor (stored on their first message, so no user id yet), not a 500
    assert response.status == 200 and response.json()["visitor_token"]
    response = await exchange(gw, b"GET /whoami HTTP/1.1\r\nHost: x\r\nUser-Agent: caf\xe9\r\nCookie: a=" + BAD
                              + b"; b=kept\r\n\r\n")
    assert response.status == 200
    assert response.json() == {"user_agent": "caf\ufffd", "cookies": {"b": "kept"}}


async def test_the_socket_opens_despite_a_cookie_that_is_not_utf8(gw):
    reader, writer = await connect(gw)
    writer.write(b"GET /ws HTTP/1.1\r\nHost: x\r\nCookie: other=" + BAD + b"\r\n" + WS_UPGRADE + b"\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert RawResponse(head).status == 101
    writer.close()


async def test_a_non_ascii_but_utf8_api_key_is_a_plain_401(gw):
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base_url(gw)}/api/v1/chat/sessions", headers={"X-API-Key": "clé"}) as response:
            assert response.status == 401
            assert (await response.json())["error"]["code"] == "unauthorized"
        async with http.get(f"{base_url(gw)}/api/v1/chat/sessions", headers={"X-API-Key": KEY}) as response:
            assert response.status == 200


# -- what aiohttp cannot parse ------------------------------------------------------------------

PARSE_CASES = [
    ("an over-long request line", b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("an over-long header", b"GET / HTTP/1.1\r\nHost: x\r\nX-Filler: " + b"a" * 9000 + b"\r\n\r\n"),
    ("TLS on the HTTP port", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40 + b"\r\n\r\n"),
    ("a bad method", b"G(T / HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("a bad HTTP version", b"GET / HTTP/9.Z\r\nHost: x\r\n\r\n"),
    ("a header without a colon", b"GET / HTTP/1.1\r\nHost: x\r\nNoColonHere\r\n\r\n"),
    ("a bad Content-Length", b"POST /api/v1/chat/sessions HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n"),
]


@pytest.mark.parametrize(("case", "request_bytes"), PARSE_CASES, ids=[c[0] for c in PARSE_CASES])
async def test_a_request_aiohttp_cannot_parse_is_a_json_400(gw, case, request_bytes):
    response = await exchange(gw, request_bytes)
    assert response.status == 400, response.raw[:300]
    assert response.error_code() == "bad_request"
    assert b"aaaaaaaa" not in response.body  # the error does not echo the request back
    assert await healthy(gw)


async def test_over_long_url_and_header_from_aiohttps_client_get_json(gw):
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base_url(gw)}/healthz?q={'a' * 9000}") as response:
            assert response.status == 400
            body = await response.json()
            assert body["error"]["code"] == "bad_request" and "8190 bytes" in body["error"]["message"]
        async with http.get(f"{base_url(gw)}/healthz", headers={"X-Filler": "a" * 9000}) as response:
            assert response.status == 400
            assert (await response.json())["error"]["code"] == "bad_request"


# -- slow clients ---------------------------------------------------------------------------------


async def test_a_client_that_trickles_its_headers_gets_408_and_is_closed(gw):
    reader, writer = await connect(gw)
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200
    closed = asyncio.create_task(read_all(reader, timeout=5))
    for byte in request:
        if closed.done():
            break
        writer.write(bytes([byte]))
        assert await healthy(gw)  # the server keeps serving others meanwhile
        await asyncio.sleep(0.02)
    response = RawResponse(await closed)
    assert response.status == 408 and response.error_code() == "timeout"
    writer.close()


async def test_a_connection_that_sends_nothing_is_closed(gw):
    reader, writer = await connect(gw)
    response = RawResponse(await read_all(reader, timeout=5))
    assert response.status == 408 and response.error_code() == "timeout"
    writer.close()


async def test_a_kept_alive_connection_that_trickles_its_next_request_is_closed(gw):
    reader, writer = await connect(gw)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    await reader.readexactly(int(RawResponse(head).headers["content-length"]))
    closed = asyncio.create_task(read_all(reader, timeout=5))
    for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200:
        if closed.done():
            break
        writer.write(bytes([byte]))
        await asyncio.sleep(0.02)
    assert RawResponse(await closed).status == 408
    writer.close()


async def test_a_stalled_body_gets_408_and_is_closed(gw):
    reader, writer = await connect(gw)
    writer.write(b"POST /api/v1/chat/sessions HTTP/1.1\r\nHost: x\r\nX-API-Key: " + KEY.encode()
                 + b"\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"agent_id\": ")
    response = RawResponse(await read_all(reader, timeout=5))
    assert response.status == 408 and response.error_code() == "timeout"
    writer.close()
    assert await healthy(gw)


async def test_a_body_that_keeps_coming_is_not_cut_off(gw):
    """The body timeout is the longest pause, not the longest upload."""
    body = json.dumps({"agent_id": "default", "title": "t" * 200}).encode()
    reader, writer = await connect(gw)
    writer.write(b"POST /api/v1/chat/sessions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-API-Key: " + KEY.encode()
                 + b"\r\nContent-Type: application/json\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n")
    for start in range(0, len(body), 25):  # ~0.9 s in all, 0.1 s between chunks
        writer.write(body[start : start + 25])
        await asyncio.sleep(0.1)
    response = RawResponse(await read_all(reader, timeout=5))
    assert response.status == 201, response.raw[:300]
    writer.close()


async def test_one_address_cannot_hold_more_than_its_connection_cap(tmp_path, caplog):
    server = {"max_connections_per_ip": 3, "header_timeout": 30}
    async with running_gateway(make_app(), tmp_path, server=server) as gw:
        held = [await connect(gw) for _ in range(2)]
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(f"{base_url(gw)}/ws")  # a socket counts too: the third
            for _ in range(3):
                reader, writer = await connect(gw)
                response = RawResponse(await read_all(reader))
                assert response.status == 429 and response.error_code() == "rate_limited"
                assert response.headers["retry-after"] == "5"
                writer.close()
            assert len([r for r in caplog.records if "refusing connections from" in r.getMessage()]) == 1
            await ws.close()
        # A connection closed frees its place.
        async def admitted() -> bool:
            async with aiohttp.ClientSession() as http, http.get(f"{base_url(gw)}/healthz") as response:
                return response.status == 200

        for _ in range(50):
            if await admitted():
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("the closed socket's place was not freed")
        for _, held_writer in held:
            held_writer.close()


async def test_the_workers_operations_app_refuses_such_headers_too():
    """``chatgate worker``'s small app (``/healthz``, ``/readyz``, ``/metrics``) has the same one
    middleware: a header that is not UTF-8 is a JSON 400, an unknown route a JSON 404."""
    from gateway.server import checked_requests

    async def metrics(_request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application(middlewares=[checked_requests])
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async def ask(head: bytes) -> tuple[int, bytes]:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(head + b"\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            raw = await reader.read()
            writer.close()
            return int(raw.split(b" ", 2)[1]), raw.partition(b"\r\n\r\n")[2]

        status, body = await ask(b"GET /metrics HTTP/1.1\r\nOrigin: http://" + BAD)
        assert status == 400 and json.loads(body)["error"]["code"] == "bad_request"
        status, body = await ask(b"GET /nowhere HTTP/1.1")
        assert status == 404 and json.loads(body)["error"]["code"] == "not_found"
        assert (await ask(b"GET /metrics HTTP/1.1"))[0] == 200
    finally:
        await runner.cleanup()
