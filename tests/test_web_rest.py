"""The REST + SSE API against a real running gateway, driven by the official ``promptrails`` SDK
(sync and async) and, where the SDK hides the wire, by raw HTTP."""

from __future__ import annotations

import asyncio
import json
import logging

import aiohttp
import pytest
from promptrails import AsyncPromptRails, PromptRails
from promptrails.exceptions import NotFoundError, ServerError, UnauthorizedError, ValidationError

import gateway
from adapters.web.outbox import session_topic
from adapters.web.testing import base_url, running_gateway
from tests.support import until

KEY = "key-one"
OTHER_KEY = "key-two"


def make_app(calls: list[str] | None = None) -> gateway.App:
    app = gateway.App("echo-bot")

    @app.message()
    async def echo(session: gateway.Session, msg: gateway.Message) -> None:
        text = msg.text
        if calls is not None:
            calls.append(text)
        if text == "boom":
            raise RuntimeError("the handler failed on purpose")
        if text.startswith("stream "):
            async with session.stream_reply() as reply:
                for word in text.removeprefix("stream ").split():
                    reply.write(word + " ")
                    await asyncio.sleep(0.01)
            return
        if text.startswith("slow "):
            await asyncio.sleep(float(text.removeprefix("slow ")))
        if text.startswith("ask "):
            approved = await session.prompt_approval(text.removeprefix("ask "), timeout=30)
            await session.reply("approved" if approved else "rejected")
            return
        if text == "two":
            await session.reply("one")
            await session.reply("two")
            return
        if text == "extras":
            await session.notify("Searching")
            await session.show_suggestions(["a", "b"])
        await session.reply("echo: " + text)

    @app.message("support")
    async def support(session: gateway.Session, msg: gateway.Message) -> None:
        await session.reply("support: " + msg.text)

    return app


@pytest.fixture
async def gw(tmp_path):
    async with running_gateway(make_app(), tmp_path, web={"api_keys": [KEY, OTHER_KEY], "send_timeout": 10}) as gw:
        yield gw


def client(gw, key: str = KEY, **options) -> AsyncPromptRails:
    return AsyncPromptRails(key, base_url=base_url(gw), max_retries=0, **options)


async def test_sync_sdk_creates_lists_gets_and_deletes_sessions(gw):
    def run() -> None:
        sdk = PromptRails(KEY, base_url=base_url(gw), max_retries=0)
        created = [sdk.chat.create_session(agent_id="default", title=f"t{i}", metadata={"i": i}) for i in range(3)]
        assert created[0].agent_id == "default"
        assert created[0].title == "t0" and created[0].metadata == {"i": 0}
        assert created[0].created_at.endswith("Z")
        got = sdk.chat.get_session(created[1].id)
        assert (got.id, got.title, got.metadata) == (created[1].id, "t1", {"i": 1})
        page1 = sdk.chat.list_sessions(page=1, limit=2)
        assert page1.meta.total == 3 and page1.meta.pages == 2 and page1.meta.limit == 2
        assert [s.id for s in page1.data] == [created[2].id, created[1].id]  # newest first
        page2 = sdk.chat.list_sessions(page=2, limit=2)
        assert [s.id for s in page2.data] == [created[0].id]
        sdk.chat.delete_session(created[0].id)
        with pytest.raises(NotFoundError):
            sdk.chat.get_session(created[0].id)
        with pytest.raises(NotFoundError):
            sdk.chat.delete_session(created[0].id)
        assert sdk.chat.list_sessions().meta.total == 2

    await asyncio.to_thread(run)


