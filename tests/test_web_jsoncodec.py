"""adapters/web/jsoncodec.py: the socket frames, SSE lines and JSON responses orjson writes are
the text ``json`` wrote (key order, non-ASCII as UTF-8, escapes), for any JSON value; NaN never
goes out."""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from adapters.web.jsoncodec import compact
from adapters.web.rest.sse import sse_frame

scalars = st.none() | st.booleans() | st.integers() | st.text()
values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4), max_leaves=30
)


def as_json_wrote(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


@given(values)
def test_the_text_is_what_json_wrote(value: Any) -> None:
    assert compact(value) == as_json_wrote(value)


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_a_float_keeps_its_value(number: float) -> None:
    assert json.loads(compact({"x": number}))["x"] == number


@given(st.sampled_from([math.nan, -math.nan, math.inf, -math.inf]))
def test_nan_and_infinity_never_go_out(number: float) -> None:
    text = compact({"x": number, "y": [number]})
    assert json.loads(text) == {"x": None, "y": [None]}  # any JSON parser reads it


def test_what_orjson_refuses_is_written_as_before() -> None:
    for value in [2**70, {"big": -(2**80)}, {1: "int key"}, {"lone": "\ud800"}, ("tuple", 1)]:
        assert compact(value) == as_json_wrote(value)


@given(st.dictionaries(st.text(), st.text(), max_size=3))
def test_an_sse_frame_carries_the_same_one_line(data: dict[str, str]) -> None:
    frame = sse_frame("content", data).decode()
    assert frame == f"event: content\ndata: {as_json_wrote(data)}\n\n"
    assert frame.count("\n") == 3


async def test_a_rest_answer_is_the_compact_text_in_utf8(tmp_path) -> None:
    """The REST API's bodies are this module's text: what the official SDK parses, with non-ASCII
    content as UTF-8 rather than ``\\u`` escapes."""
    import aiohttp

    import gateway
    from adapters.web.testing import base_url, running_gateway

    app = gateway.App("codec-bot")

    @app.message()
    async def echo(session: gateway.Session, msg: gateway.Message) -> None:
        await session.reply(f"echo: {msg.text}")

    headers = {"X-API-Key": "codec-key"}
    async with running_gateway(app, tmp_path, web={"api_keys": ["codec-key"]}) as gw, aiohttp.ClientSession() as http:
        url = f"{base_url(gw)}/api/v1/chat/sessions"
        async with http.post(url, json={"agent_id": "codec-bot"}, headers=headers) as response:
            session_id = (await response.json())["data"]["id"]
        async with http.post(f"{url}/{session_id}/messages", json={"content": "grüß 🌍"}, headers=headers) as response:
            assert response.status == 201
            assert response.headers["Content-Type"] == "application/json; charset=utf-8"
            raw = await response.read()
    body = json.loads(raw)
    assert body["data"]["assistant_message"]["content"] == "echo: grüß 🌍"
    assert raw.decode() == compact(body)  # compact, and the text itself, not escapes
