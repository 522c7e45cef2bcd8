"""Who makes an HTTP request to ``@app.endpoint``, ``@app.data`` and the integrations pages.

A configured API key is the authenticated API user; then each adapter that knows identities is
asked (the web adapter's signed host tokens and visitor cookies); anyone else is anonymous.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Sequence

from aiohttp import web

from gateway.session import Session
from gateway.sessions import SessionDirectory
from gateway.types import UserInfo

API_USER = UserInfo("api")
ANONYMOUS = UserInfo("anonymous")

Identifier = Callable[[web.Request], Awaitable[tuple[UserInfo, bool] | None]]


class Callers:
    def __init__(self, api_keys: Sequence[str], sessions: SessionDirectory) -> None:
        self._api_keys = [key.encode() for key in api_keys]
        self._sessions = sessions
        self._identifiers: list[Identifier] = []

    def add_identifier(self, identify: Identifier) -> None:
        """An adapter's way to recognise its users (asked in the order added)."""
        self._identifiers.append(identify)

    def _api_key_matches(self, key: str) -> bool:
        try:
            given = key.encode()
        except UnicodeEncodeError:  # a header aiohttp decoded as latin-1 with surrogates
            return False
        return any(hmac.compare_digest(given, known) for known in self._api_keys)

    async def identify(self, request: web.Request) -> tuple[UserInfo, bool]:
        """``(user, authenticated)`` for the caller of ``request``."""
        key = request.headers.get("X-API-Key")
        if key and self._api_key_matches(key):
            return API_USER, True
        for identify in self._identifiers:
            found = await identify(request)
            if found is not None:
                return found
        return ANONYMOUS, False

    async def session_for_request(self, request: web.Request, user: UserInfo, authenticated: bool) -> Session | None:
        """The caller's own session named by ``?session_id=`` or ``X-Capsule-Session-Id``
        (the API user may name any); ``None`` for anything else."""
        session_id = request.query.get("session_id") or request.headers.get("X-Capsule-Session-Id")
        if not session_id or not authenticated:
            return None
        record = await self._sessions.get(session_id)
        if record is None:
            return None
        if record.user_id != user.id and user is not API_USER:
            return None
        owner = await self._sessions.user(record.user_id) or user
        return self._sessions.attach(record, owner)
