"""Group commit on PostgreSQL: the replies and event statuses of concurrent turns share one statement.

After its event is recorded, a turn writes twice: its reply (``MessageQueries.add``) and the
event's end (``InboxQueries.set_status``). One by one, each is a round trip with a transaction
and a commit of its own: for the gateway a pool checkout, a statement and the wake-ups around it;
for PostgreSQL a backend woken, a snapshot, a commit record and a WAL flush. Here the writes
asked for while the previous batch was on its way to the database, or in the same turn of the
event loop, go out together as one statement: the rows as arrays (``unnest``), one round trip,
one commit. The busier the gateway, the bigger the batches (bench/README.md).

The batching itself (``postgres_batches``) answers no caller before its row is committed, runs
every row of a refused batch again alone (a repeated message id, a reply to a session deleted
meanwhile: only the row at fault fails), and keeps the order rows were asked for in: a turn
hands its session to the next event once its status write is asked for
(``Dispatcher._hand_over``). What this kind adds:

- **Fences.** A write under a session's lease (``gateway.store.fence``) is stored only if the
  lease is still held: the statement checks each fence of the batch once (locking its row until
  the commit, as ``Fence.verify_postgres`` does) and writes only the rows whose fence held. The
  others' callers get ``LeaseLost``; their rows are not written.
- **One status per event.** Two status writes of one event in one batch are written as one, the
  later winning, as in sequence (under the same fence; under another, the later waits for the
  next batch).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.store.fence import Fence
from gateway.store.postgres_batches import StatementBatches
from gateway.store.queue import LEASE_LOCK_ORDER

__all__ = ["PendingWrite", "PostgresGroupCommit", "batch_statement"]

MAX_BATCH = 256
"""At most this many writes in one statement (its arrays): a batch holds up its first caller
until the last row is written."""

_MESSAGE_COLUMNS = (
    "id", "session_id", "role", "text", "block_id", "block::json", "attachments::json", "inbound_id", "status",
    "platform_refs::json", "at::timestamptz",
)
_STATUS_COLUMNS = ("id", "status", "error", "at::timestamptz")
_FENCE_COLUMNS = ("fence_session", "fence_token::bigint")
"""Every column of a batch goes as an array of text and is cast in the statement: asyncpg has
a codec of its own for ``text[]`` only, and looks the others (``varchar[]``, ``timestamptz[]``,
``bigint[]``) up in the catalog on every new connection: three round trips."""


@functools.cache
def batch_statement(*, messages: bool, statuses: bool, fenced: bool) -> str:
    """The statement of a batch with these parts: its parameters are, in order, an array per
    message column (``_MESSAGE_COLUMNS``), then per status column (``_STATUS_COLUMNS``), each
    followed by the rows' fences when ``fenced``; then the batch's distinct fences. It returns
    the fences that held (none without ``fenced``)."""
    parameters = iter(range(1, 64))
    parts: list[str] = []

    def unnest(columns: Sequence[str], alias: str) -> str:
        """``unnest`` of a text array per column, named by the column (its cast dropped)."""
        arrays = ", ".join(f"${next(parameters)}::text[]" for _ in columns)
        return f"unnest({arrays}) AS {alias}({', '.join(column.split('::')[0] for column in columns)})"

    def typed(columns: Sequence[str], alias: str) -> str:
        return ", ".join(f"{alias}.{column}" for column in columns)

    def held(alias: str) -> str:
        return (
            f" AND ({alias}.fence_session IS NULL OR EXISTS (SELECT 1 FROM held"
            f" WHERE held.session_id = {alias}.fence_session AND held.token = {alias}.fence_token::bigint))"
        ) if fenced else ""

    if messages:
        columns = _MESSAGE_COLUMNS + (_FENCE_COLUMNS if fenced else ())
        parts.append(
            "added AS (INSERT INTO messages (id, session_id, role, text, block_id, block, attachments, inbound_id,"
            f" status, platform_refs, created_at, updated_at) SELECT {typed(_MESSAGE_COLUMNS, 'm')}, m.at::timestamptz"
            f" FROM {unnest(columns, 'm')} WHERE true{held('m')})"
        )
    if statuses:
        columns = _STATUS_COLUMNS + (_FENCE_COLUMNS if fenced else ())
        parts.append(
            "marked AS (UPDATE inbox SET status = s.status, error = s.error, updated_at = s.at::timestamptz"
            f" FROM {unnest(columns, 's')} WHERE inbox.id = s.id{held('s')})"
        )
    if not fenced:
        return "WITH " + ", ".join(parts) + " SELECT NULL, NULL WHERE false"
    # The fence check of gateway.store.fence for every fence of the batch at once, the lease rows
    # locked in session id order (LEASE_LOCK_ORDER).
    fences = unnest(("session_id", "token"), "f")
    parts.insert(0, (
        "held AS MATERIALIZED (SELECT session_leases.session_id, session_leases.token"
        f" FROM {fences} JOIN session_leases ON session_leases.session_id = f.session_id"
        " AND session_leases.token = f.token::bigint"
        " WHERE EXISTS (SELECT 1 FROM sessions WHERE sessions.id = f.session_id)"
        f" ORDER BY session_leases.{LEASE_LOCK_ORDER} FOR NO KEY UPDATE OF session_leases)"
    ))
    return "WITH " + ", ".join(parts) + " SELECT session_id, token FROM held"


@dataclass(slots=True)
class PendingWrite:
    """One caller's row: a message (``values`` in ``_MESSAGE_COLUMNS``' order) or an event's
    status (``_STATUS_COLUMNS``' order), its last value the time it was written, and what
    runs it alone when the batch is refused."""

    is_message: bool
    values: tuple[Any, ...]
    fence: Fence | None
    alone: Callable[[], Awaitable[Any]]
    done: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class PostgresGroupCommit(StatementBatches[PendingWrite]):
    """Collects replies and statuses and sends them in batches (see the module's docstring)."""

    async def write(self, pending: PendingWrite) -> None:
        """Send ``pending`` with the next batch and return once it is committed (or raise what
        made it fail: ``LeaseLost``, or the error of its statement run alone)."""
        await self.enqueue(pending)

    def enqueue(self, pending: PendingWrite) -> asyncio.Future[None]:
        """Queue ``pending`` for the next batch now, in order; its future is done once it is
        committed (or failed). Raises ``LeaseLost`` at once for a fence already known lost."""
        if pending.fence is not None:
            pending.fence.check_local()
        return super().enqueue(pending)

    def _take_batch(self) -> list[PendingWrite]:
        """Up to ``MAX_BATCH`` pending writes, in order. A batch writes one status per event (the
        later), which is what writing both in sequence leaves only if both pass the same fence:
        a status of an event already in the batch under another fence starts the next batch."""
        fences: dict[str, Fence | None] = {}
        taken = 0
        for pending in self._pending[:MAX_BATCH]:
            if not pending.is_message:
                inbox_id = pending.values[0]
                if inbox_id in fences and fences[inbox_id] is not pending.fence:
                    break
                fences[inbox_id] = pending.fence
            taken += 1
        batch, self._pending = self._pending[:taken], self._pending[taken:]
        return batch

    async def _write_batch(self, batch: list[PendingWrite]) -> list[Any]:
        messages: list[PendingWrite] = []
        statuses: dict[str, PendingWrite] = {}  # the last status of each event
        fences: dict[tuple[str, int], Fence] = {}
        for pending in batch:
            if pending.is_message:
                messages.append(pending)
            else:
                statuses[pending.values[0]] = pending
            if pending.fence is not None:
                fences[pending.fence.session_id, pending.fence.token] = pending.fence
        arguments: list[list[Any]] = []
        for rows in (messages, list(statuses.values())):
            if not rows:
                continue
            *columns, written_at = zip(*(row.values for row in rows), strict=True)
            arguments.extend(list(column) for column in columns)
            arguments.append([moment.isoformat() for moment in written_at])
            if fences:
                arguments.append([row.fence.session_id if row.fence else None for row in rows])
                arguments.append([str(row.fence.token) if row.fence else None for row in rows])
        if fences:
            arguments.append([session_id for session_id, _ in fences])
            arguments.append([str(token) for _, token in fences])
        statement = batch_statement(messages=bool(messages), statuses=bool(statuses), fenced=bool(fences))
        async with self._connections.lend() as conn:
            held = {(row[0], row[1]) for row in await conn.fetch(statement, *arguments)}
        outcomes: list[BaseException | None] = []
        for pending in batch:
            fence = pending.fence
            outcomes.append(None if fence is None or (fence.session_id, fence.token) in held else fence.taken_over())
        return outcomes

