"""End to end: a real Gateway (SQLite file, dispatcher, HTTP server) with the Telegram adapter,
talking to the local Bot API server in ``tests/fakes/telegram_api.py`` through ``api_url``.

Rate windows are scaled by ``SCALE`` on both sides (the fake's limits and the adapter's pacing),
so Telegram's real budgets are enforced in miniature and every test asserts zero 429s where the
adapter must not provoke any.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import gateway
from adapters.telegram import TelegramAdapter
from adapters.telegram.adapter import WEBHOOK_MAX_BODY
from adapters.telegram.render import render_telegram
from gateway.runtime import Gateway
from gateway.testing import test_settings
from tests.fakes.telegram_api import FakeTelegramAPI, RateWindow, TelegramRates
from tests.support import until

SCALE = 0.05
PRIVATE = 5001
GROUP = -100777


def make_settings(tmp_path: Path, api: FakeTelegramAPI, **telegram: Any) -> Any:
    return test_settings(tmp_path, telegram={**api.settings(rate_scale=SCALE, retry_backoff=0.2), **telegram})


@asynccontextmanager
async def running(app: gateway.App, tmp_path: Path, api: FakeTelegramAPI, **telegram: Any) -> AsyncIterator[Gateway]:
    gw = Gateway(app, make_settings(tmp_path, api, **telegram))
    await gw.start()
    try:
        yield gw
    finally:
        await gw.stop()


@pytest.fixture
async def api() -> AsyncIterator[FakeTelegramAPI]:
    async with FakeTelegramAPI(rate_scale=SCALE) as server:
        yield server


def echo_app(seen: list[Any] | None = None) -> gateway.App:
    app = gateway.App("tg-test")

    @app.message()
    async def handle(session: gateway.Session, msg: gateway.Message) -> None:
        if seen is not None:
            seen.append((session, msg))
        await session.reply(f"echo: {msg.text}")

    return app


# -- inbound -------------------------------------------------------------------------------------


async def test_private_message_polling_reply_and_session_address(tmp_path: Path, api: FakeTelegramAPI) -> None:
    seen: list[Any] = []
    async with running(echo_app(seen), tmp_path, api) as gw:
        assert any(isinstance(a, TelegramAdapter) for a in gw.adapters)  # loaded by the registry
        api.send_text(PRIVATE, "hi **there**")
        await until(lambda: api.visible_texts(PRIVATE))
        assert api.visible_texts(PRIVATE) == ["echo: hi there"]
        session, msg = seen[0]
        assert session.channel.type == "telegram"
        assert session.channel.chat_id == str(PRIVATE) and session.channel.thread_id is None
        assert msg.channel_type == "telegram" and msg.text == "hi **there**"
        sent = api.visible(PRIVATE)[0]
        assert {"type": "bold", "offset": 9, "length": 5} in sent.entities  # rendered as HTML
        # the server has no rich messages: one 404, remembered, then HTML
        assert [c.status for c in api.calls_to("sendRichMessage")] == [404]
        api.send_text(PRIVATE, "again")
        await until(lambda: len(api.visible_texts(PRIVATE)) == 2)
        assert len(api.calls_to("sendRichMessage")) == 1
        async def stored() -> list[Any]:  # a reply is stored just after it is sent
            records, total = await gw.store.messages.page(session.id)
            return records if total == 4 else []

        records = await until(stored)
        assert [r.role for r in records] == ["user", "assistant", "user", "assistant"]
        assert records[1].platform_refs == [str(sent.message_id)]
    assert not api.rate_limited


async def test_rich_messages_where_the_server_has_them(tmp_path: Path) -> None:
    app = gateway.App("mirror")

    @app.message()
    async def handle(session: gateway.Session, msg: gateway.Message) -> None:
        await session.reply(msg.text)

    async with FakeTelegramAPI(rate_scale=SCALE, rich_supported=True) as api, running(app, tmp_path, api):
        api.send_text(PRIVATE, "| a | b |\n|---|---|\n| 1 | 2 |")
        await until(lambda: api.visible(PRIVATE))
        sent = api.visible(PRIVATE)[0]
        assert sent.kind == "rich" and "| a | b |" in sent.text
        assert not api.calls_to("sendMessage")


async def test_webhook_mode_secret_and_bad_requests(tmp_path: Path, api: FakeTelegramAPI) -> None:
    async with running(echo_app(), tmp_path, api, mode="webhook", webhook_path="/tg/hook") as gw:
        assert api.webhook is not None and api.webhook["url"] == f"{gw.public_url}/tg/hook"
        secret = api.webhook["secret_token"]
        assert secret
        api.send_text(PRIVATE, "via webhook")
        await until(lambda: api.visible_texts(PRIVATE))
        assert api.visible_texts(PRIVATE) == ["echo: via webhook"]
        assert not api.calls_to("getUpdates")
        async with aiohttp.ClientSession() as http:
            url = f"{gw.public_url}/tg/hook"
            async with http.post(url, json={"update_id": 1}, headers={"X-Telegram-Bot-Api-Secret-Token": "no"}) as r:
                assert r.status == 401 and (await r.json())["ok"] is False
            headers = {"X-Telegram-Bot-Api-Secret-Token": secret}
            async with http.post(url, data=b"{not json", headers=headers) as r:
                assert r.status == 400
            async with http.post(url, json={"update_id": "x", "message": 3}, headers=headers) as r:
                assert r.status == 400 and "update" in (await r.json())["error"]
            async with http.post(url, json={"update_id": 2}) as r:  # no secret at all
                assert r.status == 401 and (await r.json())["ok"] is False
            # a secret header that is not ASCII (hmac.compare_digest refuses such str): still a 401
            assert (await raw_post(gw.public_url, "/tg/hook", "X-Telegram-Bot-Api-Secret-Token: é€\r\n"))[0] == 401
            oversized = {"update_id": 3, "message": api.message(PRIVATE, "x" * WEBHOOK_MAX_BODY)}
            async with http.post(url, json=oversized, headers=headers) as r:
                assert r.status == 413 and "larger" in (await r.json())["error"]

            async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the limit holds while reading
                yield b'{"update_id": 4, "message": {"text": "'
                for _ in range(WEBHOOK_MAX_BODY // 65536 + 1):
                    yield b"y" * 65536
                yield b'"}}'

            async with http.post(url, data=chunks(), headers=headers) as r:
                assert r.status == 413 and (await r.json())["ok"] is False
            # the same update delivered twice runs once (dedup by update_id)
            update = {"update_id": 99, "message": api.message(PRIVATE, "twice")}
            for _ in range(2):
                async with http.post(url, json=update, headers=headers) as r:
                    assert r.status == 200
        await until(lambda: len(api.visible_texts(PRIVATE)) == 2)
        # still serving: Telegram's next delivery is answered 200 and handled
        api.send_text(PRIVATE, "after the bad requests")
        await until(lambda: len(api.visible_texts(PRIVATE)) == 3)
        await asyncio.sleep(0.2)
        assert api.visible_texts(PRIVATE) == ["echo: via webhook", "echo: twice", "echo: after the bad requests"]
        assert {status for _, status in api.webhook_deliveries} == {200} and not api.pending_updates


async def raw_post(base_url: str, path: str, header_lines: str, body: bytes = b"{}") -> tuple[int, bytes]:
    """POST with header bytes as given (UTF-8), which aiohttp's client would not send."""
    host, port = base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n{header_lines}\r\n"
    )
    writer.write(head.encode() + body)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


