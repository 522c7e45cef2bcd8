"""The per-turn statements on asyncpg directly (gateway/store/postgres_turns.py) against the ORM
path of the same methods, on one PostgreSQL database: each reads what the other wrote as the
same records, the columns hold the same text, and the recording of an event behaves the same."""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from sqlalchemy import text, update

from gateway.store import Store
from gateway.store.inbox import REPEAT_CLAIMS
from gateway.store.postgres_turns import listen_statements
from gateway.store.statements import INBOX
from gateway.store.tables import utcnow
from gateway.types import SessionChannel, UnknownSession, UserInfo

pytestmark = pytest.mark.postgres


async def _open(url: str, *, raw: bool) -> Store:
    store = Store(url)
    await store.open()
    if not raw:  # the same methods on their ORM path (what SQLite and every other query use)
        assert store.postgres_turns is not None
        await store.postgres_turns.close()
        store.postgres_turns = None
    return store


@pytest.fixture
async def stores(postgres_url) -> AsyncIterator[tuple[Store, Store]]:
    """``(raw, orm)``: two stores on one database, the per-turn statements on asyncpg in the first."""
    raw, orm = await _open(postgres_url, raw=True), await _open(postgres_url, raw=False)
    try:
        yield raw, orm
    finally:
        await raw.close()
        await orm.close()


@pytest.fixture(params=["raw", "orm", "sqlite"])
def path(request) -> tuple[str, bool]:
    """A database and whether its per-turn statements run on asyncpg: PostgreSQL either way, and
    SQLite (whose statements are the ORM path's)."""
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_url"), False
    return request.getfixturevalue("postgres_url"), request.param == "raw"


@pytest.fixture
async def store(path) -> AsyncIterator[Store]:
    """One store on ``path``: the behaviour tests run on each."""
    url, raw = path
    opened = await _open(url, raw=raw) if url.startswith("postgresql") else Store(url)
    if url.startswith("sqlite"):
        await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


async def _session(store: Store, **values: Any) -> str:
    user = await store.users.resolve(_platform_user())
    record = await store.sessions.create(SessionChannel("api", "chat-1", "thread-1", "team-1"),
                                         UserInfo(user.id, None, None), **values)
    return record.id


def _platform_user() -> Any:
    from gateway.inbound import PlatformUser

    return PlatformUser("api", "someone", email="someone@example.com", org_id="org-1")


MESSAGES: list[dict[str, Any]] = [
    {"role": "assistant", "text": "plain"},
    {"role": "assistant", "text": "ünïcode ✓ \"quoted\" \\ and\nlines", "platform_refs": ["ref-1", "ref-2"]},
    {"role": "block", "text": "", "block": {"id": "b1", "type": "card", "payload": {"n": 1, "x": [None, 1.5]}}},
    {"role": "user", "text": "with a file",
     "attachments": [{"name": "a.pdf", "content_type": "application/pdf", "url": "u", "size": 3}]},
    {"role": "assistant", "text": "", "status": "streaming"},
]


async def _an_hour_ago(store: Store) -> None:
    """Every repeat claim expired, every event last changed, an hour ago."""
    then = utcnow() - timedelta(hours=1)
    async with store.engine.begin() as conn:
        await conn.execute(update(REPEAT_CLAIMS).values(expires_at=then))
        await conn.execute(update(INBOX).values(updated_at=then))


async def _add_all(store: Store, session_id: str, inbound_id: str) -> list[Any]:
    return [await store.messages.add(session_id, inbound_id=inbound_id, **values) for values in MESSAGES]


async def _columns(store: Store, ids: list[str]) -> list[tuple[Any, ...]]:
    """What the columns hold, as PostgreSQL's text: the encodings, not the decoded values."""
    async with store.engine.connect() as conn:
        rows = (await conn.execute(text(
            "SELECT block IS NULL, block::text, attachments::text, platform_refs::text, text, status, block_id,"
            " created_at = updated_at FROM messages WHERE id = ANY(:ids) ORDER BY id"
        ), {"ids": ids})).all()
    return [tuple(row) for row in rows]


