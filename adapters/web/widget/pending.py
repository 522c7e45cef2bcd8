"""Storing a reserved widget session on its first use (see ``reservations.py``)."""

from __future__ import annotations

from gateway.store.records import SessionRecord
from gateway.types import SessionChannel, UserInfo

from ..context import WIDGET_CHANNEL, WebContext
from ..reservations import Reservation


async def store_reserved(
    ctx: WebContext, reservation: Reservation, user: UserInfo, *, ip: str, visitor: str
) -> SessionRecord:
    """Store a reserved session for ``user`` (once; a second caller finds it stored). Counts
    against the new-session limits; raises ``RateLimited`` or ``not_found`` (someone else's id)."""
    store = ctx.core.store
    existing = await store.get_session(reservation.session_id)
    if existing is None:
        ctx.quotas.spend("new_sessions", ip, visitor)
        try:
            return await store.create_session(
                SessionChannel(WIDGET_CHANNEL), user, chat_name=reservation.handler, session_id=reservation.session_id
            )
        except Exception:  # the same id stored meanwhile (the socket and an upload at once)
            if await store.get_session(reservation.session_id) is None:
                raise
    return await ctx.own_widget_session(reservation.session_id, user)
