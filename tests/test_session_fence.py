"""The session lease and its fence (gateway/store/queue.py, gateway/store/fence.py) on PostgreSQL:
one holder at a time, a token per claim, and a write under a stale token refused in its own
transaction, leaving nothing behind."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import text

from gateway.store import Store
from gateway.store.fence import Fence, LeaseLost
from gateway.store.queue import SessionQueue
from gateway.types import SessionChannel, UserInfo

pytestmark = pytest.mark.postgres
TTL = 30.0


@pytest.fixture
async def pg_store(postgres_url) -> AsyncIterator[Store]:
    store = Store(postgres_url)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def _session(store: Store) -> str:
    user = await store.users.resolve(_platform_user())
    return (await store.sessions.create(SessionChannel("api"), UserInfo(user.id, None, None))).id


def _platform_user() -> Any:
    from gateway.inbound import PlatformUser

    return PlatformUser("api", "someone")


async def _expire(store: Store, session_id: str) -> None:
    async with store.engine.begin() as conn:
        await conn.execute(text("UPDATE session_leases SET expires_at = now() - interval '1 second' "
                                "WHERE session_id = :s"), {"s": session_id})


def _fence(session_id: str, token: int) -> Fence:
    return Fence(session_id, token, time.monotonic() + TTL)


async def test_one_holder_at_a_time_and_a_takeover_increments_the_token(pg_store):
    queue = SessionQueue(pg_store.engine)
    session_id = await _session(pg_store)
    first = await queue.claim(session_id, "worker-a", TTL)
    assert first is not None and first.token == 1 and not first.taken_over
    assert await queue.claim(session_id, "worker-b", TTL) is None  # held
    await _expire(pg_store, session_id)  # worker-a died
    second = await queue.claim(session_id, "worker-b", TTL)
    assert second is not None and second.token == 2 and second.taken_over
    await queue.release(session_id, second.token)
    third = await queue.claim(session_id, "worker-a", TTL)
    assert third is not None and third.token == 3 and not third.taken_over  # handed over, not taken


async def test_renewal_names_its_sessions_and_reports_only_those_still_held(pg_store):
    queue = SessionQueue(pg_store.engine)
    kept, given_up, taken = [await _session(pg_store) for _ in range(3)]
    for session_id in (kept, given_up, taken):
        assert await queue.claim(session_id, "worker-a", TTL) is not None
    await _expire(pg_store, taken)
    assert (await queue.claim(taken, "worker-b", TTL)).token == 2  # type: ignore[union-attr]
    assert await queue.renew("worker-a", [kept, taken], 2 * TTL) == {kept: 1}
    # ``given_up`` was not named: it keeps its first ttl and lapses, instead of being kept
    # from the other workers by a renewal of everything worker-a ever claimed.
    async with pg_store.engine.connect() as conn:
        rows = (await conn.execute(text("SELECT session_id, expires_at > now() + interval '45 seconds' "
                                        "FROM session_leases"))).all()
    assert dict(rows) == {kept: True, given_up: False, taken: False}


async def test_a_write_under_a_stale_token_is_refused_and_rolled_back(pg_store):
    queue = SessionQueue(pg_store.engine)
    session_id = await _session(pg_store)
    claim = await queue.claim(session_id, "worker-a", TTL)
    assert claim is not None
    stale = _fence(session_id, claim.token)
    entry = await pg_store.inbox.record(session_id, "k1", "message", {}, user_text="hi")
    kept = await pg_store.messages.add(session_id, "assistant", "before", inbound_id=entry.id, fence=stale)
    await _expire(pg_store, session_id)
    assert (await queue.claim(session_id, "worker-b", TTL)).token == 2  # type: ignore[union-attr]

    writes = [
        pg_store.messages.add(session_id, "assistant", "after", inbound_id=entry.id, fence=stale),
        pg_store.messages.update(kept.id, text="changed", fence=stale),
        pg_store.messages.save_block(session_id, {"id": "b1", "type": "card", "payload": {}}, fence=stale),
        pg_store.sessions.save_data(session_id, {"k": 1}, [], fence=stale),
        pg_store.sessions.update(session_id, title="t", fence=stale),
        pg_store.inbox.set_status(entry.id, "done", fence=stale),
        pg_store.inbox.count_attempt(entry.id, fence=stale),
        pg_store.messages.fail_streams_of(entry.id, fence=stale),
        pg_store.sessions.mark_entered(session_id, fence=stale),
    ]
    for write in writes:
        with pytest.raises(LeaseLost):
            await write
    assert stale.lost
    messages = await pg_store.messages.of_turn(session_id, entry.id)
    assert [(m.role, m.text) for m in messages] == [("user", "hi"), ("assistant", "before")]
    record = await pg_store.sessions.get(session_id)
    assert record is not None and record.data == {} and record.title == "" and not record.entered
    inbound = await pg_store.inbox.get(entry.id)
    assert inbound is not None and inbound.status == "pending"
    # The new holder's fence passes.
    await pg_store.inbox.set_status(entry.id, "done", fence=_fence(session_id, 2))
    assert (await pg_store.inbox.get(entry.id)).status == "done"  # type: ignore[union-attr]


async def test_a_deleted_session_refuses_fenced_writes_and_is_not_renewed(pg_store):
    queue = SessionQueue(pg_store.engine)
    session_id = await _session(pg_store)
    claim = await queue.claim(session_id, "worker-a", TTL)
    assert claim is not None
    fence = _fence(session_id, claim.token)
    await pg_store.messages.add(session_id, "assistant", "while it lived", fence=fence)
    assert await pg_store.sessions.delete(session_id)  # through a web process, say
    with pytest.raises(LeaseLost):
        await pg_store.messages.add(session_id, "assistant", "orphan", fence=fence)
    assert await queue.renew("worker-a", [session_id], TTL) == {}
    async with pg_store.engine.connect() as conn:
        left = (await conn.execute(text("SELECT count(*) FROM messages WHERE session_id = :s"),
                                   {"s": session_id})).scalar()
    assert left == 0


async def test_a_lapsed_fence_refuses_before_reaching_the_database(pg_store):
    session_id = await _session(pg_store)
    lapsed = Fence(session_id, 1, time.monotonic() - 0.001)  # the last renewal is older than the ttl
    with pytest.raises(LeaseLost):
        await pg_store.messages.add(session_id, "assistant", "late", fence=lapsed)
    assert lapsed.lost
    assert (await pg_store.messages.page(session_id))[1] == 0


async def test_a_takeover_waits_for_a_fenced_write_under_way(pg_store):
    """The fence locks the lease row until the write commits: a claim racing it comes after."""
    queue = SessionQueue(pg_store.engine)
    session_id = await _session(pg_store)
    claim = await queue.claim(session_id, "worker-a", 0.2)
    assert claim is not None
    await asyncio.sleep(0.3)  # expired, not yet taken over
    fence = _fence(session_id, claim.token)
    async with pg_store.write(fence) as db:
        await db.connection()
        # The fence runs at commit; take the lock now, as a long write would.
        await fence.verify_async(await db.connection())
        takeover = asyncio.create_task(queue.claim(session_id, "worker-b", TTL))
        await asyncio.sleep(0.2)
        assert not takeover.done()  # blocked on the row lock
    assert (await takeover).token == 2  # type: ignore[union-attr]


async def test_a_fenced_write_locks_the_lease_row_before_the_rows_it_writes(pg_store):
    """Every fenced write takes the session's lease row first: the group commit's batches check
    their fences before they insert (a reply's insert then checks its session row), so a fenced
    ORM write that locked the session row first (``save_data``) and the lease row last could
    deadlock with a batch holding that session's reply (seen in ``test_scale_out``'s main run)."""
    from sqlalchemy import event

    queue = SessionQueue(pg_store.engine)
    session_id = await _session(pg_store)
    claim = await queue.claim(session_id, "worker-a", TTL)
    assert claim is not None
    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(" ".join(statement.split()))

    event.listen(pg_store.engine.sync_engine, "before_cursor_execute", record)
    try:
        await pg_store.sessions.save_data(session_id, {"k": 1}, [], fence=_fence(session_id, claim.token))
    finally:
        event.remove(pg_store.engine.sync_engine, "before_cursor_execute", record)
    fence_check = next(i for i, s in enumerate(statements) if s.startswith("UPDATE session_leases"))
    session_lock = next(i for i, s in enumerate(statements) if s.startswith("SELECT") and "FOR UPDATE" in s)
    assert fence_check < session_lock, statements