@pytest.mark.parametrize("flavour", ["sync", "async"])
async def test_each_sdk_runs_every_chat_call(gw, flavour):
    """The issue's list, with the sync and with the async client: create, list, get and delete
    sessions, send and list messages, stream a reply (and rate it)."""
    if flavour == "async":
        sdk: PromptRails | AsyncPromptRails = client(gw)

        async def call(method, *args, **kwargs):
            return await method(*args, **kwargs)

        async def stream(session_id: str, content: str) -> list:
            return [e async for e in sdk.chat.send_message_stream(session_id, content=content)]
    else:
        sdk = PromptRails(KEY, base_url=base_url(gw), max_retries=0)

        async def call(method, *args, **kwargs):
            return await asyncio.to_thread(method, *args, **kwargs)

        async def stream(session_id: str, content: str) -> list:
            return await asyncio.to_thread(lambda: list(sdk.chat.send_message_stream(session_id, content=content)))

    chat = sdk.chat
    first = await call(chat.create_session, agent_id="default", title="first", metadata={"n": 1})
    second = await call(chat.create_session, agent_id="support")
    assert (first.title, first.metadata, second.agent_id) == ("first", {"n": 1}, "support")
    listed = await call(chat.list_sessions, page=1, limit=1)
    assert [s.id for s in listed.data] == [second.id] and (listed.meta.total, listed.meta.pages) == (2, 2)
    got = await call(chat.get_session, first.id)
    assert (got.id, got.agent_id, got.title) == (first.id, "default", "first")

    reply = await call(chat.send_message, first.id, content="héllo")
    assert (reply.role, reply.content, reply.session_id) == ("assistant", "echo: héllo", first.id)
    events = await stream(first.id, "stream a b")
    assert [events[0].type, events[-1].type] == ["execution", "done"]
    assert "".join(e.content for e in events if e.type == "content") == "a b " == events[-1].output["content"]
    messages = await call(chat.list_messages, first.id, page=1, limit=10)
    assert [(m.role, m.content) for m in messages.data] == [
        ("user", "héllo"),
        ("assistant", "echo: héllo"),
        ("user", "stream a b"),
        ("assistant", "a b "),
    ]
    assert messages.data[1].id == reply.id and messages.data[2].id == events[0].user_message_id
    rated = await call(chat.submit_feedback, first.id, execution_id=events[0].execution_id, value=1)
    assert rated.submitted is True
    assert (await call(chat.send_message, second.id, content="hi")).content == "support: hi"

    await call(chat.delete_session, first.id)
    with pytest.raises(NotFoundError):
        await call(chat.get_session, first.id)
    with pytest.raises(NotFoundError):
        await call(chat.list_messages, first.id)
    assert [s.id for s in (await call(chat.list_sessions)).data] == [second.id]


async def test_async_sdk_sends_and_lists_messages(gw):
    sdk = client(gw)
    session = await sdk.chat.create_session(agent_id="default")
    reply = await sdk.chat.send_message(session.id, content="héllo")
    assert (reply.role, reply.content, reply.session_id) == ("assistant", "echo: héllo", session.id)
    await sdk.chat.send_message(session.id, content="again")
    listed = await sdk.chat.list_messages(session.id)
    assert [(m.role, m.content) for m in listed.data] == [
        ("user", "héllo"),
        ("assistant", "echo: héllo"),
        ("user", "again"),
        ("assistant", "echo: again"),
    ]
    assert listed.data[1].id == reply.id
    page = await sdk.chat.list_messages(session.id, page=2, limit=3)
    assert [m.content for m in page.data] == ["echo: again"] and page.meta.pages == 2


async def test_send_message_returns_the_hybrid_shape(gw):
    sdk = client(gw)
    session = await sdk.chat.create_session(agent_id="default")
    async with aiohttp.ClientSession() as http:
        url = f"{base_url(gw)}/api/v1/chat/sessions/{session.id}/messages"
        async with http.post(url, json={"content": "two"}, headers={"X-API-Key": KEY}) as response:
            assert response.status == 201
            data = (await response.json())["data"]
    assert data["role"] == "assistant" and data["content"] == "two"
    assert data["assistant_message"]["id"] == data["id"]
    assert [m["content"] for m in data["assistant_messages"]] == ["one", "two"]
    assert data["user_message"]["role"] == "user" and data["user_message"]["content"] == "two"
    assert data["execution_id"]


def _counting_turn_reads(gw, monkeypatch) -> list[str]:
    """The inbound ids ``send_message`` read back from the store."""
    reads: list[str] = []
    read = gw.sessions.turn_messages

    async def counted(session_id: str, inbound_id: str):
        reads.append(inbound_id)
        return await read(session_id, inbound_id)

    monkeypatch.setattr(gw.sessions, "turn_messages", counted)
    return reads


