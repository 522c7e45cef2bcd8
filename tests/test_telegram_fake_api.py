"""The local Bot API server itself: the protocol and the limits the adapter's tests rely on.

Driven through aiogram's own client (the same bytes the adapter sends) and raw HTTP where the
point is the wire shape.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import TelegramBadRequest, TelegramConflictError, TelegramNotFound, TelegramRetryAfter
from aiogram.types import BufferedInputFile, InlineKeyboardButton, InlineKeyboardMarkup

from tests.fakes.telegram_api import UNKNOWN_METHOD_ANSWERS, FakeTelegramAPI, HtmlParseError, parse_html

SCALE = 0.05


@pytest.fixture
async def api() -> AsyncIterator[FakeTelegramAPI]:
    async with FakeTelegramAPI(rate_scale=SCALE) as server:
        yield server


@pytest.fixture
async def bot(api: FakeTelegramAPI) -> AsyncIterator[Bot]:
    client = Bot(api.token, session=AiohttpSession(api=TelegramAPIServer.from_base(api.base_url)))
    yield client
    await client.session.close()


def test_html_parser_follows_telegrams_subset() -> None:
    text, entities = parse_html('<b>bold <i>both</i></b> &lt;x&gt; &amp; <a href="https://e.x">l</a>')
    assert text == "bold both <x> & l"
    assert {"type": "bold", "offset": 0, "length": 9} in entities
    assert {"type": "italic", "offset": 5, "length": 4} in entities
    assert {"type": "text_link", "offset": 16, "length": 1, "url": "https://e.x"} in entities
    text, entities = parse_html('<pre><code class="language-py">a &lt; b</code></pre>')
    assert text == "a < b" and entities == [{"type": "pre", "offset": 0, "length": 5, "language": "py"}]
    assert parse_html("😀<b>x</b>")[1] == [{"type": "bold", "offset": 2, "length": 1}]  # UTF-16 offsets
    for bad in (
        "<b>open",
        "a < b",
        "x & y",
        "<div>x</div>",
        "<b><i>x</b></i>",
        "<code><b>x</b></code>",
        '<span class="no">x</span>',
        "<a>x</a>",
        "1 > 0",
    ):
        with pytest.raises(HtmlParseError):
            parse_html(bad)


async def test_messages_limits_and_edits(api: FakeTelegramAPI, bot: Bot) -> None:
    sent = await bot.send_message(1, "<b>hi</b>", parse_mode="HTML")
    assert sent.text == "hi" and sent.entities[0].type == "bold"
    await asyncio.sleep(SCALE * 1.1)
    with pytest.raises(TelegramBadRequest, match="can't parse entities"):
        await bot.send_message(1, "<b>hi", parse_mode="HTML")
    await asyncio.sleep(SCALE * 1.1)
    with pytest.raises(TelegramBadRequest, match="message is too long"):
        await bot.send_message(1, "x" * 4097)
    await asyncio.sleep(SCALE * 1.1)
    await bot.send_message(1, "&amp;" * 4096, parse_mode="HTML")  # 4,096 after parsing is fine
    await asyncio.sleep(SCALE * 1.1)
    with pytest.raises(TelegramBadRequest, match="message is too long"):
        await bot.send_message(1, "😀" * 2049)  # 4,098 UTF-16 units
    await asyncio.sleep(SCALE * 1.1)
    with pytest.raises(TelegramBadRequest, match="text is empty"):
        await bot.send_message(1, "<b></b>", parse_mode="HTML")
    await asyncio.sleep(SCALE * 1.1)
    with pytest.raises(TelegramBadRequest, match="not modified"):
        await bot.edit_message_text("<b>hi</b>", chat_id=1, message_id=sent.message_id, parse_mode="HTML")
    await asyncio.sleep(SCALE * 1.1)
    await bot.edit_message_text("hi", chat_id=1, message_id=sent.message_id)  # entities differ: modified
    await asyncio.sleep(SCALE * 1.1)
    with pytest.raises(TelegramBadRequest, match="caption is too long"):
        await bot.send_photo(1, BufferedInputFile(b"img", "a.png"), caption="c" * 1025)
    await asyncio.sleep(SCALE * 1.1)
    with pytest.raises(TelegramBadRequest, match="BUTTON_DATA_INVALID"):
        await bot.send_message(
            1,
            "b",
            reply_markup=InlineKeyboardMarkup(
                inline_keyboard=[[InlineKeyboardButton(text="x", callback_data="d" * 65)]]
            ),
        )
    assert api.visible_texts(1) == ["hi", "&" * 4096]


async def test_rate_limits_answer_429_with_retry_after(api: FakeTelegramAPI, bot: Bot) -> None:
    await bot.send_message(1, "one")
    with pytest.raises(TelegramRetryAfter) as caught:
        await bot.send_message(1, "two")  # one a second per chat
    assert caught.value.retry_after == 1
    await bot.send_message(2, "another chat is not affected")
    for i in range(20):  # groups: twenty a minute
        await bot.send_message(-5, f"g{i}")
        await asyncio.sleep(SCALE * 1.05)
    with pytest.raises(TelegramRetryAfter):
        await bot.send_message(-5, "21st")
    await bot.send_message_draft(1, 9, text="drafts have their own budget")
    assert len(api.rate_limited) == 2


async def test_global_budget() -> None:
    # Thirty a (scaled) second: the window is 10 s so that 40 sends always fit in it, however
    # slowly a loaded machine gets them out.
    async with FakeTelegramAPI(rate_scale=10.0) as api:
        bot = Bot(api.token, session=AiohttpSession(api=TelegramAPIServer.from_base(api.base_url)))
        try:
            results = await asyncio.gather(
                *(bot.send_message(chat, "x") for chat in range(1, 41)), return_exceptions=True
            )
        finally:
            await bot.session.close()
    assert sum(isinstance(r, TelegramRetryAfter) for r in results) == 10  # thirty a second


async def test_get_updates_acknowledges_by_offset_and_long_polls(api: FakeTelegramAPI, bot: Bot) -> None:
    first = api.send_text(1, "a")
    updates = await bot.get_updates(timeout=0)
    assert [u.update_id for u in updates] == [first]
    assert [u.update_id for u in await bot.get_updates(timeout=0)] == [first]  # not confirmed yet
    assert await bot.get_updates(offset=first + 1, timeout=0) == []
    assert api.pending_updates == []
    poll = asyncio.create_task(bot.get_updates(offset=first + 1, timeout=5))
    await asyncio.sleep(0.05)
    second = api.send_text(1, "b")
    assert [u.update_id for u in await asyncio.wait_for(poll, 2)] == [second]


async def test_a_second_poller_ends_the_first_and_webhooks_block_polling(api: FakeTelegramAPI, bot: Bot) -> None:
    first = asyncio.create_task(bot.get_updates(timeout=5))
    await asyncio.sleep(0.05)
    second = asyncio.create_task(bot.get_updates(timeout=0))
    with pytest.raises(TelegramConflictError, match="terminated by other getUpdates"):
        await asyncio.wait_for(first, 2)
    await second
    await bot.set_webhook("http://127.0.0.1:9/hook", secret_token="s3cret")
    with pytest.raises(TelegramConflictError, match="webhook is active"):
        await bot.get_updates(timeout=0)
    await bot.delete_webhook()
    assert await bot.get_updates(timeout=0) == []


async def test_webhook_delivery_with_secret_and_retries_until_2xx(api: FakeTelegramAPI, bot: Bot) -> None:
    received: list[tuple[str | None, int]] = []
    answers = iter([500, 200, 200])

    async def hook(request: aiohttp.web.Request) -> aiohttp.web.Response:
        body = await request.json()
        received.append((request.headers.get("X-Telegram-Bot-Api-Secret-Token"), body["update_id"]))
        return aiohttp.web.Response(status=next(answers))

    app = aiohttp.web.Application()
    app.router.add_post("/hook", hook)
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        update_id = api.send_text(1, "hello")
        await bot.set_webhook(f"http://127.0.0.1:{port}/hook", secret_token="s3cret")
        for _ in range(200):
            if len(received) >= 2:
                break
            await asyncio.sleep(0.01)
    finally:
        await runner.cleanup()
    assert received[:2] == [("s3cret", update_id), ("s3cret", update_id)]  # redelivered after the 500
    assert api.pending_updates == []


async def test_files_upload_get_file_and_download(api: FakeTelegramAPI, bot: Bot) -> None:
    sent = await bot.send_document(-7, BufferedInputFile(b"%PDF", "r.pdf"), caption="report")
    assert sent.document is not None and sent.caption == "report"
    file = await bot.get_file(sent.document.file_id)
    data = await bot.download_file(file.file_path)  # type: ignore[arg-type]
    assert data is not None and data.read() == b"%PDF"
    with pytest.raises(TelegramBadRequest, match="invalid file_id"):
        await bot.get_file("nope")


async def test_missing_methods_knobs_and_wire_errors(api: FakeTelegramAPI, bot: Bot) -> None:
    api.drafts_supported = False
    with pytest.raises(TelegramNotFound):
        await bot.send_message_draft(1, 5, text="x")
    api.fail_next("sendChatAction", status=502)
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{api.base_url}/bot{api.token}/sendChatAction", json={"chat_id": 1, "action": "typing"}
        ) as r:
            assert r.status == 502 and (await r.json())["ok"] is False
        async with http.post(f"{api.base_url}/botWRONG/getMe") as r:
            assert r.status == 401 and (await r.json())["description"] == "Unauthorized"
        async with http.post(f"{api.base_url}/bot{api.token}/noSuchMethod") as r:
            assert r.status == 404
        async with http.post(
            f"{api.base_url}/bot{api.token}/sendMessage", data=b"{oops", headers={"Content-Type": "application/json"}
        ) as r:
            assert r.status == 400 and "JSON" in (await r.json())["description"]
    assert [c.status for c in api.calls_to("sendChatAction")] == [502]


EXPECTED_ANSWERS = {
    # unknown_method_answer: (status, content type, what the body is)
    "not_found": (404, "application/json", lambda body: json.loads(body)["description"] == "Not Found"),
    "no_ok": (404, "application/json", lambda body: "ok" not in json.loads(body)),
    "html_404": (404, "text/html", lambda body: body.startswith("<html>")),
    "odd_400": (400, "application/json", lambda body: "PARAMETERS_INVALID" in json.loads(body)["description"]),
    "server_error": (500, "application/json", lambda body: json.loads(body)["ok"] is False),
    "not_json": (200, "text/plain", lambda body: body == "OK"),
}


@pytest.mark.parametrize("answer", UNKNOWN_METHOD_ANSWERS)
async def test_a_method_the_server_lacks_is_answered_the_configured_way(answer: str) -> None:
    status, content_type, body_is = EXPECTED_ANSWERS[answer]
    async with (
        FakeTelegramAPI(rich_supported=False, unknown_method_answer=answer) as api,
        aiohttp.ClientSession() as http,
    ):
        for method in ("sendRichMessage", "sendRichMessageDraft", "noSuchMethod"):
            async with http.post(f"{api.base_url}/bot{api.token}/{method}", json={"chat_id": 1}) as response:
                assert response.status == status and response.content_type == content_type
                assert body_is(await response.text())
        async with http.post(f"{api.base_url}/bot{api.token}/getMe") as response:
            assert (await response.json())["ok"] is True  # the methods it has answer as usual
    assert [c.method for c in api.calls] == ["sendRichMessage", "sendRichMessageDraft", "noSuchMethod", "getMe"]
    with pytest.raises(ValueError):
        FakeTelegramAPI(unknown_method_answer="teapot")


async def test_rich_drafts_follow_rich_messages_unless_set() -> None:
    async with (
        FakeTelegramAPI(rich_supported=True, rich_drafts_supported=False) as api,
        aiohttp.ClientSession() as http,
    ):
        draft = {"chat_id": 5, "draft_id": 7, "rich_message": {"markdown": "**hi**"}}
        async with http.post(f"{api.base_url}/bot{api.token}/sendRichMessageDraft", json=draft) as response:
            assert response.status == 404
        api.rich_drafts_supported = None  # as rich messages
        async with http.post(f"{api.base_url}/bot{api.token}/sendRichMessageDraft", json=draft) as response:
            assert response.status == 200
        async with http.post(f"{api.base_url}/bot{api.token}/sendRichMessageDraft", json={**draft, "chat_id": -5}) as r:
            assert r.status == 400  # drafts only in private chats
    assert api.rich_drafts == {(5, 7): ["**hi**"]} and api.drafts == {(5, 7): ["**hi**"]}
