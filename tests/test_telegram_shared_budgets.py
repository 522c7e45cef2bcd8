"""Two processes' worth of Telegram adapters sending for one bot share its budgets through Redis.

Each test builds two gateways (or two adapters) in this process, each with its own pacer, both
pointed at the same Redis (a key prefix of their own per test) and the same fake Bot API, which
enforces Telegram's per-chat, per-group and bot-wide limits (scaled by ``SCALE``) and counts 429s.
Without the shared budgets each pacer would spend the whole budget and the fake would answer 429.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as redis_asyncio
from aiogram.methods import SendMessage

import gateway
from adapters.telegram.adapter import TelegramAdapter
from gateway.runtime import Gateway
from gateway.testing import test_settings
from gateway.types import SessionChannel, UserInfo
from tests.fakes.telegram_api import FakeTelegramAPI

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]

SCALE = 0.05  # Telegram's windows, shrunk on both sides (the fake's limits and the adapters' pacing)
RETRY_AFTER = 10  # seconds a flood-control answer names; the pacer scales it: 0.5 s
PAUSE = RETRY_AFTER * SCALE


def settings(
    tmp_path: Path, api: FakeTelegramAPI, redis_url: str | None, prefix: str, name: str, scale: float = SCALE
) -> Any:
    root = tmp_path / name
    root.mkdir()
    redis = {"url": redis_url, "key_prefix": prefix} if redis_url else {}
    return test_settings(
        root,
        telegram=api.settings(rate_scale=scale, retry_backoff=0.2, mode="webhook"),
        redis=redis,
    )


@asynccontextmanager
async def two_adapters(
    tmp_path: Path, api: FakeTelegramAPI, redis_url: str, scale: float = SCALE
) -> AsyncIterator[list[TelegramAdapter]]:
    prefix = f"test-{secrets.token_hex(6)}"
    adapters = [TelegramAdapter(settings(tmp_path, api, redis_url, prefix, name, scale)) for name in ("one", "two")]
    try:
        yield adapters
    finally:
        for adapter in adapters:
            await adapter.client.close()
            await adapter.pacer.close()


class RetryNoticed(logging.Handler):
    """Sets an event when the client logs that it will retry after an error: by then its retry
    policy has told the pacer about the 429."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if "retrying" in record.getMessage():
            self.seen.set()


@contextmanager
def retries_noticed() -> Iterator[RetryNoticed]:
    handler = RetryNoticed()
    logger = logging.getLogger("chatgate.telegram")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


async def send(adapter: TelegramAdapter, chat_id: int, text: str) -> None:
    await adapter.client.call(SendMessage(chat_id=chat_id, text=text), chat_id=chat_id, kind="message")


def arrivals(api: FakeTelegramAPI, chat_id: int, *, ok: bool = True) -> list[float]:
    return [
        c.at
        for c in api.calls_to("sendMessage")
        if c.params.get("chat_id") in (chat_id, str(chat_id)) and (c.status == 200) == ok
    ]


async def test_two_gateways_broadcasting_for_one_bot_stay_inside_its_limits(tmp_path: Path, redis_url: str) -> None:
    """Both gateways broadcast to the same 45 private chats at once: 90 messages, at most 30 per
    bot window and one per chat window across both, 0 × 429, every text delivered exactly."""
    prefix = f"test-{secrets.token_hex(6)}"
    chats = 45
    async with FakeTelegramAPI(rate_scale=SCALE) as api:
        gateways: list[Gateway] = []
        apps = [gateway.App("one"), gateway.App("two")]
        for app, name in zip(apps, ("one", "two"), strict=True):
            gw = Gateway(app, settings(tmp_path, api, redis_url, prefix, name))
            await gw.start()
            gateways.append(gw)
        try:
            for gw in gateways:
                owner = UserInfo("owner")
                for index in range(chats):
                    await gw.store.sessions.create(SessionChannel("telegram", chat_id=str(7000 + index)), owner)
            results = await asyncio.gather(
                apps[0].broadcast("from the first process", channel="telegram"),
                apps[1].broadcast("from the second process", channel="telegram"),
            )
        finally:
            for gw in gateways:
                await gw.stop()
        assert [len(r.sent) for r in results] == [chats, chats] and not any(r.failed for r in results)
        assert api.rate_limited == []  # zero 429s
        for index in range(chats):
            assert sorted(api.visible_texts(7000 + index)) == ["from the first process", "from the second process"]
        sent = sorted(c.at for c in api.calls_to("sendMessage"))
        window = 1.0 * SCALE  # the bot's 30 messages a second
        assert all(sent[i + 30] - sent[i] >= window for i in range(len(sent) - 30))


