"""A turn's own statements on SQLite's driver (``sqlite3``): plain SQL, tuples in and out.

Every stored turn runs the same handful of statements: record the event and the user's message,
read the session and its user, store the reply, mark the event done, read the turn back. Through
SQLAlchemy each of them costs a compiled-cache lookup, an execution context and a result object
(``Connection.execute`` was a fifth of a turn's CPU, bench/README.md); on the driver, with the
SQL text fixed (``sqlite3`` keeps its statements prepared in a per-connection cache) and the
values as tuples, a statement costs a few microseconds. Everything else stays on SQLAlchemy.

The rows written here are the rows SQLAlchemy writes, byte for byte, so either side reads the
other's: timestamps as SQLModel's ``UTCDateTime`` stores them on SQLite (``DATETIME`` text in
UTC, ``2026-12-06 18:03:09.522773``, microseconds always; read back aware), JSON columns as
``json.dumps`` text (``None`` as ``null``, as SQLAlchemy's ``JSON`` type stores it), booleans as
0/1. ``tests/test_sqlite_turns.py`` checks both directions.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta
from typing import Any

from gateway.store.records import MessageRecord, SessionRecord
from gateway.store.statements import UNFINISHED, Repeated
from gateway.types import SessionChannel, UnknownSession, UserInfo


def timestamp(moment: datetime) -> str:
    """An aware ``moment`` as the tables' ``UTCDateTime`` stores it on SQLite: in UTC, as
    SQLAlchemy's ``DATETIME`` text (the offset dropped, microseconds always)."""
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    return moment.isoformat(" ", "microseconds")[:26]  # "YYYY-MM-DD HH:MM:SS.ffffff", then "+00:00"


