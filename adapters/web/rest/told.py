"""A turn's ChatMessages from what this process told the bus, instead of reading them back.

``send_message`` answers with the turn's user message and replies. When the turn ran in this
process and every reply went out as a plain ``message`` event (``RestTurn.told_all``), the
request already holds everything the store would return: the user message's id (the core stored
it with the inbound event), its content, and each reply's id, text and time. A stored message's
``created_at`` is its id's instant (``gateway.ids``), so the answer's times are the store's.
"""

from __future__ import annotations

from typing import Any

from ..wire import id_rfc3339


def told_user_message(session_id: str, message_id: str, content: str) -> dict[str, Any]:
    """The user message the core stored with the turn's inbound event, as ``chat_message`` shows it."""
    return user_message(session_id, message_id, content, id_rfc3339(message_id), {})


def user_message(
    session_id: str, message_id: str, content: str, created_at: str, metadata: dict[str, Any]
) -> dict[str, Any]:
    """A user message in ``chat_message``'s shape."""
    return {
        "id": message_id,
        "session_id": session_id,
        "role": "user",
        "content": content,
        "metadata": metadata,
        "created_at": created_at,
    }


def told_reply(session_id: str, message: dict[str, Any]) -> dict[str, Any]:
    """A reply as the outbox published it (``outbox.assistant_message``), as ``chat_message``
    shows the stored one: a plain sent reply is ``complete`` and has no attachments."""
    message_id = str(message["id"])
    metadata: dict[str, Any] = {}
    status = message.get("status") or "complete"
    if status != "complete":
        metadata["status"] = status
    return {
        "id": message_id,
        "session_id": session_id,
        "role": "assistant",
        "content": message.get("text", ""),
        "metadata": metadata,
        "created_at": message.get("created_at") or id_rfc3339(message_id),
    }
