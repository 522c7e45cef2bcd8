"""Newer, optional Bot API methods against servers that lack them and answer oddly (issue 14, items
5 and 6), and rich drafts where the server has them.

Each test runs a real Gateway with the Telegram adapter against the local Bot API server
(``tests/fakes/telegram_api.py``), which answers the methods it does not have in one of the ways
real servers do: Telegram's ``404`` JSON, a JSON body without ``ok``, an HTML 404 page, ``400``
with a description of its own, a ``500``, a ``200`` whose body is not JSON. Whatever the answer,
every reply, stream and block arrives through the basic methods, and each optional method is
tried once, not on every message.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

import gateway
from adapters.telegram import TelegramAdapter
from gateway.runtime import Gateway
from gateway.testing import test_settings
from tests.fakes.telegram_api import UNKNOWN_METHOD_ANSWERS, FakeTelegramAPI
from tests.support import until

SCALE = 0.05
PRIVATE = 5001
GROUP = -100777
OPTIONAL = ("sendRichMessage", "sendRichMessageDraft", "sendMessageDraft", "sendChatAction")
ODD_ANSWERS = [a for a in UNKNOWN_METHOD_ANSWERS if a != "not_found"]
TOKENS = ["Here ", "is ", "**the ", "answer** ", "to ", "`your` ", "question", "."] * 3
STREAMED = "".join(TOKENS).replace("**", "").replace("`", "").strip()


@asynccontextmanager
async def running(app: gateway.App, tmp_path: Path, api: FakeTelegramAPI, **telegram: Any) -> AsyncIterator[Gateway]:
    settings = test_settings(
        tmp_path, telegram={**api.settings(rate_scale=SCALE, retry_backoff=0.2, group_trigger="all"), **telegram}
    )
    gw = Gateway(app, settings)
    await gw.start()
    try:
        yield gw
    finally:
        await gw.stop()


def everything_app() -> gateway.App:
    """Replies, a status, a stream and a block, chosen by the message's text."""
    app = gateway.App("everything")

    @app.message()
    async def handle(session: gateway.Session, msg: gateway.Message) -> None:
        if msg.text == "stream":
            async with session.stream_reply() as reply:
                for token in TOKENS:
                    reply.write(token)
                    await asyncio.sleep(0.005)
        elif msg.text == "block":
            await session.show_suggestions(["Yes", "No"], title="Go on?")
        else:
            await session.notify("Looking it up")
            await session.reply(f"**{msg.text}**: found")

    return app


async def exchange(api: FakeTelegramAPI, chat_id: int, text: str, expected: str) -> None:
    before = len(api.visible(chat_id))
    api.send_text(chat_id, text)
    await until(lambda: len(api.visible(chat_id)) > before, timeout=10)
    await until(lambda: api.visible_texts(chat_id)[-1] == expected, timeout=10)


@pytest.mark.parametrize("answer", ODD_ANSWERS)
async def test_every_reply_arrives_when_the_server_answers_optional_methods_oddly(tmp_path: Path, answer: str) -> None:
    async with (
        FakeTelegramAPI(
            rate_scale=SCALE,
            rich_supported=False,
            drafts_supported=False,
            chat_action_supported=False,
            unknown_method_answer=answer,
        ) as api,
        running(everything_app(), tmp_path, api),
    ):
        for _ in range(2):  # the second round must not try the optional methods again
            await exchange(api, PRIVATE, "stream", STREAMED)
            await exchange(api, PRIVATE, "reply", "reply: found")
            await exchange(api, PRIVATE, "block", "Go on?")
            await exchange(api, GROUP, "stream", STREAMED)
            await exchange(api, GROUP, "reply", "reply: found")
        await asyncio.sleep(0.1)
        assert api.visible_texts(PRIVATE) == [STREAMED, "reply: found", "Go on?"] * 2
        assert api.visible_texts(GROUP) == [STREAMED, "reply: found"] * 2
    for method in OPTIONAL:  # each failed once, then remembered for the bot
        assert len(api.calls_to(method)) == 1, (method, [c.status for c in api.calls_to(method)])
        assert not any(c.response.get("ok") is True for c in api.calls_to(method))
    reply = next(m for m in api.visible(PRIVATE) if m.text == "reply: found")
    assert {"type": "bold", "offset": 0, "length": 5} in reply.entities  # HTML carried the formatting
    block = next(m for m in api.visible(PRIVATE) if m.text == "Go on?")
    assert [b["text"] for row in block.reply_markup["inline_keyboard"] for b in row] == ["Yes", "No"]
    assert api.calls_to("editMessageText", ok=True)  # the streams went on by edits
    assert not api.rate_limited


@pytest.mark.parametrize("answer", ODD_ANSWERS)
async def test_a_final_reply_is_not_lost_when_only_rich_messages_fail(tmp_path: Path, answer: str) -> None:
    """The issue's case: a server with drafts and chat actions that answers ``sendRichMessage``
    oddly. The reply goes as HTML at once (no retries of the rich call), and the bot keeps using
    drafts for streams."""
    async with (
        FakeTelegramAPI(rate_scale=SCALE, rich_supported=False, unknown_method_answer=answer) as api,
        running(everything_app(), tmp_path, api),
    ):
        await exchange(api, PRIVATE, "hello", "hello: found")
        await exchange(api, PRIVATE, "stream", STREAMED)
        await exchange(api, PRIVATE, "again", "again: found")
    assert len(api.calls_to("sendRichMessage")) == 1
    assert api.calls_to("sendMessageDraft", ok=True)  # drafts still used: only the rich methods failed
    assert (PRIVATE, "typing") in api.chat_actions


