"""The widget's WebSocket (`GET /ws`): frames in, inbound events to the core, bus events out.

One ``WidgetConnection`` per socket. Inbound frames are validated and submitted; a task
subscribes to the session's bus topic *before* it replays the stored history, so nothing that
happens during the replay is missed; afterwards live events are delivered by short tasks the
subscription wakes (an idle socket has none). The feed tracks the text the client holds for
every message, so neither a replay nor a live delta ever repeats text (``feed.py``,
docs/web-protocol.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
from typing import Any

from aiohttp import WSMessage, WSMsgType, web

from adapters.base import (
    BusDisconnected,
    ButtonPress,
    Inbound,
    MessageRecord,
    PlatformUser,
    SessionRecord,
    SubscriberOverflow,
    socket_opened,
)
from gateway.types import Attachment, Event, Message, SessionChannel, UserInfo

from .. import errors
from ..context import WIDGET_CHANNEL, WebContext, too_many_requests
from ..cors import origin_allowed
from ..errors import WebError, error_frame
from ..identity import IdentityRefused, WebIdentity
from ..jsoncodec import compact
from ..outbox import session_topic
from ..quotas import RateLimited
from ..reservations import Reservation
from ..wire import JSONRefused, now_rfc3339, public_attachments, strict_json
from .feed import ClientFeed
from .heartbeat import HEARTBEAT_SECONDS, heartbeat, watchable
from .pending import store_reserved
from .uploads import attachment_for

log = logging.getLogger("chatgate.web.socket")

CLOSE_UNAUTHORIZED = 4401
"""Application close code (4000-4999 are free for applications, RFC 6455 §7.4.2)."""
CLOSE_FELL_BEHIND = 4408
"""The socket fell ``SUBSCRIBER_BUFFER`` frames behind its session's live updates and lost some:
the client reconnects and resumes from the store (docs/web-protocol.md)."""
CLOSE_TRY_AGAIN = 1013
"""The bus (Redis, when scaled out) could not be reached to follow the session: "Try Again
Later" in IANA's WebSocket close code registry. The widget reconnects with its backoff."""
HARD_LIMIT_FACTOR = 4
"""A frame this many times over ``max_frame_bytes`` closes the socket (aiohttp, code 1009)."""
FRAME_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
REPLAY_PAGE = 200
MAX_ATTACHMENTS = 20
"""Files one message may carry (each is a store lookup); Telegram's media groups stop at 10."""
CLOSED_TYPES = frozenset({WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED})
"""Where ``async for`` over a WebSocketResponse stops."""
COUNTED_FRAMES = frozenset({"message", "button", "action", "upload_done"})
"""Frames that run the app: they count against ``web.limits.messages_per_*``."""


async def websocket_handler(ctx: WebContext, request: web.Request) -> web.StreamResponse:
    if ctx.stopping:  # a socket opened now would outlive the close of all the others
        return WebError(503, errors.UNAVAILABLE, "the gateway is restarting; reconnect in a moment").response()
    if not origin_allowed(request, ctx.settings.web.allowed_origins):
        return WebError(403, "forbidden", "this origin may not open the chat socket").response()
    max_frame = ctx.settings.web.max_frame_bytes
    watched = watchable(request)  # pinged by the shared heartbeat, else by aiohttp's own
    try:
        identity = ctx.identities.resolve(request, mint=True)
    except IdentityRefused as exc:
        refused = _new_socket(RefusedSocket, watched, max_frame, compress=False)
        await refused.prepare(request)
        await refused.send_json(error_frame(errors.UNAUTHORIZED, str(exc)))
        await refused.close(code=CLOSE_UNAUTHORIZED, message=b"unauthorized")
        return refused
    assert identity is not None  # mint=True always gives one
    ws = _new_socket(web.WebSocketResponse, watched, max_frame, compress=ctx.settings.web.socket_compression)
    ip = ctx.quotas.client_ip(request)
    try:
        release = ctx.quotas.acquire("sockets", ip, identity.key)
    except RateLimited as exc:  # refused before the upgrade: a plain 429 with Retry-After
        return too_many_requests(exc)
    try:
        ctx.identities.remember(ws, identity)  # a new visitor, or a renewed cookie
        await ws.prepare(request)
        # Sent with the upgrade and never read again; kept, they cost an idle socket ~1 KB.
        ws.cookies.clear()
        ws.headers.clear()
        # A visitor is stored on their first message, not here: a socket opened and dropped
        # leaves no row (a new visitor has no history to show anyway).
        user = await ctx.known_user(identity)
        connection = WidgetConnection(ctx, ws, identity, user, ip=ip)
        ctx.sockets.add(ws)
        if watched:
            heartbeat().watch(ws, request)
        closed = socket_opened("web")
        try:
            # The read loop, here rather than in a method: one coroutine frame fewer per socket.
            # ``async for raw in ws`` would add ``__anext__``'s; and the last message is
            # dropped before waiting for the next, so an idle socket does not keep its hello.
            while (raw := await ws.receive()).type not in CLOSED_TYPES and await connection.handle(raw):
                del raw
        finally:
            closed()
            ctx.sockets.discard(ws)
            if watched:
                heartbeat().unwatch(ws)
            await connection.shutdown()
    finally:
        release()
    return ws


