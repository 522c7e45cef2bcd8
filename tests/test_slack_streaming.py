"""Streaming replies into the local Slack: native streams, post + edit, fallbacks, rate limits, splitting."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest

import gateway
from tests.fakes.slack_api import FakeSlack, SlackGateway

pytestmark = pytest.mark.timeout(60)

TOKENS = [f"word{i} " for i in range(60)]
FULL = "".join(TOKENS)


def streaming_app(tokens: list[str] = TOKENS, *, delay: float = 0.005, notify: str | None = None) -> gateway.App:
    app = gateway.App("stream")

    @app.message()
    async def handle(session: gateway.Session, msg: gateway.Message) -> None:
        if notify:
            await session.notify(notify)
        async with session.stream_reply() as reply:
            for token in tokens:
                reply.write(token)
                await asyncio.sleep(delay)

    return app


def dm_event(ts: str, *, thread_ts: str | None = None, text: str = "go") -> dict[str, Any]:
    event = {"type": "message", "channel": "D1", "channel_type": "im", "user": "U1", "text": text, "ts": ts}
    if thread_ts:
        event["thread_ts"] = thread_ts
    return event


def mention_event(ts: str) -> dict[str, Any]:
    return {"type": "app_mention", "channel": "C1", "user": "U1", "text": "<@UBOT> go", "ts": ts}


@pytest.fixture
async def slack():
    async with FakeSlack(time_scale=0.01) as fake:
        fake.add_user("U1", email="ada@example.com")
        yield fake


def streamed(slack: FakeSlack, channel: str, thread: str | None) -> str:
    return "".join(m.visible_text for m in slack.thread(channel, thread))


async def test_dm_thread_streams_natively(slack: FakeSlack, tmp_path) -> None:
    async with SlackGateway(streaming_app(), tmp_path, slack) as gw:
        await slack.deliver_event(gw.events_url, dm_event("100.000001"), event_id="Ev1")
        await slack.wait_for(lambda: slack.calls_of("chat.stopStream"), timeout=10)
        await gw.idle()
        [message] = slack.thread("D1", "100.000001")
        assert message.markdown == FULL  # complete, exactly once
        assert not message.streaming
        assert len(slack.calls_of("chat.startStream")) == 1
        assert len(slack.calls_of("chat.stopStream")) == 1
        assert slack.calls_of("chat.appendStream"), "the reply should have streamed in frames"
        assert slack.calls_of("chat.postMessage") == [] and slack.calls_of("chat.update") == []
        start = slack.calls_of("chat.startStream")[0].args
        assert "recipient_user_id" not in start  # a DM needs no recipient


async def test_channel_thread_streams_natively_to_the_recipient(slack: FakeSlack, tmp_path) -> None:
    async with SlackGateway(streaming_app(), tmp_path, slack) as gw:
        await slack.deliver_event(gw.events_url, mention_event("200.000001"), event_id="Ev1")
        await slack.wait_for(lambda: slack.calls_of("chat.stopStream"), timeout=10)
        await gw.idle()
        start = slack.calls_of("chat.startStream")[0].args
        assert (start["recipient_user_id"], start["recipient_team_id"]) == ("U1", "T0001")
        assert start["thread_ts"] == "200.000001"
        assert streamed(slack, "C1", "200.000001") == FULL


async def test_without_a_thread_it_posts_then_edits(slack: FakeSlack, tmp_path) -> None:
    async with SlackGateway(streaming_app(delay=0.01), tmp_path, slack, dm_sessions="per_dm") as gw:
        await slack.deliver_event(gw.events_url, dm_event("100.000001"), event_id="Ev1")
        await slack.wait_for(
            lambda: slack.thread("D1", None) and slack.thread("D1", None)[0].visible_text == FULL.strip()
        )
        await gw.idle()
        [message] = slack.thread("D1", None)
        assert slack.calls_of("chat.startStream") == []
        assert len(slack.calls_of("chat.postMessage")) == 1
        updates = slack.calls_of("chat.update")
        assert updates, "frames should edit the posted message"
        texts = [str(c.args.get("blocks")) for c in updates]
        assert len(texts) == len(set(texts)), "an unchanged frame was sent twice"
        assert message.edits == len(updates)


async def test_refused_native_stream_falls_back_to_edits(slack: FakeSlack, tmp_path) -> None:
    slack.fail_next("chat.startStream", "feature_not_enabled")
    async with SlackGateway(streaming_app(), tmp_path, slack) as gw:
        await slack.deliver_event(gw.events_url, dm_event("100.000001"), event_id="Ev1")
        await slack.wait_for(lambda: streamed(slack, "D1", "100.000001") == FULL.strip(), timeout=10)
        await gw.idle()
        assert len(slack.calls_of("chat.startStream")) == 1
        # The workspace is remembered as unable to stream: the next reply does not try again.
        await slack.deliver_event(gw.events_url, dm_event("100.000005"), event_id="Ev2")
        await slack.wait_for(lambda: streamed(slack, "D1", "100.000005") == FULL.strip(), timeout=10)
        assert len(slack.calls_of("chat.startStream")) == 1


async def test_stream_ended_by_slack_continues_in_a_new_message(slack: FakeSlack, tmp_path) -> None:
    slack.stream_timeout = 0.15  # Slack ends streams after ~5 minutes; here after 150 ms
    async with SlackGateway(streaming_app(delay=0.01), tmp_path, slack) as gw:
        await slack.deliver_event(gw.events_url, dm_event("100.000001"), event_id="Ev1")
        await gw.idle(15)
        await slack.wait_for(lambda: not any(m.streaming for m in slack.thread("D1", "100.000001")), timeout=10)
        messages = slack.thread("D1", "100.000001")
        assert len(messages) >= 2
        assert "".join(m.visible_text for m in messages) == FULL  # nothing lost, nothing repeated


async def test_long_streams_roll_over_into_more_messages(slack: FakeSlack, tmp_path) -> None:
    paragraph = "x" * 990 + "\n\n"
    tokens = [paragraph] * 30  # ~30,000 characters: three streamed messages
    async with SlackGateway(streaming_app(tokens, delay=0.002), tmp_path, slack) as gw:
        await slack.deliver_event(gw.events_url, dm_event("100.000001"), event_id="Ev1")
        await gw.idle(20)
        await slack.wait_for(lambda: slack.calls_of("chat.stopStream"), timeout=10)
        messages = slack.thread("D1", "100.000001")
        assert len(messages) >= 3
        assert all(len(m.markdown) <= 12_000 for m in messages)
        assert "".join(m.markdown for m in messages) == "".join(tokens)


async def test_rate_limits_are_honoured_while_streaming(slack: FakeSlack, tmp_path) -> None:
    # Slack stricter than our budget: chat.update allows 3 calls per 0.5 s in this workspace.
    slack.set_budget("chat.update", 3, 0.5)
    async with SlackGateway(
        streaming_app(delay=0.01), tmp_path, slack, dm_sessions="per_dm", update_interval=0.1
    ) as gw:
        await slack.deliver_event(gw.events_url, dm_event("100.000001"), event_id="Ev1")
        await gw.idle(20)
        await slack.wait_for(
            lambda: slack.thread("D1", None) and slack.thread("D1", None)[0].visible_text == FULL.strip()
        )
        assert len(slack.rate_limited_calls()) >= 1
        assert gw.adapter.pacer.stats.rate_limited["chat.update"] == len(slack.rate_limited_calls())
        # After each 429 the pacer waited Retry-After: never two refusals in a row.
        statuses = [c.status for c in slack.calls_of("chat.update")]
        assert all(not (a == b == 429) for a, b in itertools.pairwise(statuses))


async def test_long_reply_is_split_without_losing_text(slack: FakeSlack, tmp_path) -> None:
    paragraphs = [f"Paragraph {i}: " + "lorem ipsum dolor sit amet " * 40 for i in range(30)]
    long_text = "\n\n".join(paragraphs)  # ~33,000 characters
    app = gateway.App("long")

    @app.message()
    async def handle(session: gateway.Session, msg: gateway.Message) -> None:
        await session.reply(long_text)

    async with SlackGateway(app, tmp_path, slack) as gw:
        await slack.deliver_event(gw.events_url, dm_event("100.000001"), event_id="Ev1")
        await gw.idle(20)
        messages = slack.thread("D1", "100.000001")
        assert len(messages) >= 3
        shown = "\n\n".join(m.visible_text.strip() for m in messages)
        assert [p.strip() for p in shown.split("\n\n") if p.strip()] == [p.strip() for p in paragraphs]
        assert not [c for c in slack.calls if c.error in ("invalid_blocks", "msg_too_long", "msg_blocks_too_long")]


async def test_notify_sets_the_assistant_status_and_end_of_turn_clears_it(slack: FakeSlack, tmp_path) -> None:
    async with SlackGateway(streaming_app(notify="Searching the docs…"), tmp_path, slack) as gw:
        await slack.deliver_event(gw.events_url, dm_event("100.000001"), event_id="Ev1")
        await gw.idle(10)
        await slack.wait_for(lambda: len(slack.statuses) >= 2)
        assert slack.statuses[0] == {"channel_id": "D1", "thread_ts": "100.000001", "status": "Searching the docs…"}
        assert slack.statuses[-1]["status"] == ""


async def test_notify_in_a_channel_thread_sends_nothing(slack: FakeSlack, tmp_path) -> None:
    async with SlackGateway(streaming_app(notify="Working"), tmp_path, slack) as gw:
        await slack.deliver_event(gw.events_url, mention_event("200.000001"), event_id="Ev1")
        await gw.idle(10)
        await slack.wait_for(lambda: slack.calls_of("chat.stopStream"), timeout=10)
        assert slack.calls_of("assistant.threads.setStatus") == []


async def test_stopped_reply_is_marked(slack: FakeSlack, tmp_path) -> None:
    app = gateway.App("stopper")
    started = asyncio.Event()

    @app.message()
    async def handle(session: gateway.Session, msg: gateway.Message) -> None:
        async with session.stream_reply() as reply:
            reply.write("partial answer")
            started.set()
            await asyncio.sleep(30)

    async with SlackGateway(app, tmp_path, slack) as gw:
        await slack.deliver_event(gw.events_url, dm_event("100.000001"), event_id="Ev1")
        await asyncio.wait_for(started.wait(), 5)
        session = await gw.gateway.store.sessions.find(
            gateway.SessionChannel("slack", chat_id="D1", thread_id="100.000001", team_id="T0001")
        )
        assert gw.gateway.dispatcher.stop(session.id)
        await gw.idle(10)
        await slack.wait_for(lambda: "stopped" in streamed(slack, "D1", "100.000001"))
        assert streamed(slack, "D1", "100.000001").startswith("partial answer")


async def test_when_stream_starts_are_refused_the_reply_previews_by_edits(slack: FakeSlack, tmp_path) -> None:
    # This workspace's chat.startStream budget is spent: Slack answers 429 with a long Retry-After.
    slack.set_budget("chat.startStream", 0, 5.0)
    async with SlackGateway(streaming_app(delay=0.01), tmp_path, slack) as gw:
        await slack.deliver_event(gw.events_url, dm_event("100.000001"), event_id="Ev1")
        await gw.idle(20)
        await slack.wait_for(lambda: streamed(slack, "D1", "100.000001") == FULL.strip())
        assert len(slack.calls_of("chat.startStream")) == 1  # one refusal, then it stopped asking
        assert len(slack.calls_of("chat.postMessage")) == 1  # the preview...
        assert slack.calls_of("chat.update")  # ...edited up to the final text
        assert len(slack.thread("D1", "100.000001")) == 1


async def test_assistant_thread_streams_natively_with_a_status(slack: FakeSlack, tmp_path) -> None:
    started = {
        "type": "assistant_thread_started",
        "assistant_thread": {
            "user_id": "U1",
            "channel_id": "D1",
            "thread_ts": "300.000001",
            "context": {"channel_id": "C1", "team_id": "T0001"},
        },
        "event_ts": "300.000002",
    }
    async with SlackGateway(streaming_app(notify="Thinking"), tmp_path, slack) as gw:
        status, _, _ = await slack.deliver_event(gw.events_url, started, event_id="EvStart")
        assert status == 200
        await slack.deliver_event(gw.events_url, dm_event("300.000003", thread_ts="300.000001"), event_id="Ev1")
        await gw.idle(10)
        await slack.wait_for(lambda: slack.calls_of("chat.stopStream"), timeout=10)
        [reply] = slack.thread("D1", "300.000001")
        assert reply.markdown == FULL
        assert slack.statuses[0] == {"channel_id": "D1", "thread_ts": "300.000001", "status": "Thinking"}


async def test_edit_streams_roll_over_and_survive_a_deleted_preview(slack: FakeSlack, tmp_path) -> None:
    paragraph = "y" * 990 + "\n\n"
    tokens = [paragraph] * 18  # ~18,000 characters: two messages
    app = gateway.App("long-edits")
    first_frame = asyncio.Event()

    @app.message()
    async def handle(session: gateway.Session, msg: gateway.Message) -> None:
        async with session.stream_reply() as reply:
            reply.write("starting\n\n")
            await asyncio.wait_for(first_frame.wait(), 5)
            for token in tokens:
                reply.write(token)
                await asyncio.sleep(0.01)

    async with SlackGateway(app, tmp_path, slack, dm_sessions="per_dm") as gw:
        await slack.deliver_event(gw.events_url, dm_event("100.000001"), event_id="Ev1")
        await slack.wait_for(lambda: slack.thread("D1", None))
        slack.thread("D1", None)[0].deleted = True  # the user deletes the first preview
        first_frame.set()
        await gw.idle(20)
        messages = slack.thread("D1", None)
        assert len(messages) >= 2
        shown = "".join(m.visible_text for m in messages).replace("\n", "")
        assert shown == ("starting" + "".join(tokens)).replace("\n", "")
        assert [c for c in slack.calls_of("chat.update") if c.error == "message_not_found"]


async def test_the_recipient_survives_a_restart_for_replies_from_jobs(slack: FakeSlack, tmp_path) -> None:
    """A channel thread's recipient is kept in the session: after a restart, a reply the app
    sends on its own (no new message to learn the recipient from) still streams natively."""
    app = streaming_app()
    async with SlackGateway(app, tmp_path, slack) as gw:
        await slack.deliver_event(gw.events_url, mention_event("300.000001"), event_id="Ev1")
        await slack.wait_for(lambda: slack.calls_of("chat.stopStream"), timeout=10)
        await gw.idle()
        channel = gateway.SessionChannel("slack", chat_id="C1", thread_id="300.000001", team_id="T0001")
        session_id = (await gw.gateway.store.sessions.find(channel)).id
    starts_before = len(slack.calls_of("chat.startStream"))
    async with SlackGateway(app, tmp_path, slack) as gw:
        session = await app.session(session_id)
        async with session.stream_reply() as reply:
            for token in TOKENS:
                reply.write(token)
        await slack.wait_for(lambda: len(slack.calls_of("chat.stopStream")) == 2, timeout=10)
        start = slack.calls_of("chat.startStream")[starts_before].args
        assert (start["recipient_user_id"], start["thread_ts"]) == ("U1", "300.000001")


async def test_replies_that_start_after_previews_spent_the_minute_finish_at_once(slack: FakeSlack, tmp_path) -> None:
    """Four long replies spend the workspace's chat.update minute on previews; ten replies that
    start after them must not show previews whose final edits would then wait for that minute to
    pass: they post their final text as soon as they end."""
    spent = asyncio.Event()
    app = gateway.App("late-replies")

    @app.message()
    async def handle(session: gateway.Session, msg: gateway.Message) -> None:
        async with session.stream_reply() as reply:
            if msg.text == "long":
                while not spent.is_set():
                    reply.write("more ")
                    await asyncio.sleep(0.01)
                    if not gw.adapter.pacer.available_within("chat.update", "T0001", None, 0.5):
                        spent.set()  # previews took every chat.update they may in this minute
            else:
                for token in TOKENS[:20]:
                    reply.write(token)
                    await asyncio.sleep(0.01)

    async with SlackGateway(app, tmp_path, slack, dm_sessions="per_dm") as gw:
        for i in range(4):
            long_event = {**dm_event(f"100.00000{i + 1}", text="long"), "channel": f"DL{i}"}
            await slack.deliver_event(gw.events_url, long_event, event_id=f"EL{i}")
        await asyncio.wait_for(spent.wait(), 30)
        for i in range(10):
            event = {**dm_event(f"200.{i + 1:06d}", text=f"late {i}"), "channel": f"D{i}"}
            await slack.deliver_event(gw.events_url, event, event_id=f"E{i}")

        def late_replies_done() -> bool:
            expected = ["".join(TOKENS[:20]).strip()]
            return all([m.visible_text for m in slack.thread(f"D{i}", None)] == expected for i in range(10))

        await slack.wait_for(late_replies_done, timeout=10)  # not a minute
        await gw.idle(10)
        assert all(slack.thread(f"DL{i}", None)[0].visible_text.startswith("more more") for i in range(4))
        assert slack.rate_limited_calls() == []
        assert len(slack.calls_of("chat.update")) <= 50  # inside Slack's minute for the workspace


async def test_frequent_status_lines_never_stall_the_handler(slack: FakeSlack, tmp_path) -> None:
    """assistant.threads.setStatus has a per-minute budget; a handler reporting progress more
    often than that keeps going (surplus status lines are skipped) and its reply is not delayed."""
    app = gateway.App("progress")

    @app.message()
    async def handle(session: gateway.Session, msg: gateway.Message) -> None:
        for step in range(80):
            await session.notify(f"Step {step}")
        await session.reply("all steps done")

    async with SlackGateway(app, tmp_path, slack) as gw:
        await slack.deliver_event(gw.events_url, dm_event("100.000001"), event_id="Ev1")
        await slack.wait_for(lambda: slack.thread("D1", "100.000001"), timeout=10)  # not a minute
        await gw.idle(10)
        assert slack.thread("D1", "100.000001")[0].visible_text == "all steps done"
        calls = slack.calls_of("assistant.threads.setStatus")
        assert len(calls) <= 50  # inside the workspace's minute for the method
        assert slack.rate_limited_calls() == []
        assert slack.statuses[0]["status"] == "Step 0"
        await slack.wait_for(lambda: slack.statuses[-1]["status"] == "")  # cleared at the end of the turn
