"""``Session``: everything a handler can do, source-compatible with Capsule's ``cpsl.Session``.

Every handler invocation gets its own Session object (Capsule shares one per session id, which
lets a task's replies leak into a running message handler). A Session stores what it sends,
then hands it to the adapter that owns the conversation.

Modes:
  - ``turn``: a message/action handler answering an inbound event (replies belong to the turn).
  - ``standalone``: a task or a job bound to a real session: replies are standalone messages,
    and ``stream_reply`` streams to the channel as in a turn (Capsule collects a task's stream
    into one message; chatgate can stream without a live request, so it does).
  - ``synthetic``: a schedule's owner session (``id == ""``): nothing is sent; ``reply`` only
    appends to ``history``; ``stream_reply`` raises.
"""

from __future__ import annotations

import asyncio
import json
import logging
import mimetypes
import os
import secrets
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from typing import TYPE_CHECKING, Any, Literal

from gateway.ids import new_id
from gateway.session_data import SessionData
from gateway.store.fence import Fence, LeaseLost
from gateway.streaming import ReplyStream
from gateway.types import (
    Attachment,
    Block,
    Event,
    FileUpload,
    FileUploadTimeout,
    IntegrationCredentials,
    IntegrationDeclined,
    IntegrationTimeout,
    Message,
    SessionChannel,
    Suggestion,
    UserInfo,
    integration_name,
)

if TYPE_CHECKING:
    from gateway.conversation import Conversation
    from gateway.history import StoredHistory

log = logging.getLogger("chatgate.session")

SessionMode = Literal["turn", "standalone", "synthetic"]
KVScope = Literal["session", "user", "owner", "app"]
PROMPT_TIMEOUT = 300.0  # Capsule's default for every prompt
MAX_QUEUED_REPLIES = 64
"""Replies a turn may have queued for storage before the next one waits for them (``Session.settle``)."""


