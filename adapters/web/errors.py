"""Errors in the web channel's own shapes: JSON bodies for HTTP, ``error`` frames for the socket.

Both surfaces share one set of codes (docs/web-protocol.md, "Error codes"); PromptRails clients
map the HTTP status to a typed exception, so the status matters as much as the body.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .jsoncodec import json_response

BAD_FRAME = "bad_frame"
BAD_REQUEST = "bad_request"
NOT_READY = "not_ready"
NOT_FOUND = "not_found"
UNAUTHORIZED = "unauthorized"
TOO_LARGE = "too_large"
UNSUPPORTED_TYPE = "unsupported_type"
METHOD_NOT_ALLOWED = "method_not_allowed"
HANDLER_ERROR = "handler_error"
TIMEOUT = "timeout"
SESSION_DELETED = "session_deleted"
"""A turn's outcome (not an error code on the wire) when its session was deleted under it."""
INTERNAL = "internal"
UNAVAILABLE = "unavailable"
"""HTTP 503: the gateway is starting or restarting, or cannot reach its message bus (Redis)."""
RATE_LIMITED = "rate_limited"
"""A per-IP or per-visitor limit (``web.limits``): HTTP 429 + ``Retry-After``, or an error frame."""


class WebError(Exception):
    """Raised inside a request handler; turned into ``{"error": {...}}`` with ``status``."""

    def __init__(self, status: int, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details

    def response(self, headers: dict[str, str] | None = None) -> web.Response:
        return json_error(self.status, self.code, self.message, self.details, headers=headers)


def error_body(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if details:
        error["details"] = details
    return {"error": error}


def json_error(
    status: int,
    code: str,
    message: str,
    details: dict[str, Any] | None = None,
    *,
    headers: dict[str, str] | None = None,
) -> web.Response:
    return json_response(error_body(code, message, details), status=status, headers=headers)


def error_frame(code: str, message: str, frame_id: str | None = None) -> dict[str, Any]:
    return {"type": "error", "code": code, "message": message, "id": frame_id}


def bad_request(message: str) -> WebError:
    return WebError(400, BAD_REQUEST, message)


def not_found(message: str = "session not found") -> WebError:
    return WebError(404, NOT_FOUND, message)


def unauthorized(message: str) -> WebError:
    return WebError(401, UNAUTHORIZED, message)