async def test_each_path_reads_what_the_other_wrote_as_the_same_records(stores) -> None:
    raw, orm = stores
    session_id = await _session(orm, title="t", metadata={"k": ["v", 1]})
    assert raw.postgres_turns is not None and orm.postgres_turns is None
    by_orm = await _add_all(orm, session_id, "turn-orm")
    by_raw = await _add_all(raw, session_id, "turn-raw")

    for inbound in ("turn-orm", "turn-raw"):  # of_turn, both ways
        assert await raw.messages.of_turn(session_id, inbound) == await orm.messages.of_turn(session_id, inbound)
    assert await raw.messages.of_turn(session_id, "turn-orm") == by_orm  # what add returned
    assert await orm.messages.of_turn(session_id, "turn-raw") == by_raw
    last = by_raw[-1].id + "Z"
    assert await raw.messages.history(session_id, last, 50) == await orm.messages.history(session_id, last, 50)
    assert [m.id for m in await raw.messages.history(session_id, last, 3)] == [m.id for m in by_raw[-3:]]
    # ... and the columns hold the same text whichever path wrote them (a None block included).
    assert await _columns(orm, [m.id for m in by_orm]) == await _columns(orm, [m.id for m in by_raw])

    # The session reads: the same record, the same user.
    assert await raw.sessions.get(session_id) == await orm.sessions.get(session_id)
    assert await raw.sessions.turn_context(session_id) == await orm.sessions.turn_context(session_id)
    context = await raw.sessions.turn_context(session_id)
    assert context is not None and context[0].metadata == {"k": ["v", 1]} and context[1] is not None
    assert context[1].email == "someone@example.com"
    assert await raw.sessions.get("01NOSUCHSESSION") is None
    assert await raw.sessions.turn_context("01NOSUCHSESSION") is None


async def test_the_recorded_event_reads_the_same_whichever_path_recorded_it(stores) -> None:
    raw, orm = stores
    session_id = await _session(orm)
    payload = {"kind": "message", "text": "é", "nested": {"list": [1, None, True]}}
    attachments = [{"name": "a.txt", "url": "u", "size": 1}]
    entries = [
        await s.inbox.record(session_id, f"key-{name}", "message", payload, user_text="hi ✓", attachments=attachments)
        for name, s in (("orm", orm), ("raw", raw))
    ]
    for entry in entries:
        assert not entry.duplicate and entry.message_id is not None
        assert await raw.messages.of_turn(session_id, entry.id) == await orm.messages.of_turn(session_id, entry.id)
        assert await raw.inbox.get(entry.id) is not None
    async with orm.engine.connect() as conn:
        rows = (await conn.execute(text(
            "SELECT i.payload::text, i.status, i.attempts, i.error IS NULL, i.created_at = i.updated_at,"
            " m.block IS NULL, m.block::text, m.attachments::text, m.platform_refs::text, m.role, m.status,"
            " m.created_at = i.created_at FROM inbox i JOIN messages m ON m.inbound_id = i.id ORDER BY i.id"
        ))).all()
    assert len(rows) == 2 and tuple(rows[0]) == tuple(rows[1])
    # the status as set_status writes it, read back by the ORM
    await raw.inbox.set_status(entries[1].id, "failed", "boom")
    recorded = await orm.inbox.get(entries[1].id)
    assert recorded is not None and (recorded.status, recorded.error) == ("failed", "boom")


async def test_an_unknown_session_or_a_repeated_key_records_nothing(store) -> None:
    session_id = await _session(store)
    with pytest.raises(UnknownSession):
        await store.inbox.record("01NOSUCHSESSION", "k0", "message", {}, user_text="lost")
    first = await store.inbox.record(session_id, "k1", "message", {}, user_text="one")
    again = await store.inbox.record(session_id, "k1", "message", {}, user_text="one again")
    assert again.duplicate and again.id == first.id and again.message_id is None
    assert [m.text for m in await store.messages.of_turn(session_id, first.id)] == ["one"]
    assert [row.id for row in await store.inbox.unfinished()] == [first.id]


async def test_a_live_repeat_claim_stores_nothing_and_a_finished_one_is_taken_over(store) -> None:
    session_id = await _session(store)
    first = await store.inbox.record(session_id, "r1", "message", {}, user_text="same", repeat=("digest", 60.0))
    before = await store.sessions.get(session_id)
    repeated = await store.inbox.record(session_id, "r2", "message", {}, user_text="same", repeat=("digest", 60.0))
    assert repeated.duplicate and repeated.id == first.id
    assert [row.id for row in await store.inbox.unfinished()] == [first.id]
    assert await store.sessions.get(session_id) == before  # not even touched
    # Finished, and its window (counted from the claim and from the event's end) passed: taken over.
    await store.inbox.set_status(first.id, "done")
    await _an_hour_ago(store)
    taken = await store.inbox.record(session_id, "r3", "message", {}, user_text="same", repeat=("digest", 60.0))
    assert not taken.duplicate and taken.id != first.id
    again = await store.inbox.record(session_id, "r4", "message", {}, user_text="same", repeat=("digest", 60.0))
    assert again.duplicate and again.id == taken.id


