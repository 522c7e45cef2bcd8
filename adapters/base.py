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
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from aiohttp import web

from gateway.inbound import Accepted, Inbound
from gateway.outbound import Capabilities, Limits, Outbox
from gateway.plugins import AdapterSpec as AdapterSpec  # re-exported: the door an adapter package imports
from gateway.types import Attachment, SessionChannel

if TYPE_CHECKING:
    from gateway.config import Settings


class GatewayContext(Protocol):
    """The core, as an adapter sees it (``gateway.runtime.Gateway`` implements it)."""

    settings: Settings
    app: Any
    """The ``gateway.App`` registry (handler names for named chats)."""
    store: Any
    """The ``gateway.store.Store``: sessions, messages, users, leases (``acquire_lease``)."""
    files: Any
    """The ``gateway.files.FileStore``: save uploads, read files, sign URLs."""
    bus: Any
    """Pub/sub for frames that must reach the process holding a client's connection."""

    async def submit(self, inbound: Inbound) -> Accepted:
        """Record ``inbound`` durably and queue it; returns once it is safe to acknowledge."""
        ...

    def awaited_approval(self, session_id: str) -> tuple[str, str] | None:
        """``(inbox id, block id)`` while the session's handler waits in ``prompt_approval``;
        a ``button`` event naming that block with ``"approve"`` / ``"reject"`` answers it."""
        ...

    def sessions_awaiting_approval(self) -> list[str]:
        """The sessions whose handler waits in ``prompt_approval`` now."""
        ...

    @property
    def public_url(self) -> str:
        """The gateway's externally reachable base URL, without a trailing slash."""
        ...

    def spawn(self, coro: Any, *, name: str) -> Any:
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
        """Connect (start polling, open a socket). Return once it is running."""

    @abstractmethod
    async def stop(self) -> None:
        """Disconnect. Called after the dispatcher drained: running handlers have finished and
        their replies went out through this adapter, so only connections remain to close."""

    @abstractmethod
    def outbox(self, channel: SessionChannel, session_id: str) -> Outbox:
        """The outbound side of the conversation at ``channel``."""

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