async def test_groups_hear_mentions_replies_and_commands_and_topics_are_sessions(
    tmp_path: Path, api: FakeTelegramAPI
) -> None:
    seen: list[Any] = []
    api.add_forum(GROUP)
    async with running(echo_app(seen), tmp_path, api):
        api.send_text(GROUP, "not for the bot")
        api.send_text(GROUP, f"@{api.bot_username}2 is another bot")
        api.send_text(
            GROUP,
            f"@{api.bot_username} hello",
            entities=[{"type": "mention", "offset": 0, "length": len(api.bot_username) + 1}],
        )
        await until(lambda: api.visible_texts(GROUP))
        bot_message = api.visible(GROUP)[0]
        api.send_text(
            GROUP,
            "a reply",
            reply_to_message={
                "message_id": bot_message.message_id,
                "date": 0,
                "chat": api.chat(GROUP),
                "from": {"id": api.bot_id, "is_bot": True, "first_name": "chatgate"},
                "text": bot_message.text,
            },
        )
        api.send_text(
            GROUP,
            f"/help@{api.bot_username}",
            entities=[{"type": "bot_command", "offset": 0, "length": len(api.bot_username) + 6}],
        )
        api.send_text(GROUP, "in a topic @" + api.bot_username, thread_id=77)
        await until(lambda: len(api.visible_texts(GROUP)) == 4)
        assert sorted(api.visible_texts(GROUP)) == ["echo: /help", "echo: a reply", "echo: hello", "echo: in a topic"]
        by_text = {msg.text: session for session, msg in seen}
        topic_session = by_text["in a topic"]
        assert topic_session.channel.thread_id == "77" and by_text["hello"].channel.thread_id is None
        assert topic_session.id != by_text["hello"].id and by_text["a reply"].id == by_text["hello"].id
        topic_reply = next(m for m in api.visible(GROUP) if m.text == "echo: in a topic")
        assert topic_reply.thread_id == 77  # the reply went to the topic
    assert not api.rate_limited


async def test_edited_messages_are_ignored_by_default(tmp_path: Path, api: FakeTelegramAPI) -> None:
    async with running(echo_app(), tmp_path, api):
        api.inject({"edited_message": {**api.message(PRIVATE, "edited text"), "edit_date": 1}})
        api.send_text(PRIVATE, "next")  # same session, handled after the edit would have been
        await until(lambda: api.visible_texts(PRIVATE))
        await asyncio.sleep(0.1)
    assert api.visible_texts(PRIVATE) == ["echo: next"]