def read_timestamp(text: str) -> datetime:
    """A stored timestamp as ``UTCDateTime`` reads it: an aware datetime in UTC."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def _json(value: Any) -> str:
    # Most of a turn's JSON columns are empty (a reply's block, attachments, platform refs):
    # their text without a call to json.dumps (five calls, 15 us, a REST turn).
    if value is None:
        return "null"
    if not value and type(value) in (list, dict):
        return "[]" if type(value) is list else "{}"
    return json.dumps(value)


def _read_json(text: str | None) -> Any:
    if text is None or text == "null":
        return None
    if text == "{}":
        return {}
    if text == "[]":
        return []
    return json.loads(text)


TOUCH_SESSION = "UPDATE sessions SET updated_at = ? WHERE id = ?"
INSERT_INBOX = (
    "INSERT INTO inbox (id, dedup_key, session_id, kind, payload, status, attempts, error, created_at, updated_at)"
    " VALUES (?, ?, ?, ?, ?, 'pending', 0, NULL, ?, ?)"
)
INSERT_MESSAGE = (
    "INSERT INTO messages (id, session_id, role, text, block_id, block, attachments, inbound_id, status,"
    " platform_refs, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
SET_INBOX_STATUS = "UPDATE inbox SET status = ?, error = ?, updated_at = ? WHERE id = ?"
CLAIM_REPEAT = (  # gateway.store.inbox._claim_repeat says why the claim is one statement
    "INSERT INTO repeat_claims (key, inbox_id, expires_at) VALUES (?, ?, ?)"
    " ON CONFLICT (key) DO UPDATE SET inbox_id = excluded.inbox_id, expires_at = excluded.expires_at"
    " WHERE repeat_claims.expires_at < ? AND NOT EXISTS (SELECT 1 FROM inbox WHERE inbox.id = repeat_claims.inbox_id"
    f" AND (inbox.status IN {UNFINISHED!r} OR inbox.updated_at > ?))"
)
REPEAT_HOLDER = "SELECT inbox_id FROM repeat_claims WHERE key = ?"
SESSION_COLUMNS = (
    "id, channel_type, chat_id, thread_id, team_id, user_id, owner_key, title, metadata, chat_name, data,"
    " entered, created_at, updated_at"
)
SELECT_SESSION = f"SELECT {SESSION_COLUMNS} FROM sessions WHERE id = ?"
SELECT_USER = "SELECT id, email, org_id FROM users WHERE id = ?"
MESSAGE_COLUMNS = (
    "id, session_id, role, text, block, attachments, inbound_id, status, platform_refs, created_at, updated_at"
)
SELECT_TURN = f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE inbound_id = ? AND session_id = ? ORDER BY id"


def record_inbound(
    driver: sqlite3.Connection,
    *,
    session_id: str,
    inbox_id: str,
    dedup_key: str,
    kind: str,
    payload: dict[str, Any],
    message_id: str | None,
    user_text: str | None,
    attachments: list[dict[str, Any]] | None,
    repeat: tuple[str, float] | None,
    now: datetime,
) -> None:
    """``InboxQueries.record``'s transaction: raises ``UnknownSession``, ``Repeated``, or
    ``sqlite3.IntegrityError`` for a repeated dedup key."""
    stamp = timestamp(now)
    # The session's existence is checked here, in the write itself: no read before it.
    if driver.execute(TOUCH_SESSION, (stamp, session_id)).rowcount == 0:
        raise UnknownSession(f"no session {session_id!r}")
    if repeat is not None:
        key, seconds = repeat
        window = timedelta(seconds=seconds)
        claim = (key, inbox_id, timestamp(now + window), stamp, timestamp(now - window))
        if driver.execute(CLAIM_REPEAT, claim).rowcount == 0:
            raise Repeated(driver.execute(REPEAT_HOLDER, (key,)).fetchone()[0])
    driver.execute(INSERT_INBOX, (inbox_id, dedup_key, session_id, kind, _json(payload), stamp, stamp))
    if message_id is not None:
        driver.execute(INSERT_MESSAGE, (
            message_id, session_id, "user", user_text, None, "null", _json(attachments or []), inbox_id,
            "complete", "[]", stamp, stamp,
        ))


def insert_message(driver: sqlite3.Connection, values: dict[str, Any]) -> None:
    """One message, from the values ``MessageQueries.add`` builds."""
    driver.execute(INSERT_MESSAGE, (
        values["id"], values["session_id"], values["role"], values["text"], values["block_id"],
        _json(values["block"]), _json(values["attachments"]), values["inbound_id"], values["status"],
        _json(values["platform_refs"]), timestamp(values["created_at"]), timestamp(values["updated_at"]),
    ))


def set_inbox_status(driver: sqlite3.Connection, inbox_id: str, status: str, error: str | None,
                     now: datetime) -> None:
    driver.execute(SET_INBOX_STATUS, (status, error, timestamp(now), inbox_id))


def session(driver: sqlite3.Connection, session_id: str) -> SessionRecord | None:
    """One session (``SessionQueries.get``)."""
    row = driver.execute(SELECT_SESSION, (session_id,)).fetchone()
    if row is None:
        return None
    (id_, channel_type, chat_id, thread_id, team_id, user_id, owner_key, title, metadata, chat_name, data,
     entered, created_at, updated_at) = row
    return SessionRecord(
        id=id_,
        channel=SessionChannel(channel_type, chat_id, thread_id, team_id),
        user_id=user_id,
        owner_key=owner_key,
        title=title,
        metadata=dict(_read_json(metadata) or {}),
        chat_name=chat_name,
        created_at=read_timestamp(created_at),
        updated_at=read_timestamp(updated_at),
        data=dict(_read_json(data) or {}),
        entered=bool(entered),
    )


def turn_context(driver: sqlite3.Connection, session_id: str) -> tuple[SessionRecord, UserInfo | None] | None:
    """The session and its user (``SessionQueries.turn_context``)."""
    record = session(driver, session_id)
    if record is None:
        return None
    user = driver.execute(SELECT_USER, (record.user_id,)).fetchone()
    return record, None if user is None else UserInfo(*user)


def turn_messages(driver: sqlite3.Connection, session_id: str, inbound_id: str) -> list[MessageRecord]:
    """Every message stored for one inbound event, oldest first (``MessageQueries.of_turn``)."""
    return [
        MessageRecord(
            id=id_,
            session_id=session,
            role=role,
            text=text,
            block=_read_json(block),
            attachments=list(_read_json(attachments) or []),
            inbound_id=inbound,
            status=status,
            platform_refs=list(_read_json(refs) or []),
            created_at=read_timestamp(created_at),
            updated_at=read_timestamp(updated_at),
        )
        for (id_, session, role, text, block, attachments, inbound, status, refs, created_at, updated_at)
        in driver.execute(SELECT_TURN, (inbound_id, session_id))
    ]
