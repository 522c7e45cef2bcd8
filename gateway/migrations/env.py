"""Alembic environment: chatgate hands Alembic an open connection (see gateway/store/migrate.py)."""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

import gateway.store  # noqa: F401  (registers every table on SQLModel.metadata)
from gateway.store.migrate import include_object

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run chatgate migrations through gateway.store.migrate (it passes the connection)")

context.configure(
    connection=connection,
    target_metadata=SQLModel.metadata,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite cannot ALTER most things
    compare_type=True,
    include_object=include_object,
)
with context.begin_transaction():
    context.run_migrations()
