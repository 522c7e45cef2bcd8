"""The module-level state chatgate allows, as ContextVars (per task, never shared):
``current_session()``, and the caller an HTTP handler serves (for collection scopes)."""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.session import Session

_current: ContextVar[Session | None] = ContextVar("chatgate_current_session", default=None)
# Who an @app.endpoint / @app.data handler serves (an authenticated caller), so a user- or
# owner-scoped CollectionRef works there as in Capsule. Not current_session(): that stays None
# in HTTP handlers, as Capsule has it.
_http_caller: ContextVar[Any] = ContextVar("chatgate_http_caller", default=None)


def current_session() -> Session | None:
    """The Session of the running handler (message, action, task), the synthetic owner session
    in a schedule, ``None`` in HTTP handlers and outside any handler (as in Capsule)."""
    return _current.get()


def set_current_session(session: Session | None) -> Any:
    return _current.set(session)


def reset_current_session(token: Any) -> None:
    _current.reset(token)


def bind_http_caller(user: Any) -> Any:
    """Scope collections by ``user`` (a ``UserInfo``) for the HTTP handler running now."""
    from gateway.collections import ScopeIdentity

    return _http_caller.set(ScopeIdentity.for_user(user))


def unbind_http_caller(token: Any) -> None:
    _http_caller.reset(token)


def current_scope() -> Any:
    """The collection scope of the running handler (user, owner and session ids), or of the
    caller an HTTP handler serves."""
    session = _current.get()
    if session is None:
        return _http_caller.get()
    from gateway.collections import ScopeIdentity

    return ScopeIdentity(user_id=session.user.id, owner_id=session.user.owner_id, session_id=session.id)
