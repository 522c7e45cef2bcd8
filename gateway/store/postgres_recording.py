"""The recordings of concurrent events on PostgreSQL, several in one statement.

Recording an event (``InboxQueries.record``) is one statement on PostgreSQL
(``postgres_turns.record_statement``): it locks the session's row, takes the event's repeat
claim, inserts the event and the user's message, and reads what the turn needs. Its commit is
most of what it costs PostgreSQL: measured one at a time, 0.29-0.33 ms of PostgreSQL's CPU an
event; three events in one statement, 0.13-0.19 ms each (bench/README.md, "eighth part"). Under
load, two or three other recordings are on their way whenever one starts, so here the events
recorded while the previous batch was on its way go out together (``postgres_batches``): one
statement, one commit, each caller answered with its own ``InboxEntry`` once it is committed.

Each row keeps what the statement alone does for it:

- its session's row locked (``FOR NO KEY UPDATE``, the lock of the ``UPDATE`` that stamps its
  ``updated_at``, which a ``DELETE`` waits for and foreign keys do not), the rows of a batch in
  session id order, so that two batches never wait on each other in a circle;
- ``UnknownSession`` for a session that does not exist, for that caller only;
- its repeat claim, taken or not under the conditions of ``gateway.store.inbox._claim_repeat``;
  a live claim records nothing of that event and answers with the claim's event;
- its ``pg_notify`` on commit, when it was recorded;
- the turn's context (the session, its user, its history before ``before_id``) as the
  statement's snapshot saw it: before this event.

What may not share a statement does not: two events of one session (the second's context must
include the first, and the order in which they are recorded is theirs), two repeat claims of one
key (``ON CONFLICT`` cannot touch a row twice), repeat windows of different lengths. The later
one starts the next batch. A repeated dedup key makes PostgreSQL refuse the batch: every event of
it is then recorded alone, which answers that one as a duplicate. A batch of one is recorded by
the statement alone, as before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from itertools import groupby
from typing import Any

from gateway.store.postgres_batches import StatementBatches, outcome_of
from gateway.store.postgres_rows import MESSAGE_COLUMNS_OF_H, SESSION_COLUMNS, context_read_with
from gateway.store.records import InboxEntry
from gateway.types import UnknownSession

__all__ = ["MAX_RECORDS", "RECORDS_STATEMENT", "PendingRecord", "RecordBatches"]

MAX_RECORDS = 64
"""At most this many events in one statement: a batch holds up its first caller until the last
event is recorded."""

REPEAT_HOLDER = "SELECT inbox_id FROM repeat_claims WHERE key = $1"

_COLUMNS = (
    "ord", "session_id", "inbox_id", "dedup_key", "kind", "payload", "at", "repeat_key", "message_id", "text",
    "attachments", "notify", "before_id", "lim",
)
"""A batch's parameters: a text array per column (asyncpg has a codec of its own for ``text[]``
only; the others it looks up in the catalog on each new connection), then the repeat window in
seconds."""

_CONTEXT_AT = 5
"""Where the context's columns start in a row of ``RECORDS_STATEMENT``."""


def _records_statement() -> str:
    arrays = ", ".join(f"${n}::text[]" for n in range(1, len(_COLUMNS) + 1))
    window = f"(${len(_COLUMNS) + 1}::float8 * interval '1 second')"
    at = "a.at::timestamptz"
    return (
        f"WITH r AS MATERIALIZED (SELECT * FROM unnest({arrays}) AS r({', '.join(_COLUMNS)})),"
        # The events whose session exists, each session locked, in session id order: nothing of
        # a batch waits on a session a batch elsewhere holds while that one waits on one this holds.
        " locked AS MATERIALIZED (SELECT r.* FROM r JOIN sessions ON sessions.id = r.session_id"
        " ORDER BY sessions.id FOR NO KEY UPDATE OF sessions),"
        # The claim's expiry is the event's instant plus the window: within ON CONFLICT, which
        # sees only the table's row and the proposed one, the instant is that expiry less the
        # window, and the window's start that less the window again.
        " claim AS (INSERT INTO repeat_claims (key, inbox_id, expires_at)"
        f" SELECT l.repeat_key, l.inbox_id, l.at::timestamptz + {window} FROM locked l WHERE l.repeat_key IS NOT NULL"
        " ON CONFLICT (key) DO UPDATE SET inbox_id = excluded.inbox_id, expires_at = excluded.expires_at"
        f" WHERE repeat_claims.expires_at < excluded.expires_at - {window} AND NOT EXISTS (SELECT 1 FROM inbox"
        " WHERE inbox.id = repeat_claims.inbox_id AND (inbox.status IN ('pending', 'running')"
        f" OR inbox.updated_at > excluded.expires_at - 2 * {window})) RETURNING inbox_id),"
        " admitted AS MATERIALIZED (SELECT l.* FROM locked l"
        " WHERE l.repeat_key IS NULL OR l.inbox_id IN (SELECT claim.inbox_id FROM claim)),"
        f" touched AS (UPDATE sessions SET updated_at = {at} FROM admitted a WHERE sessions.id = a.session_id),"
        " event AS (INSERT INTO inbox (id, dedup_key, session_id, kind, payload, status, attempts, error,"
        f" created_at, updated_at) SELECT a.inbox_id, a.dedup_key, a.session_id, a.kind, a.payload::json,"
        f" 'pending', 0, NULL, {at}, {at} FROM admitted a),"
        " message AS (INSERT INTO messages (id, session_id, role, text, block_id, block, attachments, inbound_id,"
        " status, platform_refs, created_at, updated_at) SELECT a.message_id, a.session_id, 'user', a.text, NULL,"
        f" 'null', a.attachments::json, a.inbox_id, 'complete', '[]', {at}, {at} FROM admitted a"
        " WHERE a.message_id IS NOT NULL)"
        " SELECT r.ord::int, EXISTS (SELECT 1 FROM locked WHERE locked.ord = r.ord) AS found,"
        " EXISTS (SELECT 1 FROM admitted WHERE admitted.inbox_id = r.inbox_id) AS recorded,"
        " (SELECT repeat_claims.inbox_id FROM repeat_claims WHERE repeat_claims.key = r.repeat_key) AS holder,"
        # Told on commit, and only when the event was recorded (``gateway.claims``).
        " CASE WHEN r.notify IS NOT NULL AND EXISTS (SELECT 1 FROM admitted WHERE admitted.inbox_id = r.inbox_id)"
        " THEN pg_notify(r.notify, r.session_id) END,"
        f" {SESSION_COLUMNS}, users.id, users.email, users.org_id, {MESSAGE_COLUMNS_OF_H}"
        " FROM r LEFT JOIN sessions ON sessions.id = r.session_id AND r.lim IS NOT NULL"
        " LEFT JOIN users ON users.id = sessions.user_id"
        " LEFT JOIN LATERAL (SELECT * FROM messages WHERE messages.session_id = sessions.id"
        " AND messages.id < r.before_id ORDER BY messages.id DESC LIMIT r.lim::int) AS h ON true"
        " ORDER BY r.ord::int, h.id DESC"
    )