async def test_send_message_answers_from_the_replies_it_saw_like_the_store(gw, monkeypatch):
    """A turn run in this process is answered from the replies its request saw on the bus, with
    exactly what the store holds: the same ids, roles, contents, metadata and created_at (a
    stored message's created_at is its id's instant, gateway.ids)."""
    sdk = client(gw)
    session = await sdk.chat.create_session(agent_id="default")
    reads = _counting_turn_reads(gw, monkeypatch)
    async with aiohttp.ClientSession(headers={"X-API-Key": KEY}) as http:
        url = f"{base_url(gw)}/api/v1/chat/sessions/{session.id}/messages"
        async with http.post(url, json={"content": "two"}) as response:
            assert response.status == 201
            data = (await response.json())["data"]
        async with http.get(url) as response:
            listed = (await response.json())["data"]
    assert reads == []
    told = [data["user_message"], *data["assistant_messages"]]
    assert told == listed
    assert data["assistant_message"] == data["assistant_messages"][-1]
    assert data["id"] == listed[-1]["id"] and data["execution_id"]


async def test_send_message_reads_a_streamed_turn_back_from_the_store(gw, monkeypatch):
    """A streamed reply's stored time and final status are not on the bus: the store answers."""
    sdk = client(gw)
    session = await sdk.chat.create_session(agent_id="default")
    reads = _counting_turn_reads(gw, monkeypatch)
    reply = await sdk.chat.send_message(session.id, content="stream x y")
    assert reply.content == "x y " and len(reads) == 1
    listed = await sdk.chat.list_messages(session.id)
    assert (listed.data[-1].id, listed.data[-1].created_at) == (reply.id, reply.created_at)
    assert (await sdk.chat.send_message(session.id, content="plain")).content == "echo: plain"
    assert len(reads) == 1  # the ledger forgot the streamed turn once it ended


async def test_messages_to_a_known_session_skip_its_read_and_a_deleted_one_is_still_404(gw, monkeypatch):
    """send_message remembers a session's owner (owners.py); one deleted behind this process's
    back (as another web process would) is refused as the message is recorded."""
    sdk, other = client(gw), client(gw, OTHER_KEY)
    session = await sdk.chat.create_session(agent_id="support")
    reads: list[str] = []
    get = gw.sessions.get

    async def counted(session_id: str):
        reads.append(session_id)
        return await get(session_id)

    monkeypatch.setattr(gw.sessions, "get", counted)
    assert (await sdk.chat.send_message(session.id, content="one")).content == "support: one"
    assert (await sdk.chat.send_message(session.id, content="two")).content == "support: two"
    assert reads == []
    with pytest.raises(NotFoundError):
        await other.chat.send_message(session.id, content="not yours")
    await gw.sessions.delete(session.id)
    async with aiohttp.ClientSession(headers={"X-API-Key": KEY}) as http:
        url = f"{base_url(gw)}/api/v1/chat/sessions/{session.id}/messages/stream"
        async with http.post(url, json={"content": "three"}) as response:
            assert response.status == 404 and (await response.json())["error"]["code"] == "not_found"
    assert reads == []
    with pytest.raises(NotFoundError):
        await sdk.chat.send_message(session.id, content="four")
    assert reads == [session.id]  # forgotten after the first refusal, then read (and not found)


def test_the_turn_ledger_names_this_process_only_for_turns_told_in_full():
    from adapters.web.outbox import TurnLedger

    ledger = TurnLedger()
    assert ledger.told_all("t1") == ledger.process
    ledger.untold("t2")
    assert ledger.told_all("t2") is None
    assert ledger.told_all("t2") == ledger.process  # forgotten once its turn ended
    assert ledger.told_all(None) is None


async def test_an_outbox_ends_a_turn_told_in_full_only_without_streams_or_failed_sends():
    from adapters.web.outbox import TurnLedger, WebOutbox

    class Bus:
        def __init__(self) -> None:
            self.events: list[dict] = []
            self.failing = False

        async def publish(self, topic: str, event: dict) -> None:
            if self.failing:
                raise ConnectionError("the bus is down")
            self.events.append(event)

    bus, ledger = Bus(), TurnLedger()

    def outbox(turn: str) -> WebOutbox:
        return WebOutbox(bus, "s1", turn, min_interval=0, ledger=ledger)

    await outbox("plain").send_text("m1", "hi")
    await outbox("plain").end_turn("plain", None)
    outbox("streamed").open_stream("m2")
    await outbox("streamed").end_turn("streamed", None)
    bus.failing = True
    with pytest.raises(ConnectionError):
        await outbox("failed").send_text("m3", "lost")
    bus.failing = False
    await outbox("failed").end_turn("failed", None)
    ends = {e["inbound_id"]: e["told_all"] for e in bus.events if e["type"] == "turn_end"}
    assert ends == {"plain": ledger.process, "streamed": None, "failed": None}


