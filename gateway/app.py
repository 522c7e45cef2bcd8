"""``App``: the handler registry, source-compatible with Capsule's functional ``cpsl.App``.

Deploy-only constructor fields (``image``, ``channels``, ``cpu``, ``memory``, ``secrets``...) are
accepted and ignored, and unlike Capsule, ``image=`` is not required: decorators work on any App.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.collections import CollectionRef
    from gateway.tasks.api import TaskQuery

log = logging.getLogger("chatgate.app")

Handler = Callable[..., Any]

# Names an app may not give a function decorated with @schedule/@endpoint/@task, because
# Capsule stores those functions as attributes of the App under the function's name.
_RESERVED_ATTRIBUTES = frozenset({"get", "set", "delete", "data", "message", "action", "collection", "db"})


@dataclass
class EndpointSpec:
    method: str
    path: str
    authorized: bool
    handler: Handler


@dataclass
class DataSpec:
    name: str
    access: str
    handler: Handler


@dataclass
class MessageSpec:
    name: str | None
    label: str | None
    handler: Handler


@dataclass
class ScheduleSpec:
    name: str
    trigger: str
    handler: Handler
    options: dict[str, Any] = field(default_factory=dict)


class App:
    """A chat app: ``@app.message()`` handlers plus the lifecycle and HTTP hooks."""

    def __init__(
        self,
        name: str,
        *,
        image: Any = None,
        channels: list[Any] | None = None,
        keep_warm_seconds: int = 0,
        secrets: list[str] | None = None,
        filesystems: dict[str, Any] | None = None,
        npm_packages: list[str] | None = None,
        cpu: float = 0.25,
        memory: int = 512,
        gpu: str | None = None,
        price: int = 0,
        pricing_type: str = "one_time",
    ) -> None:
        self.name = name
        self.deploy_fields: dict[str, Any] = {
            key: value
            for key, value in {
                "image": image, "channels": channels, "keep_warm_seconds": keep_warm_seconds, "secrets": secrets,
                "filesystems": filesystems, "npm_packages": npm_packages, "cpu": cpu, "memory": memory, "gpu": gpu,
                "price": price, "pricing_type": pricing_type,
            }.items()
            if value is not None
        }
        """Capsule's deploy settings (image, channels, cpu, ...): kept, not used."""
        self.message_specs: dict[str | None, MessageSpec] = {}
        self.actions: dict[str, Handler] = {}
        self.endpoints: list[EndpointSpec] = []
        self.data_sources: dict[str, DataSpec] = {}
        self.boot_hooks: list[Handler] = []
        self.shutdown_hooks: list[Handler] = []
        self.enter_hooks: list[Handler] = []
        self.exit_hooks: list[Handler] = []
        self.session_inits: dict[str, Handler] = {}
        self.schedules: list[ScheduleSpec] = []
        self.task_descriptors: dict[str, Any] = {}
        """The ``@app.task`` functions by name (``TaskDescriptor``); ``app.tasks`` queries tasks."""
        self.integration_specs: dict[str, Any] = {}
        self.ui_config: dict[str, Any] = {}
        """Capsule's hosted-UI settings (``theme``, ``home``, ``shell``...): kept, not used."""
        self.runtime: Any = None
        """The running Gateway (set at start); ``None`` before ``chatgate run`` starts it."""
        self._collections: Any = None
        self._kv_store: Any = None
        self._task_query: TaskQuery | None = None

    @property
    def collections(self) -> Any:
        """The app's declared collections (``CollectionManager``), made on first use."""
        if self._collections is None:
            from gateway.collections import CollectionManager

            self._collections = CollectionManager(self._store, self._current_scope)
        return self._collections

    # -- runtime hooks for collections ---------------------------------------------------

    def _store(self) -> Any:
        if self.runtime is None:
            raise RuntimeError(f"app {self.name!r} is not running: start it with `chatgate run`")
        return self.runtime.store

    @staticmethod
    def _current_scope() -> Any:
        from gateway.context import current_scope

        return current_scope()

    # -- chat handlers ---------------------------------------------------------------------

    @property
    def message_handlers(self) -> dict[str | None, Handler]:
        return {name: spec.handler for name, spec in self.message_specs.items()}

    def message(self, name: str | None = None, *, label: str | None = None) -> Callable[[Handler], Handler]:
        """Register ``async def handler(session, msg)``; ``name`` makes it a named chat."""

        def decorator(fn: Handler) -> Handler:
            if name in self.message_specs:
                log.warning("@app.message(%r) registered twice; the later handler wins", name)
            self.message_specs[name] = MessageSpec(name, label, fn)
            fn._cpsl_message = name  # type: ignore[attr-defined]
            return fn

        return decorator

    def action(self, name: str | None = None) -> Callable[[Handler], Handler]:
        """Register ``async def handler(session, event)`` for a button or UI action."""

        def decorator(fn: Handler) -> Handler:
            self.actions[name or fn.__name__] = fn
            fn._cpsl_action = name or fn.__name__  # type: ignore[attr-defined]
            return fn

        return decorator

    def session(self, name: str) -> SessionRef:
        """Two uses, told apart by how the result is used:

        - ``@app.session("name")`` registers an initializer for UI-started named sessions
          (Capsule);
        - ``await app.session(session_id)`` opens the real session ``session_id`` from a job or
          task, with its history, ``data`` and channel: replies reach the conversation as
          standalone messages (chatgate).
        """
        return SessionRef(self, name)

    # -- lifecycle -------------------------------------------------------------------------

    def boot(self) -> Callable[[Handler], Handler]:
        return self._hook(self.boot_hooks)

    def shutdown(self) -> Callable[[Handler], Handler]:
        return self._hook(self.shutdown_hooks)

    def enter(self) -> Callable[[Handler], Handler]:
        """``h(session)``: runs once per new session (persisted), before its first handler."""
        return self._hook(self.enter_hooks)

    def exit(self) -> Callable[[Handler], Handler]:
        """``h(session)``: runs when a session is deleted (Capsule never calls it)."""
        return self._hook(self.exit_hooks)

    @staticmethod
    def _hook(target: list[Handler]) -> Callable[[Handler], Handler]:
        def decorator(fn: Handler) -> Handler:
            target.append(fn)
            return fn

        return decorator

    # -- HTTP ------------------------------------------------------------------------------

    def endpoint(self, method: str = "GET", path: str = "/", authorized: bool = True) -> Callable[[Handler], Handler]:
        """Serve ``h(ctx)`` or ``h(request)`` at ``path``; a dict result becomes JSON."""

        def decorator(fn: Handler) -> Handler:
            if not path.startswith("/"):
                raise ValueError(f"endpoint path must start with '/': {path!r}")
            self.endpoints.append(EndpointSpec(method.upper(), path, authorized, fn))
            self._store_attribute(fn)
            return fn

        return decorator

    def data(self, name: str, *, access: str = "public") -> Callable[[Handler], Handler]:
        """Serve ``h(ctx, **query)`` at ``GET /data/<name>``."""
        if access not in ("public", "authenticated"):
            raise ValueError("access must be 'public' or 'authenticated'")

        def decorator(fn: Handler) -> Handler:
            self.data_sources[name] = DataSpec(name, access, fn)
            return fn

        return decorator

    def _store_attribute(self, fn: Handler) -> None:
        """Capsule keeps schedule/endpoint/task functions as App attributes; so do we, safely."""
        if fn.__name__ in _RESERVED_ATTRIBUTES or hasattr(type(self), fn.__name__):
            log.warning("not storing %s on the App: the name would shadow an App method", fn.__name__)
            return
        setattr(self, fn.__name__, fn)

    # -- scheduling (the scheduler module wires these up) ----------------------------------

    def schedule(self, cron: str | None = None, **options: Any) -> Callable[[Handler], Handler]:
        """Run ``async def h()`` on a 5-field cron (Capsule). ``every=`` seconds or ``at=`` a
        datetime give interval and one-off triggers (chatgate extensions)."""
        if cron is None and not options.keys() & {"every", "at"}:
            raise ValueError("@app.schedule needs a cron string, every= seconds or at= a datetime")

        def decorator(fn: Handler) -> Handler:
            trigger = cron or ("every" if "every" in options else "at")
            self.schedules.append(ScheduleSpec(fn.__name__, trigger, fn, options))
            self._store_attribute(fn)
            return fn

        return decorator

    def task(
        self,
        retries: int = 0,
        timeout: int = 0,
        lock: str | None = None,
        retry_for: list[type[Exception]] | None = None,
        callback_url: str | None = None,
        process: bool = False,
        *,
        backoff: tuple[float, float] | None = None,
    ) -> Any:
        """``@app.task(retries=, timeout=, lock=, retry_for=, callback_url=)`` (or bare
        ``@app.task``): the function becomes a ``TaskDescriptor``, also left at ``app.<name>``
        (``await app.<name>.submit(...)``). ``backoff=(initial, max)`` seconds between retries
        overrides the ``[scheduler]`` settings (chatgate); ``process=True`` runs in-process."""
        from gateway.tasks.api import task_decorator

        options: dict[str, Any] = {"retries": retries, "timeout": timeout, "lock": lock, "retry_for": retry_for,
                                   "callback_url": callback_url, "process": process, "backoff": backoff}
        if callable(retries) and not isinstance(retries, int):  # bare @app.task
            return task_decorator(self, retries, **{**options, "retries": 0})
        return task_decorator(self, **options)

    @property
    def tasks(self) -> TaskQuery:
        """The app's tasks, whatever their kind: ``await app.tasks.get(task_id)``, ``find``,
        ``count``, ``cancel`` (Capsule's runtime task query)."""
        if self._task_query is None:
            from gateway.tasks.api import TaskQuery

            self._task_query = TaskQuery(self)
        return self._task_query

    async def broadcast(
        self, content: Any, *, session_ids: Any = None, channel: str | None = None, concurrency: int | None = None
    ) -> Any:
        """Send text, a Block or ``f(session)`` to many sessions within each channel's pacing;
        returns a ``BroadcastResult`` (see gateway.broadcast)."""
        from gateway.broadcast import broadcast

        if self.runtime is None:
            raise RuntimeError(f"app {self.name!r} is not running: broadcast needs a running gateway")
        return await broadcast(self.runtime, content, session_ids=session_ids, channel=channel, concurrency=concurrency)

    # -- data --------------------------------------------------------------------------------

    def collection(
        self,
        name: str,
        *,
        columns: list[Any] | None = None,
        scope: str = "app",
        sortable: bool = False,
        filterable: bool = False,
        paginate: int = 0,
    ) -> CollectionRef:
        """Declare a collection (``columns`` are strings, ``Column``s or column dicts)."""
        return self.collections.declare(
            name, scope, columns, sortable=sortable, filterable=filterable, paginate=paginate
        )

    @property
    def db(self) -> Any:
        """Every collection, unscoped: ``app.db.<name>``."""
        return self.collections.unscoped()

    async def get(self, key: str, default: Any = None) -> Any:
        return await self._kv().get(key, default, scope="app", scope_id="")

    async def set(self, key: str, value: Any) -> Any:
        await self._kv().set(key, value, scope="app", scope_id="")
        return value

    async def delete(self, key: str) -> None:
        await self._kv().delete(key, scope="app", scope_id="")

    def _kv(self) -> Any:
        """One KV store per app, sharing the collections' SQLite write queue."""
        if self._kv_store is None:
            from gateway.kv import KVStore

            self._kv_store = KVStore(self._store, write_gate=self.collections.backend.gate)
        return self._kv_store

    # -- integrations ----------------------------------------------------------------------

    def add_integration(
        self,
        integration_type: Any,
        *,
        client_id: Any = "",
        client_secret: Any = "",
        scopes: list[str] | None = None,
        fields: list[str] | None = None,
        **options: Any,
    ) -> None:
        """Declare an integration users can connect (OAuth 2 or secret fields): a name, an
        ``Integration`` or an ``IntegrationConfig`` (``gateway.GitHub(client_id=..., ...)``).
        ``Secret`` values are read from the environment here. Further keywords
        (``authorize_url``, ``token_url``, ...) describe a custom OAuth provider (chatgate)."""
        from gateway.types import IntegrationConfig, integration_name, resolve_secret

        integration = integration_type
        options = {"client_id": client_id, "client_secret": client_secret, "scopes": scopes, "fields": fields,
                   **options}
        options = {key: resolve_secret(value) for key, value in options.items()}
        if isinstance(integration, IntegrationConfig):
            integration = dataclasses.replace(
                integration,
                client_id=resolve_secret(integration.client_id),
                client_secret=resolve_secret(integration.client_secret),
            )
        self.integration_specs[integration_name(integration)] = {"integration": integration, **options}

    # -- Capsule's hosted UI configuration: accepted and kept, not used by chatgate ----------

    def theme(
        self,
        *,
        preset: str | None = None,
        logo: str | None = None,
        logo_background: str | None = None,
        tagline: str | None = None,
        title: str | None = None,
        description: str | None = None,
        site_name: str | None = None,
        preview_image: str | None = None,
        favicon: str | None = None,
        primary: str | None = None,
        accent: str | None = None,
        background: str | None = None,
        foreground: str | None = None,
        sidebar: str | None = None,
        surface: str | None = None,
        border: str | None = None,
        muted: str | None = None,
        danger: str | None = None,
        success: str | None = None,
        font_sans: str | None = None,
        font_mono: str | None = None,
        radius: str | None = None,
    ) -> None:
        given = {key: value for key, value in locals().items() if key != "self" and value is not None}
        self.ui_config["theme"] = given

    def home(
        self,
        *,
        title: str | None = None,
        subtitle: str | None = None,
        suggestions: list[Any] | tuple[Any, ...] | None = None,
        access: str = "public",
    ) -> None:
        self.ui_config["home"] = {"title": title, "subtitle": subtitle, "suggestions": suggestions, "access": access}

    def shell(
        self,
        *,
        home: str = "default",
        show_sidebar: bool = True,
        show_header: bool = True,
        show_pages: bool = True,
        show_chats: bool = True,
        default_page: Any | None = None,
    ) -> None:
        self.ui_config["shell"] = {"home": home, "show_sidebar": show_sidebar, "show_header": show_header,
                                   "show_pages": show_pages, "show_chats": show_chats, "default_page": default_page}

    def add_npm_packages(self, *packages: str) -> None:
        self.ui_config.setdefault("npm_packages", []).extend(packages)

    # -- misc ------------------------------------------------------------------------------

    def manifest(self) -> dict[str, Any]:
        """What the app declares, for ``/_meta`` and the widget's handler picker."""
        return {
            "name": self.name,
            "has_message_handler": None in self.message_specs,
            "message_handlers": [
                {"name": s.name, "label": s.label or s.name or self.name} for s in self.message_specs.values()
            ],
            "actions": sorted(self.actions),
            "endpoints": [{"method": e.method, "path": e.path} for e in self.endpoints],
            "data_sources": sorted(self.data_sources),
            "schedules": [s.name for s in self.schedules],
            "tasks": sorted(self.task_descriptors),
        }


class SessionRef:
    """The result of ``app.session(x)``: a decorator, or an awaitable opening session ``x``."""

    def __init__(self, app: App, key: str) -> None:
        self.app = app
        self.key = key

    def __call__(self, fn: Handler) -> Handler:
        self.app.session_inits[self.key] = fn
        return fn

    def __await__(self) -> Any:
        if self.app.runtime is None:
            raise RuntimeError(f"app {self.app.name!r} is not running: app.session() needs a running gateway")
        return self.app.runtime.sessions.open(self.key).__await__()


