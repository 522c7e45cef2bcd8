"""Every Session method, through the real Gateway (store, dispatcher) on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import tempfile

import aiohttp
import pytest

import gateway
from gateway.context import current_session
from gateway.testing import TestClient


def make_app() -> gateway.App:
    app = gateway.App("session-tests", image=object(), cpu=1, memory=256, channels=[gateway.Telegram()])

    @app.message()
    async def handle(session: gateway.Session, msg: gateway.Message) -> None:
        text = msg.text
        if text == "reply":
            await session.reply("one")
            await session.reply("two")
        elif text == "notify":
            await session.notify("  working  ", detail="step 1")
            await session.notify("", detail="")
            await session.reply("done")
        elif text == "stream":
            async with session.stream_reply() as reply:
                for token in ["ha", "ha", "hah", "a"]:
                    reply.write(token)
            await session.reply(f"streamed {reply.text!r}")
        elif text == "stream-from":
            async def tokens():
                for t in ["a", None, "b", "c"]:
                    yield t

            full = await session.stream_reply_from(tokens())
            await session.reply(f"full={full}")
        elif text == "stream-iter":
            await session.stream(iter(["x", "y"]))
        elif text == "history":
            await session.reply(json.dumps([[m.sender, m.text] for m in session.history]))
        elif text == "chat-messages":
            messages = session.chat_messages(msg)
            await session.reply(json.dumps(messages))
        elif text == "chat-messages-cls":
            class Pair:
                def __init__(self, role: str, content: str) -> None:
                    self.role, self.content = role, content

            pairs = session.chat_messages(msg, cls=Pair)
            await session.reply(",".join(p.role for p in pairs))
        elif text == "show":
            await session.show(gateway.Block("custom", {"n": 1}, id="b1"))
            await session.show(gateway.Block("custom", {"n": 2}, id="b1"))
        elif text == "mixed":
            await session.reply("a")
            await session.show(gateway.Block("custom", {"n": 0}))
            await session.notify("between")
            await session.reply("b")
        elif text == "empty-stream":
            async with session.stream_reply():
                pass
        elif text == "status":
            sid = await session.show_step("Fetching", detail="page 1")
            await session.show_step("Fetching", status="done", step_id=sid)
            aid = await session.show_activity("Read a file", icon="file", links=[{"label": "f", "url": "u"}])
            await session.show_activity("Read two files", activity_id=aid, fields={"n": 2})
            await session.emit("progress", {"pct": 50})
        elif text == "data-ops":
            session.data |= {"merged": 1}
            session.data.setdefault("table", {"x": 1})
            session.data["table"] |= {"y": 2}
            session.data.setdefault("repeat", ["r"])
            session.data["repeat"] *= 2
        elif text == "hold":
            app.held.set()
            await app.release.wait()
            session.data["from_turn"] = True
        elif text == "title":
            await session.set_title("A new title")
        elif text == "image-url":
            await session.show_image("https://example.invalid/cat.png", alt="cat", width=100)
        elif text.startswith("image-file "):
            await session.show_image(text.split(" ", 1)[1], alt="local")
        elif text == "integration-card":
            await session.show_integration("github", reason="to read repos")
        elif text == "integration-prompt":
            try:
                await session.require_integration("github", timeout=1)
            except gateway.IntegrationDeclined as exc:
                await session.reply(f"declined: {exc}")
        elif text == "task-card":
            await session.show_task("task-123", message="crunching")
        elif text == "file":
            upload = await session.prompt_file(message="send it", accept=".txt", timeout=5)
            data = await upload.download(tempfile.mkdtemp())
            await session.reply(f"got {upload.name} {upload.size} at {data.endswith(upload.name)}")
        elif text == "file-timeout":
            try:
                await session.prompt_file(timeout=0.2)
            except gateway.FileUploadTimeout:
                await session.reply("timed out")
        elif text == "approve":
            approved = await session.prompt_approval("go?", approve_label="Yes", reject_label="No", timeout=5)
            await session.reply(f"approved={approved}")
        elif text == "approve-timeout":
            approved = await session.prompt_approval("go?", timeout=0.2)
            await session.reply(f"approved={approved}")
        elif text == "current":
            await session.reply(f"same={current_session() is session}")
        elif text == "trigger":
            result = await session.trigger_action("double", {"x": 21})
            await session.reply(f"result={result}")
        elif text == "publish":
            await session.publish("published", {"a": [1]})
            session.data["late"] = True
            raise RuntimeError("after publish")
        elif text == "data":
            session.data.setdefault("items", []).append(len(session.data.get("items", [])))
            session.data.setdefault("nested", {})["k"] = "v"
            await session.reply(json.dumps(session.data.get("items")))
        elif text == "raise":
            session.data["before_raise"] = 1
            raise ValueError("the secret internals")
        else:
            await session.reply(f"echo: {text}")

    @app.action("double")
    async def double(session: gateway.Session, event: gateway.Event) -> int:
        return event.payload["x"] * 2

    @app.action("hello")
    async def hello(session: gateway.Session, event: gateway.Event) -> None:
        await session.reply(f"hello {event.payload.get('name')}")

    app.held = asyncio.Event()
    app.release = asyncio.Event()
    return app


@pytest.fixture
async def client(tmp_path, database_url):
    async with TestClient(make_app(), tmp_path, database_url=database_url) as c:
        yield c


async def test_reply_sends_each_message_and_stores_it(client):
    turn = await client.send("reply")
    assert turn.replies == ["one", "two"]
    assert turn.ended and turn.error is None
    messages, total = await client.gateway.store.messages.page(client.default.session_id)
    assert [(m.role, m.text) for m in messages] == [("user", "reply"), ("assistant", "one"), ("assistant", "two")]
    assert total == 3


async def test_notify_is_transient_and_ignores_empty(client):
    turn = await client.send("notify")
    assert turn.notifications == ["working"]
    assert turn.sent[0].detail == "step 1"
    messages, _ = await client.gateway.store.messages.page(client.default.session_id)
    assert "working" not in [m.text for m in messages]


async def test_stream_reply_takes_deltas_even_when_repeated(client):
    turn = await client.send("stream")
    # Capsule's snapshot detection would have produced "haha"; deltas are deltas here.
    assert turn.streams[0].text == "hahahaha"
    assert turn.replies[-1] == "streamed 'hahahaha'"
    messages, _ = await client.gateway.store.messages.page(client.default.session_id)
    assert messages[1].text == "hahahaha" and messages[1].status == "complete"


async def test_stream_reply_from_skips_none_and_returns_text(client):
    turn = await client.send("stream-from")
    assert turn.replies == ["abc", "full=abc"]


async def test_stream_accepts_plain_iterables(client):
    turn = await client.send("stream-iter")
    assert turn.replies == ["xy"]


async def test_history_excludes_current_message_and_keeps_order(client):
    await client.send("first")
    turn = await client.send("history")
    assert json.loads(turn.replies[0]) == [["user", "first"], ["app", "echo: first"]]


async def test_chat_messages_merges_roles_like_capsule(client):
    conv = client.default if client._default else await client.conversation()
    client._default = conv
    await conv.send("reply")  # user, then two app replies -> merged "onetwo"
    turn = await conv.send("chat-messages")
    assert json.loads(turn.replies[0]) == [
        {"role": "user", "content": "reply"},
        {"role": "assistant", "content": "onetwo"},
        {"role": "user", "content": "chat-messages"},
    ]
    turn = await conv.send("chat-messages-cls")
    assert turn.replies[0] == "user,assistant,user,assistant,user"


async def test_chat_messages_leaves_blocks_and_status_out_and_merges_around_them(client):
    conv = await client.conversation()
    await conv.send("mixed")
    turn = await conv.send("chat-messages")
    # Capsule would give "a" + the block's JSON + "b" as the assistant turn.
    assert json.loads(turn.replies[0]) == [
        {"role": "user", "content": "mixed"},
        {"role": "assistant", "content": "ab"},
        {"role": "user", "content": "chat-messages"},
    ]


async def test_chat_messages_leaves_out_a_stream_that_wrote_nothing(client):
    conv = await client.conversation()
    await conv.send("empty-stream")
    turn = await conv.send("chat-messages")
    # The empty reply is stored (it was a stream), but an LLM gets no empty assistant turn,
    # and session.history has no empty entry (Capsule never stores one).
    assert json.loads(turn.replies[0]) == [{"role": "user", "content": "empty-streamchat-messages"}]
    turn = await conv.send("history")
    senders = [sender for sender, _ in json.loads(turn.replies[0])]
    assert senders == ["user", "user", "app"]  # empty-stream, chat-messages and its reply


async def test_chat_messages_may_start_with_the_assistant(tmp_path):
    app = gateway.App("greeter")

    @app.enter()
    async def welcome(session):
        await session.reply("Welcome!")

    @app.message()
    async def handle(session, msg):
        await session.reply(json.dumps(session.chat_messages(msg)))

    async with TestClient(app, tmp_path) as client:
        first = await client.send("hi")
        assert first.replies[0] == "Welcome!"
        assert json.loads(first.replies[-1]) == [
            {"role": "assistant", "content": "Welcome!"}, {"role": "user", "content": "hi"},
        ]
        turn = await client.send("again")  # enter ran once; the stored order puts "hi" (it arrived) first
        assert turn.replies[0] != "Welcome!"
        assert json.loads(turn.replies[-1]) == [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "Welcome!" + first.replies[-1]},
            {"role": "user", "content": "again"},
        ]


async def test_step_activity_and_event_blocks(client):
    turn = await client.send("status")
    steps = [b for b in turn.blocks if b["type"] == "step_status"]
    assert len(steps) == 2 and steps[0]["id"] == steps[1]["id"] == f"step_{steps[0]['payload']['step_id']}"
    assert steps[0]["payload"]["detail"] == "page 1" and steps[1]["payload"]["status"] == "done"
    activities = [b for b in turn.blocks if b["type"] == "activity"]
    assert len(activities) == 2 and activities[0]["id"] == activities[1]["id"]
    assert activities[0]["payload"]["icon"] == "file" and activities[0]["payload"]["links"] == [{"label": "f",
                                                                                                  "url": "u"}]
    assert activities[1]["payload"]["label"] == "Read two files" and activities[1]["payload"]["fields"] == {"n": 2}
    assert turn.block("session_event")["payload"] == {"event": "progress", "payload": {"pct": 50}}
    messages, _ = await client.gateway.store.messages.page(client.default.session_id)
    assert sorted(m.block["type"] for m in messages if m.role == "block") == ["activity", "session_event",
                                                                               "step_status"]


async def test_show_same_block_id_updates_in_place(client):
    turn = await client.send("show")
    assert [b["payload"]["n"] for b in turn.blocks] == [1, 2]
    messages, _ = await client.gateway.store.messages.page(client.default.session_id)
    blocks = [m for m in messages if m.role == "block"]
    assert len(blocks) == 1 and blocks[0].block["payload"] == {"n": 2}


async def test_set_title_updates_session_and_shows_block(client):
    turn = await client.send("title")
    assert turn.block("session_title")["payload"] == {"title": "A new title"}
    record = await client.gateway.store.sessions.get(client.default.session_id)
    assert record.title == "A new title"


async def test_show_image_url_and_local_file_served_signed(client, tmp_path):
    turn = await client.send("image-url")
    assert turn.block("image")["payload"] == {"url": "https://example.invalid/cat.png", "alt": "cat", "width": 100}
    picture = tmp_path / "pic.png"
    picture.write_bytes(b"\x89PNG fake image bytes")
    turn = await client.send(f"image-file {picture}")
    payload = turn.block("image")["payload"]
    assert payload["file_id"] and payload["url"].startswith(client.gateway.public_url + "/files/")
    async with aiohttp.ClientSession() as http:
        async with http.get(payload["url"]) as response:
            assert response.status == 200
            assert await response.read() == b"\x89PNG fake image bytes"
            assert response.content_type == "image/png"
        forged = payload["url"].replace("sig=", "sig=0")
        async with http.get(forged) as response:
            assert response.status == 403
            assert (await response.json())["error"]["code"] == "forbidden"


async def test_show_image_missing_file_is_a_handler_error(client):
    turn = await client.send("image-file /nonexistent/pic.png")
    assert turn.error == "handler_error"


async def test_integration_card_and_prompt_without_provider(client):
    turn = await client.send("integration-card")
    payload = turn.block("integration_prompt")["payload"]
    assert payload["type"] == "github" and payload["blocking"] is False and payload["reason"] == "to read repos"
    turn = await client.send("integration-prompt")
    assert turn.replies[0].startswith("declined:")


async def test_task_card_block(client):
    turn = await client.send("task-card")
    block = turn.block("task_card")
    assert block["id"] == "task_task-123" and block["payload"]["message"] == "crunching"


async def test_prompt_file_answered_by_upload(client, tmp_path):
    conv = await client.conversation()
    turn = await conv.send("file")
    prompt = turn.block("file_upload")
    assert prompt["payload"]["blocking"] is True and prompt["payload"]["accept"] == ".txt"
    turn = await conv.upload("notes.txt", b"hello")
    assert turn.replies == ["got notes.txt 5 at True"]
    done = turn.block("file_upload")
    assert done["id"] == prompt["id"] and done["payload"]["completed"] is True


async def test_prompt_file_rejects_wrong_type_then_takes_right_one(client):
    conv = await client.conversation()
    await conv.send("file")
    # A message with a .png does not fit accept=".txt": it queues behind the waiting handler.
    accepted = await client.gateway.submit(conv._inbound("message", message=gateway.Message(
        "here", "user", "chat", attachments=[client._attachment("picture.png", b"png")])))
    assert not accepted.duplicate
    assert conv.waiting_prompt is not None
    turn = await conv.upload("right.txt", b"12")
    assert "got right.txt 2" in turn.replies[0]


async def test_prompt_file_timeout_raises(client):
    await client.send("file-timeout")
    turn = await client.default.finish()
    assert turn.replies == ["timed out"]
    assert turn.block("file_upload")["payload"]["timed_out"] is True


async def test_prompt_approval_approve_reject_and_timeout(client):
    conv = await client.conversation()
    turn = await conv.send("approve")
    block = turn.block("approval_prompt")
    assert block["payload"]["approve_label"] == "Yes" and block["payload"]["reject_label"] == "No"
    turn = await conv.approve()
    assert turn.replies == ["approved=True"]
    assert turn.block("approval_prompt")["payload"]["approved"] is True
    await conv.send("approve")
    turn = await conv.reject()
    assert turn.replies == ["approved=False"]
    await conv.send("approve-timeout")
    turn = await conv.finish()
    assert turn.replies == ["approved=False"]
    assert turn.block("approval_prompt")["payload"]["timed_out"] is True


async def test_stale_approval_button_is_harmless(client):
    conv = await client.conversation()
    await conv.send("approve-timeout")
    turn = await conv.finish()
    block_id = turn.block("approval_prompt")["id"]
    turn = await conv.press(block_id, "approve")
    assert turn.notifications == ["This approval is no longer waiting for an answer."]


async def test_current_session_is_the_handlers_session(client):
    turn = await client.send("current")
    assert turn.replies == ["same=True"]
    assert current_session() is None


async def test_trigger_action_runs_inline_and_returns(client):
    turn = await client.send("trigger")
    assert turn.replies == ["result=42"]


async def test_actions_from_events_and_unknown_actions(client):
    conv = await client.conversation()
    turn = await conv.action("hello", {"name": "Ada"})
    assert turn.replies == ["hello Ada"]
    turn = await conv.action("nope")
    assert "nope" in turn.notifications[0]


async def test_session_initializer_and_session_set_actions(tmp_path):
    app = gateway.App("named-sessions")

    @app.session("onboarding")
    async def start_onboarding(session):
        session.data["step"] = 1
        await session.reply("Let's get you set up.")

    @app.message()
    async def handle(session, msg):
        await session.reply(json.dumps({k: v for k, v in session.data.items() if not k.startswith("__")}))

    async with TestClient(app, tmp_path) as client:
        conv = await client.conversation()
        turn = await conv.action("__session_init__", {"name": "onboarding"})
        assert turn.replies == ["Let's get you set up."]
        await conv.action("__session_set__", {"values": {"theme": "dark", "step": 2}})
        await conv.action("__session_set__", {"key": "lang", "value": "de"})
        turn = await conv.send("show")
        assert json.loads(turn.replies[0]) == {"step": 2, "theme": "dark", "lang": "de"}


async def test_session_data_saved_with_nested_mutation(client):
    conv = await client.conversation()
    await conv.send("data")
    turn = await conv.send("data")
    assert turn.replies == ["[0, 1]"]
    record = await client.gateway.store.sessions.get(conv.session_id)
    assert record.data["items"] == [0, 1] and record.data["nested"] == {"k": "v"}


async def test_session_data_saved_when_handler_raises_and_user_sees_apology(client, caplog):
    conv = await client.conversation()
    turn = await conv.send("raise")
    assert turn.error == "handler_error"
    assert turn.replies == [client.settings.dispatch.error_message]
    assert "the secret internals" not in turn.text
    assert "the secret internals" in caplog.text  # logged with its traceback
    record = await client.gateway.store.sessions.get(conv.session_id)
    assert record.data["before_raise"] == 1
    turn = await conv.send("still alive?")
    assert turn.replies == ["echo: still alive?"]


async def test_publish_saves_immediately(client):
    conv = await client.conversation()
    await conv.send("publish")
    record = await client.gateway.store.sessions.get(conv.session_id)
    assert record.data["published"] == {"a": [1]}
    assert record.data["late"] is True


async def test_in_place_operators_on_session_data_are_saved(client):
    conv = await client.conversation()
    await conv.send("data-ops")
    record = await client.gateway.store.sessions.get(conv.session_id)
    assert record.data["merged"] == 1
    assert record.data["table"] == {"x": 1, "y": 2}
    assert record.data["repeat"] == ["r", "r"]


async def test_two_handlers_of_one_session_writing_different_keys_lose_nothing(client):
    app = client.app
    conv = await client.conversation()
    await conv.send("data")  # the session now has items and nested
    running = asyncio.create_task(conv.send("hold", timeout=20))
    await asyncio.wait_for(app.held.wait(), 10)  # the turn has loaded session.data and waits
    job = await app.session(conv.session_id)  # a job or task working on the same session
    job.data["from_job"] = 1
    job.data["nested"]["k"] = "from job"
    await job.flush_data()
    app.release.set()
    turn = await running
    assert turn.ended and turn.error is None
    record = await client.gateway.store.sessions.get(conv.session_id)
    assert record.data["from_turn"] is True and record.data["from_job"] == 1
    assert record.data["nested"] == {"k": "from job"} and record.data["items"] == [0]


async def test_boot_runs_before_serving_and_shutdown_on_stop(tmp_path):
    app = gateway.App("lifecycle")
    events: list[str] = []

    @app.boot()
    def boot():  # sync hooks work too
        events.append("boot")

    @app.shutdown()
    async def shutdown():
        events.append("shutdown")

    @app.message()
    async def handle(session, msg):
        events.append(msg.text)

    async with TestClient(app, tmp_path) as client:
        assert events == ["boot"]
        await client.send("hello")
    assert events == ["boot", "hello", "shutdown"]


async def test_two_sessions_writing_different_keys_lose_nothing(client):
    store = client.gateway.store
    conv = await client.conversation()
    await store.sessions.save_data(conv.session_id, {"a": 1}, [])
    await asyncio.gather(
        store.sessions.save_data(conv.session_id, {"b": 2}, []),
        store.sessions.save_data(conv.session_id, {"c": 3}, []),
    )
    record = await store.sessions.get(conv.session_id)
    assert record.data == {"a": 1, "b": 2, "c": 3}


async def test_dedup_drops_a_repeated_key(client):
    conv = await client.conversation()
    first = await conv.send("once", dedup_key="same-key")
    second = await conv.send("once", dedup_key="same-key")
    assert first.replies == ["echo: once"]
    assert second.replies == [] and second.ended
    messages, _ = await client.gateway.store.messages.page(conv.session_id)
    assert [m.text for m in messages] == ["once", "echo: once"]


async def test_error_message_is_configurable(tmp_path):
    app = gateway.App("apology")

    @app.message()
    async def fail(session, msg):
        raise KeyError("x")

    async with TestClient(app, tmp_path, dispatch={"error_message": "Oops, try later."}) as client:
        turn = await client.send("hi")
        assert turn.replies == ["Oops, try later."]


async def test_handler_timeout(tmp_path):
    app = gateway.App("slow")

    @app.message()
    async def slow(session, msg):
        async with session.stream_reply() as reply:
            reply.write("partial")
            await asyncio.sleep(5)

    async with TestClient(app, tmp_path, dispatch={"handler_timeout": 0.3}) as client:
        turn = await client.send("hi")
        assert turn.error == "timeout"
        assert turn.streams[0].text == "partial"
        assert turn.replies[-1] == client.settings.dispatch.timeout_message


async def test_scoped_kv_in_every_scope(tmp_path, database_url):
    app = gateway.App("kv")

    @app.message()
    async def handle(session, msg):
        if msg.text == "set":
            await session.set("k", "session-value")
            await session.set("k", {"user": True}, scope="user")
            await session.set("k", ["owner"], scope="owner")
            await session.set("k", 42, scope="app")
        elif msg.text == "delete":
            await session.delete("k")
        values = [await session.get("k", "missing", scope=scope) for scope in ("session", "user", "owner", "app")]
        await session.reply(json.dumps(values))

    async with TestClient(app, tmp_path, database_url=database_url) as client:
        alice = await client.conversation("alice", org_id="acme")
        assert json.loads((await alice.send("set")).replies[0]) == ["session-value", {"user": True}, ["owner"], 42]
        alice2 = await client.conversation("alice", org_id="acme")  # same user, new session
        assert json.loads((await alice2.send("get")).replies[0]) == ["missing", {"user": True}, ["owner"], 42]
        bob = await client.conversation("bob", org_id="acme")  # same org: shares owner scope
        assert json.loads((await bob.send("get")).replies[0]) == ["missing", "missing", ["owner"], 42]
        assert json.loads((await alice.send("delete")).replies[0]) == ["missing", {"user": True}, ["owner"], 42]
        assert await app.get("k") == 42
        await app.set("k", 43)
        assert await app.get("k") == 43
        await app.delete("k")
        assert await app.get("k", "gone") == "gone"


async def test_deleting_a_session_deletes_its_session_scoped_data(tmp_path):
    app = gateway.App("cleanup")
    app.collection("scratch", scope="session")

    @app.message()
    async def handle(session, msg):
        await session.db.scratch.insert_one({"text": msg.text})
        await session.set("seen", True)
        await session.reply(str(await session.db.scratch.count()))

    async with TestClient(app, tmp_path) as client:
        conv = await client.conversation()
        assert (await conv.send("a")).replies == ["1"]
        await client.gateway.sessions.delete(conv.session_id)
        assert await app.db.scratch.count() == 0
        kv = app._kv()
        assert await kv.get("seen", "gone", scope="session", scope_id=conv.session_id) == "gone"


async def test_inbound_and_feedback_records(tmp_path):
    app = gateway.App("records")

    @app.message()
    async def handle(session, msg):
        await session.reply(session.inbound_id)

    async with TestClient(app, tmp_path) as client:
        conv = await client.conversation()
        turn = await conv.send("hi")
        inbound_id = turn.replies[0]
        store = client.gateway.store
        record = await store.inbox.get(inbound_id)
        assert (record.session_id, record.kind, record.status) == (conv.session_id, "message", "done")
        assert await store.inbox.get("nope") is None
        await store.messages.save_feedback(conv.session_id, inbound_id, 1)
        await store.messages.save_feedback(conv.session_id, inbound_id, -1)
        assert await store.messages.feedback(conv.session_id) == {inbound_id: -1}


async def test_an_escaping_prompt_timeout_is_a_handler_error_not_a_turn_timeout(tmp_path):
    app = gateway.App("unanswered")

    @app.message()
    async def handle(session, msg):
        await session.prompt_file(timeout=0.1)  # FileUploadTimeout (a TimeoutError) escapes

    async with TestClient(app, tmp_path) as client:
        conv = await client.conversation()
        await conv.send("hi")
        turn = await conv.finish()
        assert turn.error == "handler_error"
        assert turn.replies == [client.settings.dispatch.error_message]


async def test_test_client_records_stream_frames_as_they_are_sent(tmp_path):
    from tests.support import until

    app = gateway.App("frames")
    go_on = asyncio.Event()

    @app.message()
    async def handle(session, msg):
        async with session.stream_reply() as reply:
            reply.write("Hello")
            await go_on.wait()
            reply.write(", world")

    async with TestClient(app, tmp_path) as client:
        conv = await client.conversation()
        running = asyncio.create_task(conv.send("hi"))
        stream = await until(lambda: next((s for s in conv.sent if s.kind == "stream" and s.frames), None))
        assert stream.frames == ["Hello"] and stream.text == ""  # live: a frame, not finished yet
        go_on.set()
        turn = await running
        assert turn.streams == [stream] and stream.text == "Hello, world" and not stream.stopped
        assert stream.frames[0] == "Hello" and stream.frames[-1] in ("Hello", "Hello, world")


async def test_test_client_timeout_says_what_the_app_sent(tmp_path):
    app = gateway.App("stuck")
    release = asyncio.Event()

    @app.message()
    async def handle(session, msg):
        await session.reply("working on it")
        await release.wait()

    async with TestClient(app, tmp_path) as client:
        with pytest.raises(AssertionError, match=r"waited 0.2 s for the turn.*\('text', 'working on it'\)"):
            await client.send("hi", timeout=0.2)
        release.set()
        await client.default.finish()


def test_session_data_tracks_every_kind_of_nested_edit():
    from gateway.session_data import SessionData

    data = SessionData({"list": [1, {"deep": []}], "dict": {"a": {"b": 1}}, "plain": 1, "gone": 2})
    assert not data.dirty
    edits = {
        "list": lambda d: d["list"][1]["deep"].append(3),
        "dict": lambda d: d["dict"]["a"].update(c=2),
        "plain": lambda d: d.update(plain=5),
        "new": lambda d: d.setdefault("new", []).extend([1, 2]),
    }
    for key, edit in edits.items():
        edit(data)
        changed, removed = data.take_changes()
        assert (set(changed), removed) == ({key}, set()), key
    del data["gone"]
    assert data.take_changes() == ({}, {"gone"})
    for edit in (lambda d: d["list"].sort(key=str), lambda d: d["list"].reverse(), lambda d: d["list"].pop(),
                 lambda d: d["list"].__setitem__(slice(0, 1), [{"x": 1}]), lambda d: d["list"].clear()):
        edit(data)
        assert set(data.take_changes()[0]) == {"list"}


def test_session_data_a_value_in_two_places_reports_to_both():
    from gateway.session_data import SessionData

    data = SessionData({"draft": {"text": "hi"}, "log": []})
    draft = data["draft"]
    data["log"].append(draft)  # the same dict now also sits inside "log"
    data.take_changes()
    draft["text"] = "edited"  # an edit through either place changes both keys
    changed, _ = data.take_changes()
    assert changed == {"draft": {"text": "edited"}, "log": [{"text": "edited"}]}
    data["copy"] = data["log"]
    data.take_changes()
    data["log"][0]["n"] = 1
    assert set(data.take_changes()[0]) == {"draft", "log", "copy"}
    del data["draft"]
    data.take_changes()
    draft["after"] = True  # the deleted key stays deleted
    changed, removed = data.take_changes()
    assert "draft" not in changed and removed == set() and set(changed) == {"log", "copy"}
