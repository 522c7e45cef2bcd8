"""The local Slack itself, driven with slack_sdk: it must refuse what Slack refuses, or the adapter
tests prove nothing. Plus the pure inbound helpers."""

from __future__ import annotations

import aiohttp
import pytest
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack.blocks import envelope_block_id, render_block
from adapters.slack.files import is_slack_file_url
from adapters.slack.inbound import BotIdentity, clean_text, route_message
from tests.fakes.slack_api import FakeSlack

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def slack():
    async with FakeSlack(time_scale=0.01) as fake:
        yield fake


def client_for(slack: FakeSlack, token: str | None = None) -> AsyncWebClient:
    return AsyncWebClient(token=token or slack.bot_token, base_url=slack.api_url, retry_handlers=[])


async def error_of(call) -> str:
    with pytest.raises(SlackApiError) as caught:
        await call
    return str(caught.value.response["error"])


async def test_auth_and_tokens(slack: FakeSlack) -> None:
    auth = await client_for(slack).auth_test()
    assert (auth["user_id"], auth["team_id"], auth["bot_id"]) == ("UBOT", "T0001", "BBOT")
    assert await error_of(client_for(slack, "xoxb-wrong").auth_test()) == "invalid_auth"
    assert await error_of(client_for(slack).apps_connections_open(app_token=slack.bot_token)) == "invalid_auth"


async def test_message_limits(slack: FakeSlack) -> None:
    slack.rate_limits = False  # many posts in a row to one channel: only the size limits matter here
    client = client_for(slack)
    assert await error_of(client.chat_postMessage(channel="C1", text="x" * 40_001)) == "msg_too_long"
    with pytest.warns(UserWarning, match="top-level `text` argument is missing"):  # slack_sdk says so too
        assert await error_of(client.chat_postMessage(channel="C1")) == "no_text"
    section = {"type": "section", "text": {"type": "mrkdwn", "text": "x" * 3001}}
    assert await error_of(client.chat_postMessage(channel="C1", text="t", blocks=[section])) == "invalid_blocks"
    many = [{"type": "section", "text": {"type": "mrkdwn", "text": "x"}}] * 51
    assert await error_of(client.chat_postMessage(channel="C1", text="t", blocks=many)) == "invalid_blocks"
    markdown = [{"type": "markdown", "text": "x" * 6001}, {"type": "markdown", "text": "y" * 6000}]
    assert await error_of(client.chat_postMessage(channel="C1", text="t", blocks=markdown)) == "msg_blocks_too_long"
    label = {"type": "button", "text": {"type": "plain_text", "text": "x" * 76}, "value": "0", "action_id": "a"}
    buttons = [{"type": "actions", "block_id": "b", "elements": [label]}]
    assert await error_of(client.chat_postMessage(channel="C1", text="t", blocks=buttons)) == "invalid_blocks"
    posted = await client.chat_postMessage(channel="C1", text="ok")
    assert await error_of(client.chat_update(channel="C1", ts=posted["ts"], text="x" * 4001)) == "msg_too_long"
    assert await error_of(client.chat_update(channel="C1", ts="1.000009", text="x")) == "message_not_found"


async def test_streaming_state(slack: FakeSlack) -> None:
    slack.rate_limits = False
    client = client_for(slack)
    error = await error_of(client.chat_startStream(channel="C1", thread_ts="1.000001"))
    assert error == "missing_recipient_user_id"
    started = await client.chat_startStream(channel="D1", thread_ts="1.000001", markdown_text="Hel")
    await client.chat_appendStream(channel="D1", ts=started["ts"], markdown_text="lo")
    await client.chat_stopStream(channel="D1", ts=started["ts"], markdown_text="!")
    assert slack.messages[("D1", started["ts"])].markdown == "Hello!"
    error = await error_of(client.chat_appendStream(channel="D1", ts=started["ts"], markdown_text="more"))
    assert error == "message_not_in_streaming_state"
    error = await error_of(client.chat_startStream(channel="D1", thread_ts="1.1", markdown_text="x" * 12_001))
    assert error == "msg_too_long"


