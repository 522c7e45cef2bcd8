"""Storing a reserved widget session on its first use (see ``reservations.py``)."""

from __future__ import annotations

from adapters.base import SessionRecord
from gateway.types import SessionChannel, UserInfo

from ..context import WIDGET_CHANNEL, WebContext
from ..identity import WebIdentity
from ..reservations import Reservation


async def store_reserved(
    ctx: WebContext, reservation: Reservation, identity: WebIdentity, user: UserInfo | None, *, ip: str
) -> tuple[SessionRecord, UserInfo]:
    """Store a reserved session, and the caller's user when ``user`` is None (once: a second
    caller finds it stored). The new-session limits are counted before anything is stored, so a
    refused visitor leaves no row. Raises ``RateLimited``, or ``not_found`` for another's id."""
    sessions = ctx.core.sessions
    if await sessions.get(reservation.session_id) is None:
        ctx.quotas.spend("new_sessions", ip, identity.key)
        user = user or await ctx.user_of(identity)
        try:
            record = await sessions.create(
                SessionChannel(WIDGET_CHANNEL), user, chat_name=reservation.handler, session_id=reservation.session_id
            )
            return record, user
        except Exception:  # the same id stored meanwhile (the socket and an upload at once)
            if await sessions.get(reservation.session_id) is None:
                raise
    user = user or await ctx.user_of(identity)
    return await ctx.own_widget_session(reservation.session_id, user), user
