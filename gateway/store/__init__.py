"""The Store: the only code that speaks SQL. SQLite (WAL) by default, PostgreSQL when scaled.

Every method opens its own short transaction and returns plain records, so callers never hold
a database session across an ``await`` on the network.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, suppress
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, bindparam, create_engine, delete, event, func, insert, or_, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

import gateway.store.schema  # noqa: F401  (every table, registered before the schema is made)
from gateway.inbound import PlatformUser
from gateway.store.fence import Fence
from gateway.store.records import FileRecord, InboundRecord, InboxEntry, MessageRecord, SessionRecord
from gateway.store.tables import (
    FeedbackRow,
    FileRow,
    IdentityRow,
    InboxRow,
    LeaseRow,
    MessageRow,
    SessionRow,
    UserRow,
    new_id,
    utcnow,
)
from gateway.types import SessionChannel, UnknownSession, UserInfo

__all__ = ["FileRecord", "InboxEntry", "MessageRecord", "SessionRecord", "Store", "address_key"]

UNFINISHED = ("pending", "running")
READER_THREADS = 1  # measured: more reader threads only contend for the GIL (bench/web_echo.py)
T = TypeVar("T")

# The Core tables behind the models, for the per-turn statements.
SESSIONS = SessionRow.__table__
USERS = UserRow.__table__
MESSAGES = MessageRow.__table__
INBOX = InboxRow.__table__

# The per-turn statements, built once with bind parameters: SQLAlchemy then skips building the
# statement and its cache key on every call (measured: a third of a turn's store time).
SELECT_SESSION = select(SESSIONS).where(SESSIONS.c.id == bindparam("session_id"))
SELECT_USER = select(USERS).where(USERS.c.id == bindparam("user_id"))
SELECT_RECENT = (
    select(MESSAGES)
    .where(MESSAGES.c.session_id == bindparam("session_id"))
    .order_by(MESSAGES.c.id.desc())
    .limit(bindparam("limit"))
)
SELECT_TURN = (
    select(MESSAGES)
    .where(MESSAGES.c.inbound_id == bindparam("inbound_id"))
    .where(MESSAGES.c.session_id == bindparam("session_id"))
    .order_by(MESSAGES.c.id)
)
INSERT_MESSAGE = insert(MESSAGES)
INSERT_INBOX = insert(INBOX)
TOUCH_SESSION = update(SESSIONS).where(SESSIONS.c.id == bindparam("session_id")).values(
    updated_at=bindparam("now")
)
NOTIFY = text("SELECT pg_notify(:channel, :session_id)")
SET_INBOX_STATUS = update(INBOX).where(INBOX.c.id == bindparam("inbox_id")).values(
    status=bindparam("status"), error=bindparam("error"), updated_at=bindparam("now")
)


def address_key(channel: SessionChannel) -> str | None:
    """The unique key of a platform conversation; web sessions have none (a user has many)."""
    if channel.chat_id is None:
        return None
    return "|".join((channel.type, channel.team_id or "", channel.chat_id, channel.thread_id or ""))


def _fenced(work: Callable[[Connection], T], fence: Fence) -> Callable[[Connection], T]:
    """``work`` preceded, in its transaction, by the check of ``fence``."""

    def fenced(conn: Connection) -> T:
        fence.verify(conn)
        return work(conn)

    return fenced


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


class Store:
    def __init__(self, url: str, *, echo: bool = False, pool_size: int = 10) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self._echo = echo
        self._pool_size = pool_size
        self._engine: AsyncEngine | None = None
        self._sync_engine: Engine | None = None
        self._writer: ThreadPoolExecutor | None = None
        self._readers: ThreadPoolExecutor | None = None
        # SQLite has one writer at a time; queueing writers here avoids "database is locked"
        # when a deferred transaction tries to upgrade to a write lock.
        self._write_lock = asyncio.Lock()
        self._held_leases: dict[tuple[str, str], float] = {}
        """(lease, holder) -> when this process's hold lapses (monotonic): ``held_lease_count``."""

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise RuntimeError("the store is not open: call await store.open() first")
        return self._engine

    async def open(self) -> None:
        if self.is_sqlite:
            path = self.url.split("///", 1)[1] if "///" in self.url else ""
            if path and path != ":memory:":
                directory = os.path.dirname(path) or "."
                await asyncio.to_thread(os.makedirs, directory, exist_ok=True)
            engine = create_async_engine(self.url, echo=self._echo)
            event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
            if path and path != ":memory:":
                self._open_sqlite_threads(path)
        else:
            engine = create_async_engine(
                self.url, echo=self._echo, pool_size=self._pool_size, pool_pre_ping=True
            )
        self._engine = engine
        await self.create_schema()

    async def create_schema(self) -> str:
        """Make the schema on first start, migrate it with Alembic afterwards (gateway.migrate)."""
        from gateway.migrate import migrate

        async with self.engine.begin() as conn:
            if not self.is_sqlite:
                # Two processes starting together must not race on CREATE TABLE.
                await conn.exec_driver_sql("SELECT pg_advisory_xact_lock(727274)")
            return await conn.run_sync(migrate)

    def _open_sqlite_threads(self, path: str) -> None:
        """A synchronous twin of the engine for the per-turn statements.

        aiosqlite hops to its thread for every driver call (a write transaction is a dozen hops);
        running the whole transaction in one hop to a thread of our own is several times faster.
        Writes keep going through ``_write_lock``, so SQLite still sees one writer at a time.
        """
        self._sync_engine = create_engine(
            f"sqlite:///{path}", echo=self._echo, connect_args={"check_same_thread": False}
        )
        event.listen(self._sync_engine, "connect", _sqlite_pragmas)
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="chatgate-sqlite-write")
        self._readers = ThreadPoolExecutor(READER_THREADS, thread_name_prefix="chatgate-sqlite-read")

    async def _run_write(self, work: Callable[[Connection], T], fence: Fence | None = None) -> T:
        """Run ``work(connection)`` in one write transaction, in one hop; with a ``fence``, only
        while the session's lease stands (checked in the same transaction: ``gateway.store.fence``)."""
        if fence is not None:
            fence.check_local()
            work = _fenced(work, fence)
        if self._sync_engine is not None and self._writer is not None:
            async with self._write_lock:
                return await asyncio.get_running_loop().run_in_executor(self._writer, self._sync_begin, work)
        async with self._writing() as conn:
            return await conn.run_sync(work)

    async def _run_read(self, work: Callable[[Connection], T]) -> T:
        if self._sync_engine is not None and self._readers is not None:
            return await asyncio.get_running_loop().run_in_executor(self._readers, self._sync_connect, work)
        async with self._reading() as conn:
            return await conn.run_sync(work)

    def _sync_begin(self, work: Callable[[Connection], T]) -> T:
        assert self._sync_engine is not None
        with self._sync_engine.begin() as conn:
            return work(conn)

    def _sync_connect(self, work: Callable[[Connection], T]) -> T:
        assert self._sync_engine is not None
        with self._sync_engine.connect() as conn:
            return work(conn)

    async def close(self) -> None:
        for pool in (self._writer, self._readers):
            if pool is not None:
                pool.shutdown(wait=True)
        self._writer = self._readers = None
        if self._sync_engine is not None:
            self._sync_engine.dispose()
            self._sync_engine = None
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        async with AsyncSession(self.engine, expire_on_commit=False) as db:
            yield db

    @asynccontextmanager
    async def _reading(self) -> AsyncIterator[AsyncConnection]:
        """A plain connection for the per-turn reads (Core: no ORM unit-of-work on the hot path)."""
        async with self.engine.connect() as conn:
            yield conn

    @asynccontextmanager
    async def _writing(self) -> AsyncIterator[AsyncConnection]:
        """A Core write transaction, committed on exit (serialised on SQLite)."""
        if self.is_sqlite:
            async with self._write_lock, self.engine.begin() as conn:
                yield conn
        else:
            async with self.engine.begin() as conn:
                yield conn

    @asynccontextmanager
    async def write(self, fence: Fence | None = None) -> AsyncIterator[AsyncSession]:
        """A write transaction, committed on exit (serialised on SQLite); with a ``fence``, it
        commits only while the session's lease stands (``gateway.store.fence``)."""
        if fence is not None:
            fence.check_local()
        if self.is_sqlite:
            async with self._write_lock, self.session() as db:
                yield db
                if fence is not None:
                    await fence.verify_async(await db.connection())
                await db.commit()
        else:
            async with self.session() as db:
                yield db
                if fence is not None:
                    await fence.verify_async(await db.connection())
                await db.commit()

    # -- users ---------------------------------------------------------------------------

    async def resolve_user(self, platform_user: PlatformUser) -> UserInfo:
        """The stable chatgate user behind a platform identity, made on first sight."""
        async with self.session() as db:
            found = await self._user_for(db, platform_user)
        if found is not None:
            return await self._refresh_user(found, platform_user)
        try:
            async with self.write() as db:
                user = UserRow(email=platform_user.email, org_id=platform_user.org_id, name=platform_user.name)
                db.add(user)
                await db.flush()
                db.add(IdentityRow(platform=platform_user.platform, platform_user_id=platform_user.id, user_id=user.id))
            return UserInfo(user.id, user.email, user.org_id)
        except IntegrityError:  # another request made the same identity meanwhile
            async with self.session() as db:
                found = await self._user_for(db, platform_user)
            assert found is not None
            return UserInfo(found.id, found.email, found.org_id)

    async def find_user(self, platform_user: PlatformUser) -> UserInfo | None:
        """The chatgate user behind a platform identity if there is one; nothing is made."""
        async with self.session() as db:
            found = await self._user_for(db, platform_user)
        return None if found is None else UserInfo(found.id, found.email, found.org_id)

    async def _user_for(self, db: AsyncSession, platform_user: PlatformUser) -> UserRow | None:
        statement = (
            select(UserRow)
            .join(IdentityRow, col(IdentityRow.user_id) == col(UserRow.id))
            .where(IdentityRow.platform == platform_user.platform)
            .where(IdentityRow.platform_user_id == platform_user.id)
        )
        return (await db.exec(statement)).first()

    async def _refresh_user(self, row: UserRow, platform_user: PlatformUser) -> UserInfo:
        """Keep email/org current when the platform vouches for new values."""
        email = platform_user.email or row.email
        org_id = platform_user.org_id or row.org_id
        if (email, org_id) != (row.email, row.org_id):
            async with self.write() as db:
                await db.exec(update(UserRow).where(col(UserRow.id) == row.id).values(email=email, org_id=org_id))
        return UserInfo(row.id, email, org_id)

    async def get_user(self, user_id: str) -> UserInfo | None:
        def work(conn: Connection) -> UserInfo | None:
            row = conn.execute(SELECT_USER, {"user_id": user_id}).mappings().first()
            return None if row is None else UserInfo(row["id"], row["email"], row["org_id"])

        return await self._run_read(work)

    # -- sessions ------------------------------------------------------------------------

    async def create_session(
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
        async with self.write() as db:
            db.add(row)
        return SessionRecord.from_row(row)

    async def get_session(self, session_id: str) -> SessionRecord | None:
        def work(conn: Connection) -> SessionRecord | None:
            row = conn.execute(SELECT_SESSION, {"session_id": session_id}).mappings().first()
            return None if row is None else SessionRecord.from_mapping(row)

        return await self._run_read(work)

    async def turn_context(
        self, session_id: str, history_limit: int
    ) -> tuple[SessionRecord, UserInfo | None, list[MessageRecord]] | None:
        """What a turn needs, in one read: the session, its user, the recent messages."""

        def work(conn: Connection) -> tuple[SessionRecord, UserInfo | None, list[MessageRecord]] | None:
            row = conn.execute(SELECT_SESSION, {"session_id": session_id}).mappings().first()
            if row is None:
                return None
            record = SessionRecord.from_mapping(row)
            user_row = conn.execute(SELECT_USER, {"user_id": record.user_id}).mappings().first()
            messages: list[MessageRecord] = []
            if history_limit > 0:
                result = conn.execute(SELECT_RECENT, {"session_id": session_id, "limit": history_limit})
                messages = [MessageRecord.from_mapping(m) for m in reversed(result.mappings().all())]
            user = None if user_row is None else UserInfo(user_row["id"], user_row["email"], user_row["org_id"])
            return record, user, messages

        return await self._run_read(work)

    async def find_session(self, channel: SessionChannel) -> SessionRecord | None:
        key = address_key(channel)
        if key is None:
            return None
        async with self.session() as db:
            row = (await db.exec(select(SessionRow).where(SessionRow.address_key == key))).first()
        return None if row is None else SessionRecord.from_row(row)

    async def session_for_address(self, channel: SessionChannel, user: UserInfo) -> SessionRecord:
        """The one session of a platform conversation, made on its first message."""
        found = await self.find_session(channel)
        if found is not None:
            return found
        try:
            return await self.create_session(channel, user)
        except IntegrityError:
            found = await self.find_session(channel)
            assert found is not None
            return found

    async def list_sessions(
        self, *, owner_key: str | None = None, user_id: str | None = None, offset: int = 0, limit: int = 20
    ) -> tuple[list[SessionRecord], int]:
        """Newest first."""
        statement = select(SessionRow)
        count = select(func.count()).select_from(SessionRow)
        if owner_key is not None:
            statement = statement.where(SessionRow.owner_key == owner_key)
            count = count.where(SessionRow.owner_key == owner_key)
        if user_id is not None:
            statement = statement.where(SessionRow.user_id == user_id)
            count = count.where(SessionRow.user_id == user_id)
        statement = statement.order_by(col(SessionRow.id).desc()).offset(offset).limit(limit)
        async with self.session() as db:
            rows = (await db.exec(statement)).all()
            total = (await db.exec(count)).one()
        return [SessionRecord.from_row(r) for r in rows], int(total)

    async def update_session(self, session_id: str, *, fence: Fence | None = None, **values: Any) -> None:
        """Set ``title``, ``chat_name``, ``metadata``, ``owner_key`` (others are refused)."""
        allowed = {"title", "chat_name", "metadata", "owner_key"}
        unknown = set(values) - allowed
        if unknown:
            raise ValueError(f"cannot update session fields {sorted(unknown)}")
        if "metadata" in values:
            values["meta"] = values.pop("metadata")
        values["updated_at"] = utcnow()
        async with self.write(fence) as db:
            await db.exec(update(SessionRow).where(col(SessionRow.id) == session_id).values(**values))

    async def mark_entered(self, session_id: str, *, fence: Fence | None = None) -> bool:
        """True exactly once per session: the first caller runs ``@app.enter``."""
        async with self.write(fence) as db:
            result = await db.exec(
                update(SessionRow)
                .where(col(SessionRow.id) == session_id)
                .where(col(SessionRow.entered).is_(False))
                .values(entered=True)
            )
        return bool(result.rowcount)

    async def delete_session(self, session_id: str) -> bool:
        async with self.write() as db:
            await db.exec(delete(MessageRow).where(col(MessageRow.session_id) == session_id))
            await db.exec(delete(InboxRow).where(col(InboxRow.session_id) == session_id))
            await db.exec(delete(FeedbackRow).where(col(FeedbackRow.session_id) == session_id))
            result = await db.exec(delete(SessionRow).where(col(SessionRow.id) == session_id))
        return bool(result.rowcount)

    async def save_session_data(
        self, session_id: str, changed: dict[str, Any], removed: Iterable[str], *, fence: Fence | None = None
    ) -> dict[str, Any]:
        """Apply one turn's changes key by key to the stored data; returns the new snapshot.

        Merging per top-level key (rather than overwriting the whole document) is what lets two
        handlers of the same session that write different keys both keep their writes.
        """
        removed = list(removed)
        async with self.write(fence) as db:
            statement = select(SessionRow).where(SessionRow.id == session_id)
            if not self.is_sqlite:
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

    # -- messages ------------------------------------------------------------------------

    async def add_message(
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
        now = utcnow()
        values = {
            "id": message_id or new_id(),
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

        # The session's updated_at moves with inbound activity (record_inbound), not with replies:
        # one statement less on every reply.
        await self._run_write(lambda conn: conn.execute(INSERT_MESSAGE, values), fence)
        return MessageRecord.from_mapping(values)

    async def update_message(self, message_id: str, *, fence: Fence | None = None, **values: Any) -> None:
        """Set ``text``, ``status``, ``platform_refs`` or ``block`` of a stored message."""
        allowed = {"text", "status", "platform_refs", "block"}
        unknown = set(values) - allowed
        if unknown:
            raise ValueError(f"cannot update message fields {sorted(unknown)}")
        values["updated_at"] = utcnow()
        statement = update(MESSAGES).where(MESSAGES.c.id == message_id).values(**values)
        await self._run_write(lambda conn: conn.execute(statement), fence)

    async def get_message(self, message_id: str) -> MessageRecord | None:
        async with self.session() as db:
            row = await db.get(MessageRow, message_id)
        return None if row is None else MessageRecord.from_row(row)

    async def save_block(
        self, session_id: str, envelope: dict[str, Any], *, fence: Fence | None = None
    ) -> tuple[MessageRecord, list[str] | None]:
        """Store a block; a block id seen before in this session updates its row in place.

        Returns the record and the platform refs of the previous render (``None`` if new).
        """
        async with self.write(fence) as db:
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
        async with self.session() as db:
            row = (
                await db.exec(
                    select(MessageRow).where(MessageRow.session_id == session_id).where(MessageRow.block_id == block_id)
                )
            ).first()
        return None if row is None else row.block

    async def message_for_inbound(self, session_id: str, inbound_id: str, *, role: str) -> MessageRecord | None:
        """The first message of ``role`` stored for one inbound event."""
        for record in await self.turn_messages(session_id, inbound_id):
            if record.role == role:
                return record
        return None

    async def turn_messages(self, session_id: str, inbound_id: str) -> list[MessageRecord]:
        """Every message stored for one inbound event (the user's and the replies), oldest first."""
        parameters = {"inbound_id": inbound_id, "session_id": session_id}

        def work(conn: Connection) -> list[MessageRecord]:
            return [MessageRecord.from_mapping(r) for r in conn.execute(SELECT_TURN, parameters).mappings().all()]

        return await self._run_read(work)

    async def list_messages(
        self, session_id: str, *, offset: int = 0, limit: int = 20, after_id: str | None = None
    ) -> tuple[list[MessageRecord], int]:
        """Oldest first. ``after_id`` returns messages stored after that one, plus any message
        updated since (a block re-shown in place, a stream that finished)."""
        statement = select(MessageRow).where(MessageRow.session_id == session_id)
        count = select(func.count()).select_from(MessageRow).where(MessageRow.session_id == session_id)
        if after_id is not None:
            anchor = await self.get_message(after_id)
            if anchor is not None and anchor.session_id == session_id:
                condition = or_(col(MessageRow.id) > after_id, col(MessageRow.updated_at) > anchor.updated_at)
                statement = statement.where(condition)
                count = count.where(condition)
        statement = statement.order_by(col(MessageRow.id)).offset(offset).limit(limit)
        async with self.session() as db:
            rows = (await db.exec(statement)).all()
            total = (await db.exec(count)).one()
        return [MessageRecord.from_row(r) for r in rows], int(total)

    async def recent_messages(self, session_id: str, limit: int) -> list[MessageRecord]:
        """The last ``limit`` messages, oldest first (a handler's ``session.history``)."""
        if limit <= 0:
            return []
        statement = (
            select(MESSAGES).where(MESSAGES.c.session_id == session_id).order_by(MESSAGES.c.id.desc()).limit(limit)
        )

        def work(conn: Connection) -> list[MessageRecord]:
            return [MessageRecord.from_mapping(r) for r in reversed(conn.execute(statement).mappings().all())]

        return await self._run_read(work)

    # -- inbox ---------------------------------------------------------------------------

    async def record_inbound(
        self,
        session_id: str,
        dedup_key: str,
        kind: str,
        payload: dict[str, Any],
        *,
        user_text: str | None = None,
        attachments: list[dict[str, Any]] | None = None,
        notify: str | None = None,
    ) -> InboxEntry:
        """Store an inbound event, and the user's message when it carries one, in one transaction.

        A repeated ``dedup_key`` stores nothing and returns ``duplicate=True``; a ``session_id``
        that names no session stores nothing and raises ``UnknownSession``. ``notify`` names a
        PostgreSQL channel told the session id in the same transaction (delivered on commit: the
        workers of ``chatgate worker``, see ``gateway.claims``).
        """
        now = utcnow()
        inbox_id = new_id()
        message_id = new_id() if user_text is not None else None

        def work(conn: Connection) -> None:
            # The session's existence is checked here, in the write itself: no read before it.
            if conn.execute(TOUCH_SESSION, {"session_id": session_id, "now": now}).rowcount == 0:
                raise UnknownSession(f"no session {session_id!r}")
            conn.execute(INSERT_INBOX, {
                "id": inbox_id, "dedup_key": dedup_key, "session_id": session_id, "kind": kind, "payload": payload,
                "status": "pending", "attempts": 0, "error": None, "created_at": now, "updated_at": now,
            })
            if message_id is not None:
                conn.execute(INSERT_MESSAGE, {
                    "id": message_id, "session_id": session_id, "role": "user", "text": user_text, "block_id": None,
                    "block": None, "attachments": attachments or [], "inbound_id": inbox_id, "status": "complete",
                    "platform_refs": [], "created_at": now, "updated_at": now,
                })
            if notify is not None:
                conn.execute(NOTIFY, {"channel": notify, "session_id": session_id})

        try:
            await self._run_write(work)
        except IntegrityError:
            existing = await self._run_read(
                lambda conn: conn.execute(select(INBOX.c.id).where(INBOX.c.dedup_key == dedup_key)).first()
            )
            return InboxEntry(existing[0] if existing else "", True, None)
        return InboxEntry(inbox_id, False, message_id)

    async def get_inbound(self, inbox_id: str) -> InboundRecord | None:
        async with self.session() as db:
            row = await db.get(InboxRow, inbox_id)
        if row is None:
            return None
        return InboundRecord(row.id, row.session_id, row.kind, row.status, row.error, row.created_at, row.updated_at)

    async def save_feedback(self, session_id: str, inbound_id: str, value: int) -> None:
        """Record (or change) the rating of one turn."""
        async with self.write() as db:
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
        async with self.session() as db:
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

        return int(await self._run_write(settle, fence))

    async def count_attempt(self, inbox_id: str, *, fence: Fence | None = None) -> int:
        """Count one more attempt at an interrupted event; returns the new count."""
        async with self.write(fence) as db:
            await db.exec(
                update(InboxRow).where(col(InboxRow.id) == inbox_id).values(attempts=InboxRow.attempts + 1)
            )
            row = await db.get(InboxRow, inbox_id)
        return row.attempts if row is not None else 0

    async def set_inbox_status(
        self, inbox_id: str, status: str, error: str | None = None, *, fence: Fence | None = None
    ) -> None:
        parameters = {"inbox_id": inbox_id, "status": status, "error": error, "now": utcnow()}
        await self._run_write(lambda conn: conn.execute(SET_INBOX_STATUS, parameters), fence)

    async def unfinished_inbound(self) -> list[InboxRow]:
        """Events recorded but not finished (the process died): rerun at start-up, in order.

        Status stays ``pending`` while a turn runs (a write saved per turn); attempts are counted
        when an interrupted event is picked up again, see ``Dispatcher.recover``."""
        async with self.session() as db:
            rows = (
                await db.exec(
                    select(InboxRow).where(col(InboxRow.status).in_(UNFINISHED)).order_by(col(InboxRow.id))
                )
            ).all()
        return list(rows)

    async def purge_inbox(self, older_than: timedelta) -> int:
        """Forget finished events (and their dedup keys) older than ``older_than``."""
        cutoff = utcnow() - older_than
        async with self.write() as db:
            result = await db.exec(
                delete(InboxRow)
                .where(col(InboxRow.status).not_in(UNFINISHED))
                .where(col(InboxRow.created_at) < cutoff)
            )
        return int(result.rowcount or 0)

    async def inbox_backlog(self) -> tuple[int, datetime | None]:
        """How many events are recorded and not finished, and when the oldest of them was
        recorded: one query on the status index (the /metrics queue gauges)."""
        statement = select(func.count(), func.min(INBOX.c.created_at)).where(INBOX.c.status.in_(UNFINISHED))
        depth, oldest = (await self._run_read(lambda conn: conn.execute(statement).one()))
        return int(depth or 0), oldest

    async def ping(self) -> None:
        """One trivial query: the database answers (readiness probes)."""
        await self._run_read(lambda conn: conn.exec_driver_sql("SELECT 1").scalar())

    # -- files ---------------------------------------------------------------------------

    async def add_file(self, *, name: str, content_type: str, size: int, session_id: str | None) -> FileRecord:
        row = FileRow(name=name, content_type=content_type, size=size, session_id=session_id)
        async with self.write() as db:
            db.add(row)
        return FileRecord(row.id, row.name, row.content_type, row.size, row.session_id)

    async def get_file(self, file_id: str) -> FileRecord | None:
        async with self.session() as db:
            row = await db.get(FileRow, file_id)
        return None if row is None else FileRecord(row.id, row.name, row.content_type, row.size, row.session_id)

    # -- leases --------------------------------------------------------------------------

    async def acquire_lease(self, name: str, holder: str, ttl: float) -> bool:
        """Take or renew the lease ``name`` for ``ttl`` seconds; False while another holds it."""
        now = utcnow()
        expires = now + timedelta(seconds=ttl)
        lapses = time.monotonic() + ttl
        async with self.write() as db:
            result = await db.exec(
                update(LeaseRow)
                .where(col(LeaseRow.name) == name)
                .where(or_(col(LeaseRow.holder) == holder, col(LeaseRow.expires_at) < now))
                .values(holder=holder, expires_at=expires)
            )
            if result.rowcount:
                self._held_leases[(name, holder)] = lapses
                return True
        try:
            async with self.write() as db:
                db.add(LeaseRow(name=name, holder=holder, expires_at=expires))
            self._held_leases[(name, holder)] = lapses
            return True
        except IntegrityError:
            self._held_leases.pop((name, holder), None)
            return False

    async def release_lease(self, name: str, holder: str) -> None:
        self._held_leases.pop((name, holder), None)
        with suppress(Exception):
            async with self.write() as db:
                await db.exec(
                    delete(LeaseRow).where(col(LeaseRow.name) == name).where(col(LeaseRow.holder) == holder)
                )

    def held_lease_count(self) -> int:
        """Leases this process took through this store and still holds (renewed within their
        ttl, not released): the ``chatgate_leases_held`` gauge."""
        now = time.monotonic()
        for key in [key for key, lapses in self._held_leases.items() if lapses <= now]:
            del self._held_leases[key]
        return len(self._held_leases)
