"""A page of messages or sessions and its total agree, even when a row commits while it is read.

The page and its ``count(*)`` used to be two statements, each with its own snapshot (SQLite in
autocommit mode, PostgreSQL under READ COMMITTED). A reply committed between them was counted
and not listed: CI once saw ``total == 4`` beside three messages. Here another connection
commits a row right after the page's first statement has run, every time.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Table, create_engine, event

from gateway.ids import new_id
from gateway.inbound import PlatformUser
from gateway.store import Store
from gateway.store.statements import MESSAGES, SESSIONS
from gateway.store.tables import utcnow
from gateway.types import SessionChannel


def _sync_url(url: str) -> str:
    """The same database through a synchronous driver: the interleaved write must commit while
    the store's own statement is between its execution and the next one."""
    return url.replace("sqlite+aiosqlite", "sqlite").replace("postgresql+asyncpg", "postgresql+psycopg")


@contextmanager
def committing_after_first_read(store: Store, table: Table, row: dict[str, Any]) -> Iterator[list[str]]:
    """Insert ``row`` into ``table`` from another connection, committed just after the store's
    first SELECT from that table has executed. Yields the statements seen, for the test to check."""
    other = create_engine(_sync_url(store.url))
    seen: list[str] = []

    def after(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and f"FROM {table.name}" in statement:
            seen.append(statement)
            if len(seen) == 1:
                with other.begin() as writer:
                    writer.execute(table.insert().values(**row))

    engine = store.engine.sync_engine
    event.listen(engine, "after_cursor_execute", after)
    try:
        yield seen
    finally:
        event.remove(engine, "after_cursor_execute", after)
        other.dispose()


async def test_a_message_committed_while_a_page_is_read_is_either_listed_and_counted_or_neither(store) -> None:
    user = await store.users.resolve(PlatformUser("paging", "u1"))
    session = await store.sessions.create(SessionChannel("paging"), user)
    for text in ("one", "two", "three"):
        await store.messages.add(session.id, "user", text)
    late = {"id": new_id(), "session_id": session.id, "role": "assistant", "text": "late", "attachments": [],
            "platform_refs": [], "status": "complete", "created_at": utcnow(), "updated_at": utcnow()}
    with committing_after_first_read(store, MESSAGES, late) as seen:
        records, total = await store.messages.page(session.id, limit=20)
    assert seen, "the page was not read through the engine this test watches"
    assert total == len(records) == 3
    records, total = await store.messages.page(session.id, limit=20)
    assert [r.text for r in records] == ["one", "two", "three", "late"] and total == 4
    # A page of its own: the total still counts every message; past the end, no rows and the total.
    records, total = await store.messages.page(session.id, offset=1, limit=2)
    assert [r.text for r in records] == ["two", "three"] and total == 4
    assert await store.messages.page(session.id, offset=10, limit=2) == ([], 4)
    anchor = (await store.messages.page(session.id, limit=20))[0][1]
    records, total = await store.messages.page(session.id, after_id=anchor.id)
    assert [r.text for r in records] == ["three", "late"] and total == 2


async def test_a_session_created_while_a_page_is_read_is_either_listed_and_counted_or_neither(store) -> None:
    user = await store.users.resolve(PlatformUser("paging", "u2"))
    for _ in range(2):
        await store.sessions.create(SessionChannel("paging"), user, metadata={})
    late = {"id": new_id(), "channel_type": "paging", "user_id": user.id, "title": "", "metadata": {}, "data": {},
            "entered": False, "created_at": utcnow(), "updated_at": utcnow()}
    with committing_after_first_read(store, SESSIONS, late):
        records, total = await store.sessions.page(user_id=user.id)
    assert total == len(records) == 2
    records, total = await store.sessions.page(user_id=user.id)
    assert total == len(records) == 3 and records[0].id == late["id"]  # newest first
    assert await store.sessions.page(user_id=user.id, offset=5) == ([], 3)
