"""The lease helper over the store's ``leases`` table: one holder at a time, renewal, release
and takeover after a holder stops or dies (a real SQLite file; two Store engines on it stand
in for two processes; the same again on PostgreSQL where it runs)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlmodel import col

from gateway.leases import Lease
from gateway.store import Store
from gateway.store.tables import LeaseRow, utcnow


@pytest.fixture
async def stores(database_url: str) -> AsyncIterator[tuple[Store, Store]]:
    first, second = Store(database_url), Store(database_url)
    await first.open()
    await second.open()
    yield first, second
    await first.close()
    await second.close()


async def test_one_holder_at_a_time_and_renewal(stores: tuple[Store, Store]) -> None:
    """Without the wall clock: a renewal moves the stored expiry on, and the lease passes to
    another holder only once the stored expiry is behind (made so here, as a ttl passing
    without a renewal would)."""
    a = Lease(stores[0], "leader", holder="a", ttl=30)
    b = Lease(stores[1], "leader", holder="b", ttl=30)
    assert await a.try_acquire() is True and a.held
    assert await b.try_acquire() is False and not b.held
    first = await _expiry(stores[1], "leader")
    await asyncio.sleep(0.01)
    assert await a.try_acquire() is True  # renewal by the holder
    assert await _expiry(stores[1], "leader") > first
    assert await b.try_acquire() is False and a.held
    await _expire(stores[1], "leader")  # the ttl passed and "a" did not renew in time
    assert await b.try_acquire() is True and b.held
    assert await a.try_acquire() is False and not a.held  # the late renewal is refused


async def _expiry(store: Store, name: str) -> datetime:
    async with store.session() as db:
        row = await db.get(LeaseRow, name)
    assert row is not None
    return row.expires_at


async def _expire(store: Store, name: str) -> None:
    async with store.write() as db:
        await db.exec(update(LeaseRow).where(col(LeaseRow.name) == name)
                      .values(expires_at=utcnow() - timedelta(seconds=1)))


async def test_release_hands_over_at_once(stores: tuple[Store, Store]) -> None:
    a = Lease(stores[0], "leader", holder="a", ttl=30)
    b = Lease(stores[1], "leader", holder="b", ttl=30)
    assert await a.try_acquire()
    await a.release()
    assert not a.held
    assert await b.try_acquire()  # no 30 s wait


async def test_standby_takes_over_after_the_holder_dies(stores: tuple[Store, Store]) -> None:
    events: list[str] = []

    async def note(what: str) -> None:
        events.append(what)

    dead = Lease(stores[0], "leader", holder="dead", ttl=0.4)
    assert await dead.try_acquire()  # then never renews: the process "died"
    # the standby's own ttl is longer: renewing every 0.4 s, it rides out a loaded machine's stalls
    standby = Lease(stores[1], "leader", holder="standby", ttl=1.2, retry_every=0.1,
                    on_acquired=lambda: note("standby leads"), on_lost=lambda: note("standby lost"))
    standby.start()
    began = time.monotonic()
    assert await standby.wait_held(timeout=3)
    took = time.monotonic() - began
    assert 0.2 < took < 1.5  # not before the dead holder's lease expired
    assert not dead.held  # the dead holder's own view agrees once its ttl passed
    await asyncio.sleep(1.3)  # renewed across more than one ttl
    assert standby.held and events == ["standby leads"]
    await standby.stop()
    assert events == ["standby leads", "standby lost"]
    assert await dead.try_acquire()  # released on stop


async def test_campaign_loop_notices_a_lost_lease(stores: tuple[Store, Store]) -> None:
    changes: list[str] = []
    a = Lease(stores[0], "leader", holder="a", ttl=0.3)
    a.start()
    assert await a.wait_held(timeout=2)
    # another process steals the row (an operator, a clock jump): the holder must step down
    await stores[1].leases.release("leader", "a")
    assert await stores[1].leases.acquire("leader", "thief", 30)
    lost_seen = asyncio.Event()
    a.on_lost = lambda: _set(lost_seen, changes)
    await asyncio.wait_for(lost_seen.wait(), 2)
    assert changes == ["lost"] and not a.held
    await a.stop()


async def test_database_outage_keeps_the_lease_only_until_it_expires(tmp_path: Path) -> None:
    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'outage.db'}")
    await store.open()
    a = Lease(store, "leader", holder="a", ttl=1.0)
    assert await a.try_acquire()
    await store.close()  # every renewal now fails
    assert await a.try_acquire() is True  # still valid locally
    await asyncio.sleep(1.05)
    assert await a.try_acquire() is False and not a.held


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        Lease(None, "x", ttl=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Lease(None, "x", ttl=1, renew_every=2)  # type: ignore[arg-type]


async def _set(event: asyncio.Event, changes: list[str]) -> None:
    changes.append("lost")
    event.set()


async def test_abdicate_lets_another_lead_and_a_rewin_calls_on_acquired_again(stores: tuple[Store, Store]) -> None:
    won: list[str] = []

    async def acquired() -> None:
        won.append("a")

    a = Lease(stores[0], "leader", holder="a", ttl=5, on_acquired=acquired)
    assert await a.campaign_once() and won == ["a"]
    await a.abdicate()
    assert not a.held
    b = Lease(stores[1], "leader", holder="b", ttl=5)
    assert await b.try_acquire()
    await b.release()
    assert await a.campaign_once() and won == ["a", "a"]
