"""Every table chatgate keeps, registered on ``SQLModel.metadata`` by importing its module.

The store makes and migrates the schema from this metadata, and ``chatgate`` Alembic revisions
are generated against it, so a new kind of record is one table module added here.
"""

from __future__ import annotations

from sqlmodel import SQLModel

import gateway.store.documents  # collections and the scoped KV store
import gateway.store.integration_tables  # connected accounts, connect flows
import gateway.store.queue  # session leases of the worker queue
import gateway.store.tables  # users, identities, sessions, messages, inbox, files, feedback, leases
import gateway.store.task_tables  # noqa: F401  (tasks, task watchers, scheduler ticks)

metadata = SQLModel.metadata
