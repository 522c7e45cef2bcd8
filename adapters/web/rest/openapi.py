"""The OpenAPI 3 description of ``/api/v1``, served at ``GET /api/v1/openapi.json``.

Written to match /work/shared/reference/promptrails-api.md (what the official SDK sends and
parses) and what ``routes.py`` accepts; ``tests/test_web_openapi.py`` checks it is a valid
OpenAPI 3.0 document, that it lists exactly the routes the gateway serves, and fuzzes the API
against it (schemathesis).
"""

from __future__ import annotations

from typing import Any

from .paging import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE

OPENAPI_PATH = "/openapi.json"

PAGE_META_FIELDS = ("total", "page", "limit", "pages", "total_pages")  # promptrails-api.md section 3
JSON = "application/json"
SSE = "text/event-stream"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return {"$ref": f"#/components/responses/{description}"}


def _data(name: str) -> dict[str, Any]:
    return {"type": "object", "required": ["data"], "properties": {"data": _ref(name)}}


def _page_of(name: str) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["data", "meta"],
        "properties": {"data": {"type": "array", "items": _ref(name)}, "meta": _ref("PageMeta")},
    }


def _body(schema: dict[str, Any], *, required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {JSON: {"schema": schema}}}


SESSION_ID = {"name": "session_id", "in": "path", "required": True, "schema": {"type": "string"},
              "description": "A session id from create_session (`[A-Za-z0-9_-]`)"}
EXECUTION_ID = {"name": "execution_id", "in": "path", "required": True, "schema": {"type": "string"},
                "description": "An execution id: the `execution_id` of a turn"}
PAGING = [
    {"name": "page", "in": "query", "required": False, "description": "1-based page; below 1 means 1",
     "schema": {"type": "integer", "default": 1}},
    {"name": "limit", "in": "query", "required": False,
     "description": f"Items per page; outside 1..{MAX_PAGE_SIZE} means {DEFAULT_PAGE_SIZE}",
     "schema": {"type": "integer", "default": DEFAULT_PAGE_SIZE}},
]
COMMON_ERRORS = {"401": _error("Unauthorized"), "429": _error("RateLimited")}
SSE_RESPONSE = {
    "description": (
        "Server-sent events, LF-only, one `data:` line each: `execution`, then `content`/`block`/"
        "`notify`..., then `done` or `error`; the response ends after the terminal event."
    ),
    "content": {SSE: {"schema": {
        "description": "One server-sent event; `data` is a one-line JSON object",
        "type": "object",
        "required": ["event", "data"],
        "properties": {
            "event": {"type": "string", "enum": ["execution", "content", "block", "notify", "done", "error"]},
            "data": {"type": "string"},
        },
    }}},
}


def _operation(operation_id: str, summary: str, responses: dict[str, Any], *,
               parameters: list[dict[str, Any]] | None = None, body: dict[str, Any] | None = None) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": operation_id,
        "summary": summary,
        "responses": {**responses, **COMMON_ERRORS},
    }
    if parameters:
        operation["parameters"] = parameters
    if body is not None:
        operation["requestBody"] = body
    return operation


SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": {"type": "string", "description": "not_found, bad_request, unauthorized, too_large, ..."},
                    "message": {"type": "string"},
                    "details": {"type": "object"},
                },
            }
        },
    },
    "PageMeta": {
        "type": "object",
        "required": list(PAGE_META_FIELDS),
        "properties": {name: {"type": "integer", "minimum": 0} for name in PAGE_META_FIELDS},
    },
    "ChatSession": {
        "type": "object",
        "required": ["id", "workspace_id", "agent_id", "user_id", "title", "metadata", "created_at", "updated_at"],
        "properties": {
            "id": {"type": "string"},
            "workspace_id": {"type": "string"},
            "agent_id": {"type": "string", "description": "The handler: `default` or a named @app.message handler"},
            "user_id": {"type": "string"},
            "title": {"type": "string"},
            "metadata": {"type": "object"},
            "created_at": {"type": "string", "format": "date-time"},
            "updated_at": {"type": "string", "format": "date-time"},
        },
    },
    "ChatMessage": {
        "type": "object",
        "required": ["id", "session_id", "role", "content", "metadata", "created_at"],
        "properties": {
            "id": {"type": "string"},
            "session_id": {"type": "string"},
            "role": {"type": "string", "enum": ["user", "assistant", "system", "tool"]},
            "content": {"type": "string"},
            "metadata": {"type": "object", "description": "`status` when not complete, `attachments`, `block`"},
            "created_at": {"type": "string", "format": "date-time"},
        },
    },
    "SentMessage": {
        "description": (
            "The assistant's reply as a flat ChatMessage (the user message when the reply did not "
            "come within web.send_timeout), plus the real PromptRails API's keys."
        ),
        "allOf": [
            _ref("ChatMessage"),
            {
                "type": "object",
                "required": ["user_message", "assistant_message", "assistant_messages", "execution_id"],
                "properties": {
                    "user_message": _ref("ChatMessage"),
                    "assistant_message": {"allOf": [_ref("ChatMessage")], "nullable": True},
                    "assistant_messages": {"type": "array", "items": _ref("ChatMessage")},
                    "execution_id": {"type": "string"},
                },
            },
        ],
    },
    "Feedback": {
        "type": "object",
        "required": ["submitted"],
        "properties": {"submitted": {"type": "boolean"}},
    },
    "Execution": {
        "type": "object",
        "required": ["id", "session_id", "status"],
        "properties": {
            "id": {"type": "string"},
            "agent_id": {"type": "string"},
            "session_id": {"type": "string"},
            "status": {"type": "string", "enum": [
                "pending", "running", "completed", "failed", "cancelled", "waiting_approval", "cancel_requested",
            ]},
            "input": {"type": "object"},
            "output": {"type": "object", "nullable": True},
            "error": {"type": "string"},
        },
    },
    "NewSession": {
        "type": "object",
        "required": ["agent_id"],
        "properties": {
            "agent_id": {"type": "string", "minLength": 1},
            "title": {"type": "string"},
            "metadata": {"type": "object"},
        },
    },
    "NewMessage": {
        "type": "object",
        "required": ["content"],
        "properties": {"content": {"type": "string", "minLength": 1, "pattern": r"\S"}},
    },
    "NewFeedback": {
        "type": "object",
        "required": ["execution_id", "value"],
        "properties": {
            "execution_id": {"type": "string", "minLength": 1},
            "value": {"type": "integer", "enum": [1, -1]},
        },
    },
    "Answer": {
        "type": "object",
        "properties": {"reason": {"type": "string", "description": "Logged; the handler learns only yes or no"}},
    },
}

RESPONSES: dict[str, Any] = {
    name: _json(_ref("Error"), description)
    for name, description in {
        "BadRequest": "Malformed input (bad JSON, a missing or mistyped field); code `bad_request` or `too_large`",
        "Unauthorized": "No or an unknown X-API-Key",
        "NotFound": "No such session or execution for this key",
        "RateLimited": "Too many requests; see Retry-After",
        "HandlerError": "The bot failed to answer (code `handler_error`); the turn is stored",
        "Timeout": "The bot took longer than its handler timeout (code `timeout`)",
    }.items()
}


