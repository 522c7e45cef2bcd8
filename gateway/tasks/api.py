"""The task API an app sees (Capsule §7): ``@app.task``, ``TaskDescriptor`` (left at
``app.<name>``), ``TaskHandle`` and ``TaskQuery`` (``app.tasks``: ``get``, ``find``, ``count``,
``cancel`` over every task of the app).

Everything here is a thin front: the work (the table, claiming, running, retries, task cards)
is ``gateway.tasks.engine.TaskService``, reached through the running gateway.
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from gateway.calls import call_maybe_async
from gateway.session import Session
from gateway.store.tables import utcnow
from gateway.store.task_tables import TaskRow, as_utc


class TaskService(Protocol):
    """The task engine (``gateway.tasks.engine.TaskService``) as this front uses it."""

    async def submit(
        self, descriptor: TaskDescriptor, session_id: str | None, display_name: str, kwargs: dict[str, Any], *,
        run_at: datetime | None = None, recurrence: float | None = None,
    ) -> TaskHandle: ...

    async def handle(self, task_id: str) -> TaskHandle | None: ...

    async def find(
        self, name: str | None, status: str | Iterable[str] | None, session_id: str | None, limit: int | None,
        offset: int, kwarg_filters: dict[str, Any],
    ) -> list[TaskHandle]: ...

    async def count(
        self, name: str | None, status: str | Iterable[str] | None, session_id: str | None,
        kwarg_filters: dict[str, Any],
    ) -> int: ...

    async def cancel(self, task_id: str) -> bool: ...

    async def cancel_matching(
        self, name: str | None, status: str | None, session_id: str | None, kwarg_filters: dict[str, Any]
    ) -> int: ...

    async def wait(self, task_id: str, timeout: float | None = None) -> TaskRow: ...

    async def row(self, task_id: str) -> TaskRow | None:
        """The task's row as stored now (``None`` once it is purged)."""
        ...

    def extend_deadline(self, task_id: str) -> None: ...


class App(Protocol):
    """The ``App`` registry as a task front needs it: its name, and the running gateway whose
    ``tasks`` attribute is the engine (``None`` until it starts)."""

    name: str
    runtime: Any
    task_descriptors: dict[str, TaskDescriptor]

    def _store_attribute(self, fn: Any) -> None: ...

log = logging.getLogger("chatgate.tasks")

RUN_EVERY = re.compile(r"^\s*(?:repeat\s+)?every\s+(.+)$", re.IGNORECASE)
DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|secs|m|min|mins|h|hr|hrs|d|day|days)?\s*$", re.IGNORECASE)
UNIT_SECONDS = {"s": 1, "sec": 1, "secs": 1, "m": 60, "min": 60, "mins": 60, "h": 3600, "hr": 3600, "hrs": 3600,
                "d": 86400, "day": 86400, "days": 86400}



class TaskFailed(RuntimeError):
    """``await handle.result()`` of a task that failed, timed out or was cancelled."""

    def __init__(self, task_id: str, status: str, error: str | None) -> None:
        super().__init__(f"task {task_id} {status}" + (f": {error}" if error else ""))
        self.task_id = task_id
        self.status = status
        self.error = error


# -- the decorator -------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskOptions:
    retries: int = 0
    timeout: float = 0.0
    lock: str | None = None
    retry_for: tuple[type[BaseException], ...] | None = None
    callback_url: str | None = None
    backoff: tuple[float, float] | None = None
    """``(initial, max)`` seconds; the ``[scheduler]`` settings when None."""


def task_decorator(app: App, fn: Callable[..., Any] | None = None, /, **options: Any) -> Any:
    """``@app.task`` and ``@app.task(retries=, timeout=, lock=, retry_for=, callback_url=,
    process=, backoff=)``. ``process=True`` (Capsule: a subprocess) runs in-process here."""
    parsed = _parse_options(options)

    def decorator(function: Callable[..., Any]) -> TaskDescriptor:
        if not callable(function):
            raise TypeError("@app.task decorates a function")
        descriptor = TaskDescriptor(app, function, parsed)
        if descriptor.name in app.task_descriptors:
            log.warning("@app.task %r registered twice; the later function wins", descriptor.name)
        app.task_descriptors[descriptor.name] = descriptor
        app._store_attribute(descriptor)  # Capsule: ``app.<name>`` is the descriptor (``app.x.submit()``)
        function._cpsl_task = descriptor.name  # type: ignore[attr-defined]
        return descriptor

    return decorator(fn) if fn is not None else decorator


