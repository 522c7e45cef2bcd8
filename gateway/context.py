"""``current_session()``: the one piece of module-level state chatgate allows (a ContextVar)."""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.session import Session

_current: ContextVar[Session | None] = ContextVar("chatgate_current_session", default=None)


def current_session() -> Session | None:
    """The Session of the running handler (message, action, task), the synthetic owner session
    in a schedule, ``None`` in HTTP handlers and outside any handler (as in Capsule)."""
    return _current.get()


def set_current_session(session: Session | None) -> Any:
    return _current.set(session)


def reset_current_session(token: Any) -> None:
    _current.reset(token)


def current_scope() -> Any:
    """The collection scope of the running handler (user, owner and session ids)."""
    session = _current.get()
    if session is None:
        return None
    from gateway.collections import ScopeIdentity

    return ScopeIdentity(user_id=session.user.id, owner_id=session.user.owner_id, session_id=session.id)