async def test_async_sdk_streams_a_reply(gw):
    sdk = client(gw)
    session = await sdk.chat.create_session(agent_id="default")
    events = [e async for e in sdk.chat.send_message_stream(session.id, content="stream a b c")]
    kinds = [e.type for e in events]
    assert kinds[0] == "execution" and kinds[-1] == "done"
    assert set(kinds[1:-1]) == {"content"}
    streamed = "".join(e.content for e in events if e.type == "content")
    assert streamed == "a b c " == events[-1].output["content"]
    listed = await sdk.chat.list_messages(session.id)
    assert listed.data[0].id == events[0].user_message_id
    assert [m.content for m in listed.data] == ["stream a b c", "a b c "]


async def test_sync_sdk_streams_a_reply(gw):
    def run() -> list:
        sdk = PromptRails(KEY, base_url=base_url(gw), max_retries=0)
        session = sdk.chat.create_session(agent_id="default")
        return list(sdk.chat.send_message_stream(session.id, content="stream x y"))

    events = await asyncio.to_thread(run)
    assert events[0].type == "execution"
    assert "".join(e.content for e in events if e.type == "content") == "x y "
    assert events[-1].type == "done"


async def test_stream_of_several_messages_blocks_and_notify(gw):
    sdk = client(gw)
    session = await sdk.chat.create_session(agent_id="default")
    events = [e async for e in sdk.chat.send_message_stream(session.id, content="two")]
    assert "".join(e.content for e in events if e.type == "content") == "one\n\ntwo" == events[-1].output["content"]
    # notify and blocks are events the SDK skips; the raw stream carries them.
    async with aiohttp.ClientSession() as http:
        url = f"{base_url(gw)}/api/v1/chat/sessions/{session.id}/messages/stream"
        async with http.post(url, json={"content": "extras"}, headers={"X-API-Key": KEY}) as response:
            raw = (await response.read()).decode()
    names = [line.removeprefix("event: ") for line in raw.split("\n") if line.startswith("event: ")]
    assert names[0] == "execution" and names[-1] == "done"
    assert "notify" in names and "block" in names
    extras = [e async for e in sdk.chat.send_message_stream(session.id, content="extras")]
    assert {e.type for e in extras} == {"execution", "content", "done"}


async def test_sse_framing_is_exactly_what_the_sdk_parses(gw):
    sdk = client(gw)
    session = await sdk.chat.create_session(agent_id="default")
    async with aiohttp.ClientSession() as http:
        url = f"{base_url(gw)}/api/v1/chat/sessions/{session.id}/messages/stream"
        headers = {"X-API-Key": KEY, "Accept": "text/event-stream"}
        async with http.post(url, json={"content": "stream p q"}, headers=headers) as response:
            assert response.headers["Content-Type"] == "text/event-stream; charset=utf-8"
            assert response.headers.get("Content-Encoding") is None
            body = await response.read()  # returns only because the server closes after done
    text = body.decode()
    assert "\r" not in text and text.endswith("\n\n")
    for frame in text.strip("\n").split("\n\n"):
        lines = frame.split("\n")
        if lines[0].startswith(":"):
            continue
        assert len(lines) == 2 and lines[0].startswith("event: ") and lines[1].startswith("data: ")
        data = json.loads(lines[1].removeprefix("data: "))
        assert isinstance(data, dict) and "type" not in data


async def test_agent_id_selects_the_named_handler(gw):
    sdk = client(gw)
    support = await sdk.chat.create_session(agent_id="support")
    assert support.agent_id == "support"
    assert (await sdk.chat.send_message(support.id, content="hi")).content == "support: hi"
    by_app_name = await sdk.chat.create_session(agent_id="echo-bot")
    assert (await sdk.chat.get_session(by_app_name.id)).agent_id == "echo-bot"
    assert (await sdk.chat.send_message(by_app_name.id, content="hi")).content == "echo: hi"
    with pytest.raises(NotFoundError):
        await sdk.chat.create_session(agent_id="nobody")
    with pytest.raises(ValidationError):
        await sdk.chat.create_session(agent_id="")