class Session:
    def __init__(
        self,
        id: str,
        user: UserInfo,
        channel: SessionChannel,
        history: list[Message] | None = None,
        data: dict[str, Any] | None = None,
        integrations: dict[str, IntegrationCredentials] | None = None,
        *,
        conversation: Conversation | None = None,
        mode: SessionMode = "turn",
        stored_history: StoredHistory | None = None,
        queue_replies: bool = False,
    ) -> None:
        """``queue_replies`` (a turn on PostgreSQL, ``gateway.turns``): ``reply`` queues its write
        and returns once the reply is delivered; the turn's end waits for them (``settle``), so
        the last reply and the event's status share one batch."""
        self.id = id
        self.user = user
        self.channel = channel
        # ``history`` is read from the store on first use (``gateway.history``); until then what
        # the Session sends waits in ``_unread_sent`` and is appended after what was read.
        self._history: list[Message] | None = list(history or []) if stored_history is None else None
        self._stored_history = stored_history
        self._unread_sent: list[Message] = []
        self._last_message_id: str | None = None
        self.data = data if isinstance(data, SessionData) else SessionData(data)
        self.integrations: dict[str, IntegrationCredentials] = dict(integrations or {})
        self._conversation = conversation
        self._mode: SessionMode = mode if conversation is not None else "synthetic"
        self._inbound_id = None if conversation is None else conversation.turn
        self.queue_replies = queue_replies and conversation is not None
        self._queued: list[asyncio.Future[None]] = []

    @property
    def inbound_id(self) -> str | None:
        """The inbound event this turn answers (chatgate extension; ``None`` outside a turn).
        Adapters use it to tie what a handler sends to the request that caused it."""
        return self._inbound_id

    @property
    def history(self) -> list[Message]:
        """The conversation before this handler ran, then what it sent (Capsule's list): read
        from the store the first time it is used, the same list object afterwards."""
        if self._history is None:
            assert self._stored_history is not None
            self._take_history(self._stored_history.read())
        assert self._history is not None
        return self._history

    @history.setter
    def history(self, value: list[Message]) -> None:
        self._history, self._stored_history, self._unread_sent = value, None, []

    @property
    def last_message_id(self) -> str | None:
        """The id of the last entry this Session added to its history (chatgate extension): a
        reply's stored id; ``None`` before any, after a block, or for a reply with nowhere to
        go. Unlike ``history[-1].id`` it never reads the stored history."""
        return self._last_message_id

    async def _history_read(self) -> None:
        """Read the history now if it is still unread (before a change the stored rows would
        show too early: a block updated in place)."""
        if self._history is None and self._stored_history is not None:
            self._take_history(await self._stored_history.read_async())

    def _take_history(self, read: list[Message]) -> None:
        self._history, self._stored_history = read + self._unread_sent, None
        self._unread_sent = []

    def _remember(self, message: Message) -> None:
        """Append to ``history`` without reading it."""
        self._last_message_id = message.id
        if self._history is None:
            self._unread_sent.append(message)
        else:
            self._history.append(message)

    def __repr__(self) -> str:
        return f"<Session {self.id or '(synthetic)'} {self.channel.type} user={self.user.id}>"

    # -- plumbing ------------------------------------------------------------------------

    @property
    def fence(self) -> Fence | None:
        """The session lease this turn runs under (``chatgate worker``): every write checks it."""
        return None if self._conversation is None else self._conversation.fence

    @property
    def _rt(self) -> Conversation:
        if self._conversation is None:
            raise RuntimeError("this session is not attached to a running gateway")
        return self._conversation

    @property
    def _can_send(self) -> bool:
        return self._mode != "synthetic" and bool(self.id) and self._conversation is not None

    def _outbox(self) -> Any:
        return self._rt.outbox

    async def _deliver(self, what: str, send: Callable[[Any], Any]) -> Any:
        """Call the adapter; a platform failure is logged, never raised into the handler."""
        outbox = self._outbox()
        if outbox is None:
            log.warning("no adapter for channel %r: %s not delivered", self.channel.type, what)
            return None
        try:
            return await send(outbox)
        except LeaseLost:
            raise  # another worker runs this session now: the handler stops here
        except Exception:
            log.exception("delivering %s to %s session %s failed", what, self.channel.type, self.id)
            return None

    # -- messaging -----------------------------------------------------------------------

    async def reply(self, text: str) -> None:
        """Send ``text`` (Markdown) as one message and add it to ``history``."""
        text = str(text)
        if not self._can_send:
            self._remember(Message(text, "app", self.channel.type))
            log.info("reply from a session with no reply target (id=%r) not sent: %s", self.id, text[:200])
            return
        replayed = self._rt.replayed(text)
        if replayed is not None:  # an interrupted run of this turn sent and stored it already
            self.history[-1].id = replayed
            return
        message_id = new_id()
        self._remember(Message(text, "app", self.channel.type, id=message_id))
        refs = await self._deliver("a reply", lambda o: o.send_text(message_id, text))
        # Stored once, after sending, with the platform refs (a crash in between reruns the turn
        # either way, so storing first would buy nothing and cost a second write).
        status = "failed" if refs is None else "complete"
        if self.queue_replies:  # stored with the next batch; the turn's end waits for it
            write = self._rt.store.messages.queue_add(
                self.id, "assistant", text, message_id=message_id, inbound_id=self._inbound_id,
                status=status, platform_refs=list(refs or []), fence=self.fence,
            )
            write.add_done_callback(_seen)  # a turn cut short never settles: its failure is not news
            self._queued.append(write)
            if len(self._queued) >= MAX_QUEUED_REPLIES:
                await self.settle()
            return
        await self._rt.store.messages.add(
            self.id, "assistant", text, message_id=message_id, inbound_id=self._inbound_id,
            status=status, platform_refs=list(refs or []), fence=self.fence,
        )

    async def settle(self) -> None:
        """Wait until the replies queued for storage (``queue_replies``) are stored; raise the
        first failure (``LeaseLost``, or the database's error). A chatgate extension: the turn
        calls it as it ends."""
        queued, self._queued = self._queued, []
        failure: BaseException | None = None
        for write in queued:
            try:
                await write
            except Exception as error:
                failure = failure or error
        if failure is not None:
            raise failure

    async def notify(self, text: str, *, detail: str = "") -> None:
        """A transient status line ("Searching the docs..."): shown, never kept in history."""
        text, detail = (text or "").strip(), (detail or "").strip()
        if not (text or detail) or not self._can_send:
            return
        await self._deliver("a status", lambda o: o.notify(text, detail))

    def stream_reply(self) -> ReplyStream:
        """``async with session.stream_reply() as reply: reply.write(delta)``."""
        if self._mode == "synthetic" or not self.id:
            raise RuntimeError("stream_reply is only available inside a message handler")
        return ReplyStream(self._open_stream, self._finish_stream)

    async def _open_stream(self) -> tuple[Any, Any]:
        record = await self._rt.store.messages.add(
            self.id, "assistant", "", inbound_id=self._inbound_id, status="streaming", fence=self.fence
        )
        outbox = self._outbox()
        sink = None
        if outbox is not None:
            try:
                sink = outbox.open_stream(record.id)
            except Exception:
                log.exception("opening a stream on %s failed", self.channel.type)
        return sink, record.id

    async def _finish_stream(self, message_id: str, text: str, stopped: bool, refs: list[str]) -> None:
        status = "stopped" if stopped else "complete"
        if stopped and self._inbound_id is not None and self._rt.shutting_down():
            status = "failed"  # interrupted by shutdown, not by the user: the turn runs again at start
        await self._rt.store.messages.update(
            message_id, text=text, status=status, platform_refs=list(refs), fence=self.fence
        )
        if text:
            self._remember(Message(text, "app", self.channel.type, id=message_id))

    async def stream(self, chunks: AsyncIterable[str | None] | Iterable[str | None]) -> None:
        """Stream every item of ``chunks`` as one reply: deltas or cumulative snapshots, told
        apart as ``ReplyStream.write`` does (``gateway.stream_text``); ``None`` items are skipped."""
        if not self._can_send:
            return
        async with self.stream_reply() as reply:
            async for chunk in _aiter(chunks):
                if chunk is not None:
                    reply.write(str(chunk))

    async def stream_reply_from(self, stream: AsyncIterable[Any] | Iterable[Any]) -> str:
        """Stream every non-None item as one reply (deltas or cumulative snapshots, as
        ``ReplyStream.write`` takes them); returns the full text."""
        async with self.stream_reply() as reply:
            async for chunk in _aiter(stream):
                if chunk is not None:
                    reply.write(str(chunk))
        return reply.text

    def chat_messages(self, current: Message, *, cls: Any = None) -> list[Any]:
        """The conversation as LLM chat messages, exactly as Capsule builds them: ``user`` for
        the user, ``assistant`` for everything the app said, consecutive same-role entries
        concatenated with no separator. Unlike Capsule, blocks and status lines are left out
        (Capsule pastes their JSON into assistant text), and so are empty replies (a stream that
        wrote nothing, or was cut before its first word), which Capsule never stores."""
        merged: list[dict[str, str]] = []
        for entry in [*self.history, current]:
            if entry.sender in ("block", "system") or (entry.sender != "user" and not entry.text):
                continue
            role = "user" if entry.sender == "user" else "assistant"
            if merged and merged[-1]["role"] == role:
                merged[-1]["content"] += entry.text
            else:
                merged.append({"role": role, "content": entry.text})
        if cls is None:
            return merged
        return [cls(role=m["role"], content=m["content"]) for m in merged]

    # -- blocks --------------------------------------------------------------------------

    async def show(self, block: Block) -> None:
        """Show a block; a block id shown before updates it in place."""
        envelope = block.to_envelope()
        if self._can_send:
            await self._history_read()  # a block shown before is updated in place: read it as it was
        self._remember(Message(json.dumps(envelope), "block", self.channel.type))
        if not self._can_send:
            return
        async with self._rt.block_lock(self.id, envelope["id"]):
            record, previous = await self._rt.store.messages.save_block(self.id, envelope, fence=self.fence)
            refs = await self._deliver(f"a {block.type} block", lambda o: o.show_block(record.id, envelope, previous))
            if refs:
                await self._rt.store.messages.update(record.id, platform_refs=list(refs), fence=self.fence)

    async def show_task(self, handle_or_id: Any, *, message: str | None = None) -> None:
        task_id = getattr(handle_or_id, "task_id", handle_or_id)
        payload: dict[str, Any] = {"task_id": str(task_id)}
        if message is not None:
            payload["message"] = message
        tasks = self._conversation.tasks if self._conversation is not None else None
        if tasks is not None:
            # Watch first: a status change between the two calls then still reaches the card.
            await tasks.watch_card(str(task_id), self.id, message)
            payload.update(await tasks.card_fields(str(task_id)))
        await self.show(Block("task_card", payload, id=f"task_{task_id}"))

    async def show_integration(self, integration_type: str, *, reason: str = "") -> None:
        kind = integration_name(integration_type)
        payload = {"type": kind, "reason": reason, "blocking": False, **self._integration_fields(kind, None)}
        await self.show(Block("integration_prompt", payload, id=f"int_{kind}_{secrets.token_hex(4)}"))

    async def show_image(self, source: str, *, alt: str = "", width: int | None = None) -> None:
        """Show an image: an http(s) or data: URL as it is, a local file through the file store."""
        payload: dict[str, Any] = {}
        if source.startswith(("http://", "https://", "data:")):
            payload["url"] = source
        else:
            try:
                data = await asyncio.to_thread(_read_file, source)
            except FileNotFoundError:
                raise FileNotFoundError(f"show_image: no such file: {source}") from None
            content_type = mimetypes.guess_type(source)[0] or "application/octet-stream"
            files = self._rt.files if self._can_send else None
            if files is not None:
                record = await files.save(
                    data, name=os.path.basename(source), content_type=content_type, session_id=self.id
                )
                payload["url"] = files.signed_url(record.id, self.id)
                payload["file_id"] = record.id
            else:
                payload["url"] = source
        if alt:
            payload["alt"] = alt
        if width is not None:
            payload["width"] = width
        await self.show(Block("image", payload))

    async def show_suggestions(
        self, suggestions: Iterable[str | Suggestion | dict[str, Any]], *, title: str = ""
    ) -> None:
        """Buttons: a prompt button sends its text as the user, an action button runs an action."""
        items = [_suggestion_dict(s) for s in suggestions]
        payload: dict[str, Any] = {"suggestions": items}
        if title:
            payload["title"] = title
        await self.show(Block("suggestions", payload))

    async def set_title(self, title: str) -> None:
        if self._can_send:
            await self._rt.store.sessions.update(self.id, title=title, fence=self.fence)
        await self.show(Block("session_title", {"title": title}, id=f"title_{self.id}"))

    async def show_step(
        self,
        label: str,
        *,
        status: str = "running",
        detail: str = "",
        step_id: str | None = None,
        links: list[dict[str, str]] | None = None,
        fields: dict[str, Any] | None = None,
        expanded: bool = False,
    ) -> str:
        sid = step_id or secrets.token_hex(6)
        payload: dict[str, Any] = {
            "label": label, "status": status, "detail": detail, "step_id": sid, "expanded": expanded,
        }
        if links:
            payload["links"] = links
        if fields:
            payload["fields"] = fields
        await self.show(Block("step_status", payload, id=f"step_{sid}"))
        return sid

    async def show_activity(
        self,
        label: str,
        *,
        detail: str = "",
        links: list[dict[str, Any]] | None = None,
        fields: dict[str, Any] | None = None,
        icon: str = "",
        activity_id: str | None = None,
        expanded: bool = False,
    ) -> str:
        """An activity row (block ``activity``); the same ``activity_id`` updates it in place."""
        aid = activity_id or secrets.token_hex(6)
        payload: dict[str, Any] = {"label": label, "detail": detail, "activity_id": aid, "expanded": expanded}
        if icon:
            payload["icon"] = icon
        if links:
            payload["links"] = links
        if fields:
            payload["fields"] = fields
        await self.show(Block("activity", payload, id=f"activity_{aid}"))
        return aid

    async def emit(self, event: str, payload: dict[str, Any] | None = None) -> None:
        await self.show(Block("session_event", {"event": event, "payload": payload or {}}))

    # -- prompts -------------------------------------------------------------------------

    async def prompt_file(
        self,
        *,
        message: str = "Please upload a file",
        accept: str = "",
        path: str | None = None,
        timeout: float = PROMPT_TIMEOUT,
    ) -> FileUpload:
        """Ask for a file and wait for it (the next upload, or the next file sent in the chat)."""
        self._require_live("prompt_file")
        block_id = f"fu_{secrets.token_hex(6)}"
        payload: dict[str, Any] = {"message": message, "blocking": True, "session_id": self.id}
        if accept:
            payload["accept"] = accept
        waiter = self._rt.prompts.register(self.id, "file", block_id, accept=accept)
        try:
            await self.show(Block("file_upload", payload, id=block_id))
            try:
                attachment: Attachment = await asyncio.wait_for(waiter, timeout)
            except TimeoutError:
                await self.show(Block("file_upload", {**payload, "blocking": False, "timed_out": True}, id=block_id))
                raise FileUploadTimeout(f"no file was uploaded within {timeout:g} s") from None
        finally:
            self._rt.prompts.unregister(self.id, block_id)
        done = {
            **payload,
            "blocking": False,
            "completed": True,
            "filename": attachment.name,
            "content_type": attachment.content_type,
            "size": attachment.size,
        }
        await self.show(Block("file_upload", done, id=block_id))
        upload = FileUpload(attachment.name, attachment.content_type, attachment.url, attachment.size,
                            fetch=attachment.fetch)
        if path is not None:
            await upload.download(path)
        return upload

    async def prompt_approval(
        self,
        message: str,
        *,
        approve_label: str = "Approve",
        reject_label: str = "Reject",
        timeout: float = PROMPT_TIMEOUT,
    ) -> bool:
        """Show Approve/Reject buttons and wait. True only on an explicit approve."""
        self._require_live("prompt_approval")
        block_id = f"ap_{secrets.token_hex(6)}"
        payload: dict[str, Any] = {
            "message": message,
            "approve_label": approve_label,
            "reject_label": reject_label,
            "blocking": True,
            "session_id": self.id,
        }
        waiter = self._rt.prompts.register(self.id, "approval", block_id)
        timed_out = False
        try:
            await self.show(Block("approval_prompt", payload, id=block_id))
            try:
                approved = (await asyncio.wait_for(waiter, timeout)) == "approve"
            except TimeoutError:
                approved, timed_out = False, True
        finally:
            self._rt.prompts.unregister(self.id, block_id)
        done = {**payload, "blocking": False, "completed": True, "approved": approved, "timed_out": timed_out}
        await self.show(Block("approval_prompt", done, id=block_id))
        return approved

    def get_integration(self, integration: Any) -> IntegrationCredentials | None:
        return self.integrations.get(integration_name(integration))

    async def require_integration(
        self, integration: Any, *, reason: str = "", message: str | None = None, timeout: float = PROMPT_TIMEOUT
    ) -> IntegrationCredentials:
        found = self.get_integration(integration)
        if found:
            return found
        return await self.prompt_integration(integration, reason=reason, message=message, timeout=timeout)

    async def prompt_integration(
        self, integration_type: Any, *, reason: str = "", message: str | None = None, timeout: float = PROMPT_TIMEOUT
    ) -> IntegrationCredentials:
        """Ask the user to connect an account and wait until they have (or declined)."""
        kind = integration_name(integration_type)
        if self.integrations.get(kind):
            return self.integrations[kind]
        if not self._can_send:  # nobody to connect it (a schedule): declined, as Capsule has it
            raise IntegrationDeclined(f"prompt_integration({kind!r}) needs a session with a user to answer it")
        service = self._rt.integrations
        if service is None or not service.knows(kind):
            raise IntegrationDeclined(f"no integration named {kind!r} is configured")
        prompt_text = reason if message is None else message
        if prompt_text:
            await self.reply(prompt_text)
        block_id = f"int_{kind}_{secrets.token_hex(6)}"
        waiter = self._rt.prompts.register(self.id, "integration", block_id)
        payload = {
            "type": kind,
            "reason": "" if prompt_text == reason else reason,
            "blocking": True,
            **self._integration_fields(kind, block_id),
        }
        try:
            await self.show(Block("integration_prompt", payload, id=block_id))
            try:
                result = await asyncio.wait_for(waiter, timeout)
            except TimeoutError:
                await self.show(Block("integration_prompt", {**payload, "blocking": False, "timed_out": True},
                                      id=block_id))
                raise IntegrationTimeout(f"{kind} was not connected within {timeout:g} s") from None
        finally:
            self._rt.prompts.unregister(self.id, block_id)
        if not result or result.get("declined"):
            await self.show(Block("integration_prompt", {**payload, "blocking": False, "declined": True}, id=block_id))
            raise IntegrationDeclined(f"the user did not connect {kind}")
        credentials = await service.credentials_for(self.user, kind)
        if not credentials:
            raise IntegrationDeclined(f"the user did not connect {kind}")
        self.integrations[kind] = credentials
        await self.show(Block("integration_prompt", {**payload, "blocking": False, "completed": True}, id=block_id))
        return credentials

    def _integration_fields(self, kind: str, block_id: str | None) -> dict[str, Any]:
        service = self._conversation.integrations if self._conversation is not None else None
        if service is None or not service.knows(kind) or not self.id:
            return {"mode": "oauth"}
        return service.card_fields(kind, user=self.user, session_id=self.id, prompt_id=block_id)

    def _require_live(self, what: str) -> None:
        if not self._can_send:
            raise RuntimeError(f"{what} needs a session with a user to answer it")

    # -- actions -------------------------------------------------------------------------

    async def trigger_action(self, name: str, payload: dict[str, Any] | None = None) -> Any:
        """Run the ``@app.action(name)`` handler inline, in this turn; returns its result."""
        from gateway.calls import call_maybe_async

        handler = self._rt.handlers.actions.get(name)
        if handler is None:
            raise RuntimeError(f"no @app.action named {name!r}")
        return await call_maybe_async(handler, self, Event(name, payload or {}))

    # -- data ----------------------------------------------------------------------------

    async def flush_data(self) -> None:
        """Save ``session.data`` now instead of after the handler."""
        if not self.id or self._conversation is None or not self.data.dirty:
            return
        changed, removed = self.data.take_changes()
        try:
            await self._rt.store.sessions.save_data(self.id, changed, removed, fence=self.fence)
        except BaseException:
            self.data.restore_changes(changed, removed)
            raise

    async def publish(self, key: str, value: Any) -> Any:
        self.data[key] = value
        await self.flush_data()
        return value

    async def get(self, key: str, default: Any = None, *, scope: KVScope = "session") -> Any:
        return await self._kv().get(key, default, scope=scope, scope_id=self._scope_id(scope))

    async def set(self, key: str, value: Any, *, scope: KVScope = "session") -> Any:
        await self._kv().set(key, value, scope=scope, scope_id=self._scope_id(scope))
        return value

    async def delete(self, key: str, *, scope: KVScope = "session") -> None:
        await self._kv().delete(key, scope=scope, scope_id=self._scope_id(scope))

    def _scope_id(self, scope: str) -> str:
        if scope == "session":
            return self.id  # "" in a synthetic session: one shared bucket, as in Capsule
        if scope == "user":
            return self.user.id
        if scope == "owner":
            return self.user.owner_id
        if scope == "app":
            return ""
        raise ValueError(f"scope must be session, user, owner or app, not {scope!r}")

    def _kv(self) -> Any:
        return self._rt.handlers._kv()

    @property
    def collections(self) -> Any:
        """``await session.collections.get(name, scope=...)``: collections by name at run time."""
        return self._rt.handlers.collections.for_identity(self._identity())

    def _identity(self) -> Any:
        from gateway.collections import ScopeIdentity

        return ScopeIdentity(user_id=self.user.id, owner_id=self.user.owner_id, session_id=self.id)

    @property
    def db(self) -> Any:
        """``session.db.<collection>``: the app's collections scoped to this user/owner/session."""
        if self._conversation is None:
            raise RuntimeError("no database: this session is not attached to a running gateway")
        return self._rt.handlers.collections.scoped(self._identity())


async def _aiter(source: AsyncIterable[Any] | Iterable[Any]) -> AsyncIterator[Any]:
    if isinstance(source, AsyncIterable):
        async for item in source:
            yield item
    else:
        for item in source:
            yield item


def _read_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _suggestion_dict(item: str | Suggestion | dict[str, Any]) -> dict[str, Any]:
    if isinstance(item, str):
        return {"label": item, "target": "prompt", "value": item}
    if isinstance(item, Suggestion):
        return item.to_dict()
    if isinstance(item, dict):
        target = item.get("target", "prompt")
        if target not in ("prompt", "action"):
            raise ValueError(f"suggestion target must be 'prompt' or 'action', not {target!r}")
        if "label" not in item:
            raise ValueError("a suggestion needs a label")
        return {**item, "target": target, "value": item.get("value", item["label"])}
    raise TypeError(f"a suggestion is a str, Suggestion or dict, not {type(item).__name__}")


def _seen(write: asyncio.Future[None]) -> None:
    """Mark a queued write's failure as retrieved (``settle`` raises it when the turn waits)."""
    if not write.cancelled():
        write.exception()
