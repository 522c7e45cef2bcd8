"""The per-turn statements on PostgreSQL, on the asyncpg driver directly.

A stored text turn runs a handful of statements: record the event (``InboxQueries.record``),
read the session and its user (``SessionQueries.turn_context``) and the history, store the
reply (``MessageQueries.add``), mark the event done (``InboxQueries.set_status``), read the
turn's messages back (``MessageQueries.of_turn``). Through SQLAlchemy's async engine each of
them costs a pool checkout with a ping, ``run_sync`` and greenlet hops, the compiled-statement
cache and the result layer: most of a turn's CPU (issue 12). Here they run on an asyncpg pool
of their own, as prepared statements (asyncpg caches them per connection) with plain tuples in
and out; the ORM stays for everything else. Query modules branch here first when
``Database.postgres_turns`` is set (PostgreSQL only; SQLite keeps its own path).

Both paths read each other's rows identically: JSON columns hold ``json.dumps`` of the value
(what SQLAlchemy's ``JSON`` type writes, a Python ``None`` included: the JSON ``null``) and are
read with ``json.loads``; timestamps are ``timestamp with time zone``, written and read as aware
UTC datetimes. ``tests/test_postgres_turns.py`` round-trips rows both ways.

A write that is a single statement runs without ``BEGIN``/``COMMIT`` (PostgreSQL commits it on
its own, durably: ``synchronous_commit`` stays on), so it is one round trip. The recording of
an event goes out with the events recorded at the same time, in one statement
(``gateway.store.postgres_recording``); the reply and the event's status with those of
concurrent turns (``gateway.store.postgres_group_commit``), which check their
:class:`~gateway.store.fence.Fence` there; a write alone that carries a fence checks the
session's lease first in its transaction, as ``Database.run_write`` does.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

import asyncpg
from sqlalchemy.exc import IntegrityError

from gateway.ids import instant, new_id
from gateway.store.connection_lender import ConnectionLender
from gateway.store.fence import Fence
from gateway.store.postgres_blocking_reads import BlockingReads
from gateway.store.postgres_group_commit import PendingWrite, PostgresGroupCommit
from gateway.store.postgres_recording import REPEAT_HOLDER, PendingRecord, RecordBatches
from gateway.store.postgres_rows import (
    HISTORY_AT,
    MESSAGE_COLUMNS,
    MESSAGE_COLUMNS_OF_H,
    SELECT_TURN_CONTEXT_AND_HISTORY,
    SESSION_COLUMNS,
    USER_AT,
    context_read_with,
    history_of,
    message_record,
    session_record,
    user_info,
)
from gateway.store.records import InboxEntry, MessageRecord, SessionRecord
from gateway.store.tables import utcnow
from gateway.types import UnknownSession, UserInfo

__all__ = ["TURN_CONNECTION_SETTINGS", "PostgresTurns", "connect_for_turns", "listen_statements"]

log = logging.getLogger("chatgate.store")

# -- the statements ---------------------------------------------------------------------------

INSERT_MESSAGE = (
    "INSERT INTO messages (id, session_id, role, text, block_id, block, attachments, inbound_id, status,"
    " platform_refs, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11)"
)
INBOX_OF_KEY = "SELECT id FROM inbox WHERE dedup_key = $1"
SET_INBOX_STATUS = "UPDATE inbox SET status = $2, error = $3, updated_at = $4 WHERE id = $1"
SELECT_SESSION = f"SELECT {SESSION_COLUMNS} FROM sessions WHERE sessions.id = $1"
SELECT_TURN_CONTEXT = (
    f"SELECT {SESSION_COLUMNS}, users.id, users.email, users.org_id"
    " FROM sessions LEFT JOIN users ON users.id = sessions.user_id WHERE sessions.id = $1"
)
"""The session and its user in one round trip (a session whose user is gone reads ``None``)."""
SELECT_TURN = f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE inbound_id = $1 AND session_id = $2 ORDER BY id"
SELECT_HISTORY = (
    f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE session_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3"
)


@functools.cache
def record_statement(*, repeat: bool, message: bool, notify: bool, context: bool = False) -> str:
    """``InboxQueries.record`` as one statement: one round trip, and PostgreSQL commits it on its
    own (atomically: every part of it or nothing). The parameters are ``$1`` session id, ``$2``
    inbox id, ``$3`` dedup key, ``$4`` kind, ``$5`` payload, ``$6`` now, then the repeat's key,
    expiry and window start, the message's id, text and attachments, the notify channel, in that
    order, for the parts present.

    The session row is locked first, with the lock of the ``UPDATE`` of the ORM path (``FOR NO
    KEY UPDATE``: a deletion of the session waits for it, a reply's foreign key check does not);
    with a ``repeat``, only a claim taken (inserted, or taken over: the conditions of
    ``gateway.store.inbox._claim_repeat``, the claim's own event deciding whether it is live)
    admits the event, so a live claim stores nothing, not even the session's ``updated_at``.
    Returns ``found`` (the session exists), ``recorded`` and, for a repeat, ``holder`` (the claim's
    event as this statement's snapshot saw it).

    With ``context`` (not with ``notify``: the process that records then runs the turn), it also
    reads what the turn will read (``SELECT_TURN_CONTEXT_AND_HISTORY``: the session, its user,
    the history before the id ``$before`` up to ``$limit`` rows, the last two parameters), as the
    statement's snapshot sees them: before this event and its message, which is what the turn
    would read. A row per history message, each beginning with the columns above.
    """
    assert not (context and notify), "the turn runs elsewhere: nothing to read for it"
    parameters = iter(range(7, 16))
    parts = ["session AS (SELECT id FROM sessions WHERE id = $1 FOR NO KEY UPDATE)"]
    admitted = "session"
    if repeat:
        key, expires, window_start = (f"${next(parameters)}" for _ in range(3))
        parts.append(
            f"claim AS (INSERT INTO repeat_claims (key, inbox_id, expires_at)"
            f" SELECT {key}::varchar, $2::varchar, {expires}::timestamptz FROM session"
            f" ON CONFLICT (key) DO UPDATE SET inbox_id = excluded.inbox_id, expires_at = excluded.expires_at"
            f" WHERE repeat_claims.expires_at < $6 AND NOT EXISTS (SELECT 1 FROM inbox"
            f" WHERE inbox.id = repeat_claims.inbox_id AND (inbox.status IN ('pending', 'running')"
            f" OR inbox.updated_at > {window_start}::timestamptz)) RETURNING 1)"
        )
        parts.append("admitted AS (SELECT id FROM session WHERE EXISTS (SELECT 1 FROM claim))")
        admitted = "admitted"
    parts.append(f"touched AS (UPDATE sessions SET updated_at = $6 WHERE id IN (SELECT id FROM {admitted}))")
    parts.append(
        "event AS (INSERT INTO inbox (id, dedup_key, session_id, kind, payload, status, attempts, error,"
        " created_at, updated_at) SELECT $2::varchar, $3::varchar, id, $4::varchar, $5::json, 'pending', 0, NULL,"
        f" $6::timestamptz, $6::timestamptz FROM {admitted} RETURNING id)"
    )
    if message:
        message_id, text, attachments = (f"${next(parameters)}" for _ in range(3))
        parts.append(
            "message AS (INSERT INTO messages (id, session_id, role, text, block_id, block, attachments, inbound_id,"
            f" status, platform_refs, created_at, updated_at) SELECT {message_id}::varchar, $1::varchar, 'user',"
            f" {text}::text, NULL, 'null', {attachments}::json, id, 'complete', '[]', $6::timestamptz,"
            " $6::timestamptz FROM event)"
        )
    columns = ["EXISTS (SELECT 1 FROM session) AS found", "EXISTS (SELECT 1 FROM event) AS recorded"]
    if repeat:
        columns.append(f"(SELECT inbox_id FROM repeat_claims WHERE key = {key}) AS holder")
    if notify:
        # Told on commit, and only when the event was recorded (``gateway.claims``).
        columns.append(f"CASE WHEN EXISTS (SELECT 1 FROM event) THEN pg_notify(${next(parameters)}, $1) END")
    statement = "WITH " + ", ".join(parts) + " SELECT " + ", ".join(columns)
    if context:
        before, limit = f"${next(parameters)}", f"${next(parameters)}"
        statement += (
            f", {SESSION_COLUMNS}, users.id, users.email, users.org_id, {MESSAGE_COLUMNS_OF_H}"
            " FROM (SELECT 1) AS one LEFT JOIN sessions ON sessions.id = $1"
            " LEFT JOIN users ON users.id = sessions.user_id"
            " LEFT JOIN LATERAL (SELECT * FROM messages WHERE messages.session_id = sessions.id"
            f" AND messages.id < {before}::varchar ORDER BY messages.id DESC LIMIT {limit}::int) AS h ON true"
        )
    return statement


_dumps = json.dumps  # the JSON columns' text: what SQLAlchemy's ``JSON`` type writes on asyncpg


def _touched(status: str) -> int:
    """The row count of a command tag (``UPDATE 1``, ``INSERT 0 1``)."""
    return int(status.rsplit(" ", 1)[1])


# -- observing every statement (tests count them) ---------------------------------------------

_statement_listeners: list[Callable[[str], None]] = []


def listen_statements(listener: Callable[[str], None]) -> Callable[[], None]:
    """Call ``listener(sql)`` for every statement a ``PostgresTurns`` pool opened afterwards runs
    (asyncpg's query logger; ``BEGIN``/``COMMIT`` included). Returns the function that stops it.
    The raw-driver twin of SQLAlchemy's ``before_cursor_execute`` event, for tests that count."""
    _statement_listeners.append(listener)
    return lambda: _statement_listeners.remove(listener)


def _log_statement(record: Any) -> None:
    for listener in list(_statement_listeners):
        listener(record.query)


async def _observe(conn: asyncpg.Connection) -> None:
    if _statement_listeners:
        conn.add_query_logger(_log_statement)


TURN_CONNECTION_SETTINGS = {"enable_seqscan": "off", "jit": "off"}
"""The settings of the connections the per-turn statements run on.

Every statement of this module and of ``gateway.store.postgres_group_commit`` finds its rows
by a key: the plan wanted is an index lookup, at every table size. PostgreSQL does not always
choose it. asyncpg prepares a statement once per connection, and after five runs PostgreSQL
keeps a generic plan, costed with the tables' sizes at that moment, until a table is next
analyzed. On a new database it costed ``inbox`` at ten pages, and the batch's status update kept
a hash join over a sequential scan of all of ``inbox`` while the table grew: a sixth to a third
of PostgreSQL's CPU per turn in a benchmark (bench/README.md, issue 12's seventh part).
Autovacuum would have fixed the plan a minute or more later. ``enable_seqscan = off`` costs a
sequential scan out of every plan that has an index to use (it forbids nothing: a statement
with no index still runs). ``jit = off``: such a penalised plan would otherwise cost enough to
be compiled, and no statement here runs long enough for compiling to pay.

They are set by ``SET`` once the connection is open, not as startup parameters: a pooler in
front of PostgreSQL (PgBouncer) refuses a connection whose startup names a setting it does not
know. A server that refuses them (a PostgreSQL-compatible database without them) leaves the
connection on its own plans, with a warning: slower on a new database, never wrong."""

_refused_settings: set[str] = set()
"""The settings a server refused, each warned of once per process."""


async def connect_for_turns(dsn: str) -> asyncpg.Connection:
    """A connection for the per-turn statements, with ``TURN_CONNECTION_SETTINGS`` applied."""
    conn = await asyncpg.connect(dsn)
    for name, value in TURN_CONNECTION_SETTINGS.items():
        try:
            await conn.execute(f"SET {name} = {value}")
        except asyncpg.PostgresError as error:
            if name not in _refused_settings:
                _refused_settings.add(name)
                log.warning(
                    "PostgreSQL refused %s = %s for the turns' connections (%s): they run on the server's"
                    " query plans, which can scan whole tables on a new database until it is analyzed",
                    name, value, error,
                )
    await _observe(conn)
    return conn


class PostgresTurns:
    """The per-turn statements on connections of their own (see the module's docstring)."""

    def __init__(self, connections: ConnectionLender, blocking: BlockingReads) -> None:
        self._connections = connections
        self._blocking = blocking
        self.group_commit = PostgresGroupCommit(connections)
        self.recordings = RecordBatches(connections)

    @classmethod
    async def open(cls, url: str, *, max_size: int) -> PostgresTurns:
        """Up to ``max_size`` connections to the database of ``url`` (``postgresql+asyncpg://...``,
        SQLAlchemy's form), one of them opened now."""
        dsn = "postgresql://" + url.split("://", 1)[1]

        async def connect() -> asyncpg.Connection:
            return await connect_for_turns(dsn)

        connections = ConnectionLender(connect, max_size)
        await connections.open_first()
        return cls(connections, BlockingReads(connect))

    @property
    def connections(self) -> ConnectionLender:
        """The connections these statements run on (a worker's queue runs its own there too)."""
        return self._connections

    async def close(self) -> None:
        await self.recordings.drain()
        await self.group_commit.drain()
        await self._connections.close()
        await self._blocking.close()

    # -- the inbox ----------------------------------------------------------------------------

    async def record(
        self,
        session_id: str,
        dedup_key: str,
        kind: str,
        payload: dict[str, Any],
        *,
        user_text: str | None,
        attachments: list[dict[str, Any]] | None,
        repeat: tuple[str, float] | None,
        notify: str | None,
        context: tuple[str, int] | None = None,
    ) -> InboxEntry:
        """``InboxQueries.record``: in one statement, shared with the events recorded at the same
        time (``postgres_recording``); with ``context`` (``(before_id, limit)``), the turn's
        context read in it too (``InboxEntry.context``)."""
        # The event and the user's message are stamped with their ids' instant (gateway.ids).
        at_ns = time.time_ns()
        message_id = new_id(at_ns) if user_text is not None else None
        pending = PendingRecord(
            session_id, new_id(at_ns), dedup_key, kind, _dumps(payload), instant(at_ns), repeat, message_id,
            user_text, None if message_id is None else _dumps(attachments or []), notify, context,
            alone=lambda: self._record_alone(pending),
        )
        return await self.recordings.record(pending)

    async def _record_alone(self, pending: PendingRecord) -> InboxEntry:
        """One event in a statement of its own (``record_statement``)."""
        now, repeat, context = pending.now, pending.repeat, pending.context
        arguments: list[Any] = [
            pending.session_id, pending.inbox_id, pending.dedup_key, pending.kind, pending.payload, now,
        ]
        if repeat is not None:
            window = timedelta(seconds=repeat[1])
            arguments += [repeat[0], now + window, now - window]
        if pending.message_id is not None:
            arguments += [pending.message_id, pending.user_text, pending.attachments]
        if pending.notify is not None:
            arguments.append(pending.notify)
        if context is not None:
            arguments += context
        statement = record_statement(
            repeat=repeat is not None, message=pending.message_id is not None, notify=pending.notify is not None,
            context=context is not None,
        )
        async with self._connections.lend() as conn:
            try:
                rows = await conn.fetch(statement, *arguments)
            except asyncpg.IntegrityConstraintViolationError:  # the dedup key: recorded before
                existing = await conn.fetchval(INBOX_OF_KEY, pending.dedup_key)
                return InboxEntry(existing or "", True, None)
            row = rows[0]
            if not row[0]:
                raise UnknownSession(f"no session {pending.session_id!r}")
            if row[1]:
                entry = InboxEntry(pending.inbox_id, False, pending.message_id)
                if context is not None:
                    entry.context = context_read_with(
                        rows, 3 if repeat is not None else 2, now, context[0], with_history=context[1] > 0
                    )
                return entry
            assert repeat is not None  # only a live claim stops a recording of an existing session
            # A claim committed after this statement's snapshot was taken: read it now.
            holder = row[2] or await conn.fetchval(REPEAT_HOLDER, repeat[0]) or ""
            return InboxEntry(holder, True, None)

    async def set_status(self, inbox_id: str, status: str, error: str | None, fence: Fence | None) -> None:
        await self.queue_status(inbox_id, status, error, fence)

    def queue_status(self, inbox_id: str, status: str, error: str | None, fence: Fence | None) -> asyncio.Future[None]:
        """``set_status``, queued now for the next batch (``PostgresGroupCommit.enqueue``)."""
        values = (inbox_id, status, error, utcnow())
        return self.group_commit.enqueue(PendingWrite(
            False, values, fence, lambda: self._write(SET_INBOX_STATUS, values, fence)
        ))

    # -- messages -----------------------------------------------------------------------------

    async def add_message(self, values: dict[str, Any], fence: Fence | None) -> None:
        """``MessageQueries.add``: ``values`` as that method builds them."""
        await self.queue_message(values, fence)

    def queue_message(self, values: dict[str, Any], fence: Fence | None) -> asyncio.Future[None]:
        """``add_message``, queued now for the next batch (``PostgresGroupCommit.enqueue``)."""
        row = (
            values["id"], values["session_id"], values["role"], values["text"], values["block_id"],
            _dumps(values["block"]), _dumps(values["attachments"]), values["inbound_id"], values["status"],
            _dumps(values["platform_refs"]), values["created_at"],
        )
        return self.group_commit.enqueue(
            PendingWrite(True, row, fence, lambda: self._write(INSERT_MESSAGE, row, fence))
        )

    async def messages_of_turn(self, session_id: str, inbound_id: str) -> list[MessageRecord]:
        async with self._connections.lend() as conn:
            rows = await conn.fetch(SELECT_TURN, inbound_id, session_id)
        return [message_record(row) for row in rows]

    async def history(self, session_id: str, before_id: str, limit: int) -> list[MessageRecord]:
        """The last ``limit`` messages with ids before ``before_id``, oldest first."""
        return (await self.history_fetched(session_id, before_id, limit))()

    def history_now(self, session_id: str, before_id: str, limit: int) -> list[MessageRecord]:
        """``history``, the calling thread (and its event loop) waiting for it
        (``gateway.store.postgres_blocking_reads``): ``session.history`` on first use."""
        rows = self._blocking.fetch(SELECT_HISTORY, session_id, before_id, limit)
        return [message_record(row) for row in reversed(rows)]

    async def history_fetched(
        self, session_id: str, before_id: str, limit: int
    ) -> Callable[[], list[MessageRecord]]:
        """``history``'s rows, fetched now, turned into records when the function is called."""
        async with self._connections.lend() as conn:
            rows = await conn.fetch(SELECT_HISTORY, session_id, before_id, limit)
        return lambda: [message_record(row) for row in reversed(rows)]

    # -- sessions -----------------------------------------------------------------------------

    async def session(self, session_id: str) -> SessionRecord | None:
        async with self._connections.lend() as conn:
            row = await conn.fetchrow(SELECT_SESSION, session_id)
        return None if row is None else session_record(row)

    async def turn_context(self, session_id: str) -> tuple[SessionRecord, UserInfo | None] | None:
        async with self._connections.lend() as conn:
            row = await conn.fetchrow(SELECT_TURN_CONTEXT, session_id)
        if row is None:
            return None
        return session_record(row), user_info(row, USER_AT)

    async def turn_context_and_history(
        self, session_id: str, before_id: str, limit: int
    ) -> tuple[SessionRecord, UserInfo | None, Callable[[], list[MessageRecord]]] | None:
        """``turn_context`` and ``history_fetched`` in one statement."""
        async with self._connections.lend() as conn:
            rows = await conn.fetch(SELECT_TURN_CONTEXT_AND_HISTORY, session_id, before_id, limit)
        if not rows:
            return None
        return session_record(rows[0]), user_info(rows[0], USER_AT), history_of(rows, HISTORY_AT)

    # -- writes -------------------------------------------------------------------------------

    async def _write(self, statement: str, arguments: Sequence[Any], fence: Fence | None) -> str:
        """One statement; with a ``fence``, in a transaction that checks it first."""
        try:
            if fence is None:
                async with self._connections.lend() as conn:
                    return await conn.execute(statement, *arguments)
            fence.check_local()
            async with self._connections.lend() as conn, conn.transaction():
                await fence.verify_postgres(conn)
                return await conn.execute(statement, *arguments)
        except asyncpg.IntegrityConstraintViolationError as error:
            # What the ORM path raises (callers catch SQLAlchemy's exception, not the driver's).
            raise IntegrityError(statement, arguments, error) from error