def _parse_options(options: dict[str, Any]) -> TaskOptions:
    known = {"retries", "timeout", "lock", "retry_for", "callback_url", "process", "backoff"}
    unknown = set(options) - known
    if unknown:
        raise TypeError(f"@app.task got unknown options {sorted(unknown)}; it takes {sorted(known)}")
    retries = int(options.get("retries") or 0)
    timeout = float(options.get("timeout") or 0)
    if retries < 0 or timeout < 0:
        raise ValueError("@app.task retries and timeout must not be negative")
    retry_for = options.get("retry_for")
    if retry_for is not None:
        retry_for = tuple(retry_for) if isinstance(retry_for, list | tuple | set) else (retry_for,)
        if not all(isinstance(t, type) and issubclass(t, BaseException) for t in retry_for):
            raise TypeError("retry_for takes exception classes")
    backoff = options.get("backoff")
    if backoff is not None:
        backoff = (float(backoff[0]), float(backoff[1]))
    if options.get("process"):
        log.info("@app.task(process=True) runs in the gateway process in chatgate")
    return TaskOptions(retries, timeout, options.get("lock"), retry_for, options.get("callback_url"), backoff)


class TaskDescriptor:
    """What ``@app.task`` returns: call it to run inline, ``submit`` to queue it."""

    def __init__(self, app: App, fn: Callable[..., Any], options: TaskOptions) -> None:
        self.app = app
        self.fn = fn
        self.options = options
        self.name: str = fn.__name__
        self.__name__ = fn.__name__
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn
        self.session_parameter = _session_parameter(fn)

    def __repr__(self) -> str:
        return f"<TaskDescriptor {self.name} retries={self.options.retries} timeout={self.options.timeout}>"

    def __call__(self, *args: Any, **kwargs: Any) -> Awaitable[Any]:
        """``await t(...)`` runs the function inline, now, in the caller's context."""
        return call_maybe_async(self.fn, *args, **kwargs)

    def _service(self) -> TaskService:
        runtime = self.app.runtime
        service = getattr(runtime, "tasks", None) if runtime is not None else None
        if service is None:
            raise RuntimeError(f"task {self.name!r}: the app is not running (start it with `chatgate run`)")
        return service

    async def submit(self, session: Session | str | None = None, display_name: str = "", **kwargs: Any) -> TaskHandle:
        """Queue a run now; ``session`` binds it to a conversation (its replies go there)."""
        return await self._service().submit(self, _session_id(session), display_name, kwargs)

    async def schedule(
        self,
        when: Any = None,
        *,
        session: Session | str | None = None,
        delay: Any = None,
        display_name: str = "",
        **kwargs: Any,
    ) -> TaskHandle:
        """Queue a run later: ``"30m"``, a ``timedelta``, a ``datetime``; ``"every 5m"`` repeats."""
        if isinstance(when, Session):  # Capsule accepts the session positionally
            when, session = None, when
        run_at, every = _when(when if when is not None else delay)
        return await self._service().submit(
            self, _session_id(session), display_name, kwargs, run_at=run_at, recurrence=every
        )

    async def find(
        self,
        status: str | None = None,
        session_id: str | None = None,
        limit: int = 100,
        offset: int = 0,
        **kwargs: Any,
    ) -> list[TaskHandle]:
        """Tasks of this kind, newest first; keywords filter on the task's kwargs."""
        return await self._service().find(self.name, status, session_id, limit, offset, kwargs)

    async def count(self, status: str | None = None, **kwargs: Any) -> int:
        """How many tasks of this kind match; ``session_id=`` filters on the session, any other
        keyword on the task's kwargs."""
        session_id = kwargs.pop("session_id", None)
        return await self._service().count(self.name, status, session_id, kwargs)

    async def cancel(self, status: str | None = None, **kwargs: Any) -> int:
        """Cancel every open task of this kind matching the filters; returns how many."""
        session_id = kwargs.pop("session_id", None)
        return await self._service().cancel_matching(self.name, status, session_id, kwargs)


def _session_parameter(fn: Callable[..., Any]) -> str | None:
    """The parameter that receives the task's Session: ``session``, or one annotated Session."""
    try:
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return None
    if "session" in parameters:
        return "session"
    for name, parameter in parameters.items():
        if "Session" in str(parameter.annotation):
            return name
    return None


def _session_id(session: Session | str | None) -> str | None:
    if session is None:
        return None
    if isinstance(session, Session):
        return session.id or None
    if isinstance(session, str):
        return session or None
    raise TypeError(f"session= takes a Session or a session id, not {type(session).__name__}")


def parse_duration(value: Any) -> float:
    """Seconds in ``"5s"``, ``"30m"``, ``"1h"``, ``"3d"``, a number or a ``timedelta``."""
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        match = DURATION.match(value)
        if match:
            return float(match.group(1)) * UNIT_SECONDS[(match.group(2) or "s").lower()]
    raise ValueError(f"not a duration: {value!r} (use '30s', '5m', '1h', '3d' or a timedelta)")