async def test_a_failed_optional_method_is_tried_again_after_a_while(tmp_path: Path) -> None:
    async with (
        FakeTelegramAPI(rate_scale=SCALE, rich_supported=False, unknown_method_answer="no_ok") as api,
        running(everything_app(), tmp_path, api, optional_retry_after=0.3) as gw,
    ):
        adapter = next(a for a in gw.adapters if isinstance(a, TelegramAdapter))
        await exchange(api, PRIVATE, "one", "one: found")
        await exchange(api, PRIVATE, "two", "two: found")
        assert len(api.calls_to("sendRichMessage")) == 1  # off for now
        api.rich_supported = True  # the server was upgraded
        await asyncio.sleep(0.35)
        assert adapter.client.supports_rich
        await exchange(api, PRIVATE, "three", "**three**: found")
    assert [c.status for c in api.calls_to("sendRichMessage")] == [404, 200]
    assert api.visible(PRIVATE)[-1].kind == "rich"


async def test_a_refused_rich_text_goes_as_html_and_rich_messages_stay_on(tmp_path: Path) -> None:
    """A 400 about the text (not the method) falls back for that message only."""
    async with (
        FakeTelegramAPI(rate_scale=SCALE, rich_supported=True) as api,
        running(everything_app(), tmp_path, api),
    ):
        api.fail_next("sendRichMessage", status=400, description="Bad Request: can't parse entities: bad table")
        await exchange(api, PRIVATE, "one", "one: found")
        await exchange(api, PRIVATE, "two", "**two**: found")
    assert [c.status for c in api.calls_to("sendRichMessage")] == [400, 200]
    assert [m.kind for m in api.visible(PRIVATE)] == ["text", "rich"]


async def test_rate_limits_on_rich_messages_are_waited_out_not_taken_for_a_missing_method(tmp_path: Path) -> None:
    async with (
        FakeTelegramAPI(rate_scale=SCALE, rich_supported=True) as api,
        running(everything_app(), tmp_path, api),
    ):
        api.fail_next("sendRichMessage", status=429, description="Too Many Requests: retry after 1", retry_after=1)
        await exchange(api, PRIVATE, "one", "**one**: found")
    assert [c.status for c in api.calls_to("sendRichMessage")] == [429, 200]


async def test_a_rich_message_still_rate_limited_after_every_retry_goes_as_html(tmp_path: Path) -> None:
    async with (
        FakeTelegramAPI(rate_scale=SCALE, rich_supported=True) as api,
        running(everything_app(), tmp_path, api, retry_attempts=3),
    ):
        too_many = "Too Many Requests: retry after 1"
        api.fail_next("sendRichMessage", status=429, description=too_many, retry_after=1, times=3)
        await exchange(api, PRIVATE, "one", "one: found")
        await exchange(api, PRIVATE, "two", "**two**: found")  # not remembered: a rate limit is not the method's
    assert [c.status for c in api.calls_to("sendRichMessage")] == [429, 429, 429, 200]
    assert [m.kind for m in api.visible(PRIVATE)] == ["text", "rich"]


# -- rich drafts (item 6) ---------------------------------------------------------------------------


async def test_private_streams_use_rich_drafts_and_persist_with_a_rich_message(tmp_path: Path) -> None:
    async with (
        FakeTelegramAPI(rate_scale=SCALE, rich_supported=True) as api,
        running(everything_app(), tmp_path, api),
    ):
        await exchange(api, PRIVATE, "stream", "".join(TOKENS).strip())
        await exchange(api, GROUP, "stream", STREAMED)  # groups have no drafts: edits, HTML
    rich_drafts = [text for texts in api.rich_drafts.values() for text in texts]
    assert len(rich_drafts) >= 2 and any("**" in d for d in rich_drafts)  # Markdown, rendered by Telegram
    assert not any(d.count("**") % 2 for d in rich_drafts)  # half-arrived markers healed
    assert not api.calls_to("sendMessageDraft")
    (final,) = api.visible(PRIVATE)
    assert final.kind == "rich"
    assert [c.status for c in api.calls_to("sendRichMessage")] == [200]  # the one final message
    assert api.visible(GROUP)[0].kind == "text"


@pytest.mark.parametrize("answer", ["not_found", "no_ok", "server_error"])
async def test_without_rich_drafts_streams_use_plain_drafts_and_remember(tmp_path: Path, answer: str) -> None:
    async with (
        FakeTelegramAPI(
            rate_scale=SCALE, rich_supported=True, rich_drafts_supported=False, unknown_method_answer=answer
        ) as api,
        running(everything_app(), tmp_path, api),
    ):
        await exchange(api, PRIVATE, "stream", "".join(TOKENS).strip())
        await exchange(api, PRIVATE, "stream", "".join(TOKENS).strip())
    assert len(api.calls_to("sendRichMessageDraft")) == 1
    assert api.calls_to("sendMessageDraft", ok=True)
    assert [m.kind for m in api.visible(PRIVATE)] == ["rich", "rich"]  # the finals are still rich


async def test_rich_drafts_off_in_the_settings_are_never_tried(tmp_path: Path) -> None:
    async with (
        FakeTelegramAPI(rate_scale=SCALE, rich_supported=True) as api,
        running(everything_app(), tmp_path, api, rich_messages=False),
    ):
        await exchange(api, PRIVATE, "stream", STREAMED)
    assert not api.calls_to("sendRichMessageDraft") and not api.calls_to("sendRichMessage")
    assert api.calls_to("sendMessageDraft", ok=True)
