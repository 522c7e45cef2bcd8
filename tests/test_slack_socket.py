"""Socket Mode against a local WebSocket server speaking Slack's envelope protocol."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from slack_sdk.socket_mode.request import SocketModeRequest

import gateway
from adapters.slack.socket_mode import CONTROL_TYPES, check_envelope
from tests.fakes.slack_api import FakeSlack, SlackGateway
from tests.fakes.slack_socket import FakeSocketMode

pytestmark = pytest.mark.timeout(30)


def dm(text: str, ts: str) -> dict[str, Any]:
    return {"type": "message", "channel": "D1", "channel_type": "im", "user": "U1", "text": text, "ts": ts}


def echo_app(seen: list[str]) -> gateway.App:
    app = gateway.App("socket")

    @app.message()
    async def handle(session: gateway.Session, msg: gateway.Message) -> None:
        seen.append(msg.text)
        if msg.text == "buttons":
            await session.show_suggestions(["Yes"])
        else:
            await session.reply(f"echo: {msg.text}")

    return app


@pytest.fixture
async def socket_slack():
    async with FakeSlack(time_scale=0.01) as slack:
        slack.add_user("U1", email="ada@example.com")
        socket = await FakeSocketMode(slack).start()
        try:
            yield slack, socket
        finally:
            await socket.stop()


async def test_events_are_acknowledged_after_they_are_recorded(socket_slack, tmp_path) -> None:
    slack, socket = socket_slack
    seen: list[str] = []
    async with SlackGateway(echo_app(seen), tmp_path, slack, mode="socket", signing_secret=None) as gw:
        await asyncio.wait_for(socket.connected.wait(), 5)
        assert slack.calls_of("apps.connections.open")[0].token == slack.app_token
        delivery = await socket.deliver("events_api", slack.event_callback(dm("hi", "100.000001"), event_id="Ev1"))
        assert delivery.ack == {"envelope_id": delivery.envelope_id}
        assert delivery.attempts == 1
        # Acknowledged means recorded: the session and its inbox entry exist already.
        address = gateway.SessionChannel("slack", chat_id="D1", thread_id="100.000001", team_id="T0001")
        assert await gw.gateway.store.sessions.find(address) is not None
        await slack.wait_for(lambda: slack.thread("D1", "100.000001"))
        assert slack.thread("D1", "100.000001")[0].visible_text == "echo: hi"


async def test_redelivered_envelopes_are_processed_once(socket_slack, tmp_path) -> None:
    slack, socket = socket_slack
    seen: list[str] = []
    async with SlackGateway(echo_app(seen), tmp_path, slack, mode="socket", signing_secret=None) as gw:
        payload = slack.event_callback(dm("once", "100.000001"), event_id="EvSame")
        first = await socket.send_envelope("events_api", payload, envelope_id="env-1")
        again = await socket.send_envelope("events_api", payload, envelope_id="env-2", retry_attempt=1)
        for envelope_id in (first, again):
            await asyncio.wait_for(socket.deliveries[envelope_id].acked.wait(), 3)
        await slack.wait_for(lambda: slack.thread("D1", "100.000001"))
        await gw.idle()
        await asyncio.sleep(0.1)
        assert seen == ["once"]
        assert len(slack.thread("D1", "100.000001")) == 1


async def test_interactive_and_slash_command_envelopes(socket_slack, tmp_path) -> None:
    slack, socket = socket_slack
    seen: list[str] = []
    async with SlackGateway(echo_app(seen), tmp_path, slack, mode="socket", signing_secret=None):
        await socket.deliver("events_api", slack.event_callback(dm("buttons", "100.000001"), event_id="Ev1"))
        await slack.wait_for(lambda: any(m.blocks for m in slack.thread("D1", "100.000001")))
        card = slack.thread("D1", "100.000001")[0]
        delivery = await socket.deliver("interactive", slack.button_payload(card, "0"))
        assert delivery.ack is not None and delivery.attempts == 1
        await slack.wait_for(lambda: "Yes" in seen)

        command = {
            "command": "/chatgate",
            "text": "from a command",
            "team_id": "T0001",
            "channel_id": "C7",
            "user_id": "U1",
            "trigger_id": "trig-9",
        }
        delivery = await socket.deliver("slash_commands", command)
        assert delivery.ack is not None and delivery.attempts == 1
        await slack.wait_for(lambda: slack.thread("C7", None))
        assert slack.thread("C7", None)[0].visible_text == "echo: from a command"


async def test_reconnects_when_slack_asks_it_to(socket_slack, tmp_path) -> None:
    slack, socket = socket_slack
    seen: list[str] = []
    async with SlackGateway(echo_app(seen), tmp_path, slack, mode="socket", signing_secret=None):
        await asyncio.wait_for(socket.connected.wait(), 5)
        await socket.disconnect_all()
        await slack.wait_for(lambda: socket.connect_count >= 2, timeout=10)
        await asyncio.wait_for(socket.connected.wait(), 5)
        delivery = await socket.deliver("events_api", slack.event_callback(dm("after", "100.000002"), event_id="Ev2"))
        assert delivery.ack is not None
        await slack.wait_for(lambda: slack.thread("D1", "100.000002"))


def _envelope(envelope_id: str, **fields: Any) -> str:
    return json.dumps({"envelope_id": envelope_id, **fields})


MALFORMED: dict[str, tuple[Callable[[str], str], bool]] = {
    # name: (the message, given its envelope_id; whether the id can be read back to acknowledge it)
    "not JSON, cut off": (lambda e: f'{{"envelope_id": "{e}", "type": "events_api", "payload": {{"ty', True),
    "not JSON at all": (lambda e: "<html>502 Bad Gateway</html>", False),
    "a JSON list": (lambda e: json.dumps([e, "events_api"]), False),
    "no payload": (lambda e: _envelope(e, type="events_api"), True),
    "payload not an object": (lambda e: _envelope(e, type="events_api", payload="event"), True),
    "payload not an event": (lambda e: _envelope(e, type="events_api", payload={"type": "block_actions"}), True),
    "event_callback without event": (
        lambda e: _envelope(e, type="events_api", payload={"type": "event_callback"}),
        True,
    ),
    "interactive without type": (lambda e: _envelope(e, type="interactive", payload={"actions": []}), True),
    "slash command without command": (lambda e: _envelope(e, type="slash_commands", payload={"text": "x"}), True),
    "unknown type": (lambda e: _envelope(e, type="workflow_steps", payload={"type": "x"}), True),
    "no envelope_id": (lambda e: json.dumps({"type": "events_api", "payload": {"type": "event_callback"}}), False),
}


@pytest.mark.parametrize("case", list(MALFORMED))
async def test_a_malformed_envelope_is_acknowledged_logged_once_and_the_next_event_served(
    socket_slack, tmp_path, caplog, case: str
) -> None:
    slack, socket = socket_slack
    seen: list[str] = []
    make, has_id = MALFORMED[case]
    async with SlackGateway(echo_app(seen), tmp_path, slack, mode="socket", signing_secret=None):
        envelope_id = f"bad-{secrets.token_hex(4)}"
        caplog.clear()
        delivery = await socket.send_raw(make(envelope_id), envelope_id=envelope_id if has_id else None)
        if delivery is not None:
            await asyncio.wait_for(delivery.acked.wait(), 3)
            assert delivery.ack == {"envelope_id": envelope_id}
        good = await socket.deliver("events_api", slack.event_callback(dm("after", "100.000001"), event_id="EvGood"))
        assert good.ack is not None and good.attempts == 1  # the connection still serves
        await slack.wait_for(lambda: slack.thread("D1", "100.000001"))
        assert slack.thread("D1", "100.000001")[0].visible_text == "echo: after"
        assert seen == ["after"] and socket.connect_count == 1
    lines = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    line = lines[0].getMessage()
    assert line.startswith("slack socket mode: dropped") and not lines[0].exc_info
    assert (f"acknowledged envelope {envelope_id}" in line) == has_id


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
ENVELOPE_KEYS = st.sampled_from(["type", "envelope_id", "payload", "event", "command", "accepts_response_payload"])
TYPES = st.sampled_from(["events_api", "interactive", "slash_commands", "hello", "disconnect", "other", ""])


def envelopes() -> st.SearchStrategy[Any]:
    """Envelope-shaped JSON: the known keys with well- and ill-typed values, nested once."""
    payload = st.dictionaries(
        st.sampled_from(["type", "event", "command"]), JSON | TYPES | st.fixed_dictionaries({"type": TYPES}), max_size=3
    )
    return st.dictionaries(ENVELOPE_KEYS, JSON | TYPES | payload, max_size=5)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=60), JSON.map(json.dumps), envelopes().map(json.dumps)))
def test_every_message_is_either_usable_by_bolt_or_refused_with_a_reason(raw: str) -> None:
    verdict = check_envelope(raw)
    if verdict.problem is None:
        kind = verdict.message.get("type")
        assert kind in CONTROL_TYPES or SocketModeRequest.from_dict(verdict.message) is not None
        assert kind in CONTROL_TYPES or isinstance(verdict.message["payload"], dict)
    else:
        assert verdict.problem and (verdict.envelope_id is None or isinstance(verdict.envelope_id, str))