async def test_two_real_processes_sending_for_one_bot_share_its_budget(tmp_path: Path, redis_url: str) -> None:
    """Two OS processes (``tests/apps/telegram_sender.py``), started together, each send one
    message to the same 40 chats at once: 80 messages, 0 × 429, every text delivered."""
    prefix = f"test-{secrets.token_hex(6)}"
    chats = [8000 + i for i in range(40)]
    async with FakeTelegramAPI(rate_scale=SCALE) as api:
        processes = []
        for name in ("alpha", "beta"):
            (tmp_path / name).mkdir()
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tests.apps.telegram_sender", api.base_url, redis_url, prefix, str(SCALE), name,
                ",".join(map(str, chats)), str(tmp_path / name),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            processes.append(process)
        try:
            for process in processes:
                assert process.stdout is not None
                assert (await asyncio.wait_for(process.stdout.readline(), 30)).strip() == b"ready"
            for process in processes:
                assert process.stdin is not None
                process.stdin.write(b"go\n")
                await process.stdin.drain()
            for process in processes:
                assert process.stdout is not None
                assert (await asyncio.wait_for(process.stdout.readline(), 30)).strip() == b"done"
                assert await process.wait() == 0
        finally:
            for process in processes:
                if process.returncode is None:
                    process.kill()
                    await process.wait()
        assert api.rate_limited == []
        for chat in chats:
            assert sorted(api.visible_texts(chat)) == [f"alpha {chat}", f"beta {chat}"]
        sent = sorted(c.at for c in api.calls_to("sendMessage"))
        assert all(sent[i + 30] - sent[i] >= 1.0 * SCALE for i in range(len(sent) - 30))


async def test_a_group_burst_from_two_processes_keeps_the_group_minute(tmp_path: Path, redis_url: str) -> None:
    """24 messages to one group, 12 from each process: the group's 20-a-minute window (3 s at
    this scale) and its one-a-second window hold across both, 0 × 429, texts exact."""
    async with FakeTelegramAPI(rate_scale=SCALE) as api, two_adapters(tmp_path, api, redis_url) as (one, two):
        group = -1001
        await asyncio.gather(
            *(send(one, group, f"one {i}") for i in range(12)),
            *(send(two, group, f"two {i}") for i in range(12)),
        )
        assert api.rate_limited == []
        expected = [f"one {i}" for i in range(12)] + [f"two {i}" for i in range(12)]
        assert sorted(api.visible_texts(group)) == sorted(expected)
        at = sorted(arrivals(api, group))
        assert all(b - a >= 1.0 * SCALE for a, b in itertools.pairwise(at))
        assert all(at[i + 20] - at[i] >= 60.0 * SCALE for i in range(len(at) - 20))


async def test_streams_from_two_processes_into_the_same_chats_end_exact_without_429(
    tmp_path: Path, redis_url: str
) -> None:
    """Both processes stream replies into the same six groups (send, then edits) and six private
    chats (drafts, then the final message) at once: the previews share the chats' and the bot's
    budgets, 0 × 429, and every chat ends with exactly the two final texts."""
    async with FakeTelegramAPI(rate_scale=SCALE) as api, two_adapters(tmp_path, api, redis_url) as adapters:
        groups, privates = [-2001 - i for i in range(6)], [3001 + i for i in range(6)]

        async def stream(adapter: TelegramAdapter, chat_id: int, name: str) -> str:
            outbox = adapter.outbox(SessionChannel("telegram", chat_id=str(chat_id)), f"s-{name}-{chat_id}")
            sink = outbox.open_stream(f"m-{name}-{chat_id}")
            text = ""
            for i in range(40):
                text += f"{name} word {i} "
                await sink.frame(text)
                await asyncio.sleep(0.01)
            await sink.close(text.strip(), stopped=False)
            return text.strip()

        finals = await asyncio.gather(
            *(
                stream(adapter, chat, name)
                for chat in groups + privates
                for adapter, name in zip(adapters, ("one", "two"), strict=True)
            )
        )
        assert api.rate_limited == []
        for index, chat in enumerate(groups + privates):
            assert sorted(api.visible_texts(chat)) == sorted(finals[2 * index : 2 * index + 2])
        edits = api.calls_to("editMessageText")
        drafts = api.calls_to("sendMessageDraft")
        assert edits and drafts  # previews were shown, within the shared budgets


async def test_a_retry_after_seen_by_one_process_pauses_the_chat_for_the_other(tmp_path: Path, redis_url: str) -> None:
    async with FakeTelegramAPI(rate_scale=SCALE) as api, two_adapters(tmp_path, api, redis_url) as (one, two):
        api.fail_next(
            "sendMessage", status=429, description="Too Many Requests: retry after 10", retry_after=RETRY_AFTER
        )
        with retries_noticed() as noticed:
            first = asyncio.create_task(send(one, 5, "from one"))
            await noticed.seen.wait()  # one has seen the 429
        assert one.pacer.shared is not None
        await one.pacer.shared.flush()  # and told Redis
        await send(two, 5, "from two")
        await first
        refused = [c.at for c in api.rate_limited]
        assert len(refused) == 1  # only the injected one
        delivered = arrivals(api, 5)
        assert len(delivered) == 2
        assert min(delivered) >= refused[0] + PAUSE * 0.9  # neither process sent into the pause
        assert sorted(api.visible_texts(5)) == ["from one", "from two"]