async def test_feedback(gw):
    sdk = client(gw)
    session = await sdk.chat.create_session(agent_id="default")
    events = [e async for e in sdk.chat.send_message_stream(session.id, content="hi")]
    execution_id = events[0].execution_id
    result = await sdk.chat.submit_feedback(session.id, execution_id=execution_id, value=1)
    assert result.submitted is True
    with pytest.raises(ValidationError):
        await sdk.chat.submit_feedback(session.id, execution_id=execution_id, value=5)
    with pytest.raises(NotFoundError):
        await sdk.chat.submit_feedback(session.id, execution_id="01UNKNOWN", value=-1)
    assert await gw.store.messages.feedback(session.id) == {execution_id: 1}
    await sdk.chat.submit_feedback(session.id, execution_id=execution_id, value=-1)  # changing one's mind
    assert await gw.store.messages.feedback(session.id) == {execution_id: -1}


async def test_executions_get_stream_and_cancel(gw):
    sdk = client(gw)
    session = await sdk.chat.create_session(agent_id="default")
    events = [e async for e in sdk.chat.send_message_stream(session.id, content="two")]
    execution_id = events[0].execution_id
    execution = await sdk.executions.get(execution_id)
    assert (execution.status, execution.session_id) == ("completed", session.id)
    assert execution.input == {"content": "two"} and execution.output == {"content": "one\n\ntwo"}
    replay = [e async for e in sdk.executions.stream(execution_id)]
    assert [e.type for e in replay] == ["execution", "content", "done"]
    assert replay[-1].output == {"content": "one\n\ntwo"}
    failed = [e async for e in sdk.chat.send_message_stream(session.id, content="boom")]
    assert (await sdk.executions.get(failed[0].execution_id)).status == "failed"
    assert [e.type for e in [e async for e in sdk.executions.stream(failed[0].execution_id)]][-1] == "error"
    with pytest.raises(NotFoundError):
        await sdk.executions.get("01UNKNOWNEXECUTION")
    with pytest.raises(NotFoundError):  # another key's execution is not visible
        await client(gw, OTHER_KEY).executions.get(execution_id)
    # A running turn: streamed live, then cancelled.
    running = sdk.chat.send_message_stream(session.id, content="stream " + "word " * 400)
    first = await running.__anext__()
    live = await sdk.executions.get(first.execution_id)
    assert live.status == "running"
    cancelled = await sdk.executions.cancel(first.execution_id)
    assert cancelled.status in ("cancel_requested", "cancelled")
    rest = [e async for e in running]
    assert rest[-1].type in ("done", "error")
    for _ in range(100):
        if (await sdk.executions.get(first.execution_id)).status == "cancelled":
            break
        await asyncio.sleep(0.02)
    assert (await sdk.executions.get(first.execution_id)).status == "cancelled"


async def test_an_approval_prompt_is_answered_through_the_executions_api(gw, caplog):
    caplog.set_level(logging.INFO, logger="chatgate.web.rest")
    sdk, other = client(gw), client(gw, OTHER_KEY)
    session = await sdk.chat.create_session(agent_id="default")
    for route, expected in (("approve", "approved"), ("deny", "rejected")):
        turn = asyncio.create_task(sdk.chat.send_message(session.id, content=f"ask {route}?"))
        inbox = await until(lambda: _nonempty(sdk.executions.approval_inbox()), timeout=10)
        assert inbox.meta.total == 1 and len(inbox.data) == 1
        waiting = inbox.data[0]
        assert (waiting.status, waiting.session_id, waiting.input) == (
            "waiting_approval", session.id, {"content": f"ask {route}?"}
        )
        assert (await sdk.executions.get(waiting.id)).status == "waiting_approval"
        assert (await other.executions.approval_inbox()).data == []  # another key sees none of it
        with pytest.raises(NotFoundError):
            await other.executions.approve(waiting.id)
        answered = await getattr(sdk.executions, route)(waiting.id, reason="checked by ops")
        assert answered.id == waiting.id and answered.status in ("running", "completed")
        assert (await turn).content == expected
        assert (await sdk.executions.get(waiting.id)).status == "completed"
        with pytest.raises(ValidationError, match="not waiting for an approval"):
            await sdk.executions.approve(waiting.id)  # answered once; a second answer is refused
    assert (await sdk.executions.approval_inbox()).data == []
    assert "approved through the API: 'checked by ops'" in caplog.text  # the handler only gets a bool


async def _nonempty(listing):
    page = await listing
    return page if page.data else None


