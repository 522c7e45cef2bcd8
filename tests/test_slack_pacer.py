"""The Slack pacer: budgets per workspace method and per channel, priorities, 429 + Retry-After.

The pacer runs against the local Slack (a real HTTP server) through slack_sdk's AsyncWebClient,
with budgets shrunk to fractions of a second.
"""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack.limits import Budget
from adapters.slack.pacer import RateLimited, SlackPacer, SlidingWindowBudget, retry_after_seconds
from tests.fakes.slack_api import FakeSlack


def test_sliding_window_counts_calls_in_the_window() -> None:
    window = SlidingWindowBudget(Budget(3, 1.0), reserve=1)
    for t in (0.0, 0.1, 0.2):
        assert window.wait_time(t, urgent=True) == 0
        window.record(t)
    assert window.wait_time(0.3, urgent=True) == pytest.approx(1.52 - 0.3)  # Slack's 1 s + 2% + 0.5 s
    assert window.wait_time(1.53, urgent=True) == 0  # the first call left the window


def test_previews_leave_a_reserve_for_finals() -> None:
    window = SlidingWindowBudget(Budget(10, 1.0), reserve=1)
    for i in range(9):
        window.record(i / 100)
    assert window.wait_time(0.1, urgent=False) > 0
    assert window.wait_time(0.1, urgent=True) == 0


def test_429_cool_off_blocks_the_key() -> None:
    window = SlidingWindowBudget(Budget(100, 1.0), reserve=0)
    window.block(5.0)
    assert window.wait_time(4.0, urgent=True) == pytest.approx(1.0)


async def test_pacer_keeps_calls_inside_the_budget() -> None:
    pacer = SlackPacer(method_budgets={"chat.update": Budget(4, 0.3)}, channel_budgets={})
    sent: list[float] = []

    async def send() -> dict[str, bool]:
        sent.append(time.monotonic())
        return {"ok": True}

    await asyncio.gather(*(pacer.call("chat.update", "T1", "C1", send) for _ in range(10)))
    assert len(sent) == 10
    for i in range(4, 10):  # no window of 0.3 s ever holds more than 4 calls
        assert sent[i] - sent[i - 4] >= 0.3
    assert pacer.stats.calls["chat.update"] == 10


async def test_budgets_are_per_workspace_and_channel() -> None:
    pacer = SlackPacer(
        method_budgets={"chat.postMessage": Budget(100, 10)}, channel_budgets={"chat.postMessage": Budget(1, 10)}
    )
    assert await pacer.acquire("chat.postMessage", "T1", "C1", urgent=True, max_wait=0)
    assert not await pacer.acquire("chat.postMessage", "T1", "C1", urgent=True, max_wait=0)
    assert await pacer.acquire("chat.postMessage", "T1", "C2", urgent=True, max_wait=0)
    assert await pacer.acquire("chat.postMessage", "T2", "C1", urgent=True, max_wait=0)


async def test_preview_frames_are_skipped_not_queued() -> None:
    pacer = SlackPacer(method_budgets={"chat.update": Budget(1, 5)}, channel_budgets={})

    async def send() -> str:
        return "sent"

    assert await pacer.call("chat.update", "T1", "C1", send, urgent=False, max_wait=0.05) == "sent"
    started = time.monotonic()
    assert await pacer.call("chat.update", "T1", "C1", send, urgent=False, max_wait=0.05) is None
    assert time.monotonic() - started < 0.2
    assert pacer.stats.skipped_frames == 1


async def test_429_is_honoured_and_the_call_retried() -> None:
    async with FakeSlack(time_scale=0.01) as slack:
        slack.set_budget("chat.update", 2, 0.4)  # Slack is stricter than our budget: we get 429s
        client = AsyncWebClient(token=slack.bot_token, base_url=slack.api_url, retry_handlers=[])
        posted = await client.chat_postMessage(channel="C1", text="hello")
        pacer = SlackPacer(channel_budgets={})
        started = time.monotonic()
        for i in range(4):
            await pacer.call(
                "chat.update", "T1", "C1", lambda i=i: client.chat_update(channel="C1", ts=posted["ts"], text=f"v{i}")
            )
        elapsed = time.monotonic() - started
        assert slack.messages[("C1", posted["ts"])].text == "v3"
        assert pacer.stats.rate_limited["chat.update"] >= 1
        assert len(slack.rate_limited_calls()) == pacer.stats.rate_limited["chat.update"]
        assert elapsed >= 0.3  # it waited for Slack's window instead of hammering
        # After a 429 every later caller waits too: no second 429 right after the first.
        statuses = [c.status for c in slack.calls_of("chat.update")]
        assert all(not (a == 429 and b == 429) for a, b in itertools.pairwise(statuses))


