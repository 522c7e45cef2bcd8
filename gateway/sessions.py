"""``SessionDirectory``: the sessions of a running gateway, as adapters and services use them.

One place to find, make, open, list and delete sessions and to read what was said in them, so
every path that deletes a session runs ``@app.exit`` hooks, stops its running handler and drops
its session-scoped collection data (the REST API, the widget and the CLI alike), and no adapter
needs the store.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from gateway.calls import call_maybe_async
from gateway.conversation import Conversation
from gateway.dispatch import UnknownSession
from gateway.history import StoredHistory
from gateway.inbound import PlatformUser
from gateway.session import Session
from gateway.store import Store
from gateway.store.documents import WriteGate
from gateway.store.records import InboundRecord, MessageRecord, SessionRecord
from gateway.types import IntegrationCredentials, SessionChannel, UserInfo

log = logging.getLogger("chatgate.sessions")


class ExitHooks(Protocol):
    """The ``App`` registry as deletion needs it."""

    @property
    def exit_hooks(self) -> Sequence[Callable[..., Any]]: ...


class RunningHandlers(Protocol):
    """The dispatcher as deletion needs it: cancel what runs for a session."""

    def stop(self, session_id: str) -> bool: ...


ConversationFor = Callable[[str, SessionChannel], Conversation]
IntegrationsFor = Callable[[UserInfo], Any]


class SessionDirectory:
    def __init__(
        self,
        store: Store,
        *,
        hooks: ExitHooks,
        handlers: RunningHandlers,
        conversation_for: ConversationFor,
        integrations_for: IntegrationsFor,
        history_limit: int,
        collections_gate: WriteGate | None,
    ) -> None:
        self._store = store
        self._hooks = hooks
        self._handlers = handlers
        self._conversation_for = conversation_for
        self._integrations_for = integrations_for
        self._history_limit = history_limit
        self._gate = collections_gate

    # -- finding and making ------------------------------------------------------------------

    async def get(self, session_id: str) -> SessionRecord | None:
        return await self._store.sessions.get(session_id)

    async def find(self, channel: SessionChannel) -> SessionRecord | None:
        """The session at a platform address (a chat, a thread), if one was opened there."""
        return await self._store.sessions.find(channel)

    async def create(
        self,
        channel: SessionChannel,
        user: UserInfo,
        *,
        title: str = "",
        metadata: dict[str, Any] | None = None,
        chat_name: str | None = None,
        owner_key: str | None = None,
        session_id: str | None = None,
    ) -> SessionRecord:
        """A new session; ``session_id`` stores one whose id was handed out before (a widget
        conversation is given its id on connect and stored on its first message)."""
        return await self._store.sessions.create(
            channel, user, title=title, metadata=metadata, chat_name=chat_name, owner_key=owner_key,
            session_id=session_id,
        )

    async def list_for(
        self, *, owner_key: str | None = None, user_id: str | None = None, offset: int = 0, limit: int = 20
    ) -> tuple[list[SessionRecord], int]:
        """Newest first, with the total count."""
        return await self._store.sessions.page(owner_key=owner_key, user_id=user_id, offset=offset, limit=limit)

    async def set_metadata(self, session_id: str, metadata: dict[str, Any]) -> None:
        await self._store.sessions.update(session_id, metadata=metadata)

    async def resolve_user(self, platform_user: PlatformUser) -> UserInfo:
        """The stable chatgate user behind a platform identity, made on first sight."""
        return await self._store.users.resolve(platform_user)

    async def known_user(self, platform_user: PlatformUser) -> UserInfo | None:
        """The chatgate user behind a platform identity if one was stored; nothing is made."""
        return await self._store.users.find(platform_user)

    async def user(self, user_id: str) -> UserInfo | None:
        return await self._store.users.get(user_id)

    # -- what was said ---------------------------------------------------------------------

    async def messages(
        self, session_id: str, *, offset: int = 0, limit: int = 20, after_id: str | None = None
    ) -> tuple[list[MessageRecord], int]:
        """Oldest first, with the total count (see ``Store.list_messages`` for ``after_id``)."""
        return await self._store.messages.page(session_id, offset=offset, limit=limit, after_id=after_id)

    async def turn_messages(self, session_id: str, inbound_id: str) -> list[MessageRecord]:
        """Everything stored for one inbound event (the user's message and the replies)."""
        return await self._store.messages.of_turn(session_id, inbound_id)

    async def message_for_inbound(self, session_id: str, inbound_id: str, *, role: str) -> MessageRecord | None:
        return await self._store.messages.for_inbound(session_id, inbound_id, role=role)

    async def inbound(self, inbox_id: str) -> InboundRecord | None:
        """One recorded inbound event (a turn, as PromptRails' executions see it)."""
        return await self._store.inbox.get(inbox_id)

    async def rate(self, session_id: str, inbound_id: str, value: int) -> None:
        """Record (or change) the user's rating of one turn."""
        await self._store.messages.save_feedback(session_id, inbound_id, value)

    # -- sessions a handler can use --------------------------------------------------------

    async def open(self, session_id: str) -> Session:
        """A real Session for ``session_id`` outside any inbound turn (jobs, tasks, broadcasts,
        exit hooks): its replies are standalone messages on the session's channel."""
        record = await self._store.sessions.get(session_id)
        if record is None:
            raise UnknownSession(f"no session {session_id!r}")
        user = await self._store.users.get(record.user_id) or UserInfo(record.user_id)
        history = StoredHistory(self._store.messages, record.id, record.channel.type, self._history_limit)
        await history.prefetch()
        integrations: dict[str, IntegrationCredentials] = await self._integrations_for(user)
        return Session(
            record.id, user, record.channel, data=record.data,
            history=None if history.reads_now else await history.read_async(),
            stored_history=history if history.reads_now else None,
            integrations=integrations, conversation=self._conversation_for(record.id, record.channel),
            mode="standalone",
        )

    def attach(self, record: SessionRecord, user: UserInfo) -> Session:
        """A Session over a record the caller already read (an HTTP handler's caller session)."""
        return Session(
            record.id, user, record.channel, data=record.data,
            conversation=self._conversation_for(record.id, record.channel), mode="standalone",
        )

    async def delete(self, session_id: str) -> bool:
        """Delete a session and everything kept for it: ``@app.exit`` hooks run first (a hook
        that raises is logged), then the session and its messages are removed, its running
        handler is stopped (its turn ends as ``session_deleted``), and its session-scoped
        collection and key-value data are removed."""
        if self._hooks.exit_hooks:
            try:
                session = await self.open(session_id)
            except UnknownSession:
                return False
            for hook in self._hooks.exit_hooks:
                try:
                    await call_maybe_async(hook, session)
                except Exception:
                    log.exception("@app.exit hook %s failed", getattr(hook, "__name__", hook))
        deleted = await self._store.sessions.delete(session_id)
        # Stopped after the rows are gone, so the interrupted turn ends as "session deleted".
        self._handlers.stop(session_id)
        if deleted:
            await self._store.documents.delete_scope("session", session_id, gate=self._gate)
        return deleted
