"""Group commit on PostgreSQL (gateway/store/postgres_group_commit.py): the replies and statuses
of concurrent turns go out in one statement, each caller answered only once it is committed, a
refused batch falling back to one statement per write, and a fence checked per row."""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from gateway.store import Store
from gateway.store.fence import Fence, LeaseLost
from gateway.store.postgres_group_commit import batch_statement
from gateway.store.queue import SessionQueue
from gateway.types import SessionChannel, UserInfo
from tests.support import blocked_on_a_lock, holding_a_row, lockable_now

pytestmark = pytest.mark.postgres
TTL = 30.0


@pytest.fixture
def store(postgres_store: Store) -> Store:
    return postgres_store


@pytest.fixture
def statements(turn_statements: list[str]) -> list[str]:
    return turn_statements


async def _session(store: Store) -> str:
    from gateway.inbound import PlatformUser

    user = await store.users.resolve(PlatformUser("api", "someone"))
    return (await store.sessions.create(SessionChannel("api"), UserInfo(user.id, None, None))).id


def _batches(seen: list[str]) -> list[str]:
    return [s for s in seen if s.startswith(("WITH added", "WITH marked", "WITH held"))]


async def _rows(store: Store, sql: str, **values: Any) -> list[Any]:
    async with store.engine.connect() as conn:
        return list((await conn.execute(text(sql), values)).all())


async def test_concurrent_replies_and_statuses_share_one_statement(statements, store) -> None:
    sessions = [await _session(store) for _ in range(4)]
    entries = [await store.inbox.record(s, f"k{i}", "message", {}, user_text="hi") for i, s in enumerate(sessions)]
    statements.clear()
    await asyncio.gather(
        *(store.messages.add(s, "assistant", f"reply {i}", inbound_id=e.id)
          for i, (s, e) in enumerate(zip(sessions, entries, strict=True))),
        *(store.inbox.set_status(e.id, "done") for e in entries),
    )
    await asyncio.sleep(0.01)  # asyncpg calls its query loggers soon after each query
    assert len(_batches(statements)) == 1, statements
    assert store.postgres_turns.group_commit.batches >= 1
    for i, (session_id, entry) in enumerate(zip(sessions, entries, strict=True)):
        turn = await store.messages.of_turn(session_id, entry.id)
        assert [(m.role, m.text) for m in turn] == [("user", "hi"), ("assistant", f"reply {i}")]
        stored = await store.inbox.get(entry.id)
        assert stored is not None and stored.status == "done"


async def test_the_batched_rows_read_as_a_write_alone_stores_them(store) -> None:
    session_id = await _session(store)
    entry = await store.inbox.record(session_id, "k", "message", {}, user_text="hi")
    block = {"id": "b1", "type": "card", "payload": {"title": "ü ✓", "n": [1, 2]}}
    attachments = [{"name": "a.pdf", "url": "file:1", "content_type": "application/pdf", "size": 3}]
    added = await store.messages.add(session_id, "assistant", "with 'quotes' and \\ and \x01", block=block,
                                     attachments=attachments, inbound_id=entry.id, status="streaming")
    await store.inbox.set_status(entry.id, "failed", "it broke: ' \" \\")
    [reply] = [m for m in await store.messages.of_turn(session_id, entry.id) if m.role == "assistant"]
    assert (reply.id, reply.text, reply.block, reply.attachments, reply.status) == (
        added.id, added.text, block, attachments, "streaming"
    )
    assert reply.created_at == added.created_at == reply.updated_at
    stored = await store.inbox.get(entry.id)
    assert stored is not None and (stored.status, stored.error) == ("failed", "it broke: ' \" \\")
    [(kind,)] = await _rows(store, "SELECT json_typeof(block) FROM messages WHERE id = :id", id=added.id)
    assert kind == "object"  # JSON, not a JSON string of it