async def test_retry_after_header_is_read_in_seconds() -> None:
    async with FakeSlack(time_scale=0.01) as slack:
        slack.set_budget("users.info", 1, 0.5)
        slack.add_user("U1")
        client = AsyncWebClient(token=slack.bot_token, base_url=slack.api_url, retry_handlers=[])
        await client.users_info(user="U1")
        with pytest.raises(SlackApiError) as caught:
            await client.users_info(user="U1")
        assert caught.value.response.status_code == 429
        assert 0 < retry_after_seconds(caught.value) <= 0.5


async def test_urgent_call_gives_up_after_repeated_429s() -> None:
    async with FakeSlack(time_scale=0.01) as slack:
        slack.set_budget("chat.postMessage", 0, 0.01)  # Slack refuses everything, Retry-After ~0
        client = AsyncWebClient(token=slack.bot_token, base_url=slack.api_url, retry_handlers=[])
        pacer = SlackPacer(channel_budgets={})
        with pytest.raises(RateLimited):
            await pacer.call("chat.postMessage", "T1", "C1", lambda: client.chat_postMessage(channel="C1", text="x"))


async def test_available_within_peeks_without_taking_a_slot() -> None:
    pacer = SlackPacer(method_budgets={"chat.update": Budget(2, 10)}, channel_budgets={})
    assert pacer.available_within("chat.update", "T1", "C1", 0)
    assert pacer.available_within("chat.update", "T1", "C1", 0)  # peeking twice took nothing
    assert await pacer.acquire("chat.update", "T1", "C1", urgent=False)
    assert await pacer.acquire("chat.update", "T1", "C1", urgent=False)
    assert not pacer.available_within("chat.update", "T1", "C1", 1.0)
    assert pacer.available_within("chat.update", "T2", "C1", 0)  # another workspace


def test_pending_finals_keep_previews_out() -> None:
    window = SlidingWindowBudget(Budget(10, 1.0), reserve=1)
    window.pending_finals = 9
    assert window.wait_time(0.0, urgent=False) > 0  # no room for previews at all
    assert window.wait_time(0.0, urgent=True) == 0
    window.pending_finals = 4
    for i in range(5):
        assert window.wait_time(i / 100, urgent=False) == 0
        window.record(i / 100)
    assert window.wait_time(0.1, urgent=False) > 0  # 10 - 1 reserve - 4 finals = 5 previews


async def test_lost_connections_are_retried_only_for_idempotent_calls() -> None:
    import aiohttp

    async with FakeSlack() as slack:
        client = AsyncWebClient(token=slack.bot_token, base_url=slack.api_url, retry_handlers=[])
        pacer = SlackPacer()
        posted = await client.chat_postMessage(channel="C1", text="v0")
        slack.drop_next("chat.update")
        await pacer.call(
            "chat.update",
            "T1",
            "C1",
            lambda: client.chat_update(channel="C1", ts=posted["ts"], text="v1"),
            idempotent=True,
        )
        assert slack.messages[("C1", posted["ts"])].text == "v1"
        slack.drop_next("chat.postMessage")
        with pytest.raises(aiohttp.ClientConnectionError):  # a new message is never sent twice
            await pacer.call("chat.postMessage", "T1", "C1", lambda: client.chat_postMessage(channel="C1", text="x"))
        assert [c.error for c in slack.calls_of("chat.postMessage")] == [None, "connection_dropped"]