async def test_the_workers_are_told_of_a_recorded_event_only(store, path) -> None:
    postgres_url = path[0]
    if not postgres_url.startswith("postgresql"):
        pytest.skip("LISTEN/NOTIFY: PostgreSQL only")
    session_id = await _session(store)
    told: asyncio.Queue[str] = asyncio.Queue()
    listener = await asyncpg.connect("postgresql://" + postgres_url.split("://", 1)[1])
    try:
        await listener.add_listener("chatgate_work", lambda *args: told.put_nowait(args[-1]))
        entry = await store.inbox.record(session_id, "n1", "message", {}, user_text="hi", notify="chatgate_work")
        assert await asyncio.wait_for(told.get(), 5) == session_id
        duplicate = await store.inbox.record(session_id, "n1", "message", {}, user_text="hi", notify="chatgate_work")
        assert duplicate.duplicate and duplicate.id == entry.id
        await store.inbox.record(session_id, "n2", "action", {}, notify="chatgate_work")  # no message: told too
        assert await asyncio.wait_for(told.get(), 5) == session_id
        assert told.empty()
    finally:
        await listener.close()


async def test_every_raw_statement_is_observed(postgres_url) -> None:
    seen: list[str] = []
    stop = listen_statements(seen.append)
    try:
        store = await _open(postgres_url, raw=True)
        try:
            session_id = await _session(store)
            entry = await store.inbox.record(session_id, "s1", "message", {}, user_text="hi")
            await store.messages.add(session_id, "assistant", "hello", inbound_id=entry.id)
            await store.inbox.set_status(entry.id, "done")
            await asyncio.sleep(0)  # asyncpg calls its query loggers soon after each query
        finally:
            await store.close()
    finally:
        stop()
    # the record (one statement), then the reply and the status, each in a batch of its own here
    changed = [re.findall(r"\b(?:INSERT INTO|UPDATE) (\w+)", statement) for statement in seen]

    assert changed == [["sessions", "inbox", "messages"], ["messages"], ["inbox"]], seen


async def test_a_finished_claim_is_taken_over_while_another_contents_claim_is_live(store) -> None:
    """Whether a claim is live is decided by the claim's own event, not by any other claim's."""
    session_id = await _session(store)
    first = await store.inbox.record(session_id, "c1", "message", {}, user_text="same", repeat=("digest", 60.0))
    await store.inbox.set_status(first.id, "done")
    await _an_hour_ago(store)
    other = await store.inbox.record(session_id, "c2", "message", {}, user_text="other", repeat=("other", 60.0))
    assert not other.duplicate  # live: pending
    taken = await store.inbox.record(session_id, "c3", "message", {}, user_text="same", repeat=("digest", 60.0))
    assert not taken.duplicate and taken.id != first.id


async def test_the_session_user_and_history_in_one_statement_read_as_the_three_reads_do(stores) -> None:
    """``turn_context_and_history`` on asyncpg (one statement) against ``turn_context`` and
    ``history`` on the ORM path: the same session, user and messages, the cut-off and the limit
    respected; a session with no messages, one whose user is gone and one that does not exist."""
    raw, orm = stores
    assert raw.postgres_turns is not None
    session_id = await _session(orm, title="t", metadata={"k": ["v", 1]})
    context = await raw.sessions.turn_context_and_history(session_id, "7ZZZZZZZZZZZZZZZZZZZZZZZZZ", 50)
    assert context is not None and context[2] is not None  # no messages yet
    assert (context[0], context[1]) == await orm.sessions.turn_context(session_id) and context[2]() == []

    written = await _add_all(orm, session_id, "turn-1") + await _add_all(orm, session_id, "turn-2")
    cut_off = written[7].id  # messages 0..6 are before it
    for limit in (1, 3, 50):
        context = await raw.sessions.turn_context_and_history(session_id, cut_off, limit)
        assert context is not None and context[2] is not None
        assert (context[0], context[1]) == await orm.sessions.turn_context(session_id)
        assert context[2]() == await orm.messages.history(session_id, cut_off, limit) == written[:7][-limit:]

    async with orm.engine.begin() as conn:  # the session's user is gone
        await conn.execute(text("UPDATE sessions SET user_id = 'nobody' WHERE id = :id"), {"id": session_id})
    context = await raw.sessions.turn_context_and_history(session_id, cut_off, 3)
    assert context is not None and context[1] is None and len(context[2]()) == 3  # type: ignore[misc]
    assert await raw.sessions.turn_context_and_history("01NOSUCHSESSION", cut_off, 3) is None
    # Where the history is read on first use (SQLite; the ORM path), no rows come with the session.
    context = await orm.sessions.turn_context_and_history(session_id, cut_off, 3)
    assert context is not None and context[2] is None


