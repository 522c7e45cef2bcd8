"""Fuzzing the web channel (issue 13): the REST API from its own OpenAPI description
(schemathesis), and the widget socket with frames hypothesis makes up.

Against one real gateway (a thread of its own, so schemathesis' synchronous client can call it):
no 5xx, every error in the protocol's shape, nothing logged as a server failure, and the process
still serving at the end. Example counts keep the whole file well under a minute.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

import gateway
from adapters.web.rest.openapi import openapi_document
from adapters.web.testing import running_gateway

KEY = "fuzz-key"
REST_EXAMPLES = 12  # per API operation (14 of them) and mode (valid, invalid input)
FRAME_EXAMPLES = 60  # socket conversations
SERVER_FRAMES = {"ready", "ack", "message", "delta", "done", "block", "notify", "turn_end", "error"}
ERROR_CODES = {"bad_frame", "not_ready", "not_found", "unauthorized", "too_large", "unsupported_type",
               "bad_request", "rate_limited"}
FAILURE_LOGGERS = ("chatgate", "aiohttp")


def make_app() -> gateway.App:
    app = gateway.App("fuzz-bot")

    @app.message()
    async def handle(session: gateway.Session, msg: gateway.Message) -> None:
        await session.reply("echo: " + msg.text[:50])

    @app.message("support")
    async def support(session: gateway.Session, msg: gateway.Message) -> None:
        await session.reply("support: " + msg.text[:50])

    @app.action("refresh")
    async def refresh(session: gateway.Session, event: gateway.Event) -> None:
        await session.reply("refreshed")

    return app


class FailureLog(logging.Handler):
    """ERROR records of chatgate and aiohttp: a server failure even when the client got a 4xx."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(f"{record.name}: {record.getMessage()}\n{record.exc_text or ''}")


