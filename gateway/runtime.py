"""``Gateway``: one running chatgate — the store, the dispatcher, the adapters and the HTTP server.

``chatgate run`` builds one of these (role ``all``). Tests build one too, on a loopback port.

Scaled out (docs/scaling.md), the same class runs in one of two roles:

- ``web`` (``chatgate web``): the HTTP server and the adapters' inbound side (widget sockets,
  REST/SSE, webhooks, connect pages, the Telegram poller under its lease). ``submit`` records the
  event and notifies the workers; no handler runs here. Frames of the workers' turns reach the
  sockets and requests held here through the Redis bus.
- ``worker`` (``chatgate worker``): handlers, schedules and tasks, sending to the platforms.
  Adapters start for outbound only (no poller, no webhook routes); sessions are claimed one at a
  time under a fenced lease (``gateway.claims``). It serves ``/healthz``, ``/readyz`` and
  ``/metrics`` on ``worker.port``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import time
import weakref
from collections.abc import Coroutine
from datetime import timedelta
from typing import Any, Literal, cast, get_args

from aiohttp import web

from gateway import integrations, plugins
from gateway.app import App
from gateway.approvals import ApprovalDesk
from gateway.bus import Bus, LocalBus
from gateway.callers import Callers
from gateway.calls import call_maybe_async
from gateway.chats import ChatCatalog
from gateway.claims import SessionClaims
from gateway.config import ConfigError, Settings
from gateway.connections import GuardedAppRunner
from gateway.context import bind_metrics, reset_metrics
from gateway.conversation import Conversation
from gateway.dispatch import Dispatcher
from gateway.fenced_outbox import FencedOutbox
from gateway.files import FileStore
from gateway.health import Check, NotReady, Readiness, RedisPing
from gateway.history import HistoryPrefetch, StoredHistory
from gateway.inbound import Accepted, Inbound
from gateway.intake import Intake
from gateway.leases import LeaseStore
from gateway.loop import running_loop_name
from gateway.metrics import GatewayMetrics
from gateway.operations import Operations
from gateway.outbound import Outbox
from gateway.redis_bus import RedisBus
from gateway.server import build_operations_app, build_web_app, refuse_shadowed_endpoints
from gateway.sessions import SessionDirectory
from gateway.store import Store
from gateway.store.approvals import StoredApprovals
from gateway.store.fence import Fence
from gateway.store.queue import INBOX_CHANNEL, SessionQueue
from gateway.turns import TurnRunner
from gateway.types import Attachment, IntegrationCredentials, SessionChannel, UserInfo

log = logging.getLogger("chatgate")

SHUTDOWN_HOOK_LIMIT = 5.0  # seconds, as Capsule gives @app.shutdown
SHUTDOWN_GRACE = 5.0  # seconds running handlers get at the stop of `chatgate run`

Role = Literal["all", "web", "worker"]
ROLES: tuple[str, ...] = get_args(Role)


def as_role(name: str) -> Role:
    """``name`` as a role, or ``ConfigError``."""
    for role in get_args(Role):
        if name == role:
            return cast(Role, role)
    raise ConfigError(f"unknown role {name!r}: use one of {', '.join(ROLES)}")


def check_scale_out(settings: Settings, role: str) -> None:
    """``web`` and ``worker`` share their work through PostgreSQL and Redis: refuse to start
    without them, with one line that says what to set."""
    if as_role(role) == "all":
        return
    if not settings.database.url.startswith("postgresql"):
        raise ConfigError(
            f"chatgate {role} needs PostgreSQL: set database.url (or DATABASE_URL) to a postgresql:// URL "
            "shared by every web and worker process (SQLite is for chatgate run)"
        )
    if not settings.redis.url:
        raise ConfigError(
            f"chatgate {role} needs Redis: set redis.url (or REDIS_URL) to a redis:// URL shared by every "
            "web and worker process"
        )
    if not settings.secret_key:
        raise ConfigError(
            f"chatgate {role} needs secret_key: set secret_key (or CHATGATE_SECRET_KEY) to the same value in "
            "every web and worker process (file URLs signed by a worker are checked by a web process)"
        )


class Gateway:
    def __init__(
        self, app: App, settings: Settings, adapters: list[Any] | None = None, role: Role = "all"
    ) -> None:
        check_scale_out(settings, role)
        self.app = app
        self.settings = settings
        self.role: Role = role
        """``all`` (``chatgate run``), ``web`` or ``worker``: what this process does (module doc)."""
        self.store = Store(
            settings.database.url, echo=settings.database.echo, pool_size=settings.database.pool_size,
            sqlite_writes=settings.database.sqlite_writes,
        )
        self.bus: Bus = (
            RedisBus(settings.redis.url, key_prefix=settings.redis.key_prefix) if settings.redis.url else LocalBus()
        )
        self.history_prefetch = HistoryPrefetch(settings.dispatch.history_prefetch)
        """Whether a turn on PostgreSQL fetches its history before its handler (``gateway.history``)."""
        self.dispatcher = Dispatcher(
            self.store,
            TurnRunner(self),
            max_concurrent=settings.dispatch.max_concurrent_sessions,
            dedup_retention=timedelta(hours=settings.dispatch.dedup_retention_hours),
            runs_handlers=role != "web",
            notify=INBOX_CHANNEL if role == "web" else None,
            # PostgreSQL reads a turn's context with its event; on SQLite the turn's read is local.
            context_rows=None if self.store.is_sqlite else self.history_rows,
        )
        self.claims: SessionClaims | None = None
        """The session leases of a ``worker`` (made at start, once the store is open)."""
        self.chats = ChatCatalog(app)
        self.intake = Intake(self.store, self.dispatcher, self.resolve_attachment)
        self.approvals = ApprovalDesk(self.dispatcher, StoredApprovals(self.store) if role == "web" else None)
        self.sessions = SessionDirectory(
            self.store,
            hooks=app,
            handlers=self.dispatcher,
            conversation_for=self.conversation,
            integrations_for=self.integrations_for,
            history_limit=settings.dispatch.history_limit,
            collections_gate=app.collections.backend.gate,
        )
        self.callers = Callers(settings.web.api_keys, self.sessions)
        self.leases: LeaseStore = self.store.leases
        self._adapters = adapters
        self.adapters: list[Any] = []
        self._by_channel: dict[str, Any] = {}
        self.integrations: Any = None
        """The integrations service (OAuth/secret connect flows), when configured."""
        self.tasks: Any = None
        """The task service behind ``@app.task``, when the scheduler runs."""
        self.scheduler: Any = None
        self.web_app: web.Application | None = None
        self._runner: web.AppRunner | None = None
        self._site_port: int | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._block_locks: weakref.WeakValueDictionary[tuple[str, str], asyncio.Lock] = weakref.WeakValueDictionary()
        self.started_at: float | None = None
        self._booted = False
        """Whether ``@app.boot`` hooks ran: only then do ``@app.shutdown`` hooks run at stop."""
        self.files = FileStore(settings, self.store, self.public_url)
        self.metrics = GatewayMetrics(backlog=self.store.inbox.backlog, held_leases=self._held_lease_count)
        probe_timeout = settings.server.probe_timeout
        self._redis_ping = RedisPing(settings.redis.url, timeout=probe_timeout) if settings.redis.url else None
        checks: dict[str, Check] = {"database": self.store.ping}
        if self._redis_ping is not None:
            checks["redis"] = self._redis_ping
        checks["dispatcher"] = self._accepting_work
        if role == "worker":
            checks["queue"] = self._hearing_new_work
        self.operations = Operations(
            Readiness(checks, timeout=probe_timeout), self.metrics, settings.server.metrics_token
        )

    # -- the GatewayContext adapters see -----------------------------------------------------

    @property
    def public_url(self) -> str:
        server = self.settings.server
        if server.public_url:
            return server.public_url.rstrip("/")
        host = "127.0.0.1" if server.host in ("0.0.0.0", "::", "") else server.host
        port = server.port if self.role == "worker" else self.port  # a worker's own port serves no pages
        return f"http://{host}:{port}"

    @property
    def port(self) -> int:
        return self._site_port if self._site_port is not None else self.settings.server.port

    def spawn(self, coro: Coroutine[Any, Any, Any], *, name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(_log_crash)
        return task

    async def submit(self, inbound: Inbound) -> Accepted:
        """Record an inbound event durably and queue it (see ``gateway.intake``)."""
        return await self.intake.submit(inbound)

    # -- wiring the parts to each other ----------------------------------------------------------

    def history_rows(self) -> int:
        """The stored messages a turn fetches before its handler runs (the current one
        included): none while ``history_prefetch`` says handlers leave their history alone."""
        if not self.history_prefetch.wanted:
            return 0
        return StoredHistory.rows_to_fetch(self.settings.dispatch.history_limit, in_turn=True)

    def outbox_for(self, channel: SessionChannel, session_id: str, *, turn: str | None = None) -> Outbox | None:
        adapter = self._by_channel.get(channel.type)
        return None if adapter is None else adapter.outbox(channel, session_id, turn)

    def resolve_attachment(self, channel_type: str, attachment: Attachment) -> Attachment:
        adapter = self._by_channel.get(channel_type)
        return attachment if adapter is None else adapter.resolve_attachment(attachment)

    @property
    def inbound(self) -> bool:
        """Whether this process takes platform traffic in (``all`` and ``web``): adapters start
        their pollers, sockets and webhooks only then (docs/adapters.md)."""
        return self.role != "worker"

    def conversation(
        self,
        session_id: str,
        channel: SessionChannel,
        *,
        turn: str | None = None,
        fence: Fence | None = None,
        replay: list[tuple[str, str]] | None = None,
    ) -> Conversation:
        """What a Session for ``session_id`` speaks through (``""``: a schedule's synthetic
        session). ``fence``: the session lease a worker's turn runs under (its writes and sends
        stop once it is lost); ``replay``: replies an interrupted run of the turn already made."""
        outbox = self.outbox_for(channel, session_id, turn=turn) if session_id else None
        if outbox is not None and fence is not None:
            outbox = FencedOutbox(outbox, fence)
        return Conversation(
            session_id=session_id,
            store=self.store,
            outbox=outbox,
            prompts=self.dispatcher.prompts,
            handlers=self.app,
            files=self.files,
            block_lock=self.block_lock,
            shutting_down=self.shutting_down,
            tasks=self.tasks,
            integrations=self.integrations,
            turn=turn,
            fence=fence,
            replay=list(replay or []),
        )

    def _held_lease_count(self) -> int:
        """Named leases (the poller, the scheduler leader) and a worker's session leases."""
        return self.store.leases.held_count() + (self.claims.held_count() if self.claims is not None else 0)

    def shutting_down(self) -> bool:
        return self.dispatcher.closing

    async def _accepting_work(self) -> None:
        """The readiness check of the dispatcher: started, and not shutting down."""
        if self.dispatcher.closing:
            raise NotReady("shutting down")
        if self.started_at is None:
            raise NotReady("starting")

    async def _hearing_new_work(self) -> None:
        """The readiness check of a worker's queue: its LISTEN connection is up."""
        if self.claims is None:
            raise NotReady("starting")
        if not self.claims.listening:
            raise NotReady("not listening for new events (reconnecting to PostgreSQL)")

    def block_lock(self, session_id: str, block_id: str) -> asyncio.Lock:
        """Serialises the renders of one block: a task card re-shown by the task service while
        the handler shows it must edit the first render, not post a second message."""
        key = (session_id, block_id)
        lock = self._block_locks.get(key)
        if lock is None:
            lock = self._block_locks[key] = asyncio.Lock()
        return lock

    def adapter_names(self) -> list[str]:
        return [type(a).__name__ for a in self.adapters]

    async def integrations_for(self, user: UserInfo) -> dict[str, IntegrationCredentials]:
        if self.integrations is None:
            return {}
        return await self.integrations.all_for(user)

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        # Everything started from here (the HTTP server, the adapters' tasks, recovered turns)
        # inherits this gateway's metrics for the counting hooks (gateway.metrics).
        token = bind_metrics(self.metrics)
        try:
            await self._start()
        finally:
            reset_metrics(token)

    async def _start(self) -> None:
        if self.role == "worker":
            await self._start_worker()
            return
        started = time.perf_counter()
        self.app.runtime = self
        await self.store.open()
        self._bind_adapters()
        await self._start_services()
        self.web_app = build_web_app(self)
        for part in (*self.adapters, self.tasks, self.scheduler):
            mount = getattr(part, "mount", None)
            if mount is not None:
                mount(self.web_app)
        if self.integrations is not None:
            integrations.mount(self.web_app, self.integrations)
        try:
            refuse_shadowed_endpoints(self.web_app, self.app.endpoints)
        except ConfigError:
            await self.stop()
            raise
        for hook in self.app.boot_hooks:
            await call_maybe_async(hook)
        self._booted = True
        self._runner = GuardedAppRunner(self.web_app, self.settings.server, access_log=None, handle_signals=False)
        await self._runner.setup()
        if self.role != "web":  # requests and adapters' events from now on run after the interrupted ones
            self.dispatcher.hold_until_recovered()
        site = web.TCPSite(self._runner, self.settings.server.host, self.settings.server.port, reuse_address=True)
        await site.start()
        sockets = getattr(site._server, "sockets", None) or []
        if sockets:
            self._site_port = sockets[0].getsockname()[1]
        self.files.public_url = self.public_url
        for adapter in self.adapters:
            await adapter.start(self)
        if self.role == "web":  # the workers run handlers, recovery, schedules and the purge
            self.started_at = time.perf_counter() - started
            return
        recovered = await self.dispatcher.recover()
        if recovered:
            log.info("re-running %d event(s) interrupted by the last shutdown", recovered)
        self.spawn(self.dispatcher.purge_forever(), name="chatgate-inbox-purge")
        if self.scheduler is not None:
            await self.scheduler.start()
        self.started_at = time.perf_counter() - started

    async def _start_worker(self) -> None:
        """Adapters for outbound only, the services, the operations port, then the claims."""
        started = time.perf_counter()
        self.app.runtime = self
        await self.store.open()
        self._bind_adapters()
        await self._start_services()
        for hook in self.app.boot_hooks:
            await call_maybe_async(hook)
        self._booted = True
        self.web_app = build_operations_app(self)
        self._runner = GuardedAppRunner(self.web_app, self.settings.server, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.server.host, self.settings.worker.port, reuse_address=True)
        await site.start()
        sockets = getattr(site._server, "sockets", None) or []
        if sockets:
            self._site_port = sockets[0].getsockname()[1]
        for adapter in self.adapters:
            await adapter.start(self)
        turns = self.store.postgres_turns  # the per-turn connections: the claims of every turn run there too
        self.claims = SessionClaims(
            SessionQueue(self.store.engine, turns.connections if turns is not None else None),
            self.dispatcher,
            dsn=_libpq_dsn(self.settings.database.url),
            ttl=self.settings.dispatch.lease_ttl,
        )
        await self.claims.start()
        self.spawn(self.dispatcher.purge_forever(), name="chatgate-inbox-purge")
        if self.scheduler is not None:
            await self.scheduler.start()
        self.started_at = time.perf_counter() - started

    def _bind_adapters(self) -> None:
        adapters = self._adapters
        if adapters is None:
            adapters = plugins.configured_adapters(self.settings)  # the chatgate.adapters entry points
        self.adapters = list(adapters)
        for adapter in self.adapters:
            for channel_type in adapter.channel_types:
                self._by_channel[channel_type] = adapter
            identify = getattr(adapter, "identify", None)
            if identify is not None:
                self.callers.add_identifier(identify)

    async def _start_services(self) -> None:
        """Optional services (scheduler/tasks, integrations) are wired when their modules exist."""
        for module_name, attribute in (("gateway.scheduler", "attach"), ("gateway.integrations", "attach")):
            try:
                module = importlib.import_module(module_name)
            except ModuleNotFoundError as exc:
                if exc.name != module_name:
                    raise
                continue
            attach = getattr(module, attribute, None)
            if attach is None:
                log.warning("%s has no %s(); the service is not started", module_name, attribute)
                continue
            await attach(self)

    async def stop(self) -> None:
        """Stop in the order that loses nothing: no new events, running handlers finish (and
        their replies still reach the platforms), then the adapters disconnect."""
        if self.scheduler is not None:
            with contextlib.suppress(Exception):
                await self.scheduler.stop()
        if self.claims is not None:  # a worker hands its sessions back once its handlers finished
            await self.claims.stop(self.settings.worker.shutdown_grace)
        else:
            await self.dispatcher.close(SHUTDOWN_GRACE)
        for adapter in reversed(self.adapters):
            try:
                await adapter.stop()
            except Exception:
                log.exception("stopping %s failed", type(adapter).__name__)
        for hook in self.app.shutdown_hooks if self._booted else ():
            try:
                await asyncio.wait_for(call_maybe_async(hook), SHUTDOWN_HOOK_LIMIT)
            except Exception:
                log.exception("@app.shutdown hook %s failed", getattr(hook, "__name__", hook))
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.bus.close()
        if self._redis_ping is not None:
            await self._redis_ping.close()
        await self.store.close()
        self.app.runtime = None

    def describe(self) -> list[str]:
        """Lines for the start-up message: what runs and where."""
        lines = [f"app {self.app.name!r}: {len(self.app.message_specs)} message handler(s)"]
        lines.append(f"database: {_redact(self.settings.database.url)}")
        if self.role == "worker":
            lines.append(f"worker: /healthz, /readyz, /metrics on {self.settings.server.host}:{self.port}; "
                         f"session leases of {self.settings.dispatch.lease_ttl:g} s")
        else:
            lines.append(f"http: {self.public_url} (listening on {self.settings.server.host}:{self.port})")
        if self.role == "web":
            lines.append("handlers: none here (chatgate worker runs them)")
        lines.append(f"event loop: {running_loop_name()}")
        lines.extend(f"channel: {adapter.describe()}" for adapter in self.adapters)
        lines.extend(plugins.not_running_lines(self.settings, self.adapters))
        return lines


def _libpq_dsn(url: str) -> str:
    """``postgresql+asyncpg://...`` as asyncpg's own ``connect`` takes it (the LISTEN connection)."""
    return "postgresql://" + url.split("://", 1)[1]


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        credentials, host = rest.rsplit("@", 1)
        user = credentials.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}" if ":" in credentials else f"{scheme}://{user}@{host}"
    if url.startswith("sqlite"):
        return url.replace("sqlite+aiosqlite:///", "sqlite file ") + (
            "" if url.endswith(":memory:") else f" ({os.path.abspath(url.split('///', 1)[-1])})"
        )
    return url


def _log_crash(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("background task %s crashed", task.get_name(), exc_info=task.exception())
