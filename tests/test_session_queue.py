"""The worker queue's per-turn statements (gateway/store/queue.py) on both of their paths: the
store's engine, and the per-turn connections on asyncpg that ``chatgate worker`` uses. Claim,
read a session's events and release answer and store the same either way."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from gateway.store import Store
from gateway.store.queue import INBOX_CHANNEL, SessionQueue
from gateway.types import SessionChannel, UserInfo
from tests.support import blocked_on_a_lock, holding_a_row

pytestmark = pytest.mark.postgres
TTL = 30.0


@pytest.fixture(params=["engine", "driver"])
def queue(request, postgres_store: Store) -> SessionQueue:
    if request.param == "engine":
        return SessionQueue(postgres_store.engine)
    assert postgres_store.postgres_turns is not None
    return SessionQueue(postgres_store.engine, postgres_store.postgres_turns.connections)


async def _session(store: Store) -> str:
    from gateway.inbound import PlatformUser

    user = await store.users.resolve(PlatformUser("api", "someone"))
    return (await store.sessions.create(SessionChannel("api"), UserInfo(user.id, None, None))).id


async def _lease(store: Store, session_id: str) -> tuple[Any, ...]:
    async with store.engine.connect() as conn:
        from sqlalchemy import text

        row = (await conn.execute(text(
            "SELECT holder, token, expires_at > now(), previous_holder FROM session_leases WHERE session_id = :s"
        ), {"s": session_id})).one()
    return tuple(row)


async def test_a_claim_is_taken_refused_while_held_and_taken_over_once_expired(queue, postgres_store) -> None:
    session_id = await _session(postgres_store)
    first = await queue.claim(session_id, "worker-a", 0.2)
    assert first is not None and (first.token, first.previous_holder, first.taken_over) == (1, "", False)
    assert await queue.claim(session_id, "worker-b", TTL) is None  # held
    assert await _lease(postgres_store, session_id) == ("worker-a", 1, True, "")
    await asyncio.sleep(0.3)
    taken = await queue.claim(session_id, "worker-b", TTL)
    assert taken is not None and (taken.token, taken.previous_holder, taken.taken_over) == (2, "worker-a", True)
    await queue.release(session_id, taken.token)
    assert await _lease(postgres_store, session_id) == ("", 2, False, "worker-a")
    again = await queue.claim(session_id, "worker-a", TTL)  # released: a hand-over, not a takeover
    assert again is not None and (again.token, again.previous_holder, again.taken_over) == (3, "", False)


async def test_a_release_under_an_old_token_changes_nothing(queue, postgres_store) -> None:
    session_id = await _session(postgres_store)
    claim = await queue.claim(session_id, "worker-a", TTL)
    assert claim is not None
    await queue.release(session_id, claim.token - 1)
    assert await _lease(postgres_store, session_id) == ("worker-a", 1, True, "")
    await queue.release(session_id, claim.token, interrupted=True)  # the holder stays named
    assert await _lease(postgres_store, session_id) == ("worker-a", 1, False, "")
    taken = await queue.claim(session_id, "worker-b", TTL)
    assert taken is not None and taken.taken_over  # recovered as after a crash


async def test_a_release_that_wakes_tells_the_workers_on_commit(queue, postgres_store, postgres_url) -> None:
    session_id = await _session(postgres_store)
    claim = await queue.claim(session_id, "worker-a", TTL)
    assert claim is not None
    told: asyncio.Queue[str] = asyncio.Queue()
    listener = await asyncpg.connect("postgresql://" + postgres_url.split("://", 1)[1])
    try:
        await listener.add_listener(INBOX_CHANNEL, lambda *args: told.put_nowait(args[-1]))
        await queue.release(session_id, claim.token)
        await queue.release(session_id, claim.token, wake=True)
        assert await asyncio.wait_for(told.get(), 5) == session_id
        await asyncio.sleep(0.05)
        assert told.empty()  # the release without wake told nobody
    finally:
        await listener.close()


async def test_a_sessions_unfinished_events_in_order_with_their_user_messages(queue, postgres_store) -> None:
    session_id = await _session(postgres_store)
    other = await _session(postgres_store)
    payload = {"kind": "message", "text": "é ✓", "nested": [1, None, {"a": True}]}
    first = await postgres_store.inbox.record(session_id, "k1", "message", payload, user_text="one")
    action = await postgres_store.inbox.record(session_id, "k2", "action", {"name": "go"})
    done = await postgres_store.inbox.record(session_id, "k3", "message", {}, user_text="three")
    await postgres_store.inbox.set_status(done.id, "done")
    await postgres_store.inbox.record(other, "k4", "message", {}, user_text="elsewhere")
    events = await queue.events_of(session_id)
    assert [(e.id, e.kind, e.payload, e.message_id) for e in events] == [
        (first.id, "message", payload, first.message_id), (action.id, "action", {"name": "go"}, None),
    ]
    assert all(e.session_id == session_id and e.created_at.tzinfo is not None for e in events)
    assert await queue.events_of("01NOSUCHSESSION") == []


async def test_a_claim_with_its_events_in_one_round_trip(queue, postgres_store) -> None:
    """What a worker does on a notification: the claim, and the session's unfinished events with
    it; nothing while another worker holds the lease; no event when nothing is unfinished."""
    session_id = await _session(postgres_store)
    idle = await _session(postgres_store)
    first = await postgres_store.inbox.record(session_id, "k1", "message", {"n": 1}, user_text="one")
    action = await postgres_store.inbox.record(session_id, "k2", "action", {"name": "go"})
    claimed = await queue.claim_with_events(session_id, "worker-a", TTL)
    assert claimed is not None
    claim, events, context = claimed
    assert context is None  # not asked for
    assert (claim.token, claim.previous_holder, claim.taken_over) == (1, "", False)
    assert [(e.id, e.kind, e.payload, e.message_id) for e in events] == [
        (first.id, "message", {"n": 1}, first.message_id), (action.id, "action", {"name": "go"}, None),
    ]
    assert events == await queue.events_of(session_id)
    assert await queue.claim_with_events(session_id, "worker-b", TTL) is None  # held
    claimed_idle = await queue.claim_with_events(idle, "worker-b", TTL)
    assert claimed_idle is not None and claimed_idle[1] == [] and claimed_idle[0].token == 1


async def test_a_claim_and_a_read_of_events_read_the_next_turns_context_in_one_round_trip(queue, postgres_store):
    """With ``context``, the claim also reads what the session's next turn reads (its session,
    its user, its history before the cut-off, newest rows up to the limit), as the turn's own
    read would; its events are unchanged, in order. The store's engine path reads none."""
    from gateway.ids import new_id

    session_id = await _session(postgres_store)
    await postgres_store.sessions.save_data(session_id, {"step": 3}, [])
    sent = []
    for n in range(4):  # history: four exchanges done
        entry = await postgres_store.inbox.record(session_id, f"old{n}", "message", {}, user_text=f"q{n}")
        await postgres_store.messages.add(session_id, "assistant", f"a{n}", inbound_id=entry.id)
        await postgres_store.inbox.set_status(entry.id, "done")
        sent.append(entry)
    cut_off = new_id()
    first = await postgres_store.inbox.record(session_id, "k1", "message", {"n": 1}, user_text="one")
    second = await postgres_store.inbox.record(session_id, "k2", "message", {"n": 2}, user_text="two")
    claimed = await queue.claim_with_events(session_id, "worker-a", TTL, context=(cut_off, 5))
    assert claimed is not None
    claim, events, context = claimed
    assert claim.token == 1
    assert [e.id for e in events] == [first.id, second.id] and events == await queue.events_of(session_id)
    if queue._connections is None:  # the engine's path reads no context
        assert context is None and (await queue.events_and_context(session_id, (cut_off, 5)))[1] is None
        return
    expected = await postgres_store.sessions.turn_context_and_history(session_id, cut_off, 5)
    assert expected is not None and context is not None
    assert context.session == expected[0] and context.session.data == {"step": 3}
    assert context.user == expected[1] and context.user is not None
    assert context.history_before == cut_off
    assert context.history is not None
    history = context.history()
    assert history == expected[2]()
    assert [m.text for m in history] == ["a1", "q2", "a2", "q3", "a3"]  # the newest five, oldest first

    # Told of an event while holding the session: its events and the context, as one read.
    events_again, context_again = await queue.events_and_context(session_id, (cut_off, 5))
    assert events_again == events
    if context_again is not None:  # the driver's path
        assert context_again.session == context.session and context_again.user == context.user
        assert context_again.history is not None and context_again.history() == history
    assert (await queue.events_and_context(session_id, None))[1] is None  # not asked for

    await queue.release(session_id, claim.token)
    claimed = await queue.claim_with_events(session_id, "worker-a", TTL, context=(cut_off, 0))
    assert claimed is not None and claimed[2] is not None
    assert claimed[2].history is None and claimed[2].session == expected[0]  # no rows asked: read on first use
    await queue.release(session_id, claimed[0].token)
    await postgres_store.sessions.delete(session_id)
    gone = await queue.claim_with_events(session_id, "worker-a", TTL, context=(new_id(), 5))
    assert gone is not None and gone[1:] == ([], None)  # no session, no context: nothing to run
    assert await queue.events_and_context(session_id, (new_id(), 5)) == ([], None)


