"""The Telegram pacer (per-chat budgets shared by every sender, a global budget, ``retry_after``
pauses) and the client's retry rule, on real time with small windows."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator

import pytest
from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import TelegramNetworkError
from aiogram.methods import SendMessage

from adapters.telegram.client import TelegramClient
from adapters.telegram.pacer import FORGET_CHATS_ABOVE, MARGIN, OPEN, Pacer, RateBudget, RateWindow
from adapters.telegram.render import render_telegram
from tests.fakes.telegram_api import FakeTelegramAPI

SCALE = 0.02  # one second becomes 20 ms


async def stamps(pacer: Pacer, chat_id: int, count: int, kind: str = "message") -> list[float]:
    times = []
    for _ in range(count):
        async with pacer.slot(chat_id, kind):  # type: ignore[arg-type]
            times.append(time.monotonic())
    return times


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


async def test_budget_counts_requests_in_flight_and_spaces_from_their_finish() -> None:
    now = [100.0]
    budget = RateBudget([RateWindow(2, 1.0)], clock=lambda: now[0])
    assert await budget.claim() == 100.0
    assert await budget.claim() == 100.0
    # two requests in flight fill the window: a third waits until one of them finishes
    third = asyncio.create_task(budget.claim())
    await asyncio.sleep(0.01)
    assert not third.done()
    now[0] = 100.3
    budget.settle(OPEN, 100.3)  # finished at 100.3: Telegram counted it no later than that
    assert await asyncio.wait_for(third, 1) == pytest.approx(100.3 + 1.0 * (1 + MARGIN))
    assert budget.earliest(100.5) == OPEN  # two still in flight
    budget.settle(OPEN, 100.4)
    budget.settle(OPEN, 100.4)
    assert budget.earliest(100.5) == pytest.approx(100.4 + 1.0 * (1 + MARGIN))
    budget.pause(30)
    assert budget.earliest(100.5) == pytest.approx(130.3)


async def test_one_chat_is_spaced_and_two_chats_do_not_wait_for_each_other() -> None:
    scale = 0.1  # a second becomes 100 ms: wide enough that a busy machine cannot blur it
    pacer = Pacer(scale=scale)
    a, b = await asyncio.gather(stamps(pacer, 1, 4), stamps(pacer, 2, 4))
    interval = 1.0 * scale * (1 + MARGIN)
    assert all(g >= interval * 0.98 for g in gaps(a) + gaps(b))
    assert b[0] < a[1] and a[0] < b[1]  # neither chat waited for the other


async def test_everything_sent_to_a_chat_shares_its_budget_in_order() -> None:
    pacer = Pacer(scale=SCALE)
    order: list[str] = []

    async def sender(name: str) -> None:
        for i in range(3):
            async with pacer.slot(7):
                order.append(f"{name}{i}")
                await asyncio.sleep(0)

    started = time.monotonic()
    await asyncio.gather(sender("stream"), sender("block"))
    assert sorted(order) == ["block0", "block1", "block2", "stream0", "stream1", "stream2"]
    assert time.monotonic() - started >= 5 * SCALE * (1 + MARGIN) * 0.98  # six sends, one chat


async def test_groups_have_a_minute_budget() -> None:
    scale = 0.005  # a minute becomes 0.3 s
    pacer = Pacer(scale=scale, chat_interval=0.01, group_per_minute=5)
    times = await stamps(pacer, -100, 6)
    assert times[5] - times[0] >= 60 * scale * (1 + MARGIN) * 0.98  # the sixth waits for the window
    assert times[4] - times[0] < 60 * scale  # the first five went out quickly


async def test_global_budget_spans_chats() -> None:
    scale = 0.2
    pacer = Pacer(scale=scale, global_per_second=5)
    results = await asyncio.gather(*(stamps(pacer, chat, 1) for chat in range(1, 11)))
    times = sorted(t for r in results for t in r)
    assert times[5] - times[0] >= 1.0 * scale * (1 + MARGIN) * 0.98  # at most five per (scaled) second
    assert times[4] - times[0] < 0.5 * scale  # the first five did not wait


async def test_drafts_have_their_own_budget_and_do_not_use_the_messages() -> None:
    scale = 0.4  # drafts 100 ms apart
    pacer = Pacer(scale=scale, draft_interval=0.25)
    drafts = await stamps(pacer, 3, 3, "draft")
    assert all(g >= 0.25 * scale * (1 + MARGIN) * 0.98 for g in gaps(drafts))
    # nor the bot's: drafts in forty chats leave its thirty-a-second budget untouched
    await asyncio.gather(*(stamps(pacer, chat, 1, "draft") for chat in range(100, 140)))
    assert pacer.global_budget.load(time.monotonic()) == 0.0
    started = time.monotonic()
    await stamps(pacer, 3, 1)  # a message right after the drafts does not wait for them
    assert time.monotonic() - started < 0.5 * 0.25 * scale


async def test_retry_after_pauses_the_chat_and_twice_in_two_chats_pauses_the_bot() -> None:
    pacer = Pacer(scale=SCALE)
    pacer.retry_after(1, 0.1)
    started = time.monotonic()
    await asyncio.gather(stamps(pacer, 1, 1), stamps(pacer, 2, 1))
    assert pacer.global_budget.paused_until <= time.monotonic()  # one chat's 429: only that chat
    pacer.retry_after(2, 0.1)
    pacer.retry_after(3, 0.1)
    started = time.monotonic()
    await stamps(pacer, 4, 1)
    assert time.monotonic() - started >= 0.09  # the bot's budget is paused for everyone


async def test_quiet_chat_budgets_are_forgotten_and_the_ones_that_still_matter_kept() -> None:
    now = [1000.0]
    pacer = Pacer(clock=lambda: now[0])
    pacer.chat(-1).messages.record(now[0])  # a group that just spoke: its minute window still counts
    pacer.retry_after(2, 30)  # a chat Telegram told to wait
    busy = pacer.chat(3)
    await busy.lock.acquire()  # a request in flight
    for chat in range(10, 10 + FORGET_CHATS_ABOVE - 3):
        pacer.chat(chat).messages.record(now[0])
    assert pacer.chats_remembered == FORGET_CHATS_ABOVE
    now[0] += 5  # the private chats' one-second windows are long past
    pacer.chat(99_999)  # a new chat: the sweep runs
    assert pacer.chats_remembered == 4  # -1, 2, 3 and the new one
    assert pacer.chat(2).messages.earliest(now[0]) == pytest.approx(1030.0)  # still paused
    assert pacer.chat(-1).messages.earliest(now[0]) == now[0]  # kept, with room for more
    busy.lock.release()


@pytest.fixture
async def api() -> AsyncIterator[FakeTelegramAPI]:
    async with FakeTelegramAPI(rate_scale=SCALE) as server:
        yield server


def client_for(base_url: str, token: str, **kwargs: object) -> TelegramClient:
    bot = Bot(token, session=AiohttpSession(api=TelegramAPIServer.from_base(base_url)))
    return TelegramClient(bot, Pacer(scale=SCALE), backoff=0.02, **kwargs)  # type: ignore[arg-type]


async def test_connection_refused_is_retried_because_nothing_arrived(api: FakeTelegramAPI) -> None:
    port = api.port
    await api.stop()
    client = client_for(f"http://127.0.0.1:{port}", api.token, attempts=8)
    restarted = FakeTelegramAPI(rate_scale=SCALE, port=port)

    async def come_back() -> None:
        await asyncio.sleep(0.15)
        await restarted.start()

    try:
        _, message = await asyncio.gather(come_back(), client.send_part(9, render_telegram("back")[0]))
        assert message.text == "back" and restarted.visible_texts(9) == ["back"]
        assert client.retries >= 1
    finally:
        await client.bot.session.close()
        await restarted.stop()


async def test_a_dropped_answer_is_retried_only_for_idempotent_methods(api: FakeTelegramAPI) -> None:
    client = client_for(api.base_url, api.token)
    try:
        api.disconnect_next("sendMessage")
        with pytest.raises(TelegramNetworkError):
            await client.call(SendMessage(chat_id=9, text="once"), chat_id=9, kind="message")
        assert api.visible_texts(9) == ["once"]
        message_id = api.visible(9)[0].message_id
        api.disconnect_next("editMessageText")
        # the edit arrives, its answer is lost; the retry is told "not modified", which is success
        await client.edit_part(9, message_id, render_telegram("edited")[0])
        assert api.visible_texts(9) == ["edited"]
        assert [c.status for c in api.calls_to("editMessageText")] == [0, 400]
    finally:
        await client.bot.session.close()
