"""The web channel's outbound side: everything a session sends becomes an event on the bus.

Sockets, SSE streams and waiting ``send_message`` requests subscribe to the session's topic, so the
process that runs the handler need not be the one that holds the connection (the bus is Redis
when scaled out). Events on ``session:<session_id>``:

- ``{"type": "message", "message": {...}}`` a complete message (assistant text, or a user
  message echoed to the session's other sockets, with ``origin`` naming the sending socket)
- ``{"type": "stream", "message_id", "text"}`` the whole text so far of a streaming reply;
  each subscriber turns it into deltas against what it has already sent its client
- ``{"type": "done", "message_id", "text", "stopped"}``
- ``{"type": "block", "message_id", "block"}``
- ``{"type": "notify", "text", "detail"}``
- ``{"type": "turn_end", "inbound_id", "error", "told_all"}``

Every event a handler causes also carries ``turn``: the inbound id of the turn that sent it (or
``None`` outside a turn, e.g. a scheduled broadcast), so a REST stream can pick its own turn's
content out of a session's traffic without asking the store.

``told_all`` on ``turn_end`` names the process (:attr:`TurnLedger.process`) whose outbox ran the
whole turn with every reply published as a plain ``message`` event (no stream, no failed send).
A ``send_message`` request of that process, which watched the session's topic from before the
turn began, then builds its answer from the ``message`` events it saw rather than reading the
turn back from the store (``rest/turns.py``). Anywhere else it is someone else's process id.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any, Protocol

from adapters.base import MessageRef

from .wire import id_rfc3339


class Bus(Protocol):
    async def publish(self, topic: str, event: dict[str, Any]) -> None: ...


def session_topic(session_id: str) -> str:
    return f"session:{session_id}"


def assistant_message(
    message_id: str, text: str, *, status: str = "complete", inbound_id: str | None = None
) -> dict[str, Any]:
    return {
        "id": message_id,
        "role": "assistant",
        "text": text,
        "status": status,
        "attachments": [],
        "inbound_id": inbound_id,
        "created_at": id_rfc3339(message_id),
    }


MAX_UNTOLD_TURNS = 4096
"""How many turns :class:`TurnLedger` remembers as not fully told at once (a turn interrupted by
shutdown or a lost lease never ends here; beyond this the oldest are forgotten)."""


class TurnLedger:
    """Which turns' replies this process did not publish as plain ``message`` events: a reply
    streamed (the store keeps when its stream opened and how it ended, the bus does not say) or
    a send that failed (stored as ``failed``, never published). Shared by every outbox of the
    process; a turn leaves it when its ``turn_end`` is published."""

    def __init__(self) -> None:
        self.process = secrets.token_hex(8)
        """This process, as ``turn_end``'s ``told_all`` names it."""
        self._untold: dict[str, None] = {}

    def untold(self, turn: str | None) -> None:
        if turn is None:
            return
        self._untold[turn] = None
        while len(self._untold) > MAX_UNTOLD_TURNS:
            del self._untold[next(iter(self._untold))]

    def told_all(self, turn: str | None) -> str | None:
        """``turn_end``'s ``told_all``: this process, unless ``turn`` is (was) untold here."""
        if turn is None:
            return None
        return None if self._untold.pop(turn, 1) is None else self.process


class WebStreamSink:
    """One streamed reply. Publishing is cheap, so frames are never held back here; the core's
    pump already spaces them by ``min_interval``."""

    def __init__(
        self,
        bus: Bus,
        topic: str,
        message_id: str,
        min_interval: float,
        live_texts: dict[str, str],
        turn: str | None,
    ) -> None:
        self._turn = turn
        self._bus = bus
        self._topic = topic
        self._message_id = message_id
        self.min_interval = min_interval
        self._live_texts = live_texts

    async def frame(self, text: str) -> None:
        self._live_texts[self._message_id] = text
        await self._bus.publish(
            self._topic, {"type": "stream", "message_id": self._message_id, "text": text, "turn": self._turn}
        )

    async def close(self, text: str, *, stopped: bool) -> list[MessageRef]:
        self._live_texts.pop(self._message_id, None)
        await self._bus.publish(
            self._topic,
            {"type": "done", "message_id": self._message_id, "text": text, "stopped": stopped, "turn": self._turn},
        )
        return [self._message_id]


class WebOutbox:
    """The outbox of one widget or REST session, for one turn (``turn``: the inbound id the
    handler answers, ``None`` outside a turn): every event it publishes names that turn."""

    def __init__(
        self,
        bus: Bus,
        session_id: str,
        turn: str | None = None,
        *,
        min_interval: float,
        sign_file: Callable[[str, str], str] | None = None,
        live_texts: dict[str, str] | None = None,
        ledger: TurnLedger | None = None,
    ) -> None:
        self._bus = bus
        self._session_id = session_id
        self._turn_id = turn
        self._topic = session_topic(session_id)
        self._min_interval = min_interval
        self._sign_file = sign_file
        self._live_texts = {} if live_texts is None else live_texts
        """Text so far of the replies streaming in this process (the store has it only at the
        end), so a socket that connects mid-reply starts from it rather than from nothing."""
        self._ledger = TurnLedger() if ledger is None else ledger

    async def send_text(self, message_id: str, text: str) -> list[MessageRef]:
        # A browser takes any length: no splitting on the web.
        turn = self._turn()
        event = {"type": "message", "message": assistant_message(message_id, text, inbound_id=turn), "turn": turn}
        try:
            await self._bus.publish(self._topic, event)
        except BaseException:
            self._ledger.untold(turn)  # stored as failed, never seen on the bus
            raise
        return [message_id]

    def open_stream(self, message_id: str) -> WebStreamSink:
        self._ledger.untold(self._turn())
        return WebStreamSink(self._bus, self._topic, message_id, self._min_interval, self._live_texts, self._turn())

    async def show_block(
        self, message_id: str, envelope: dict[str, Any], previous: list[MessageRef] | None
    ) -> list[MessageRef]:
        # The client replaces a block by its id, so a re-render needs no reference to the old one.
        block = self._with_file_url(envelope)
        event = {"type": "block", "message_id": message_id, "block": block, "turn": self._turn()}
        await self._bus.publish(self._topic, event)
        return [message_id]

    async def notify(self, text: str, detail: str) -> None:
        await self._bus.publish(self._topic, {"type": "notify", "text": text, "detail": detail, "turn": self._turn()})

    async def end_turn(self, inbound_id: str | None, error: str | None) -> None:
        told_all = self._ledger.told_all(inbound_id)
        event = {"type": "turn_end", "inbound_id": inbound_id, "error": error, "told_all": told_all}
        await self._bus.publish(self._topic, event)

    def _turn(self) -> str | None:
        return self._turn_id

    def _with_file_url(self, envelope: dict[str, Any]) -> dict[str, Any]:
        """An image from the file store gets a signed URL the browser can load."""
        payload = envelope.get("payload") or {}
        if envelope.get("type") == "image" and payload.get("file_id") and self._sign_file and not payload.get("url"):
            payload = {**payload, "url": self._sign_file(payload["file_id"], self._session_id)}
            return {**envelope, "payload": payload}
        return envelope
