"""Uploads from the widget: stored in the file store, served back only through signed URLs of
their own session, limited in size and type, usable from another origin (CORS)."""

from __future__ import annotations

import unicodedata
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

import gateway
from adapters.web.testing import base_url, running_gateway
from adapters.web.widget.uploads import MAX_NAME_CHARS, clean_filename, type_accepted
from adapters.web.wire import file_id_of, file_ref

HOST_PAGE = "https://shop.example.com"


def make_app() -> gateway.App:
    app = gateway.App("files")

    @app.message()
    async def handle(session: gateway.Session, msg: gateway.Message) -> None:
        names = [f"{a.name}:{a.size}:{a.url.split('?')[0].rsplit('/', 1)[-1]}" for a in msg.attachments or []]
        await session.reply(", ".join(names) or msg.text)

    return app


@pytest.fixture
async def gw(tmp_path):
    settings = {
        "web": {"allowed_origins": [HOST_PAGE]},
        "files": {"max_upload_bytes": 64 * 1024, "accepted_types": ["text/*", "image/*", "application/pdf"]},
    }
    async with running_gateway(make_app(), tmp_path, **settings) as gw:
        yield gw


def test_accepted_types_match_wildcards_and_ignore_parameters():
    assert type_accepted("text/plain; charset=utf-8", ["text/*"])
    assert type_accepted("IMAGE/PNG", ["image/png"])
    assert not type_accepted("application/zip", ["text/*", "image/*"])
    assert type_accepted("application/zip", ["*/*"])


def test_file_references_survive_a_restart():
    ref = file_ref("01FILE", "01SESSION")
    assert ref == "web-file:01FILE@01SESSION" and file_id_of(ref) == "01FILE"
    assert file_id_of("http://gw/files/01ABC?s=01S&exp=1&sig=x") == "01ABC"
    assert file_id_of("https://elsewhere.example.com/a.png") is None


async def new_visitor(http: aiohttp.ClientSession, gw) -> tuple[str, str]:
    async with http.ws_connect(f"{base_url(gw)}/ws") as ws:
        await ws.send_json({"type": "hello", "id": "h", "session_id": None})
        ready = await ws.receive_json(timeout=5)
    return ready["visitor_token"], ready["session_id"]


async def post_file(http, gw, visitor: str, session_id: str, data: bytes, name: str, ctype: str | None, **kw):
    body = aiohttp.FormData()
    body.add_field("session_id", session_id)
    if ctype is None:
        body.add_field("file", data, filename=name)
    else:
        body.add_field("file", data, filename=name, content_type=ctype)
    async with http.post(f"{base_url(gw)}/upload", data=body, params={"visitor": visitor}, **kw) as response:
        return response.status, await response.json(), response.headers


async def test_a_file_is_served_back_only_through_its_signed_url(gw):
    async with aiohttp.ClientSession() as http:
        visitor, session_id = await new_visitor(http, gw)
        status, body, _ = await post_file(http, gw, visitor, session_id, b"%PDF-1.4 tiny", "r.pdf", "application/pdf")
        assert status == 201 and body["content_type"] == "application/pdf" and body["size"] == 13
        async with http.get(body["url"]) as response:
            assert response.status == 200 and await response.read() == b"%PDF-1.4 tiny"
            assert response.headers["Content-Type"] == "application/pdf"
        parts = urlsplit(body["url"])
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        tampered = {**query, "sig": "0" * len(query["sig"])}
        other_session = {**query, "s": "01OTHERSESSION"}
        for bad in (tampered, other_session, {}):
            async with http.get(f"{base_url(gw)}{parts.path}?{urlencode(bad)}") as response:
                assert response.status in (403, 404)
                assert "error" in await response.json()
        stored = await gw.store.files.get(body["file_id"])
        assert stored.session_id == session_id


async def test_the_content_type_is_guessed_from_the_name_when_missing(gw):
    async with aiohttp.ClientSession() as http:
        visitor, session_id = await new_visitor(http, gw)
        status, body, _ = await post_file(http, gw, visitor, session_id, b"a,b\n", "table.csv", None)
        # aiohttp sends application/octet-stream for bytes without a type, as browsers do.
        assert status == 201 and body["content_type"] == "text/csv"
        status, body, _ = await post_file(http, gw, visitor, session_id, b"MZ", "setup.exe", None)
        assert status == 415 and body["error"]["code"] == "unsupported_type"


