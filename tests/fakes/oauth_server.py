"""A local OAuth 2 authorization server for tests: real HTTP on 127.0.0.1, strict RFC behaviour.

It speaks RFC 6749 (authorization code and refresh token grants), RFC 7636 (PKCE, S256 only,
required), RFC 7009 (token revocation) and a bearer-protected ``/userinfo`` so a test can prove
a token works. What it enforces, as a real provider does:

- ``/authorize``: a registered ``client_id`` and an exactly matching ``redirect_uri`` (otherwise a
  400 page and no redirect, RFC 6749 §4.1.2.1), ``response_type=code``, a ``code_challenge``
  with method ``S256``; the user's decision is ``decision`` (``approve``, ``deny`` answers
  ``error=access_denied``, ``fail`` answers ``error=server_error``); ``state`` is echoed.
- ``/token``: client authentication (HTTP Basic or ``client_secret_post``), a code used once and
  within ``code_ttl``, the same ``redirect_uri``, a ``code_verifier`` matching the challenge;
  refresh tokens rotate (the old one dies) when ``rotate_refresh_tokens``; JSON errors with the
  RFC 6749 §5.2 codes.
- ``/revoke``: revokes an access or refresh token (revoking a refresh token kills its access
  tokens too); unknown tokens answer 200 (RFC 7009 §2.2).

Every token request is recorded in ``token_requests``; ``revoked`` lists revoked tokens.
"""

from __future__ import annotations

import base64
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from authlib.oauth2.rfc7636 import create_s256_code_challenge


@dataclass
class RegisteredClient:
    client_id: str
    client_secret: str
    redirect_uris: list[str]


@dataclass
class CodeGrant:
    client_id: str
    redirect_uri: str
    challenge: str
    scope: str
    user: str
    issued_at: float


@dataclass
class TokenRecord:
    client_id: str
    scope: str
    user: str
    expires_at: float
    refresh_token: str = ""


