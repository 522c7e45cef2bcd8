"""The work queue of ``chatgate worker``: the inbox table itself, plus one lease per session.

Web processes record events in ``inbox`` and ``NOTIFY chatgate_inbox, '<session id>'`` in the
same transaction. A worker that hears it (or that sweeps for sessions nobody holds) claims the
session's row in ``session_leases``, reads the session's unfinished events in id order and runs
them, renewing the lease every ttl/3 and releasing it when the session has nothing left to run.
Each claim increments the row's ``token``: the fence every write of a turn checks
(``gateway.store.fence``). All times are the database's (``now()``), so the workers' clocks
never have to agree. PostgreSQL only: ``chatgate web``/``worker`` refuse SQLite.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import JSON, BigInteger, Column, DateTime, String, column, text
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import Field, SQLModel

from gateway.store.postgres_rows import HISTORY_AT, MESSAGE_COLUMNS, SELECT_TURN_CONTEXT_AND_HISTORY, context_read_with
from gateway.store.records import TurnContext

if TYPE_CHECKING:
    from gateway.store.connection_lender import ConnectionLender

log = logging.getLogger("chatgate.queue")

INBOX_CHANNEL = "chatgate_inbox"
"""The PostgreSQL notification channel a web process tells the session id of a new event on."""
UNFINISHED = ("pending", "running")


class SessionLeaseRow(SQLModel, table=True):
    """Which worker runs a session's events now, until when, under which fencing token."""

    __tablename__ = "session_leases"

    session_id: str = Field(primary_key=True, max_length=64)
    holder: str = Field(max_length=128)
    """The worker (``host:pid:random``); empty once released."""
    token: int = Field(sa_column=Column(BigInteger, nullable=False))
    """Incremented by every claim: a write under an older token is refused."""
    expires_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    previous_holder: str = Field(default="", max_length=128)
    """Who held the lease before the last claim (empty: nobody, or it was released). Set from the
    row the claim locked, so a claim racing a release tells a takeover from a hand-over."""


@dataclass(frozen=True)
class Claim:
    token: int
    previous_holder: str
    taken_over: bool
    """The lease was taken from another worker whose hold expired (it died or stalled): its
    unfinished events are recovered (interrupted streams settled, attempts counted)."""
    read_again: bool = False
    """``claim_with_events`` read the events (and context) in a statement of their own: the
    claim's snapshot did not see the lease as the claim took it (``CLAIMED``)."""


@dataclass(frozen=True)
class QueuedEvent:
    """One unfinished inbox row of a session, as a worker runs it."""

    id: str
    session_id: str
    kind: str
    payload: dict[str, Any]
    created_at: datetime
    message_id: str | None
    """The user message stored with a ``message`` event."""


LEASE_LOCK_ORDER = "session_id"
"""Every statement that locks several rows of ``session_leases`` locks them in this order: a
worker's lease renewal (``RENEW``) and a batch's fence check
(``gateway.store.postgres_group_commit``). Locked in whatever order their plans read them, a
batch of one worker and the renewal of another could
each hold a row the other waits for: PostgreSQL breaks the deadlock by failing one, and a failed
renewal can lose every lease of its worker (a turn then runs again elsewhere). ``SELECT ...
ORDER BY ... FOR NO KEY UPDATE`` locks the rows as the sort returns them: the same lock an
``UPDATE`` of non-key columns takes, in an order no plan changes."""