async def test_a_topic_the_bot_opened_does_not_make_every_message_in_it_a_reply(
    tmp_path: Path, api: FakeTelegramAPI
) -> None:
    api.add_forum(GROUP)
    topic_root = {  # Telegram sets this as reply_to_message on every message in the topic
        "message_id": 88,
        "message_thread_id": 88,
        "date": 0,
        "chat": api.chat(GROUP),
        "from": {"id": api.bot_id, "is_bot": True, "first_name": "chatgate"},
        "forum_topic_created": {"name": "Reports", "icon_color": 7322096},
        "is_topic_message": True,
    }
    async with running(echo_app(), tmp_path, api):
        api.send_text(GROUP, "just talking in the topic", thread_id=88, reply_to_message=topic_root)
        api.send_text(GROUP, f"@{api.bot_username} now you", thread_id=88, reply_to_message=topic_root)
        await until(lambda: api.visible_texts(GROUP))
        await asyncio.sleep(0.1)
    assert api.visible_texts(GROUP) == ["echo: now you"]
    assert api.visible(GROUP)[0].thread_id == 88


async def test_group_trigger_all_and_edited_messages_as_new(tmp_path: Path, api: FakeTelegramAPI) -> None:
    async with running(echo_app(), tmp_path, api, group_trigger="all", edited_messages="as_new"):
        api.send_text(GROUP, "plain group talk")
        message = api.message(PRIVATE, "edited text")
        api.inject({"edited_message": {**message, "edit_date": 1}})
        await until(lambda: api.visible_texts(GROUP) and api.visible_texts(PRIVATE))
        assert api.visible_texts(GROUP) == ["echo: plain group talk"]
        assert api.visible_texts(PRIVATE) == ["echo: edited text"]


async def test_every_attachment_kind_downloads_through_get_file(tmp_path: Path, api: FakeTelegramAPI) -> None:
    got: list[tuple[str, str, bytes]] = []
    app = gateway.App("files")

    @app.message()
    async def handle(session: gateway.Session, msg: gateway.Message) -> None:
        for attachment in msg.attachments or []:
            got.append((attachment.name, attachment.content_type, await attachment.read()))
        await session.reply(f"{len(msg.attachments or [])} file(s), caption {msg.text!r}")

    small, large = api.add_file(b"small"), api.add_file(b"LARGE PHOTO")
    voice, audio, video = api.add_file(b"ogg"), api.add_file(b"mp3"), api.add_file(b"mp4")

    def meta(file_id: str) -> dict[str, Any]:
        return {"file_id": file_id, "file_unique_id": api.files[file_id].file_unique_id}

    async with running(app, tmp_path, api):
        api.inject(
            {
                "message": api.message(
                    PRIVATE,
                    None,
                    caption="look",
                    photo=[{**meta(small), "width": 90, "height": 60}, {**meta(large), "width": 1280, "height": 960}],
                )
            }
        )
        api.send_document(PRIVATE, b"%PDF-1", name="report.pdf", mime_type="application/pdf")
        api.inject(
            {"message": api.message(PRIVATE, None, voice={**meta(voice), "duration": 2, "mime_type": "audio/ogg"})}
        )
        api.inject(
            {
                "message": api.message(
                    PRIVATE, None, audio={**meta(audio), "duration": 2, "file_name": "a.mp3", "mime_type": "audio/mpeg"}
                )
            }
        )
        api.inject(
            {
                "message": api.message(
                    PRIVATE,
                    None,
                    video={**meta(video), "duration": 2, "width": 2, "height": 2, "mime_type": "video/mp4"},
                )
            }
        )
        api.inject(
            {
                "message": api.message(
                    PRIVATE,
                    None,
                    sticker={
                        **meta(small),
                        "type": "regular",
                        "width": 1,
                        "height": 1,
                        "is_animated": False,
                        "is_video": False,
                    },
                )
            }
        )
        await until(lambda: len(api.visible_texts(PRIVATE)) == 5, timeout=8)
    names = {name: (ctype, data) for name, ctype, data in got}
    photo = next(v for k, v in names.items() if k.startswith("photo_"))
    assert photo == ("image/jpeg", b"LARGE PHOTO")
    assert names["report.pdf"] == ("application/pdf", b"%PDF-1")
    assert names["a.mp3"] == ("audio/mpeg", b"mp3")
    assert any(k.startswith("voice_") and v == ("audio/ogg", b"ogg") for k, v in names.items())
    assert any(k.startswith("video_") and v == ("video/mp4", b"mp4") for k, v in names.items())
    assert api.visible_texts(PRIVATE)[0] == "1 file(s), caption 'look'"  # the sticker was ignored


# -- streaming -----------------------------------------------------------------------------------


def streaming_app(tokens: list[str], delay: float = 0.002) -> gateway.App:
    app = gateway.App("stream")

    @app.message()
    async def handle(session: gateway.Session, msg: gateway.Message) -> None:
        async with session.stream_reply() as reply:
            for token in tokens:
                reply.write(token)
                await asyncio.sleep(delay)

    return app


