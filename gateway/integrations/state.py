"""The ``state`` of a connect link: signed, expiring, bound to the user and the waiting prompt.

The token is self-contained (``card_fields`` is synchronous and must not touch the database);
single use is enforced by the flow table, which remembers every state id that was used.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeSerializer

STATE_SALT = "chatgate.integrations.state"


class StateRefused(Exception):
    """The state is forged, malformed or expired. ``reason`` is safe to show the user."""

    def __init__(self, reason: str, *, expired: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.expired = expired


@dataclass(frozen=True)
class ConnectState:
    id: str
    provider: str
    user_id: str
    scope_key: str
    """Where the credentials go: the user id, or the owner id for an owner-scoped provider."""
    session_id: str
    prompt_id: str | None
    expires_at: float


class StateSigner:
    def __init__(self, secret_key: str) -> None:
        self._serializer = URLSafeSerializer(secret_key, salt=STATE_SALT)

    def issue(
        self, *, provider: str, user_id: str, scope_key: str, session_id: str, prompt_id: str | None, ttl: float
    ) -> tuple[ConnectState, str]:
        state = ConnectState(
            id=secrets.token_urlsafe(16),
            provider=provider,
            user_id=user_id,
            scope_key=scope_key,
            session_id=session_id,
            prompt_id=prompt_id,
            expires_at=round(time.time() + ttl, 3),
        )
        token = self._serializer.dumps(
            [
                state.id,
                state.provider,
                state.user_id,
                state.scope_key,
                state.session_id,
                state.prompt_id,
                round(state.expires_at, 3),
            ]
        )
        return state, token

    def verify(self, token: str, *, provider: str | None = None) -> ConnectState:
        """The state a token carries. Raises :class:`StateRefused` for anything but a genuine,
        unexpired token (for ``provider``, when given)."""
        if not token:
            raise StateRefused("This link has no connection state.")
        try:
            fields = self._serializer.loads(token)
        except BadSignature:
            raise StateRefused("This connection link is not valid (its signature does not match).") from None
        if not isinstance(fields, list) or len(fields) != 7:
            raise StateRefused("This connection link is not valid.")
        state_id, name, user_id, scope_key, session_id, prompt_id, expires_at = fields
        state = ConnectState(state_id, name, user_id, scope_key, session_id, prompt_id, float(expires_at))
        if provider is not None and state.provider != provider:
            raise StateRefused("This connection link belongs to another integration.")
        if time.time() > state.expires_at:
            raise StateRefused("This connection link has expired. Ask again in the chat for a new one.", expired=True)
        return state
