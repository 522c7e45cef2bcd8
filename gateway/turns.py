"""Running one inbound event: build its Session, pick the handler, run it, clean up.

This is where the Capsule "surprises" get their sensible answers: each invocation has its own
Session; ``@app.enter`` runs once per new session (persisted); ``session.data`` is saved after
the handler, also when it raises; a handler that raises is logged with its traceback and the
user gets a short, configurable apology, never the exception text.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable
from typing import Any, Protocol

from gateway.calls import call_maybe_async
from gateway.config import Settings
from gateway.context import (
    bind_metrics,
    bind_turn,
    reset_current_session,
    reset_metrics,
    reset_turn,
    set_current_session,
)
from gateway.conversation import Conversation
from gateway.dispatch import WorkItem
from gateway.history import HistoryPrefetch, StoredHistory
from gateway.ids import new_id
from gateway.inbound import Inbound
from gateway.metrics import GatewayMetrics
from gateway.outbound import Outbox
from gateway.session import Session
from gateway.store import Store, address_key
from gateway.store.fence import Fence, LeaseLost
from gateway.store.records import MessageRecord, SessionRecord
from gateway.types import Attachment, Event, IntegrationCredentials, Message, SessionChannel, UserInfo

log = logging.getLogger("chatgate.turns")

CHAT_NAME_KEY = "__chat_name__"  # where Capsule keeps a session's named chat
SESSION_DELETED = "session_deleted"  # a turn's outcome when its session went away under it


class HandlerRegistry(Protocol):
    """The ``App`` as a turn needs it: which handler runs for what."""

    @property
    def name(self) -> str: ...

    @property
    def message_handlers(self) -> dict[str | None, Callable[..., Any]]: ...

    @property
    def actions(self) -> dict[str, Callable[..., Any]]: ...

    @property
    def session_inits(self) -> dict[str, Callable[..., Any]]: ...

    @property
    def enter_hooks(self) -> list[Callable[..., Any]]: ...


class TurnHost(Protocol):
    """What a turn needs from the running gateway (``gateway.runtime.Gateway`` provides it)."""

    store: Store
    settings: Settings
    history_prefetch: HistoryPrefetch

    @property
    def app(self) -> HandlerRegistry: ...

    def history_rows(self) -> int: ...

    def conversation(
        self,
        session_id: str,
        channel: SessionChannel,
        *,
        turn: str | None = None,
        fence: Fence | None = None,
        replay: list[tuple[str, str]] | None = None,
    ) -> Conversation: ...

    def outbox_for(self, channel: SessionChannel, session_id: str, *, turn: str | None = None) -> Outbox | None: ...

    def resolve_attachment(self, channel_type: str, attachment: Attachment) -> Attachment: ...

    async def integrations_for(self, user: UserInfo) -> dict[str, IntegrationCredentials]: ...

    def shutting_down(self) -> bool: ...

    @property
    def metrics(self) -> GatewayMetrics: ...


def _lease_lost(item: WorkItem) -> bool:
    return item.fence is not None and item.fence.lost


class TurnRunner:
    def __init__(self, host: TurnHost) -> None:
        self.rt = host

    async def __call__(self, item: WorkItem) -> None:
        """Run one turn with its ids bound for the log (``gateway.logs``) and the gateway's
        metrics bound for the adapters' counting hooks, whichever task submitted the event."""
        ids = bind_turn(item.session_id, item.inbox_id)
        metrics = bind_metrics(self.rt.metrics)
        try:
            await self._run(item)
        finally:
            reset_metrics(metrics)
            reset_turn(ids)

    async def _run(self, item: WorkItem) -> None:
        rt = self.rt
        inbound = item.inbound
        fence = item.fence
        history_limit = rt.settings.dispatch.history_limit
        context: tuple[SessionRecord, UserInfo | None, Callable[[], list[MessageRecord]] | None] | None
        if item.after is not None:  # the last turn's status: nothing of this turn runs before it is stored
            await asyncio.wait([item.after])
            item.after = None
        if item.context is not None:  # read as the event was recorded (Dispatcher.submit)
            prefetched, item.context = item.context, None
            history_before = prefetched.history_before
            context = prefetched.session, prefetched.user, prefetched.history
        else:
            history_before = new_id()  # the history is what was stored before the turn's Session
            context = await rt.store.sessions.turn_context_and_history(
                item.session_id, history_before, rt.history_rows()
            )
        if context is None:  # deleted while the event waited
            await rt.store.inbox.set_status(item.inbox_id, "done", "session deleted", fence=fence)
            outbox = rt.outbox_for(inbound.channel, item.session_id, turn=item.inbox_id)
            if outbox is not None:  # whoever waits on this turn learns it is over
                await outbox.end_turn(item.inbox_id, SESSION_DELETED)
            rt.metrics.turn_ended(inbound.channel.type, SESSION_DELETED, received_at=item.received_at,
                                  handler_seconds=None)
            return
        record, user, history_rows = context
        if address_key(record.channel) is not None:
            # A platform conversation (a group, a channel thread) has many speakers: the user of
            # this turn is whoever sent the event, not whoever spoke first.
            user = item.sender or await rt.store.users.resolve(inbound.user)
        if user is None:
            log.error("session %s has no user (deleted?): event %s is not run", record.id, item.inbox_id)
            await rt.store.inbox.set_status(item.inbox_id, "failed", "user missing", fence=fence)
            outbox = rt.outbox_for(record.channel, item.session_id, turn=item.inbox_id)
            if outbox is not None:  # whoever waits on this turn (a REST call) learns it failed
                await outbox.end_turn(item.inbox_id, "handler_error")
            rt.metrics.turn_ended(record.channel.type, "failed", received_at=item.received_at, handler_seconds=None)
            return
        message = self._bind_attachments(inbound)
        history = StoredHistory(rt.store.messages, record.id, record.channel.type, history_limit,
                                exclude_inbound=item.inbox_id, before_id=history_before, fetched=history_rows,
                                may_block=history_rows is None)
        await history.prefetch()  # when not read with the session: the rows now, decoded if the handler reads them
        session = Session(
            record.id,
            user,
            record.channel,
            history=None if history.reads_now else await history.read_async(),
            stored_history=history if history.reads_now else None,
            data=record.data,
            integrations=await rt.integrations_for(user),
            conversation=rt.conversation(
                record.id, record.channel, turn=item.inbox_id, fence=fence,
                replay=await self._stored_replies(item) if item.retried else None,
            ),
            mode="turn",
            queue_replies=rt.store.queues_writes,
        )
        if inbound.chat_name and inbound.chat_name != record.chat_name:
            await rt.store.sessions.update(record.id, chat_name=inbound.chat_name, fence=fence)
            record.chat_name = inbound.chat_name
        if record.chat_name and session.data.get(CHAT_NAME_KEY) != record.chat_name:
            session.data[CHAT_NAME_KEY] = record.chat_name

        token = set_current_session(session)
        error: str | None = None
        status = "done"
        limit = rt.settings.dispatch.handler_timeout or None
        # Armed as the handler starts, on the loop's clock, from the instant the handler's time is
        # counted from. asyncio.timeout(limit) here would count from now: finding the user's
        # message (a read, for a recovered event) and any pause of a busy machine came out of the
        # handler's budget, and a timed-out handler was reported as running under its limit.
        deadline = asyncio.timeout(None)
        handler_seconds: float | None = None
        try:
            await self._store_user_message(item, message)
            async with deadline:
                loop = asyncio.get_running_loop()
                handler_started = loop.time()
                if limit is not None:
                    deadline.reschedule(handler_started + limit)
                try:
                    await self._dispatch(session, record, inbound, message)
                finally:
                    handler_seconds = loop.time() - handler_started
        except asyncio.CancelledError:
            if rt.shutting_down() or _lease_lost(item):
                if not rt.shutting_down() and await rt.store.sessions.get(session.id) is None:
                    error = SESSION_DELETED  # deleted through a web process: the lease went with it
                else:
                    # Interrupted by shutdown (it runs again at the next start) or by the loss of
                    # the session's lease (the worker that took the session over runs it again).
                    status = "running"
                    raise
            # Stopped by the user, or by the deletion of its session (which stops it once gone).
            error = SESSION_DELETED if await rt.store.sessions.get(session.id) is None else "stopped"
        except TimeoutError:
            if deadline.expired():
                error = "timeout"
                log.error("handler for session %s timed out after %ss", session.id, limit)
                await self._apologise(session, rt.settings.dispatch.timeout_message)
            else:  # the handler's own TimeoutError (an unanswered prompt, say) is a failure like any
                error = await self._failed(session)
        except LeaseLost:
            if await rt.store.sessions.get(session.id) is None:
                error = SESSION_DELETED
            else:
                log.warning("session %s was taken over by another worker: turn %s stops here, writing nothing",
                            session.id, item.inbox_id)
                status = "running"
        except Exception:
            if _lease_lost(item):  # a write failed on the fence inside the handler's own code
                status = "running"
            else:
                error = await self._failed(session)
        finally:
            reset_current_session(token)
            rt.history_prefetch.turn_ended(read_history=history.was_read)
            # From here a stop no longer cancels the turn (Dispatcher.stop): its outcome is
            # recorded whole, without a task of its own to shield it.
            item.finishing = True
            await self._finish(session, item, status, error, handler_seconds)

    async def _finish(
        self, session: Session, item: WorkItem, status: str, error: str | None, handler_seconds: float | None
    ) -> None:
        try:
            if not _lease_lost(item):
                await session.flush_data()
        except LeaseLost:
            status = "running"
        except Exception:
            log.exception("saving session.data of %s failed", session.id)
        if status == "running":
            await self._settle(session)
            self.rt.metrics.turn_ended(session.channel.type, "interrupted", received_at=item.received_at,
                                       handler_seconds=handler_seconds)
            return
        # Recorded before the turn is announced over: whoever learns of the end (a REST client)
        # and then asks finds the event finished.
        try:
            error = await self._record_outcome(session, item, status, error)
        except LeaseLost:
            if error != SESSION_DELETED:  # the worker that took the session over runs the event again
                self.rt.metrics.turn_ended(session.channel.type, "interrupted", received_at=item.received_at,
                                           handler_seconds=handler_seconds)
                return
        outbox = self.rt.outbox_for(session.channel, session.id, turn=item.inbox_id)
        if outbox is not None:
            try:
                await outbox.end_turn(item.inbox_id, error)
            except Exception:
                log.exception("ending the turn on %s failed", session.channel.type)
        self.rt.metrics.turn_ended(session.channel.type, error or "done", received_at=item.received_at,
                                   handler_seconds=handler_seconds)

    async def _record_outcome(self, session: Session, item: WorkItem, status: str, error: str | None) -> str | None:
        """Store the event's status once the turn's replies are stored; the turn's error.

        On PostgreSQL the replies were queued, not awaited (``Session.queue_replies``): the
        status is queued behind them, so the last reply and the status share a batch, one round
        trip. The session is handed to its next event as soon as the status is queued
        (``Dispatcher._hand_over``): that event starts, but runs nothing before the status is
        stored (``WorkItem.after``)."""
        store = self.rt.store
        if not session.queue_replies:
            await store.inbox.set_status(item.inbox_id, status, error, fence=item.fence)
            return error
        session.queue_replies = False  # a reply sent after the turn (a task the handler left) is awaited
        written = store.inbox.queue_status(item.inbox_id, status, error, fence=item.fence)
        if item.hand_over is not None:
            item.hand_over(written)
        try:
            await session.settle()
        except LeaseLost:
            await asyncio.gather(written, return_exceptions=True)  # under the same fence: not written
            raise
        except Exception:
            await asyncio.gather(written, return_exceptions=True)
            if await store.sessions.get(session.id) is None:
                # Deleted while the handler ran: its replies had nowhere to go (as ``_failed``).
                log.info("session %s was deleted while its handler ran; the turn is dropped", session.id)
                return SESSION_DELETED
            log.exception("storing a reply of session %s failed: the event is marked failed", session.id)
            error = "handler_error"
            status = "failed"
            written = store.inbox.queue_status(item.inbox_id, status, error, fence=item.fence)
        await written
        return error

    async def _settle(self, session: Session) -> None:
        """Wait for the replies an interrupted turn queued: they are stored or not, as a reply
        awaited in the handler would have been, and its rerun replays what was."""
        session.queue_replies = False
        try:
            await session.settle()
        except Exception as error:
            log.info("a reply of interrupted session %s was not stored: %s", session.id, error)

    # -- routing -------------------------------------------------------------------------

    async def _dispatch(
        self, session: Session, record: SessionRecord, inbound: Inbound, message: Message | None
    ) -> None:
        app = self.rt.app
        chat_name = record.chat_name
        if not record.entered and await self.rt.store.sessions.mark_entered(session.id, fence=session.fence):
            for hook in app.enter_hooks:
                await call_maybe_async(hook, session)
        if inbound.kind == "action" and inbound.action is not None:
            await self._run_action(session, inbound.action)
        elif inbound.kind == "button" and inbound.button is not None:
            await self._press(session, inbound, chat_name)
        elif message is not None:
            await self._run_message(session, chat_name, message)

    async def _run_message(self, session: Session, chat_name: str | None, message: Message) -> None:
        handler = self.rt.app.message_handlers.get(chat_name)
        if handler is None and chat_name is not None and chat_name == self.rt.app.name:
            handler = self.rt.app.message_handlers.get(None)
        if handler is None:
            raise LookupError(f"no @app.message handler for chat {chat_name!r}")
        await call_maybe_async(handler, session, message)

    async def _run_action(self, session: Session, event: Event) -> None:
        if event.name == "__session_init__":
            init = self.rt.app.session_inits.get(str(event.payload.get("name", "")))
            if init is not None:
                await call_maybe_async(init, session)
            return
        if event.name == "__session_set__":
            values = event.payload.get("values")
            if isinstance(values, dict):
                session.data.update(values)
            elif "key" in event.payload:
                session.data[str(event.payload["key"])] = event.payload.get("value")
            return
        handler = self.rt.app.actions.get(event.name)
        if handler is None:
            log.warning("no @app.action named %r (session %s)", event.name, session.id)
            await session.notify(f"Nothing handles the action {event.name!r}.")
            return
        await call_maybe_async(handler, session, event)

    async def _press(self, session: Session, inbound: Inbound, chat_name: str | None) -> None:
        """A button press no prompt was waiting for: look up the block and do what it says."""
        assert inbound.button is not None
        block = await self.rt.store.messages.block(session.id, inbound.button.block_id)
        if block is None:
            await session.notify("That button belongs to a message that no longer exists.")
            return
        kind, payload = block.get("type"), block.get("payload") or {}
        if kind == "approval_prompt":
            await session.notify("This approval is no longer waiting for an answer.")
            return
        if kind != "suggestions":
            await session.notify("That button does nothing any more.")
            return
        try:
            choice = payload["suggestions"][int(inbound.button.value)]
        except (KeyError, IndexError, ValueError, TypeError):
            await session.notify("That button does nothing any more.")
            return
        if choice.get("target") == "action":
            await self._run_action(session, Event(str(choice.get("value")), dict(choice.get("payload") or {})))
            return
        text = str(choice.get("value") or choice.get("label") or "")
        message = Message(text, "user", session.channel.type)
        stored = await self.rt.store.messages.add(
            session.id, "user", text, inbound_id=session._inbound_id, fence=session.fence
        )
        message.id = stored.id
        await self._run_message(session, chat_name, message)

    # -- helpers -------------------------------------------------------------------------

    def _bind_attachments(self, inbound: Inbound) -> Message | None:
        message = inbound.message
        if message is None:
            return None
        if message.attachments:
            # Intake bound a live event's attachments; only a recovered event's still need it.
            message.attachments = [
                a if a.fetch is not None else self.rt.resolve_attachment(message.channel_type, a)
                for a in message.attachments
            ]
        message.channel_type = message.channel_type or inbound.channel.type
        return message

    async def _store_user_message(self, item: WorkItem, message: Message | None) -> None:
        """The dispatcher stored a ``message`` event's text with the inbox row; find its id."""
        if message is None or item.inbound.kind != "message":
            return
        if item.message_id is not None:
            message.id = item.message_id
            return
        existing = await self.rt.store.messages.for_inbound(item.session_id, item.inbox_id, role="user")
        if existing is not None:
            message.id = existing.id

    async def _stored_replies(self, item: WorkItem) -> list[tuple[str, str]]:
        """The replies an interrupted run of this event stored, in order: the rerun's identical
        replies are neither sent nor stored again (``Session.reply``)."""
        messages = await self.rt.store.messages.of_turn(item.session_id, item.inbox_id)
        return [
            (m.id, m.text) for m in messages if m.role == "assistant" and m.status == "complete" and m.block is None
        ]

    async def _failed(self, session: Session) -> str:
        """Log the handler's exception (call from an ``except`` block) and apologise."""
        if await self.rt.store.sessions.get(session.id) is None:
            # Deleted while the handler ran: its replies had nowhere to go, nobody to apologise to.
            log.info("session %s was deleted while its handler ran; the turn is dropped", session.id)
            return SESSION_DELETED
        log.exception("handler for session %s (%s) raised", session.id, session.channel.type)
        self.rt.metrics.handler_failed(session.channel.type, sys.exc_info()[1])
        await self._apologise(session, self.rt.settings.dispatch.error_message)
        return "handler_error"

    async def _apologise(self, session: Session, text: str) -> None:
        try:
            await session.reply(text)
        except Exception:
            log.exception("could not send the apology to session %s", session.id)
