"""The recordings of concurrent events on PostgreSQL in one statement
(gateway/store/postgres_recording.py): each event answered as the statement alone answers it
(recorded, a duplicate, an unknown session, its context), and stored as it stores it; what may
not share a statement kept apart; the session rows locked in one order."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from sqlalchemy import text, update

from gateway.store import Store
from gateway.store.inbox import REPEAT_CLAIMS
from gateway.store.postgres_recording import RECORDS_STATEMENT
from gateway.store.statements import INBOX
from gateway.store.tables import utcnow
from gateway.types import SessionChannel, UnknownSession, UserInfo
from tests.support import blocked_on_a_lock, holding_a_row, lockable_now

pytestmark = pytest.mark.postgres
LATER = "7ZZZZZZZZZZZZZZZZZZZZZZZZZ"  # an id after every id made: the whole history


def _dsn(postgres_url: str) -> str:
    return "postgresql://" + postgres_url.split("://", 1)[1]


async def _sessions(postgres_store: Store, count: int) -> list[str]:
    from gateway.inbound import PlatformUser

    user = await postgres_store.users.resolve(PlatformUser("api", "someone", email="someone@example.com"))
    return sorted([(await postgres_store.sessions.create(SessionChannel("api"), UserInfo(user.id, None, None))).id
                   for _ in range(count)])


async def _batched(seen: list[str]) -> int:
    await asyncio.sleep(0.01)  # asyncpg calls its query loggers soon after each query
    return sum(statement == RECORDS_STATEMENT for statement in seen)


async def _stored(postgres_store: Store, inbox_id: str) -> tuple[Any, ...]:
    """An event's row and its user message's, as PostgreSQL's text (ids and instants aside)."""
    async with postgres_store.engine.connect() as conn:
        row = (await conn.execute(text(
            "SELECT i.dedup_key, i.kind, i.payload::text, i.status, i.attempts, i.error IS NULL,"
            " i.created_at = i.updated_at, s.updated_at = i.created_at, m.role, m.text, m.block::text,"
            " m.attachments::text, m.platform_refs::text, m.status, m.created_at = i.created_at,"
            " m.created_at = m.updated_at FROM inbox i JOIN sessions s ON s.id = i.session_id"
            " LEFT JOIN messages m ON m.inbound_id = i.id WHERE i.id = :id"
        ), {"id": inbox_id})).one()
    return tuple(row)


async def test_concurrent_recordings_share_one_statement_and_store_what_the_statement_alone_does(
    turn_statements, postgres_store
) -> None:
    alone_session, *sessions = await _sessions(postgres_store, 5)
    payload = {"kind": "message", "text": "é ✓", "nested": {"list": [1, None, True]}}
    attachments = [{"name": "a.txt", "url": "u", "size": 1}]
    alone = await postgres_store.inbox.record(alone_session, "key", "message", payload, user_text="hi \"✓\"",
                                     attachments=attachments)
    turn_statements.clear()
    entries = await asyncio.gather(*(
        postgres_store.inbox.record(session_id, f"key-{i}", "message", payload, user_text="hi \"✓\"",
                                    attachments=attachments)
        if i != 3 else
        postgres_store.inbox.record(session_id, f"key-{i}", "action", {"name": "go"})  # no message
        for i, session_id in enumerate(sessions)
    ))
    assert await _batched(turn_statements) == 1 and len(turn_statements) == 1, turn_statements
    assert [entry.duplicate for entry in entries] == [False] * 4
    assert len({entry.id for entry in entries}) == 4 and entries[3].message_id is None
    expected = list(await _stored(postgres_store, alone.id))
    for i, entry in enumerate(entries):
        expected[0] = f"key-{i}"
        if i == 3:
            action = ("key-3", "action", '{"name": "go"}', *expected[3:8])
            assert (await _stored(postgres_store, entry.id))[:8] == action
            continue
        assert await _stored(postgres_store, entry.id) == tuple(expected)
        turn = await postgres_store.messages.of_turn(sessions[i], entry.id)
        assert [(m.id, m.text, m.attachments) for m in turn] == [(entry.message_id, "hi \"✓\"", attachments)]
    assert {row.id for row in await postgres_store.inbox.unfinished()} == {alone.id, *(entry.id for entry in entries)}


