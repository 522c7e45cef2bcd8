"""Request headers that are not UTF-8 text, refused (or cleaned) before any handler reads them.

aiohttp decodes header bytes as UTF-8 with ``surrogateescape``, so a header with other bytes
(``X-API-Key: \\xff``) reaches the handlers as a ``str`` holding lone surrogates, which fails the
first time anything encodes it (a key comparison, a JWT decode, a cookie signature): a 500. Here,
before any handler runs:

- a credential header (``X-API-Key``, ``Authorization``) that is not UTF-8 is a 401;
- a cookie that is not UTF-8 is dropped (another site on the same domain may set such cookies;
  they must not lock anybody out of the widget);
- ``User-Agent`` and ``Referer`` (free text nobody here interprets) have the bytes replaced;
- any other header that is not UTF-8 (``Origin``, ``Content-Type``, ``X-Capsule-Session-Id``...)
  is a 400 that names it.

``readable_headers`` is called by the web app's one middleware (``gateway.server``), not a
middleware of its own: a widget socket holds every middleware's frame for its whole life.
"""

from __future__ import annotations

from aiohttp import web
from multidict import CIMultiDict

CREDENTIAL_HEADERS = frozenset({"x-api-key", "authorization"})
FREE_TEXT_HEADERS = frozenset({"user-agent", "referer"})


def is_text(value: str) -> bool:
    """False when the header had bytes that are not UTF-8 (decoded to lone surrogates)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


def _readable_cookies(value: str) -> str:
    return "; ".join(pair.strip() for pair in value.split(";") if is_text(pair) and pair.strip())


def readable_headers(request: web.Request) -> web.Request | web.Response:
    """The request to handle (itself, or a clone with its headers cleaned), or the error response
    to send instead."""
    cleaned: CIMultiDict[str] | None = None
    for name, value in request.headers.items():
        if is_text(value):
            continue
        lowered = name.lower()
        if lowered in CREDENTIAL_HEADERS:
            return _error(401, "unauthorized", f"the {name} header is not valid UTF-8 text")
        if lowered != "cookie" and lowered not in FREE_TEXT_HEADERS:
            return _error(400, "bad_request", f"the {name} header is not valid UTF-8 text")
        cleaned = cleaned if cleaned is not None else CIMultiDict(request.headers)
    if cleaned is None:
        return request
    headers: CIMultiDict[str] = CIMultiDict()
    for name, value in cleaned.items():
        if is_text(value):
            headers.add(name, value)
        elif name.lower() == "cookie":
            if readable := _readable_cookies(value):
                headers.add(name, readable)
        else:
            headers.add(name, value.encode("utf-8", "surrogateescape").decode("utf-8", "replace"))
    return request.clone(headers=headers)
