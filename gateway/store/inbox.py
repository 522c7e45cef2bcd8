"""The inbox: every inbound event, recorded durably before the platform is acknowledged,
with its status until its turn ends (and its dedup key for ``dispatch.dedup_retention_hours``)."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, delete, func, literal_column, or_, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from gateway.ids import floor_id, instant, new_id
from gateway.store import sqlite_turns
from gateway.store.database import Database
from gateway.store.fence import Fence
from gateway.store.records import InboundRecord, InboxEntry
from gateway.store.statements import (
    INBOX,
    INSERT_INBOX,
    INSERT_MESSAGE,
    NOTIFY,
    SET_INBOX_STATUS,
    TOUCH_SESSION,
    UNFINISHED,
    Repeated,
)
from gateway.store.tables import (
    UNFINISHED_SQL,
    InboxRow,
    RepeatClaimRow,
    utcnow,
)
from gateway.types import UnknownSession

UNFINISHED_ROWS = text(UNFINISHED_SQL)
"""The partial index's own predicate, literally (``tables.UNFINISHED_SQL`` says why), for the
queries on the inbox alone."""


class InboxQueries:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def record(
        self,
        session_id: str,
        dedup_key: str,
        kind: str,
        payload: dict[str, Any],
        *,
        user_text: str | None = None,
        attachments: list[dict[str, Any]] | None = None,
        repeat: tuple[str, float] | None = None,
        notify: str | None = None,
        context: tuple[str, int] | None = None,
    ) -> InboxEntry:
        """Store an inbound event, and the user's message when it carries one, in one transaction.

        A repeated ``dedup_key`` stores nothing and returns ``duplicate=True``; a ``session_id``
        that names no session stores nothing and raises ``UnknownSession``. ``repeat`` is
        ``(key, seconds)``: while an event recorded with the same key runs, or ended less than
        ``seconds`` ago, this one stores nothing and is answered with that event's id as a duplicate. ``notify``
        names a PostgreSQL channel told the session id in the same transaction (delivered on
        commit: the workers of ``chatgate worker``, see ``gateway.claims``).

        ``context`` is ``(before_id, limit)``: read the turn's context (the session, its user, up to
        ``limit`` messages of history before ``before_id``) in the same statement and return it in
        ``InboxEntry.context``, saving the turn a round trip. Only PostgreSQL's per-turn statements
        do (elsewhere the turn's read is in this process: ``context`` stays ``None``).
        """
        if self._db.postgres_turns is not None:
            return await self._db.postgres_turns.record(
                session_id, dedup_key, kind, payload, user_text=user_text, attachments=attachments, repeat=repeat,
                notify=notify, context=context,
            )
        # The event and the user's message are stamped with their ids' instant (gateway.ids).
        at_ns = time.time_ns()
        now = instant(at_ns)
        inbox_id = new_id(at_ns)
        message_id = new_id(at_ns) if user_text is not None else None

        def work(conn: Connection) -> None:
            # The session's existence is checked here, in the write itself: no read before it.
            if conn.execute(TOUCH_SESSION, {"session_id": session_id, "now": now}).rowcount == 0:
                raise UnknownSession(f"no session {session_id!r}")
            if repeat is not None:
                _claim_repeat(conn, repeat, inbox_id, now)
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

        def driver_work(driver: sqlite3.Connection) -> None:
            sqlite_turns.record_inbound(
                driver, session_id=session_id, inbox_id=inbox_id, dedup_key=dedup_key, kind=kind, payload=payload,
                message_id=message_id, user_text=user_text, attachments=attachments, repeat=repeat, now=now,
            )

        try:
            if self._db.has_driver:  # SQLite: never a NOTIFY (the workers of gateway.claims need PostgreSQL)
                await self._db.run_driver_write(driver_work)
            else:
                await self._db.run_write(work)
        except Repeated as repeated:
            return InboxEntry(repeated.inbox_id, True, None)
        except (IntegrityError, sqlite3.IntegrityError):
            existing = await self._db.run_read(
                lambda conn: conn.execute(select(INBOX.c.id).where(INBOX.c.dedup_key == dedup_key)).first()
            )
            return InboxEntry(existing[0] if existing else "", True, None)
        return InboxEntry(inbox_id, False, message_id)

    async def get(self, inbox_id: str) -> InboundRecord | None:
        async with self._db.session() as db:
            row = await db.get(InboxRow, inbox_id)
        if row is None:
            return None
        return InboundRecord(row.id, row.session_id, row.kind, row.status, row.error, row.created_at, row.updated_at)

    async def count_attempt(self, inbox_id: str, *, fence: Fence | None = None) -> int:
        """Count one more attempt at an interrupted event; returns the new count."""
        async with self._db.write(fence) as db:
            await db.exec(
                update(InboxRow).where(col(InboxRow.id) == inbox_id).values(attempts=InboxRow.attempts + 1)
            )
            row = await db.get(InboxRow, inbox_id)
        return row.attempts if row is not None else 0

    def queue_status(
        self, inbox_id: str, status: str, error: str | None = None, *, fence: Fence | None = None
    ) -> asyncio.Future[None]:
        """``set_status`` queued now, ahead of every write asked for after it (see
        ``MessageQueries.queue_add``). Only where ``Database.queues_writes``."""
        if self._db.postgres_turns is None:
            raise RuntimeError("queued writes need PostgreSQL's group commit (see Database.queues_writes)")
        return self._db.postgres_turns.queue_status(inbox_id, status, error, fence)

    async def set_status(
        self, inbox_id: str, status: str, error: str | None = None, *, fence: Fence | None = None
    ) -> None:
        if self._db.postgres_turns is not None:
            await self._db.postgres_turns.set_status(inbox_id, status, error, fence)
            return
        now = utcnow()
        if self._db.has_driver:
            await self._db.run_driver_write(
                lambda driver: sqlite_turns.set_inbox_status(driver, inbox_id, status, error, now), fence
            )
            return
        parameters = {"inbox_id": inbox_id, "status": status, "error": error, "now": now}
        await self._db.run_write(lambda conn: conn.execute(SET_INBOX_STATUS, parameters), fence)

    async def unfinished(self) -> list[InboxRow]:
        """Events recorded but not finished (the process died): rerun at start-up, in order.

        Status stays ``pending`` while a turn runs (a write saved per turn); attempts are counted
        when an interrupted event is picked up again, see ``Dispatcher.recover``."""
        async with self._db.session() as db:
            rows = (await db.exec(select(InboxRow).where(UNFINISHED_ROWS).order_by(col(InboxRow.id)))).all()
        return list(rows)

    async def purge(self, older_than: timedelta) -> int:
        """Forget finished events (and their dedup keys) older than ``older_than``, and repeat
        claims whose window has passed and whose event is forgotten (a claim on an event still
        recorded may be live: its window counts from the event's end, see ``_claim_repeat``)."""
        now = utcnow()
        cutoff = now - older_than
        async with self._db.write() as db:
            result = await db.exec(
                delete(InboxRow)
                .where(col(InboxRow.status).not_in(UNFINISHED))
                .where(col(InboxRow.id) < floor_id(cutoff))  # the primary key's index finds them
                .where(col(InboxRow.created_at) < cutoff)
            )
            event = select(INBOX.c.id).where(INBOX.c.id == REPEAT_CLAIMS.c.inbox_id)
            await db.exec(delete(RepeatClaimRow).where(col(RepeatClaimRow.expires_at) < now).where(~event.exists()))
        return int(result.rowcount or 0)

    async def backlog(self) -> tuple[int, datetime | None]:
        """How many events are recorded and not finished, and when the oldest of them was
        recorded: one query on the index of unfinished events (the /metrics queue gauges)."""
        statement = select(func.count(), func.min(INBOX.c.created_at)).where(UNFINISHED_ROWS)
        depth, oldest = (await self._db.run_read(lambda conn: conn.execute(statement).one()))
        return int(depth or 0), oldest


def _claim_repeat(conn: Connection, repeat: tuple[str, float], inbox_id: str, now: datetime) -> None:
    """Claim ``key`` for this event unless a live claim holds it (then raise ``Repeated``).

    A claim is live while its event runs and for ``seconds`` after it ended, as the window is in
    one process (``RestTurns``): ``expires_at`` (``seconds`` after the claim) alone would let a
    re-POST after the window start the same content again while a slow first turn still runs.
    One statement decides, on both engines: insert, or take over a claim whose window passed and
    whose event is finished since more than ``seconds`` or forgotten (``ON CONFLICT ... DO UPDATE
    ... WHERE``); no row touched means a live claim.
    """
    key, seconds = repeat
    window = timedelta(seconds=seconds)
    values = {"key": key, "inbox_id": inbox_id, "expires_at": now + window}
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    insert = dialect.insert(REPEAT_CLAIMS).values(**values)
    # The claim's own event (the conflicting row's ``inbox_id``): a plain column reference, since
    # SQLAlchemy does not correlate a subquery of ``ON CONFLICT ... WHERE`` with the target table
    # and would add ``repeat_claims`` to its FROM, asking whether *any* claim's event is live.
    event_live = (
        select(INBOX.c.id)
        .where(INBOX.c.id == literal_column("repeat_claims.inbox_id"))
        .where(or_(INBOX.c.status.in_(UNFINISHED), INBOX.c.updated_at > now - window))
        .exists()
    )
    claim = insert.on_conflict_do_update(
        index_elements=[REPEAT_CLAIMS.c.key],
        set_={"inbox_id": insert.excluded.inbox_id, "expires_at": insert.excluded.expires_at},
        where=and_(REPEAT_CLAIMS.c.expires_at < now, ~event_live),
    )
    if conn.execute(claim).rowcount == 0:
        holder = conn.execute(select(REPEAT_CLAIMS.c.inbox_id).where(REPEAT_CLAIMS.c.key == key)).scalar_one()
        raise Repeated(holder)


REPEAT_CLAIMS = RepeatClaimRow.metadata.tables["repeat_claims"]
