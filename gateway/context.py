"""The module-level state chatgate allows, as ContextVars (per task, never shared):
``current_session()``, the caller an HTTP handler serves (for collection scopes), the ids of the
turn running now (for log lines) and the metrics of the gateway the code runs for (for the
counting hooks adapters call: ``gateway.metrics.platform_call``)."""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from gateway.session import Session


class PlatformCounters(Protocol):
    """What the counting hooks adapters call need of a gateway's metrics (``GatewayMetrics``)."""

    def platform_call(self, platform: str, method: str, status: int | str) -> None: ...

    def socket_opened(self, adapter: str) -> Callable[[], None]: ...

_current: ContextVar[Session | None] = ContextVar("chatgate_current_session", default=None)
# Who an @app.endpoint / @app.data handler serves (an authenticated caller), so a user- or
# owner-scoped CollectionRef works there as in Capsule. Not current_session(): that stays None
# in HTTP handlers, as Capsule has it.
_http_caller: ContextVar[Any] = ContextVar("chatgate_http_caller", default=None)
# The session and inbound (turn) id of the turn running now: set for the whole turn, not only
# the handler, so every log line of the turn carries them (gateway.logs).
_turn_ids: ContextVar[tuple[str, str] | None] = ContextVar("chatgate_turn_ids", default=None)
# The metrics of the gateway this code runs for. Tests run several gateways in one process, each
# with its own registry: the gateway binds its metrics while it starts (everything started then,
# the HTTP server and the adapters' tasks among them, inherits it) and for each turn.
_metrics: ContextVar[PlatformCounters | None] = ContextVar("chatgate_metrics", default=None)


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


def bind_turn(session_id: str, turn_id: str) -> Any:
    """Name the turn running in this task (and the tasks it starts) until ``reset_turn``."""
    return _turn_ids.set((session_id, turn_id))


def reset_turn(token: Any) -> None:
    _turn_ids.reset(token)


def current_turn_ids() -> tuple[str, str] | None:
    """``(session id, turn id)`` of the turn running now (the turn id is its inbound event's
    id), ``None`` outside a turn."""
    return _turn_ids.get()


def bind_metrics(metrics: PlatformCounters | None) -> Any:
    return _metrics.set(metrics)


def reset_metrics(token: Any) -> None:
    _metrics.reset(token)


def current_metrics() -> PlatformCounters | None:
    """The metrics of the gateway this code runs for; ``None`` outside one (an adapter's part
    used on its own, in a unit test)."""
    return _metrics.get()