async def test_a_refused_batch_is_written_again_one_by_one_and_only_the_faulty_write_fails(
    statements, store
) -> None:
    session_id = await _session(store)
    entry = await store.inbox.record(session_id, "k", "message", {}, user_text="hi")
    ghost = await _session(store)
    await store.sessions.delete(ghost)  # a reply to it breaks the messages' foreign key
    statements.clear()
    outcomes = await asyncio.gather(
        store.messages.add(session_id, "assistant", "kept", inbound_id=entry.id),
        store.messages.add(ghost, "assistant", "refused"),
        store.inbox.set_status(entry.id, "done"),
        return_exceptions=True,
    )
    assert not isinstance(outcomes[0], BaseException) and outcomes[2] is None
    assert isinstance(outcomes[1], IntegrityError)  # what the ORM path raises
    await asyncio.sleep(0.01)
    assert len(_batches(statements)) == 1  # the refused one, then each alone
    assert [m.text for m in await store.messages.of_turn(session_id, entry.id)] == ["hi", "kept"]
    assert (await store.inbox.get(entry.id)).status == "done"  # type: ignore[union-attr]
    assert await _rows(store, "SELECT id FROM messages WHERE session_id = :s", s=ghost) == []


async def test_two_statuses_of_one_event_in_one_batch_end_as_the_later(store) -> None:
    session_id = await _session(store)
    entry = await store.inbox.record(session_id, "k", "message", {}, user_text="hi")
    await asyncio.gather(store.inbox.set_status(entry.id, "running"), store.inbox.set_status(entry.id, "done"))
    assert (await store.inbox.get(entry.id)).status == "done"  # type: ignore[union-attr]
    await asyncio.gather(store.inbox.set_status(entry.id, "done"), store.inbox.set_status(entry.id, "failed", "x"))
    stored = await store.inbox.get(entry.id)
    assert stored is not None and (stored.status, stored.error) == ("failed", "x")


async def test_a_row_under_a_lost_lease_is_not_written_and_the_rest_of_its_batch_is(statements, store) -> None:
    queue = SessionQueue(store.engine)
    held, lost = await _session(store), await _session(store)
    held_claim, lost_claim = await queue.claim(held, "worker-a", TTL), await queue.claim(lost, "worker-a", TTL)
    assert held_claim is not None and lost_claim is not None
    held_fence = Fence(held, held_claim.token, time.monotonic() + TTL)
    stale = Fence(lost, lost_claim.token, time.monotonic() + TTL)
    held_entry = await store.inbox.record(held, "k1", "message", {}, user_text="hi")
    lost_entry = await store.inbox.record(lost, "k2", "message", {}, user_text="hi")
    async with store.engine.begin() as conn:  # another worker took the session over
        await conn.execute(text("UPDATE session_leases SET token = token + 1 WHERE session_id = :s"), {"s": lost})
    statements.clear()
    outcomes = await asyncio.gather(
        store.messages.add(held, "assistant", "fenced and held", inbound_id=held_entry.id, fence=held_fence),
        store.messages.add(lost, "assistant", "fenced and lost", inbound_id=lost_entry.id, fence=stale),
        store.inbox.set_status(held_entry.id, "done", fence=held_fence),
        store.inbox.set_status(lost_entry.id, "done", fence=stale),
        store.messages.add(lost, "assistant", "not fenced", inbound_id=lost_entry.id),
        return_exceptions=True,
    )
    assert [type(o).__name__ for o in outcomes] == ["MessageRecord", "LeaseLost", "NoneType", "LeaseLost",
                                                    "MessageRecord"]
    assert stale.lost and not held_fence.lost
    await asyncio.sleep(0.01)
    [batch] = _batches(statements)
    assert re.findall(r"\b(?:INSERT INTO|UPDATE) (?!OF\b)(\w+)", batch) == ["messages", "inbox"]
    assert "FOR NO KEY UPDATE OF session_leases" in batch  # the fences checked, their rows locked
    assert [m.text for m in await store.messages.of_turn(held, held_entry.id)] == ["hi", "fenced and held"]
    assert [m.text for m in await store.messages.of_turn(lost, lost_entry.id)] == ["hi", "not fenced"]
    assert (await store.inbox.get(held_entry.id)).status == "done"  # type: ignore[union-attr]
    assert (await store.inbox.get(lost_entry.id)).status == "pending"  # type: ignore[union-attr]
    with pytest.raises(LeaseLost):  # known lost now: refused before reaching the database
        await store.inbox.set_status(lost_entry.id, "done", fence=stale)


