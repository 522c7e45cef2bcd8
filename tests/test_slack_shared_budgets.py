"""Two processes' worth of Slack pacers calling for one app share its tiers through Redis.

Each test has two pacers (or two adapters), each with its own memory, both on the same Redis (a
key prefix of their own per test) and the same local Slack, which enforces the method tiers and
the per-channel posting limit and answers 429 + ``Retry-After``. Without the shared budgets each
pacer would spend the whole budget and the fake would answer 429.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from functools import partial
from pathlib import Path

import pytest
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.web.async_slack_response import AsyncSlackResponse

from adapters.slack.adapter import SlackAdapter
from adapters.slack.limits import Budget
from adapters.slack.pacer import SlackPacer
from gateway.ratelimit import SharedBudgets
from gateway.testing import test_settings
from gateway.types import SessionChannel
from tests.fakes.slack_api import FakeSlack

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]

UPDATE_BUDGET = Budget(6, 0.5)  # chat.update shrunk: 6 calls in any 0.5 s (our window: 1.01 s)


@asynccontextmanager
async def two_pacers(redis_url: str, **budgets: Budget) -> AsyncIterator[list[SlackPacer]]:
    namespace = f"test-{secrets.token_hex(6)}:slack"
    pacers = [
        SlackPacer(
            method_budgets=dict(budgets),
            channel_budgets={},
            shared=SharedBudgets.from_url(redis_url),
            namespace=namespace,
        )
        for _ in range(2)
    ]
    try:
        yield pacers
    finally:
        for pacer in pacers:
            await pacer.close()


class RateLimitNoticed(logging.Handler):
    """Set when a pacer logs a 429: by then it has paused the method in Redis."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if "rate limited" in record.getMessage():
            self.seen.set()


@contextmanager
def rate_limits_noticed() -> Iterator[RateLimitNoticed]:
    handler = RateLimitNoticed()
    logger = logging.getLogger("adapters.slack.pacer")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


async def test_two_pacers_updating_at_once_share_the_method_tier(redis_url: str) -> None:
    """12 updates from each pacer, all at once: 24 calls inside one tier of 6 per window,
    0 × 429, and each message ends with its last text."""
    async with FakeSlack(time_scale=0.01) as slack, two_pacers(redis_url, **{"chat.update": UPDATE_BUDGET}) as pacers:
        slack.set_budget("chat.update", UPDATE_BUDGET.calls, UPDATE_BUDGET.window)
        client = AsyncWebClient(token=slack.bot_token, base_url=slack.api_url, retry_handlers=[])
        posted = [(await client.chat_postMessage(channel="C1", text="v"))["ts"] for _ in pacers]

        async def updates(pacer: SlackPacer, ts: str, name: str) -> None:
            for i in range(12):
                await pacer.call(
                    "chat.update",
                    "T0001",
                    "C1",
                    partial(client.chat_update, channel="C1", ts=ts, text=f"{name} {i}"),
                )

        await asyncio.gather(updates(pacers[0], posted[0], "one"), updates(pacers[1], posted[1], "two"))
        assert slack.rate_limited_calls() == []
        assert [slack.messages[("C1", ts)].text for ts in posted] == ["one 11", "two 11"]
        at = sorted(c.at for c in slack.calls_of("chat.update"))
        assert len(at) == 24
        assert all(at[i + 6] - at[i] >= UPDATE_BUDGET.window for i in range(len(at) - 6))


async def test_a_retry_after_seen_by_one_pacer_blocks_the_method_for_the_other(redis_url: str) -> None:
    """Slack is stricter than both budgets: the first pacer's 429 blocks chat.update for the
    second pacer too, whose first call waits out the Retry-After instead of going at once."""
    async with (
        FakeSlack(time_scale=0.01) as slack,
        two_pacers(redis_url, **{"chat.update": Budget(100, 1.0)}) as (
            one,
            two,
        ),
    ):
        slack.set_budget("chat.update", 1, 0.6)
        client = AsyncWebClient(token=slack.bot_token, base_url=slack.api_url, retry_handlers=[])
        ts = (await client.chat_postMessage(channel="C1", text="v"))["ts"]

        def update(text: str) -> Callable[[], Awaitable[AsyncSlackResponse]]:
            return partial(client.chat_update, channel="C1", ts=ts, text=text)

        await one.call("chat.update", "T0001", "C1", update("first"))
        with rate_limits_noticed() as noticed:
            retried = asyncio.create_task(one.call("chat.update", "T0001", "C1", update("second")))
            await noticed.seen.wait()
        await two.call("chat.update", "T0001", "C1", update("third"))
        await retried
        calls = slack.calls_of("chat.update")
        first_429 = next(c for c in calls if c.status == 429)
        third = [c for c in calls if c.args.get("text") == "third"]
        assert third[0].at >= first_429.at + 0.6 * 0.95  # the other pacer never called into the pause
        assert two.stats.calls["chat.update"] >= 1
        assert slack.messages[("C1", ts)].text in ("second", "third")


