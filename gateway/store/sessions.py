"""Sessions: one conversation each (a chat, a thread, a widget or REST session), with its
``data``, title, named chat and owner."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy import Connection, delete, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from gateway.ids import new_id
from gateway.store import sqlite_turns
from gateway.store.database import Database
from gateway.store.fence import Fence
from gateway.store.paging import page_and_total
from gateway.store.records import MessageRecord, SessionRecord
from gateway.store.statements import (
    SELECT_SESSION,
    SELECT_USER,
    address_key,
)
from gateway.store.tables import (
    FeedbackRow,
    InboxRow,
    MessageRow,
    SessionRow,
    utcnow,
)
from gateway.types import SessionChannel, UserInfo


class SessionQueries:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(
        self,
        channel: SessionChannel,
        user: UserInfo,
        *,
        title: str = "",
        metadata: dict[str, Any] | None = None,
        chat_name: str | None = None,
        owner_key: str | None = None,
        session_id: str | None = None,
    ) -> SessionRecord:
        row = SessionRow(
            id=session_id or new_id(),
            channel_type=channel.type,
            address_key=address_key(channel),
            chat_id=channel.chat_id,
            thread_id=channel.thread_id,
            team_id=channel.team_id,
            user_id=user.id,
            owner_key=owner_key,
            title=title,
            meta=metadata or {},
            chat_name=chat_name,
        )
        async with self._db.write() as db:
            db.add(row)
        return SessionRecord.from_row(row)

    async def get(self, session_id: str) -> SessionRecord | None:
        if self._db.postgres_turns is not None:
            return await self._db.postgres_turns.session(session_id)
        if self._db.has_driver:
            return await self._db.run_driver_read(lambda driver: sqlite_turns.session(driver, session_id))

        def work(conn: Connection) -> SessionRecord | None:
            row = conn.execute(SELECT_SESSION, {"session_id": session_id}).mappings().first()
            return None if row is None else SessionRecord.from_mapping(row)

        return await self._db.run_read(work)

    async def turn_context_and_history(
        self, session_id: str, before_id: str, limit: int
    ) -> tuple[SessionRecord, UserInfo | None, Callable[[], list[MessageRecord]] | None] | None:
        """``turn_context``, and where the history cannot be read on first use (PostgreSQL: see
        ``gateway.history``), the rows of ``MessageQueries.history_fetched`` in the same round
        trip; ``None`` in their place elsewhere."""
        if self._db.postgres_turns is not None and limit > 0:
            return await self._db.postgres_turns.turn_context_and_history(session_id, before_id, limit)
        context = await self.turn_context(session_id)
        return None if context is None else (*context, None)

    async def turn_context(self, session_id: str) -> tuple[SessionRecord, UserInfo | None] | None:
        """What a turn needs, in one read: the session and its user (its history is read only
        if the handler uses it: ``gateway.history``)."""
        if self._db.postgres_turns is not None:
            return await self._db.postgres_turns.turn_context(session_id)
        if self._db.has_driver:
            return await self._db.run_driver_read(lambda driver: sqlite_turns.turn_context(driver, session_id))

        def work(conn: Connection) -> tuple[SessionRecord, UserInfo | None] | None:
            row = conn.execute(SELECT_SESSION, {"session_id": session_id}).mappings().first()
            if row is None:
                return None
            record = SessionRecord.from_mapping(row)
            user_row = conn.execute(SELECT_USER, {"user_id": record.user_id}).mappings().first()
            user = None if user_row is None else UserInfo(user_row["id"], user_row["email"], user_row["org_id"])
            return record, user

        return await self._db.run_read(work)

    async def find(self, channel: SessionChannel) -> SessionRecord | None:
        key = address_key(channel)
        if key is None:
            return None
        async with self._db.session() as db:
            row = (await db.exec(select(SessionRow).where(SessionRow.address_key == key))).first()
        return None if row is None else SessionRecord.from_row(row)

    async def for_address(self, channel: SessionChannel, user: UserInfo) -> SessionRecord:
        """The one session of a platform conversation, made on its first message."""
        found = await self.find(channel)
        if found is not None:
            return found
        try:
            return await self.create(channel, user)
        except IntegrityError:
            found = await self.find(channel)
            assert found is not None
            return found

    async def page(
        self, *, owner_key: str | None = None, user_id: str | None = None, offset: int = 0, limit: int = 20
    ) -> tuple[list[SessionRecord], int]:
        """Newest first."""
        conditions = []
        if owner_key is not None:
            conditions.append(col(SessionRow.owner_key) == owner_key)
        if user_id is not None:
            conditions.append(col(SessionRow.user_id) == user_id)
        async with self._db.session() as db:
            rows, total = await page_and_total(db, SessionRow, conditions, col(SessionRow.id).desc(), offset=offset,
                                               limit=limit)
        return [SessionRecord.from_row(r) for r in rows], total

    async def update(self, session_id: str, *, fence: Fence | None = None, **values: Any) -> None:
        """Set ``title``, ``chat_name``, ``metadata``, ``owner_key`` (others are refused)."""
        allowed = {"title", "chat_name", "metadata", "owner_key"}
        unknown = set(values) - allowed
        if unknown:
            raise ValueError(f"cannot update session fields {sorted(unknown)}")
        if "metadata" in values:
            values["meta"] = values.pop("metadata")
        values["updated_at"] = utcnow()
        async with self._db.write(fence) as db:
            await db.exec(update(SessionRow).where(col(SessionRow.id) == session_id).values(**values))

    async def mark_entered(self, session_id: str, *, fence: Fence | None = None) -> bool:
        """True exactly once per session: the first caller runs ``@app.enter``."""
        async with self._db.write(fence) as db:
            result = await db.exec(
                update(SessionRow)
                .where(col(SessionRow.id) == session_id)
                .where(col(SessionRow.entered).is_(False))
                .values(entered=True)
            )
        return bool(result.rowcount)

    async def delete(self, session_id: str) -> bool:
        async with self._db.write() as db:
            await db.exec(delete(MessageRow).where(col(MessageRow.session_id) == session_id))
            await db.exec(delete(InboxRow).where(col(InboxRow.session_id) == session_id))
            await db.exec(delete(FeedbackRow).where(col(FeedbackRow.session_id) == session_id))
            result = await db.exec(delete(SessionRow).where(col(SessionRow.id) == session_id))
        return bool(result.rowcount)

    async def save_data(
        self, session_id: str, changed: dict[str, Any], removed: Iterable[str], *, fence: Fence | None = None
    ) -> dict[str, Any]:
        """Apply one turn's changes key by key to the stored data; returns the new snapshot.

        Merging per top-level key (rather than overwriting the whole document) is what lets two
        handlers of the same session that write different keys both keep their writes.
        """
        removed = list(removed)
        async with self._db.write(fence) as db:
            statement = select(SessionRow).where(SessionRow.id == session_id)
            if not self._db.is_sqlite:
                statement = statement.with_for_update()
            row = (await db.exec(statement)).first()
            if row is None:
                return {}
            data = dict(row.data or {})
            data.update(changed)
            for key in removed:
                data.pop(key, None)
            await db.exec(
                update(SessionRow)
                .where(col(SessionRow.id) == session_id)
                .values(data=data, data_revision=row.data_revision + 1, updated_at=utcnow())
            )
        return data
