"""HTTP routes of integrations.

Connect pages (HTML, for a person in a browser):
  ``GET  /integrations/{kind}/connect?state=``  the start page (OAuth) or the form (secret)
  ``POST /integrations/{kind}/connect``         OAuth: on to the provider; secret: save the form
  ``POST /integrations/{kind}/decline``         "Don't connect"
  ``GET  /integrations/{kind}/callback``        the provider's redirect back (code or error)

JSON API (for an authenticated caller; an API-key caller names the user with ``?user_id=``):
  ``GET    /integrations``                      what the user has connected
  ``DELETE /integrations/{kind}``               revoke (also ``POST /integrations/{kind}/revoke``)
"""

from __future__ import annotations

import logging
import re
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from gateway.integrations.pages import PageStyle, oauth_start_page, result_page, secret_form_page
from gateway.integrations.providers import NAME_PATTERN, ProviderSpec
from gateway.integrations.secrets_form import validate_secret_form
from gateway.integrations.service import FlowRefused, IntegrationService
from gateway.server import json_error
from gateway.types import UserInfo

log = logging.getLogger("chatgate.integrations")

MAX_FORM_BYTES = 64 * 1024  # a connect form is a state token and a few fields
USER_ID = re.compile(r"^[A-Za-z0-9_:.@-]{1,64}\Z")
"""What a chatgate user id can look like (the users table's ids are at most 64 characters)."""


def add_routes(web_app: web.Application, service: IntegrationService) -> None:
    views = IntegrationViews(service)
    router = web_app.router
    router.add_get("/integrations", views.list_connected)
    router.add_get("/integrations/{kind}/connect", views.connect_page)
    router.add_post("/integrations/{kind}/connect", views.connect_submit)
    router.add_post("/integrations/{kind}/decline", views.decline)
    router.add_get("/integrations/{kind}/callback", views.callback)
    router.add_delete("/integrations/{kind}", views.revoke)
    router.add_post("/integrations/{kind}/revoke", views.revoke)


