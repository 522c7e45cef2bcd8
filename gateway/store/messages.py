"""Every message of a session's history (the user's, the replies, blocks) and the ratings of
turns."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection, delete, or_, update
from sqlalchemy import select as sql_select
from sqlmodel import col, select

from gateway.ids import id_instant, stamped_id
from gateway.store import sqlite_turns
from gateway.store.database import Database
from gateway.store.fence import Fence
from gateway.store.paging import page_and_total
from gateway.store.records import MessageRecord
from gateway.store.statements import (
    INSERT_MESSAGE,
    MESSAGES,
    SELECT_HISTORY,
    SELECT_TURN,
)
from gateway.store.tables import (
    FeedbackRow,
    MessageRow,
    utcnow,
)


def _message_values(
    session_id: str, role: str, text: str, message_id: str | None, block: dict[str, Any] | None,
    attachments: list[dict[str, Any]] | None, inbound_id: str | None, status: str, platform_refs: list[str] | None,
) -> dict[str, Any]:
    # created_at is the id's instant, so whoever holds the id knows it (gateway.ids).
    if message_id is None:
        message_id, now = stamped_id()
    else:
        now = id_instant(message_id) or utcnow()
    return {
        "id": message_id,
        "session_id": session_id,
        "role": role,
        "text": text,
        "block_id": block["id"] if block else None,
        "block": block,
        "attachments": attachments or [],
        "inbound_id": inbound_id,
        "status": status,
        "platform_refs": platform_refs or [],
        "created_at": now,
        "updated_at": now,
    }


class MessageQueries:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(
        self,
        session_id: str,
        role: str,
        text: str,
        *,
        message_id: str | None = None,
        block: dict[str, Any] | None = None,
        attachments: list[dict[str, Any]] | None = None,
        inbound_id: str | None = None,
        status: str = "complete",
        platform_refs: list[str] | None = None,
        fence: Fence | None = None,
    ) -> MessageRecord:
        values = _message_values(session_id, role, text, message_id, block, attachments, inbound_id, status,
                                 platform_refs)
        # The session's updated_at moves with inbound activity (record_inbound), not with replies:
        # one statement less on every reply.
        if self._db.postgres_turns is not None:
            await self._db.postgres_turns.add_message(values, fence)
            return MessageRecord.from_mapping(values)
        if self._db.has_driver:
            await self._db.run_driver_write(lambda driver: sqlite_turns.insert_message(driver, values), fence)
        else:
            await self._db.run_write(lambda conn: conn.execute(INSERT_MESSAGE, values), fence)
        return MessageRecord.from_mapping(values)

    def queue_add(
        self,
        session_id: str,
        role: str,
        text: str,
        *,
        message_id: str,
        inbound_id: str | None,
        status: str,
        platform_refs: list[str],
        fence: Fence | None,
    ) -> asyncio.Future[None]:
        """``add`` queued now, ahead of every write asked for after it, and committed with the
        next batch: the future is done then (or failed as ``add`` would raise). Only where
        ``Database.queues_writes`` (PostgreSQL's group commit)."""
        if self._db.postgres_turns is None:
            raise RuntimeError("queued writes need PostgreSQL's group commit (see Database.queues_writes)")
        values = _message_values(session_id, role, text, message_id, None, None, inbound_id, status, platform_refs)
        return self._db.postgres_turns.queue_message(values, fence)

    async def update(self, message_id: str, *, fence: Fence | None = None, **values: Any) -> None:
        """Set ``text``, ``status``, ``platform_refs`` or ``block`` of a stored message."""
        allowed = {"text", "status", "platform_refs", "block"}
        unknown = set(values) - allowed
        if unknown:
            raise ValueError(f"cannot update message fields {sorted(unknown)}")
        values["updated_at"] = utcnow()
        statement = update(MESSAGES).where(MESSAGES.c.id == message_id).values(**values)
        await self._db.run_write(lambda conn: conn.execute(statement), fence)

    async def get(self, message_id: str) -> MessageRecord | None:
        async with self._db.session() as db:
            row = await db.get(MessageRow, message_id)
        return None if row is None else MessageRecord.from_row(row)

    async def save_block(
        self, session_id: str, envelope: dict[str, Any], *, fence: Fence | None = None
    ) -> tuple[MessageRecord, list[str] | None]:
        """Store a block; a block id seen before in this session updates its row in place.

        Returns the record and the platform refs of the previous render (``None`` if new).
        """
        async with self._db.write(fence) as db:
            existing = (
                await db.exec(
                    select(MessageRow)
                    .where(MessageRow.session_id == session_id)
                    .where(MessageRow.block_id == envelope["id"])
                )
            ).first()
            if existing is None:
                row = MessageRow(session_id=session_id, role="block", block_id=envelope["id"], block=envelope)
                db.add(row)
                previous = None
            else:
                existing.block = envelope
                existing.updated_at = utcnow()
                db.add(existing)
                row, previous = existing, list(existing.platform_refs or [])
        return MessageRecord.from_row(row), previous

    async def block(self, session_id: str, block_id: str) -> dict[str, Any] | None:
        """The latest envelope of a block shown in this session."""
        async with self._db.session() as db:
            row = (
                await db.exec(
                    select(MessageRow).where(MessageRow.session_id == session_id).where(MessageRow.block_id == block_id)
                )
            ).first()
        return None if row is None else row.block

    async def for_inbound(self, session_id: str, inbound_id: str, *, role: str) -> MessageRecord | None:
        """The first message of ``role`` stored for one inbound event."""
        for record in await self.of_turn(session_id, inbound_id):
            if record.role == role:
                return record
        return None

    async def of_turn(self, session_id: str, inbound_id: str) -> list[MessageRecord]:
        """Every message stored for one inbound event (the user's and the replies), oldest first."""
        if self._db.postgres_turns is not None:
            return await self._db.postgres_turns.messages_of_turn(session_id, inbound_id)
        if self._db.has_driver:
            return await self._db.run_driver_read(
                lambda driver: sqlite_turns.turn_messages(driver, session_id, inbound_id)
            )
        parameters = {"inbound_id": inbound_id, "session_id": session_id}

        def work(conn: Connection) -> list[MessageRecord]:
            return [MessageRecord.from_mapping(r) for r in conn.execute(SELECT_TURN, parameters).mappings().all()]

        return await self._db.run_read(work)

    async def page(
        self, session_id: str, *, offset: int = 0, limit: int = 20, after_id: str | None = None
    ) -> tuple[list[MessageRecord], int]:
        """Oldest first. ``after_id`` returns messages stored after that one, plus any message
        updated since (a block re-shown in place, a stream that finished)."""
        conditions = [col(MessageRow.session_id) == session_id]
        if after_id is not None:
            anchor = await self.get(after_id)
            if anchor is not None and anchor.session_id == session_id:
                conditions.append(or_(col(MessageRow.id) > after_id, col(MessageRow.updated_at) > anchor.updated_at))
        async with self._db.session() as db:
            rows, total = await page_and_total(db, MessageRow, conditions, col(MessageRow.id), offset=offset,
                                               limit=limit)
        return [MessageRecord.from_row(r) for r in rows], total

    async def recent(self, session_id: str, limit: int) -> list[MessageRecord]:
        """The last ``limit`` messages, oldest first (a handler's ``session.history``)."""
        if limit <= 0:
            return []
        statement = (
            sql_select(MESSAGES).where(MESSAGES.c.session_id == session_id).order_by(MESSAGES.c.id.desc()).limit(limit)
        )

        def work(conn: Connection) -> list[MessageRecord]:
            return [MessageRecord.from_mapping(r) for r in reversed(conn.execute(statement).mappings().all())]

        return await self._db.run_read(work)

    def history_now(self, session_id: str, before_id: str, limit: int) -> list[MessageRecord]:
        """The last ``limit`` messages with ids before ``before_id``, oldest first, read
        synchronously (``Database.read_now``; on PostgreSQL the event loop waits a round trip:
        ``blocks_to_read_now``): ``session.history`` on first use."""
        if self._db.postgres_turns is not None:
            return self._db.postgres_turns.history_now(session_id, before_id, limit)
        return self._db.read_now(_history_reader(session_id, before_id, limit))

    async def history(self, session_id: str, before_id: str, limit: int) -> list[MessageRecord]:
        """``history_now`` for a caller that can await (or a store that cannot read now)."""
        if self._db.postgres_turns is not None:
            return await self._db.postgres_turns.history(session_id, before_id, limit)
        return await self._db.run_read(_history_reader(session_id, before_id, limit))

    async def history_fetched(
        self, session_id: str, before_id: str, limit: int
    ) -> Callable[[], list[MessageRecord]]:
        """``history``'s rows read now, decoded when the returned function is called (at most once
        is needed: ``gateway.history.StoredHistory.prefetch``)."""
        if self._db.postgres_turns is not None:
            return await self._db.postgres_turns.history_fetched(session_id, before_id, limit)
        records = await self.history(session_id, before_id, limit)
        return lambda: records

    @property
    def reads_now(self) -> bool:
        """Whether ``history_now`` can serve this store without holding up the event loop
        (``Database.reads_now``)."""
        return self._db.reads_now

    @property
    def blocks_to_read_now(self) -> bool:
        """Whether ``history_now`` can serve this store by holding up the event loop for a
        round trip (PostgreSQL: ``gateway.store.postgres_blocking_reads``)."""
        return self._db.postgres_turns is not None

    async def save_feedback(self, session_id: str, inbound_id: str, value: int) -> None:
        """Record (or change) the rating of one turn."""
        async with self._db.write() as db:
            existing = (
                await db.exec(
                    select(FeedbackRow)
                    .where(FeedbackRow.session_id == session_id)
                    .where(FeedbackRow.inbound_id == inbound_id)
                )
            ).first()
            if existing is None:
                db.add(FeedbackRow(session_id=session_id, inbound_id=inbound_id, value=value))
            else:
                existing.value = value
                db.add(existing)

    async def feedback(self, session_id: str) -> dict[str, int]:
        """``{inbound id: value}`` for a session's rated turns."""
        async with self._db.session() as db:
            rows = (await db.exec(select(FeedbackRow).where(FeedbackRow.session_id == session_id))).all()
        return {row.inbound_id: row.value for row in rows}

    async def fail_streams_of(self, inbox_id: str, *, fence: Fence | None = None) -> int:
        """Settle the replies of an interrupted turn that were still streaming (the process that
        streamed them is gone); returns how many.

        A reply with no text yet is deleted: the turn runs again and its reply takes the place, so
        the history keeps no empty ``failed`` message. One with text is kept as ``failed``.
        """
        streaming = (MESSAGES.c.inbound_id == inbox_id) & (MESSAGES.c.status == "streaming")
        empty = streaming & (MESSAGES.c.text == "")
        fail = update(MESSAGES).where(streaming).values(status="failed", updated_at=utcnow())

        def settle(conn: Connection) -> int:
            deleted = conn.execute(delete(MESSAGES).where(empty)).rowcount or 0
            failed = conn.execute(fail).rowcount or 0
            return int(deleted) + int(failed)

        return int(await self._db.run_write(settle, fence))


def _history_reader(session_id: str, before_id: str, limit: int) -> Callable[[Connection], list[MessageRecord]]:
    parameters = {"session_id": session_id, "before_id": before_id, "limit": limit}

    def work(conn: Connection) -> list[MessageRecord]:
        rows = conn.execute(SELECT_HISTORY, parameters).mappings().all()
        return [MessageRecord.from_mapping(r) for r in reversed(rows)]

    return work