async def test_two_chats_told_to_wait_in_two_processes_pause_the_bot_for_both(tmp_path: Path, redis_url: str) -> None:
    """One process's 429 is for chat 1, the other's for chat 2, within one pause: the limit is
    the bot's, so a third chat waits too, in both processes (neither saw two 429s itself)."""
    async with FakeTelegramAPI(rate_scale=SCALE) as api, two_adapters(tmp_path, api, redis_url) as (one, two):
        api.fail_next(
            "sendMessage", status=429, description="Too Many Requests: retry after 10", retry_after=RETRY_AFTER, times=2
        )
        assert one.pacer.shared is not None and two.pacer.shared is not None
        with retries_noticed() as noticed:
            tasks = [asyncio.create_task(send(one, 1, "chat one"))]
            await noticed.seen.wait()
        await one.pacer.shared.flush()
        with retries_noticed() as noticed:
            tasks.append(asyncio.create_task(send(two, 2, "chat two")))
            await noticed.seen.wait()
        await two.pacer.shared.flush()
        assert one.pacer.global_budget.paused_until <= asyncio.get_running_loop().time()  # not paused locally
        await send(one, 3, "chat three")
        await asyncio.gather(*tasks)
        second_429 = max(c.at for c in api.rate_limited)
        assert arrivals(api, 3)[0] >= second_429 + PAUSE * 0.9
        assert len(api.rate_limited) == 2
        assert [api.visible_texts(c) for c in (1, 2, 3)] == [["chat one"], ["chat two"], ["chat three"]]


async def test_one_process_s_burst_keeps_the_other_s_previews_back(tmp_path: Path, redis_url: str) -> None:
    """The first process has spent most of the bot's budget (28 of 30 this second): the second's
    stream previews wait (``room_for_preview``) though its own budget is untouched, so final
    texts and new messages anywhere go first."""
    async with FakeTelegramAPI() as api, two_adapters(tmp_path, api, redis_url, scale=1.0) as (one, two):
        assert two.pacer.room_for_preview(99)
        await asyncio.gather(*(send(one, 100 + i, "busy") for i in range(28)))
        await two.pacer.read_shared_load()
        assert two.pacer.global_budget.load(asyncio.get_running_loop().time()) == 0.0  # nothing of its own
        assert not two.pacer.room_for_preview(99)
        assert api.rate_limited == []


async def test_shared_keys_expire_once_they_no_longer_matter(tmp_path: Path, redis_url: str) -> None:
    async with FakeTelegramAPI(rate_scale=SCALE) as api, two_adapters(tmp_path, api, redis_url) as (one, _two):
        await send(one, 9, "hello")
        assert one.pacer.shared is not None
        await one.pacer.shared.flush()
        client = redis_asyncio.Redis.from_url(redis_url)
        try:
            keys = [k.decode() async for k in client.scan_iter(match=one.pacer.namespace + ":*")]
            assert keys  # the chat's window and the bot's
            ttls = [await client.pttl(k) for k in keys]
            assert all(0 < ttl <= 61_000 for ttl in ttls)  # every key expires (the bot's after its hold lease)
        finally:
            await client.aclose()


async def test_without_redis_each_process_keeps_its_own_budget(tmp_path: Path) -> None:
    """No ``redis.url``: the pacer has no shared budgets (the single-process behaviour)."""
    async with FakeTelegramAPI(rate_scale=SCALE) as api:
        adapter = TelegramAdapter(settings(tmp_path, api, None, "unused", "solo"))
        try:
            assert adapter.pacer.shared is None
            await send(adapter, 4, "alone")
            assert api.visible_texts(4) == ["alone"]
        finally:
            await adapter.client.close()
            await adapter.pacer.close()


async def test_redis_unreachable_falls_back_to_local_budgets_and_delivers(tmp_path: Path) -> None:
    """A Redis that does not answer (nothing listens on the port): a warning, then this
    process's own budgets; the message is delivered, within the limits."""
    async with FakeTelegramAPI(rate_scale=SCALE) as api:
        adapter = TelegramAdapter(settings(tmp_path, api, "redis://127.0.0.1:1/0", "down", "down"))
        try:
            await asyncio.gather(*(send(adapter, 6, f"m{i}") for i in range(3)))
            assert adapter.pacer.shared is not None and adapter.pacer.shared.outages == 1
            assert api.visible_texts(6) == ["m0", "m1", "m2"]
            assert api.rate_limited == []
        finally:
            await adapter.client.close()
            await adapter.pacer.close()