async def test_the_context_read_with_the_event_is_what_the_turn_would_read(stores) -> None:
    """``record(context=...)``: the session, its user and its history before the event, as
    ``turn_context_and_history`` reads them, in the statement that records the event (the new
    user message left out, the session's ``updated_at`` the event's); nothing for a duplicate, and
    an unknown session still refused."""
    raw, orm = stores
    session_id = await _session(orm, title="t", metadata={"k": ["v", 1]})
    written = await _add_all(orm, session_id, "turn-1")
    before = "7ZZZZZZZZZZZZZZZZZZZZZZZZZ"
    expected = await raw.sessions.turn_context_and_history(session_id, before, 3)
    assert expected is not None and expected[2] is not None
    entry = await raw.inbox.record(session_id, "c1", "message", {}, user_text="new", context=(before, 3))
    assert entry.context is not None and entry.context.history is not None
    assert entry.context.history_before == before
    assert entry.context.history() == expected[2]() == written[-3:]  # not the message just stored
    assert entry.context.user == expected[1]
    stored = await orm.sessions.get(session_id)
    assert stored is not None and entry.context.session == stored  # updated_at included
    assert stored.updated_at > expected[0].updated_at

    duplicate = await raw.inbox.record(session_id, "c1", "message", {}, user_text="new", context=(before, 3))
    assert duplicate.duplicate and duplicate.context is None
    repeated = await raw.inbox.record(session_id, "c2", "message", {}, user_text="r", repeat=("same", 60),
                                      context=(before, 50))
    assert repeated.context is not None and len(repeated.context.history()) == len(written) + 1
    with pytest.raises(UnknownSession):
        await raw.inbox.record("01NOSUCHSESSION", "c3", "message", {}, user_text="x", context=(before, 3))
    # The ORM path (and SQLite) reads the context in the turn: nothing comes back with the event.
    assert (await orm.inbox.record(session_id, "c4", "message", {}, user_text="o", context=(before, 3))).context is None


# -- the plans PostgreSQL keeps for the per-turn statements --------------------------------------


def _every_turn_statement() -> list[tuple[str, str]]:
    """``(label, statement)`` for every shape of the per-turn statements: the group commit's
    batches, the recordings, the single statements, the fence check."""
    from gateway.store import postgres_turns, queue
    from gateway.store.fence import FENCE_CHECK_POSTGRES
    from gateway.store.postgres_group_commit import batch_statement
    from gateway.store.postgres_recording import RECORDS_STATEMENT

    shapes = [
        (f"batch messages={m} statuses={s} fenced={f}", batch_statement(messages=m, statuses=s, fenced=f))
        for m, s, f in itertools.product((True, False), repeat=3) if m or s
    ]
    shapes += [
        (f"record repeat={r} message={m} notify={n} context={c}",
         postgres_turns.record_statement(repeat=r, message=m, notify=n, context=c))
        for r, m, n, c in itertools.product((True, False), repeat=4) if not (n and c)
    ]
    shapes += [
        (name, getattr(postgres_turns, name)) for name in (
            "INSERT_MESSAGE", "INBOX_OF_KEY", "REPEAT_HOLDER", "SET_INBOX_STATUS", "SELECT_SESSION",
            "SELECT_TURN_CONTEXT", "SELECT_TURN_CONTEXT_AND_HISTORY", "SELECT_TURN", "SELECT_HISTORY",
        )
    ]
    shapes.append(("RECORDS_STATEMENT", RECORDS_STATEMENT))  # the recordings of several events at once
    shapes += [(name, getattr(queue, name)) for name in (  # a worker's statements for every turn
        "CLAIM_ON_DRIVER", "RELEASE_ON_DRIVER", "RELEASE_AND_WAKE_ON_DRIVER", "SESSION_EVENTS_ON_DRIVER",
        "CLAIM_WITH_EVENTS_ON_DRIVER", "CLAIM_WITH_EVENTS_AND_CONTEXT_ON_DRIVER",
        "SESSION_EVENTS_AND_CONTEXT_ON_DRIVER", "RELEASE_UNLESS_PENDING_ON_DRIVER",
    )]
    return [*shapes, ("FENCE_CHECK_POSTGRES", FENCE_CHECK_POSTGRES)]


