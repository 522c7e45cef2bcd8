"""PromptRails' executions routes, over chatgate's turns: an execution is one inbound event.

``GET /api/v1/executions/{id}`` answers an ``AgentExecution``; ``GET .../stream`` replays a
finished turn as ``execution`` -> ``content`` -> ``done`` (or ``error``) and closes, or streams a
running one live; ``POST .../cancel`` stops a running turn. An execution is visible only to the
API key whose session it belongs to (anything else is "not found").
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from gateway.inbound import Inbound
from gateway.store.records import InboundRecord, MessageRecord, SessionRecord

from . import errors
from .context import ID_PATTERN
from .errors import not_found
from .outbox import session_topic
from .sse import SSEWriter
from .sse_turn import ERROR_MESSAGES, MESSAGE_SEPARATOR, TurnStreamer
from .subscription import subscribed
from .wire import rfc3339

if TYPE_CHECKING:
    from .rest import Caller, RestApi

RUNNING = "running"
# chatgate's inbox outcome -> PromptRails' execution status
STATUS_BY_ERROR = {None: "completed", "stopped": "cancelled", errors.HANDLER_ERROR: "failed", errors.TIMEOUT: "failed"}


class Executions:
    def __init__(self, api: RestApi) -> None:
        self.api = api

    @property
    def store(self) -> Any:
        return self.api.ctx.core.store

    async def _own(self, request: web.Request, caller: Caller) -> tuple[InboundRecord, SessionRecord]:
        execution_id = request.match_info["execution_id"]
        inbound = await self.store.get_inbound(execution_id) if ID_PATTERN.match(execution_id) else None
        if inbound is None:
            raise not_found("execution not found")
        record = await self.store.get_session(inbound.session_id)
        if record is None or record.owner_key != caller.owner_key:
            raise not_found("execution not found")
        return inbound, record

    @staticmethod
    def status_of(inbound: InboundRecord) -> str:
        if inbound.status in ("pending", "running"):
            return RUNNING
        if inbound.status == "failed":
            return "failed"
        return STATUS_BY_ERROR.get(inbound.error, "failed")

    def execution(self, inbound: InboundRecord, record: SessionRecord, messages: list[MessageRecord]) -> dict[str, Any]:
        status = self.status_of(inbound)
        user = next((m.text for m in messages if m.role == "user"), "")
        replies = [m.text for m in messages if m.role == "assistant"]
        finished = status != RUNNING
        return {
            "id": inbound.id,
            "agent_id": record.chat_name or "default",
            "agent_version_id": "",
            "workspace_id": "local",
            "user_id": "",
            "session_id": record.id,
            "parent_execution_id": None,
            "status": status,
            "input": {"content": user},
            "output": {"content": MESSAGE_SEPARATOR.join(replies)} if finished else None,
            "error": ERROR_MESSAGES.get(inbound.error or "", "") if status == "failed" else "",
            "metadata": {},
            "token_usage": {},
            "cost": 0.0,
            "duration_ms": int((inbound.updated_at - inbound.created_at).total_seconds() * 1000) if finished else None,
            "trace_id": None,
            "approval_expires_at": None,
            "children": [],
            "started_at": rfc3339(inbound.created_at),
            "completed_at": rfc3339(inbound.updated_at) if finished else None,
            "created_at": rfc3339(inbound.created_at),
        }

    async def get(self, request: web.Request, caller: Caller) -> web.StreamResponse:
        inbound, record = await self._own(request, caller)
        messages = await self.store.turn_messages(record.id, inbound.id)
        return web.json_response({"data": self.execution(inbound, record, messages)})

    async def stream(self, request: web.Request, caller: Caller) -> web.StreamResponse:
        inbound, record = await self._own(request, caller)
        writer = SSEWriter(request)
        async with subscribed(self.api.ctx.core.bus, session_topic(record.id)) as queue:
            inbound = await self.store.get_inbound(inbound.id) or inbound  # re-read once subscribed
            await writer.open()
            if self.status_of(inbound) == RUNNING:
                await TurnStreamer(self.api.ctx, record.id, inbound.id, writer).run(queue)
            else:
                await self._replay(writer, inbound, record)
        return await writer.close()

    async def _replay(self, writer: SSEWriter, inbound: InboundRecord, record: SessionRecord) -> None:
        messages = await self.store.turn_messages(record.id, inbound.id)
        user = next((m for m in messages if m.role == "user"), None)
        start: dict[str, Any] = {"execution_id": inbound.id}
        if user is not None:
            start["user_message_id"] = user.id
        await writer.send("execution", start)
        text = MESSAGE_SEPARATOR.join(m.text for m in messages if m.role == "assistant")
        if text:
            await writer.send("content", {"content": text})
        if self.status_of(inbound) == "failed":
            message = ERROR_MESSAGES.get(inbound.error or "", "the turn failed")
            await writer.send("error", {"message": message, "code": inbound.error or errors.INTERNAL})
            return
        await writer.send("done", {"output": {"content": text}, "token_usage": {}})

    async def cancel(self, request: web.Request, caller: Caller) -> web.StreamResponse:
        inbound, record = await self._own(request, caller)
        if self.status_of(inbound) == RUNNING:
            stop = Inbound(
                kind="stop",
                dedup_key=f"web:cancel:{inbound.id}",
                channel=record.channel,
                user=caller.user,
                session_id=record.id,
            )
            await self.api.ctx.core.submit(stop)
        messages = await self.store.turn_messages(record.id, inbound.id)
        execution = self.execution(inbound, record, messages)
        if execution["status"] == RUNNING:
            execution["status"] = "cancel_requested"
        return web.json_response({"data": execution})
