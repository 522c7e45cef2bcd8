"""PromptRails' executions routes, over chatgate's turns: an execution is one inbound event.

``GET /api/v1/executions/{id}`` answers an ``AgentExecution``; ``GET .../stream`` replays a
finished turn as ``execution`` -> ``content`` -> ``done`` (or ``error``) and closes, or streams a
running one live; ``POST .../cancel`` stops a running turn. An execution is visible only to the
API key whose session it belongs to (anything else is "not found").

A turn whose handler waits in ``session.prompt_approval`` is ``waiting_approval``: it is listed by
``GET /api/v1/executions/approval-inbox`` and answered by ``POST .../approve`` or ``.../deny``
(the same answer as the widget's buttons, recorded in the inbox like any press).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from adapters.base import ButtonPress, Inbound, InboundRecord, MessageRecord, SessionDirectory, SessionRecord

from .. import errors
from ..context import ID_PATTERN, WebContext
from ..errors import not_found
from ..jsoncodec import json_response
from ..outbox import session_topic
from ..subscription import subscribed
from ..wire import page_meta, rfc3339
from .caller import Caller
from .paging import page_offset, pagination
from .sse import SSEWriter
from .sse_turn import ERROR_MESSAGES, MESSAGE_SEPARATOR, TurnStreamer

JsonBody = Callable[[web.Request], Awaitable[dict[str, Any]]]

log = logging.getLogger("chatgate.web.rest")

RUNNING = "running"
WAITING_APPROVAL = "waiting_approval"
ANSWER_BY_ROUTE = {"approve": "approve", "deny": "reject"}
"""PromptRails' approve/deny routes -> the approval button a press names."""
# chatgate's inbox outcome -> PromptRails' execution status
STATUS_BY_ERROR = {None: "completed", "stopped": "cancelled", errors.HANDLER_ERROR: "failed", errors.TIMEOUT: "failed"}


