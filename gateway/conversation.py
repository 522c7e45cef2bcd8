"""``Conversation``: what one Session speaks through, and nothing more.

A Session never sees the whole gateway. The runtime builds it a Conversation: the store that
keeps what it says, the adapter outbox that delivers it (bound to the turn it answers), the
prompt registry its ``prompt_*`` calls wait in, the file store, and the few app services a
handler may reach (actions, collections, tasks, integrations). Each collaborator is typed by
the narrow protocol this module declares, so ``gateway.session`` imports no module above it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from gateway.outbound import Outbox
from gateway.prompts import PromptRegistry
from gateway.store.fence import Fence

if TYPE_CHECKING:
    from gateway.files import FileStore
    from gateway.store import Store
    from gateway.types import IntegrationCredentials, UserInfo


class HandlerCatalog(Protocol):
    """The parts of the ``App`` registry a running handler reaches through its Session."""

    @property
    def actions(self) -> dict[str, Callable[..., Any]]: ...

    @property
    def collections(self) -> Any: ...

    def _kv(self) -> Any: ...


class TaskCards(Protocol):
    """The task service as a ``task_card`` block needs it."""

    async def watch_card(self, task_id: str, session_id: str, message: str | None) -> None: ...

    async def card_fields(self, task_id: str) -> dict[str, Any]: ...


class IntegrationDesk(Protocol):
    """The integrations service as ``prompt_integration`` and ``integration_prompt`` blocks need it."""

    def knows(self, kind: str) -> bool: ...

    def card_fields(
        self, kind: str, *, user: UserInfo, session_id: str, prompt_id: str | None
    ) -> dict[str, Any]: ...

    async def credentials_for(self, user: UserInfo, kind: str) -> IntegrationCredentials | None: ...


@dataclass
class Conversation:
    """One session's outbound world. ``outbox`` is ``None`` when no running adapter owns the
    session's channel (its replies are stored, not delivered); ``turn`` is the inbound event
    the handler answers (``None`` for jobs, tasks and broadcasts)."""

    session_id: str
    store: Store
    outbox: Outbox | None
    prompts: PromptRegistry
    handlers: HandlerCatalog
    files: FileStore | None
    block_lock: Callable[[str, str], asyncio.Lock]
    """``(session_id, block_id)`` -> the lock that serialises renders of one block."""
    shutting_down: Callable[[], bool]
    """Whether the dispatcher is closing: a stream cut now was interrupted, not stopped by the user."""
    tasks: TaskCards | None = None
    integrations: IntegrationDesk | None = None
    turn: str | None = None
    fence: Fence | None = None
    """The session lease the turn runs under (``chatgate worker``): its writes check it, and the
    outbox (``FencedOutbox``) sends nothing once the lease is known lost. ``None`` in one process."""
    replay: list[tuple[str, str]] = field(default_factory=list)
    """``(message id, text)`` of the replies an interrupted run of this turn already sent and
    stored, oldest first."""

    def replayed(self, text: str) -> str | None:
        """Whether ``text`` is the next reply the interrupted run stored: then it is not sent or
        stored again, and its stored id is returned. The first reply that differs ends the replay
        (from there the rerun says something new)."""
        if not self.replay:
            return None
        if self.replay[0][1] != text:
            self.replay.clear()
            return None
        return self.replay.pop(0)[0]