async def test_private_stream_uses_drafts_then_one_exact_final_message(tmp_path: Path, api: FakeTelegramAPI) -> None:
    tokens = [f"word{i} " for i in range(300)]
    async with running(streaming_app(tokens), tmp_path, api) as gw:
        api.send_text(PRIVATE, "go")
        await until(lambda: api.visible(PRIVATE), timeout=10)
        await asyncio.sleep(0.1)
        session = await gw.store.sessions.find(gateway.SessionChannel("telegram", chat_id=str(PRIVATE)))
        assert session is not None
        records, _ = await gw.store.messages.page(session.id)
        reply = records[-1]
        assert reply.role == "assistant" and reply.status == "complete"
        assert reply.platform_refs == [str(api.visible(PRIVATE)[0].message_id)]  # the final message's id
    assert api.visible_texts(PRIVATE) == ["".join(tokens).strip()]
    assert len(api.calls_to("sendMessage", ok=True)) == 1 and not api.calls_to("editMessageText")
    drafts = api.calls_to("sendMessageDraft", ok=True)
    assert len(drafts) >= 3
    assert len({c.params["draft_id"] for c in drafts}) == 1
    assert not api.rate_limited


async def test_stream_frames_never_show_half_arrived_markdown(tmp_path: Path, api: FakeTelegramAPI) -> None:
    tokens = ["Some ", "**impor", "tant", " words**", " and ", "[a li", "nk](https://exa", "mple.com)", " end"] * 6
    async with running(streaming_app(tokens, delay=0.03), tmp_path, api):
        api.send_text(PRIVATE, "go")
        await until(lambda: api.visible(PRIVATE), timeout=10)
    drafts = [text for texts in api.drafts.values() for text in texts]
    assert len(drafts) >= 3
    assert not any("*" in d or "](" in d for d in drafts)  # healed: bold, and a link shows its label
    final = api.visible(PRIVATE)[0]
    assert "*" not in final.text and any(e["type"] == "text_link" for e in final.entities)


async def test_group_stream_edits_within_budget_and_rolls_over(tmp_path: Path, api: FakeTelegramAPI) -> None:
    paragraph = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 12).strip() + "\n\n"
    tokens = [paragraph[i : i + 40] for i in range(0, len(paragraph), 40)] * 14  # ~9.6k characters
    async with running(streaming_app(tokens, delay=0.001), tmp_path, api, group_trigger="all"):
        api.send_text(GROUP, "go")
        expected = "".join(tokens).strip()
        await until(lambda: "\n\n".join(api.visible_texts(GROUP)) == expected, timeout=20)
    texts = api.visible_texts(GROUP)
    assert len(texts) == 3 and all(len(t) <= 4096 for t in texts)
    assert "\n\n".join(texts) == "".join(tokens).strip()
    assert api.calls_to("editMessageText", ok=True) and not api.calls_to("sendMessageDraft")
    assert not api.rate_limited


async def test_a_stream_outgrowing_its_message_posts_the_next_while_the_bot_is_busy(tmp_path: Path) -> None:
    """Previews yield to a busy bot budget, but a part the text has outgrown is posted at once:
    it is not left for close to send after the last token, one chat interval per message."""
    first = "\n\n".join(f"Paragraph {i}: " + "a" * 700 for i in range(4))
    second = "\n\n" + "\n\n".join(f"Paragraph {i}: " + "b" * 700 for i in range(4, 8))
    first_shown, release = asyncio.Event(), asyncio.Event()
    app = gateway.App("busy")

    @app.message()
    async def handle(session: gateway.Session, msg: gateway.Message) -> None:
        async with session.stream_reply() as reply:
            reply.write(first)
            await first_shown.wait()
            reply.write(second)  # now two messages' worth
            await release.wait()

    async def noise(adapter: TelegramAdapter, chat_id: int, stop: asyncio.Event) -> None:
        while not stop.is_set():  # other chats keep the bot's budget full
            await adapter.client.send_part(chat_id, render_telegram("noise")[0])

    rates = TelegramRates(global_=RateWindow(2, 1.0))
    async with (
        FakeTelegramAPI(rate_scale=SCALE, rates=rates) as api,
        running(app, tmp_path, api, use_drafts=False, global_rate=2) as gw,
    ):
        adapter = next(a for a in gw.adapters if isinstance(a, TelegramAdapter))
        stop = asyncio.Event()
        noisy = [asyncio.create_task(noise(adapter, 9000 + i, stop)) for i in range(4)]
        try:
            await until(lambda: len(api.calls_to("sendMessage", ok=True)) >= 8)
            api.send_text(PRIVATE, "go")
            await until(lambda: api.visible(PRIVATE))
            first_shown.set()
            await until(lambda: len(api.visible(PRIVATE)) == 2)  # while the handler still writes
            release.set()
            await until(lambda: "\n\n".join(api.visible_texts(PRIVATE)) == first + second)
        finally:
            stop.set()
            release.set()
            await asyncio.gather(*noisy)
    assert not api.rate_limited


async def test_without_draft_support_streams_by_edits_and_remembers(tmp_path: Path) -> None:
    tokens = [f"t{i} " for i in range(60)]
    async with (
        FakeTelegramAPI(rate_scale=SCALE, drafts_supported=False) as api,
        running(streaming_app(tokens, delay=0.003), tmp_path, api),
    ):
        api.send_text(PRIVATE, "one")
        await until(
            lambda: (
                len(api.calls_to("sendMessage", ok=True)) == 1
                and api.visible_texts(PRIVATE) == ["".join(tokens).strip()]
            ),
            timeout=10,
        )
        api.send_text(PRIVATE, "two")
        await until(lambda: api.visible_texts(PRIVATE) == ["".join(tokens).strip()] * 2, timeout=10)
    assert len(api.calls_to("sendMessageDraft")) == 1  # tried once, answered 404, remembered
    assert api.calls_to("editMessageText", ok=True)
    assert not api.rate_limited