async def test_approval_routes_refuse_bad_input(gw):
    sdk = client(gw)
    session = await sdk.chat.create_session(agent_id="default")
    turn = asyncio.create_task(sdk.chat.send_message(session.id, content="ask bad input?"))
    waiting = (await until(lambda: _nonempty(sdk.executions.approval_inbox()), timeout=10)).data[0]
    url = f"{base_url(gw)}/api/v1/executions/{waiting.id}/approve"
    async with aiohttp.ClientSession() as http:
        for body, status in ((b'{"reason": 5}', 400), (b"{not json", 400), (b"[]", 400), (b"{}", 401)):
            headers = {"Content-Type": "application/json"}
            if status != 401:
                headers["X-API-Key"] = KEY
            async with http.post(url, data=body, headers=headers) as response:
                assert response.status == status
                assert "error" in await response.json()
        async with http.post(f"{base_url(gw)}/api/v1/executions/not-an-id/deny", json={},
                             headers={"X-API-Key": KEY}) as response:
            assert response.status == 404
    assert (await sdk.executions.get(waiting.id)).status == "waiting_approval"  # nothing answered it
    await sdk.executions.deny(waiting.id)
    assert (await turn).content == "rejected"


async def test_a_session_deleted_while_its_turn_runs_ends_the_turn_as_not_found(tmp_path, caplog):
    calls: list[str] = []
    async with running_gateway(make_app(calls), tmp_path, web={"api_keys": [KEY]}) as gw:
        sdk = client(gw)
        for streamed in (False, True):
            calls.clear()
            session = await sdk.chat.create_session(agent_id="default")
            events: list = []
            if streamed:

                async def consume(session_id: str = session.id, into: list = events) -> None:
                    async for event in sdk.chat.send_message_stream(session_id, content="slow 0.5"):
                        into.append(event)

                turn = asyncio.create_task(consume())
            else:
                turn = asyncio.create_task(sdk.chat.send_message(session.id, content="slow 0.5"))
            await until(lambda: calls)
            await sdk.chat.delete_session(session.id)
            if streamed:
                await turn
                assert events[-1].type == "error" and events[-1].message == "the session was deleted"
            else:
                with pytest.raises(NotFoundError, match="deleted"):
                    await turn
            await gw.dispatcher.wait_idle(5)
        assert (await sdk.chat.create_session(agent_id="default")).id  # still serving
    failures = [r for r in caplog.records if r.name == "chatgate.turns" and r.levelname == "ERROR"]
    assert failures == []  # not a handler failure: no traceback, no apology attempted


async def test_errors_are_typed_exceptions(gw):
    sdk = client(gw)
    session = await sdk.chat.create_session(agent_id="default")
    with pytest.raises(UnauthorizedError):
        await client(gw, "wrong-key").chat.list_sessions()
    with pytest.raises(UnauthorizedError):
        await client(gw, "").chat.get_session(session.id)
    # Sessions are scoped per key: another key does not see this one.
    other = client(gw, OTHER_KEY)
    assert (await other.chat.list_sessions()).meta.total == 0
    with pytest.raises(NotFoundError):
        await other.chat.get_session(session.id)
    with pytest.raises(NotFoundError):
        await other.chat.send_message(session.id, content="hi")
    with pytest.raises(NotFoundError):
        await sdk.chat.list_messages("01NOSUCHSESSION")
    with pytest.raises(ValidationError):
        await sdk.chat.send_message(session.id, content="  ")


async def test_a_failing_handler_gives_a_json_error_and_an_error_event(gw):
    sdk = client(gw)
    session = await sdk.chat.create_session(agent_id="default")
    with pytest.raises(ServerError) as raised:
        await sdk.chat.send_message(session.id, content="boom")
    assert raised.value.status_code == 500
    events = [e async for e in sdk.chat.send_message_stream(session.id, content="boom")]
    assert events[0].type == "execution" and events[-1].type == "error"
    assert events[-1].message == "the bot failed to answer"
    # The session keeps working.
    assert (await sdk.chat.send_message(session.id, content="ok")).content == "echo: ok"


async def test_handler_timeout_gives_504_and_error_event(tmp_path):
    settings = {"web": {"api_keys": [KEY], "send_timeout": 10}, "dispatch": {"handler_timeout": 0.2}}
    async with running_gateway(make_app(), tmp_path, **settings) as gw:
        sdk = client(gw)
        session = await sdk.chat.create_session(agent_id="default")
        with pytest.raises(ServerError) as raised:
            await sdk.chat.send_message(session.id, content="slow 2")
        assert raised.value.status_code == 504
        events = [e async for e in sdk.chat.send_message_stream(session.id, content="slow 2")]
        assert events[-1].type == "error" and "too long" in events[-1].message