async def test_finals_are_promised_only_when_the_promise_can_be_kept() -> None:
    now = [0.0]
    pacer = SlackPacer(method_budgets={"chat.update": Budget(10, 60)}, channel_budgets={}, clock=lambda: now[0])
    assert pacer.reserve_final("chat.update", "T1")  # reply A will need one final edit
    previews = 0
    while await pacer.acquire("chat.update", "T1", "C1", urgent=False, max_wait=0):
        previews += 1
    assert previews == 8  # 10 - 1 kept for other urgent calls - 1 promised to A
    # Reply B starts now: a final promised to it could only be kept by taking the reserve (or, with
    # more replies, by waiting for the window), so nothing is promised and B shows no preview.
    assert not pacer.reserve_final("chat.update", "T1")
    assert pacer.reserve_final("chat.update", "T2")  # another workspace has its own window
    assert await pacer.acquire("chat.update", "T1", "C1", urgent=True, max_wait=0)  # A's final: at once
    pacer.release_final("chat.update", "T1")
    now[0] = 62.0  # the window moved on
    assert pacer.reserve_final("chat.update", "T1")


async def test_the_posting_limit_error_is_waited_out_like_a_429() -> None:
    """``rate_limited`` (too many messages) arrives as a plain error, without Retry-After: the
    message is sent again after the default pause instead of being lost."""
    async with FakeSlack(time_scale=0.01) as slack:
        client = AsyncWebClient(token=slack.bot_token, base_url=slack.api_url, retry_handlers=[])
        pacer = SlackPacer(channel_budgets={})
        slack.fail_next("chat.postMessage", "rate_limited")
        started = time.monotonic()
        posted = await pacer.call(
            "chat.postMessage", "T1", "C1", lambda: client.chat_postMessage(channel="C1", text="x")
        )
        assert posted is not None and slack.messages[("C1", posted["ts"])].text == "x"
        assert [c.error for c in slack.calls_of("chat.postMessage")] == ["rate_limited", None]
        assert time.monotonic() - started >= 0.9  # the default pause (no Retry-After to read)
        assert pacer.stats.rate_limited["chat.postMessage"] == 1


async def test_slack_side_failures_are_retried_only_for_idempotent_calls() -> None:
    async with FakeSlack() as slack:
        client = AsyncWebClient(token=slack.bot_token, base_url=slack.api_url, retry_handlers=[])
        pacer = SlackPacer()
        posted = await client.chat_postMessage(channel="C1", text="v0")
        slack.fail_next("chat.update", "service_unavailable", status=503)
        slack.fail_next("chat.update", "internal_error")
        await pacer.call(
            "chat.update",
            "T1",
            "C1",
            lambda: client.chat_update(channel="C1", ts=posted["ts"], text="v1"),
            idempotent=True,
        )
        assert slack.messages[("C1", posted["ts"])].text == "v1"
        assert [c.error for c in slack.calls_of("chat.update")] == ["service_unavailable", "internal_error", None]
        slack.fail_next("chat.postMessage", "service_unavailable", status=503)
        with pytest.raises(SlackApiError):  # a new message is never sent twice
            await pacer.call("chat.postMessage", "T1", "C1", lambda: client.chat_postMessage(channel="C1", text="x"))
        slack.fail_next("chat.update", "cant_update_message")
        with pytest.raises(SlackApiError):  # the call's own fault: no retry
            await pacer.call(
                "chat.update",
                "T1",
                "C1",
                lambda: client.chat_update(channel="C1", ts=posted["ts"], text="v2"),
                idempotent=True,
            )
        assert len(slack.calls_of("chat.postMessage")) == 2
        assert len(slack.calls_of("chat.update")) == 4


async def test_stats_tell_how_long_urgent_calls_waited() -> None:
    pacer = SlackPacer(method_budgets={"chat.update": Budget(1, 0.2)}, channel_budgets={})
    assert await pacer.acquire("chat.update", "T1", "C1", urgent=False)
    assert pacer.stats.longest_urgent_wait == 0
    assert await pacer.acquire("chat.update", "T1", "C1", urgent=True)  # waits out the window
    assert pacer.stats.longest_urgent_wait >= 0.2 * 1.02 + 0.5 - 0.01
