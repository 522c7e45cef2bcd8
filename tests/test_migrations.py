"""Alembic: a fresh database is created and stamped; the models match the latest revision."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine
from sqlmodel import SQLModel

import gateway.store  # noqa: F401  (registers every table)
from gateway.store import Store
from gateway.store.migrate import HEAD_REVISION, head_revision, pending_changes


async def _current_revision(url: str) -> str | None:
    engine = create_async_engine(url)
    async with engine.connect() as conn:
        revision = (await conn.execute(sa.text("SELECT version_num FROM alembic_version"))).scalar()
    await engine.dispose()
    return revision


async def test_fresh_database_is_created_and_stamped(database_url):
    store = Store(database_url)
    await store.open()
    assert await _current_revision(database_url) == head_revision() is not None
    async with store.engine.connect() as conn:
        assert await conn.run_sync(pending_changes) == []  # the models match the latest revision
    assert await store.create_schema() == "current"  # a second start changes nothing
    await store.close()


def test_the_head_revision_constant_is_alembics_head():
    # Start-up trusts HEAD_REVISION to skip Alembic on a current database: after adding a
    # revision, set HEAD_REVISION in gateway/store/migrate.py to its id.
    assert HEAD_REVISION == head_revision()


async def test_database_made_before_migrations_is_stamped(database_url):
    engine = create_async_engine(database_url)
    async with engine.begin() as conn:
        await conn.run_sync(SQLModel.metadata.tables["users"].create)
    await engine.dispose()
    store = Store(database_url)
    await store.open()  # creates the missing tables and stamps the head
    assert await _current_revision(database_url) == head_revision()
    await store.close()


async def test_upgrade_from_an_empty_revision_history(database_url):
    """Running every revision from scratch yields the same schema the models describe."""
    from alembic import command

    from gateway.store.migrate import alembic_config

    engine = create_async_engine(database_url)
    async with engine.begin() as conn:
        await conn.run_sync(lambda c: command.upgrade(alembic_config(c), "head"))
    async with engine.connect() as conn:
        assert await conn.run_sync(pending_changes) == []
    await engine.dispose()


async def test_other_libraries_tables_are_left_alone(sqlite_url):
    """APScheduler's job table lives in our database; a migration check must not want it dropped."""
    store = Store(sqlite_url)
    await store.open()
    async with store.engine.begin() as conn:
        await conn.exec_driver_sql("CREATE TABLE chatgate_jobs (id VARCHAR(191) PRIMARY KEY, next_run_time FLOAT)")
    async with store.engine.connect() as conn:
        assert await conn.run_sync(pending_changes) == []
    await store.close()


def _index_definitions(connection: sa.Connection) -> dict[str, str]:
    """Each index of the inbox and the messages, by name, as the database itself spells it."""
    if connection.dialect.name == "sqlite":
        rows = connection.exec_driver_sql(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name IN ('inbox', 'messages')"
            " AND sql IS NOT NULL")
    else:
        rows = connection.exec_driver_sql(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename IN ('inbox', 'messages')")
    return {name: " ".join(definition.split()) for name, definition in rows}


async def test_the_inbox_indexes_only_its_unfinished_events_and_the_messages_only_their_blocks(
    database_url, caplog
):
    """A turn writes every index of the rows it writes (a WAL frame each on SQLite): the status
    and age of every event are not indexed any more, only which events are unfinished, and only
    the messages that carry a block are indexed by block. A database of the previous revision,
    with events in it, is brought there by the migration."""
    from alembic import command

    from gateway.store.migrate import alembic_config

    engine = create_async_engine(database_url)
    async with engine.begin() as conn:
        await conn.run_sync(lambda c: command.upgrade(alembic_config(c), "c9c1c6e6bdc2"))
        await conn.execute(sa.text(
            "INSERT INTO inbox (id, dedup_key, session_id, kind, payload, status, attempts, created_at, updated_at)"
            " VALUES ('01A', 'k1', 's', 'message', '{}', 'done', 0, :now, :now),"
            " ('01B', 'k2', 's', 'message', '{}', 'pending', 0, :now, :now)"),
            {"now": datetime(2026, 12, 6, tzinfo=UTC)})
        await conn.run_sync(lambda c: command.upgrade(alembic_config(c), "head"))
    async with engine.connect() as conn:
        indexes = await conn.run_sync(_index_definitions)
        assert "ix_inbox_status" not in indexes and "ix_inbox_created_at" not in indexes
        postgres_unfinished = ("WHERE ((status)::text = ANY ((ARRAY['pending'::character varying,"
                               " 'running'::character varying])::text[]))")
        assert indexes["ix_inbox_unfinished"].endswith(
            "WHERE status IN ('pending', 'running')" if database_url.startswith("sqlite") else postgres_unfinished)
        assert indexes["ix_messages_block_id"].endswith(
            "WHERE block_id IS NOT NULL" if database_url.startswith("sqlite") else "WHERE (block_id IS NOT NULL)")
        assert await conn.run_sync(pending_changes) == []
    await engine.dispose()
    store = Store(database_url)
    with caplog.at_level(logging.INFO, logger="chatgate.store"):
        await store.open()
    assert [r.getMessage() for r in caplog.records if r.name == "chatgate.store"] == []  # already current
    try:
        assert [row.id for row in await store.inbox.unfinished()] == ["01B"]
        assert (await store.inbox.backlog())[0] == 1
        async with store.engine.connect() as conn:
            assert await conn.run_sync(_index_definitions) == indexes  # a fresh start keeps them
    finally:
        await store.close()


async def test_sqlite_answers_the_recovery_and_the_backlog_from_the_partial_index(sqlite_url):
    """The partial index serves only queries that say its predicate literally
    (``tables.UNFINISHED_SQL``): the plans of the store's own queries name it."""
    from sqlmodel import col, select

    from gateway.store.inbox import UNFINISHED_ROWS
    from gateway.store.tables import InboxRow

    store = Store(sqlite_url)
    await store.open()
    try:
        queries = [
            select(InboxRow).where(UNFINISHED_ROWS).order_by(col(InboxRow.id)),  # InboxQueries.unfinished
            sa.select(sa.func.count()).select_from(InboxRow).where(UNFINISHED_ROWS),  # InboxQueries.backlog
        ]
        async with store.engine.connect() as conn:
            for query in queries:
                compiled = query.compile(conn.sync_engine, compile_kwargs={"literal_binds": True})
                plan = (await conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}")).all()
                assert any("ix_inbox_unfinished" in row[-1] for row in plan), plan
    finally:
        await store.close()


async def test_a_start_on_a_database_of_an_earlier_revision_says_it_upgraded_the_schema(sqlite_url, caplog):
    """Whoever upgrades chatgate reads in its log that the schema moved, and from where."""
    from alembic import command

    from gateway.store.migrate import alembic_config

    engine = create_async_engine(sqlite_url)
    async with engine.begin() as conn:
        await conn.run_sync(lambda c: command.upgrade(alembic_config(c), "c9c1c6e6bdc2"))
    await engine.dispose()
    store = Store(sqlite_url)
    with caplog.at_level(logging.INFO, logger="chatgate.store"):
        await store.open()
    await store.close()
    said = [r.getMessage() for r in caplog.records if r.name == "chatgate.store"]
    assert said == [f"database schema upgraded from c9c1c6e6bdc2 to {HEAD_REVISION} (gateway/migrations)"]