CLAIM = text(
    """
    INSERT INTO session_leases (session_id, holder, token, expires_at, previous_holder)
    VALUES (:session_id, :holder, 1, now() + make_interval(secs => :ttl), '')
    ON CONFLICT (session_id) DO UPDATE
        SET holder = EXCLUDED.holder, token = session_leases.token + 1, expires_at = EXCLUDED.expires_at,
            previous_holder = session_leases.holder
        WHERE session_leases.expires_at < now()
    RETURNING token, previous_holder
    """
)
RENEW = text(
    f"""
    WITH mine AS MATERIALIZED (
        SELECT session_id FROM session_leases
        WHERE holder = :holder AND session_id = ANY(:session_ids)
        ORDER BY {LEASE_LOCK_ORDER} FOR NO KEY UPDATE
    )
    UPDATE session_leases SET expires_at = now() + make_interval(secs => :ttl)
    FROM mine
    WHERE session_leases.session_id = mine.session_id
      AND EXISTS (SELECT 1 FROM sessions WHERE sessions.id = session_leases.session_id)
    RETURNING session_leases.session_id, session_leases.token
    """
)
"""The rows are locked in session id order first, as a batch's fence check locks them
(``LEASE_LOCK_ORDER``): otherwise the two could deadlock."""
RELEASE = text(
    """
    UPDATE session_leases
    SET holder = CASE WHEN :interrupted THEN holder ELSE '' END, expires_at = now() - interval '1 second'
    WHERE session_id = :session_id AND token = :token
    """
)
WAKE = text("SELECT pg_notify(:channel, :session_id)")
SESSION_EVENTS = text(
    """
    SELECT i.id, i.session_id, i.kind, i.payload, i.created_at,
           (SELECT m.id FROM messages m WHERE m.inbound_id = i.id AND m.role = 'user' ORDER BY m.id LIMIT 1)
               AS message_id
    FROM inbox i WHERE i.session_id = :session_id AND i.status IN ('pending', 'running') ORDER BY i.id
    """
).columns(
    column("id", String), column("session_id", String), column("kind", String), column("payload", JSON),
    column("created_at", DateTime(timezone=True)), column("message_id", String),
)

# The same statements on asyncpg, for the per-turn connections (``SessionQueue(connections=...)``).
CLAIM_ON_DRIVER = CLAIM.text.replace(":session_id", "$1").replace(":holder", "$2").replace(":ttl", "$3::float8")
RELEASE_ON_DRIVER = (
    RELEASE.text.replace(":interrupted", "$3::boolean").replace(":session_id", "$1").replace(":token", "$2")
)
RELEASE_AND_WAKE_ON_DRIVER = (
    f"WITH released AS ({RELEASE_ON_DRIVER.strip()} RETURNING 1) SELECT pg_notify($4, $1)"
)
"""The release and the workers told, in one statement: the notification goes out on commit
whether or not the lease was still this worker's, as the ORM path's two statements do."""
SESSION_EVENTS_ON_DRIVER = SESSION_EVENTS.element.text.replace(":session_id", "$1")
EVENT_COLUMNS = "e.id, e.session_id, e.kind, e.payload, e.created_at, e.message_id"
CLAIMED = f"""taken AS ({CLAIM_ON_DRIVER.strip()}), claimed AS (
    SELECT t.token, t.previous_holder,
           t.previous_holder = '' AND t.token - 1 = (
               SELECT COALESCE(max(s.token), 0) FROM session_leases s WHERE s.session_id = $1 AND s.expires_at < now()
           ) AS seen_as_released
    FROM taken t
)"""
"""A claim that says whether the statement's snapshot saw the lease as the claim took it: given
back (or never taken), with the token before the claim's. The rest of a statement reads what was
committed when the statement began; the claim acts on the newest row, committed later or not
(``ON CONFLICT DO UPDATE`` under READ COMMITTED). So a claim that waited for the holder's row
lock, or was merely slow, can take a lease given back after its snapshot, and what the holder
wrote just before letting go (its last event's status, the session's data) is not in that
snapshot: read from it, the finished event would run again. ``seen_as_released`` is false then,
and for a takeover (a holder that stalled past its ttl may have written after the snapshot
too): what the claim read is read again (``SessionQueue.claim_with_events``)."""
CLAIM_LEAD = "c.token, c.previous_holder, c.seen_as_released, "
_CLAIM_LEAD_COUNT = len(CLAIM_LEAD.strip(", ").split(","))
CLAIM_WITH_EVENTS_ON_DRIVER = f"""
WITH {CLAIMED}
SELECT {CLAIM_LEAD}{EVENT_COLUMNS}
FROM claimed c LEFT JOIN LATERAL ({SESSION_EVENTS_ON_DRIVER.strip()}) e ON true
ORDER BY e.id
"""
"""The claim and, when it is taken, the session's unfinished events, in one round trip: no row
while another worker holds the lease; one row with no event when nothing is unfinished. The
events are those committed when the statement began (only trusted with ``seen_as_released``:
``CLAIMED``): one committed after is notified after its commit, and its notification feeds it
to the holder (``SessionClaims._poke``)."""
_EVENT_COLUMN_COUNT = len(EVENT_COLUMNS.split(","))
_CONTEXT_COLUMN_COUNT = HISTORY_AT + len(MESSAGE_COLUMNS.split(","))


