"""A local Socket Mode endpoint: the WebSocket side of Slack, speaking its envelope protocol.

Slack's Socket Mode: the app calls ``apps.connections.open`` with its app token (``xapp-``) and
gets a ``wss://`` URL; on connect Slack sends ``{"type": "hello", ...}``; every event, interaction
or slash command then arrives as an envelope ``{"envelope_id", "type": "events_api" |
"interactive" | "slash_commands", "payload", "accepts_response_payload", "retry_attempt",
"retry_reason"}`` that the app must acknowledge with ``{"envelope_id": ...}`` (optionally a
``payload``) within 3 seconds, or Slack delivers it again with ``retry_attempt`` + 1.

``FakeSocketMode`` registers its ``ws://`` URL with a :class:`FakeSlack`, so apps.connections.open
on that fake hands it out.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from tests.fakes.slack_api import FakeSlack


@dataclass
class Delivery:
    envelope_id: str
    attempts: int = 0
    ack: dict[str, Any] | None = None
    acked: asyncio.Event = field(default_factory=asyncio.Event)


class FakeSocketMode:
    def __init__(self, slack: FakeSlack) -> None:
        self.slack = slack
        self.port = 0
        self.connections: list[web.WebSocketResponse] = []
        self.connected = asyncio.Event()
        self.received: list[dict[str, Any]] = []
        self.deliveries: dict[str, Delivery] = {}
        self.connect_count = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> FakeSocketMode:
        app = web.Application()
        app.router.add_get("/link", self._socket)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.slack.socket_url = f"ws://127.0.0.1:{self.port}/link?ticket={secrets.token_hex(8)}"
        return self

    async def stop(self) -> None:
        for ws in list(self.connections):
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        self.connections.append(ws)
        self.connect_count += 1
        await ws.send_json(
            {
                "type": "hello",
                "num_connections": len(self.connections),
                "debug_info": {"host": "fake-socket-mode", "approximate_connection_time": 18060},
                "connection_info": {"app_id": "A0001"},
            }
        )
        self.connected.set()
        try:
            async for message in ws:
                if message.type != WSMsgType.TEXT:
                    continue
                try:
                    data = json.loads(message.data)
                except json.JSONDecodeError:
                    await ws.send_json({"type": "error", "error": "invalid_json"})
                    continue
                self.received.append(data)
                delivery = self.deliveries.get(str(data.get("envelope_id")))
                if delivery is not None and not delivery.acked.is_set():
                    delivery.ack = data
                    delivery.acked.set()
        finally:
            self.connections.remove(ws)
            if not self.connections:
                self.connected.clear()
        return ws

    async def send_envelope(
        self, kind: str, payload: dict[str, Any], *, envelope_id: str | None = None, retry_attempt: int = 0
    ) -> str:
        """Send one envelope on the newest connection; returns its envelope_id."""
        await asyncio.wait_for(self.connected.wait(), 5)
        envelope_id = envelope_id or secrets.token_hex(12)
        self.deliveries.setdefault(envelope_id, Delivery(envelope_id))
        self.deliveries[envelope_id].attempts += 1
        await self.connections[-1].send_json(
            {
                "envelope_id": envelope_id,
                "type": kind,
                "payload": payload,
                "accepts_response_payload": kind != "events_api",
                "retry_attempt": retry_attempt,
                "retry_reason": "timeout" if retry_attempt else "",
            }
        )
        return envelope_id

    async def send_raw(self, text: str, *, envelope_id: str | None = None) -> Delivery | None:
        """Send ``text`` exactly as given (a malformed envelope); with ``envelope_id``, returns the
        delivery whose ``acked`` is set when the app acknowledges that id."""
        await asyncio.wait_for(self.connected.wait(), 5)
        delivery = None
        if envelope_id is not None:
            delivery = self.deliveries.setdefault(envelope_id, Delivery(envelope_id))
            delivery.attempts += 1
        await self.connections[-1].send_str(text)
        return delivery

    async def deliver(
        self, kind: str, payload: dict[str, Any], *, ack_timeout: float = 3.0, max_retries: int = 3
    ) -> Delivery:
        """Deliver like Slack: resend (retry_attempt + 1) until acknowledged or out of retries."""
        envelope_id = secrets.token_hex(12)
        for attempt in range(max_retries + 1):
            await self.send_envelope(kind, payload, envelope_id=envelope_id, retry_attempt=attempt)
            delivery = self.deliveries[envelope_id]
            try:
                await asyncio.wait_for(delivery.acked.wait(), ack_timeout)
                return delivery
            except TimeoutError:
                continue
        return self.deliveries[envelope_id]

    async def disconnect_all(self) -> None:
        """Ask the app to reconnect, as Slack does before it recycles a connection."""
        for ws in list(self.connections):
            await ws.send_json({"type": "disconnect", "reason": "refresh_requested"})
