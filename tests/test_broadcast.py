"""``app.broadcast``: one message to many sessions, through each session (history kept) and each
channel's pacer; 1,000 sessions through the TestClient and 1,000 Telegram chats through the real
Telegram adapter against the local Bot API server, which answers 429 to anything too fast."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

import gateway
from gateway.runtime import Gateway
from gateway.testing import TestClient, test_settings
from gateway.types import SessionChannel, UserInfo
from tests.fakes.telegram_api import FakeTelegramAPI

pytestmark = pytest.mark.timeout(90)

AUDIENCE = 1000
SCALE = 0.05  # Telegram's windows, shrunk on both sides (the fake's limits and the adapter's pacing)


async def make_sessions(gw: Gateway, channel: str, count: int) -> list[str]:
    owner = UserInfo("broadcast-owner")
    ids = []
    for index in range(count):
        address = SessionChannel(channel) if channel == "chat" else SessionChannel(channel, chat_id=str(7000 + index))
        ids.append((await gw.store.sessions.create(address, owner)).id)
    return ids


async def test_broadcast_to_a_thousand_sessions_within_the_concurrency_bound(tmp_path: Path) -> None:
    app = gateway.App("news")
    in_flight = {"now": 0, "max": 0}

    async with TestClient(app, tmp_path, scheduler={"broadcast_concurrency": 16}) as tc:
        ids = await make_sessions(tc.gateway, "chat", AUDIENCE)

        async def personal(session: gateway.Session) -> str:
            in_flight["now"] += 1
            in_flight["max"] = max(in_flight["max"], in_flight["now"])
            await asyncio.sleep(0)
            in_flight["now"] -= 1
            return f"release notes for {session.id[-6:]}"

        began = time.perf_counter()
        result = await app.broadcast(personal, channel="chat")
        elapsed = time.perf_counter() - began
        assert len(result.sent) == AUDIENCE and not result.failed and not result.skipped
        assert 1 < in_flight["max"] <= 16
        for session_id in ids[:: AUDIENCE // 20]:
            sent = tc._conversations[session_id].sent
            assert [s.text for s in sent] == [f"release notes for {session_id[-6:]}"]
            records, _ = await tc.gateway.store.messages.page(session_id)
            assert [(r.role, r.text) for r in records] == [("assistant", f"release notes for {session_id[-6:]}")]
        print(f"\nbroadcast to {AUDIENCE} TestClient sessions: {elapsed:.2f} s")


async def test_broadcast_by_id_skips_fails_and_shows_blocks(tmp_path: Path) -> None:
    app = gateway.App("news")
    async with TestClient(app, tmp_path) as tc:
        alice = await tc.conversation("alice")
        bob = await tc.conversation("bob", channel="telegram")
        result = await app.broadcast(
            lambda s: None if s.id == bob.session_id else "hello",
            session_ids=[alice.session_id, bob.session_id, "no-such-session", alice.session_id],
        )
        assert result.sent == [alice.session_id] and result.skipped == [bob.session_id]
        assert result.failed == {"no-such-session": "no such session"}
        assert [s.text for s in alice.sent] == ["hello"]  # a repeated id gets one message
        shown = await app.broadcast(gateway.Block("card", {"title": "maintenance at 22:00"}, id="notice"),
                                    channel="*")
        assert sorted(shown.sent) == sorted([alice.session_id, bob.session_id])
        assert bob.sent[-1].block["payload"] == {"title": "maintenance at 22:00"}
        with pytest.raises(ValueError, match="exactly one"):
            await app.broadcast("x")
        with pytest.raises(ValueError, match="exactly one"):
            await app.broadcast("x", session_ids=[], channel="chat")
        with pytest.raises(TypeError, match="list of ids"):
            await app.broadcast("x", session_ids=alice.session_id)
        with pytest.raises(TypeError, match="content"):
            await app.broadcast(42, channel="chat")  # type: ignore[arg-type]


async def test_broadcast_without_an_adapter_for_the_channel_counts_failures(tmp_path: Path) -> None:
    app = gateway.App("news")
    async with TestClient(app, tmp_path) as tc:
        owner = UserInfo("o")
        record = await tc.gateway.store.sessions.create(SessionChannel("discord", chat_id="1"), owner)  # type: ignore[arg-type]
        result = await app.broadcast("hi", session_ids=[record.id])
        assert result.failed == {record.id: "not delivered"}


async def test_broadcast_to_a_thousand_telegram_chats_stays_inside_the_bot_api_limits(tmp_path: Path) -> None:
    app = gateway.App("news")
    async with FakeTelegramAPI(rate_scale=SCALE) as api:
        settings = test_settings(
            tmp_path, scheduler={"broadcast_concurrency": 8}, telegram=api.settings(rate_scale=SCALE)
        )
        gw = Gateway(app, settings)
        await gw.start()
        try:
            await make_sessions(gw, "telegram", AUDIENCE)
            began = time.perf_counter()
            result = await app.broadcast("**Scheduled maintenance** tonight at 22:00 UTC.", channel="telegram")
            elapsed = time.perf_counter() - began
        finally:
            await gw.stop()
        assert len(result.sent) == AUDIENCE and not result.failed
        assert api.rate_limited == []  # zero 429s
        delivered = [api.visible_texts(7000 + i) for i in range(AUDIENCE)]
        assert all(texts == ["Scheduled maintenance tonight at 22:00 UTC."] for texts in delivered)
        # the bot's global budget (30 messages/s, scaled) bounds the pace from below
        budget_floor = (AUDIENCE / 30.0) * SCALE
        assert elapsed >= budget_floor * 0.9
        print(f"\nbroadcast to {AUDIENCE} Telegram chats: {elapsed:.2f} s "
              f"(budget floor {budget_floor:.2f} s at rate_scale {SCALE}), 429s: {len(api.rate_limited)}")




async def test_a_session_that_cannot_be_opened_fails_alone(tmp_path: Path, database_url: str) -> None:
    """An id the database refuses (PostgreSQL refuses a NUL) is one failure in the result; the
    broadcast goes on to everyone else."""
    app = gateway.App("news")
    async with TestClient(app, tmp_path, database_url=database_url) as tc:
        first, second = await tc.conversation("alice"), await tc.conversation("bob")
        result = await app.broadcast("hello", session_ids=[first.session_id, "bad\x00id", second.session_id])
        assert sorted(result.sent) == sorted([first.session_id, second.session_id])
        assert list(result.failed) == ["bad\x00id"]
        assert [s.text for s in first.sent] == ["hello"] and [s.text for s in second.sent] == ["hello"]