def _and_turn_context(*, lead: str, events_from: str, context_source: str | None, before: str, limit: str,
                      with_clause: str = "") -> str:
    """A session's events (``EVENT_COLUMNS`` of ``e``, from ``events_from``) and what its next
    turn reads (``SELECT_TURN_CONTEXT_AND_HISTORY``: the session, its user, the history before
    the id ``before`` up to ``limit`` rows), in one round trip and one snapshot. Every row starts
    with ``lead``; then an event's rows hold the event's columns and empty context columns, the
    context's rows the other way round. With ``context_source`` (a ``FROM`` item), the context is
    read only when it has a row (the claim was taken). ``UNION ALL`` promises no order:
    ``_events_and_context`` sorts."""
    context = SELECT_TURN_CONTEXT_AND_HISTORY.replace("$3", limit).replace("$2", before)
    context_from = f"{context_source} CROSS JOIN LATERAL ({context}) t" if context_source else f"({context}) t"
    return (
        f"{with_clause}SELECT {lead}{EVENT_COLUMNS}, {_nulls(_CONTEXT_COLUMN_COUNT)} FROM {events_from}\n"
        f"UNION ALL\nSELECT {lead}{_nulls(_EVENT_COLUMN_COUNT)}, t.* FROM {context_from}"
    )


def _nulls(count: int) -> str:
    return ", ".join(["NULL"] * count)


CLAIM_WITH_EVENTS_AND_CONTEXT_ON_DRIVER = _and_turn_context(
    with_clause=f"WITH {CLAIMED}\n",
    lead=CLAIM_LEAD,
    events_from=f"claimed c LEFT JOIN LATERAL ({SESSION_EVENTS_ON_DRIVER.strip()}) e ON true",
    context_source="claimed c", before="$4", limit="$5",
)
"""``CLAIM_WITH_EVENTS_ON_DRIVER`` and, when the lease is taken, the context of the session's
next turn (``_and_turn_context``). A worker's turn otherwise reads it with a round trip of its
own right after the claim (``SessionClaims._claim``)."""
SESSION_EVENTS_AND_CONTEXT_ON_DRIVER = _and_turn_context(
    lead="", events_from=f"({SESSION_EVENTS_ON_DRIVER.strip()}) e", context_source=None, before="$2", limit="$3",
)
"""``SESSION_EVENTS_ON_DRIVER`` and the context of the session's next turn (``_and_turn_context``):
what a worker reads when told of an event of a session it holds with nothing running."""
RELEASE_UNLESS_PENDING_ON_DRIVER = f"""
WITH pending AS MATERIALIZED (
    {SESSION_EVENTS_ON_DRIVER.strip().replace("ORDER BY i.id", "AND i.id <> ALL($3::text[]) ORDER BY i.id")}
), released AS (
    {RELEASE_ON_DRIVER.strip().replace("$3::boolean", "false")} AND NOT EXISTS (SELECT 1 FROM pending)
)
SELECT {EVENT_COLUMNS} FROM pending e ORDER BY e.id
"""
"""The lease given back unless the session has an unfinished event outside ``$3`` (those this
worker routed under the lease), in one round trip: those events, none when it was released. A
data-modifying ``WITH`` runs whether or not the query reads it."""

UNHELD_SESSIONS = text(
    """
    SELECT DISTINCT i.session_id FROM inbox i
    LEFT JOIN session_leases l ON l.session_id = i.session_id
    WHERE i.status IN ('pending', 'running') AND (l.session_id IS NULL OR l.expires_at < now())
    """
)


