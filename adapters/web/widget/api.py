"""Small JSON endpoints the widget calls before it opens its socket."""

from __future__ import annotations

from aiohttp import web

from ..context import WebContext
from ..cors import cors_headers, preflight
from ..errors import WebError
from ..jsoncodec import json_response

_NO_USER = {"id": None, "email": None, "org_id": None}


def widget_config(ctx: WebContext) -> dict:
    web_settings = ctx.settings.web
    handlers = [
        {"name": name, "label": label or name or web_settings.title}
        for name, label in ctx.core.chats.labels().items()
    ]
    return {
        "title": web_settings.title,
        "accent_color": web_settings.accent_color,
        "handlers": handlers,
        "max_upload_bytes": ctx.settings.files.max_upload_bytes,
        "accepted_types": ctx.settings.files.accepted_types,
        "max_frame_bytes": web_settings.max_frame_bytes,
    }


def mount_widget_api(app: web.Application, ctx: WebContext) -> None:
    origins = ctx.settings.web.allowed_origins

    async def config(request: web.Request) -> web.StreamResponse:
        if request.method == "OPTIONS":
            return preflight(request, origins)
        return json_response(widget_config(ctx), headers=cors_headers(request, origins))

    async def identity(request: web.Request) -> web.StreamResponse:
        if request.method == "OPTIONS":
            return preflight(request, origins)
        headers = cors_headers(request, origins)
        try:
            who = ctx.identify(request, mint=True)
            user = await ctx.known_user(who)  # a visitor is stored on their first message
        except WebError as exc:
            return exc.response(headers)
        body = {
            "user": {"id": user.id, "email": user.email, "org_id": user.org_id} if user else _NO_USER,
            # A new visitor's token, or a renewal of ?visitor=; never the cookie's (HttpOnly).
            "visitor_token": who.visitor_token,
        }
        response = json_response(body, headers=headers)
        ctx.identities.remember(response, who)
        return response

    app.router.add_route("GET", "/api/widget/config", config)
    app.router.add_route("OPTIONS", "/api/widget/config", config)
    app.router.add_route("GET", "/api/widget/identity", identity)
    app.router.add_route("OPTIONS", "/api/widget/identity", identity)
