"""Schema management with Alembic.

On a fresh database chatgate creates the whole schema from the models and stamps it with the
latest revision; on an existing one it applies the revisions it has not seen. New revisions are
made with ``python -m gateway.store.migrate revision "what changed"`` after changing a table.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, inspect, text
from sqlmodel import SQLModel

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"  # gateway/migrations
VERSION_TABLE = "alembic_version"
HEAD_REVISION = "8c0e818baa06"
"""The newest revision in ``migrations/versions`` (tests check it against Alembic's own answer).
A start on a database already there skips importing Alembic: a tenth of a second of start-up."""
FOREIGN_TABLES = frozenset({"chatgate_jobs"})
"""Tables in our database that other libraries own (APScheduler's job store): not ours to migrate."""


def include_object(obj: object, name: str | None, type_: str, reflected: bool, compare_to: object) -> bool:
    """Alembic filter: leave other libraries' tables alone (never create or drop them)."""
    table = getattr(obj, "table", None)
    table_name = name if type_ == "table" else getattr(table, "name", None)
    return table_name not in FOREIGN_TABLES


def alembic_config(connection: Connection | None = None) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def migrate(connection: Connection) -> str:
    """Bring the schema to the latest revision; returns what was done (for the log)."""
    tables = set(inspect(connection).get_table_names())
    if VERSION_TABLE in tables:
        current = connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()
        if current == HEAD_REVISION:
            return "current"
    from alembic import command
    from alembic.runtime.migration import MigrationContext

    config = alembic_config(connection)
    if VERSION_TABLE not in tables:
        # A new database (or one made before migrations existed): create what is missing, stamp.
        SQLModel.metadata.create_all(connection)
        if head_revision() is not None:
            command.stamp(config, "head")
        return "created" if not tables else "stamped"
    current = MigrationContext.configure(connection).get_current_revision()
    if current == head_revision():
        return "current"
    command.upgrade(config, "head")
    return f"upgraded from {current}"


def pending_changes(connection: Connection) -> list[object]:
    """Differences between the models and the migrated schema (empty when a revision is current)."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    context = MigrationContext.configure(connection, opts={"compare_type": False, "include_object": include_object})
    return compare_metadata(context, SQLModel.metadata)


async def _make_revision(url: str, message: str) -> None:
    from alembic import command
    from sqlalchemy.ext.asyncio import create_async_engine

    import gateway.store.schema  # noqa: F401  (every table on the metadata)

    engine = create_async_engine(url)

    def run(connection: Connection) -> None:
        command.upgrade(alembic_config(connection), "head")
        command.revision(alembic_config(connection), message=message, autogenerate=True)

    async with engine.begin() as conn:
        await conn.run_sync(run)
    await engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.store.migrate", description="chatgate schema migrations")
    sub = parser.add_subparsers(dest="command", required=True)
    revision = sub.add_parser("revision", help="write a new revision from the models' changes")
    revision.add_argument("message")
    revision.add_argument("--database", default="sqlite+aiosqlite:///:memory:",
                          help="a database at the current head to compare against (default: a fresh one)")
    args = parser.parse_args(argv)
    asyncio.run(_make_revision(args.database, args.message))
    return 0


if __name__ == "__main__":
    sys.exit(main())
