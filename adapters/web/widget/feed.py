"""What one widget client holds, and the frames that bring it up to date without repeating.

Bus events carry whole texts (a stream's text so far, a final text); the feed remembers, per
message, the text its client already has and turns each event into the smallest frame that
extends it: a ``delta`` from the right offset, a ``done``, or a whole ``message`` when the client
has never seen that message (it connected mid-reply). Replayed records go through the same
bookkeeping, so a replay followed by live events never sends text twice.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from adapters.base import MessageRecord

from ..outbox import assistant_message
from ..wire import SignFile, widget_frame

FINISHED = frozenset({"complete", "stopped", "failed"})

Send = Callable[[dict[str, Any]], Awaitable[None]]


def utf16_len(text: str) -> int:
    """JavaScript's ``string.length``: delta offsets are counted the way the browser counts."""
    return len(text.encode("utf-16-le")) // 2


def common_prefix(a: str, b: str) -> str:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return a[:i]


class ClientFeed:
    __slots__ = ("_connection_id", "_finished", "_live_texts", "_send", "_sign_file", "_texts")

    def __init__(self, send: Send, *, connection_id: str, live_texts: dict[str, str], sign_file: SignFile) -> None:
        self._send = send
        self._connection_id = connection_id
        self._live_texts = live_texts
        self._sign_file = sign_file
        self._texts: dict[str, str] = {}
        self._finished: set[str] = set()

    def reset(self) -> None:
        """The client starts over (a new ``hello``)."""
        self._texts.clear()
        self._finished.clear()

    async def replay(self, record: MessageRecord) -> None:
        if record.status == "streaming" and record.id in self._live_texts:
            record.text = self._live_texts[record.id]
        frame = widget_frame(record, self._sign_file)
        if frame["type"] == "message":
            self._texts[record.id] = record.text
            if record.status in FINISHED:
                self._finished.add(record.id)
        await self._send(frame)

    async def deliver(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "message":
            await self._message(event)
        elif kind == "stream":
            await self._stream(event["message_id"], event["text"], event.get("turn"))
        elif kind == "done":
            await self._done(event["message_id"], event["text"], bool(event.get("stopped")), event.get("turn"))
        elif kind == "block":
            await self._send({"type": "block", "message_id": event["message_id"], "block": event["block"]})
        elif kind == "notify":
            await self._send({"type": "notify", "text": event["text"], "detail": event["detail"]})
        elif kind == "turn_end":
            await self._send({"type": "turn_end", "inbound_id": event["inbound_id"], "error": event["error"]})

    async def _message(self, event: dict[str, Any]) -> None:
        message = event["message"]
        if event.get("origin") == self._connection_id or message["id"] in self._finished:
            return
        self._texts[message["id"]] = message["text"]
        if message.get("status") in FINISHED:
            self._finished.add(message["id"])
        await self._send({"type": "message", "message": message})

    async def _stream(self, message_id: str, text: str, turn: str | None) -> None:
        if message_id in self._finished:
            return
        have = self._texts.get(message_id)
        self._texts[message_id] = text
        if have is None:
            message = assistant_message(message_id, text, status="streaming", inbound_id=turn)
            await self._send({"type": "message", "message": message})
            return
        if text == have:
            return
        prefix = have if text.startswith(have) else common_prefix(have, text)
        delta = {"type": "delta", "message_id": message_id, "offset": utf16_len(prefix), "delta": text[len(prefix) :]}
        await self._send(delta)

    async def _done(self, message_id: str, text: str, stopped: bool, turn: str | None) -> None:
        if message_id in self._finished and self._texts.get(message_id) == text:
            return
        known = message_id in self._texts
        self._texts[message_id] = text
        self._finished.add(message_id)
        if known:
            await self._send({"type": "done", "message_id": message_id, "text": text, "stopped": stopped})
            return
        status = "stopped" if stopped else "complete"
        await self._send(
            {"type": "message", "message": assistant_message(message_id, text, status=status, inbound_id=turn)}
        )