RECORDS_STATEMENT = _records_statement()
"""The recording of several events: a row per event, or per message of its history when its
context was asked for (newest first), in the batch's order."""


@dataclass(slots=True)
class PendingRecord:
    """One event to record, as ``PostgresTurns.record`` has prepared it; ``alone`` records it
    with the statement of its own."""

    session_id: str
    inbox_id: str
    dedup_key: str
    kind: str
    payload: str  # JSON text
    now: datetime
    repeat: tuple[str, float] | None
    message_id: str | None
    user_text: str | None
    attachments: str | None  # JSON text, with the message
    notify: str | None
    context: tuple[str, int] | None
    alone: Callable[[], Awaitable[InboxEntry]]
    done: asyncio.Future[InboxEntry] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class RecordBatches(StatementBatches[PendingRecord]):
    """Records concurrent events in batches (see the module's docstring)."""

    async def record(self, pending: PendingRecord) -> InboxEntry:
        """Record ``pending`` with the next batch: its entry once committed, or what made it fail."""
        return await self.enqueue(pending)

    def _take_batch(self) -> list[PendingRecord]:
        """Up to ``MAX_RECORDS`` events, in order, up to the first that may not share the batch.
        An event whose caller has gone (cancelled) before its batch left is not recorded."""
        batch: list[PendingRecord] = []
        sessions: set[str] = set()
        keys: set[str] = set()
        window: float | None = None
        taken = 0
        for pending in self._pending[:MAX_RECORDS]:
            if pending.done.cancelled():
                taken += 1
                continue
            if pending.session_id in sessions:
                break
            if pending.repeat is not None:
                key, seconds = pending.repeat
                if key in keys or (window is not None and seconds != window):
                    break
                keys.add(key)
                window = seconds
            sessions.add(pending.session_id)
            batch.append(pending)
            taken += 1
        del self._pending[:taken]
        return batch

    async def _write_batch(self, batch: list[PendingRecord]) -> list[Any]:
        if len(batch) == 1:  # the statement of its own: the cheapest for one
            return [await outcome_of(batch[0].alone())]
        columns: list[list[str | None]] = [[] for _ in _COLUMNS]
        window = 0.0
        for ord_, pending in enumerate(batch):
            repeat_key = None
            if pending.repeat is not None:
                repeat_key, window = pending.repeat
            before_id, limit = pending.context if pending.context is not None else (None, None)
            values = (
                str(ord_), pending.session_id, pending.inbox_id, pending.dedup_key, pending.kind, pending.payload,
                pending.now.isoformat(), repeat_key, pending.message_id, pending.user_text, pending.attachments,
                pending.notify, before_id, None if limit is None else str(limit),
            )
            for column, value in zip(columns, values, strict=True):
                column.append(value)
        async with self._connections.lend() as conn:
            rows = await conn.fetch(RECORDS_STATEMENT, *columns, window)
            # Committed: from here nothing may raise as if PostgreSQL had refused the batch.
            by_event = {ord_: list(event_rows) for ord_, event_rows in groupby(rows, key=lambda row: row[0])}
            return [await outcome_of(_entry(conn, pending, by_event[ord_])) for ord_, pending in enumerate(batch)]


async def _entry(conn: Any, pending: PendingRecord, rows: list[Any]) -> InboxEntry:
    """One event's answer from its rows of ``RECORDS_STATEMENT``."""
    _, found, recorded, holder, _ = rows[0][:_CONTEXT_AT]
    if not found:
        raise UnknownSession(f"no session {pending.session_id!r}")
    if recorded:
        entry = InboxEntry(pending.inbox_id, False, pending.message_id)
        if pending.context is not None:
            before_id, limit = pending.context
            entry.context = context_read_with(rows, _CONTEXT_AT, pending.now, before_id, with_history=limit > 0)
        return entry
    assert pending.repeat is not None  # only a live claim stops a recording of an existing session
    # A claim committed after this statement's snapshot was taken: read it now.
    holder = holder or await conn.fetchval(REPEAT_HOLDER, pending.repeat[0]) or ""
    return InboxEntry(holder, True, None)
