"""Plain values the Store returns, detached from any database session."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from gateway.store.tables import MessageRow, SessionRow
from gateway.types import SessionChannel, UserInfo


@dataclass
class SessionRecord:
    id: str
    channel: SessionChannel
    user_id: str
    owner_key: str | None
    title: str
    metadata: dict[str, Any]
    chat_name: str | None
    created_at: datetime
    updated_at: datetime
    data: dict[str, Any] = field(default_factory=dict)
    entered: bool = False

    @classmethod
    def from_mapping(cls, m: Any) -> SessionRecord:
        """From a Core result row of the ``sessions`` table."""
        return cls(
            id=m["id"],
            channel=SessionChannel(m["channel_type"], m["chat_id"], m["thread_id"], m["team_id"]),
            user_id=m["user_id"],
            owner_key=m["owner_key"],
            title=m["title"],
            metadata=dict(m["metadata"] or {}),
            chat_name=m["chat_name"],
            created_at=m["created_at"],
            updated_at=m["updated_at"],
            data=dict(m["data"] or {}),
            entered=bool(m["entered"]),
        )

    @classmethod
    def from_row(cls, row: SessionRow) -> SessionRecord:
        return cls(
            id=row.id,
            channel=SessionChannel(row.channel_type, row.chat_id, row.thread_id, row.team_id),
            user_id=row.user_id,
            owner_key=row.owner_key,
            title=row.title,
            metadata=dict(row.meta or {}),
            chat_name=row.chat_name,
            created_at=row.created_at,
            updated_at=row.updated_at,
            data=dict(row.data or {}),
            entered=row.entered,
        )


@dataclass
class MessageRecord:
    id: str
    session_id: str
    role: str
    text: str
    block: dict[str, Any] | None
    attachments: list[dict[str, Any]]
    inbound_id: str | None
    status: str
    platform_refs: list[str]
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_mapping(cls, m: Any) -> MessageRecord:
        """From a Core result row of the ``messages`` table."""
        return cls(
            id=m["id"],
            session_id=m["session_id"],
            role=m["role"],
            text=m["text"],
            block=m["block"],
            attachments=list(m["attachments"] or []),
            inbound_id=m["inbound_id"],
            status=m["status"],
            platform_refs=list(m["platform_refs"] or []),
            created_at=m["created_at"],
            updated_at=m["updated_at"],
        )

    @classmethod
    def from_row(cls, row: MessageRow) -> MessageRecord:
        return cls(
            id=row.id,
            session_id=row.session_id,
            role=row.role,
            text=row.text,
            block=row.block,
            attachments=list(row.attachments or []),
            inbound_id=row.inbound_id,
            status=row.status,
            platform_refs=list(row.platform_refs or []),
            created_at=row.created_at,
            updated_at=row.updated_at,
        )


@dataclass
class FileRecord:
    id: str
    name: str
    content_type: str
    size: int
    session_id: str | None


@dataclass(slots=True)
class TurnContext:
    """What a turn reads before its handler runs: the session, its user and (where it cannot be
    read on first use) its history rows, stored before ``history_before``
    (``SessionQueries.turn_context_and_history``)."""

    session: SessionRecord
    user: UserInfo | None
    history: Callable[[], list[MessageRecord]] | None
    history_before: str


@dataclass
class InboxEntry:
    """``record_inbound``'s answer: the inbox row, whether it was a duplicate, the stored message,
    and the turn's context when it was asked for and read in the same statement."""

    id: str
    duplicate: bool
    message_id: str | None
    context: TurnContext | None = None


@dataclass
class InboundRecord:
    """An inbox entry as callers outside the dispatcher see it."""

    id: str
    session_id: str
    kind: str
    status: str
    error: str | None
    created_at: datetime
    updated_at: datetime
