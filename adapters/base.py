"""The Adapter contract: everything a platform needs to implement, and nothing more.

An adapter has two halves. Inbound, it turns platform traffic into :class:`gateway.inbound.Inbound`
events and hands them to ``GatewayContext.submit`` (which records them durably before it returns:
acknowledge the platform only after that). Outbound, ``outbox(channel)`` returns the
:class:`gateway.outbound.Outbox` that renders, splits and paces what a session sends.

A new platform is a package (a folder under ``adapters/``, or its own pip package) with a class
implementing this, plus an :class:`AdapterSpec` named in the ``chatgate.adapters`` entry-point
group: the spec holds what the core needs before importing the adapter, namely the settings model
of its ``[name]`` section (``settings.<name>``), its conventional environment variables, the rule
that enables it (``enabled(settings)``) and the hint of its "off" start-up line; the running
adapter's own line is :meth:`Adapter.describe`. Nothing in ``gateway/`` changes (see
docs/adapters.md).

Counting for ``/metrics``: call :func:`platform_call` once per request to the platform's API (at
the adapter's single request point, with the HTTP status), and :func:`socket_opened` for each
client connection the adapter holds open (it returns the function to call when it closes).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Coroutine
from typing import Any, ClassVar, Protocol

from aiohttp import web

from gateway.approvals import ApprovalDesk
from gateway.bus import Bus, BusDisconnected, SubscriberOverflow, Subscription
from gateway.chats import ChatCatalog
from gateway.config import Settings
from gateway.dispatch import UnknownSession
from gateway.files import FileRejected, FileStore
from gateway.ids import id_instant, new_id
from gateway.inbound import Accepted, ButtonPress, Inbound, PlatformUser
from gateway.leases import LeaseStore
from gateway.metrics import platform_call, socket_opened
from gateway.outbound import Capabilities, Limits, MessageRef, Outbox, StreamSink
from gateway.plugins import AdapterSpec
from gateway.ratelimit import Grant, SharedBudgets, SharedBudgetUnavailable, SharedWindow
from gateway.sessions import SessionDirectory
from gateway.store.records import FileRecord, InboundRecord, MessageRecord, SessionRecord
from gateway.types import Attachment, SessionChannel

__all__ = [
    "Accepted", "Adapter", "AdapterSpec", "ApprovalDesk", "Attachment", "Bus", "BusDisconnected", "ButtonPress",
    "Capabilities", "ChatCatalog", "FileRecord", "FileRejected", "FileStore", "GatewayContext", "Grant", "Inbound",
    "InboundRecord", "LeaseStore", "Limits", "MessageRecord", "MessageRef", "Outbox", "PlatformUser",
    "SessionChannel", "SessionDirectory", "SessionRecord", "Settings", "SharedBudgetUnavailable", "SharedBudgets",
    "SharedWindow", "StreamSink", "SubscriberOverflow", "Subscription", "UnknownSession", "id_instant",
    "new_id", "platform_call", "socket_opened",
]


class GatewayContext(Protocol):
    """The core, as an adapter sees it: domain operations, never the store or the app registry
    (``gateway.runtime.Gateway`` implements it)."""

    @property
    def settings(self) -> Settings: ...

    @property
    def sessions(self) -> SessionDirectory:
        """Find, make, open, list and delete sessions (deleting runs ``@app.exit`` hooks), and
        read what was said in them."""
        ...

    @property
    def approvals(self) -> ApprovalDesk:
        """Which handlers wait in ``prompt_approval`` (answered by a ``button`` event)."""
        ...

    @property
    def chats(self) -> ChatCatalog:
        """The app's named chats (``@app.message(name)``) and their labels."""
        ...

    @property
    def files(self) -> FileStore:
        """Save uploads, read files, sign and verify file URLs."""
        ...

    @property
    def bus(self) -> Bus:
        """Pub/sub for frames that must reach the process holding a client's connection."""
        ...

    @property
    def role(self) -> str:
        """``all`` (``chatgate run``), ``web`` (``chatgate web``) or ``worker`` (``chatgate worker``)."""
        ...

    @property
    def inbound(self) -> bool:
        """Whether this process takes platform traffic in. False in a ``chatgate worker``: start
        no poller, open no socket-mode connection, register no webhook; ``mount`` is not called
        there either. The outbox works in every role (a worker sends every reply)."""
        ...

    @property
    def leases(self) -> LeaseStore:
        """Named leases, for work that must run in one process at a time (a poller)."""
        ...

    @property
    def public_url(self) -> str:
        """The gateway's externally reachable base URL, without a trailing slash."""
        ...

    async def submit(self, inbound: Inbound) -> Accepted:
        """Record ``inbound`` durably and queue it; returns once it is safe to acknowledge.
        Raises ``UnknownSession`` when ``inbound.session_id`` names no session."""
        ...

    def spawn(self, coro: Coroutine[Any, Any, Any], *, name: str) -> Any:
        """Run a background task that is cancelled and awaited at shutdown."""
        ...


class Adapter(ABC):
    """One platform. ``channel_types`` are the ``SessionChannel.type`` values it owns (the web
    adapter owns ``chat`` and ``api``). Constructed with the whole :class:`Settings` (its own
    section is ``settings.<spec name>``), only when its :class:`AdapterSpec` enables it."""

    channel_types: ClassVar[tuple[str, ...]]
    limits: ClassVar[Limits]
    capabilities: ClassVar[Capabilities]

    def mount(self, web_app: web.Application) -> None:  # noqa: B027 - optional hook
        """Add the adapter's HTTP routes (webhooks, pages) to the gateway's one aiohttp app."""

    @abstractmethod
    async def start(self, gateway: GatewayContext) -> None:
        """Connect (start polling, open a socket). Return once it is running. When
        ``gateway.inbound`` is False (a ``chatgate worker``) start only what sending needs."""

    @abstractmethod
    async def stop(self) -> None:
        """Disconnect. Called after the dispatcher drained: running handlers have finished and
        their replies went out through this adapter, so only connections remain to close."""

    @abstractmethod
    def outbox(self, channel: SessionChannel, session_id: str, turn: str | None = None) -> Outbox:
        """The outbound side of the conversation at ``channel``, for the handler answering the
        inbound event ``turn`` (``None``: a job, a task, a broadcast). What the outbox sends may
        name the turn, so a client waiting on that turn can pick its own replies out."""

    def resolve_attachment(self, attachment: Attachment) -> Attachment:
        """Give an attachment a way to download itself (``Attachment.fetch``).

        Called on every inbound message before a handler sees it, also for events recovered from
        the inbox after a restart, so adapters store a resolvable ``url`` (for instance
        ``telegram-file:<file_id>``) and bind the credentials here rather than in the inbox.
        """
        return attachment

    def describe(self) -> str:
        """One line for the start-up log: what runs and where (after :meth:`start`). A disabled
        adapter's line is ``AdapterSpec.off_hint``'s, written without importing the adapter."""
        return ", ".join(self.channel_types)
