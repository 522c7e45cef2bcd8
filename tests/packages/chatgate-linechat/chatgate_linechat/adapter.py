"""A chatgate channel over plain TCP: each line a client sends is one JSON object, and so is each
line the gateway sends back.

Client to gateway (``chat`` names the conversation, ``user`` the person)::

    {"type": "message", "chat": "c1", "user": "ada", "text": "hi", "id": "m1"}   # id: optional, dedups
    {"type": "button", "chat": "c1", "user": "ada", "block": "<block id>", "value": "0"}
    {"type": "stop", "chat": "c1", "user": "ada"}

Gateway to client::

    {"type": "accepted", "chat": "c1", "id": "m1", "duplicate": false}   # recorded (the reply may be first)
    {"type": "partial", "chat": "c1", "text": "the reply so far"}          # while a reply streams
    {"type": "message", "chat": "c1", "text": "...", "stopped": false}
    {"type": "block", "chat": "c1", "block": {"id": ..., "type": ..., "payload": {...}}}
    {"type": "status", "chat": "c1", "text": "...", "detail": "..."}
    {"type": "turn_end", "chat": "c1", "error": null}
    {"type": "error", "error": "bad_request", "detail": "what was wrong"}

A chat's replies go to the connection that last wrote to it; with none connected, sending fails
(the core logs it and the reply stays in the history).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from typing import Any, ClassVar

from adapters.base import Adapter, ButtonPress, Capabilities, GatewayContext, Inbound, Limits, MessageRef, PlatformUser
from gateway.config import Settings
from gateway.types import Message, SessionChannel

log = logging.getLogger("chatgate.linechat")

CHANNEL = "linechat"


class BadRequest(ValueError):
    """A line the protocol does not allow; the client gets an ``error`` line."""


class Connection:
    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.lock = asyncio.Lock()

    async def send(self, frame: dict[str, Any]) -> None:
        async with self.lock:  # one line at a time, never interleaved
            self.writer.write(json.dumps(frame, ensure_ascii=False).encode() + b"\n")
            await self.writer.drain()


class LineChatSink:
    min_interval = 0.0

    def __init__(self, outbox: LineChatOutbox, message_id: str) -> None:
        self.outbox = outbox
        self.message_id = message_id

    async def frame(self, text: str) -> None:
        await self.outbox.send({"type": "partial", "text": text})

    async def close(self, text: str, *, stopped: bool) -> list[MessageRef]:
        await self.outbox.send({"type": "message", "text": text, "stopped": stopped})
        return [self.message_id]


class LineChatOutbox:
    def __init__(self, adapter: LineChatAdapter, chat: str) -> None:
        self.adapter = adapter
        self.chat = chat

    async def send(self, frame: dict[str, Any]) -> None:
        connection = self.adapter.connections.get(self.chat)
        if connection is None:
            raise ConnectionError(f"linechat: no client is connected for chat {self.chat!r}")
        await connection.send({**frame, "chat": self.chat})

    async def send_text(self, message_id: str, text: str) -> list[MessageRef]:
        await self.send({"type": "message", "text": text, "stopped": False})
        return [message_id]

    def open_stream(self, message_id: str) -> LineChatSink:
        return LineChatSink(self, message_id)

    async def show_block(
        self, message_id: str, envelope: dict[str, Any], previous: list[MessageRef] | None
    ) -> list[MessageRef]:
        await self.send({"type": "block", "block": envelope})
        return [message_id]

    async def notify(self, text: str, detail: str) -> None:
        await self.send({"type": "status", "text": text, "detail": detail})

    async def end_turn(self, inbound_id: str | None, error: str | None) -> None:
        await self.send({"type": "turn_end", "error": error})


class LineChatAdapter(Adapter):
    channel_types: ClassVar[tuple[str, ...]] = (CHANNEL,)
    limits: ClassVar[Limits] = Limits(max_text=1_000_000)
    capabilities: ClassVar[Capabilities] = Capabilities(edits=False, markdown=False)

    def __init__(self, settings: Settings) -> None:
        self.config = settings.linechat
        self.gateway: GatewayContext | None = None
        self.server: asyncio.Server | None = None
        self.port: int | None = None
        self.connections: dict[str, Connection] = {}
        self._open: set[Connection] = set()

    async def start(self, gateway: GatewayContext) -> None:
        self.gateway = gateway
        self.server = await asyncio.start_server(
            self._serve, self.config.host, self.config.port, limit=self.config.max_line_bytes
        )
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is None:
            return
        self.server.close()
        for connection in list(self._open):
            connection.writer.close()
        await self.server.wait_closed()
        self.server = None

    def outbox(self, channel: SessionChannel, session_id: str, turn: str | None = None) -> LineChatOutbox:
        return LineChatOutbox(self, channel.chat_id or "")

    def describe(self) -> str:
        return f"linechat, JSON lines over TCP on {self.config.host}:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = Connection(writer)
        self._open.add(connection)
        try:
            while True:
                try:
                    line = await reader.readline()
                except ValueError:  # the stream's limit: a line longer than max_line_bytes
                    await connection.send({"type": "error", "error": "too_large",
                                           "detail": f"lines are limited to {self.config.max_line_bytes} bytes"})
                    return
                if not line:
                    return
                if not line.strip():
                    continue
                try:
                    await self._receive(connection, line)
                except BadRequest as exc:
                    await connection.send({"type": "error", "error": "bad_request", "detail": str(exc)})
        except ConnectionError:
            return
        finally:
            self._open.discard(connection)
            for chat in [chat for chat, owner in self.connections.items() if owner is connection]:
                del self.connections[chat]
            with contextlib.suppress(ConnectionError):
                writer.close()

    async def _receive(self, connection: Connection, line: bytes) -> None:
        try:
            frame = json.loads(line)
        except ValueError:
            raise BadRequest("each line must be one JSON object") from None
        if not isinstance(frame, dict):
            raise BadRequest("each line must be one JSON object")
        kind = frame.get("type")
        chat, user = _text(frame, "chat"), _text(frame, "user")
        channel = SessionChannel(CHANNEL, chat_id=chat)
        platform_user = PlatformUser(CHANNEL, user)
        client_id = frame.get("id")
        if client_id is not None and (not isinstance(client_id, str) or not client_id):
            raise BadRequest("'id' must be a non-empty string when given")
        dedup_key = f"linechat:{chat}:{client_id or secrets.token_hex(8)}"
        if kind == "message":
            text = frame.get("text")
            if not isinstance(text, str) or not text.strip():
                raise BadRequest("a message needs 'text', a non-empty string")
            inbound = Inbound("message", dedup_key, channel, platform_user, message=Message(text, "user", CHANNEL))
        elif kind == "button":
            press = ButtonPress(_text(frame, "block"), _text(frame, "value"))
            inbound = Inbound("button", dedup_key, channel, platform_user, button=press)
        elif kind == "stop":
            inbound = Inbound("stop", dedup_key, channel, platform_user)
        else:
            raise BadRequest(f"unknown type {kind!r}; use message, button or stop")
        assert self.gateway is not None
        self.connections[chat] = connection  # replies for this chat come back here
        accepted = await self.gateway.submit(inbound)
        await connection.send({"type": "accepted", "chat": chat, "id": client_id, "duplicate": accepted.duplicate})


def _text(frame: dict[str, Any], key: str) -> str:
    value = frame.get(key)
    if not isinstance(value, str) or not value.strip():
        raise BadRequest(f"{key!r} must be a non-empty string")
    return value
