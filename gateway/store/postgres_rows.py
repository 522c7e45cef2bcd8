"""The columns the per-turn statements on PostgreSQL read, and the records their rows become.

Shared by the statements run one at a time (``postgres_turns``) and the recordings batched
across concurrent events (``postgres_recording``). The column encodings are those of
SQLAlchemy's ``JSON`` type on asyncpg: ``json.dumps`` text, read with ``json.loads``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from gateway.store.records import MessageRecord, SessionRecord, TurnContext
from gateway.types import SessionChannel, UserInfo

MESSAGE_COLUMNS = (
    "id, session_id, role, text, block, attachments, inbound_id, status, platform_refs, created_at, updated_at"
)
SESSION_COLUMNS = (
    "sessions.id, sessions.channel_type, sessions.chat_id, sessions.thread_id, sessions.team_id,"
    " sessions.user_id, sessions.owner_key, sessions.title, sessions.metadata, sessions.chat_name,"
    " sessions.created_at, sessions.updated_at, sessions.data, sessions.entered"
)
MESSAGE_COLUMNS_OF_H = ", ".join(f"h.{column.strip()}" for column in MESSAGE_COLUMNS.split(","))
USER_AT = 14  # where the user's columns start in a row of the session, its user and its history
HISTORY_AT = 17  # where the message columns start in it

SELECT_TURN_CONTEXT_AND_HISTORY = (
    f"SELECT {SESSION_COLUMNS}, users.id, users.email, users.org_id, {MESSAGE_COLUMNS_OF_H}"
    " FROM sessions LEFT JOIN users ON users.id = sessions.user_id"
    " LEFT JOIN LATERAL (SELECT * FROM messages WHERE messages.session_id = sessions.id AND messages.id < $2"
    " ORDER BY messages.id DESC LIMIT $3) AS h ON true"
    " WHERE sessions.id = $1"
)
"""The session, its user and its history (newest first) in one round trip: a row per message,
or one row with no message. The history is fetched while handlers read it (a read on first use
would hold the event loop up: ``gateway.history.HistoryPrefetch``), in this round trip, not one
of its own."""

loads = json.loads


def json_list(text: str) -> list[Any]:
    # Most messages have no attachments and no platform refs: "[]" needs no parser (a history
    # read decodes fifty messages a turn).
    return [] if text == "[]" else list(loads(text) or [])


def json_or_none(text: str | None) -> Any:
    return None if text is None or text == "null" else loads(text)


def message_record(row: Sequence[Any]) -> MessageRecord:
    return MessageRecord(
        row[0], row[1], row[2], row[3], json_or_none(row[4]), json_list(row[5]), row[6], row[7],
        json_list(row[8]), row[9], row[10],
    )


def session_record(row: Sequence[Any]) -> SessionRecord:
    return SessionRecord(
        id=row[0],
        channel=SessionChannel(row[1], row[2], row[3], row[4]),
        user_id=row[5],
        owner_key=row[6],
        title=row[7],
        metadata=dict(loads(row[8]) or {}),
        chat_name=row[9],
        created_at=row[10],
        updated_at=row[11],
        data=dict(loads(row[12]) or {}),
        entered=bool(row[13]),
    )


def user_info(row: Sequence[Any], at: int) -> UserInfo | None:
    """The user's columns of a turn-context row, from ``at`` (``None``: the user is gone)."""
    return None if row[at] is None else UserInfo(row[at], row[at + 1], row[at + 2])


def history_of(rows: Sequence[Any], at: int) -> Callable[[], list[MessageRecord]]:
    """The history in turn-context rows (newest first, a message's columns from ``at``; none in
    a row of a session with no message), decoded oldest first when the function is called."""
    history = [row[at:] for row in rows if row[at] is not None]
    return lambda: [message_record(row) for row in reversed(history)]


def context_read_with(
    rows: Sequence[Any], at: int, now: datetime | None, before_id: str, *, with_history: bool
) -> TurnContext:
    """The turn's context from the rows of ``record_statement(context=True)`` (or of a worker's
    claim), its columns from ``at`` (``SELECT_TURN_CONTEXT_AND_HISTORY``'s), the history's rows
    newest first. The session row is as the statement's snapshot saw it: for a recording, before
    the statement touched its ``updated_at``, which is ``now`` since (``None``: untouched).
    Without ``with_history`` (no rows were asked for), its history is left to be read on first use."""
    session = session_record(rows[0][at:])
    if now is not None:
        session.updated_at = now
    history = history_of(rows, at + HISTORY_AT) if with_history else None
    return TurnContext(session, user_info(rows[0], at + USER_AT), history, before_id)