async def test_each_event_of_a_batch_reads_its_own_context(turn_statements, postgres_store) -> None:
    """The session, its user and its history before the event, as the turn would read them:
    one event asking for fifty messages, one for two, one for none, one for no context at all."""
    sessions = await _sessions(postgres_store, 4)
    for n, session_id in enumerate(sessions):
        for i in range(n + 2):
            await postgres_store.messages.add(session_id, "assistant", f"{session_id} {i}")
    expected = [await postgres_store.sessions.turn_context_and_history(s, LATER, 50) for s in sessions]
    contexts: list[tuple[str, int] | None] = [(LATER, 50), (LATER, 2), (LATER, 0), None]
    turn_statements.clear()
    entries = await asyncio.gather(*(
        postgres_store.inbox.record(s, f"k{n}", "message", {}, user_text="new", context=context)
        for n, (s, context) in enumerate(zip(sessions, contexts, strict=True))
    ))
    assert await _batched(turn_statements) == 1
    for n, (entry, wanted, asked) in enumerate(zip(entries, expected, contexts, strict=True)):
        assert wanted is not None and wanted[2] is not None
        if asked is None:
            assert entry.context is None
            continue
        context = entry.context
        assert context is not None and context.history_before == LATER and context.user == wanted[1]
        stored = await postgres_store.sessions.get(sessions[n])
        assert context.session == stored  # its updated_at the event's, as stored
        if asked[1] == 0:
            assert context.history is None  # read on first use
        else:
            assert context.history is not None
            assert [m.text for m in context.history()] == [m.text for m in wanted[2]()][-asked[1]:]


async def test_an_unknown_session_fails_its_own_recording_only(turn_statements, postgres_store) -> None:
    sessions = await _sessions(postgres_store, 2)
    turn_statements.clear()
    outcomes = await asyncio.gather(
        postgres_store.inbox.record(sessions[0], "a", "message", {}, user_text="one"),
        postgres_store.inbox.record("01NOSUCHSESSION", "b", "message", {}, user_text="lost"),
        postgres_store.inbox.record(sessions[1], "c", "message", {}, user_text="two"),
        return_exceptions=True,
    )
    assert await _batched(turn_statements) == 1
    assert isinstance(outcomes[1], UnknownSession)
    assert [m.text for m in await postgres_store.messages.of_turn(sessions[1], outcomes[2].id)] == ["two"]  # type: ignore[union-attr]
    assert len(await postgres_store.inbox.unfinished()) == 2


async def test_repeat_claims_in_a_batch_are_taken_or_refused_event_by_event(turn_statements, postgres_store) -> None:
    """A live claim refuses its event (answered with the claim's event, nothing stored, the
    session not even touched); a new claim and a finished, expired one are taken."""
    live, fresh, expired = await _sessions(postgres_store, 3)
    first = await postgres_store.inbox.record(live, "r1", "message", {}, user_text="same", repeat=("live", 60.0))
    old = await postgres_store.inbox.record(expired, "r2", "message", {}, user_text="old", repeat=("expired", 60.0))
    await postgres_store.inbox.set_status(old.id, "done")
    then = utcnow() - timedelta(hours=1)
    async with postgres_store.engine.begin() as conn:
        await conn.execute(update(REPEAT_CLAIMS).where(REPEAT_CLAIMS.c.key == "expired").values(expires_at=then))
        await conn.execute(update(INBOX).where(INBOX.c.id == old.id).values(updated_at=then))
    untouched = await postgres_store.sessions.get(live)
    turn_statements.clear()
    repeated, new, taken = await asyncio.gather(
        postgres_store.inbox.record(live, "r3", "message", {}, user_text="same", repeat=("live", 60.0)),
        postgres_store.inbox.record(fresh, "r4", "message", {}, user_text="new", repeat=("fresh", 60.0)),
        postgres_store.inbox.record(expired, "r5", "message", {}, user_text="old", repeat=("expired", 60.0)),
    )
    assert await _batched(turn_statements) == 1
    assert repeated.duplicate and repeated.id == first.id and repeated.message_id is None
    assert not new.duplicate and not taken.duplicate and taken.id != old.id
    assert await postgres_store.sessions.get(live) == untouched
    assert [m.text for m in await postgres_store.messages.of_turn(expired, taken.id)] == ["old"]
    # The claims now name the events that took them: a repeat of either is refused.
    again = await asyncio.gather(
        postgres_store.inbox.record(fresh, "r6", "message", {}, user_text="new", repeat=("fresh", 60.0)),
        postgres_store.inbox.record(expired, "r7", "message", {}, user_text="old", repeat=("expired", 60.0)),
    )
    assert [(entry.duplicate, entry.id) for entry in again] == [(True, new.id), (True, taken.id)]


async def test_a_repeated_dedup_key_has_the_batch_recorded_event_by_event(turn_statements, postgres_store) -> None:
    sessions = await _sessions(postgres_store, 2)
    first = await postgres_store.inbox.record(sessions[0], "seen", "message", {}, user_text="one")
    turn_statements.clear()
    other, again = await asyncio.gather(
        postgres_store.inbox.record(sessions[1], "new", "message", {}, user_text="two"),
        postgres_store.inbox.record(sessions[0], "seen", "message", {}, user_text="one again"),
    )
    assert await _batched(turn_statements) == 1  # refused, then each alone
    assert again.duplicate and again.id == first.id and not other.duplicate
    assert [m.text for m in await postgres_store.messages.of_turn(sessions[1], other.id)] == ["two"]
    assert [m.text for m in await postgres_store.messages.of_turn(sessions[0], first.id)] == ["one"]