async def test_a_stream_frame_returns_once_its_text_is_shown(tmp_path: Path) -> None:
    """The StreamSink contract (gateway/outbound.py): ``frame`` waits while its preview is paced
    or on the wire, so the core's pump coalesces the tokens written meanwhile (issue 10)."""
    interval = 0.4
    async with (
        FakeTelegramAPI(rate_scale=SCALE, latency=0.05) as api,
        running(echo_app(), tmp_path, api, group_edit_interval=interval / SCALE, rich_messages=False) as gw,
    ):
        adapter = next(a for a in gw.adapters if isinstance(a, TelegramAdapter))
        group = adapter.outbox(gateway.SessionChannel("telegram", chat_id=str(GROUP)), "s-group").open_stream("m1")
        await group.frame("first")
        assert api.visible_texts(GROUP) == ["first"]  # sent before frame returned
        await group.frame("first and second")  # waits out the group's edit interval, then edits
        assert api.visible_texts(GROUP) == ["first and second"]
        send, edit = api.calls_to("sendMessage", ok=True)[0], api.calls_to("editMessageText", ok=True)[0]
        assert edit.at - send.at >= interval
        assert await group.close("first and second, done", stopped=False) == [str(api.visible(GROUP)[0].message_id)]

        private = adapter.outbox(gateway.SessionChannel("telegram", chat_id=str(PRIVATE)), "s-dm").open_stream("m2")
        await private.frame("a draft")
        assert next(iter(api.drafts.values()), None) == ["a draft"]  # on the server when frame returned
        await private.close("a draft, final", stopped=False)
    assert api.visible_texts(GROUP) == ["first and second, done"]
    assert api.visible_texts(PRIVATE) == ["a draft, final"]
    assert not api.rate_limited


async def test_stop_button_on_the_draft_cancels_the_handler(tmp_path: Path, api: FakeTelegramAPI) -> None:
    cancelled = asyncio.Event()
    app = gateway.App("stop")

    @app.message()
    async def handle(session: gateway.Session, msg: gateway.Message) -> None:
        try:
            async with session.stream_reply() as reply:
                for i in range(10_000):
                    reply.write(f"w{i} ")
                    await asyncio.sleep(0.005)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async with running(app, tmp_path, api):
        api.send_text(PRIVATE, "go")
        await until(lambda: any(len(texts[-1]) > 30 for texts in api.drafts.values()))
        (chat_id, draft_id), _ = next(iter(api.drafts.items()))
        api.stop_generation(chat_id, draft_id)
        await asyncio.wait_for(cancelled.wait(), 5)
        await until(lambda: api.visible_texts(PRIVATE))
    final = api.visible_texts(PRIVATE)
    assert len(final) == 1 and final[0].startswith("w0 w1 w2 w3 ") and not final[0].endswith("w9999")


# -- blocks and prompts --------------------------------------------------------------------------


async def test_suggestion_buttons_send_their_prompt(tmp_path: Path, api: FakeTelegramAPI) -> None:
    heard: list[str] = []
    app = gateway.App("buttons")

    @app.message()
    async def handle(session: gateway.Session, msg: gateway.Message) -> None:
        heard.append(msg.text)
        if msg.text == "start":
            await session.show_suggestions(["Tell me more", "Stop"], title="Next?")

    async with running(app, tmp_path, api):
        api.send_text(PRIVATE, "start")
        await until(lambda: api.visible(PRIVATE))
        message = api.visible(PRIVATE)[0]
        assert message.text == "Next?"
        buttons = [b for row in message.reply_markup["inline_keyboard"] for b in row]
        assert [b["text"] for b in buttons] == ["Tell me more", "Stop"]
        api.press_button(PRIVATE, message.message_id, buttons[0]["callback_data"])
        await until(lambda: len(heard) == 2)
        await until(lambda: all(api.callback_answers.values()))
        api.press_button(PRIVATE, message.message_id, "not-ours")  # an old or foreign button
        await until(lambda: all(api.callback_answers.values()))
        await asyncio.sleep(0.1)
    assert heard == ["start", "Tell me more"]
    assert list(api.callback_answers.values())[-1]["text"] == "This button is no longer available."


async def test_approval_buttons_answer_the_prompt_and_the_message_shows_it(
    tmp_path: Path, api: FakeTelegramAPI
) -> None:
    answers: list[bool] = []
    app = gateway.App("approve")

    @app.message()
    async def handle(session: gateway.Session, msg: gateway.Message) -> None:
        answers.append(await session.prompt_approval("Deploy to production?", approve_label="Ship it"))
        await session.reply("done")

    async with running(app, tmp_path, api):
        api.send_text(PRIVATE, "deploy")
        await until(lambda: api.visible(PRIVATE))
        prompt = api.visible(PRIVATE)[0]
        buttons = [b for row in prompt.reply_markup["inline_keyboard"] for b in row]
        assert [b["text"] for b in buttons] == ["Ship it", "Reject"]
        api.press_button(PRIVATE, prompt.message_id, buttons[0]["callback_data"])
        await until(lambda: "done" in api.visible_texts(PRIVATE))
        prompt = api.visible(PRIVATE)[0]
        assert answers == [True]
        assert "Approved" in prompt.text and not prompt.reply_markup


