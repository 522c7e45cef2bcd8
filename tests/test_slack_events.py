"""The Events API end to end: signed payloads POSTed to a running gateway, replies on the local Slack."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import pytest

import gateway
from tests.fakes.slack_api import FakeSlack, SlackGateway

pytestmark = pytest.mark.timeout(30)


def dm(text: str, ts: str, *, user: str = "U1", thread_ts: str | None = None, **extra: Any) -> dict[str, Any]:
    event = {"type": "message", "channel": "D1", "channel_type": "im", "user": user, "text": text, "ts": ts}
    if thread_ts:
        event["thread_ts"] = thread_ts
    return {**event, **extra}


def channel_message(
    text: str, ts: str, *, thread_ts: str | None = None, user: str = "U1", parent_user_id: str | None = None
) -> dict[str, Any]:
    """A channel message event; a thread reply carries ``parent_user_id``, the author of the
    thread's parent message, as Slack's do."""
    event = {"type": "message", "channel": "C1", "channel_type": "channel", "user": user, "text": text, "ts": ts}
    if thread_ts:
        event["thread_ts"] = thread_ts
    if parent_user_id:
        event["parent_user_id"] = parent_user_id
    return event


def mention(text: str, ts: str, *, thread_ts: str | None = None, user: str = "U1") -> dict[str, Any]:
    event = {"type": "app_mention", "channel": "C1", "user": user, "text": f"<@UBOT> {text}", "ts": ts}
    if thread_ts:
        event["thread_ts"] = thread_ts
    return event


def echo_app(seen: list[tuple[gateway.Session, gateway.Message]]) -> gateway.App:
    app = gateway.App("slack-test")

    @app.message()
    async def handle(session: gateway.Session, msg: gateway.Message) -> None:
        seen.append((session, msg))
        await session.reply(f"echo: {msg.text}")

    return app


@pytest.fixture
async def slack():
    async with FakeSlack() as fake:
        fake.add_user("U1", email="ada@example.com", name="Ada")
        fake.add_user("U2", name="Bob")  # no email: the app lacks users:read.email for him
        yield fake


async def test_url_verification_is_answered(slack: FakeSlack, tmp_path) -> None:
    async with SlackGateway(echo_app([]), tmp_path, slack) as gw:
        body = json.dumps({"type": "url_verification", "challenge": "chal-123", "token": "x"}).encode()
        status, text, _ = await slack.deliver(gw.events_url, body, content_type="application/json")
        assert status == 200
        assert "chal-123" in text


async def test_dm_gets_a_reply_in_its_thread_with_the_users_identity(slack: FakeSlack, tmp_path) -> None:
    seen: list[tuple[gateway.Session, gateway.Message]] = []
    async with SlackGateway(echo_app(seen), tmp_path, slack) as gw:
        status, _, elapsed = await slack.deliver_event(
            gw.events_url, dm("hello *there* &amp; you", "100.000001"), event_id="Ev1"
        )
        assert status == 200 and elapsed < 3
        await slack.wait_for(lambda: slack.thread("D1", "100.000001"))
        session, msg = seen[0]
        assert msg.text == "hello *there* & you"
        assert msg.channel_type == "slack"
        assert session.channel.type == "slack"
        assert session.channel.address == {"chat_id": "D1", "thread_id": "100.000001", "team_id": "T0001"}
        assert session.user.email == "ada@example.com"
        assert slack.thread("D1", "100.000001")[0].visible_text == "echo: hello *there* & you"


async def test_replies_in_the_same_thread_share_a_session(slack: FakeSlack, tmp_path) -> None:
    seen: list[tuple[gateway.Session, gateway.Message]] = []
    async with SlackGateway(echo_app(seen), tmp_path, slack) as gw:
        await slack.deliver_event(gw.events_url, dm("one", "100.000001"), event_id="Ev1")
        await slack.deliver_event(gw.events_url, dm("two", "100.000002", thread_ts="100.000001"), event_id="Ev2")
        await slack.deliver_event(gw.events_url, dm("other", "100.000003"), event_id="Ev3")
        await slack.wait_for(lambda: len(seen) == 3)
        await gw.idle()
        ids = {m.text: s.id for s, m in seen}
        assert ids["one"] == ids["two"] != ids["other"]


async def test_per_dm_sessions_keep_one_session_and_reply_at_top_level(slack: FakeSlack, tmp_path) -> None:
    seen: list[tuple[gateway.Session, gateway.Message]] = []
    async with SlackGateway(echo_app(seen), tmp_path, slack, dm_sessions="per_dm") as gw:
        await slack.deliver_event(gw.events_url, dm("one", "100.000001"), event_id="Ev1")
        await slack.deliver_event(gw.events_url, dm("two", "100.000002"), event_id="Ev2")
        await slack.wait_for(lambda: len(slack.thread("D1", None)) == 2)
        assert seen[0][0].id == seen[1][0].id
        assert seen[0][0].channel.thread_id is None


async def test_retries_and_repeated_event_ids_are_processed_once(slack: FakeSlack, tmp_path) -> None:
    seen: list[tuple[gateway.Session, gateway.Message]] = []
    async with SlackGateway(echo_app(seen), tmp_path, slack) as gw:
        event = dm("once", "100.000001")
        first = await slack.deliver_event(gw.events_url, event, event_id="EvSame")
        retry = await slack.deliver_event(gw.events_url, event, event_id="EvSame", retry_num=1)
        again = await slack.deliver_event(gw.events_url, event, event_id="EvSame", retry_num=2)
        assert [r[0] for r in (first, retry, again)] == [200, 200, 200]
        await slack.wait_for(lambda: slack.thread("D1", "100.000001"))
        await gw.idle()
        await asyncio.sleep(0.1)
        assert len(seen) == 1
        assert len(slack.thread("D1", "100.000001")) == 1


@pytest.mark.parametrize(
    "bad",
    [
        {"signature": "v0=" + "0" * 64},  # wrong signature
        {"clock_offset": -6 * 60},  # stale: outside the 5-minute window
        {"clock_offset": 6 * 60},  # from the future
    ],
)
async def test_bad_signatures_are_refused_with_no_side_effect(slack: FakeSlack, tmp_path, bad) -> None:
    # Timestamps are taken when the test runs (not at collection: a long suite would drift).
    headers = dict(bad)
    if "clock_offset" in headers:
        headers = {"timestamp": int(time.time()) + headers.pop("clock_offset")}
    seen: list[tuple[gateway.Session, gateway.Message]] = []
    async with SlackGateway(echo_app(seen), tmp_path, slack) as gw:
        status, text, _ = await slack.deliver_event(
            gw.events_url, dm("evil", "100.000001"), event_id="EvBad", **headers
        )
        assert status == 401
        assert json.loads(text) == {"ok": False, "error": "invalid_signature"}
        # The same event, signed properly afterwards, is new to the gateway: nothing was recorded.
        status, _, _ = await slack.deliver_event(gw.events_url, dm("good", "100.000001"), event_id="EvBad")
        assert status == 200
        await slack.wait_for(lambda: seen)
        await gw.idle()
        assert [m.text for _, m in seen] == ["good"]


async def test_unsigned_and_malformed_requests_get_protocol_errors(slack: FakeSlack, tmp_path) -> None:
    import aiohttp

    async with SlackGateway(echo_app([]), tmp_path, slack) as gw, aiohttp.ClientSession() as http:
        async with http.post(gw.events_url, data=b"{}") as response:
            assert response.status == 401
            assert (await response.json())["ok"] is False
        async with http.post(gw.events_url, data=b"{}", headers={"X-Slack-Request-Timestamp": "abc"}) as response:
            assert response.status == 401
        body = b"\xff\xfe not utf-8"
        status, text, _ = await slack.deliver(gw.events_url, body, content_type="application/json")
        assert status == 400 and json.loads(text)["error"] == "invalid_payload"
        status, text, _ = await slack.deliver(gw.events_url, b"{not json", content_type="application/json")
        assert status == 400 and json.loads(text)["error"] == "invalid_payload"
        assert slack.calls_of("chat.postMessage") == []


async def test_ack_does_not_wait_for_the_handler(slack: FakeSlack, tmp_path) -> None:
    app = gateway.App("slow")
    release = asyncio.Event()

    @app.message()
    async def handle(session: gateway.Session, msg: gateway.Message) -> None:
        await release.wait()
        await session.reply("done")

    async with SlackGateway(app, tmp_path, slack) as gw:
        status, _, elapsed = await slack.deliver_event(gw.events_url, dm("hi", "100.000001"), event_id="Ev1")
        assert status == 200 and elapsed < 1.0
        # Acknowledged means recorded: the session exists although the handler has not finished.
        address = gateway.SessionChannel("slack", chat_id="D1", thread_id="100.000001", team_id="T0001")
        assert await gw.gateway.store.sessions.find(address) is not None
        release.set()
        await slack.wait_for(lambda: slack.thread("D1", "100.000001"))


async def test_mentions_open_a_thread_and_thread_replies_follow(slack: FakeSlack, tmp_path) -> None:
    seen: list[tuple[gateway.Session, gateway.Message]] = []
    async with SlackGateway(echo_app(seen), tmp_path, slack) as gw:
        url = gw.events_url
        # Slack sends both a message event and an app_mention for a mention: handled once.
        await slack.deliver_event(url, channel_message("<@UBOT> help me", "200.000001"), event_id="EvMsg")
        await slack.deliver_event(url, mention("help me", "200.000001"), event_id="EvMention")
        await slack.wait_for(lambda: slack.thread("C1", "200.000001"))
        # A reply in that thread, without a mention: the bot takes part, so it answers.
        await slack.deliver_event(url, channel_message("more", "200.000002", thread_ts="200.000001"), event_id="Ev3")
        # A reply in some other thread, and a top-level channel message: not for us.
        await slack.deliver_event(url, channel_message("chatter", "300.000002", thread_ts="300.000001"), event_id="Ev4")
        await slack.deliver_event(url, channel_message("lunch?", "300.000003"), event_id="Ev5")
        await slack.wait_for(lambda: len(slack.thread("C1", "200.000001")) == 2)
        await gw.idle()
        assert [m.text for _, m in seen] == ["help me", "more"]
        assert seen[0][0].id == seen[1][0].id
        assert seen[0][0].channel.thread_id == "200.000001"


async def test_thread_membership_survives_a_restart(slack: FakeSlack, tmp_path) -> None:
    seen: list[tuple[gateway.Session, gateway.Message]] = []
    async with SlackGateway(echo_app(seen), tmp_path, slack) as gw:
        await slack.deliver_event(gw.events_url, mention("start", "200.000001"), event_id="Ev1")
        await slack.wait_for(lambda: slack.thread("C1", "200.000001"))
    async with SlackGateway(echo_app(seen), tmp_path, slack) as gw:  # a new process, same database
        await slack.deliver_event(
            gw.events_url, channel_message("after restart", "200.000002", thread_ts="200.000001"), event_id="Ev2"
        )
        await slack.wait_for(lambda: len(slack.thread("C1", "200.000001")) == 2)
        assert seen[0][0].id == seen[1][0].id


async def test_replies_under_a_standalone_bot_message_open_a_session_for_that_thread(
    slack: FakeSlack, tmp_path
) -> None:
    """A broadcast (or a job's reply) to a channel session is a top-level message of the bot's;
    a user answering in its thread is heard, without a mention, in a session of that thread."""
    seen: list[tuple[gateway.Session, gateway.Message]] = []
    app = echo_app(seen)
    async with SlackGateway(app, tmp_path, slack) as gw:
        url = gw.events_url
        command = {"command": "/chatgate", "text": "subscribe", "team_id": "T0001", "channel_id": "C1"}
        await slack.deliver_command(url, {**command, "user_id": "U1", "trigger_id": "trig-1"})
        await slack.wait_for(lambda: slack.thread("C1", None))
        await gw.idle()
        channel_session = seen[0][0]
        result = await app.broadcast("Standup time: what are you working on?", session_ids=[channel_session.id])
        assert result.sent == [channel_session.id]
        posted = [m for m in slack.thread("C1", None) if m.visible_text.startswith("Standup")]
        assert len(posted) == 1
        parent = posted[0].ts

        def reply(text: str, ts: str, **kw: Any) -> dict[str, Any]:
            return channel_message(text, ts, thread_ts=parent, parent_user_id="UBOT", **kw)

        await slack.deliver_event(url, reply("the Slack adapter", "500.000001", user="U2"), event_id="Ev1")
        await slack.wait_for(lambda: len(slack.thread("C1", parent)) == 1)
        # The bot's own echo in that thread comes back as an event too: never answered.
        own = {**reply("echo: the Slack adapter", "500.000002", user="UBOT"), "bot_id": "BBOT"}
        await slack.deliver_event(url, own, event_id="Ev2")
        await slack.deliver_event(url, reply("and tests", "500.000003"), event_id="Ev3")
        # Threads under someone else's message, and top-level chatter, are still not for the bot.
        other = channel_message("me too", "500.000004", thread_ts="400.000001", parent_user_id="U1", user="U2")
        await slack.deliver_event(url, other, event_id="Ev4")
        await slack.deliver_event(url, channel_message("lunch?", "500.000005"), event_id="Ev5")
        await slack.wait_for(lambda: len(slack.thread("C1", parent)) == 2)
        await gw.idle()
        assert [m.text for _, m in seen] == ["subscribe", "the Slack adapter", "and tests"]
        thread_session = seen[1][0]
        assert thread_session.id == seen[2][0].id != channel_session.id
        assert thread_session.channel.address == {"chat_id": "C1", "thread_id": parent, "team_id": "T0001"}
        assert [m.visible_text for m in slack.thread("C1", parent)] == ["echo: the Slack adapter", "echo: and tests"]
        assert slack.thread("C1", "400.000001") == []
        assert len(slack.thread("C1", None)) == 2  # the command's echo and the broadcast: no more


async def test_own_messages_and_irrelevant_subtypes_are_ignored(slack: FakeSlack, tmp_path) -> None:
    seen: list[tuple[gateway.Session, gateway.Message]] = []
    async with SlackGateway(echo_app(seen), tmp_path, slack) as gw:
        url = gw.events_url
        events = [
            dm("from the bot", "100.000001", user="UBOT", bot_id="BBOT"),
            dm("another bot", "100.000002", user="UOTHER", bot_id="BOTHER"),
            {**dm("edited", "100.000003"), "subtype": "message_changed"},
            {**dm("gone", "100.000004"), "subtype": "message_deleted"},
            {**dm("joined", "100.000005"), "subtype": "channel_join"},
            {"type": "reaction_added", "user": "U1", "reaction": "tada", "item": {"type": "message"}},
        ]
        for i, event in enumerate(events):
            status, _, _ = await slack.deliver_event(url, event, event_id=f"EvIgnored{i}")
            assert status == 200
        await slack.deliver_event(url, dm("real", "100.000009"), event_id="EvReal")
        await slack.wait_for(lambda: seen)
        await gw.idle()
        assert [m.text for _, m in seen] == ["real"]


async def test_shared_files_arrive_as_attachments_downloaded_with_the_bot_token(slack: FakeSlack, tmp_path) -> None:
    got: list[bytes] = []
    app = gateway.App("files")

    @app.message()
    async def handle(session: gateway.Session, msg: gateway.Message) -> None:
        assert msg.attachments
        got.append(await msg.attachments[0].read())
        path = await msg.attachments[0].download(str(tmp_path))
        await session.reply(f"got {msg.attachments[0].name} ({msg.attachments[0].size} bytes) at {path}")

    async with SlackGateway(app, tmp_path, slack) as gw:
        shared = slack.add_file(b"%PDF-1.7 report", name="report.pdf", mimetype="application/pdf")
        event = {**dm("here", "100.000001"), "subtype": "file_share", "files": [shared]}
        await slack.deliver_event(gw.events_url, event, event_id="EvFile")
        await slack.wait_for(lambda: slack.thread("D1", "100.000001"))
        assert got == [b"%PDF-1.7 report"]
        assert "report.pdf (15 bytes)" in slack.thread("D1", "100.000001")[0].visible_text


async def test_slash_command_becomes_a_message(slack: FakeSlack, tmp_path) -> None:
    seen: list[tuple[gateway.Session, gateway.Message]] = []
    async with SlackGateway(echo_app(seen), tmp_path, slack) as gw:
        fields = {
            "command": "/chatgate",
            "text": "what is up",
            "team_id": "T0001",
            "channel_id": "C9",
            "user_id": "U2",
            "trigger_id": "trig-1",
            "response_url": "https://hooks.slack.test/x",
        }
        status, _, elapsed = await slack.deliver_command(gw.events_url, fields)
        assert status == 200 and elapsed < 3
        status, text, _ = await slack.deliver_command(
            gw.events_url, {**fields, "command": "/other", "trigger_id": "t2"}
        )
        assert status == 200 and "/chatgate" in text
        await slack.wait_for(lambda: slack.thread("C9", None))
        session, msg = seen[0]
        assert msg.text == "what is up"
        assert session.channel.address == {"chat_id": "C9", "team_id": "T0001"}
        assert session.user.email is None
        assert slack.thread("C9", None)[0].visible_text == "echo: what is up"


async def test_a_slash_command_where_the_bot_is_not_a_member_is_answered_through_its_response_url(
    slack: FakeSlack, tmp_path, caplog
) -> None:
    """chat.postMessage answers not_in_channel: the replies go to the command's response URL
    (final texts only: a stream's previews are skipped), at most the 5 it takes, and the URL is
    never logged."""
    app = gateway.App("outsider")

    @app.message()
    async def handle(session: gateway.Session, msg: gateway.Message) -> None:
        await session.reply(f"echo: {msg.text}")
        async with session.stream_reply() as reply:
            for i in range(30):
                reply.write(f"word{i} ")
                await asyncio.sleep(0.01)
        for i in range(5):  # one more than the response URL has left
            await session.reply(f"extra {i}")

    caplog.set_level(logging.DEBUG)
    slack.not_member_of.add("C9")
    response_url = slack.response_url("C9")
    async with SlackGateway(app, tmp_path, slack) as gw:
        fields = {
            "command": "/chatgate",
            "text": "what is up",
            "team_id": "T0001",
            "channel_id": "C9",
            "user_id": "U2",
            "trigger_id": "trig-1",
            "response_url": response_url,
        }
        status, _, _ = await slack.deliver_command(gw.events_url, fields)
        assert status == 200
        await slack.wait_for(lambda: len(slack.responses) == 5)
        await gw.idle()
        texts = [r.visible_text for r in slack.responses]
        assert texts == [
            "echo: what is up",
            "".join(f"word{i} " for i in range(30)).strip(),
            "extra 0",
            "extra 1",
            "extra 2",
        ]
        assert {(r.channel, r.response_type) for r in slack.responses} == {("C9", "in_channel")}
        assert slack.thread("C9", None) == []
        assert slack.calls_of("chat.update") == []  # no previews: a response URL message is not editable
        # Tried once, then known; once the URL's 5 messages are spent, chat.postMessage again.
        posts = slack.calls_of("chat.postMessage")
        assert [c.error for c in posts] == ["not_in_channel"] * 3
    logged = [r.getMessage() for r in caplog.records]
    assert not [m for m in logged if response_url.split("/commands/")[1] in m]
    assert any("not a member of C9" in m and "invite the bot" in m for m in logged)


async def test_a_slow_inbox_is_not_acknowledged_and_the_retry_is_handled_once(slack: FakeSlack, tmp_path) -> None:
    """Another process holds the SQLite file's write lock for longer than Slack waits: the event
    gets an error answer (no ack), and Slack's retry, after the lock is gone, runs it once."""
    import sqlite3

    seen: list[tuple[gateway.Session, gateway.Message]] = []
    async with SlackGateway(echo_app(seen), tmp_path, slack) as gw:
        locker = sqlite3.connect(tmp_path / "chatgate.db", timeout=1)
        locker.execute("BEGIN EXCLUSIVE")
        try:
            status, _, elapsed = await slack.deliver_event(gw.events_url, dm("slow", "100.000001"), event_id="EvSlow")
        finally:
            locker.rollback()
            locker.close()
        assert status == 500 and 2.0 < elapsed < 3, elapsed  # answered at the ack budget, inside Slack's 3 s
        status, _, _ = await slack.deliver_event(
            gw.events_url, dm("slow", "100.000001"), event_id="EvSlow", retry_num=1
        )
        assert status == 200
        await slack.wait_for(lambda: slack.thread("D1", "100.000001"))
        await gw.idle()
        await asyncio.sleep(0.2)
        assert [m.text for _, m in seen] == ["slow"]
        assert len(slack.thread("D1", "100.000001")) == 1


async def test_the_registry_starts_slack_from_settings(slack: FakeSlack, tmp_path) -> None:
    from adapters.slack import SlackAdapter
    from gateway.config import ConfigError
    from gateway.plugins import configured_adapters
    from tests.fakes.slack_api import slack_settings

    settings = slack_settings(tmp_path, slack)
    assert [type(a) for a in configured_adapters(settings)] == [SlackAdapter]
    assert configured_adapters(slack_settings(tmp_path, slack, signing_secret=None, app_token=None)) == []
    with pytest.raises(ConfigError, match=r"slack\.app_token"):
        SlackAdapter(slack_settings(tmp_path, slack, mode="socket", app_token=None))


def recorded(data_dir) -> tuple[int, int]:
    """(inbox rows, sessions) in the gateway's SQLite file: what a refused request must not add."""
    import sqlite3

    with sqlite3.connect(data_dir / "chatgate.db") as db:
        inbox = db.execute("SELECT count(*) FROM inbox").fetchone()[0]
        sessions = db.execute("SELECT count(*) FROM sessions").fetchone()[0]
    return inbox, sessions


def form(**fields: Any) -> tuple[bytes, str]:
    from urllib.parse import urlencode

    return urlencode(fields).encode(), "application/x-www-form-urlencoded"


def as_json(value: Any) -> tuple[bytes, str]:
    return json.dumps(value).encode(), "application/json"


def malformed_requests(slack: FakeSlack) -> dict[str, tuple[bytes, str]]:
    """Signed requests that are not payloads Slack sends: each must get a 400 and change nothing."""
    callback = slack.event_callback
    return {
        "a JSON array": as_json([1, 2]),
        "JSON null": as_json(None),
        "an empty body": (b"", "application/json"),
        "an interaction payload that is a list": form(payload="[1]"),
        "an event that is a string": as_json(callback("message", event_id="EvStr")),  # type: ignore[arg-type]
        "a DM without a channel": as_json(
            callback({"type": "message", "channel_type": "im", "user": "U1", "text": "x", "ts": "1.1"}, event_id="E1")
        ),
        "a DM with a malformed ts": as_json(callback(dm("x", "yesterday"), event_id="EvTs")),
        "a mention in a thread whose ts is a number": as_json(
            callback({**mention("x", "1.2"), "thread_ts": 1.1}, event_id="E2")
        ),
        "block_actions whose actions are a string": form(
            payload=json.dumps({"type": "block_actions", "user": {"id": "U1"}, "actions": "click"})
        ),
        "a slash command without a user or channel": form(command="/chatgate", text="hi", team_id="T0001"),
    }


async def test_malformed_payloads_are_refused_and_nothing_is_recorded(slack: FakeSlack, tmp_path) -> None:
    seen: list[tuple[gateway.Session, gateway.Message]] = []
    async with SlackGateway(echo_app(seen), tmp_path, slack) as gw:
        before = recorded(tmp_path)
        for name, (body, content_type) in malformed_requests(slack).items():
            status, text, _ = await slack.deliver(gw.events_url, body, content_type=content_type)
            assert (status, json.loads(text)) == (400, {"ok": False, "error": "invalid_payload"}), name
        assert recorded(tmp_path) == before
        assert [c.method for c in slack.calls] == ["auth.test"]  # no lookups, no messages
        # Still serving: a proper event right after is handled.
        status, _, _ = await slack.deliver_event(gw.events_url, dm("good", "100.000001"), event_id="EvGood")
        assert status == 200
        await slack.wait_for(lambda: slack.thread("D1", "100.000001"))
        assert [m.text for _, m in seen] == ["good"]


async def test_unknown_payload_types_get_a_clear_error(slack: FakeSlack, tmp_path) -> None:
    seen: list[tuple[gateway.Session, gateway.Message]] = []
    async with SlackGateway(echo_app(seen), tmp_path, slack) as gw:
        before = recorded(tmp_path)
        for body, content_type in (
            as_json({"type": "future_payload", "team_id": "T0001"}),
            form(payload=json.dumps({"type": "future_interaction", "user": {"id": "U1"}})),
        ):
            status, text, _ = await slack.deliver(gw.events_url, body, content_type=content_type)
            assert (status, json.loads(text)) == (400, {"ok": False, "error": "unsupported_payload_type"})
        # Slack's notice that it holds events back is acknowledged (it expects a 200), nothing more.
        notice = {"type": "app_rate_limited", "team_id": "T0001", "minute_rate_limited": 1, "api_app_id": "A1"}
        body, content_type = as_json(notice)
        status, text, _ = await slack.deliver(gw.events_url, body, content_type=content_type)
        assert (status, json.loads(text)) == (200, {"ok": True})
        assert recorded(tmp_path) == before
        status, _, _ = await slack.deliver_event(gw.events_url, dm("still here", "100.000001"), event_id="Ev1")
        assert status == 200
        await slack.wait_for(lambda: seen)
        assert seen[0][1].text == "still here"


async def test_oversized_bodies_are_refused_before_they_are_read(slack: FakeSlack, tmp_path) -> None:
    import aiohttp

    seen: list[tuple[gateway.Session, gateway.Message]] = []
    async with SlackGateway(echo_app(seen), tmp_path, slack) as gw, aiohttp.ClientSession() as http:
        limit = gw.settings.server.max_request_bytes
        event = dm("x" * limit, "100.000001")  # a signed event, just too large
        body = json.dumps(slack.event_callback(event, event_id="EvBig")).encode()
        headers = {"Content-Type": "application/json", **slack.sign(body)}
        async with http.post(gw.events_url, data=body, headers=headers) as response:
            assert response.status == 413
            assert await response.json() == {"ok": False, "error": "request_too_large"}

        async def chunks():  # no Content-Length: the limit holds while reading
            for start in range(0, len(body), 256 * 1024):
                yield body[start : start + 256 * 1024]

        async with http.post(gw.events_url, data=chunks(), headers=headers) as response:
            assert response.status == 413
            assert await response.json() == {"ok": False, "error": "request_too_large"}
        assert recorded(tmp_path) == (0, 0)
        status, _, _ = await slack.deliver_event(gw.events_url, dm("small", "100.000002"), event_id="EvSmall")
        assert status == 200
        await slack.wait_for(lambda: seen)
        assert [m.text for _, m in seen] == ["small"]


async def test_users_are_identified_by_team_and_user(slack: FakeSlack, tmp_path) -> None:
    """``session.user`` is the Slack user of a team: the same person in two threads is one user;
    another user, or the same user id from another team (a Slack Connect guest), is not."""
    import sqlite3

    seen: list[tuple[gateway.Session, gateway.Message]] = []
    async with SlackGateway(echo_app(seen), tmp_path, slack) as gw:
        await slack.deliver_event(gw.events_url, dm("one", "100.000001"), event_id="Ev1")
        await slack.deliver_event(gw.events_url, dm("two", "100.000002"), event_id="Ev2")
        await slack.deliver_event(gw.events_url, dm("bob", "100.000003", user="U2"), event_id="Ev3")
        guest = channel_message("<@UBOT> hi from afar", "200.000001")
        guest = {**guest, "type": "app_mention", "user_team": "T9", "team": "T0001"}
        await slack.deliver_event(gw.events_url, guest, event_id="Ev4")
        await slack.wait_for(lambda: len(seen) == 4)
        await gw.idle()
        users = {m.text: s.user for s, m in seen}
        assert users["one"].id == users["two"].id
        assert len({users["one"].id, users["bob"].id, users["hi from afar"].id}) == 3
        assert (users["one"].email, users["bob"].email) == ("ada@example.com", None)
        with sqlite3.connect(tmp_path / "chatgate.db") as db:
            identities = dict(db.execute("SELECT platform_user_id, user_id FROM identities WHERE platform = 'slack'"))
        assert identities == {
            "T0001:U1": users["one"].id,
            "T0001:U2": users["bob"].id,
            "T9:U1": users["hi from afar"].id,
        }


async def test_slacks_unsigned_ssl_check_gets_a_200_and_nothing_else(slack: FakeSlack, tmp_path) -> None:
    import aiohttp

    seen: list[tuple[gateway.Session, gateway.Message]] = []
    async with SlackGateway(echo_app(seen), tmp_path, slack) as gw, aiohttp.ClientSession() as http:
        form_type = {"Content-Type": "application/x-www-form-urlencoded"}
        async with http.post(gw.events_url, data=b"ssl_check=1&token=legacy", headers=form_type) as response:
            assert response.status == 200
        # ssl_check smuggled into an unsigned slash command: answered, never dispatched.
        command = {"command": "/chatgate", "text": "evil", "team_id": "T0001", "channel_id": "C1", "user_id": "U1"}
        smuggled, _ = form(ssl_check="1", **command)
        async with http.post(gw.events_url, data=smuggled, headers=form_type) as response:
            assert response.status == 200
        # Any other value is no certificate check: the signature is required as usual.
        unsigned, _ = form(ssl_check="true", **command)
        async with http.post(gw.events_url, data=unsigned, headers=form_type) as response:
            assert response.status == 401
        assert recorded(tmp_path) == (0, 0)
        assert [c.method for c in slack.calls] == ["auth.test"]
        assert seen == []


async def test_request_path_and_command_name_are_configurable(slack: FakeSlack, tmp_path) -> None:
    seen: list[tuple[gateway.Session, gateway.Message]] = []
    async with SlackGateway(echo_app(seen), tmp_path, slack, events_path="/hooks/slack", slash_command="/ask") as gw:
        assert gw.events_url.endswith("/hooks/slack")
        default_url = gw.events_url.replace("/hooks/slack", "/slack/events")
        status, _, _ = await slack.deliver_event(default_url, dm("wrong door", "100.000001"), event_id="Ev0")
        assert status == 404
        status, _, _ = await slack.deliver_event(gw.events_url, dm("right door", "100.000002"), event_id="Ev1")
        assert status == 200
        fields = {"team_id": "T0001", "channel_id": "C9", "user_id": "U1", "trigger_id": "trig-1"}
        status, text, _ = await slack.deliver_command(gw.events_url, {**fields, "command": "/chatgate", "text": "no"})
        assert status == 200 and "/ask" in text  # another app's command: told which one this app answers
        await slack.deliver_command(gw.events_url, {**fields, "command": "/ask", "text": "yes", "trigger_id": "t2"})
        await slack.wait_for(lambda: len(seen) == 2)
        await gw.idle()
        assert sorted(m.text for _, m in seen) == ["right door", "yes"]
