"""The REST + SSE API under ``/api/v1``, wire-compatible with PromptRails' chat API.

/work/shared/reference/promptrails-api.md is the spec. What matters most to the official SDK:
every body is a JSON object (errors and the router's own 404/405 included); the statuses it maps
to typed exceptions (400/401/403/404/429) are the only 4xx used, never 409/422 or a redirect
(it would retry them); lists carry ``meta`` with both ``pages`` and ``total_pages``; SSE frames
are LF-only with one ``data:`` line and the response ends after ``done`` or ``error``.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from adapters.base import BusDisconnected, Inbound, SessionRecord, new_id
from gateway.types import Message, SessionChannel

from .. import errors
from ..context import API_CHANNEL, ID_PATTERN, WebContext
from ..cors import cors_headers, preflight
from ..errors import WebError, bad_request, not_found
from ..jsoncodec import json_response
from ..outbox import session_topic
from ..subscription import subscribed
from ..wire import JSONRefused, chat_message, chat_session, now_rfc3339, page_meta, strict_json
from .caller import Caller
from .executions import Executions
from .openapi import OPENAPI_PATH, openapi_document
from .owners import KnownSession, SessionOwners
from .paging import page_offset, pagination
from .sse import SSEWriter
from .sse_turn import TurnStreamer
from .told import told_reply, told_user_message, user_message
from .turns import RestTurn, RestTurns, content_digest

log = logging.getLogger("chatgate.web.rest")

BUS_RETRY_AFTER_SECONDS = 1
"""``Retry-After`` of a 503 for an unreachable bus: the SDK retries any 5xx with its own backoff."""

PREFIX = "/api/v1"
DEFAULT_AGENT = "default"
FEEDBACK_VALUES = (1, -1)

Handler = Callable[[web.Request, "Caller"], Awaitable[web.StreamResponse]]


class RestApi:
    def __init__(self, ctx: WebContext) -> None:
        self.ctx = ctx
        self.turns = RestTurns(ctx)
        self.owners = SessionOwners()
        self.executions = Executions(ctx, self.json_body)

    def mount(self, app: web.Application) -> None:
        routes: dict[str, dict[str, Handler]] = {
            "/chat/sessions": {"GET": self.list_sessions, "POST": self.create_session},
            "/chat/sessions/{session_id}": {"GET": self.get_session, "DELETE": self.delete_session},
            "/chat/sessions/{session_id}/messages": {"GET": self.list_messages, "POST": self.send_message},
            "/chat/sessions/{session_id}/messages/stream": {"POST": self.stream_message},
            "/chat/sessions/{session_id}/feedback": {"POST": self.submit_feedback},
            "/executions/approval-inbox": {"GET": self.executions.approval_inbox},
            "/executions/{execution_id}": {"GET": self.executions.get},
            "/executions/{execution_id}/stream": {"GET": self.executions.stream},
            "/executions/{execution_id}/cancel": {"POST": self.executions.cancel},
            "/executions/{execution_id}/approve": {"POST": self.executions.approve},
            "/executions/{execution_id}/deny": {"POST": self.executions.deny},
        }
        for path, methods in routes.items():
            app.router.add_route("*", PREFIX + path, self._endpoint(methods))
        self.route_table = {path: sorted(methods) for path, methods in routes.items()}
        """Path (under ``/api/v1``) -> methods served: what the OpenAPI description must list."""
        app.router.add_get(PREFIX + OPENAPI_PATH, self.openapi)
        app.router.add_route("*", PREFIX + "/{tail:.*}", self._unknown_route)

    # -- plumbing ------------------------------------------------------------------------------

    def _endpoint(self, methods: dict[str, Handler]) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        allowed = ", ".join([*methods, "OPTIONS"])

        async def endpoint(request: web.Request) -> web.StreamResponse:
            origins = self.ctx.settings.web.allowed_origins
            if request.method == "OPTIONS":
                return preflight(request, origins)
            headers = cors_headers(request, origins)
            handler = methods.get(request.method)
            if handler is None:
                return errors.json_error(
                    405,
                    errors.METHOD_NOT_ALLOWED,
                    f"{request.method} is not allowed here; use {allowed}",
                    headers={**headers, "Allow": allowed},
                )
            try:
                response = await handler(request, self._authenticate(request))
            except WebError as exc:
                return exc.response(headers)
            except BusDisconnected as exc:  # Redis unreachable (scaled out): the turn was not submitted
                log.warning("%s %s: %s", request.method, request.path, exc)
                return errors.json_error(
                    503, errors.UNAVAILABLE, "the gateway cannot reach its message bus; try again in a moment",
                    headers={**headers, "Retry-After": str(BUS_RETRY_AFTER_SECONDS)},
                )
            except web.HTTPException:  # aiohttp's own (a stalled body's 408): JSON in checked_requests
                raise
            except Exception:
                log.exception("%s %s failed", request.method, request.path)
                return errors.json_error(500, errors.INTERNAL, "the server failed; it has been logged", headers=headers)
            if not response.prepared:
                response.headers.update(headers)
            return response

        return endpoint

    async def openapi(self, request: web.Request) -> web.StreamResponse:
        """The OpenAPI 3 description of this API; public, like any API's documentation."""
        chats = self.ctx.core.chats
        agents = [name for name in chats.names() if name is not None]
        if chats.has(None):
            agents = [DEFAULT_AGENT, chats.app_name, *agents]
        document = openapi_document(self.ctx.core.public_url + PREFIX, chats.app_name, sorted(set(agents)))
        headers = cors_headers(request, self.ctx.settings.web.allowed_origins)
        return json_response(document, headers=headers)

    async def _unknown_route(self, request: web.Request) -> web.StreamResponse:
        if request.method == "OPTIONS":
            return preflight(request, self.ctx.settings.web.allowed_origins)
        return errors.json_error(404, errors.NOT_FOUND, f"no route {request.method} {request.path}")

    def _authenticate(self, request: web.Request) -> Caller:
        key = request.headers.get("X-API-Key", "")
        keys = self.ctx.settings.web.api_keys
        if not keys:
            raise errors.unauthorized("the REST API is closed: no web.api_keys are configured")
        if not key:
            raise errors.unauthorized("send your API key in the X-API-Key header")
        # Compare against every key so the time taken does not say which one nearly matched.
        offered = key.encode("utf-8", "surrogateescape")  # bytes that are not UTF-8 cannot match
        matched = [k for k in keys if hmac.compare_digest(k.encode(), offered)]
        if not matched:
            raise errors.unauthorized("the API key is not valid")
        return Caller(self.ctx.owner_key(matched[0]))

    async def json_body(self, request: web.Request) -> dict[str, Any]:
        # 400, not 413: the SDK would retry a 413 (any unmapped status) three more times.
        limit = self.ctx.settings.server.max_request_bytes
        too_large = WebError(400, errors.TOO_LARGE, f"the request body is larger than {limit} bytes")
        if request.content_length is not None and request.content_length > limit:
            raise too_large
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise too_large from None
        if len(raw) > limit:
            raise too_large
        if not raw.strip():
            return {}
        try:
            body = strict_json(raw)
        except JSONRefused as exc:
            raise bad_request(f"the body is not valid JSON: {exc}") from None
        except ValueError:
            raise bad_request("the body is not valid JSON") from None
        if not isinstance(body, dict):
            raise bad_request("the body must be a JSON object")
        return body

    async def _own_session(self, request: web.Request, caller: Caller) -> SessionRecord:
        session_id = request.match_info["session_id"]
        if not ID_PATTERN.match(session_id):
            raise not_found()
        record = await self.ctx.core.sessions.get(session_id)
        if record is None or record.owner_key != caller.owner_key:
            raise not_found()
        return record

    async def _message_target(self, request: web.Request, caller: Caller) -> KnownSession:
        """The caller's session a message goes to, from memory after the first read
        (``owners.py``: the core refuses a session deleted since as the message is recorded)."""
        known = self.owners.get(request.match_info["session_id"])
        if known is None:
            return self.owners.remember(await self._own_session(request, caller))
        if known.owner_key != caller.owner_key:
            raise not_found()
        return known

    def _agent_id(self, record: SessionRecord) -> str:
        return record.chat_name or DEFAULT_AGENT

    def _chat_name_for(self, agent_id: str) -> str | None:
        """The handler an ``agent_id`` selects, as the session's ``chat_name``."""
        chats = self.ctx.core.chats
        if agent_id is not None and chats.has(agent_id):
            return agent_id
        if agent_id in (DEFAULT_AGENT, chats.app_name) and chats.has(None):
            # The core runs the unnamed handler for chat_name == app.name, so keeping the app's
            # name lets the session echo the agent_id it was created with.
            return None if agent_id == DEFAULT_AGENT else agent_id
        raise not_found(f"unknown agent_id {agent_id!r}")

    # -- sessions ------------------------------------------------------------------------------

    async def list_sessions(self, request: web.Request, caller: Caller) -> web.StreamResponse:
        page, limit = pagination(request)
        records, total = await self.ctx.core.sessions.list_for(
            owner_key=caller.owner_key, offset=page_offset(page, limit), limit=limit
        )
        data = [chat_session(r, self._agent_id(r)) for r in records]
        return json_response({"data": data, "meta": page_meta(total, page, limit)})

    async def create_session(self, request: web.Request, caller: Caller) -> web.StreamResponse:
        body = await self.json_body(request)
        agent_id = body.get("agent_id")
        if not isinstance(agent_id, str) or not agent_id:
            raise bad_request("agent_id is required")
        title = body.get("title") or ""
        metadata = body.get("metadata")
        if not isinstance(title, str):
            raise bad_request("title must be a string")
        if metadata is not None and not isinstance(metadata, dict):
            raise bad_request("metadata must be an object")
        chat_name = self._chat_name_for(agent_id)
        sessions = self.ctx.core.sessions
        user = await sessions.resolve_user(caller.user)
        record = await sessions.create(
            SessionChannel(API_CHANNEL),
            user,
            title=title,
            metadata=metadata or {},
            chat_name=chat_name,
            owner_key=caller.owner_key,
        )
        self.owners.remember(record)
        return json_response({"data": chat_session(record, self._agent_id(record))}, status=201)

    async def get_session(self, request: web.Request, caller: Caller) -> web.StreamResponse:
        record = await self._own_session(request, caller)
        return json_response({"data": chat_session(record, self._agent_id(record))})

    async def delete_session(self, request: web.Request, caller: Caller) -> web.StreamResponse:
        record = await self._own_session(request, caller)
        self.owners.forget(record.id)
        await self.ctx.core.sessions.delete(record.id)  # @app.exit hooks, the running turn, scoped data
        return web.Response(status=204)

    # -- messages ------------------------------------------------------------------------------

    async def list_messages(self, request: web.Request, caller: Caller) -> web.StreamResponse:
        record = await self._own_session(request, caller)
        page, limit = pagination(request)
        offset = page_offset(page, limit)
        messages, total = await self.ctx.core.sessions.messages(record.id, offset=offset, limit=limit)
        return json_response({"data": [chat_message(m) for m in messages], "meta": page_meta(total, page, limit)})

    async def _content(self, request: web.Request) -> str:
        body = await self.json_body(request)
        content = body.get("content")
        if not isinstance(content, str) or not content.strip():
            raise bad_request("content is required")
        return content

    def _inbound(self, record: KnownSession, caller: Caller, content: str, digest: str | None = None) -> Inbound:
        """The message event; ``digest`` (``send_message``) makes a re-POST of the same content
        within ``web.dedup_window`` the same turn in any web process (a stream is never retried)."""
        return Inbound(
            kind="message",
            dedup_key=f"api:{new_id()}",
            channel=SessionChannel(API_CHANNEL),
            user=caller.user,
            message=Message(content, "user", API_CHANNEL),
            session_id=record.id,
            chat_name=record.chat_name,
            # The same content again within web.dedup_window is this turn, in any web process.
            repeat_key=None if digest is None else f"api:{digest}",
            repeat_window=self.ctx.settings.web.dedup_window,
        )

    async def _submit(self, record: KnownSession, caller: Caller, content: str) -> tuple[RestTurn, bool]:
        digest = content_digest(caller.owner_key, record.id, content)
        try:
            return await self.turns.submit(digest, record.id, lambda: self._inbound(record, caller, content, digest))
        except LookupError:  # the session was deleted meanwhile (the core's UnknownSession)
            self.owners.forget(record.id)
            raise not_found() from None

    async def send_message(self, request: web.Request, caller: Caller) -> web.StreamResponse:
        record = await self._message_target(request, caller)
        content = await self._content(request)
        turn, joined = await self._submit(record, caller, content)
        ended = await self.turns.wait(turn, joined, self.ctx.settings.web.send_timeout)
        if ended and turn.error == errors.SESSION_DELETED:
            raise not_found("the session was deleted before the bot answered")
        if ended and turn.error in (errors.HANDLER_ERROR, errors.TIMEOUT):
            status = 500 if turn.error == errors.HANDLER_ERROR else 504
            message = "the bot failed to answer" if status == 500 else "the bot took too long to answer"
            return errors.json_error(status, turn.error, message, {"execution_id": turn.inbound_id})
        if ended and turn.told_all and turn.message_id:
            # The turn ran here and this request saw every reply it stored: no need to read it back.
            user_message = told_user_message(record.id, turn.message_id, content)
            replies = [told_reply(record.id, m) for m in turn.replies]
        else:
            stored = await self.ctx.core.sessions.turn_messages(record.id, turn.inbound_id)
            user_record = next((m for m in stored if m.role == "user"), None)
            user_message = (
                chat_message(user_record) if user_record else _pending_user_message(record.id, turn.inbound_id, content)
            )
            replies = [chat_message(m) for m in stored if m.role == "assistant"]
        assistant = replies[-1] if ended and replies else None
        flat = dict(assistant or user_message)
        flat.update(
            {
                "user_message": user_message,
                "assistant_message": assistant,
                "assistant_messages": replies if ended else [],
                "execution_id": turn.inbound_id,
            }
        )
        return json_response({"data": flat}, status=201)

    async def stream_message(self, request: web.Request, caller: Caller) -> web.StreamResponse:
        record = await self._message_target(request, caller)
        content = await self._content(request)
        writer = SSEWriter(request)
        async with subscribed(self.ctx.core.bus, session_topic(record.id)) as queue:
            try:
                accepted = await self.ctx.core.submit(self._inbound(record, caller, content))
            except LookupError:
                self.owners.forget(record.id)
                raise not_found() from None
            writer.response.headers.update(cors_headers(request, self.ctx.settings.web.allowed_origins))
            await writer.open()
            streamer = TurnStreamer(self.ctx, record.id, accepted.inbound_id, writer)
            try:
                await streamer.run(queue)
            except Exception:
                log.exception("streaming turn %s failed", accepted.inbound_id)
                await writer.send("error", {"message": "the stream failed", "code": errors.INTERNAL})
        return await writer.close()

    # -- feedback ------------------------------------------------------------------------------

    async def submit_feedback(self, request: web.Request, caller: Caller) -> web.StreamResponse:
        record = await self._own_session(request, caller)
        body = await self.json_body(request)
        execution_id = body.get("execution_id")
        value = body.get("value")
        if not isinstance(execution_id, str) or not execution_id:
            raise bad_request("execution_id is required")
        if isinstance(value, bool) or value not in FEEDBACK_VALUES:
            raise bad_request("value must be 1 or -1")
        sessions = self.ctx.core.sessions
        inbound = await sessions.inbound(execution_id) if ID_PATTERN.match(execution_id) else None
        if inbound is None or inbound.session_id != record.id:
            raise not_found("execution not found in this session")
        await sessions.rate(record.id, execution_id, value)
        return json_response({"data": {"submitted": True}})


def _pending_user_message(session_id: str, inbound_id: str, content: str) -> dict[str, Any]:
    """The user message of a turn still queued behind another (not stored yet)."""
    return user_message(session_id, inbound_id, content, now_rfc3339(), {"status": "queued"})
