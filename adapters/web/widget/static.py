"""The widget's files: ``/`` (the full-page chat), ``/widget.js`` and ``/static/<path>``.

The files themselves live in ``adapters/web/static/`` (plain HTML/JS/CSS, no build step).
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from .. import errors
from ..context import WebContext

STATIC_DIR = Path(__file__).parent.parent / "static"
INDEX = "index.html"
WIDGET_SCRIPT = "widget.js"
NO_CACHE = {"Cache-Control": "no-cache"}
"""Revalidate on every load, so a new release reaches visitors at once (ETag keeps it cheap)."""
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' https: data: blob:; media-src 'self' https: blob:; font-src 'self'; "
    "form-action 'self'; base-uri 'none'; object-src 'none'"
)
"""The widget's files run only the gateway's own scripts and styles (no inline code, no eval),
talk only to the gateway (``'self'`` covers its ws:/wss: socket, CSP Level 3), and show images
from anywhere over HTTPS (image blocks). ``frame-ancestors`` is added per ``web.frame_ancestors``."""


def security_headers(frame_ancestors: list[str]) -> dict[str, str]:
    """The headers every widget file is served with."""
    ancestors = " ".join(["'self'", *(a for a in frame_ancestors if a != "'self'")])
    return {
        "Content-Security-Policy": f"{CONTENT_SECURITY_POLICY}; frame-ancestors {ancestors}",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "same-origin",
    }


def static_file(relative: str) -> Path | None:
    """The file under ``static/`` at ``relative``, or None (also for paths that leave the folder)."""
    root = STATIC_DIR.resolve()
    try:
        path = (root / relative).resolve()
    except (OSError, ValueError):
        return None
    if not path.is_relative_to(root) or not path.is_file():
        return None
    return path


def _serve(relative: str, headers: dict[str, str]) -> web.StreamResponse:
    path = static_file(relative)
    if path is None:
        return errors.json_error(404, errors.NOT_FOUND, f"no file {relative!r}")
    return web.FileResponse(path, headers={**NO_CACHE, **headers})


def mount_static(app: web.Application, ctx: WebContext) -> None:
    headers = security_headers(ctx.settings.web.frame_ancestors)

    async def index(request: web.Request) -> web.StreamResponse:
        response = _serve(INDEX, headers)
        if isinstance(response, web.FileResponse):
            # The full-page chat is same-origin: give a new visitor their cookie right away.
            try:
                identity = ctx.identities.resolve(request, mint=True)
            except Exception:  # a bad cookie: the socket will refuse it with a clear error
                identity = None
            if identity is not None and identity.minted:
                ctx.identities.remember(response, identity)
        return response

    async def widget_script(request: web.Request) -> web.StreamResponse:
        return _serve(WIDGET_SCRIPT, headers)

    async def asset(request: web.Request) -> web.StreamResponse:
        return _serve(request.match_info["path"], headers)

    app.router.add_get("/", index)
    app.router.add_get("/" + WIDGET_SCRIPT, widget_script)
    app.router.add_get("/static/{path:.+}", asset)
