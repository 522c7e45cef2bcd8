"""The SQLModel tables of the core. Collections and KV live in ``documents.py``.

Ids are ULIDs: 26 characters of Crockford base32, URL-safe and sortable by creation time, so
"newest first" and "after message X" are index scans on the primary key.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Column, Index, Text, UniqueConstraint, text
from sqlmodel import Field, SQLModel

from gateway.ids import new_id

UNFINISHED_SQL = "status IN ('pending', 'running')"
"""The inbox rows not finished, as SQL: the predicate of the partial index ``ix_inbox_unfinished``.
A query uses that index only when it says this very predicate with literal values (SQLite, and
PostgreSQL's generic plans, cannot prove that a list of bound parameters implies it)."""


def utcnow() -> datetime:
    return datetime.now(UTC)


class UserRow(SQLModel, table=True):
    __tablename__ = "users"

    id: str = Field(default_factory=new_id, primary_key=True, max_length=64)
    email: str | None = None
    org_id: str | None = None
    name: str | None = None
    created_at: datetime = Field(default_factory=utcnow)


class IdentityRow(SQLModel, table=True):
    """A user's identity on one platform (``telegram``/``12345``) mapped to a chatgate user."""

    __tablename__ = "identities"

    platform: str = Field(primary_key=True, max_length=32)
    platform_user_id: str = Field(primary_key=True, max_length=255)
    user_id: str = Field(index=True, foreign_key="users.id", max_length=64)


class SessionRow(SQLModel, table=True):
    __tablename__ = "sessions"
    __table_args__ = (UniqueConstraint("address_key", name="uq_sessions_address"),)

    id: str = Field(default_factory=new_id, primary_key=True, max_length=64)
    channel_type: str = Field(max_length=32)
    address_key: str | None = Field(default=None, max_length=512)
    """``type|team|chat|thread`` for platform conversations (one session each); NULL for web."""
    chat_id: str | None = None
    thread_id: str | None = None
    team_id: str | None = None
    user_id: str = Field(index=True, max_length=64)
    owner_key: str | None = Field(default=None, index=True, max_length=255)
    title: str = ""
    meta: dict[str, Any] = Field(default_factory=dict, sa_column=Column("metadata", JSON, nullable=False))
    chat_name: str | None = None
    data: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    data_revision: int = 0
    entered: bool = False
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class MessageRow(SQLModel, table=True):
    __tablename__ = "messages"
    __table_args__ = (
        Index("ix_messages_session_id_id", "session_id", "id"),
        # Only the messages that carry a block: a plain message (most of them) writes no entry.
        Index("ix_messages_block_id", "block_id", sqlite_where=text("block_id IS NOT NULL"),
              postgresql_where=text("block_id IS NOT NULL")),
    )

    id: str = Field(default_factory=new_id, primary_key=True, max_length=64)
    session_id: str = Field(foreign_key="sessions.id", ondelete="CASCADE", max_length=64)
    role: str = Field(max_length=16)
    """``user``, ``assistant``, ``system`` or ``block``."""
    text: str = Field(default="", sa_column=Column(Text, nullable=False))
    block_id: str | None = Field(default=None, max_length=128)
    block: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    attachments: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    inbound_id: str | None = Field(default=None, index=True, max_length=64)
    status: str = Field(default="complete", max_length=16)
    platform_refs: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class RepeatClaimRow(SQLModel, table=True):
    """Content whose repeats within a window are the same event (REST re-POSTs): the key (a digest
    of the caller, the session and the content) names the inbox row of the first one until
    ``expires_at``. Written in the transaction that records that event, so every process (and a
    restarted one) finds it."""

    __tablename__ = "repeat_claims"

    key: str = Field(primary_key=True, max_length=128)
    inbox_id: str = Field(max_length=64)
    expires_at: datetime = Field(index=True)


class InboxRow(SQLModel, table=True):
    """Every inbound event, recorded before it is acknowledged; the dedup key is unique.

    Every index is written by every turn (a WAL frame each, bench/README.md), so there are few:
    the unfinished events are indexed alone (a handful, whatever the inbox holds), and the
    purge finds old rows by their ids, which name the instant they were recorded (the primary
    key's index)."""

    __tablename__ = "inbox"
    __table_args__ = (
        Index("ix_inbox_unfinished", "id", "session_id", sqlite_where=text(UNFINISHED_SQL),
              postgresql_where=text(UNFINISHED_SQL)),
    )

    id: str = Field(default_factory=new_id, primary_key=True, max_length=64)
    dedup_key: str = Field(unique=True, max_length=255)
    session_id: str = Field(index=True, max_length=64)
    kind: str = Field(max_length=16)
    payload: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    status: str = Field(default="pending", max_length=16)
    """``pending`` -> ``running`` -> ``done`` | ``failed``; ``pending``/``running`` rerun at start-up."""
    attempts: int = 0
    error: str | None = None
    created_at: datetime = Field(default_factory=utcnow)
    """The instant its id names (``gateway.ids``)."""
    updated_at: datetime = Field(default_factory=utcnow)


class FileRow(SQLModel, table=True):
    __tablename__ = "files"

    id: str = Field(default_factory=new_id, primary_key=True, max_length=64)
    session_id: str | None = Field(default=None, index=True, max_length=64)
    name: str
    content_type: str
    size: int
    created_at: datetime = Field(default_factory=utcnow)


class LeaseRow(SQLModel, table=True):
    """A named lease held by one process at a time (Telegram polling, the scheduler leader)."""

    __tablename__ = "leases"

    name: str = Field(primary_key=True, max_length=128)
    holder: str = Field(max_length=128)
    expires_at: datetime


class FeedbackRow(SQLModel, table=True):
    """A user's rating of one turn (PromptRails' ``submit_feedback``)."""

    __tablename__ = "feedback"
    __table_args__ = (UniqueConstraint("session_id", "inbound_id", name="uq_feedback_turn"),)

    id: str = Field(default_factory=new_id, primary_key=True, max_length=64)
    session_id: str = Field(index=True, max_length=64)
    inbound_id: str = Field(max_length=64)
    value: int
    created_at: datetime = Field(default_factory=utcnow)