async def test_a_release_unless_pending_keeps_the_lease_for_an_event_not_routed(queue, postgres_store) -> None:
    """A worker's lane ran dry: the lease goes back in the statement that looks for events
    recorded meanwhile; one that this worker did not route keeps the lease and is returned."""
    session_id = await _session(postgres_store)
    routed = await postgres_store.inbox.record(session_id, "k1", "message", {}, user_text="one")
    claim = await queue.claim(session_id, "worker-a", TTL)
    assert claim is not None
    late = await postgres_store.inbox.record(session_id, "k2", "message", {}, user_text="two")
    pending = await queue.release_unless_pending(session_id, claim.token, {routed.id})
    assert [(e.id, e.message_id) for e in pending] == [(late.id, late.message_id)]
    assert await _lease(postgres_store, session_id) == ("worker-a", 1, True, "")  # kept
    await postgres_store.inbox.set_status(late.id, "done")
    assert await queue.release_unless_pending(session_id, claim.token - 1, {routed.id}) == []  # not its token
    assert await _lease(postgres_store, session_id) == ("worker-a", 1, True, "")
    assert await queue.release_unless_pending(session_id, claim.token, {routed.id}) == []
    assert await _lease(postgres_store, session_id) == ("", 1, False, "")  # given back


async def test_a_claim_that_waited_for_a_release_reads_what_the_holder_wrote_before_it(
    queue, postgres_store, postgres_url
) -> None:
    """A claim statement takes its snapshot as it starts; a lease released after that is still
    claimed by it (``ON CONFLICT DO UPDATE`` acts on the newest row, seen or not). The events and
    context it reads must then still include what the holder wrote before releasing: here the
    holder finishes its event and saves the session's data while the claim waits, then releases.
    Read from the claim's snapshot, the finished event would run a second time on stale data (a
    rolling restart's transcript once showed a reply twice)."""
    from gateway.ids import new_id

    session_id = await _session(postgres_store)
    holder = await queue.claim(session_id, "worker-a", TTL)
    assert holder is not None
    event = await postgres_store.inbox.record(session_id, "k1", "message", {}, user_text="one")
    dsn = "postgresql://" + postgres_url.split("://", 1)[1]
    # The holder's release, held open: the claim below starts, takes its snapshot and waits.
    releasing = await holding_a_row(dsn, "session_leases", "session_id", session_id)
    try:
        claiming = asyncio.create_task(queue.claim_with_events(session_id, "worker-b", TTL, context=(new_id(), 5)))
        await blocked_on_a_lock(dsn)
        # Meanwhile the holder's turn ends (its data and its event's status), then it lets go.
        await postgres_store.sessions.save_data(session_id, {"count": 1}, [])
        await postgres_store.inbox.set_status(event.id, "done")
        await releasing.execute(
            "UPDATE session_leases SET holder = '', expires_at = now() - interval '1 second'"
            " WHERE session_id = $1", session_id,
        )
        await releasing.execute("COMMIT")
        claimed = await asyncio.wait_for(claiming, 10)
    finally:
        await releasing.close()
    assert claimed is not None, "the release let the claim in"
    claim, events, context = claimed
    assert (claim.token, claim.taken_over) == (2, False)
    assert events == [], "the event the holder finished runs again"
    on_driver = queue._connections is not None  # the engine's path reads no context, and reads apart anyway
    assert (None if context is None else context.session.data) == ({"count": 1} if on_driver else None)
    assert claim.read_again == on_driver

    # A lease given back before the claim began is claimed with its events in one statement.
    await queue.release(session_id, claim.token)
    later = await postgres_store.inbox.record(session_id, "k2", "message", {}, user_text="two")
    claimed = await queue.claim_with_events(session_id, "worker-a", TTL, context=(new_id(), 5))
    assert claimed is not None and not claimed[0].read_again
    assert [e.id for e in claimed[1]] == [later.id]
    # A takeover's events are read again whatever the snapshot saw: an expired holder may have
    # written after it.
    await postgres_store.inbox.set_status(later.id, "done")
    await queue.release(session_id, claimed[0].token, interrupted=True)
    taken = await queue.claim_with_events(session_id, "worker-b", TTL)
    assert taken is not None and taken[0].taken_over and taken[1] == []
    assert taken[0].read_again == on_driver