async def test_send_timeout_answers_with_the_user_message(tmp_path):
    async with running_gateway(make_app(), tmp_path, web={"api_keys": [KEY], "send_timeout": 0.2}) as gw:
        sdk = client(gw)
        session = await sdk.chat.create_session(agent_id="default")
        answer = await sdk.chat.send_message(session.id, content="slow 0.6")
        assert (answer.role, answer.content) == ("user", "slow 0.6")
        await gw.dispatcher.wait_idle(5)
        listed = await sdk.chat.list_messages(session.id)
        assert [m.content for m in listed.data] == ["slow 0.6", "echo: slow 0.6"]


async def test_a_retried_post_does_not_run_the_handler_twice(tmp_path):
    calls: list[str] = []
    async with running_gateway(make_app(calls), tmp_path, web={"api_keys": [KEY]}) as gw:
        # The SDK gives up after 0.3 s, waits 1 s and re-POSTs the same content: it must join
        # the turn that is still running rather than start another one.
        sdk = AsyncPromptRails(KEY, base_url=base_url(gw), max_retries=1, timeout=0.3)
        session = await sdk.chat.create_session(agent_id="default")
        answer = await sdk.chat.send_message(session.id, content="slow 0.5")
        assert answer.content == "echo: slow 0.5"
        assert calls == ["slow 0.5"]
        # Two identical POSTs at once: one turn, one answer.
        sdk = client(gw)
        first, second = await asyncio.gather(
            sdk.chat.send_message(session.id, content="same"), sdk.chat.send_message(session.id, content="same")
        )
        assert first.id == second.id and calls.count("same") == 1
        listed = await sdk.chat.list_messages(session.id, limit=100)
        assert [m.content for m in listed.data].count("same") == 1


async def test_the_same_content_after_the_dedup_window_runs_again(tmp_path):
    calls: list[str] = []
    async with running_gateway(make_app(calls), tmp_path, web={"api_keys": [KEY], "dedup_window": 0.05}) as gw:
        sdk = client(gw)
        session = await sdk.chat.create_session(agent_id="default")
        await sdk.chat.send_message(session.id, content="again")
        await asyncio.sleep(0.2)  # past the window: a user saying the same thing twice, not a retry
        await sdk.chat.send_message(session.id, content="again")
        assert calls == ["again", "again"]
        listed = await sdk.chat.list_messages(session.id, limit=100)
        assert [m.content for m in listed.data] == ["again", "echo: again", "again", "echo: again"]


def test_sse_frames_are_lf_only_with_one_data_line():
    from adapters.web.rest.sse import sse_frame

    frame = sse_frame("content", {"content": "line one\nline two\r\n", "emoji": "é😀"})
    assert frame.count(b"\n") == 3 and b"\r" not in frame
    event, data, blank = frame.decode().split("\n", 2)
    assert event == "event: content" and blank == "\n"
    assert json.loads(data.removeprefix("data: ")) == {"content": "line one\nline two\r\n", "emoji": "é😀"}
    with pytest.raises(ValueError):
        sse_frame("bad\nname", {})


def test_envelopes_dates_and_pagination():
    from datetime import UTC, datetime, timedelta, timezone

    from adapters.web.wire import block_text, page_meta, rfc3339

    assert page_meta(42, 1, 20) == {"total": 42, "page": 1, "limit": 20, "pages": 3, "total_pages": 3}
    assert page_meta(0, 1, 20)["pages"] == 0
    assert rfc3339(datetime(2026, 1, 2, 3, 4, 5, 123456)) == "2026-01-02T03:04:05.123Z"
    assert rfc3339(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)) == "2026-01-02T03:04:05.000Z"
    two_hours_east = timezone(timedelta(hours=2))
    assert rfc3339(datetime(2026, 1, 2, 5, 4, 5, 999999, tzinfo=two_hours_east)) == "2026-01-02T03:04:05.999Z"
    assert rfc3339(datetime(9, 1, 2, 3, 4, 5)) == "0009-01-02T03:04:05.000Z"  # RFC 3339: four digits
    assert rfc3339(None) == ""
    suggestions = {"type": "suggestions", "payload": {"title": "Pick", "suggestions": [{"label": "A"}, {"label": "B"}]}}
    assert block_text(suggestions) == "Pick\n- A\n- B"
    assert block_text({"type": "task_card", "payload": {"name": "Export", "status": "done"}}) == "Export: done"
    step = {"type": "step_status", "payload": {"label": "Fetched", "detail": "3 pages", "status": "completed"}}
    assert block_text(step) == "Fetched: 3 pages"
    assert block_text({"type": "activity", "payload": {"label": "Searching", "activity_id": "a1"}}) == "Searching"
    assert block_text({"type": "mystery", "payload": {"x": 1}}) == '{"x": 1}'