class Executions:
    def __init__(self, ctx: WebContext, json_body: JsonBody) -> None:
        self.ctx = ctx
        self.json_body = json_body

    @property
    def sessions(self) -> SessionDirectory:
        return self.ctx.core.sessions

    async def _own(self, request: web.Request, caller: Caller) -> tuple[InboundRecord, SessionRecord]:
        execution_id = request.match_info["execution_id"]
        inbound = await self.sessions.inbound(execution_id) if ID_PATTERN.match(execution_id) else None
        if inbound is None:
            raise not_found("execution not found")
        record = await self.sessions.get(inbound.session_id)
        if record is None or record.owner_key != caller.owner_key:
            raise not_found("execution not found")
        return inbound, record

    async def status_of(self, inbound: InboundRecord) -> str:
        if inbound.status in ("pending", "running"):
            return WAITING_APPROVAL if await self._awaited_block(inbound) else RUNNING
        if inbound.status == "failed":
            return "failed"
        return STATUS_BY_ERROR.get(inbound.error, "failed")

    async def _awaited_block(self, inbound: InboundRecord) -> str | None:
        """The approval block this execution's handler waits on, if it waits on one."""
        awaited = await self.ctx.core.approvals.awaited(inbound.session_id)
        if awaited is None or awaited[0] != inbound.id:
            return None
        return awaited[1]

    async def execution(
        self, inbound: InboundRecord, record: SessionRecord, messages: list[MessageRecord]
    ) -> dict[str, Any]:
        status = await self.status_of(inbound)
        user = next((m.text for m in messages if m.role == "user"), "")
        replies = [m.text for m in messages if m.role == "assistant"]
        finished = status not in (RUNNING, WAITING_APPROVAL)
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
        messages = await self.sessions.turn_messages(record.id, inbound.id)
        return json_response({"data": await self.execution(inbound, record, messages)})

    async def stream(self, request: web.Request, caller: Caller) -> web.StreamResponse:
        inbound, record = await self._own(request, caller)
        writer = SSEWriter(request)
        async with subscribed(self.ctx.core.bus, session_topic(record.id)) as queue:
            inbound = await self.sessions.inbound(inbound.id) or inbound  # re-read once subscribed
            await writer.open()
            if await self.status_of(inbound) in (RUNNING, WAITING_APPROVAL):
                await TurnStreamer(self.ctx, record.id, inbound.id, writer).run(queue)
            else:
                await self._replay(writer, inbound, record)
        return await writer.close()

    async def _replay(self, writer: SSEWriter, inbound: InboundRecord, record: SessionRecord) -> None:
        messages = await self.sessions.turn_messages(record.id, inbound.id)
        user = next((m for m in messages if m.role == "user"), None)
        start: dict[str, Any] = {"execution_id": inbound.id}
        if user is not None:
            start["user_message_id"] = user.id
        await writer.send("execution", start)
        text = MESSAGE_SEPARATOR.join(m.text for m in messages if m.role == "assistant")
        if text:
            await writer.send("content", {"content": text})
        if await self.status_of(inbound) == "failed":
            message = ERROR_MESSAGES.get(inbound.error or "", "the turn failed")
            await writer.send("error", {"message": message, "code": inbound.error or errors.INTERNAL})
            return
        await writer.send("done", {"output": {"content": text}, "token_usage": {}})

    async def cancel(self, request: web.Request, caller: Caller) -> web.StreamResponse:
        inbound, record = await self._own(request, caller)
        if await self.status_of(inbound) in (RUNNING, WAITING_APPROVAL):
            stop = Inbound(
                kind="stop",
                dedup_key=f"web:cancel:{inbound.id}",
                channel=record.channel,
                user=caller.user,
                session_id=record.id,
            )
            await self.ctx.core.submit(stop)
        messages = await self.sessions.turn_messages(record.id, inbound.id)
        execution = await self.execution(inbound, record, messages)
        if execution["status"] in (RUNNING, WAITING_APPROVAL):
            execution["status"] = "cancel_requested"
        return json_response({"data": execution})

    # -- approvals -----------------------------------------------------------------------------

    async def approval_inbox(self, request: web.Request, caller: Caller) -> web.StreamResponse:
        """The caller's executions waiting for an approval, oldest first."""
        page, limit = pagination(request)
        waiting: list[tuple[InboundRecord, SessionRecord]] = []
        for session_id in await self.ctx.core.approvals.waiting_sessions():
            awaited = await self.ctx.core.approvals.awaited(session_id)
            record = await self.sessions.get(session_id) if awaited else None
            if record is None or record.owner_key != caller.owner_key:
                continue
            inbound = await self.sessions.inbound(awaited[0])
            if inbound is not None:
                waiting.append((inbound, record))
        waiting.sort(key=lambda pair: pair[0].id)
        start = page_offset(page, limit)
        data = []
        for inbound, record in waiting[start : start + limit]:
            messages = await self.sessions.turn_messages(record.id, inbound.id)
            data.append(await self.execution(inbound, record, messages))
        return json_response({"data": data, "meta": page_meta(len(waiting), page, limit)})

    async def approve(self, request: web.Request, caller: Caller) -> web.StreamResponse:
        return await self._answer(request, caller, "approve")

    async def deny(self, request: web.Request, caller: Caller) -> web.StreamResponse:
        return await self._answer(request, caller, "deny")

    async def _answer(self, request: web.Request, caller: Caller, route: str) -> web.StreamResponse:
        inbound, record = await self._own(request, caller)
        body = await self.json_body(request)
        reason = body.get("reason")
        if reason is not None and not isinstance(reason, str):
            raise errors.bad_request("reason must be a string")
        block_id = await self._awaited_block(inbound)
        if block_id is None:
            raise errors.bad_request(f"execution {inbound.id} is not waiting for an approval")
        press = Inbound(
            kind="button",
            dedup_key=f"web:{route}:{inbound.id}:{block_id}",
            channel=record.channel,
            user=caller.user,
            session_id=record.id,
            button=ButtonPress(block_id, ANSWER_BY_ROUTE[route]),
        )
        await self.ctx.core.submit(press)
        # The handler learns only yes or no (prompt_approval returns a bool); the reason is kept in the log.
        log.info("execution %s %s through the API%s", inbound.id, "approved" if route == "approve" else "denied",
                 f": {reason!r}" if reason else "")
        inbound = await self.sessions.inbound(inbound.id) or inbound
        messages = await self.sessions.turn_messages(record.id, inbound.id)
        return json_response({"data": await self.execution(inbound, record, messages)})