async def test_a_cancelled_caller_does_not_take_its_batch_down(store) -> None:
    session_id = await _session(store)
    entry = await store.inbox.record(session_id, "k", "message", {}, user_text="hi")
    cancelled = asyncio.ensure_future(store.messages.add(session_id, "assistant", "one", inbound_id=entry.id))
    other = asyncio.ensure_future(store.messages.add(session_id, "assistant", "two", inbound_id=entry.id))
    await asyncio.sleep(0)
    cancelled.cancel()
    await other
    await store.inbox.set_status(entry.id, "done")
    texts = [m.text for m in await store.messages.of_turn(session_id, entry.id)]
    assert texts[0] == "hi" and "two" in texts  # "one" was on its way already: written or not, never half


async def test_closing_the_store_writes_what_was_asked_for(postgres_url) -> None:
    store = Store(postgres_url)
    await store.open()
    session_id = await _session(store)
    entry = await store.inbox.record(session_id, "k", "message", {}, user_text="hi")
    pending = [asyncio.ensure_future(store.inbox.set_status(entry.id, "done")),
               asyncio.ensure_future(store.messages.add(session_id, "assistant", "late", inbound_id=entry.id))]
    await asyncio.sleep(0)
    await store.close()
    await asyncio.gather(*pending)
    reopened = Store(postgres_url)
    await reopened.open()
    try:
        assert (await reopened.inbox.get(entry.id)).status == "done"  # type: ignore[union-attr]
        assert [m.text for m in await reopened.messages.of_turn(session_id, entry.id)] == ["hi", "late"]
    finally:
        await reopened.close()


@pytest.mark.parametrize("fenced", [False, True])
@pytest.mark.parametrize("parts", [(True, False), (False, True), (True, True)])
def test_each_statement_takes_text_arrays_only(parts: tuple[bool, bool], fenced: bool) -> None:
    """asyncpg looks any other array type up in the catalog on each new connection."""
    statement = batch_statement(messages=parts[0], statuses=parts[1], fenced=fenced)
    arrays = re.findall(r"\$(\d+)::(\w+)\[\]", statement)
    assert {kind for _, kind in arrays} == {"text"}
    assert sorted(int(n) for n, _ in arrays) == list(range(1, len(arrays) + 1))


async def test_a_text_postgresql_cannot_store_fails_its_own_write_only(store) -> None:
    """A lone UTF-16 surrogate (not Unicode: asyncpg cannot encode it, a ``DataError``) or a NUL
    (which PostgreSQL's text columns refuse) in a reply, among others in one batch: the batch is
    refused whole and written again one by one; only those two replies fail."""
    session_id = await _session(store)
    entry = await store.inbox.record(session_id, "k", "message", {}, user_text="hi")
    outcomes = await asyncio.gather(
        store.messages.add(session_id, "assistant", "before", inbound_id=entry.id),
        store.messages.add(session_id, "assistant", "half a pair \ud800", inbound_id=entry.id),
        store.messages.add(session_id, "assistant", "a NUL \x00", inbound_id=entry.id),
        store.messages.add(session_id, "assistant", "after ✓", inbound_id=entry.id),
        store.inbox.set_status(entry.id, "done"),
        return_exceptions=True,
    )
    assert not isinstance(outcomes[0], BaseException) and not isinstance(outcomes[3], BaseException)
    assert isinstance(outcomes[1], Exception) and isinstance(outcomes[2], Exception) and outcomes[4] is None
    assert [m.text for m in await store.messages.of_turn(session_id, entry.id)] == ["hi", "before", "after ✓"]
    assert (await store.inbox.get(entry.id)).status == "done"  # type: ignore[union-attr]