class ThreadedGateway:
    """A real gateway on its own event loop in a thread, for synchronous clients."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = ""
        self.session_id = ""
        self.execution_id = ""
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), name="fuzz-gateway", daemon=True)
        self._error: BaseException | None = None

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            async with running_gateway(make_app(), self.root, web={"api_keys": [KEY]}) as gw:
                self.url = f"http://127.0.0.1:{gw.port}"
                self._ready.set()
                await self._stop.wait()
        except BaseException as exc:  # surfaced to the test thread
            self._error = exc
            self._ready.set()

    def __enter__(self) -> ThreadedGateway:
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None or not self.url:
            raise RuntimeError("the gateway did not start") from self._error
        headers = {"X-API-Key": KEY}
        session = requests.post(f"{self.url}/api/v1/chat/sessions", json={"agent_id": "default"}, headers=headers,
                                timeout=10).json()["data"]
        sent = requests.post(f"{self.url}/api/v1/chat/sessions/{session['id']}/messages", json={"content": "hi"},
                             headers=headers, timeout=10).json()["data"]
        self.session_id, self.execution_id = session["id"], sent["execution_id"]
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)


@pytest.fixture(scope="module")
def failures() -> Iterator[FailureLog]:
    handler = FailureLog()
    for name in FAILURE_LOGGERS:
        logging.getLogger(name).addHandler(handler)
    try:
        yield handler
    finally:
        for name in FAILURE_LOGGERS:
            logging.getLogger(name).removeHandler(handler)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, failures: FailureLog) -> Iterator[ThreadedGateway]:
    with ThreadedGateway(tmp_path_factory.mktemp("fuzz")) as threaded:
        yield threaded


# -- the REST API, from its OpenAPI description ---------------------------------------------------

REST_CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
OPERATIONS = [
    (result.ok().method.upper(), result.ok().path)
    for result in schemathesis.openapi.from_dict(openapi_document("http://127.0.0.1/api/v1", "fuzz-bot"))
    .get_all_operations()
]


def real_ids(case: Any, served: ThreadedGateway) -> None:
    """Half the time, aim at a session or execution that exists, so the fuzzer gets past the 404."""
    for name, real in (("session_id", served.session_id), ("execution_id", served.execution_id)):
        value = (case.path_parameters or {}).get(name)
        if isinstance(value, str) and len(value) % 2 == 0:
            case.path_parameters[name] = real


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])
@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_the_rest_api_never_fails_on_any_input(method: str, path: str, mode: GenerationMode,
                                               served: ThreadedGateway) -> None:
    document = requests.get(f"{served.url}/api/v1/openapi.json", timeout=10).json()
    operation = schemathesis.openapi.from_dict(document)[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=REST_EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def call(case: Any) -> None:
        real_ids(case, served)
        # Now and then no key, or one that is not UTF-8 (requests sends str headers as Latin-1).
        headers = [{}, {"X-API-Key": "cl\xe9-" + KEY}, *[{"X-API-Key": KEY}] * 3][len(repr(case.body)) % 5]
        response = case.call(base_url=f"{served.url}/api/v1", headers=headers, timeout=30)
        if mode is GenerationMode.POSITIVE:
            case.validate_response(response, checks=REST_CHECKS)
        assert response.status_code < 500, (response.status_code, response.text[:300])
        if response.status_code >= 400:
            body = response.json()
            assert set(body) == {"error"} and isinstance(body["error"].get("message"), str), body

    call()


# -- the widget socket, with frames made up ------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
frame_ids = st.one_of(st.from_regex(r"\A[A-Za-z0-9_-]{1,64}\Z"), st.text(max_size=70), st.integers(), st.none())
FIELDS = ("session_id", "after", "handler", "text", "attachments", "block_id", "value", "name", "payload", "file_id")
well_formed = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["hello", "resume", "message", "button", "action", "upload_done", "stop"])
        | st.text(max_size=12),
        "id": frame_ids,
    },
    optional={
        field: json_values | st.sampled_from(["support", "refresh", "", "x" * 65]) | st.lists(
            st.fixed_dictionaries({"file_id": st.text(max_size=30)}), max_size=3)
        for field in FIELDS
    },
).map(json.dumps)
raw_text = st.text(max_size=200) | json_values.map(json.dumps)
conversations = st.lists(st.one_of(well_formed, raw_text, st.binary(max_size=50)), min_size=1, max_size=8)


async def converse(url: str, frames: list[str | bytes], session_id: str) -> list[dict[str, Any]]:
    """Say hello (half the time to an existing session), send the frames, collect the answers."""
    received: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as http, http.ws_connect(f"{url}/ws") as ws:
        if len(frames) % 2:
            await ws.send_json({"type": "hello", "id": "h0", "session_id": None, "after": None})
        for frame in frames:
            if isinstance(frame, bytes):
                await ws.send_bytes(frame)
            else:
                await ws.send_str(frame)
        await ws.send_json({"type": "hello", "id": "last", "session_id": session_id, "after": None})
        async with asyncio.timeout(10):
            while True:  # until the gateway answers the last hello: every frame before it was handled
                message = await ws.receive()
                assert message.type == aiohttp.WSMsgType.TEXT, f"the server closed the socket: {message}"
                frame = json.loads(message.data)
                received.append(frame)
                if frame.get("type") == "ready" and frame.get("session_id") == session_id:
                    return received
                if frame.get("type") == "error" and frame.get("id") == "last":
                    return received


@given(frames=conversations)
@settings(max_examples=FRAME_EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_the_socket_answers_any_frames_in_the_protocols_shape(frames: list[str | bytes], served: ThreadedGateway):
    received = asyncio.run(converse(served.url, frames, served.session_id))
    for frame in received:
        assert isinstance(frame, dict) and frame.get("type") in SERVER_FRAMES, frame
        if frame["type"] == "error":
            assert frame.get("code") in ERROR_CODES, frame  # never "internal": that is a server failure
            assert isinstance(frame.get("message"), str) and frame["message"]


# -- afterwards -----------------------------------------------------------------------------------


def test_the_gateway_still_serves_and_logged_no_failure(served: ThreadedGateway, failures: FailureLog) -> None:
    health = requests.get(f"{served.url}/healthz", timeout=10)
    assert health.status_code == 200 and health.json()["status"] == "ok"
    sessions = requests.get(f"{served.url}/api/v1/chat/sessions", headers={"X-API-Key": KEY}, timeout=10)
    assert sessions.status_code == 200 and sessions.json()["meta"]["total"] >= 1  # some the fuzzer made
    async def chat() -> list[dict[str, Any]]:  # a whole turn over the socket still works
        async with aiohttp.ClientSession() as http, http.ws_connect(f"{served.url}/ws") as ws:
            await ws.send_json({"type": "hello", "id": "h", "session_id": None, "after": None})
            await ws.send_json({"type": "message", "id": "m", "text": "still here?"})
            frames: list[dict[str, Any]] = []
            async with asyncio.timeout(10):
                while not frames or frames[-1].get("type") != "turn_end":
                    frames.append(await ws.receive_json())
            return frames

    replies = [f["message"]["text"] for f in asyncio.run(chat()) if f["type"] == "message"]
    assert replies == ["echo: still here?"]
    assert failures.records == []
