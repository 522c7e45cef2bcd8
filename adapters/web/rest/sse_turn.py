"""One REST turn streamed as PromptRails SSE: ``execution``, ``content``..., ``done`` or ``error``.

A session's earlier turn may still be running when this one is submitted, so only events whose
``turn`` is this inbound id are streamed (``WebOutbox`` tags them). ``execution`` goes out once
the turn's user message is stored, so ``user_message_id`` is real and ``list_messages`` already
shows it.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from .. import errors
from ..context import WebContext
from ..subscription import CUT_OFF, EventQueue, next_event
from .catch_up import turn_outcome
from .sse import SSEWriter

log = logging.getLogger("chatgate.web.sse")

START_POLL_SECONDS = 0.05
"""How often to look for the stored user message until the turn has started."""
KEEPALIVE_SECONDS = 15.0
"""A comment line this often keeps proxies from closing an idle stream (the SDK ignores it);
each tick also checks that the session still exists."""
MESSAGE_SEPARATOR = "\n\n"
"""Between two messages of one turn in the concatenated content."""
ERROR_MESSAGES = {
    errors.HANDLER_ERROR: "the bot failed to answer",
    errors.TIMEOUT: "the bot took too long to answer",
}


class TurnStreamer:
    def __init__(self, ctx: WebContext, session_id: str, inbound_id: str, writer: SSEWriter) -> None:
        self._ctx = ctx
        self._session_id = session_id
        self._inbound_id = inbound_id
        self._writer = writer
        self._sent: dict[str, str] = {}
        """Per message id, the text already sent as content."""
        self._order: list[str] = []
        self._started = False
        self._wait_limit = self._limit()

    def _limit(self) -> float:
        timeout = self._ctx.settings.dispatch.handler_timeout
        return timeout + 30.0 if timeout else 6 * 3600.0

    async def run(self, queue: EventQueue) -> None:
        deadline = time.monotonic() + self._wait_limit
        await self._try_start()  # the core stores the user message with the inbound event
        while self._writer.connected:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                await self._writer.send("error", {"message": ERROR_MESSAGES[errors.TIMEOUT], "code": errors.TIMEOUT})
                return
            wake = START_POLL_SECONDS if not self._started else KEEPALIVE_SECONDS
            try:
                event = await next_event(queue, min(wake, remaining))
            except CUT_OFF:  # frames were lost (a burst, or Redis dropped): the rest from the store
                await self._catch_up(deadline - time.monotonic())
                return
            if event is None:
                await self._writer.send("error", {"message": "the stream was interrupted", "code": errors.INTERNAL})
                return
            if event is False:
                if not self._started:
                    await self._try_start()
                elif await self._ctx.core.sessions.get(self._session_id) is None:
                    # Deleted mid-turn: the core drops the turn without a turn_end.
                    await self._writer.send("error", {"message": "the session was deleted", "code": errors.NOT_FOUND})
                    return
                else:
                    await self._writer.comment("keepalive")
                continue
            if await self._on_event(event):
                return

    async def _catch_up(self, timeout: float) -> None:
        """The bus cut this stream off (it fell behind a burst of frames): finish it from the
        store, where the turn's reply is, sending the text the client has not had yet."""
        ended, error = await turn_outcome(self._ctx.core.sessions, self._inbound_id, timeout)
        if not ended:
            await self._writer.send("error", {"message": ERROR_MESSAGES[errors.TIMEOUT], "code": errors.TIMEOUT})
            return
        for message in await self._ctx.core.sessions.turn_messages(self._session_id, self._inbound_id):
            if message.role == "assistant":
                await self._content(message.id, message.text)
        await self._ensure_started()
        await self._end(error)

    async def _try_start(self) -> None:
        sessions = self._ctx.core.sessions
        user_message = await sessions.message_for_inbound(self._session_id, self._inbound_id, role="user")
        if user_message is not None:
            await self._start(user_message.id)

    async def _start(self, user_message_id: str | None) -> None:
        if self._started:
            return
        self._started = True
        data: dict[str, Any] = {"execution_id": self._inbound_id}
        if user_message_id:
            data["user_message_id"] = user_message_id
        await self._writer.send("execution", data)

    async def _ensure_started(self) -> None:
        if not self._started:
            user_message = await self._ctx.core.sessions.message_for_inbound(
                self._session_id, self._inbound_id, role="user"
            )
            await self._start(user_message.id if user_message else None)

    async def _on_event(self, event: dict[str, Any]) -> bool:
        """Handle one bus event; True when the turn is over."""
        kind = event.get("type")
        if kind == "turn_end":
            if event.get("inbound_id") != self._inbound_id:
                return False
            await self._ensure_started()
            await self._end(event.get("error"))
            return True
        if event.get("turn") != self._inbound_id:
            return False
        if kind == "message":
            message = event.get("message") or {}
            if message.get("role") == "assistant":
                await self._content(message["id"], message.get("text", ""))
        elif kind in ("stream", "done"):
            await self._content(event["message_id"], event.get("text", ""))
        elif kind == "block":
            await self._ensure_started()
            await self._writer.send("block", {"message_id": event.get("message_id"), "block": event.get("block")})
        elif kind == "notify":
            await self._ensure_started()
            await self._writer.send("notify", {"text": event.get("text", ""), "detail": event.get("detail", "")})
        return False

    async def _content(self, message_id: str, text: str) -> None:
        await self._ensure_started()
        if message_id not in self._sent:
            if self._order and any(self._sent[m] for m in self._order):
                await self._writer.send("content", {"content": MESSAGE_SEPARATOR})
            self._order.append(message_id)
            self._sent[message_id] = ""
        have = self._sent[message_id]
        if text.startswith(have) and len(text) > len(have):
            await self._writer.send("content", {"content": text[len(have) :]})
            self._sent[message_id] = text
        elif not text.startswith(have):
            # The text was rewritten (a model stream of cumulative snapshots that revised itself,
            # or ``reply.replace()``): SSE cannot take content back, so later deltas continue from
            # the new text and ``done.output`` carries the exact final text (docs/web-protocol.md).
            self._sent[message_id] = text

    def full_text(self) -> str:
        return MESSAGE_SEPARATOR.join(self._sent[m] for m in self._order if self._sent[m])

    async def _end(self, error: str | None) -> None:
        if error == errors.SESSION_DELETED:
            await self._writer.send("error", {"message": "the session was deleted", "code": errors.NOT_FOUND})
            return
        if error in ERROR_MESSAGES:
            await self._writer.send("error", {"message": ERROR_MESSAGES[error], "code": error})
            return
        output: dict[str, Any] = {"content": self.full_text()}
        if self._order:
            output["message_id"] = self._order[-1]
        if error:
            output["stopped"] = error == "stopped"
        await self._writer.send("done", {"output": output, "token_usage": {}})