async def _kept_plan(conn: asyncpg.Connection, statement: str) -> list[str]:
    """The plan PostgreSQL keeps for ``statement`` prepared on ``conn``: the generic one, costed
    with the tables as they are now (asyncpg prepares once; PostgreSQL switches to the generic
    plan after five runs and keeps it until the table is analyzed)."""
    count = max((int(number) for number in re.findall(r"\$(\d+)", statement)), default=0)
    await conn.execute("SET plan_cache_mode = force_generic_plan")
    await conn.execute(f"PREPARE kept AS {statement}")
    try:
        rows = await conn.fetch(f"EXPLAIN EXECUTE kept({', '.join(['NULL'] * count)})")
    finally:
        await conn.execute("DEALLOCATE kept")
    return [row[0] for row in rows]


def _scans(plan: list[str]) -> list[str]:
    return [line.strip() for line in plan if re.search(r"Seq Scan on|Hash (Join|Semi Join|Anti Join)", line)]


async def test_the_plans_kept_for_the_turn_statements_look_rows_up_by_key_on_a_new_database(postgres_url):
    """A new database's tables are small: left to its costs, PostgreSQL plans the batch's status
    update as a hash join over a sequential scan of ``inbox``, and keeps that plan on the
    connection while ``inbox`` grows (``TURN_CONNECTION_SETTINGS``). On the connections the
    turns run on, every statement's kept plan finds its rows through an index."""
    from gateway.store.postgres_turns import connect_for_turns

    store = await _open(postgres_url, raw=True)  # the schema, empty
    dsn = "postgresql://" + postgres_url.split("://", 1)[1]
    plain, turns = await asyncpg.connect(dsn), await connect_for_turns(dsn)
    try:
        statements = _every_turn_statement()
        # What happens without the settings (so this test can tell): the batches' status update.
        status_batch = dict(statements)["batch messages=False statuses=True fenced=False"]
        assert "Seq Scan on inbox" in " ".join(await _kept_plan(plain, status_batch))
        scanning = {label: _scans(plan) for label, statement in statements
                    if _scans(plan := await _kept_plan(turns, statement))}
        assert scanning == {}
        assert await turns.fetchval("SHOW jit") == "off"
    finally:
        await plain.close()
        await turns.close()
        await store.close()


async def test_a_setting_the_server_refuses_leaves_the_turns_connection_working_and_is_warned_of_once(
    postgres_url, monkeypatch, caplog
):
    """The settings are applied by ``SET`` after connecting (a pooler refuses unknown startup
    parameters): one the server refuses is skipped with one warning, the others still apply."""
    from gateway.store import postgres_turns

    monkeypatch.setattr(postgres_turns, "TURN_CONNECTION_SETTINGS", {"no_such_setting": "on", "jit": "off"})
    monkeypatch.setattr(postgres_turns, "_refused_settings", set())
    dsn = "postgresql://" + postgres_url.split("://", 1)[1]
    with caplog.at_level("WARNING", logger="chatgate.store"):
        first, second = await postgres_turns.connect_for_turns(dsn), await postgres_turns.connect_for_turns(dsn)
    try:
        for conn in (first, second):
            assert await conn.fetchval("SHOW jit") == "off"
            assert await conn.fetchval("SELECT 1") == 1
        warnings = [record.getMessage() for record in caplog.records if "no_such_setting" in record.getMessage()]
        assert len(warnings) == 1 and "refused" in warnings[0]
    finally:
        await first.close()
        await second.close()