async def test_a_status_under_a_lost_lease_does_not_hide_the_one_before_it(statements, store) -> None:
    """Two statuses of one event asked for together, the first under the lease, the second under
    a stale token: in sequence the first is written and the second refused, and so here."""
    queue = SessionQueue(store.engine)
    session_id = await _session(store)
    claim = await queue.claim(session_id, "worker-a", TTL)
    assert claim is not None
    held = Fence(session_id, claim.token, time.monotonic() + TTL)
    stale = Fence(session_id, claim.token - 1, time.monotonic() + TTL)
    entry = await store.inbox.record(session_id, "k", "message", {}, user_text="hi")
    statements.clear()
    outcomes = await asyncio.gather(
        store.inbox.set_status(entry.id, "done", fence=held),
        store.inbox.set_status(entry.id, "failed", "late", fence=stale),
        return_exceptions=True,
    )
    assert outcomes[0] is None and isinstance(outcomes[1], LeaseLost)
    stored = await store.inbox.get(entry.id)
    assert stored is not None and (stored.status, stored.error) == ("done", None)
    await asyncio.sleep(0.01)
    assert len(_batches(statements)) == 2  # the second waited for a batch of its own


# -- the order the lease rows are locked in (LEASE_LOCK_ORDER) -------------------------------------


async def _two_claimed_sessions(store: Store, queue: SessionQueue, *, claim_second_first: bool) -> list[Fence]:
    """Two sessions claimed by ``worker-a``, the first's id the lower; with
    ``claim_second_first`` the second's lease row is written first (first in the table's pages)."""
    first, second = sorted([await _session(store), await _session(store)])
    order = [second, first] if claim_second_first else [first, second]
    tokens = {session_id: await queue.claim(session_id, "worker-a", TTL) for session_id in order}
    return [Fence(s, tokens[s].token, time.monotonic() + TTL) for s in (first, second)]  # type: ignore[union-attr]


async def test_a_batch_locks_the_lease_rows_of_its_fences_in_session_id_order(postgres_url, store) -> None:
    """Its fences asked for in the other order, a batch waiting for the first session's lease row
    holds nothing of the second's yet: a worker's renewal, which locks in the same order, cannot
    be holding one while waiting for the other (a deadlock seen under the scale-out tests)."""
    dsn = "postgresql://" + postgres_url.split("://", 1)[1]
    queue = SessionQueue(store.engine)
    first, second = await _two_claimed_sessions(store, queue, claim_second_first=False)
    entries = [await store.inbox.record(f.session_id, secrets.token_hex(4), "message", {}, user_text="hi")
               for f in (first, second)]
    holder = await holding_a_row(dsn, "session_leases", "session_id", first.session_id)
    try:
        writes = asyncio.gather(  # the second session's write first: its fence leads the batch's arrays
            store.messages.add(second.session_id, "assistant", "b", inbound_id=entries[1].id, fence=second),
            store.messages.add(first.session_id, "assistant", "a", inbound_id=entries[0].id, fence=first),
        )
        await blocked_on_a_lock(dsn)
        assert await lockable_now(dsn, "session_leases", "session_id", second.session_id)
    finally:
        await holder.execute("ROLLBACK")
        await holder.close()
    await writes
    assert [m.text for m in await store.messages.of_turn(second.session_id, entries[1].id)] == ["hi", "b"]


async def test_a_renewal_locks_the_lease_rows_in_session_id_order(postgres_url, store) -> None:
    """The second session's lease row first in the table, a renewal waiting for the first
    session's row holds nothing of the second's yet (the order of ``LEASE_LOCK_ORDER``)."""
    dsn = "postgresql://" + postgres_url.split("://", 1)[1]
    queue = SessionQueue(store.engine)
    first, second = await _two_claimed_sessions(store, queue, claim_second_first=True)
    holder = await holding_a_row(dsn, "session_leases", "session_id", first.session_id)
    try:
        renewal = asyncio.ensure_future(queue.renew("worker-a", [first.session_id, second.session_id], TTL))
        await blocked_on_a_lock(dsn)
        assert await lockable_now(dsn, "session_leases", "session_id", second.session_id)
    finally:
        await holder.execute("ROLLBACK")
        await holder.close()
    assert await renewal == {first.session_id: first.token, second.session_id: second.token}