def _new_socket(
    kind: type[web.WebSocketResponse], watched: bool, max_frame: int, *, compress: bool
) -> web.WebSocketResponse:
    # aiohttp accepts a client's permessage-deflate offer unless told not to (web.socket_compression).
    return kind(heartbeat=None if watched else HEARTBEAT_SECONDS, max_msg_size=max_frame * HARD_LIMIT_FACTOR,
                compress=compress)


class RefusedSocket(web.WebSocketResponse):
    """A socket closed right after its upgrade, in a class of its own. CPython shares one table
    of attribute names among a class's instances, for the first 30 names they set; an instance
    that sets a name beyond those carries a dict of its own. A socket that is closed sets names an
    open one has not set yet: were the first socket of the process refused, every idle socket
    after it would cost ~1.5 KB more (issue 12)."""


class WidgetConnection:
    # Slotted, and the feed made on first use: thousands of idle sockets each hold one (issue 12).
    __slots__ = (
        "_events", "_feed", "_joined", "_send_lock", "_senders", "_task", "connection_id", "ctx", "identity", "ip",
        "reserved", "session", "user", "ws",
    )

    def __init__(
        self, ctx: WebContext, ws: web.WebSocketResponse, identity: WebIdentity, user: UserInfo | None, *, ip: str
    ) -> None:
        self.ctx = ctx
        self.ws = ws
        self.identity = identity
        self.user = user
        """The stored user; None for a visitor who has not sent anything yet."""
        self.ip = ip
        self.connection_id = secrets.token_hex(8)
        self.session: SessionRecord | None = None
        self.reserved: Reservation | None = None
        """The session this socket said hello to without an id, until its first message stores it."""
        self._task: asyncio.Task[None] | None = None
        """Subscribing and replaying, or delivering live events; None while the socket is idle."""
        self._joined: Any = None
        """The bus subscription's context manager, entered (``_leave`` exits it)."""
        self._events: Any = None
        """The subscription itself (``gateway.bus.Subscription``), listened to by ``_wake``."""
        self._send_lock: asyncio.Lock | None = None
        """Keeps frames in order when two tasks send at once (aiohttp may start a big compressed
        frame after a small one sent later); made by a send and dropped by the last one waiting."""
        self._senders = 0
        self._feed: ClientFeed | None = None
        """What the client holds (``feed.py``); made by the first replay or live event."""

    @property
    def platform_user(self) -> PlatformUser:
        return self.identity.user

    @property
    def feed(self) -> ClientFeed:
        if self._feed is None:
            self._feed = ClientFeed(
                self.send, connection_id=self.connection_id, live_texts=self.ctx.live_texts,
                sign_file=self.ctx.sign_file,
            )
        return self._feed

    # -- the read loop ----------------------------------------------------------------------

    async def handle(self, raw: WSMessage) -> bool:
        """Handle one message; False when the socket is done (it broke)."""
        if raw.type == WSMsgType.TEXT:
            await self._on_text(raw.data)
        elif raw.type == WSMsgType.BINARY:
            await self.send(error_frame(errors.BAD_FRAME, "frames are JSON text, not binary"))
        elif raw.type == WSMsgType.ERROR:
            log.info("socket %s closed with an error: %s", self.connection_id, self.ws.exception())
            return False
        return True

    async def shutdown(self) -> None:
        joined = self._detach()  # first: no event may start a task from here on
        task = self._task
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await _leave(joined)

    async def _on_text(self, data: str) -> None:
        max_frame = self.ctx.settings.web.max_frame_bytes
        if len(data.encode()) > max_frame:
            await self.send(error_frame(errors.TOO_LARGE, f"frames are limited to {max_frame} bytes"))
            return
        try:
            frame = strict_json(data)
        except JSONRefused as exc:
            await self.send(error_frame(errors.BAD_FRAME, f"the frame is not valid JSON: {exc}"))
            return
        except ValueError:
            await self.send(error_frame(errors.BAD_FRAME, "the frame is not valid JSON"))
            return
        if not isinstance(frame, dict):
            await self.send(error_frame(errors.BAD_FRAME, "a frame is a JSON object"))
            return
        frame_id = frame.get("id")
        if not isinstance(frame_id, str) or not FRAME_ID.match(frame_id):
            await self.send(error_frame(errors.BAD_FRAME, "every frame needs an id: 1-64 of [A-Za-z0-9_-]"))
            return
        kind = frame.get("type")
        handler = self._handlers.get(kind) if isinstance(kind, str) else None
        if handler is None:
            await self.send(error_frame(errors.BAD_FRAME, f"unknown frame type {kind!r}", frame_id))
            return
        if kind != "hello" and self.session is None and self.reserved is None:
            await self.send(error_frame(errors.NOT_READY, "send hello first", frame_id))
            return
        try:
            if kind in COUNTED_FRAMES:
                self.ctx.quotas.spend("messages", self.ip, self.identity.key)
            await handler(self, frame)
        except RateLimited as exc:
            await self.send({**error_frame(errors.RATE_LIMITED, exc.message, frame_id), "retry_after": exc.retry_after})
        except WebError as exc:
            await self.send(error_frame(exc.code, exc.message, frame_id))
        except LookupError:  # the core's UnknownSession: the session was deleted meanwhile
            # not_ready, as for any frame without a session: the client keeps the frame and says
            # hello again; that hello is not_found, and the client takes the frame to a new session.
            self.session = None
            await self.send(error_frame(errors.NOT_READY, "this session no longer exists; send hello", frame_id))
        except Exception:
            log.exception("socket %s: %s frame failed", self.connection_id, kind)
            await self.send(error_frame(errors.INTERNAL, "the server could not handle this frame", frame_id))

    # -- frames -----------------------------------------------------------------------------

    async def _hello(self, frame: dict[str, Any]) -> None:
        session_id = frame.get("session_id")
        after = _optional_str(frame, "after")
        handler = _optional_str(frame, "handler")
        if session_id is None:
            if not self.ctx.core.chats.has(handler):
                raise errors.not_found(f"no message handler named {handler!r}")
            # Nothing is stored yet: the first message stores the session under this id.
            self.session, self.reserved = None, self.ctx.reservations.reserve(self.identity.key, handler)
            self._follow(self.reserved.session_id, None, ready=True)
            return
        if self.reserved is not None and session_id == self.reserved.session_id:
            self._follow(session_id, after, ready=True)  # hello again on this socket: still nothing stored
            return
        if self.user is None:  # stored since this socket opened (another tab's first message)?
            self.user = await self.ctx.known_user(self.identity)
        if self.user is None:  # a visitor with nothing stored owns no session
            raise errors.not_found()
        self.session = await self.ctx.own_widget_session(session_id, self.user)
        self.reserved = None
        self._follow(self.session.id, after, ready=True)

    async def _resume(self, frame: dict[str, Any]) -> None:
        session_id = self.session.id if self.session is not None else self._reserved_id()
        self._follow(session_id, _optional_str(frame, "after"), ready=False)

    def _reserved_id(self) -> str:
        assert self.reserved is not None
        return self.reserved.session_id

    async def _stored_session(self) -> SessionRecord:
        """The socket's session, stored now if this is its first use (and the user with it)."""
        if self.session is not None:
            return self.session
        assert self.reserved is not None
        self.session, self.user = await store_reserved(self.ctx, self.reserved, self.identity, self.user, ip=self.ip)
        self.reserved = None
        return self.session

    async def _message(self, frame: dict[str, Any]) -> None:
        text = frame.get("text", "")
        if not isinstance(text, str):
            raise errors.WebError(400, errors.BAD_FRAME, "text must be a string")
        raw_attachments = frame.get("attachments") or []
        if not isinstance(raw_attachments, list):
            raise errors.WebError(400, errors.BAD_FRAME, "attachments must be a list of {file_id}")
        if len(raw_attachments) > MAX_ATTACHMENTS:
            raise errors.WebError(400, errors.TOO_LARGE, f"a message carries at most {MAX_ATTACHMENTS} files")
        if not text.strip() and not raw_attachments:
            raise errors.WebError(400, errors.BAD_FRAME, "a message needs text or an attachment")
        await self._stored_session()
        attachments = [await self._attachment(item) for item in raw_attachments]
        message = Message(text, "user", WIDGET_CHANNEL, attachments=attachments or None)
        inbound = self._inbound("message", frame, message=message)
        accepted = await self._submit(frame, inbound)
        if not accepted.duplicate:
            await self._echo(accepted.inbound_id, message.id, text, attachments)

    async def _button(self, frame: dict[str, Any]) -> None:
        block_id = _required_str(frame, "block_id")
        value = _required_str(frame, "value")
        if self.session is None:  # nothing stored showed a button
            raise errors.not_found("no such block in this session")
        await self._submit(frame, self._inbound("button", frame, button=ButtonPress(block_id, value)))

    async def _action(self, frame: dict[str, Any]) -> None:
        name = _required_str(frame, "name")
        payload = frame.get("payload") or {}
        if not isinstance(payload, dict):
            raise errors.WebError(400, errors.BAD_FRAME, "payload must be an object")
        event = Event(name, payload, source={"channel": WIDGET_CHANNEL, "frame_id": frame["id"]})
        await self._stored_session()
        await self._submit(frame, self._inbound("action", frame, action=event))

    async def _upload_done(self, frame: dict[str, Any]) -> None:
        block_id = _required_str(frame, "block_id")
        file_id = _required_str(frame, "file_id")
        if self.session is None:  # nothing stored asked for a file
            raise errors.not_found("no file prompt in this session")
        attachment = await self._attachment({"file_id": file_id})
        message = Message("", "user", WIDGET_CHANNEL, attachments=[attachment])
        await self._submit(frame, self._inbound("upload", frame, message=message, prompt_id=block_id))

    async def _stop(self, frame: dict[str, Any]) -> None:
        if self.session is None:  # nothing stored, nothing running
            raise errors.not_found("no reply is running")
        await self._submit(frame, self._inbound("stop", frame))

    _handlers: dict[str, Any] = {
        "hello": _hello,
        "resume": _resume,
        "message": _message,
        "button": _button,
        "action": _action,
        "upload_done": _upload_done,
        "stop": _stop,
    }

    # -- inbound helpers --------------------------------------------------------------------

    def _inbound(self, kind: Any, frame: dict[str, Any], **fields: Any) -> Inbound:
        assert self.session is not None
        return Inbound(
            kind=kind,
            # Scoped by session, so one client cannot pre-empt another's frame ids.
            dedup_key=f"web:{self.session.id}:{frame['id']}",
            channel=SessionChannel(WIDGET_CHANNEL),
            user=self.platform_user,
            session_id=self.session.id,
            chat_name=self.session.chat_name,
            **fields,
        )

    async def _submit(self, frame: dict[str, Any], inbound: Inbound) -> Any:
        accepted = await self.ctx.core.submit(inbound)
        await self.send(
            {"type": "ack", "id": frame["id"], "inbound_id": accepted.inbound_id, "duplicate": accepted.duplicate}
        )
        return accepted

    async def _attachment(self, item: Any) -> Attachment:
        if not isinstance(item, dict) or not isinstance(item.get("file_id"), str):
            raise errors.WebError(400, errors.BAD_FRAME, 'an attachment is {"file_id": "..."}')
        assert self.session is not None
        return await attachment_for(self.ctx, item["file_id"], self.session.id)

    async def _echo(self, inbound_id: str, message_id: str, text: str, attachments: list[Attachment]) -> None:
        """Show the user's message on the session's other sockets (another tab). ``message_id``
        is the stored message's, as recording the event set it on the message. Not published
        when nobody else follows the session (one tab, in one process): this socket's own feed
        would only skip it."""
        assert self.session is not None
        topic = session_topic(self.session.id)
        if not self.ctx.core.bus.followed_beyond(topic, self._events):
            return
        if not message_id:
            stored = await self.ctx.core.sessions.message_for_inbound(self.session.id, inbound_id, role="user")
            message_id = stored.id if stored is not None else inbound_id
        message = {
            "id": message_id,
            "role": "user",
            "text": text,
            "status": "complete",
            "attachments": public_attachments([a.to_dict() for a in attachments], self.session.id, self.ctx.sign_file),
            "inbound_id": inbound_id,
            "created_at": now_rfc3339(),
        }
        event = {"type": "message", "message": message, "origin": self.connection_id}
        await self.ctx.core.bus.publish(topic, event)

    # -- outbound: replay, then live events -------------------------------------------------
    #
    # No task waits for an idle socket's events: the subscription calls ``_wake`` when one
    # arrives, and a short-lived task delivers what is there, in order, then ends. A ``hello`` or
    # ``resume`` starts a task that subscribes, replays the stored history, and hands over.

    def _follow(self, session_id: str, after: str | None, *, ready: bool) -> None:
        if self._task is not None:
            self._task.cancel()
        previous = self._detach()
        if ready and self._feed is not None:
            self._feed.reset()
        self._task = asyncio.create_task(
            self._forward(session_id, after, ready, previous), name=f"web-socket-{self.connection_id}"
        )

    async def _forward(self, session_id: str, after: str | None, ready: bool, previous: Any) -> None:
        try:
            if previous is not None:
                await _leave(previous)
            joining = self.ctx.core.bus.subscribe(session_topic(session_id))
            try:
                events = await joining.__aenter__()
            except Exception as exc:  # the bus is down (Redis unreachable): no live updates
                log.warning("socket %s: cannot follow session %s: %s; closed, the client reconnects",
                            self.connection_id, session_id, exc)
                await self.ws.close(code=CLOSE_TRY_AGAIN, message=b"live updates unavailable; reconnect")
                return
            try:
                # Read the replay before saying "ready": a message the client sends as soon as it
                # is ready must arrive live (once), not also inside its own replay.
                stored = self.session is not None
                backlog = await self._backlog(session_id, after) if stored else []
                if ready:
                    await self.send(self._ready_frame())
                for record in backlog:
                    await self.feed.replay(record)
            except BaseException:
                await _leave(joining)
                raise
            self._joined, self._events = joining, events
            events.listen(self._wake)
            await self._deliver_ready(session_id)
        finally:
            if self._task is asyncio.current_task():
                self._task = None

    def _wake(self) -> None:
        """The subscription has something to read: deliver it, unless a task already is."""
        if self._task is None and self._events is not None:
            self._task = asyncio.create_task(self._pump(), name=f"web-socket-{self.connection_id}")

    async def _pump(self) -> None:
        try:
            if self._events is not None:
                await self._deliver_ready(self._events.topic)
        finally:
            if self._task is asyncio.current_task():
                self._task = None

    async def _deliver_ready(self, session_id: str) -> None:
        """Send what the subscription holds now, in order; the next event wakes a new task."""
        events = self._events
        try:
            while events is not None and events.ready():
                event = events.read_ready()
                if event is None:  # the bus closed: no more live updates
                    await _leave(self._detach())
                    return
                await self.feed.deliver(event)
                if self.ws.closed:
                    await _leave(self._detach())
                    return
        except asyncio.CancelledError:
            raise
        except SubscriberOverflow:
            await _leave(self._detach())
            # Frames were lost: the client cannot go on from here, but it can from the store. The
            # close code tells the widget to reconnect at once and resume (docs/web-protocol.md).
            await self.ws.close(code=CLOSE_FELL_BEHIND, message=b"fell behind; reconnect and resume")
        except Exception as exc:
            await _leave(self._detach())
            if isinstance(exc, BusDisconnected):  # Redis dropped the subscription: expected, no crash
                log.warning("socket %s: live updates of session %s stopped: %s", self.connection_id, session_id, exc)
            else:
                log.exception("socket %s: forwarding session %s failed", self.connection_id, session_id)
            await self.send(error_frame(errors.INTERNAL, "live updates stopped; send resume"))

    def _detach(self) -> Any:
        """Stop listening to the current subscription; returns what ``_leave`` must exit."""
        joined, events = self._joined, self._events
        self._joined = self._events = None
        if events is not None:
            events.listen(None)
        return joined

    def _ready_frame(self) -> dict[str, Any]:
        if self.user is not None:
            user = {"id": self.user.id, "email": self.user.email, "org_id": self.user.org_id}
        else:  # a visitor stored on their first message: no id yet
            user = {"id": None, "email": None, "org_id": None}
        if self.session is not None:
            session_id, title, handler = self.session.id, self.session.title, self.session.chat_name
        else:
            reserved = self.reserved
            assert reserved is not None
            session_id, title, handler = reserved.session_id, "", reserved.handler
        return {
            "type": "ready",
            "session_id": session_id,
            "user": user,
            "title": title,
            "handler": handler,
            # A new visitor's token, or the renewal of the one in ?visitor=; never the cookie's.
            "visitor_token": self.identity.visitor_token,
        }

    async def _backlog(self, session_id: str, after: str | None) -> list[MessageRecord]:
        """Every stored message after ``after`` (all of them for ``None``), oldest first."""
        backlog: list[MessageRecord] = []
        while True:
            records, _total = await self.ctx.core.sessions.messages(
                session_id, offset=len(backlog), limit=REPLAY_PAGE, after_id=after
            )
            backlog += records
            if len(records) < REPLAY_PAGE:
                return backlog

    async def send(self, frame: dict[str, Any]) -> None:
        """Send one frame; a socket that has gone away is not an error (its client will resume)."""
        if self.ws.closed:
            return
        if self._send_lock is None:
            self._send_lock = asyncio.Lock()
        self._senders += 1
        try:
            async with self._send_lock:
                try:
                    await self.ws.send_str(compact(frame))
                except (ConnectionError, RuntimeError):
                    log.debug("socket %s went away while sending", self.connection_id)
        finally:
            self._senders -= 1
            if not self._senders:  # nobody holds or waits for the lock: an idle socket keeps none
                self._send_lock = None


async def _leave(joined: Any) -> None:
    """Leave a bus subscription entered with ``__aenter__`` (as ``async with`` would on exit)."""
    if joined is not None:
        with contextlib.suppress(Exception):
            await joined.__aexit__(None, None, None)


def _optional_str(frame: dict[str, Any], key: str) -> str | None:
    value = frame.get(key)
    if value is None or isinstance(value, str):
        return value or None
    raise errors.WebError(400, errors.BAD_FRAME, f"{key} must be a string or null")


def _required_str(frame: dict[str, Any], key: str) -> str:
    value = frame.get(key)
    if not isinstance(value, str) or not value:
        raise errors.WebError(400, errors.BAD_FRAME, f"{key} must be a non-empty string")
    return value