async def test_external_upload_and_private_download(slack: FakeSlack) -> None:
    client = client_for(slack)
    ticket = await client.files_getUploadURLExternal(filename="a.txt", length=5)
    async with aiohttp.ClientSession() as http:
        async with http.post(ticket["upload_url"], data=b"hello") as response:
            assert response.status == 200
        done = await client.files_completeUploadExternal(files=[{"id": ticket["file_id"], "title": "A"}])
        assert done["files"][0]["id"] == ticket["file_id"]
        shared = slack.add_file(b"secret", name="s.txt", mimetype="text/plain")
        async with http.get(shared["url_private"], allow_redirects=False) as response:
            assert response.status == 302  # no token: Slack sends you to its login page
        headers = {"Authorization": f"Bearer {slack.bot_token}"}
        async with http.get(shared["url_private"], headers=headers) as response:
            assert await response.read() == b"secret"


async def test_rate_limits_answer_429_with_retry_after(slack: FakeSlack) -> None:
    slack.set_budget("chat.update", 1, 1.0)
    client = client_for(slack)
    posted = await client.chat_postMessage(channel="C1", text="x")
    await client.chat_update(channel="C1", ts=posted["ts"], text="y")
    with pytest.raises(SlackApiError) as caught:
        await client.chat_update(channel="C1", ts=posted["ts"], text="z")
    assert caught.value.response.status_code == 429
    assert 0 < float(caught.value.response.headers["Retry-After"]) <= 1.0
    assert slack.rate_limited_calls()[0].method == "chat.update"


async def test_users_info_and_status(slack: FakeSlack) -> None:
    slack.add_user("U1", email="a@example.com")
    client = client_for(slack)
    assert (await client.users_info(user="U1"))["user"]["profile"]["email"] == "a@example.com"
    assert await error_of(client.users_info(user="U404")) == "user_not_found"
    await client.assistant_threads_setStatus(channel_id="D1", thread_ts="1.000001", status="thinking")
    assert slack.statuses == [{"channel_id": "D1", "thread_ts": "1.000001", "status": "thinking"}]
    error = await error_of(client.assistant_threads_setStatus(channel_id="C1", thread_ts="1.000001", status="x"))
    assert error == "channel_type_not_supported"


def test_route_message() -> None:
    bot = BotIdentity("UBOT", "BBOT")
    base = {"type": "message", "user": "U1", "text": "hi", "ts": "1.1"}
    assert route_message({**base, "channel": "D1", "channel_type": "im"}, bot) == "dm"
    assert route_message({**base, "channel": "C1", "channel_type": "channel"}, bot) == "ignore"
    assert route_message({**base, "channel": "C1", "thread_ts": "1.0"}, bot) == "thread"
    assert route_message({**base, "channel": "C1", "thread_ts": "1.0", "text": "<@UBOT> hi"}, bot) == "ignore"
    assert route_message({**base, "channel": "D1", "subtype": "message_changed"}, bot) == "ignore"
    assert route_message({**base, "channel": "D1", "subtype": "file_share"}, bot) == "dm"
    assert route_message({**base, "channel": "D1", "bot_id": "B2"}, bot) == "ignore"


def test_clean_text() -> None:
    assert clean_text("<@UBOT> hi <@U2> &lt;tag&gt; &amp; <https://x.y|site> <https://z.w>", "UBOT") == (
        "hi <@U2> <tag> & site (https://x.y) https://z.w"
    )


def test_token_is_sent_only_to_slack_hosts() -> None:
    api = "http://127.0.0.1:9999/api/"
    assert is_slack_file_url("https://files.slack.com/files-pri/T1-F1/a.png", "https://slack.com/api/")
    assert is_slack_file_url("http://127.0.0.1:9999/files-pri/F1/a", api)
    assert not is_slack_file_url("http://127.0.0.1:8888/files-pri/F1/a", api)
    assert not is_slack_file_url("https://evil.example/slack.com/a", "https://slack.com/api/")
    assert not is_slack_file_url("http://files.slack.com/a", "https://slack.com/api/")  # never over plain http


def test_block_ids_survive_button_pagination() -> None:
    envelope = {
        "id": "blk_1",
        "type": "suggestions",
        "payload": {"suggestions": [{"label": str(i)} for i in range(30)]},
    }
    rendered = render_block(envelope)
    assert rendered is not None
    ids = [b["block_id"] for b in rendered.blocks if b["type"] == "actions"]
    assert ids == ["blk_1", "blk_1~1"]
    assert {envelope_block_id(i) for i in ids} == {"blk_1"}
    assert render_block({"id": "t", "type": "session_title", "payload": {"title": "x"}}) is None
    fallback = render_block({"id": "u", "type": "mystery", "payload": {"a": 1}})
    assert fallback is not None and '"a": 1' in fallback.blocks[0]["text"]["text"]