def _paths() -> dict[str, Any]:
    bad, missing = _error("BadRequest"), _error("NotFound")
    execution = _json(_data("Execution"), "The execution")
    return {
        "/chat/sessions": {
            "get": _operation("listSessions", "The key's sessions, newest first",
                              {"200": _json(_page_of("ChatSession"), "A page of sessions"), "400": bad},
                              parameters=PAGING),
            "post": _operation("createSession", "Create a session with a handler (`agent_id`)",
                               {"201": _json(_data("ChatSession"), "The new session"), "400": bad, "404": missing},
                               body=_body(_ref("NewSession"))),
        },
        "/chat/sessions/{session_id}": {
            "parameters": [SESSION_ID],
            "get": _operation("getSession", "One session", {"200": _json(_data("ChatSession"), "The session"),
                                                             "404": missing}),
            "delete": _operation("deleteSession", "Delete a session and its messages",
                                 {"204": {"description": "Deleted"}, "404": missing}),
        },
        "/chat/sessions/{session_id}/messages": {
            "parameters": [SESSION_ID],
            "get": _operation("listMessages", "The session's messages, oldest first",
                              {"200": _json(_page_of("ChatMessage"), "A page of messages"), "400": bad,
                               "404": missing}, parameters=PAGING),
            "post": _operation("sendMessage", "Say something and wait (up to web.send_timeout) for the reply",
                               {"201": _json(_data("SentMessage"), "The reply (or the stored user message)"),
                                "400": bad, "404": missing, "500": _error("HandlerError"), "504": _error("Timeout")},
                               body=_body(_ref("NewMessage"))),
        },
        "/chat/sessions/{session_id}/messages/stream": {
            "parameters": [SESSION_ID],
            "post": _operation("streamMessage", "Say something and stream the reply as server-sent events",
                               {"200": SSE_RESPONSE, "400": bad, "404": missing}, body=_body(_ref("NewMessage"))),
        },
        "/chat/sessions/{session_id}/feedback": {
            "parameters": [SESSION_ID],
            "post": _operation("submitFeedback", "Rate a turn: 1 or -1",
                               {"200": _json(_data("Feedback"), "Recorded"), "400": bad, "404": missing},
                               body=_body(_ref("NewFeedback"))),
        },
        "/executions/approval-inbox": {
            "get": _operation("approvalInbox", "The key's executions waiting for an approval, oldest first",
                              {"200": _json(_page_of("Execution"), "A page of executions"), "400": bad},
                              parameters=PAGING),
        },
        "/executions/{execution_id}": {
            "parameters": [EXECUTION_ID],
            "get": _operation("getExecution", "One turn as an execution", {"200": execution, "404": missing}),
        },
        "/executions/{execution_id}/stream": {
            "parameters": [EXECUTION_ID],
            "get": _operation("streamExecution", "Replay a finished turn, or follow a running one, as SSE",
                              {"200": SSE_RESPONSE, "404": missing}),
        },
        "/executions/{execution_id}/cancel": {
            "parameters": [EXECUTION_ID],
            "post": _operation("cancelExecution", "Stop a running turn",
                               {"200": execution, "400": bad, "404": missing}),
        },
        "/executions/{execution_id}/approve": {
            "parameters": [EXECUTION_ID],
            "post": _operation("approveExecution", "Answer the turn's approval prompt with yes",
                               {"200": execution, "400": bad, "404": missing},
                               body=_body(_ref("Answer"), required=False)),
        },
        "/executions/{execution_id}/deny": {
            "parameters": [EXECUTION_ID],
            "post": _operation("denyExecution", "Answer the turn's approval prompt with no",
                               {"200": execution, "400": bad, "404": missing},
                               body=_body(_ref("Answer"), required=False)),
        },
    }


def openapi_document(server_url: str, title: str, agent_ids: list[str] | None = None) -> dict[str, Any]:
    """The description, with ``server_url`` (the gateway's public URL + ``/api/v1``) as its server
    and, when given, the ``agent_id`` values this app answers to (its message handlers)."""
    schemas = SCHEMAS
    if agent_ids:
        new_session = {**SCHEMAS["NewSession"], "properties": {
            **SCHEMAS["NewSession"]["properties"], "agent_id": {"type": "string", "enum": agent_ids},
        }}
        schemas = {**SCHEMAS, "NewSession": new_session}
    return {
        "openapi": "3.0.3",
        "info": {
            "title": f"{title} chat API",
            "version": "1",
            "description": (
                "chatgate's REST + SSE API, wire-compatible with PromptRails' chat-sessions API: the "
                "official promptrails SDKs work as clients. Every error is "
                '`{"error": {"code", "message"}}`.'
            ),
        },
        "servers": [{"url": server_url}],
        "security": [{"ApiKey": []}],
        "paths": _paths(),
        "components": {
            "securitySchemes": {"ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}},
            "schemas": schemas,
            "responses": RESPONSES,
        },
    }
