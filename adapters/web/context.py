"""What every web route shares: the settings, the identity resolver, and the running core."""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from adapters.base import GatewayContext, SessionRecord
from gateway.config import Settings
from gateway.types import UserInfo

from .errors import RATE_LIMITED, UNAVAILABLE, WebError, json_error, not_found, unauthorized
from .identity import IdentityRefused, IdentityResolver, WebIdentity
from .outbox import TurnLedger
from .quotas import RateLimited, WebQuotas
from .reservations import SessionReservations

log = logging.getLogger("chatgate.web")

WIDGET_CHANNEL = "chat"
API_CHANNEL = "api"
ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")
"""What a session, message or execution id can look like (ULIDs do): anything else is unknown
without asking the database (which may refuse it, e.g. a NUL in PostgreSQL)."""


@dataclass
class WebContext:
    settings: Settings
    identities: IdentityResolver
    gw: GatewayContext | None = None
    """The running core, through the door; set in ``WebAdapter.start`` (until then requests get 503)."""
    sockets: set[web.WebSocketResponse] = field(default_factory=set)
    """Open widget sockets, closed with "going away" at shutdown so widgets reconnect."""
    stopping: bool = False
    """Set when the adapter stops: new widget sockets are refused (they reconnect elsewhere)."""
    live_texts: dict[str, str] = field(default_factory=dict)
    """Message id -> text so far, for replies streaming in this process (see ``WebOutbox``)."""
    turn_ledger: TurnLedger = field(default_factory=TurnLedger)
    """The turns whose replies this process's outboxes did not all publish as plain messages."""
    quotas: WebQuotas = field(init=False)
    """Per-IP and per-visitor limits (``web.limits``)."""
    reservations: SessionReservations = field(init=False)
    """Ids of widget sessions not stored yet (``hello`` without a session)."""

    def __post_init__(self) -> None:
        self.quotas = WebQuotas(self.settings.web.limits, client_ip_header=self.settings.web.client_ip_header)
        self.reservations = SessionReservations(self.settings.resolved_secret_key())

    @property
    def core(self) -> GatewayContext:
        if self.gw is None:
            raise WebError(503, UNAVAILABLE, "the gateway is starting")
        return self.gw

    def sign_file(self, file_id: str, session_id: str) -> str:
        return self.core.files.signed_url(file_id, session_id)

    # -- identity -------------------------------------------------------------------------

    def identify(self, request: web.BaseRequest, *, mint: bool) -> WebIdentity:
        """The caller's identity for an HTTP request; raises 401 JSON errors."""
        try:
            identity = self.identities.resolve(request, mint=mint)
        except IdentityRefused as exc:
            raise unauthorized(str(exc)) from None
        if identity is None:
            raise unauthorized("no identity: send the chatgate_uid cookie, ?visitor= or ?token=")
        return identity

    async def user_of(self, identity: WebIdentity) -> UserInfo:
        """The stored user behind ``identity``, made on first sight."""
        return await self.core.sessions.resolve_user(identity.user)

    async def known_user(self, identity: WebIdentity) -> UserInfo | None:
        """The stored user behind ``identity`` without making one for an anonymous visitor
        (a visitor is stored on their first message or upload); a host-site user is resolved."""
        if identity.anonymous:
            return await self.core.sessions.known_user(identity.user)
        return await self.user_of(identity)

    async def own_widget_session(self, session_id: Any, user: UserInfo) -> SessionRecord:
        """The widget session ``session_id`` if ``user`` owns it; anything else is "not found"."""
        if not isinstance(session_id, str) or not ID_PATTERN.match(session_id):
            raise not_found()
        record = await self.core.sessions.get(session_id)
        if record is None or record.channel.type != WIDGET_CHANNEL or record.user_id != user.id:
            raise not_found()
        return record

    # -- REST -----------------------------------------------------------------------------

    def owner_key(self, api_key: str) -> str:
        """What REST sessions are scoped by: a digest of the key, never the key itself."""
        digest = hashlib.sha256(api_key.encode()).hexdigest()[:32]
        return f"apikey:{digest}"


def too_many_requests(exc: RateLimited, headers: dict[str, str] | None = None) -> web.Response:
    """HTTP 429 with ``Retry-After`` (RFC 6585 §4) for a reached limit."""
    return json_error(
        429,
        RATE_LIMITED,
        exc.message,
        {"retry_after": exc.retry_after},
        headers={**(headers or {}), "Retry-After": str(exc.retry_after)},
    )
