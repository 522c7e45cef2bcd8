"""Which browser origins may use the widget endpoints (``web.allowed_origins``; empty: any)."""

from __future__ import annotations

from aiohttp import web

PREFLIGHT_MAX_AGE = "600"
ALLOWED_HEADERS = "Content-Type, X-API-Key"
ALLOWED_METHODS = "GET, POST, DELETE, OPTIONS"


def origin_allowed(request: web.BaseRequest, allowed: list[str]) -> bool:
    origin = request.headers.get("Origin")
    if not origin or not allowed or "*" in allowed:
        return True
    if origin == f"{request.scheme}://{request.host}":
        return True
    return origin.rstrip("/") in {o.rstrip("/") for o in allowed}


def cors_headers(request: web.BaseRequest, allowed: list[str]) -> dict[str, str]:
    """Headers that let the calling origin read the response (none for same-origin calls)."""
    origin = request.headers.get("Origin")
    if not origin or not origin_allowed(request, allowed):
        return {}
    return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}


def preflight(request: web.BaseRequest, allowed: list[str]) -> web.Response:
    headers = cors_headers(request, allowed)
    if headers:
        headers.update(
            {
                "Access-Control-Allow-Methods": ALLOWED_METHODS,
                "Access-Control-Allow-Headers": ALLOWED_HEADERS,
                "Access-Control-Max-Age": PREFLIGHT_MAX_AGE,
            }
        )
    return web.Response(status=204, headers=headers)