class SessionQueue:
    """The statements of the queue, on the store's engine (one short transaction each).

    With ``connections`` (the per-turn statements' connections on asyncpg,
    ``PostgresTurns.connections``), the statements a worker runs for every turn (claim, read the
    events, release) run there, as prepared statements with plain tuples: through SQLAlchemy's
    async engine each also cost a pool checkout with its pre-ping (a round trip of its own),
    greenlet hops and the result layer, about half of a worker's samples under load
    (docs/scaling.md). The renewal and the sweep stay on the engine."""

    def __init__(self, engine: AsyncEngine, connections: ConnectionLender | None = None) -> None:
        self.engine = engine
        self._connections = connections

    async def claim(self, session_id: str, holder: str, ttl: float) -> Claim | None:
        """Take the session's lease if nobody holds it (or the holder's expired): one statement.
        ``None`` while another worker holds it."""
        if self._connections is not None:
            async with self._connections.lend() as driver:
                row = await driver.fetchrow(CLAIM_ON_DRIVER, session_id, holder, ttl)
        else:
            async with self.engine.begin() as conn:
                row = (await conn.execute(CLAIM, {"session_id": session_id, "holder": holder, "ttl": ttl})).first()
        if row is None:
            return None
        token, previous = row[0], row[1]
        return Claim(int(token), previous or "", taken_over=bool(previous) and previous != holder)

    async def claim_with_events(
        self, session_id: str, holder: str, ttl: float, *, context: tuple[str, int] | None = None
    ) -> tuple[Claim, list[QueuedEvent], TurnContext | None] | None:
        """``claim`` and, when taken, ``events_of``: one round trip on the per-turn connections.
        With ``context`` (the history's cut-off id and how many rows of it), the same round trip
        also reads the context of the session's next turn (``None`` without it, or off the
        per-turn connections). The events and context come from a statement of their own when
        the claim's could not be trusted with them (``CLAIMED``; ``Claim.read_again``)."""
        if self._connections is None:
            claim = await self.claim(session_id, holder, ttl)
            return None if claim is None else (claim, await self.events_of(session_id), None)
        async with self._connections.lend() as driver:
            if context is None:
                records = await driver.fetch(CLAIM_WITH_EVENTS_ON_DRIVER, session_id, holder, ttl)
            else:
                before_id, limit = context
                records = await driver.fetch(
                    CLAIM_WITH_EVENTS_AND_CONTEXT_ON_DRIVER, session_id, holder, ttl, before_id, limit
                )
        if not records:
            return None
        token, previous, seen_as_released = records[0][0], records[0][1] or "", records[0][2]
        taken_over = bool(previous) and previous != holder
        if not seen_as_released:  # read in a snapshot older than the lease it took (CLAIMED): again
            log.debug("claimed session %s over a change its snapshot did not see: reading its events again",
                      session_id)
            claim = Claim(int(token), previous, taken_over, read_again=True)
            return claim, *await self.events_and_context(session_id, context)
        claim = Claim(int(token), previous, taken_over)
        at = _CLAIM_LEAD_COUNT
        if context is None:
            return claim, [_queued_event(r[at:]) for r in records if r[at] is not None], None
        return claim, *_events_and_context(records, at, context)

    async def events_of(self, session_id: str) -> list[QueuedEvent]:
        """The session's unfinished events, oldest first."""
        if self._connections is not None:
            async with self._connections.lend() as driver:
                records = await driver.fetch(SESSION_EVENTS_ON_DRIVER, session_id)
            return [_queued_event(r) for r in records]
        async with self.engine.connect() as conn:
            rows = (await conn.execute(SESSION_EVENTS, {"session_id": session_id})).mappings().all()
        return [QueuedEvent(**row) for row in rows]

    async def events_and_context(
        self, session_id: str, context: tuple[str, int] | None
    ) -> tuple[list[QueuedEvent], TurnContext | None]:
        """``events_of`` and, with ``context`` (as ``claim_with_events``), the context of the
        session's next turn, in the same round trip (``None`` off the per-turn connections)."""
        if context is None or self._connections is None:
            return await self.events_of(session_id), None
        async with self._connections.lend() as driver:
            records = await driver.fetch(SESSION_EVENTS_AND_CONTEXT_ON_DRIVER, session_id, *context)
        return _events_and_context(records, 0, context)

    async def release_unless_pending(self, session_id: str, token: int, routed: Collection[str]) -> list[QueuedEvent]:
        """Give the lease back (as ``release``) unless the session has unfinished events other
        than ``routed``: those, oldest first, and the lease kept; ``[]`` once released (or when
        ``token`` is no longer the lease's: then nothing changes)."""
        if self._connections is None:
            pending = [e for e in await self.events_of(session_id) if e.id not in routed]
            if not pending:
                await self.release(session_id, token)
            return pending
        async with self._connections.lend() as driver:
            records = await driver.fetch(RELEASE_UNLESS_PENDING_ON_DRIVER, session_id, token, list(routed))
        return [_queued_event(r) for r in records]

    async def renew(self, holder: str, session_ids: list[str], ttl: float) -> dict[str, int]:
        """Extend the leases of ``session_ids`` that ``holder`` still holds, in one statement:
        ``{session id: token}`` of those. A deleted session's lease is not renewed: its handler,
        wherever it runs, is given up at the next renewal."""
        parameters = {"holder": holder, "session_ids": session_ids, "ttl": ttl}
        async with self.engine.begin() as conn:
            rows = (await conn.execute(RENEW, parameters)).all()
        return {row.session_id: int(row.token) for row in rows}

    async def release(self, session_id: str, token: int, *, wake: bool = False, interrupted: bool = False) -> None:
        """Give the lease back (expired at once: the next event's worker claims it at once).
        ``wake``: notify the workers in the same transaction, as a new event would (a stopping
        worker hands unfinished events over without waiting for a sweep). ``interrupted``: a
        handler was cut off; the holder stays named, so the next claim is a takeover and
        recovers the event as after a crash (attempt counted, stored replies not repeated)."""
        if self._connections is not None:
            async with self._connections.lend() as driver:
                if wake:
                    await driver.execute(RELEASE_AND_WAKE_ON_DRIVER, session_id, token, interrupted, INBOX_CHANNEL)
                else:
                    await driver.execute(RELEASE_ON_DRIVER, session_id, token, interrupted)
            return
        parameters = {"session_id": session_id, "token": token, "interrupted": interrupted}
        async with self.engine.begin() as conn:
            await conn.execute(RELEASE, parameters)
            if wake:
                await conn.execute(WAKE, {"channel": INBOX_CHANNEL, "session_id": session_id})

    async def unheld_sessions(self) -> list[str]:
        """Sessions with unfinished events that no worker holds (never claimed, released, or
        whose holder's lease expired)."""
        async with self.engine.connect() as conn:
            return [row[0] for row in (await conn.execute(UNHELD_SESSIONS)).all()]


def _queued_event(record: Any) -> QueuedEvent:
    """A ``QueuedEvent`` from the six columns of ``SESSION_EVENTS`` as asyncpg returns them."""
    event_id, session_id, kind, payload, created_at, message_id = record
    return QueuedEvent(event_id, session_id, kind, json.loads(payload), created_at, message_id)


def _events_and_context(
    records: list[Any], at: int, context: tuple[str, int]
) -> tuple[list[QueuedEvent], TurnContext | None]:
    """The events (oldest first) and the turn's context in the rows of a statement of
    ``_and_turn_context``, its events' columns from ``at``; no context when the session is gone
    (its turn finds that out itself)."""
    context_at = at + _EVENT_COLUMN_COUNT
    events = sorted(
        (_queued_event(r[at:context_at]) for r in records if r[at] is not None), key=lambda event: event.id
    )
    rows = sorted(  # the history newest first, as context_read_with takes it
        (r for r in records if r[context_at] is not None), key=lambda r: r[context_at + HISTORY_AT] or "",
        reverse=True,
    )
    before_id, limit = context
    read = context_read_with(rows, context_at, None, before_id, with_history=limit > 0) if rows else None
    return events, read
