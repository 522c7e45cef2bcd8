"""The dispatcher: lanes, ordering, concurrency, prompts, stop, recovery and dedup."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

import gateway
from gateway.inbound import Inbound, PlatformUser
from gateway.runtime import Gateway
from gateway.store.records import InboxEntry
from gateway.testing import TestClient
from gateway.types import Message, SessionChannel, UserInfo


def ordered_app(log: list[str], gate: asyncio.Event | None = None) -> gateway.App:
    app = gateway.App("lanes")

    @app.message()
    async def handle(session, msg):
        log.append(f"start {msg.text}")
        if gate is not None and msg.text.startswith("wait"):
            await gate.wait()
        await asyncio.sleep(0.01)
        log.append(f"end {msg.text}")
        await session.reply(msg.text)

    return app


def inbound_for(conv, text: str, key: str | None = None) -> Inbound:
    return conv._inbound("message", message=Message(text, "user", conv.channel.type), dedup_key=key)


async def test_one_session_runs_in_arrival_order(tmp_path, database_url):
    log: list[str] = []
    async with TestClient(ordered_app(log), tmp_path, database_url=database_url) as client:
        conv = await client.conversation()
        for n in range(6):
            await client.gateway.submit(inbound_for(conv, f"m{n}"))
        await client.gateway.dispatcher.wait_idle(10)
        assert log == [entry for n in range(6) for entry in (f"start m{n}", f"end m{n}")]
        messages, _ = await client.gateway.store.messages.page(conv.session_id, limit=100)
        assert [m.text for m in messages if m.role == "assistant"] == [f"m{n}" for n in range(6)]


async def test_sessions_run_concurrently(tmp_path):
    log: list[str] = []
    gate = asyncio.Event()
    async with TestClient(ordered_app(log, gate), tmp_path) as client:
        a, b = await client.conversation("a"), await client.conversation("b")
        await client.gateway.submit(inbound_for(a, "wait-a"))
        await client.gateway.submit(inbound_for(b, "wait-b"))
        for _ in range(100):
            if log.count("start wait-a") and log.count("start wait-b"):
                break
            await asyncio.sleep(0.01)
        assert {"start wait-a", "start wait-b"} <= set(log)  # both started before either ended
        gate.set()
        await client.gateway.dispatcher.wait_idle(10)


async def test_concurrency_limit_queues_other_sessions(tmp_path):
    log: list[str] = []
    gate = asyncio.Event()
    async with TestClient(ordered_app(log, gate), tmp_path, dispatch={"max_concurrent_sessions": 1}) as client:
        a, b = await client.conversation("a"), await client.conversation("b")
        await client.gateway.submit(inbound_for(a, "wait-a"))
        await client.gateway.submit(inbound_for(b, "b"))
        await asyncio.sleep(0.2)
        assert log == ["start wait-a"]
        gate.set()
        await client.gateway.dispatcher.wait_idle(10)
        assert log == ["start wait-a", "end wait-a", "start b", "end b"]


async def test_events_wait_behind_a_prompting_handler(tmp_path, database_url):
    app = gateway.App("prompting")

    @app.message()
    async def handle(session, msg):
        if msg.text == "ask":
            ok = await session.prompt_approval("sure?", timeout=5)
            await session.reply(f"answer {ok}")
        else:
            await session.reply(f"later {msg.text}")

    async with TestClient(app, tmp_path, database_url=database_url) as client:
        conv = await client.conversation()
        await conv.send("ask")
        await client.gateway.submit(inbound_for(conv, "queued"))  # does not answer the approval
        await asyncio.sleep(0.1)
        assert conv.waiting_prompt is not None
        await conv.approve()
        await client.gateway.dispatcher.wait_idle(10)
        replies = [s.text for s in conv.sent if s.kind == "text"]
        assert replies == ["answer True", "later queued"]


async def test_stop_cancels_and_finalises_the_stream(tmp_path, database_url):
    app = gateway.App("stoppable")
    started = asyncio.Event()

    @app.message()
    async def handle(session, msg):
        if msg.text == "long":
            async with session.stream_reply() as reply:
                reply.write("partial ")
                reply.write("answer")
                started.set()
                await asyncio.sleep(30)
                reply.write(" never")
        else:
            await session.reply("next works")

    async with TestClient(app, tmp_path, database_url=database_url) as client:
        conv = await client.conversation()
        task = asyncio.create_task(conv.send("long", timeout=10))
        await asyncio.wait_for(started.wait(), 5)
        await conv.stop()
        turn = await task
        assert turn.error == "stopped"
        assert turn.streams[0].text == "partial answer" and turn.streams[0].stopped
        messages, _ = await client.gateway.store.messages.page(conv.session_id)
        assert (messages[1].text, messages[1].status) == ("partial answer", "stopped")
        turn = await conv.send("again")
        assert turn.replies == ["next works"]


async def test_stop_with_nothing_running_is_harmless(tmp_path):
    async with TestClient(ordered_app([]), tmp_path) as client:
        conv = await client.conversation()
        await conv.stop()
        turn = await conv.send("ok")
        assert turn.replies == ["ok"]


async def test_unfinished_events_run_again_after_a_restart(tmp_path, database_url):
    runs: list[str] = []
    release, first_started = asyncio.Event(), asyncio.Event()
    app = gateway.App("recover")

    @app.message()
    async def handle(session, msg):
        runs.append(msg.text)
        first_started.set()
        if len(runs) == 1:
            await release.wait()  # the first process "dies" here
        await session.reply(f"handled {msg.text}")

    client = TestClient(app, tmp_path, database_url=database_url)
    await client.__aenter__()
    conv = await client.conversation()
    await client.gateway.submit(inbound_for(conv, "important"))
    await client.gateway.submit(inbound_for(conv, "second"))
    await asyncio.wait_for(first_started.wait(), 5)
    await client.gateway.dispatcher.close(grace=0.1)  # shutdown interrupts the turn
    await client.__aexit__(None, None, None)

    async with TestClient(app, tmp_path, database_url=database_url) as client2:
        await client2.gateway.dispatcher.wait_idle(10)
        messages, _ = await client2.gateway.store.messages.page(conv.session_id)
        texts = [m.text for m in messages]
        assert texts.count("important") == 1  # the user message is not stored twice
        assert "handled important" in texts and "handled second" in texts
        assert texts.index("handled important") < texts.index("handled second")
    assert runs == ["important", "important", "second"]


async def test_dedup_keys_are_purged_after_retention(tmp_path):
    async with TestClient(ordered_app([]), tmp_path) as client:
        conv = await client.conversation()
        await conv.send("x", dedup_key="k1")
        store = client.gateway.store
        assert await store.inbox.purge(timedelta(hours=1)) == 0
        assert await store.inbox.purge(timedelta(seconds=-1)) == 1
        turn = await conv.send("x", dedup_key="k1")  # remembered no longer: runs again
        assert turn.replies == ["x"]


async def test_address_sessions_are_one_per_conversation(tmp_path, database_url):
    app = ordered_app([])
    async with TestClient(app, tmp_path, database_url=database_url) as client:
        gw: Gateway = client.gateway
        channel = SessionChannel("telegram", chat_id="42", thread_id="7")
        user = PlatformUser("test", "u42", name="Ada")
        accepted = await asyncio.gather(*[
            gw.submit(Inbound("message", f"k{n}", channel, user, message=Message(str(n), "user", "telegram")))
            for n in range(5)
        ])
        assert len({a.session_id for a in accepted}) == 1
        other = await gw.submit(Inbound("message", "k-other", SessionChannel("telegram", chat_id="42"), user,
                                        message=Message("x", "user", "telegram")))
        assert other.session_id != accepted[0].session_id  # a different thread is another session
        await gw.dispatcher.wait_idle(10)


async def test_unknown_session_id_is_refused(tmp_path):
    from gateway.dispatch import UnknownSession

    async with TestClient(ordered_app([]), tmp_path) as client:
        inbound = Inbound("message", "k", SessionChannel("chat"), PlatformUser("test", "u"),
                          message=Message("x"), session_id="01NOSUCHSESSION")
        with pytest.raises(UnknownSession):
            await client.gateway.submit(inbound)


async def test_enter_runs_once_per_new_session_persisted(tmp_path, database_url):
    entered: list[str] = []
    app = gateway.App("enter")

    @app.enter()
    async def hello(session):
        entered.append(session.id)
        await session.reply("welcome")

    @app.message()
    async def handle(session, msg):
        await session.reply("hi")

    async with TestClient(app, tmp_path, database_url=database_url) as client:
        conv = await client.conversation()
        first = await conv.send("a")
        second = await conv.send("b")
        assert first.replies == ["welcome", "hi"] and second.replies == ["hi"]
    async with TestClient(app, tmp_path, database_url=database_url) as client:
        conv2 = await client.conversation()
        client._conversations[conv.session_id] = conv
        conv.client = client
        assert (await conv.send("c")).replies == ["hi"]  # not again after a restart
        assert (await conv2.send("d")).replies == ["welcome", "hi"]
    assert len(entered) == 2


async def test_named_chats_select_handlers_and_stick(tmp_path):
    app = gateway.App("named")

    @app.message()
    async def default(session, msg):
        await session.reply("default")

    @app.message("support", label="Support")
    async def support(session, msg):
        await session.reply(f"support {session.data['__chat_name__']}")

    async with TestClient(app, tmp_path) as client:
        conv = await client.conversation()
        assert (await conv.send("x", chat_name="support")).replies == ["support support"]
        assert (await conv.send("y")).replies == ["support support"]  # sticks to the session
        other = await client.conversation("u2")
        assert (await other.send("z")).replies == ["default"]
        third = await client.conversation("u3")
        turn = await third.send("?", chat_name="nope")
        assert turn.error == "handler_error"


async def test_exit_hook_runs_when_a_session_is_deleted(tmp_path):
    app = gateway.App("exit")
    seen: list[tuple[str, int]] = []

    @app.exit()
    async def goodbye(session):
        seen.append((session.id, session.data.get("n", 0)))

    @app.message()
    async def handle(session, msg):
        session.data["n"] = 3
        await session.reply("ok")

    async with TestClient(app, tmp_path) as client:
        conv = await client.conversation()
        await conv.send("hi")
        assert await client.gateway.sessions.delete(conv.session_id) is True
        assert seen == [(conv.session_id, 3)]
        assert await client.gateway.store.sessions.get(conv.session_id) is None
        assert await client.gateway.sessions.delete(conv.session_id) is False


async def test_an_event_that_keeps_killing_the_process_is_given_up(tmp_path, caplog):
    from gateway.dispatch import MAX_ATTEMPTS

    runs: list[str] = []
    app = gateway.App("poison")

    @app.message()
    async def handle(session, msg):
        runs.append(msg.text)
        await session.reply("ok")

    async with TestClient(app, tmp_path) as client:
        conv = await client.conversation()
        store = client.gateway.store
        entry = await store.inbox.record(conv.session_id, "poison-key", "message",
                                           inbound_for(conv, "poison", "poison-key").to_json(), user_text="poison")
        for _ in range(MAX_ATTEMPTS - 1):
            await store.inbox.count_attempt(entry.id)  # it was run again twice after crashes...
        # ...and this start finds it interrupted a third time.
        await client.gateway.dispatcher.recover()
        await client.gateway.dispatcher.wait_idle(5)
        assert runs == []
        assert "giving up message event poison-key" in caplog.text
        assert await store.inbox.unfinished() == []


async def test_shutdown_lets_running_handlers_reply_before_adapters_stop(tmp_path):
    from gateway.testing import RecordingAdapter

    class StrictAdapter(RecordingAdapter):
        """Refuses to send once stopped, like a platform client whose connection is closed."""

        stopped = False

        async def stop(self) -> None:
            self.stopped = True

        def outbox(self, channel, session_id, turn=None):
            outbox = super().outbox(channel, session_id)
            adapter = self

            class Guarded(type(outbox)):
                async def send_text(self, message_id, text):
                    if adapter.stopped:
                        raise RuntimeError("adapter already stopped")
                    return await super().send_text(message_id, text)

            return Guarded(outbox.conversation)

    app = gateway.App("graceful")
    started = asyncio.Event()

    @app.message()
    async def slow(session, msg):
        started.set()
        await asyncio.sleep(0.3)
        await session.reply("finished during shutdown")

    client = TestClient(app, tmp_path)
    client.gateway._adapters = [StrictAdapter(client)]
    await client.__aenter__()
    conv = await client.conversation()
    await client.gateway.submit(inbound_for(conv, "go"))
    await asyncio.wait_for(started.wait(), 5)
    await client.__aexit__(None, None, None)
    assert [s.text for s in conv.sent if s.kind == "text"] == ["finished during shutdown"]


async def test_a_reply_cut_by_shutdown_is_failed_not_complete(tmp_path):
    app = gateway.App("shutdown-stream")
    streaming = asyncio.Event()

    @app.message()
    async def handle(session, msg):
        async with session.stream_reply() as reply:
            reply.write("partial")
            streaming.set()
            await asyncio.sleep(30)

    client = TestClient(app, tmp_path)
    await client.__aenter__()
    conv = await client.conversation()
    await client.gateway.submit(inbound_for(conv, "q"))
    await asyncio.wait_for(streaming.wait(), 5)
    await client.gateway.dispatcher.close(grace=0.1)
    messages, _ = await client.gateway.store.messages.page(conv.session_id)
    assert [(m.text, m.status) for m in messages if m.role == "assistant"] == [("partial", "failed")]
    await client.__aexit__(None, None, None)


async def test_a_repeat_claim_holds_while_its_event_runs_and_the_window_after_it_ends(tmp_path, database_url):
    """A REST repeat claim counts its window from the event's end, not its start, and the purge
    keeps it while the event is recorded (a slow turn re-POSTed after the window joins it)."""
    async with TestClient(ordered_app([]), tmp_path, database_url=database_url) as client:
        store = client.gateway.store
        session = await store.sessions.create(SessionChannel("web"), UserInfo("ada"))
        window = 0.05

        async def record(key: str) -> InboxEntry:
            return await store.inbox.record(session.id, key, "message", {}, user_text="slow", repeat=("c", window))

        first = await record("k1")
        await asyncio.sleep(window * 3)  # past the window since the claim; the event still runs
        await store.inbox.purge(timedelta(hours=1))
        again = await record("k2")
        assert again.duplicate and again.id == first.id
        await store.inbox.set_status(first.id, "done")
        assert (await record("k3")).id == first.id  # within the window after its end
        await asyncio.sleep(window * 3)
        later = await record("k4")
        assert not later.duplicate and later.id != first.id