async def test_file_prompt_is_answered_by_the_next_document(tmp_path: Path, api: FakeTelegramAPI) -> None:
    received: list[tuple[str, bytes]] = []
    app = gateway.App("prompt-file")

    @app.message()
    async def handle(session: gateway.Session, msg: gateway.Message) -> None:
        upload = await session.prompt_file(message="Send me the invoice", timeout=10)
        path = await upload.download(str(tmp_path / "got"))
        received.append((upload.name, await asyncio.to_thread(Path(path).read_bytes)))
        await session.reply(f"thanks for {upload.name}")

    async with running(app, tmp_path, api):
        api.send_text(GROUP, f"@{api.bot_username} invoice please")
        await until(lambda: api.visible(GROUP))
        assert api.visible(GROUP)[0].text.startswith("Send me the invoice")
        api.send_document(GROUP, b"INVOICE-PDF", name="invoice.pdf", mime_type="application/pdf")  # no mention
        await until(lambda: "thanks for invoice.pdf" in api.visible_texts(GROUP))
        assert "Received invoice.pdf" in api.visible(GROUP)[0].text
    assert received == [("invoice.pdf", b"INVOICE-PDF")]


async def test_image_task_and_integration_blocks(tmp_path: Path, api: FakeTelegramAPI) -> None:
    image = tmp_path / "chart.png"
    image.write_bytes(b"\x89PNG fake chart")
    app = gateway.App("blocks")

    @app.message()
    async def handle(session: gateway.Session, msg: gateway.Message) -> None:
        await session.show_image(str(image), alt="The **chart**")
        await session.show(
            gateway.Block("task_card", {"task_id": "t1", "name": "Import", "status": "running"}, id="task_t1")
        )
        await session.show(
            gateway.Block(
                "task_card",
                {"task_id": "t1", "name": "Import", "status": "completed", "result": "42 rows"},
                id="task_t1",
            )
        )
        await session.show(
            gateway.Block(
                "integration_prompt",
                {
                    "type": "github",
                    "reason": "Connect GitHub to continue.",
                    "blocking": False,
                    "mode": "oauth",
                    "connect_url": "/integrations/github/connect",
                },
            )
        )

    async with running(app, tmp_path, api) as gw:
        api.send_text(PRIVATE, "show")
        await until(lambda: len(api.visible(PRIVATE)) == 3)
        photo, task, integration = api.visible(PRIVATE)
        assert photo.kind == "photo" and api.files[photo.file_id].data == b"\x89PNG fake chart"
        assert photo.text == "The chart" and photo.entities[0]["type"] == "bold"
        assert task.edits == 1 and task.text.startswith("✅ Import — completed") and "42 rows" in task.text
        button = integration.reply_markup["inline_keyboard"][0][0]
        assert button["url"] == f"{gw.public_url}/integrations/github/connect"
    assert not api.rate_limited


async def test_notify_shows_typing_and_a_status_draft(tmp_path: Path, api: FakeTelegramAPI) -> None:
    app = gateway.App("notify")

    @app.message()
    async def handle(session: gateway.Session, msg: gateway.Message) -> None:
        await session.notify("Searching…")
        await session.reply("found it")

    async with running(app, tmp_path, api):
        api.send_text(PRIVATE, "search")
        await until(lambda: api.visible_texts(PRIVATE))
    assert (PRIVATE, "typing") in api.chat_actions
    assert any(texts == ["Searching…"] for texts in api.drafts.values())
    assert api.visible_texts(PRIVATE) == ["found it"]


async def test_a_server_without_chat_actions_costs_one_call(tmp_path: Path) -> None:
    app = gateway.App("no-actions")

    @app.message()
    async def handle(session: gateway.Session, msg: gateway.Message) -> None:
        await session.notify("Working")
        await session.reply(f"done {msg.text}")

    async with FakeTelegramAPI(rate_scale=SCALE, chat_action_supported=False) as api, running(app, tmp_path, api):
        api.send_text(GROUP, f"@{api.bot_username} one")
        await until(lambda: api.visible_texts(GROUP) == ["done one"])
        api.send_text(GROUP, f"@{api.bot_username} two")
        await until(lambda: api.visible_texts(GROUP) == ["done one", "done two"])
    assert [c.status for c in api.calls_to("sendChatAction")] == [404]
    assert not api.drafts  # no status drafts in groups


# -- limits, retries, restarts -------------------------------------------------------------------


