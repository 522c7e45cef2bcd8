"""fewer indexes written per turn

Every turn writes each index of the inbox and the messages (a WAL frame apiece on SQLite). The
inbox's status and created_at indexes become one partial index of the unfinished events (the
recovery, the queue and the backlog gauge ask only for those; the purge finds old events by
their ids), and only messages that carry a block are indexed by block id.

Revision ID: 8c0e818baa06
Revises: c9c1c6e6bdc2
Create Date: 2026-12-06 22:57:49.198193
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "8c0e818baa06"
down_revision = "c9c1c6e6bdc2"
branch_labels = None
depends_on = None

UNFINISHED = sa.text("status IN ('pending', 'running')")
HAS_BLOCK = sa.text("block_id IS NOT NULL")


def upgrade() -> None:
    op.drop_index("ix_inbox_created_at", table_name="inbox")
    op.drop_index("ix_inbox_status", table_name="inbox")
    op.create_index("ix_inbox_unfinished", "inbox", ["id", "session_id"], unique=False,
                    sqlite_where=UNFINISHED, postgresql_where=UNFINISHED)
    op.drop_index("ix_messages_block_id", table_name="messages")
    op.create_index("ix_messages_block_id", "messages", ["block_id"], unique=False,
                    sqlite_where=HAS_BLOCK, postgresql_where=HAS_BLOCK)


def downgrade() -> None:
    op.drop_index("ix_messages_block_id", table_name="messages")
    op.create_index("ix_messages_block_id", "messages", ["block_id"], unique=False)
    op.drop_index("ix_inbox_unfinished", table_name="inbox")
    op.create_index("ix_inbox_status", "inbox", ["status"], unique=False)
    op.create_index("ix_inbox_created_at", "inbox", ["created_at"], unique=False)
