"""Which handlers wait in ``prompt_approval``, read from the database (``chatgate web``).

In one process the approval desk asks the dispatcher's prompt registry. A web process runs no
handler: the handler waits in a worker. What the worker stored tells the same thing: the
session's running event is its oldest unfinished one (stops and answers aside), and the
``approval_prompt`` block shown after it was recorded with ``payload.blocking`` still true is
the prompt it waits on (the block is saved after the prompt is registered, and saved again with
``blocking`` false once answered). PostgreSQL only, as the web role is.
"""

from __future__ import annotations

from typing import Protocol

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

AWAITED = text(
    """
    SELECT running.id AS inbound_id, block.block_id
    FROM (SELECT id FROM inbox
          WHERE session_id = :session_id AND status IN ('pending', 'running') AND kind NOT IN ('stop', 'signal')
          ORDER BY id LIMIT 1) AS running
    CROSS JOIN LATERAL (
        SELECT block_id FROM messages
        WHERE session_id = :session_id AND role = 'block' AND id > running.id
          AND block->>'type' = 'approval_prompt' AND block->'payload'->>'blocking' = 'true'
        ORDER BY id DESC LIMIT 1) AS block
    """
)
WAITING_SESSIONS = text(
    """
    SELECT DISTINCT m.session_id FROM messages m
    WHERE m.role = 'block' AND m.block->>'type' = 'approval_prompt' AND m.block->'payload'->>'blocking' = 'true'
      AND EXISTS (SELECT 1 FROM inbox i WHERE i.session_id = m.session_id AND i.status IN ('pending', 'running'))
    """
)


class HasEngine(Protocol):
    @property
    def engine(self) -> AsyncEngine: ...


class StoredApprovals:
    """The approval desk's two questions, answered from the stored blocks and the inbox."""

    def __init__(self, store: HasEngine) -> None:
        self._store = store

    async def awaited(self, session_id: str) -> tuple[str, str] | None:
        """``(inbox id, block id)`` while the session's running event waits on an approval."""
        async with self._store.engine.connect() as conn:
            row = (await conn.execute(AWAITED, {"session_id": session_id})).first()
        return None if row is None else (row.inbound_id, row.block_id)

    async def waiting_sessions(self) -> list[str]:
        async with self._store.engine.connect() as conn:
            sessions = [row[0] for row in (await conn.execute(WAITING_SESSIONS)).all()]
        return [s for s in sessions if await self.awaited(s) is not None]