async def test_two_events_of_one_session_are_recorded_in_order_in_separate_statements(
    turn_statements, postgres_store
) -> None:
    """The second's context must include the first: it starts the next batch."""
    mine, other = await _sessions(postgres_store, 2)
    turn_statements.clear()
    one, two, three = await asyncio.gather(
        postgres_store.inbox.record(mine, "e1", "message", {}, user_text="first", context=(LATER, 50)),
        postgres_store.inbox.record(mine, "e2", "message", {}, user_text="second", context=(LATER, 50)),
        postgres_store.inbox.record(other, "e3", "message", {}, user_text="third"),
    )
    assert await _batched(turn_statements) == 1 and len(turn_statements) == 2  # e1 alone, then e2 with e3
    assert one.id < two.id and not three.duplicate
    assert two.context is not None and two.context.history is not None
    assert [m.text for m in two.context.history()] == ["first"]


async def test_the_workers_are_told_of_each_recorded_event_of_a_batch_once(
    postgres_url, turn_statements, postgres_store
) -> None:
    sessions = await _sessions(postgres_store, 3)
    await postgres_store.inbox.record(sessions[0], "held", "message", {}, user_text="x", repeat=("held", 60.0))
    told: asyncio.Queue[str] = asyncio.Queue()
    listener = await asyncpg.connect(_dsn(postgres_url))
    try:
        await listener.add_listener("chatgate_work", lambda *args: told.put_nowait(args[-1]))
        turn_statements.clear()
        entries = await asyncio.gather(
            postgres_store.inbox.record(sessions[0], "n0", "message", {}, user_text="x", repeat=("held", 60.0),
                               notify="chatgate_work"),
            *(postgres_store.inbox.record(s, f"n{i}", "message", {}, user_text="x", notify="chatgate_work")
              for i, s in enumerate(sessions[1:], 1)),
        )
        assert await _batched(turn_statements) == 1 and entries[0].duplicate
        received = [await asyncio.wait_for(told.get(), 5) for _ in sessions[1:]]
        await asyncio.sleep(0.05)
        assert sorted(received) == sessions[1:] and told.empty()
    finally:
        await listener.close()


async def test_a_batch_locks_its_sessions_in_session_id_order(postgres_url, postgres_store) -> None:
    """Its events asked for in the other order, a batch waiting for the first session's row holds
    nothing of the second's: two batches (in two web processes) never wait on each other in a
    circle."""
    dsn = _dsn(postgres_url)
    first, second = await _sessions(postgres_store, 2)
    holder = await holding_a_row(dsn, "sessions", "id", first)
    try:
        recordings = asyncio.gather(
            postgres_store.inbox.record(second, "b", "message", {}, user_text="b"),
            postgres_store.inbox.record(first, "a", "message", {}, user_text="a"),
        )
        await blocked_on_a_lock(dsn)
        assert await lockable_now(dsn, "sessions", "id", second)
    finally:
        await holder.execute("ROLLBACK")
        await holder.close()
    assert [r.duplicate for r in await recordings] == [False, False]


async def test_the_lock_a_batch_takes_on_a_session_does_not_hold_up_its_replies(postgres_url, postgres_store) -> None:
    """``FOR NO KEY UPDATE``, not ``FOR UPDATE``: a reply's foreign key check on the session
    (``FOR KEY SHARE``) goes through while a recording batch holds the row, so a batch of
    replies locking lease rows never waits on a recording batch that waits on it."""
    dsn = _dsn(postgres_url)
    [session_id] = await _sessions(postgres_store, 1)
    entry = await postgres_store.inbox.record(session_id, "before", "message", {}, user_text="hi")
    holder = await holding_a_row(dsn, "sessions", "id", session_id, lock="FOR NO KEY UPDATE")
    try:
        await asyncio.wait_for(postgres_store.messages.add(session_id, "assistant", "reply", inbound_id=entry.id), 5)
    finally:
        await holder.execute("ROLLBACK")
        await holder.close()
    assert [m.text for m in await postgres_store.messages.of_turn(session_id, entry.id)] == ["hi", "reply"]


async def test_an_event_whose_caller_left_before_its_batch_went_is_not_recorded(postgres_url, postgres_store) -> None:
    dsn = _dsn(postgres_url)
    busy, left = await _sessions(postgres_store, 2)
    holder = await holding_a_row(dsn, "sessions", "id", busy)
    try:
        in_flight = asyncio.ensure_future(postgres_store.inbox.record(busy, "first", "message", {}, user_text="waits"))
        await blocked_on_a_lock(dsn)  # its batch is on its way: the next waits for it
        queued = asyncio.ensure_future(postgres_store.inbox.record(left, "gone", "message", {}, user_text="never"))
        await asyncio.sleep(0.05)
        queued.cancel()
        await asyncio.sleep(0)
    finally:
        await holder.execute("ROLLBACK")
        await holder.close()
    assert not (await in_flight).duplicate
    with pytest.raises(asyncio.CancelledError):
        await queued
    await postgres_store.postgres_turns.recordings.drain()  # type: ignore[union-attr]
    assert [row.session_id for row in await postgres_store.inbox.unfinished()] == [busy]