@dataclass
class FakeOAuthServer:
    user: str = "octocat"
    decision: str = "approve"
    expires_in: int = 3600
    code_ttl: float = 60.0
    rotate_refresh_tokens: bool = True
    revoke_status: int = 200
    """What ``/revoke`` answers; anything but 200 revokes nothing (a provider that is down)."""
    clients: dict[str, RegisteredClient] = field(default_factory=dict)
    codes: dict[str, CodeGrant] = field(default_factory=dict)
    access_tokens: dict[str, TokenRecord] = field(default_factory=dict)
    refresh_tokens: dict[str, TokenRecord] = field(default_factory=dict)
    token_requests: list[dict[str, str]] = field(default_factory=list)
    authorize_requests: list[dict[str, str]] = field(default_factory=list)
    revoked: list[str] = field(default_factory=list)
    port: int = 0
    _runner: web.AppRunner | None = None

    def register(self, client_id: str, client_secret: str, redirect_uri: str) -> None:
        self.clients[client_id] = RegisteredClient(client_id, client_secret, [redirect_uri])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> FakeOAuthServer:
        app = web.Application()
        app.router.add_get("/authorize", self.authorize)
        app.router.add_post("/token", self.token)
        app.router.add_post("/revoke", self.revoke)
        app.router.add_get("/userinfo", self.userinfo)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # -- helpers for tests ---------------------------------------------------------------

    def token_is_valid(self, access_token: str) -> bool:
        record = self.access_tokens.get(access_token)
        return record is not None and record.expires_at > time.time()

    # -- endpoints -----------------------------------------------------------------------

    async def authorize(self, request: web.Request) -> web.Response:
        query = dict(request.query)
        self.authorize_requests.append(query)
        client = self.clients.get(query.get("client_id", ""))
        redirect_uri = query.get("redirect_uri", "")
        if client is None:
            return web.Response(status=400, text="unknown client_id")
        if redirect_uri not in client.redirect_uris:
            return web.Response(status=400, text=f"redirect_uri {redirect_uri!r} is not registered")
        state = query.get("state")

        def back(**params: str) -> web.Response:
            if state is not None:
                params["state"] = state
            raise web.HTTPFound(f"{redirect_uri}?{urlencode(params)}")

        if query.get("response_type") != "code":
            return back(error="unsupported_response_type")
        if not query.get("code_challenge") or query.get("code_challenge_method") != "S256":
            return back(error="invalid_request", error_description="PKCE with S256 is required")
        if self.decision == "deny":
            return back(error="access_denied", error_description="The user denied the request")
        if self.decision == "fail":
            return back(error="server_error", error_description="Something broke")
        code = secrets.token_urlsafe(24)
        self.codes[code] = CodeGrant(client.client_id, redirect_uri, query["code_challenge"],
                                     query.get("scope", ""), self.user, time.time())
        return back(code=code)

    def _authenticate(self, request: web.Request, form: dict[str, str]) -> RegisteredClient | None:
        header = request.headers.get("Authorization", "")
        if header.startswith("Basic "):
            try:
                client_id, _, secret = base64.b64decode(header[6:]).decode().partition(":")
            except ValueError:
                return None
        else:
            client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
        client = self.clients.get(client_id)
        if client is None or not secrets.compare_digest(client.client_secret, secret):
            return None
        return client

    @staticmethod
    def _error(error: str, description: str, status: int = 400) -> web.Response:
        return web.json_response({"error": error, "error_description": description}, status=status,
                                 headers={"Cache-Control": "no-store"})

    def _issue(self, client_id: str, scope: str, user: str) -> dict[str, Any]:
        access = secrets.token_urlsafe(24)
        refresh = secrets.token_urlsafe(24)
        expires_at = time.time() + self.expires_in
        self.access_tokens[access] = TokenRecord(client_id, scope, user, expires_at, refresh)
        self.refresh_tokens[refresh] = TokenRecord(client_id, scope, user, expires_at)
        return {"access_token": access, "token_type": "bearer", "expires_in": self.expires_in,
                "refresh_token": refresh, "scope": scope}

    async def token(self, request: web.Request) -> web.Response:
        form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
        self.token_requests.append(form)
        client = self._authenticate(request, form)
        if client is None:
            return self._error("invalid_client", "client authentication failed", 401)
        grant_type = form.get("grant_type")
        if grant_type == "authorization_code":
            grant = self.codes.pop(form.get("code", ""), None)  # a code is used once
            if grant is None or grant.client_id != client.client_id:
                return self._error("invalid_grant", "unknown or used authorization code")
            if time.time() - grant.issued_at > self.code_ttl:
                return self._error("invalid_grant", "the authorization code expired")
            if form.get("redirect_uri") != grant.redirect_uri:
                return self._error("invalid_grant", "redirect_uri does not match the authorization request")
            verifier = form.get("code_verifier", "")
            if not verifier or create_s256_code_challenge(verifier) != grant.challenge:
                return self._error("invalid_grant", "code_verifier does not match the code_challenge")
            return web.json_response(self._issue(client.client_id, grant.scope, grant.user),
                                     headers={"Cache-Control": "no-store"})
        if grant_type == "refresh_token":
            refresh = form.get("refresh_token", "")
            record = self.refresh_tokens.get(refresh)
            if record is None or record.client_id != client.client_id:
                return self._error("invalid_grant", "unknown or revoked refresh token")
            issued = self._issue(client.client_id, record.scope, record.user)
            if self.rotate_refresh_tokens:
                del self.refresh_tokens[refresh]
            else:
                del self.refresh_tokens[issued["refresh_token"]]
                issued["refresh_token"] = refresh
                self.access_tokens[issued["access_token"]].refresh_token = refresh
            return web.json_response(issued, headers={"Cache-Control": "no-store"})
        return self._error("unsupported_grant_type", f"grant_type {grant_type!r} is not supported")

    async def revoke(self, request: web.Request) -> web.Response:
        form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
        if self._authenticate(request, form) is None:
            return self._error("invalid_client", "client authentication failed", 401)
        if self.revoke_status != 200:
            return self._error("temporarily_unavailable", "revocation is down", self.revoke_status)
        token = form.get("token", "")
        if token in self.refresh_tokens:
            del self.refresh_tokens[token]
            for access, record in list(self.access_tokens.items()):
                if record.refresh_token == token:
                    del self.access_tokens[access]
            self.revoked.append(token)
        elif token in self.access_tokens:
            del self.access_tokens[token]
            self.revoked.append(token)
        return web.Response(status=200)

    async def userinfo(self, request: web.Request) -> web.Response:
        header = request.headers.get("Authorization", "")
        token = header[7:] if header.startswith("Bearer ") else ""
        if not self.token_is_valid(token):
            return web.json_response({"error": "invalid_token"}, status=401,
                                     headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
        record = self.access_tokens[token]
        return web.json_response({"login": record.user, "scope": record.scope})
