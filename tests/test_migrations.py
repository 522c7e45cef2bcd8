"""Alembic: a fresh database is created and stamped; the models match the latest revision."""

from __future__ import annotations

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