async def test_blocks_are_listed_as_system_messages(gw):
    sdk = client(gw)
    session = await sdk.chat.create_session(agent_id="default")
    await sdk.chat.send_message(session.id, content="extras")
    listed = await sdk.chat.list_messages(session.id)
    roles = [(m.role, m.content) for m in listed.data]
    assert roles == [("user", "extras"), ("system", "- a\n- b"), ("assistant", "echo: extras")]
    assert listed.data[1].metadata["block"]["type"] == "suggestions"


@pytest.mark.redis
@pytest.mark.postgres
async def test_rest_and_stream_over_the_redis_bus_and_postgres(tmp_path, redis_url, postgres_url):
    """The scaled-out seams: every bus event crosses Redis as JSON, the store is PostgreSQL."""
    settings = {"web": {"api_keys": [KEY]}, "redis": {"url": redis_url}, "database": {"url": postgres_url}}
    async with running_gateway(make_app(), tmp_path, **settings) as gw:
        sdk = client(gw)
        session = await sdk.chat.create_session(agent_id="support")
        assert (await sdk.chat.send_message(session.id, content="hi")).content == "support: hi"
        other = await sdk.chat.create_session(agent_id="default")
        events = [e async for e in sdk.chat.send_message_stream(other.id, content="stream r s")]
        assert "".join(e.content for e in events if e.type == "content") == "r s "
        assert events[-1].type == "done"


@pytest.mark.redis
async def test_a_turns_events_cross_redis_under_the_configured_key_prefix(tmp_path, redis_url):
    """``redis.key_prefix`` names the bus's channels as it names the shared budgets: a gateway
    with its own prefix publishes a turn's events on ``<prefix>:<session's topic>`` and nothing on
    the default ``chatgate:`` channel of that session (pub/sub channels ignore the database number)."""
    import secrets

    import redis.asyncio as redis

    prefix = f"chatgate-test-{secrets.token_hex(4)}"
    settings = {"web": {"api_keys": [KEY]}, "redis": {"url": redis_url, "key_prefix": prefix}}
    async with running_gateway(make_app(), tmp_path, **settings) as gw:
        sdk = client(gw)
        session = await sdk.chat.create_session(agent_id="default")
        watcher = redis.from_url(redis_url)
        pubsub = watcher.pubsub()
        try:
            topic = session_topic(session.id)
            await pubsub.subscribe(f"{prefix}:{topic}", f"chatgate:{topic}")
            assert (await sdk.chat.send_message(session.id, content="hi")).content == "echo: hi"
            seen: list[bytes] = []  # until nothing more came for half a second
            quiet_since = asyncio.get_running_loop().time()
            while asyncio.get_running_loop().time() - quiet_since < 0.5:
                event = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
                if event is not None:
                    seen.append(event["channel"])
                    quiet_since = asyncio.get_running_loop().time()
        finally:
            await pubsub.aclose()
            await watcher.aclose()
    assert seen, "the turn published nothing on Redis"
    assert set(seen) == {f"{prefix}:{topic}".encode()}


async def test_rest_events_are_keyed_in_the_order_they_arrive(gw):
    """A REST message's dedup key only has to be unique (a re-POST is found by its content's
    repeat key): it is a fresh time-ordered id, so the inbox's unique index grows at one end, and
    the turns of a group commit share its last page instead of a random page each (a random key
    under the session's prefix cost a REST turn 6 % of its CPU, bench/README.md)."""
    import sqlite3

    sdk = client(gw)
    sessions = [await sdk.chat.create_session(agent_id="default") for _ in range(3)]
    for n in range(6):
        await sdk.chat.send_message(sessions[n % 3].id, content=f"m{n}")
    with sqlite3.connect(gw.settings.database.url.split("///", 1)[1]) as db:
        keys = [row[0] for row in db.execute("SELECT dedup_key FROM inbox ORDER BY id")]
    assert len(keys) == 6 and all(key.startswith("api:") for key in keys)
    assert keys == sorted(keys)
