"""Group commit on PostgreSQL: the replies and event statuses of concurrent turns share one statement.

After its event is recorded, a turn writes twice: its reply (``MessageQueries.add``) and the
event's end (``InboxQueries.set_status``). One by one, each is a round trip with a transaction
and a commit of its own: for the gateway a pool checkout, a statement and the wake-ups around it;
for PostgreSQL a backend woken, a snapshot, a commit record and a WAL flush. Here the writes
asked for while the previous batch was on its way to the database, or in the same turn of the
event loop, go out together as one statement: the rows as arrays (``unnest``), one round trip,
one commit. The busier the gateway, the bigger the batches (bench/README.md).

What does not change:

- **Nothing is acknowledged before it is committed.** A caller's ``write`` returns once the
  statement holding its row has returned, that is, committed (PostgreSQL commits a statement run
  outside a transaction on its own, durably: ``synchronous_commit`` stays on). When the
  statement fails, nothing of it is stored.
- **One failing write does not take the others down.** When PostgreSQL refuses a batch (a
  repeated message id, a reply to a session deleted meanwhile), every write of it runs again
  alone, as before, and only the one at fault raises.
- **Fences.** A write under a session's lease (``gateway.store.fence``) is stored only if the
  lease is still held: the statement checks each fence of the batch once (locking its row until
  the commit, as ``Fence.verify_postgres`` does) and writes only the rows whose fence held. The
  others' callers get ``LeaseLost``; their rows are not written.
- **Order.** Writes are sent in the order they were asked for: a write asked for after another
  goes in the same batch or a later one, never an earlier (a turn hands its session to the next
  event once its status write is asked for: ``Dispatcher._hand_over``). Two status
  writes of one event in one batch are written as one, the later winning, as in sequence (under
  the same fence; under another, the later waits for the next batch).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from gateway.store.connection_lender import ConnectionLender
from gateway.store.fence import Fence
from gateway.store.queue import LEASE_LOCK_ORDER

__all__ = ["MAX_BATCHES_IN_FLIGHT", "PostgresGroupCommit", "batch_statement"]

log = logging.getLogger("chatgate.store")

MAX_BATCHES_IN_FLIGHT = 1
"""Batches on their way to PostgreSQL at once. While one is, the writes asked for meanwhile
wait and then go together: under load a batch then holds what arrived during one round trip."""

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


class PostgresGroupCommit:
    """Collects writes and sends them in batches (see the module's docstring)."""

    def __init__(self, connections: ConnectionLender) -> None:
        self._connections = connections
        self._pending: list[PendingWrite] = []
        self._in_flight = 0
        self._scheduled = False
        self._idle = asyncio.Event()
        self._idle.set()
        self.batches = 0
        """Batches sent so far, and ``writes`` in them (the tests read them)."""
        self.writes = 0

    async def write(self, pending: PendingWrite) -> None:
        """Send ``pending`` with the next batch and return once it is committed (or raise what
        made it fail: ``LeaseLost``, or the error of its statement run alone)."""
        await self.enqueue(pending)

    def enqueue(self, pending: PendingWrite) -> asyncio.Future[None]:
        """Queue ``pending`` for the next batch now, in order; its future is done once it is
        committed (or failed). Raises ``LeaseLost`` at once for a fence already known lost."""
        if pending.fence is not None:
            pending.fence.check_local()
        self._pending.append(pending)
        self._idle.clear()
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._send_next)
        return pending.done

    async def drain(self) -> None:
        """Wait until every write asked for so far is written (before the pool closes)."""
        await self._idle.wait()

    def _send_next(self) -> None:
        self._scheduled = False
        if not self._pending or self._in_flight >= MAX_BATCHES_IN_FLIGHT:
            return  # the batch on its way starts the next one when it is back
        batch = self._take_batch()
        self._in_flight += 1
        asyncio.get_running_loop().create_task(self._send(batch))

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

    async def _send(self, batch: list[PendingWrite]) -> None:
        outcomes: Sequence[BaseException | None]
        try:
            outcomes = await self._write_batch(batch)
        except asyncpg.PostgresError as error:
            # PostgreSQL refused the statement and stored none of it: each write alone, in order.
            log.debug("a batch of %d writes was refused (%s): writing each alone", len(batch), error)
            outcomes = [await _outcome(pending.alone()) for pending in batch]
        except Exception as error:  # the connection failed: whether it committed is unknown
            outcomes = [error] * len(batch)
        except BaseException:  # cancelled (the loop is closing): so are its callers
            for pending in batch:
                pending.done.cancel()
            raise
        finally:
            self._in_flight -= 1
            if self._pending:
                self._scheduled = True
                asyncio.get_running_loop().call_soon(self._send_next)
            elif not self._in_flight:
                self._idle.set()
        for pending, outcome in zip(batch, outcomes, strict=True):
            if pending.done.done():  # its caller was cancelled; the write went out all the same
                continue
            if outcome is None:
                pending.done.set_result(None)
            else:
                pending.done.set_exception(outcome)

    async def _write_batch(self, batch: list[PendingWrite]) -> list[BaseException | None]:
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
        self.batches += 1
        self.writes += len(batch)
        outcomes: list[BaseException | None] = []
        for pending in batch:
            fence = pending.fence
            outcomes.append(None if fence is None or (fence.session_id, fence.token) in held else fence.taken_over())
        return outcomes


async def _outcome(write: Awaitable[Any]) -> BaseException | None:
    try:
        await write
    except Exception as error:
        return error
    return None
