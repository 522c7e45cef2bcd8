"""The shared budget primitive (gateway/ratelimit.py) against the local Redis.

Every test uses keys under a prefix of its own, so runs never see each other's windows.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.ratelimit import SharedBudgets, SharedBudgetUnavailable, SharedWindow

pytestmark = [pytest.mark.redis, pytest.mark.timeout(30)]


@pytest_asyncio.fixture
async def budgets(redis_url: str) -> AsyncIterator[SharedBudgets]:
    shared = SharedBudgets.from_url(redis_url)
    try:
        yield shared
    finally:
        await shared.close()


@pytest.fixture
def prefix() -> str:
    return f"test-{secrets.token_hex(6)}"


async def test_many_tasks_on_two_connections_get_exactly_the_budget(redis_url: str, prefix: str) -> None:
    """200 takes at once from two clients (two processes' worth of connections): exactly the
    window's 7 succeed, whoever asks."""
    clients = [SharedBudgets.from_url(redis_url) for _ in range(2)]
    try:
        window = SharedWindow(f"{prefix}:w", 7, 10.0)
        grants = await asyncio.gather(*(clients[i % 2].take([window]) for i in range(200)))
        assert sum(g.taken for g in grants) == 7
        refused = [g for g in grants if not g.taken]
        assert all(0 < g.wait <= 10.0 for g in refused)
    finally:
        for client in clients:
            await client.close()


async def test_a_sliding_window_under_contention_never_holds_more_than_its_limit(
    budgets: SharedBudgets, prefix: str
) -> None:
    window = SharedWindow(f"{prefix}:w", 5, 0.3)
    taken: list[float] = []

    async def worker() -> None:
        while len(taken) < 20:
            grant = await budgets.take([window])
            if grant.taken:
                taken.append(grant.now)
            else:
                await asyncio.sleep(grant.wait)

    await asyncio.gather(*(worker() for _ in range(12)))
    taken.sort()
    assert len(taken) >= 20
    assert all(taken[i + 5] - taken[i] >= 0.3 for i in range(len(taken) - 5))  # on Redis's clock


async def test_windows_are_taken_all_or_nothing(budgets: SharedBudgets, prefix: str) -> None:
    """A chat window joined with the bot's: when the bot's is full, the chat's records nothing."""
    bot = SharedWindow(f"{prefix}:bot", 2, 10.0)
    assert (await budgets.take([SharedWindow(f"{prefix}:chat:1", 1, 10.0), bot])).taken
    assert (await budgets.take([SharedWindow(f"{prefix}:chat:2", 1, 10.0), bot])).taken
    refused = await budgets.take([SharedWindow(f"{prefix}:chat:3", 1, 10.0), bot])
    assert not refused.taken and refused.counts == (0, 2)
    assert await budgets.redis.exists(f"{prefix}:chat:3") == 0  # nothing recorded for the chat


async def test_two_windows_on_one_key_keep_the_longer_one(budgets: SharedBudgets, prefix: str) -> None:
    """A group's one-per-0.1 s and three-per-10 s windows count the same events: the short
    window's purge must not forget what the long one still counts."""
    key = f"{prefix}:group"
    windows = [SharedWindow(key, 1, 0.1), SharedWindow(key, 3, 10.0)]
    for _ in range(3):
        grant = await budgets.take(windows)
        while not grant.taken:
            await asyncio.sleep(grant.wait)
            grant = await budgets.take(windows)
    await asyncio.sleep(0.15)
    fourth = await budgets.take(windows)
    assert not fourth.taken and fourth.wait > 9.0  # the long window is full for almost 10 s more


async def test_a_held_event_blocks_until_settled_then_counts_from_its_finish(
    budgets: SharedBudgets, prefix: str
) -> None:
    window = SharedWindow(f"{prefix}:chat", 1, 0.2, hold=True)
    first = await budgets.take([window])
    assert first.taken
    await asyncio.sleep(0.3)  # longer than the window, but the request is still in flight
    blocked = await budgets.take([window])
    assert not blocked.taken and blocked.wait == pytest.approx(0.2)  # poll: the window's spacing
    finished = await budgets.settle([window.key], first.token)
    after = await budgets.take([window])
    assert not after.taken
    assert after.wait == pytest.approx(finished + 0.2 - after.now, abs=0.002)  # from the finish


async def test_a_held_event_of_a_dead_process_ages_out_by_itself(redis_url: str, prefix: str) -> None:
    budgets = SharedBudgets.from_url(redis_url, hold_lease=0.2)
    try:
        window = SharedWindow(f"{prefix}:bot", 1, 0.1, hold=True)
        assert (await budgets.take([window])).taken  # never settled: its process "died"
        assert not (await budgets.take([window])).taken
        await asyncio.sleep(0.35)  # the lease (0.2) plus the window (0.1)
        assert (await budgets.take([window])).taken
    finally:
        await budgets.close()


async def test_every_key_expires_once_it_no_longer_matters(redis_url: str, prefix: str) -> None:
    budgets = SharedBudgets.from_url(redis_url, hold_lease=0.2)
    try:
        await budgets.take([SharedWindow(f"{prefix}:w", 3, 0.1), SharedWindow(f"{prefix}:held", 3, 0.1, hold=True)])
        await budgets.pause(f"{prefix}:p", 0.1, source="1", last=f"{prefix}:last", parent=f"{prefix}:parent")
        await budgets.promise(f"{prefix}:finals", "f1", 0.1)
        redis = budgets.redis
        ttls = {key: await redis.pttl(f"{prefix}:{key}") for key in ("w", "held", "p", "last", "finals")}
        assert all(0 < ttl <= 302 for ttl in ttls.values()), ttls  # window (+ hold lease) + 1 ms
        await asyncio.sleep(0.45)
        assert [k async for k in redis.scan_iter(match=f"{prefix}:*")] == []
    finally:
        await budgets.close()


async def test_the_clock_is_the_redis_server_s(budgets: SharedBudgets, prefix: str) -> None:
    """Grants carry the server's TIME (what every process compares against), and a pause set by
    one client is measured on it: its remaining time never exceeds what was asked."""
    before = await budgets.server_time()
    grant = await budgets.take([SharedWindow(f"{prefix}:w", 1, 1.0)], [f"{prefix}:p"])
    after = await budgets.server_time()
    assert before <= grant.now <= after
    await budgets.pause(f"{prefix}:p", 0.5)
    paused = await budgets.peek([SharedWindow(f"{prefix}:other", 1, 1.0)], [f"{prefix}:p"])
    assert 0.4 < paused.paused[0] <= 0.5 and paused.wait == paused.paused[0]


async def test_pauses_never_shorten_and_two_sources_pause_the_parent(budgets: SharedBudgets, prefix: str) -> None:
    last, parent = f"{prefix}:last", f"{prefix}:bot:pause"
    assert not await budgets.pause(f"{prefix}:chat:1:pause", 5.0, source="1", last=last, parent=parent)
    assert not await budgets.pause(f"{prefix}:chat:1:pause", 0.1, source="1", last=last, parent=parent)
    chat = await budgets.peek([], [f"{prefix}:chat:1:pause"])
    assert chat.paused[0] > 4.0  # the shorter pause did not cut the longer one
    assert await budgets.redis.exists(parent) == 0  # one chat's 429s: the chat's limit
    assert await budgets.pause(f"{prefix}:chat:2:pause", 1.0, source="2", last=last, parent=parent)
    bot = await budgets.peek([], [parent])
    assert 0.9 < bot.paused[0] <= 1.0


async def test_promised_slots_shrink_the_room_until_withdrawn_or_expired(budgets: SharedBudgets, prefix: str) -> None:
    finals = f"{prefix}:finals"
    preview = SharedWindow(f"{prefix}:team", 4, 10.0, promises=finals)
    await budgets.promise(finals, "a", 10.0)
    await budgets.promise(finals, "b", 0.1)
    assert [(await budgets.take([preview])).taken for _ in range(3)] == [True, True, False]  # 4 - 2
    await asyncio.sleep(0.15)  # "b" expired (its process died)
    assert (await budgets.take([preview])).taken
    assert not (await budgets.take([preview])).taken
    await budgets.withdraw(finals, "a")
    assert (await budgets.take([preview])).taken
    assert (await budgets.take([SharedWindow(preview.key, 0, 10.0)])).wait == 10.0  # no room at all


async def test_deferred_writes_reach_redis_in_order_before_the_next_take(budgets: SharedBudgets, prefix: str) -> None:
    budgets.defer(lambda: budgets.pause(f"{prefix}:p", 0.1))
    budgets.defer(lambda: budgets.pause(f"{prefix}:p", 5.0))
    await budgets.flush()
    grant = await budgets.take([SharedWindow(f"{prefix}:w", 1, 1.0)], [f"{prefix}:p"])
    assert not grant.taken and grant.wait > 4.0


async def test_an_unreachable_redis_is_reported_then_retried_after_a_while() -> None:
    budgets = SharedBudgets.from_url("redis://127.0.0.1:1/0", outage_retry=0.1)
    try:
        with pytest.raises(SharedBudgetUnavailable):
            await budgets.take([SharedWindow("k", 1, 1.0)])
        assert not budgets.available and budgets.outages == 1
        with pytest.raises(SharedBudgetUnavailable):  # not even tried during the outage window
            await budgets.take([SharedWindow("k", 1, 1.0)])
        assert budgets.outages == 1
        await asyncio.sleep(0.15)
        assert budgets.available
        budgets.defer(lambda: budgets.pause("k:pause", 1.0))  # a deferred write swallows the failure
        await budgets.flush()
        assert budgets.outages == 2
    finally:
        await budgets.close()


WINDOW_KEYS = ("a", "b", "c")
# one request: the windows it touches (key, limit), whether it holds, whether it counts promises
requests = st.lists(
    st.tuples(
        st.lists(st.tuples(st.sampled_from(WINDOW_KEYS), st.integers(0, 4)), min_size=1, max_size=3),
        st.booleans(),
        st.booleans(),
    ),
    min_size=1,
    max_size=25,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sequence=requests, promised=st.integers(0, 2))
def test_takes_match_a_model_of_counting_windows(
    redis_url: str, sequence: list[tuple[list[tuple[str, int]], bool, bool]], promised: int
) -> None:
    """Whatever windows a request names (one key twice with different limits, limits of 0, held
    or not, minus promised slots), the script takes it exactly when a plain count says every
    window has room, records it in every window or in none, and reports the counts it saw.
    Windows are long (nothing expires during an example), so the model needs no clock."""

    async def check() -> None:
        prefix = f"test-{secrets.token_hex(6)}"
        budgets = SharedBudgets.from_url(redis_url)
        try:
            finals = f"{prefix}:finals"
            for index in range(promised):
                await budgets.promise(finals, f"p{index}", 60.0)
            counts = dict.fromkeys(WINDOW_KEYS, 0)
            for windows, hold, uses_promises in sequence:
                shared = [
                    SharedWindow(f"{prefix}:{key}", limit, 60.0, hold=hold, promises=finals if uses_promises else None)
                    for key, limit in windows
                ]
                room = all(counts[key] < limit - (promised if uses_promises else 0) for key, limit in windows)
                grant = await budgets.take(shared)
                assert grant.counts == tuple(counts[key] for key, _ in windows)
                assert grant.taken == room
                if room:
                    for key in {key for key, _ in windows}:
                        counts[key] += 1
                else:
                    assert grant.wait > 0
            for key in WINDOW_KEYS:
                assert await budgets.redis.zcard(f"{prefix}:{key}") == counts[key]
        finally:
            await budgets.close()

    asyncio.run(check())