async def test_long_reply_is_split_and_sent_in_order_within_the_chat_budget(
    tmp_path: Path, api: FakeTelegramAPI
) -> None:
    paragraphs = [f"Paragraph {i}: " + "x" * 900 for i in range(12)]
    text = "\n\n".join(paragraphs)
    app = gateway.App("long")

    @app.message()
    async def handle(session: gateway.Session, msg: gateway.Message) -> None:
        await session.reply(text)

    async with running(app, tmp_path, api, rich_messages=False):
        api.send_text(PRIVATE, "long")
        await until(lambda: len(api.visible(PRIVATE)) == 3)
    texts = api.visible_texts(PRIVATE)
    assert all(len(t) <= 4096 for t in texts) and "\n\n".join(texts) == text
    assert not api.rate_limited


async def test_429_pauses_the_chat_and_every_part_arrives_once(tmp_path: Path, api: FakeTelegramAPI) -> None:
    parts = [f"part {i} " + "y" * 3000 for i in range(4)]
    app = gateway.App("flood")

    @app.message()
    async def handle(session: gateway.Session, msg: gateway.Message) -> None:
        await session.reply("\n\n".join(parts))

    # the adapter believes the chat allows 20 messages a second; the server allows 1
    async with running(app, tmp_path, api, chat_interval=0.05, rich_messages=False):
        api.send_text(PRIVATE, "flood")
        await until(lambda: len(api.visible(PRIVATE)) == 4, timeout=10)
    assert api.rate_limited  # provoked on purpose
    assert api.visible_texts(PRIVATE) == parts
    statuses = [c.status for c in api.calls_to("sendMessage")]
    assert statuses.count(200) == 4


async def test_5xx_is_retried_and_an_ambiguous_send_is_never_repeated(tmp_path: Path, api: FakeTelegramAPI) -> None:
    app = echo_app()
    async with running(app, tmp_path, api, rich_messages=False):
        api.fail_next("sendMessage", status=502, times=2)
        api.send_text(PRIVATE, "through 502s")
        await until(lambda: api.visible_texts(PRIVATE))
        assert [c.status for c in api.calls_to("sendMessage")] == [502, 502, 200]
        api.disconnect_next("sendMessage")
        api.send_text(PRIVATE, "dropped answer")
        await until(lambda: len(api.visible_texts(PRIVATE)) == 2)
        await asyncio.sleep(0.3)
    # the server posted it but the answer was lost: a retry would have posted it twice
    assert api.visible_texts(PRIVATE) == ["echo: through 502s", "echo: dropped answer"]


async def test_markup_the_server_rejects_is_resent_as_plain_text(tmp_path: Path) -> None:
    async with (
        FakeTelegramAPI(rate_scale=SCALE, reject_html=True) as api,
        running(echo_app(), tmp_path, api, rich_messages=False),
    ):
        api.send_text(PRIVATE, "**bold** & <tag>")
        await until(lambda: api.visible_texts(PRIVATE))
        assert api.visible_texts(PRIVATE) == ["echo: bold & <tag>"]
        assert [c.status for c in api.calls_to("sendMessage")] == [400, 200]


async def test_streams_fall_back_to_plain_text_when_the_server_rejects_markup(tmp_path: Path) -> None:
    tokens = ["Some ", "**bold**", " words ", "& <more>"] * 8
    expected = "".join(tokens).replace("**", "").strip()
    async with (
        FakeTelegramAPI(rate_scale=SCALE, reject_html=True) as api,
        running(streaming_app(tokens, delay=0.02), tmp_path, api, group_trigger="all"),
    ):
        api.send_text(PRIVATE, "drafts")
        api.send_text(GROUP, "edits")
        await until(lambda: api.visible_texts(PRIVATE) == [expected] and api.visible_texts(GROUP) == [expected], 10)
        await asyncio.sleep(0.2)
        assert api.visible_texts(PRIVATE) == [expected] and api.visible_texts(GROUP) == [expected]
    shown = [c for c in api.calls if c.method in ("sendMessage", "editMessageText", "sendMessageDraft")]
    assert all(not c.params.get("parse_mode") for c in shown if c.status == 200)  # every frame went plain
    assert {c.method for c in shown if c.status == 400} >= {"sendMessage", "sendMessageDraft"}
    assert not api.rate_limited


async def test_a_rejected_caption_is_resent_plain_with_its_photo(tmp_path: Path) -> None:
    image = tmp_path / "chart.png"
    image.write_bytes(b"\x89PNG chart")
    app = gateway.App("caption")

    @app.message()
    async def handle(session: gateway.Session, msg: gateway.Message) -> None:
        await session.show_image(str(image), alt="The **chart** & more")

    async with FakeTelegramAPI(rate_scale=SCALE, reject_html=True) as api, running(app, tmp_path, api):
        api.send_text(PRIVATE, "show")
        await until(lambda: api.visible(PRIVATE))
        await asyncio.sleep(0.1)
    (photo,) = api.visible(PRIVATE)
    assert photo.kind == "photo" and api.files[photo.file_id].data == b"\x89PNG chart"  # the photo, not a link
    assert photo.text == "The chart & more" and not photo.entities
    assert [c.status for c in api.calls_to("sendPhoto")] == [400, 200]