class IntegrationViews:
    def __init__(self, service: IntegrationService) -> None:
        self.service = service

    # -- pages -----------------------------------------------------------------------------

    @property
    def style(self) -> PageStyle:
        settings = self.service.runtime.settings
        return PageStyle(app_name=self.service.runtime.app.name, accent=settings.web.accent_color)

    def _html(self, body: str, *, status: int = 200, form_targets: tuple[str, ...] = ()) -> web.Response:
        response = web.Response(text=body, status=status, content_type="text/html", charset="utf-8")
        form_action = " ".join(("'self'", *form_targets))
        response.headers["Content-Security-Policy"] = (
            f"default-src 'none'; style-src 'unsafe-inline'; form-action {form_action}; "
            "frame-ancestors 'none'; base-uri 'none'"
        )
        response.headers["Cache-Control"] = "no-store"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        return response

    def _refused(self, heading: str, message: str, status: int) -> web.Response:
        return self._html(result_page(self.style, heading=heading, message=message, ok=False), status=status)

    def _done(self, heading: str, message: str) -> web.Response:
        return self._html(result_page(self.style, heading=heading, message=message, ok=True))

    async def _form(self, request: web.Request) -> dict[str, str] | web.Response:
        if request.content_length is None:
            # a browser always sends a form with its length; without one the bound cannot hold
            return self._refused("Length required", "Submit the form from the connect page.", 411)
        if request.content_length > MAX_FORM_BYTES:
            return self._refused("Too large", "This form submission is too large.", 413)
        if request.content_type not in ("application/x-www-form-urlencoded", "multipart/form-data"):
            return self._refused("Bad request", "Submit the form from the connect page.", 415)
        try:
            data = await request.post()
        except (ValueError, HttpProcessingError, web.HTTPException):  # a malformed body or multipart part
            return self._refused("Bad request", "The form could not be read.", 400)
        return {key: value for key, value in data.items() if isinstance(value, str)}

    async def connect_page(self, request: web.Request) -> web.Response:
        kind = request.match_info["kind"]
        token = request.query.get("state", "")
        try:
            provider, state = self.service.verify(kind, token)
            await self.service.ensure_unused(state)
        except FlowRefused as refused:
            return self._refused(refused.heading, refused.message, refused.status)
        if provider.mode == "secret":
            page = secret_form_page(self.style, provider, state=token, action_url="connect", decline_url="decline")
            return self._html(page)
        page = oauth_start_page(self.style, provider, state=token, action_url="connect", decline_url="decline")
        return self._html(page, form_targets=(_origin(provider.authorize_url),))

    async def connect_submit(self, request: web.Request) -> web.StreamResponse:
        form = await self._form(request)
        if isinstance(form, web.Response):
            return form
        token = form.get("state", "")
        try:
            provider, state = self.service.verify(request.match_info["kind"], token)
            if provider.mode == "oauth":
                url = await self.service.begin_oauth(provider, state, token)
                raise web.HTTPSeeOther(url)
            await self.service.ensure_unused(state)
            values, errors = validate_secret_form(provider, form)
            if errors:
                page = secret_form_page(self.style, provider, state=token, action_url="connect",
                                        decline_url="decline", values=form, errors=errors)
                return self._html(page, status=400)
            await self.service.complete_secret(provider, state, values)
        except FlowRefused as refused:
            return self._refused(refused.heading, refused.message, refused.status)
        return self._connected(provider)

    async def decline(self, request: web.Request) -> web.Response:
        form = await self._form(request)
        if isinstance(form, web.Response):
            return form
        try:
            provider, state = self.service.verify(request.match_info["kind"], form.get("state", ""))
            await self.service.decline(state, from_provider=False)
        except FlowRefused as refused:
            return self._refused(refused.heading, refused.message, refused.status)
        return self._html(result_page(self.style, heading="Not connected",
                                      message=f"{provider.title} was not connected. You can close this page.",
                                      ok=False))

    async def callback(self, request: web.Request) -> web.Response:
        query = request.query
        try:
            provider, state = self.service.verify(request.match_info["kind"], query.get("state", ""))
            error = query.get("error")
            if error:
                await self.service.decline(state, error=error[:64], from_provider=True)
                return self._declined_at_provider(provider, error, query.get("error_description", ""))
            code = query.get("code", "")
            if not code:
                return self._refused("Bad request", "The sign-in came back without a code.", 400)
            await self.service.complete_oauth(provider, state, code)
        except FlowRefused as refused:
            return self._refused(refused.heading, refused.message, refused.status)
        return self._connected(provider)

    def _connected(self, provider: ProviderSpec) -> web.Response:
        return self._done(f"{provider.title} connected",
                          "You can close this page and go back to the chat.")

    def _declined_at_provider(self, provider: ProviderSpec, error: str, description: str) -> web.Response:
        if error == "access_denied":
            message = f"You chose not to connect {provider.title}. You can close this page."
        else:
            detail = f" ({description[:200]})" if description else ""
            message = f"{provider.title} reported an error: {error}{detail}. The chat was told it is not connected."
        return self._html(result_page(self.style, heading="Not connected", message=message, ok=False))

    # -- JSON API --------------------------------------------------------------------------

    async def _caller(self, request: web.Request) -> UserInfo | web.Response:
        from gateway.callers import API_USER

        runtime = self.service.runtime
        user, authenticated = await runtime.callers.identify(request)
        if not authenticated:
            return json_error(401, "identify yourself (a signed-in widget user, or X-API-Key with ?user_id=)")
        if user is not API_USER:
            return user
        user_id = request.query.get("user_id", "")
        if not user_id:
            return json_error(400, "an API-key caller names the user with ?user_id=")
        if not USER_ID.match(user_id):  # not one of ours; PostgreSQL would refuse a NUL (a 500)
            return json_error(404, "no such user")
        target = await runtime.store.users.get(user_id)
        if target is None:
            return json_error(404, f"no user {user_id!r}")
        return target

    async def list_connected(self, request: web.Request) -> web.Response:
        user = await self._caller(request)
        if isinstance(user, web.Response):
            return user
        return web.json_response({"user_id": user.id, "integrations": await self.service.connected(user)})

    async def revoke(self, request: web.Request) -> web.Response:
        user = await self._caller(request)
        if isinstance(user, web.Response):
            return user
        kind = request.match_info["kind"].lower()
        if not NAME_PATTERN.match(kind):  # no provider is named so: nothing to ask the database
            return json_error(404, "no such integration")
        result = await self.service.revoke_for(user, kind)
        if not result.removed:
            return json_error(404, f"{kind} is not connected for this user")
        return web.json_response({"provider": kind, "revoked": True, "provider_revoked": result.provider_revoked})


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"