async def test_the_handler_gets_attachments_with_fresh_signed_urls(gw):
    async with aiohttp.ClientSession() as http:
        visitor, session_id = await new_visitor(http, gw)
        _, body, _ = await post_file(http, gw, visitor, session_id, b"\x89PNG....", "p.png", "image/png")
        async with http.ws_connect(f"{base_url(gw)}/ws", params={"visitor": visitor}) as ws:
            await ws.send_json({"type": "hello", "id": "h", "session_id": session_id})
            await ws.receive_json(timeout=5)
            await ws.send_json(
                {"type": "message", "id": "m", "text": "", "attachments": [{"file_id": body["file_id"]}]}
            )
            while (frame := await ws.receive_json(timeout=5))["type"] != "message":
                pass
        assert frame["message"]["text"] == f"p.png:8:{body['file_id']}"


async def test_uploads_from_an_allowed_origin_get_cors_headers(gw):
    async with aiohttp.ClientSession() as http:
        visitor, session_id = await new_visitor(http, gw)
        preflight = {"Origin": HOST_PAGE, "Access-Control-Request-Method": "POST"}
        async with http.options(f"{base_url(gw)}/upload", headers=preflight) as response:
            assert response.status == 204
            assert response.headers["Access-Control-Allow-Origin"] == HOST_PAGE
            assert "POST" in response.headers["Access-Control-Allow-Methods"]
        status, _, headers = await post_file(
            http, gw, visitor, session_id, b"hi", "a.txt", "text/plain", headers={"Origin": HOST_PAGE}
        )
        assert status == 201 and headers["Access-Control-Allow-Origin"] == HOST_PAGE
        status, _, headers = await post_file(
            http, gw, visitor, session_id, b"hi", "a.txt", "text/plain", headers={"Origin": "https://evil.example"}
        )
        assert "Access-Control-Allow-Origin" not in headers
        # Nor may another origin open the socket.
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(f"{base_url(gw)}/ws", headers={"Origin": "https://evil.example"})
        assert refused.value.status == 403
        async with http.ws_connect(f"{base_url(gw)}/ws", headers={"Origin": HOST_PAGE}) as ws:
            await ws.send_json({"type": "hello", "id": "h", "session_id": None})
            assert (await ws.receive_json(timeout=5))["type"] == "ready"


BIDI_AND_SEPARATORS = [chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F, 0x2028, 0x2029)]
INVISIBLE = {"Cc", "Cf", "Cs", "Zl", "Zp"}


@given(st.text(alphabet=st.characters(codec=None) | st.sampled_from(BIDI_AND_SEPARATORS), max_size=400))
def test_clean_names_keep_every_visible_character_in_order_and_nothing_else(raw):
    name = clean_filename(raw)
    assert not [c for c in name if unicodedata.category(c) in INVISIBLE]
    visible = "".join(c for c in raw if unicodedata.category(c) not in INVISIBLE).strip()[:MAX_NAME_CHARS]
    assert name == (visible or "file")


async def post_as_a_browser(http, gw, visitor: str, session_id: str, name: str) -> tuple[int, dict]:
    """A multipart body the way browsers write it: the file name as raw UTF-8 in quotes."""
    boundary = "----chatgate-test"
    body = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"session_id\"\r\n\r\n{session_id}\r\n"
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
        f"Content-Type: text/plain\r\n\r\nhi\r\n--{boundary}--\r\n"
    ).encode()
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    async with http.post(f"{base_url(gw)}/upload", data=body, headers=headers, params={"visitor": visitor}) as response:
        return response.status, await response.json()


async def test_upload_names_lose_bidi_controls_and_line_separators(gw):
    async with aiohttp.ClientSession() as http:
        visitor, session_id = await new_visitor(http, gw)
        # Shown as "eexe.png" by a bidi-aware renderer, it is an .exe: the override goes.
        status, body = await post_as_a_browser(http, gw, visitor, session_id, "e\u202egnp.exe.txt")
        assert status == 201 and body["name"] == "egnp.exe.txt"
        tricky = "\u2066report\u2069\u2028line\u2029two\u200f\u200e\u202a\u202d\u2067\u2068.txt"
        status, body = await post_as_a_browser(http, gw, visitor, session_id, tricky)
        assert status == 201 and body["name"] == "reportlinetwo.txt"
        assert (await gw.store.files.get(body["file_id"])).name == "reportlinetwo.txt"
