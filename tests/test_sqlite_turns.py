"""The turn's statements on ``sqlite3`` (``gateway.store.sqlite_turns``) write the rows SQLAlchemy
writes and read them as SQLAlchemy reads them, so the ORM and the driver path read each other's
rows: checked value by value against SQLAlchemy's own type processors, and row by row on a real
SQLite file in both directions."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import JSON
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlmodel import select

from gateway.store import Store, sqlite_turns
from gateway.store.tables import MessageRow
from gateway.types import SessionChannel, UserInfo

DIALECT = sqlite_dialect.dialect()
# SQLModel's UTCDateTime, as SQLAlchemy runs it on SQLite
TIMESTAMP = MessageRow.metadata.tables["messages"].c.created_at.type.dialect_impl(DIALECT)
DATETIME_BIND = TIMESTAMP.bind_processor(DIALECT)
DATETIME_RESULT = TIMESTAMP.result_processor(DIALECT, None)
JSON_BIND = JSON().bind_processor(DIALECT)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
moments = st.datetimes(min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31),
                       timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)),
                                                  timezone(timedelta(hours=-11))]))


@given(moments)
def test_timestamps_are_written_and_read_as_sqlalchemy_does(moment):
    assert DATETIME_BIND is not None and DATETIME_RESULT is not None
    stored = DATETIME_BIND(moment)
    assert sqlite_turns.timestamp(moment) == stored
    assert sqlite_turns.read_timestamp(stored) == DATETIME_RESULT(stored)


@given(json_values)
def test_json_columns_are_written_as_sqlalchemy_writes_them(value):
    assert JSON_BIND is not None
    assert sqlite_turns._json(value) == JSON_BIND(value)


async def open_store(tmp_path) -> Store:
    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'turns.db'}")
    await store.open()
    assert store.messages.reads_now  # a file: the driver path serves it
    return store


async def test_a_session_written_by_the_orm_reads_the_same_on_the_driver(tmp_path):
    store = await open_store(tmp_path)
    try:
        user = UserInfo("u-1", "ada@example.com", "org-7")
        channel = SessionChannel("telegram", "-100", "7", "team")
        record = await store.sessions.create(channel, user, title="Zoë's chat", metadata={"k": [1, "ü", None]},
                                             chat_name="helper")
        await store.sessions.save_data(record.id, {"count": 3, "nested": {"x": True}}, [])
        await store.sessions.mark_entered(record.id)
        through_orm = await store.sessions.get(record.id)
        through_driver = await store.run_driver_read(lambda d: sqlite_turns.turn_context(d, record.id))
        assert through_driver is not None
        assert through_driver[0] == through_orm
        assert through_driver[1] is None  # no user row was stored for "u-1"
    finally:
        await store.close()


async def test_a_turn_written_on_the_driver_reads_the_same_through_the_orm(tmp_path):
    store = await open_store(tmp_path)
    try:
        record = await store.sessions.create(SessionChannel("web"), UserInfo("u-2", None, None))
        attachments = [{"name": "naïve.pdf", "size": 8, "meta": {"pages": [1, 2]}}]
        entry = await store.inbox.record(record.id, "web:1", "message", {"text": "hé", "n": None},
                                         user_text="hé \u2028 there", attachments=attachments)
        block = {"id": "b-1", "type": "card", "payload": {"title": "ß", "items": []}}
        await store.messages.add(record.id, "assistant", "reply ☃", inbound_id=entry.id, block=block,
                                 platform_refs=["tg:1", "tg:2"], status="streaming")
        await store.messages.add(record.id, "assistant", "plain", inbound_id=entry.id)
        await store.inbox.set_status(entry.id, "done", "fine")

        driver_read = await store.messages.of_turn(record.id, entry.id)
        async with store.session() as db:
            rows = (await db.exec(select(MessageRow).order_by(MessageRow.id))).all()
        orm_read = [type(driver_read[0]).from_row(row) for row in rows]
        assert driver_read == orm_read
        assert [m.role for m in driver_read] == ["user", "assistant", "assistant"]
        assert driver_read[0].attachments == attachments and driver_read[0].block is None
        assert driver_read[1].block == block and driver_read[1].platform_refs == ["tg:1", "tg:2"]
        assert await store.messages.block(record.id, "b-1") == block  # the ORM finds it by its block id
        inbound = await store.inbox.get(entry.id)
        assert inbound is not None and (inbound.status, inbound.error) == ("done", "fine")
        assert inbound.updated_at >= inbound.created_at
    finally:
        await store.close()


async def test_the_driver_rows_are_the_orm_rows_byte_for_byte(tmp_path):
    """The same message stored by the ORM path (an in-memory store has no driver path) and by the
    driver path: every column's stored text and type is the same."""
    store = await open_store(tmp_path)
    try:
        record = await store.sessions.create(SessionChannel("web"), UserInfo("u-3", None, None))
        await store.messages.add(record.id, "assistant", "x", message_id="m-driver", block={"id": "b"},
                                 platform_refs=["r"], attachments=[{"a": 1}])
        async with store.write() as db:  # the ORM's own insert of the same values
            row = await db.get(MessageRow, "m-driver")
            assert row is not None
            db.add(MessageRow(id="m-orm", session_id=record.id, role=row.role, text=row.text, block_id=row.block_id,
                              block=row.block, attachments=row.attachments, inbound_id=row.inbound_id,
                              status=row.status, platform_refs=row.platform_refs, created_at=row.created_at,
                              updated_at=row.updated_at))
        await store.messages.add(record.id, "assistant", "no block", message_id="m-none")
    finally:
        await store.close()
    with sqlite3.connect(tmp_path / "turns.db") as conn:
        columns = "role, text, block_id, block, attachments, status, platform_refs"
        typed = f"{columns}, " + ", ".join(f"typeof({c.strip()})" for c in columns.split(","))
        driver, orm = (conn.execute(f"SELECT {typed} FROM messages WHERE id = ?", (key,)).fetchone()
                       for key in ("m-driver", "m-orm"))
        assert driver == orm
        stamps = conn.execute("SELECT created_at FROM messages").fetchall()
        assert all(len(stamp) == len("2026-12-06 18:03:09.522773") for (stamp,) in stamps)
        # SQLAlchemy's JSON type stores None as JSON null text; so does the driver path
        assert conn.execute("SELECT block, typeof(block) FROM messages WHERE id = 'm-none'").fetchone() == (
            "null", "text")

