"""The per-turn statements, built once with bind parameters, and the keys they use.

SQLAlchemy then skips building each statement and its cache key on every call (measured: a
third of a turn's store time). Shared by the query modules of ``gateway/store/``.
"""

from __future__ import annotations

from sqlalchemy import bindparam, insert, select, text, update

from gateway.store.tables import InboxRow, MessageRow, SessionRow, UserRow
from gateway.types import SessionChannel

UNFINISHED = ("pending", "running")

# The Core tables behind the models.
SESSIONS = SessionRow.metadata.tables["sessions"]
USERS = UserRow.metadata.tables["users"]
MESSAGES = MessageRow.metadata.tables["messages"]
INBOX = InboxRow.metadata.tables["inbox"]

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
SELECT_HISTORY = (  # session.history: the last messages stored before the Session was made
    select(MESSAGES)
    .where(MESSAGES.c.session_id == bindparam("session_id"))
    .where(MESSAGES.c.id < bindparam("before_id"))
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
"""Tells the workers listening on a channel that a session has work (``gateway.claims``)."""
SET_INBOX_STATUS = update(INBOX).where(INBOX.c.id == bindparam("inbox_id")).values(
    status=bindparam("status"), error=bindparam("error"), updated_at=bindparam("now")
)


class Repeated(Exception):
    """Raised inside the write that records an event, to roll it back: a live repeat claim
    holds its content, so it is a repeat of the event ``inbox_id``."""

    def __init__(self, inbox_id: str) -> None:
        super().__init__(inbox_id)
        self.inbox_id = inbox_id


def address_key(channel: SessionChannel) -> str | None:
    """The unique key of a platform conversation; web sessions have none (a user has many)."""
    if channel.chat_id is None:
        return None
    return "|".join((channel.type, channel.team_id or "", channel.chat_id, channel.thread_id or ""))