async def test_finals_promised_in_one_process_keep_the_other_s_previews_out(redis_url: str) -> None:
    budget = Budget(10, 5.0)  # reserve 1: previews may use 9, less every promised final
    async with two_pacers(redis_url, **{"chat.update": budget}) as (one, two):
        assert all(one.reserve_final("chat.update", "T1") for _ in range(4))
        assert one.shared is not None
        await one.shared.flush()
        previews = [await two.acquire("chat.update", "T1", "C1", urgent=False, max_wait=0) for _ in range(6)]
        assert previews == [True] * 5 + [False]  # 10 - 1 reserve - 4 promised (by the other process)
        assert await one.acquire("chat.update", "T1", "C1", urgent=True, max_wait=0)  # a final finds room
        for _ in range(4):
            one.release_final("chat.update", "T1")
        await one.shared.flush()
        previews = [await two.acquire("chat.update", "T1", "C1", urgent=False, max_wait=0) for _ in range(4)]
        assert previews == [True] * 3 + [False]  # the promises are gone: 9 previews in all


async def test_two_slack_adapters_posting_to_one_channel_keep_its_limit(tmp_path: Path, redis_url: str) -> None:
    """Two adapters built from settings with ``redis.url`` (Slack's real budgets, the fake at
    real speed): 6 messages to one channel, 3 from each, keep the channel's burst of 3 per 3 s."""
    prefix = f"test-{secrets.token_hex(6)}"
    async with FakeSlack() as slack:
        adapters = []
        for name in ("one", "two"):
            (tmp_path / name).mkdir()
            settings = test_settings(
                tmp_path / name,
                slack={"bot_token": slack.bot_token, "signing_secret": slack.signing_secret, "api_url": slack.api_url},
                redis={"url": redis_url, "key_prefix": prefix},
            )
            adapters.append(SlackAdapter(settings))
        try:
            assert adapters[0].pacer.namespace == adapters[1].pacer.namespace  # one app: one budget

            async def post(adapter: SlackAdapter, text: str) -> None:
                await adapter.pacer.call(
                    "chat.postMessage", "T0001", "C9", lambda: adapter.client.chat_postMessage(channel="C9", text=text)
                )

            texts = [f"{name} {i}" for name in ("one", "two") for i in range(3)]
            await asyncio.gather(*(post(adapters[0 if t.startswith("one") else 1], t) for t in texts))
        finally:
            for adapter in adapters:
                await adapter.pacer.close()
        assert slack.rate_limited_calls() == []
        assert sorted(m.text for m in slack.thread("C9", None)) == sorted(texts)
        at = sorted(c.at for c in slack.calls_of("chat.postMessage"))
        assert at[3] - at[0] >= 3.0  # the channel's burst of 3 in any 3 s held across both


async def test_streams_from_two_adapters_share_the_workspace_update_tier(tmp_path: Path, redis_url: str) -> None:
    """Eight replies streamed at once into four channels, four by each adapter, at Slack's real
    budgets: together they want far more than chat.update's 50 a minute; the previews share what
    the shared window leaves after every process's promised finals, 0 × 429, and every message
    ends with its exact final text."""
    prefix = f"test-{secrets.token_hex(6)}"
    async with FakeSlack() as slack:
        adapters = []
        for name in ("one", "two"):
            (tmp_path / name).mkdir()
            settings = test_settings(
                tmp_path / name,
                slack={
                    "bot_token": slack.bot_token,
                    "signing_secret": slack.signing_secret,
                    "api_url": slack.api_url,
                    "update_interval": 0.1,
                },
                redis={"url": redis_url, "key_prefix": prefix},
            )
            adapters.append(SlackAdapter(settings))
        channels = [f"C{i}" for i in range(1, 5)]

        async def stream(adapter: SlackAdapter, channel: str, name: str) -> str:
            outbox = adapter.outbox(SessionChannel("slack", chat_id=channel, team_id="T0001"), "", None)
            sink = outbox.open_stream(f"m-{name}-{channel}")
            text = ""
            for i in range(30):
                text += f"{name} {i} "
                await sink.frame(text)
                await asyncio.sleep(0.05)
            await sink.close(text.strip(), stopped=False)
            return text.strip()

        try:
            finals = await asyncio.gather(
                *(
                    stream(adapter, ch, name)
                    for ch in channels
                    for adapter, name in zip(adapters, ("one", "two"), strict=True)
                )
            )
        finally:
            for adapter in adapters:
                await adapter.pacer.close()
        assert slack.rate_limited_calls() == []
        for index, channel in enumerate(channels):
            assert sorted(m.text for m in slack.thread(channel, None)) == sorted(finals[2 * index : 2 * index + 2])
        assert 8 < len(slack.calls_of("chat.update")) <= 50  # previews were shown, inside one tier
