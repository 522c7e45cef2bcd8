"""``WebAdapter``: the web channel. Owns the ``chat`` (widget) and ``api`` (REST) sessions."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from typing import Any

from aiohttp import WSCloseCode, web

from adapters.base import Adapter, Capabilities, GatewayContext, Limits
from gateway.config import Settings
from gateway.types import Attachment, SessionChannel, UserInfo

from .context import API_CHANNEL, WIDGET_CHANNEL, WebContext
from .cors import preflight
from .identity import IdentityRefused, IdentityResolver
from .outbox import WebOutbox
from .rest.routes import RestApi
from .widget.api import mount_widget_api
from .widget.socket import websocket_handler
from .widget.static import mount_static
from .widget.uploads import upload_handler
from .wire import file_id_of

BROWSER_MAX_TEXT = 1_000_000
"""No platform limit on the web: the browser renders any length (a sanity bound, not a split)."""
SHUTDOWN_CLOSE_SECONDS = 2.0


class WebAdapter(Adapter):
    channel_types = (WIDGET_CHANNEL, API_CHANNEL)
    limits = Limits(max_text=BROWSER_MAX_TEXT)
    capabilities = Capabilities(edits=True, native_stream=True, buttons=True, markdown=True)

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.ctx = WebContext(settings, IdentityResolver(settings))
        self.rest = RestApi(self.ctx)

    def mount(self, web_app: web.Application) -> None:
        ctx = self.ctx

        async def upload(request: web.Request) -> web.StreamResponse:
            if request.method == "OPTIONS":
                return preflight(request, ctx.settings.web.allowed_origins)
            return await upload_handler(ctx, request)

        # A partial, not a closure: an idle socket would keep the closure's coroutine frame.
        web_app.router.add_get("/ws", functools.partial(websocket_handler, ctx))
        web_app.router.add_route("POST", "/upload", upload)
        web_app.router.add_route("OPTIONS", "/upload", upload)
        mount_widget_api(web_app, ctx)
        self.rest.mount(web_app)
        mount_static(web_app, ctx)

    async def start(self, gateway: GatewayContext) -> None:
        self.ctx.gw = gateway

    async def identify(self, request: web.Request) -> tuple[UserInfo, bool] | None:
        """Who an HTTP request comes from, for ``@app.endpoint``, ``@app.data`` and the
        integrations pages: a host-site token (``?token=``) is an authenticated user; a visitor
        (cookie or ``?visitor=``) is known but not authenticated; anything else is not ours."""
        if self.ctx.gw is None:
            return None
        try:
            identity = self.ctx.identities.resolve(request, mint=False)
        except IdentityRefused:
            return None
        if identity is None:
            return None
        user = await self.ctx.user_of(identity)
        return user, not identity.anonymous

    async def stop(self) -> None:
        """Close open sockets with "going away": widgets reconnect and resume after a restart."""
        self.ctx.stopping = True
        sockets = list(self.ctx.sockets)
        if sockets:
            closing = [ws.close(code=WSCloseCode.GOING_AWAY, message=b"server restarting") for ws in sockets]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*closing, return_exceptions=True), SHUTDOWN_CLOSE_SECONDS)

    def outbox(self, channel: SessionChannel, session_id: str, turn: str | None = None) -> WebOutbox:
        return WebOutbox(
            self.ctx.core.bus,
            session_id,
            turn,
            min_interval=self.settings.web.stream_interval,
            sign_file=self.ctx.sign_file,
            live_texts=self.ctx.live_texts,
            ledger=self.ctx.turn_ledger,
        )

    def resolve_attachment(self, attachment: Attachment) -> Attachment:
        """An uploaded file: a fresh signed URL for the handler, and bytes straight from the store."""
        file_id = file_id_of(attachment.url)
        if file_id is None or self.ctx.gw is None:
            return attachment
        files: Any = self.ctx.core.files
        session_id = self._session_of(attachment.url)

        async def fetch() -> bytes:
            return await files.read(file_id)

        url = files.signed_url(file_id, session_id) if session_id else attachment.url
        return Attachment(attachment.name, attachment.content_type, url, attachment.size, fetch=fetch)

    @staticmethod
    def _session_of(url: str) -> str | None:
        """Uploads are named ``web-file:<file id>@<session id>`` in the inbox."""
        _, _, session_id = url.partition("@")
        return session_id or None

    def describe(self) -> str:
        rest = "REST API on" if self.settings.web.api_keys else "REST API closed (no web.api_keys)"
        return f"web widget at /, WebSocket /ws, {rest} /api/v1"