async def test_restart_loses_no_pending_update(tmp_path: Path, api: FakeTelegramAPI) -> None:
    heard: list[str] = []
    app = gateway.App("restart")

    @app.message()
    async def handle(session: gateway.Session, msg: gateway.Message) -> None:
        heard.append(msg.text)
        await session.reply(f"ok {msg.text}")

    async with running(app, tmp_path, api):
        api.send_text(PRIVATE, "first")
        await until(lambda: heard == ["first"])
    # updates that arrive while the gateway is down wait at Telegram
    api.send_text(PRIVATE, "while down 1")
    api.send_text(PRIVATE, "while down 2")
    async with running(app, tmp_path, api):
        await until(lambda: len(heard) == 3)
        await until(lambda: len(api.visible_texts(PRIVATE)) == 3)
    assert heard == ["first", "while down 1", "while down 2"]
    assert api.visible_texts(PRIVATE) == ["ok first", "ok while down 1", "ok while down 2"]
    assert not any(c.params.get("drop_pending_updates") in (True, "true") for c in api.calls)


async def test_an_update_seen_again_after_a_lost_confirmation_runs_once(tmp_path: Path, api: FakeTelegramAPI) -> None:
    heard: list[str] = []
    app = gateway.App("redelivery")

    @app.message()
    async def handle(session: gateway.Session, msg: gateway.Message) -> None:
        heard.append(msg.text)
        await session.reply(f"ok {msg.text}")

    api.confirm_updates = False  # every getUpdates returns the update again, as after a crash
    async with running(app, tmp_path, api):
        api.send_text(PRIVATE, "exactly once")
        await until(lambda: len([c for c in api.calls_to("getUpdates", ok=True) if c.response["result"]]) >= 3)
        await until(lambda: api.visible_texts(PRIVATE))
    async with running(app, tmp_path, api):  # a restart: Telegram still has it
        await until(lambda: len([c for c in api.calls_to("getUpdates", ok=True) if c.response["result"]]) >= 5)
        await asyncio.sleep(0.2)
    assert heard == ["exactly once"]
    assert api.visible_texts(PRIVATE) == ["ok exactly once"]


async def test_an_update_aiogram_cannot_read_does_not_block_the_ones_after_it(
    tmp_path: Path, api: FakeTelegramAPI
) -> None:
    async with running(echo_app(), tmp_path, api):
        api.send_text(PRIVATE, "before")
        await until(lambda: api.visible_texts(PRIVATE) == ["echo: before"])
        bad = api.inject({"message": {**api.message(PRIVATE, "unreadable"), "date": "not a date"}})
        api.send_text(PRIVATE, "after")
        await until(lambda: api.visible_texts(PRIVATE) == ["echo: before", "echo: after"], timeout=10)
        await until(lambda: all(u["update_id"] > bad for u in api.pending_updates))  # confirmed, not redelivered
    assert api.visible_texts(PRIVATE) == ["echo: before", "echo: after"]


async def test_only_one_process_polls(tmp_path: Path, api: FakeTelegramAPI) -> None:
    heard: list[str] = []
    app = gateway.App("two")

    @app.message()
    async def handle(session: gateway.Session, msg: gateway.Message) -> None:
        heard.append(msg.text)

    settings = make_settings(tmp_path, api)
    first, second = Gateway(app, settings), Gateway(app, settings)
    await first.start()
    first_running = True
    await second.start()
    try:
        adapters = [next(a for a in g.adapters if isinstance(a, TelegramAdapter)) for g in (first, second)]
        await until(lambda: adapters[0].poller.polling.is_set())
        await asyncio.sleep(0.3)
        assert not adapters[1].poller.polling.is_set()  # a hot standby
        assert not [c for c in api.calls_to("getUpdates") if c.status == 409]
        api.send_text(PRIVATE, "once")
        await until(lambda: heard == ["once"])
        await first.stop()  # releases the lease: the standby takes over
        first_running = False
        await until(lambda: adapters[1].poller.polling.is_set(), timeout=5)
        api.send_text(PRIVATE, "after the handover")
        await until(lambda: heard == ["once", "after the handover"])
    finally:
        await second.stop()
        if first_running:
            await first.stop()


async def test_in_a_group_the_user_of_a_turn_is_its_sender(tmp_path: Path, api: FakeTelegramAPI) -> None:
    app = gateway.App("whoami")

    @app.message()
    async def handle(session: gateway.Session, msg: gateway.Message) -> None:
        await session.set("said", msg.text, scope="user")  # user-scoped: per speaker, not per chat
        await session.reply(f"{session.user.id} said {await session.get('said', scope='user')}")

    async with running(app, tmp_path, api, group_trigger="all") as gw:
        api.send_text(GROUP, "first", user_id=701)
        await until(lambda: len(api.visible_texts(GROUP)) == 1)
        api.send_text(GROUP, "second", user_id=702)
        await until(lambda: len(api.visible_texts(GROUP)) == 2)
        api.send_text(PRIVATE, "alone", user_id=701)
        await until(lambda: api.visible_texts(PRIVATE))
        first, second = (text.split(" said ") for text in api.visible_texts(GROUP))
        assert first[0] != second[0] and (first[1], second[1]) == ("first", "second")
        private = api.visible_texts(PRIVATE)[0].split(" said ")
        assert private[0] == first[0]  # the same Telegram user is the same chatgate user everywhere
        sessions, _ = await gw.store.sessions.page()
        assert len({s.id for s in sessions}) == 2  # still one session per chat
