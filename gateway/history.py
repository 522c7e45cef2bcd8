"""``session.history`` from the store, read on first use.

A handler that never looks at its history (an echo, a router, most LLM handlers that keep their
own memory) should not pay for reading the last fifty messages and decoding their JSON on every
turn: that read was half the CPU of a stored turn (issue 12). ``StoredHistory`` remembers what
to read; ``Session.history`` reads it the first time something asks, with Capsule's semantics:
the messages stored before the Session was made (the current user message excluded in a turn),
empty replies left out, at most ``history_limit`` of them, followed by whatever the Session sent
before anyone looked.

The cut-off is an id made when the Session is: ids sort in creation order (``new_id``), so what
this Session (or anyone) stores afterwards is not read twice.

On PostgreSQL a read on first use would hold the event loop up for a round trip, so a turn
fetches its history rows before the handler runs, with its session (decoded on first use), for
as long as handlers read it: ``HistoryPrefetch`` stops fetching once ``QUIET_TURNS`` turns in a
row left it alone (fetching fifty rows was a fifth of a PostgreSQL turn's CPU, and as much again
in PostgreSQL: bench/README.md), and the handler that reads it next waits for it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Literal, Protocol

from gateway.ids import new_id
from gateway.store.records import MessageRecord
from gateway.types import Attachment, Message

SENDER_BY_ROLE = {"user": "user", "assistant": "app", "system": "system", "block": "block"}


class HistoryReads(Protocol):
    """The store's messages as a history needs them (``gateway.store.messages.MessageQueries``)."""

    @property
    def reads_now(self) -> bool: ...

    @property
    def blocks_to_read_now(self) -> bool: ...

    def history_now(self, session_id: str, before_id: str, limit: int) -> list[MessageRecord]: ...

    async def history(self, session_id: str, before_id: str, limit: int) -> list[MessageRecord]: ...

    async def history_fetched(
        self, session_id: str, before_id: str, limit: int
    ) -> Callable[[], list[MessageRecord]]: ...


HistoryPrefetchMode = Literal["auto", "always"]
"""``dispatch.history_prefetch``: ``auto`` fetches while handlers read their history, ``always``
fetches for every turn (no read ever holds up the event loop)."""

QUIET_TURNS = 200
"""Turns in a row that left their history alone before ``HistoryPrefetch`` stops fetching it."""


class HistoryPrefetch:
    """Whether a turn on PostgreSQL fetches its history before its handler runs: yes in
    ``always`` mode, and in ``auto`` mode while any of the last ``quiet_turns`` turns read theirs.
    A turn that read its history (fetched or not) sets fetching going again."""

    def __init__(self, mode: HistoryPrefetchMode = "auto", *, quiet_turns: int = QUIET_TURNS) -> None:
        self.mode = mode
        self.quiet_turns = quiet_turns
        self._unread = 0  # turns in a row that did not read their history

    @property
    def wanted(self) -> bool:
        return self.mode == "always" or self._unread < self.quiet_turns

    def turn_ended(self, *, read_history: bool) -> None:
        self._unread = 0 if read_history else min(self._unread + 1, self.quiet_turns)


class StoredHistory:
    """What ``session.history`` holds until someone reads it: which session, up to when, how
    many, and (in a turn) which inbound event's user message to leave out."""

    def __init__(
        self,
        messages: HistoryReads,
        session_id: str,
        channel_type: str,
        limit: int,
        *,
        exclude_inbound: str | None = None,
        before_id: str | None = None,
        fetched: Callable[[], list[MessageRecord]] | None = None,
        may_block: bool = False,
    ) -> None:
        """``before_id`` and ``fetched``: the cut-off and its rows, when they were read with the
        session (``SessionQueries.turn_context_and_history``, see ``rows_to_fetch``).
        ``may_block``: read on first use even where that holds up the event loop (PostgreSQL,
        when ``HistoryPrefetch`` did not fetch the rows)."""
        self._messages = messages
        self._session_id = session_id
        self._channel_type = channel_type
        self._limit = limit
        self._exclude_inbound = exclude_inbound
        self._before_id = new_id() if before_id is None else before_id
        self._fetched = fetched
        self._may_block = may_block and messages.blocks_to_read_now
        self.was_read = False
        """Whether anyone read it (``HistoryPrefetch.turn_ended``)."""

    @staticmethod
    def rows_to_fetch(limit: int, *, in_turn: bool) -> int:
        """How many stored messages a history of ``limit`` reads: one more in a turn, where the
        current user message is among them, then left out."""
        return limit + 1 if in_turn and limit > 0 else limit

    @property
    def reads_now(self) -> bool:
        """Whether ``read`` works synchronously: on a SQLite file, or once ``prefetch``-ed."""
        return self._limit <= 0 or self._fetched is not None or self._messages.reads_now or self._may_block

    async def prefetch(self) -> None:
        """On a store that cannot read now (PostgreSQL: a synchronous read would stall the event
        loop; in-memory SQLite), fetch the rows now and decode them on first use: a handler that
        never looks at its history pays one round trip, not the decoding of fifty messages."""
        if self._limit > 0 and self._fetched is None and not self._messages.reads_now and not self._may_block:
            self._fetched = await self._messages.history_fetched(self._session_id, self._before_id, self._fetch)

    def read(self) -> list[Message]:
        """The history, read now (the calling thread waits; see ``Database.read_now``)."""
        self.was_read = True
        if self._limit <= 0:
            return []
        if self._fetched is not None:
            return self._select(self._fetched())
        return self._select(self._messages.history_now(self._session_id, self._before_id, self._fetch))

    async def read_async(self) -> list[Message]:
        self.was_read = True
        if self._limit <= 0:
            return []
        if self._fetched is not None:
            return self._select(self._fetched())
        return self._select(await self._messages.history(self._session_id, self._before_id, self._fetch))

    @property
    def _fetch(self) -> int:
        return self.rows_to_fetch(self._limit, in_turn=self._exclude_inbound is not None)

    def _select(self, records: list[MessageRecord]) -> list[Message]:
        excluded = self._exclude_inbound
        kept = [r for r in records if not (excluded is not None and r.inbound_id == excluded and r.role == "user")]
        return history_of(kept[-self._limit:], self._channel_type)


def history_of(records: list[MessageRecord], channel_type: str) -> list[Message]:
    """``session.history`` from stored messages, leaving out empty replies (a stream that wrote
    nothing, or was cut before its first word, is stored; Capsule never has such an entry)."""
    return [
        to_history_message(r, channel_type)
        for r in records
        if not (r.role == "assistant" and not r.text and not r.attachments)
    ]


def to_history_message(record: MessageRecord, channel_type: str = "chat") -> Message:
    text = record.text
    if record.role == "block" and record.block is not None:
        text = json.dumps(record.block)
    attachments = [Attachment(**{k: a[k] for k in ("name", "content_type", "url", "size") if k in a})
                   for a in record.attachments] or None
    return Message(
        text,
        SENDER_BY_ROLE.get(record.role, record.role),
        channel_type,
        timestamp=record.created_at.timestamp(),
        attachments=attachments,
        id=record.id,
    )