def _when(value: Any) -> tuple[datetime, float | None]:
    """When a scheduled task first runs, and its repeat interval (None: once)."""
    now = utcnow()
    if value is None:
        return now, None
    if isinstance(value, datetime):
        return (value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)), None
    if isinstance(value, str) and (match := RUN_EVERY.match(value)):
        every = parse_duration(match.group(1))
        if every <= 0:
            raise ValueError(f"a repeat interval must be positive: {value!r}")
        return now + timedelta(seconds=every), every
    return now + timedelta(seconds=parse_duration(value)), None


# -- handles -------------------------------------------------------------------------------


class TaskHandle:
    """One submitted task. Properties are the snapshot taken when the handle was made;
    ``await status()`` and ``await wait()`` read the current state."""

    def __init__(self, service: TaskService, row: TaskRow) -> None:
        self._service = service
        self._row = row

    def __repr__(self) -> str:
        return f"<TaskHandle {self.task_name} {self.task_id} {self._row.status}>"

    @property
    def task_id(self) -> str:
        return self._row.id

    id = task_id

    @property
    def task_name(self) -> str:
        return self._row.name

    @property
    def display_name(self) -> str:
        return self._row.display_name

    @property
    def session_id(self) -> str:
        """The session the task is bound to; ``""`` for none (as Capsule)."""
        return self._row.session_id or ""

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self._row.kwargs)

    @property
    def attempts(self) -> int:
        return self._row.attempts

    @property
    def error(self) -> str | None:
        return self._row.error

    @property
    def created_at(self) -> str:
        """ISO 8601 in UTC (Capsule's handles carry strings); ``""`` when not set."""
        return _iso(self._row.created_at)

    @property
    def started_at(self) -> str:
        return _iso(self._row.started_at)

    @property
    def completed_at(self) -> str:
        return _iso(self._row.completed_at)

    async def status(self) -> str:
        await self._reload()
        return self._row.status

    async def refresh(self) -> None:
        """Restart the running attempt's timeout from now (Capsule's "extend the timeout"); works
        in the process that runs the attempt."""
        self._service.extend_deadline(self.task_id)

    async def cancel(self) -> bool:
        return await self._service.cancel(self.task_id)

    async def wait(self, timeout: float | None = None) -> str:
        """Wait until the task finished (completed, failed, timeout, cancelled); its status."""
        self._row = await self._service.wait(self.task_id, timeout)
        return self._row.status

    async def result(self, timeout: float | None = None) -> Any:
        """The task's return value once it completed; raises ``TaskFailed`` otherwise."""
        status = await self.wait(timeout)
        if status != "completed":
            raise TaskFailed(self.task_id, status, self._row.error)
        return self._row.result

    async def _reload(self) -> None:
        row = await self._service.row(self.task_id)
        if row is not None:
            self._row = row


def _iso(value: datetime | None) -> str:
    moment = as_utc(value)
    return "" if moment is None else moment.isoformat()


# -- app.tasks -----------------------------------------------------------------------------


class TaskQuery:
    """``app.tasks``: every task of the app, whatever its kind (Capsule's ``GlobalTaskQuery``).

    Keywords filter on a task's kwargs, except ``session_id=``, which filters on the session a
    task is bound to (as on ``TaskDescriptor.count``/``cancel``). The registry of the app's task
    functions is ``app.task_descriptors``.
    """

    def __init__(self, app: App) -> None:
        self._app = app

    def __repr__(self) -> str:
        return f"<TaskQuery of {self._app.name!r}>"

    def _service(self) -> TaskService:
        runtime = self._app.runtime
        service = getattr(runtime, "tasks", None) if runtime is not None else None
        if service is None:
            raise RuntimeError(f"app.tasks: the app {self._app.name!r} is not running (start it with `chatgate run`)")
        return service

    async def get(self, task_id: str) -> TaskHandle | None:
        """The task with this id, or None when there is none."""
        return await self._service().handle(str(task_id))

    async def find(
        self, status: str | None = None, limit: int = 100, offset: int = 0, **kwargs: Any
    ) -> list[TaskHandle]:
        """Tasks newest first, ``limit`` of them from ``offset``."""
        session_id = kwargs.pop("session_id", None)
        return await self._service().find(None, status, session_id, limit, offset, kwargs)

    async def count(self, status: str | None = None, **kwargs: Any) -> int:
        session_id = kwargs.pop("session_id", None)
        return await self._service().count(None, status, session_id, kwargs)

    async def cancel(self, status: str | None = None, **kwargs: Any) -> int:
        """Cancel every open task matching the filters; returns how many were cancelled."""
        session_id = kwargs.pop("session_id", None)
        return await self._service().cancel_matching(None, status, session_id, kwargs)
