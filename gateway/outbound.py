"""What the core asks of an adapter for one conversation: the outbound half of the seam.

A ``Session`` never talks to a platform. It stores what it sends, then hands it to the
conversation's :class:`Outbox`, which the adapter that owns the conversation provides. The
adapter renders natively, splits what exceeds its limits, and paces what it sends.

``MessageRef`` values are the adapter's own references to what it sent (Telegram message ids,
Slack ``ts``, web message ids); the core stores them opaquely and gives them back when the same
block is shown again, so the adapter can edit in place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

MessageRef = str


@dataclass(frozen=True)
class Limits:
    """The platform's hard limits, declared by each adapter with a source for every number."""

    max_text: int
    """Characters in one message; longer text is split, never truncated."""
    max_caption: int | None = None
    max_buttons: int | None = None


@dataclass(frozen=True)
class Capabilities:
    edits: bool = True
    """Sent messages can be edited (streaming by edits, blocks updated in place)."""
    native_stream: bool = False
    buttons: bool = True
    markdown: bool = True


class StreamSink(Protocol):
    """Receives one streamed reply. The core's pump calls ``frame`` with the whole text so far,
    never faster than ``min_interval`` and never twice with the same text, then ``close`` once.
    ``frame`` may await as long as the platform needs (a pacer): frames written meanwhile are
    coalesced, so a slow platform sees fewer, larger frames and nothing is lost."""

    min_interval: float

    async def frame(self, text: str) -> None: ...

    async def close(self, text: str, *, stopped: bool) -> list[MessageRef]:
        """Deliver ``text`` as the final message, exactly once. ``stopped`` says the user
        stopped the reply (the adapter may mark it)."""
        ...


class Outbox(Protocol):
    """One conversation's outbound side. Every method may raise; the core logs and goes on."""

    async def send_text(self, message_id: str, text: str) -> list[MessageRef]:
        """Send Markdown ``text`` as one or more messages; returns their refs in order."""
        ...

    def open_stream(self, message_id: str) -> StreamSink: ...

    async def show_block(
        self, message_id: str, envelope: dict[str, Any], previous: list[MessageRef] | None
    ) -> list[MessageRef]:
        """Render a block. ``previous`` holds the refs of the last render of the same block id
        (update it in place when the platform can), ``None`` for a new block."""
        ...

    async def notify(self, text: str, detail: str) -> None:
        """A transient status ("Searching..."): never part of the history."""
        ...

    async def end_turn(self, inbound_id: str | None, error: str | None) -> None:
        """The handler for ``inbound_id`` finished (``error`` is a short code when it failed:
        ``handler_error``, ``timeout``, ``stopped``, ``session_deleted``). Clears status lines; ends REST
        turns."""
        ...
