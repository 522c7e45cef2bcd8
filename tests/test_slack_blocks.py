"""Blocks on Slack: suggestion and approval buttons, a file prompt, images, task and integration cards."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

import gateway
from tests.fakes.slack_api import FakeSlack, SlackGateway

pytestmark = pytest.mark.timeout(30)

THREAD = "100.000001"


def dm_event(ts: str, *, text: str = "go", thread_ts: str | None = THREAD, **extra: Any) -> dict[str, Any]:
    event = {"type": "message", "channel": "D1", "channel_type": "im", "user": "U1", "text": text, "ts": ts}
    if thread_ts and thread_ts != ts:
        event["thread_ts"] = thread_ts
    return {**event, **extra}


def with_blocks(slack: FakeSlack, kind: str) -> list:
    return [m for m in slack.thread("D1", THREAD) if any(b.get("type") == kind for b in m.blocks)]


@pytest.fixture
async def slack():
    async with FakeSlack(time_scale=0.01) as fake:
        fake.add_user("U1", email="ada@example.com")
        yield fake


async def test_suggestion_buttons_send_their_prompt(slack: FakeSlack, tmp_path) -> None:
    seen: list[str] = []
    actions: list[gateway.Event] = []
    app = gateway.App("suggest")

    @app.message()
    async def handle(session: gateway.Session, msg: gateway.Message) -> None:
        seen.append(msg.text)
        if msg.text == "go":
            await session.show_suggestions(
                ["Tell me more", gateway.Suggestion("Reset", action="reset", payload={"hard": True})],
                title="Pick one",
            )
        else:
            await session.reply(f"you said {msg.text}")

    @app.action("reset")
    async def reset(session: gateway.Session, event: gateway.Event) -> None:
        actions.append(event)
        await session.reply("reset done")

    async with SlackGateway(app, tmp_path, slack) as gw:
        await slack.deliver_event(gw.events_url, dm_event(THREAD), event_id="Ev1")
        await slack.wait_for(lambda: with_blocks(slack, "actions"))
        [card] = with_blocks(slack, "actions")
        labels = [e["text"]["text"] for b in card.blocks if b["type"] == "actions" for e in b["elements"]]
        assert labels == ["Tell me more", "Reset"]

        status, _, elapsed = await slack.deliver_interactive(gw.events_url, slack.button_payload(card, "0"))
        assert status == 200 and elapsed < 3
        await slack.wait_for(lambda: any("you said Tell me more" in m.visible_text for m in slack.thread("D1", THREAD)))

        await slack.deliver_interactive(gw.events_url, slack.button_payload(card, "1"))
        await slack.wait_for(lambda: actions)
        assert actions[0].payload == {"hard": True}
        await gw.idle()
        assert seen == ["go", "Tell me more"]


async def test_a_repeated_interaction_is_handled_once(slack: FakeSlack, tmp_path) -> None:
    seen: list[str] = []
    app = gateway.App("suggest-once")

    @app.message()
    async def handle(session: gateway.Session, msg: gateway.Message) -> None:
        seen.append(msg.text)
        if msg.text == "go":
            await session.show_suggestions(["Again"])

    async with SlackGateway(app, tmp_path, slack) as gw:
        await slack.deliver_event(gw.events_url, dm_event(THREAD), event_id="Ev1")
        await slack.wait_for(lambda: with_blocks(slack, "actions"))
        payload = slack.button_payload(with_blocks(slack, "actions")[0], "0")
        for _ in range(2):
            status, _, _ = await slack.deliver_interactive(gw.events_url, payload)
            assert status == 200
        await slack.wait_for(lambda: len(seen) == 2)
        await gw.idle()
        await asyncio.sleep(0.1)
        assert seen == ["go", "Again"]


async def test_approval_buttons_answer_the_prompt_and_the_card_updates_in_place(slack: FakeSlack, tmp_path) -> None:
    answers: list[bool] = []
    app = gateway.App("approve")

    @app.message()
    async def handle(session: gateway.Session, msg: gateway.Message) -> None:
        answers.append(await session.prompt_approval("Deploy to production?", approve_label="Ship it"))
        await session.reply("deploying" if answers[-1] else "cancelled")

    async with SlackGateway(app, tmp_path, slack) as gw:
        await slack.deliver_event(gw.events_url, dm_event(THREAD), event_id="Ev1")
        await slack.wait_for(lambda: with_blocks(slack, "actions"))
        [card] = with_blocks(slack, "actions")
        assert "Deploy to production?" in card.visible_text
        await slack.deliver_interactive(gw.events_url, slack.button_payload(card, "approve"))
        await slack.wait_for(lambda: any(m.visible_text == "deploying" for m in slack.thread("D1", THREAD)))
        assert answers == [True]
        updated = slack.messages[("D1", card.ts)]
        assert updated.edits == 1  # the same message, edited: no buttons left, the outcome shown
        assert not any(b["type"] == "actions" for b in updated.blocks)
        assert "Ship it" in updated.visible_text


async def test_file_prompt_is_answered_by_the_next_file_in_the_thread(slack: FakeSlack, tmp_path) -> None:
    got: list[bytes] = []
    app = gateway.App("files")

    @app.message()
    async def handle(session: gateway.Session, msg: gateway.Message) -> None:
        upload = await session.prompt_file(message="Send me the CSV", accept=".csv", timeout=10)
        path = await upload.download(str(tmp_path / "in.csv"))
        got.append(await asyncio.to_thread(Path(path).read_bytes))
        await session.reply(f"thanks for {upload.name}")

    async with SlackGateway(app, tmp_path, slack) as gw:
        await slack.deliver_event(gw.events_url, dm_event(THREAD, text="import"), event_id="Ev1")
        await slack.wait_for(lambda: any("Send me the CSV" in m.visible_text for m in slack.thread("D1", THREAD)))
        [prompt] = slack.thread("D1", THREAD)
        assert "file" in prompt.visible_text.lower()
        shared = slack.add_file(b"a,b\n1,2\n", name="data.csv", mimetype="text/csv")
        event = dm_event("100.000002", text="", subtype="file_share", files=[shared])
        await slack.deliver_event(gw.events_url, event, event_id="Ev2")
        await slack.wait_for(lambda: any(m.visible_text == "thanks for data.csv" for m in slack.thread("D1", THREAD)))
        assert got == [b"a,b\n1,2\n"]
        assert "Received data.csv" in slack.messages[("D1", prompt.ts)].visible_text


async def test_local_image_is_uploaded_with_the_external_flow(slack: FakeSlack, tmp_path) -> None:
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
    (tmp_path / "chart.png").write_bytes(png)
    app = gateway.App("image")

    @app.message()
    async def handle(session: gateway.Session, msg: gateway.Message) -> None:
        await session.show_image(str(tmp_path / "chart.png"), alt="Sales chart")
        await session.show_image("https://example.com/cat.png", alt="A cat")

    async with SlackGateway(app, tmp_path, slack) as gw:
        await slack.deliver_event(gw.events_url, dm_event(THREAD), event_id="Ev1")
        await slack.wait_for(lambda: len(with_blocks(slack, "image")) == 2)
        local, remote = (m.blocks[0] for m in with_blocks(slack, "image"))
        uploaded = slack.files[local["slack_file"]["id"]]
        assert uploaded.data == png and uploaded.completed
        assert local["alt_text"] == "Sales chart"
        assert remote == {"type": "image", "alt_text": "A cat", "image_url": "https://example.com/cat.png"}
        assert [c.method for c in slack.calls if c.method.startswith("files.")] == [
            "files.getUploadURLExternal",
            "files.completeUploadExternal",
        ]


async def test_task_card_is_updated_in_place(slack: FakeSlack, tmp_path) -> None:
    app = gateway.App("tasks")

    @app.message()
    async def handle(session: gateway.Session, msg: gateway.Message) -> None:
        await session.show(
            gateway.Block("task_card", {"task_id": "t1", "name": "Export", "status": "running"}, id="task_t1")
        )
        await session.show(
            gateway.Block(
                "task_card",
                {"task_id": "t1", "name": "Export", "status": "completed", "result": "42 rows"},
                id="task_t1",
            )
        )

    async with SlackGateway(app, tmp_path, slack) as gw:
        await slack.deliver_event(gw.events_url, dm_event(THREAD), event_id="Ev1")
        await gw.idle()
        await slack.wait_for(lambda: slack.calls_of("chat.update"))
        [card] = slack.thread("D1", THREAD)
        assert card.edits == 1
        assert "completed" in card.visible_text and "42 rows" in card.visible_text


async def test_integration_card_has_a_link_button_that_is_only_acknowledged(slack: FakeSlack, tmp_path) -> None:
    seen: list[str] = []
    app = gateway.App("integration")

    @app.message()
    async def handle(session: gateway.Session, msg: gateway.Message) -> None:
        seen.append(msg.text)
        payload = {
            "type": "github",
            "reason": "I need GitHub to read your repos.",
            "mode": "oauth",
            "blocking": False,
            "connect_url": "https://gw.example/connect/github?state=abc",
        }
        await session.show(gateway.Block("integration_prompt", payload, id="int_github"))

    async with SlackGateway(app, tmp_path, slack) as gw:
        await slack.deliver_event(gw.events_url, dm_event(THREAD), event_id="Ev1")
        await slack.wait_for(lambda: with_blocks(slack, "actions"))
        [card] = with_blocks(slack, "actions")
        [button] = [e for b in card.blocks if b["type"] == "actions" for e in b["elements"]]
        assert button["url"] == "https://gw.example/connect/github?state=abc"
        status, _, _ = await slack.deliver_interactive(gw.events_url, slack.button_payload(card, "connect"))
        assert status == 200
        await gw.idle()
        assert seen == ["go"]


async def test_many_suggestions_stay_within_block_kit_limits(slack: FakeSlack, tmp_path) -> None:
    app = gateway.App("many")
    seen: list[str] = []

    @app.message()
    async def handle(session: gateway.Session, msg: gateway.Message) -> None:
        seen.append(msg.text)
        await session.show_suggestions([f"Option {i} " + "with a very long label indeed " * 4 for i in range(30)])

    async with SlackGateway(app, tmp_path, slack) as gw:
        await slack.deliver_event(gw.events_url, dm_event(THREAD), event_id="Ev1")
        await slack.wait_for(lambda: with_blocks(slack, "actions"))
        [card] = with_blocks(slack, "actions")
        buttons = [e for b in card.blocks if b["type"] == "actions" for e in b["elements"]]
        assert len(buttons) == 30
        assert all(len(b["text"]["text"]) <= 75 for b in buttons)
        assert not [c for c in slack.calls if c.error]
        # A press on a button in the second actions block still names the right chatgate block.
        payload = slack.button_payload(card, "27")
        assert payload["actions"][0]["block_id"].endswith("~1")
        await slack.deliver_interactive(gw.events_url, payload)
        await slack.wait_for(lambda: len(seen) == 2)
        assert seen[1].startswith("Option 27 ")


async def test_blocks_for_a_command_where_the_bot_is_not_a_member_arrive_without_buttons(
    slack: FakeSlack, tmp_path
) -> None:
    """Through a slash command's response URL a card is shown, but without its buttons: their
    cards could not be edited in place where the bot is not a member."""
    app = gateway.App("suggest-outside")

    @app.message()
    async def handle(session: gateway.Session, msg: gateway.Message) -> None:
        await session.show_suggestions(["Tell me more"], title="Pick one")

    slack.not_member_of.add("C9")
    fields = {"command": "/chatgate", "text": "go", "team_id": "T0001", "channel_id": "C9", "user_id": "U1"}
    async with SlackGateway(app, tmp_path, slack) as gw:
        await slack.deliver_command(
            gw.events_url, {**fields, "trigger_id": "t1", "response_url": slack.response_url("C9")}
        )
        await slack.wait_for(lambda: slack.responses)
        await gw.idle()
        [response] = slack.responses
        assert "Pick one" in response.visible_text
        assert response.response_type == "in_channel"
        assert not [b for b in response.body.get("blocks") or [] if b.get("type") == "actions"]
        assert [c.error for c in slack.calls_of("chat.postMessage")] == ["not_in_channel"]
