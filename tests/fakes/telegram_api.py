"""A local Telegram Bot API server for tests and benchmarks: real HTTP on 127.0.0.1, real limits.

It speaks the Bot API's HTTP protocol (``POST /bot<token>/<method>`` with a JSON, urlencoded or
multipart body; ``GET /file/bot<token>/<path>`` for downloads) for the methods chatgate uses, and
enforces what makes Telegram hard to talk to:

- text limits after entity parsing (4,096 for messages, 1,024 for captions), a strict parser of
  Telegram's HTML subset ("can't parse entities"), "message is not modified";
- rate limits answered with ``429`` and ``parameters.retry_after``: per chat (one message a
  second; twenty a minute in groups), a global budget (thirty a second), and a per-chat budget for
  drafts (unpublished by Telegram; modelled as five a second). Windows scale with ``rate_scale``
  so tests run fast; ``retry_after`` stays an integer number of seconds as in the real API;
- one poller at a time (a second ``getUpdates`` terminates the first with ``409``), no
  ``getUpdates`` while a webhook is set, webhook delivery with the secret-token header and retries
  until the bot answers 2xx, updates kept until confirmed by ``offset``.

Knobs for tests: ``reject_html`` (every HTML body "can't parse entities"), ``drafts_supported`` /
``chat_action_supported`` / ``rich_supported`` (a method a server does not have answers ``404 Not
Found``, as Telegram does), ``fail_next`` (5xx or any error), ``disconnect_next`` (process the
call, then drop the connection: the client cannot know whether it arrived), ``latency``. Every
call is recorded in ``calls``.

Chat ids follow Telegram's convention: positive ids are private chats (the user's id), negative
ids are groups (``is_forum`` for chats registered with :meth:`FakeTelegramAPI.add_forum`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import re
import secrets
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from aiohttp import ClientSession, ClientTimeout, web

TEXT_LIMIT = 4096  # Bot API sendMessage: "1-4096 characters after entities parsing"
CAPTION_LIMIT = 1024  # Bot API sendPhoto: "0-1024 characters after entities parsing"
RICH_TEXT_LIMIT = 32768  # Bot API 10.1 rich message formatting options: up to 32,768 characters
CALLBACK_DATA_LIMIT = 64  # Bot API InlineKeyboardButton.callback_data: "1-64 bytes"

# Methods that post or change a visible message and so count against the chat and global budgets.
MESSAGE_METHODS = frozenset(
    {"sendMessage", "editMessageText", "sendPhoto", "sendDocument", "sendRichMessage", "editMessageCaption"}
)
DRAFT_METHODS = frozenset({"sendMessageDraft", "sendRichMessageDraft"})


@dataclass(frozen=True)
class RateWindow:
    """At most ``count`` events in any ``seconds``-long window."""

    count: int
    seconds: float


@dataclass
class TelegramRates:
    """The limits the fake enforces; the defaults are Telegram's published ones."""

    per_chat: RateWindow = RateWindow(1, 1.0)  # Bot FAQ: "avoid sending more than one message per second"
    per_group: RateWindow = RateWindow(20, 60.0)  # Bot FAQ: "no more than 20 messages per minute" in a group
    global_: RateWindow = RateWindow(30, 1.0)  # Bot FAQ: "about 30 messages per second" for bulk sends
    drafts_per_chat: RateWindow = RateWindow(5, 1.0)  # not published; a generous model of draft flood control


class _Window:
    def __init__(self, window: RateWindow, scale: float) -> None:
        self.count = window.count
        self.seconds = window.seconds * scale
        self.events: deque[float] = deque(maxlen=window.count)

    def wait(self, now: float) -> float:
        """Seconds until one more event fits (0 when it fits now)."""
        if len(self.events) < self.count:
            return 0.0
        return max(0.0, self.events[0] + self.seconds - now)

    def add(self, now: float) -> None:
        self.events.append(now)


class HtmlParseError(ValueError):
    pass


_TAG_RE = re.compile(r"<(/?)([a-zA-Z][a-zA-Z0-9-]*)((?:\s+[a-zA-Z-]+(?:\s*=\s*(?:\"[^\"]*\"|'[^']*'))?)*)\s*>")
_ATTR_RE = re.compile(r"([a-zA-Z-]+)(?:\s*=\s*(?:\"([^\"]*)\"|'([^']*)'))?")
_ENTITY_RE = re.compile(r"&(lt|gt|amp|quot|#[0-9]{1,7}|#x[0-9a-fA-F]{1,6});")
_NAMED = {"lt": "<", "gt": ">", "amp": "&", "quot": '"'}
_TAG_ENTITY = {
    "b": "bold",
    "strong": "bold",
    "i": "italic",
    "em": "italic",
    "u": "underline",
    "ins": "underline",
    "s": "strikethrough",
    "strike": "strikethrough",
    "del": "strikethrough",
    "tg-spoiler": "spoiler",
    "a": "text_link",
    "code": "code",
    "pre": "pre",
    "blockquote": "blockquote",
    "tg-emoji": "custom_emoji",
    "span": "spoiler",
}


def _utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def parse_html(html: str) -> tuple[str, list[dict[str, Any]]]:
    """Parse Telegram's HTML subset as the Bot API does: the plain text and its entities.

    Raises :class:`HtmlParseError` with Telegram's wording for what the real server rejects:
    unsupported tags, unclosed or mismatched tags, a bare ``<`` or ``&``, entities inside code.
    """
    out: list[str] = []
    entities: list[dict[str, Any]] = []
    stack: list[tuple[str, int, dict[str, str]]] = []
    length = 0  # in UTF-16 code units, the unit of entity offsets
    i = 0
    while i < len(html):
        ch = html[i]
        if ch == "<":
            match = _TAG_RE.match(html, i)
            if match is None:
                raise HtmlParseError(f"Unsupported start tag at byte offset {len(html[:i].encode())}")
            closing, name, raw_attrs = match.group(1) == "/", match.group(2).lower(), match.group(3)
            if name not in _TAG_ENTITY:
                raise HtmlParseError(f'Unsupported start tag "{name}" at byte offset {len(html[:i].encode())}')
            if closing:
                if not stack or stack[-1][0] != name:
                    raise HtmlParseError(
                        f'Unmatched end tag at byte offset {len(html[:i].encode())}, expected "</'
                        f'{stack[-1][0] if stack else ""}>", found "</{name}>"'
                    )
                opened, start, attrs = stack.pop()
                entity: dict[str, Any] = {
                    "type": _TAG_ENTITY[opened],
                    "offset": start,
                    "length": length - start,
                }
                if opened == "a":
                    entity["url"] = attrs.get("href", "")
                if opened == "pre" and entities and entities[-1]["type"] == "code":
                    inner = entities.pop()
                    language = inner.get("language")
                    if language:
                        entity["language"] = language
                if opened == "code" and stack and stack[-1][0] == "pre":
                    language = attrs.get("class", "")
                    if language.startswith("language-"):
                        entity["language"] = language[len("language-") :]
                if entity["length"] > 0:
                    entities.append(entity)
            else:
                attrs = {m.group(1).lower(): (m.group(2) or m.group(3) or "") for m in _ATTR_RE.finditer(raw_attrs)}
                if stack and stack[-1][0] in ("code", "pre") and not (stack[-1][0] == "pre" and name == "code"):
                    raise HtmlParseError(f'Unsupported start tag "{name}" inside a code entity')
                if name == "span" and attrs.get("class") != "tg-spoiler":
                    raise HtmlParseError('Tag "span" must have class "tg-spoiler"')
                if name == "a" and not attrs.get("href"):
                    raise HtmlParseError('Tag "a" must have attribute "href"')
                stack.append((name, length, attrs))
            i = match.end()
            continue
        if ch == "&":
            match = _ENTITY_RE.match(html, i)
            if match is None:
                raise HtmlParseError(f"Unsupported HTML entity at byte offset {len(html[:i].encode())}")
            ref = match.group(1)
            if ref in _NAMED:
                text = _NAMED[ref]
            else:
                code = int(ref[2:], 16) if ref.startswith("#x") else int(ref[1:])
                try:
                    text = chr(code)
                except (ValueError, OverflowError):
                    raise HtmlParseError(f"Invalid numeric entity at byte offset {i}") from None
            out.append(text)
            length += _utf16_len(text)
            i = match.end()
            continue
        if ch == ">":
            raise HtmlParseError(f"Unexpected end tag at byte offset {len(html[:i].encode())}")
        j = i
        while j < len(html) and html[j] not in "<&>":
            j += 1
        chunk = html[i:j]
        out.append(chunk)
        length += _utf16_len(chunk)
        i = j
    if stack:
        raise HtmlParseError(f'Can\'t find end tag corresponding to start tag "{stack[-1][0]}"')
    entities.sort(key=lambda e: (e["offset"], -e["length"]))
    return "".join(out), entities


@dataclass
class RecordedCall:
    method: str
    params: dict[str, Any]
    status: int
    response: dict[str, Any]
    at: float


@dataclass
class StoredMessage:
    chat_id: int
    message_id: int
    text: str
    source: str
    entities: list[dict[str, Any]]
    reply_markup: dict[str, Any] | None = None
    thread_id: int | None = None
    kind: str = "text"  # text | photo | document | rich
    file_id: str | None = None
    deleted: bool = False
    edits: int = 0
    from_bot: bool = True
    sent_at: float = 0.0


@dataclass
class StoredFile:
    file_id: str
    file_unique_id: str
    data: bytes
    path: str
    name: str
    mime_type: str


class _Reject(Exception):
    """An error answer in the Bot API's shape."""

    def __init__(self, status: int, description: str, retry_after: int | None = None) -> None:
        super().__init__(description)
        self.status = status
        self.description = description
        self.retry_after = retry_after


@dataclass
class _Fault:
    method: str
    status: int
    description: str
    remaining: int
    retry_after: int | None = None


@dataclass
class _Poll:
    future: asyncio.Future[None]
    terminated: bool = False


class FakeTelegramAPI:
    """The fake server. ``async with FakeTelegramAPI() as api: api.base_url``."""

    def __init__(
        self,
        token: str = "123456789:TEST-chatgate-token",
        *,
        bot_username: str = "chatgate_test_bot",
        rates: TelegramRates | None = None,
        rate_scale: float = 1.0,
        enforce_rates: bool = True,
        drafts_supported: bool = True,
        chat_action_supported: bool = True,
        rich_supported: bool = False,
        reject_html: bool = False,
        latency: float = 0.0,
        webhook_retry_delay: float = 0.05,
        port: int = 0,
    ) -> None:
        self.token = token
        self.bot_id = int(token.split(":", 1)[0])
        self.bot_username = bot_username
        self.rates = rates or TelegramRates()
        self.rate_scale = rate_scale
        self.enforce_rates = enforce_rates
        self.drafts_supported = drafts_supported
        self.chat_action_supported = chat_action_supported
        self.rich_supported = rich_supported
        self.reject_html = reject_html
        self.confirm_updates = True
        """False: ``offset`` confirms nothing, as if every confirmation were lost (a crash between
        recording an update and the next poll): the bot sees the same updates again and again."""
        self.latency = latency
        self.webhook_retry_delay = webhook_retry_delay
        self.port = port
        self.calls: list[RecordedCall] = []
        self.messages: dict[int, list[StoredMessage]] = {}
        self.drafts: dict[tuple[int, int], list[str]] = {}
        self.chat_actions: list[tuple[int, str]] = []
        self.callback_answers: dict[str, dict[str, Any]] = {}
        self.files: dict[str, StoredFile] = {}
        self.forums: set[int] = set()
        self.webhook: dict[str, Any] | None = None
        self.webhook_deliveries: list[tuple[int, int]] = []  # (update_id, status) per delivery attempt
        self._updates: list[dict[str, Any]] = []
        self._update_ids = itertools.count(1000)
        self._message_ids: dict[int, itertools.count[int]] = {}
        self._callback_ids = itertools.count(1)
        self._new_update = asyncio.Event()
        self._poll: _Poll | None = None
        self._faults: list[_Fault] = []
        self._disconnects: dict[str, int] = {}
        self._chat_windows: dict[int, list[_Window]] = {}
        self._draft_windows: dict[int, _Window] = {}
        self._global = _Window(self.rates.global_, rate_scale)
        self._runner: web.AppRunner | None = None
        self._webhook_task: asyncio.Task[None] | None = None
        self.started = time.monotonic()
        """``time.monotonic()`` at construction; ``RecordedCall.at`` counts from here."""

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> FakeTelegramAPI:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/bot{token}/{method}", self._handle_method)
        app.router.add_get("/bot{token}/{method}", self._handle_method)
        app.router.add_get("/file/bot{token}/{path:.+}", self._handle_file)
        app.router.add_post("/_fake/send_text", self._control_send_text)
        app.router.add_get("/_fake/calls", self._control_calls)
        app.router.add_get("/_fake/visible", self._control_visible)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        server = site._server
        assert server is not None and server.sockets
        self.port = server.sockets[0].getsockname()[1]
        self._webhook_task = asyncio.create_task(self._deliver_webhooks(), name="fake-telegram-webhook")
        return self

    async def stop(self) -> None:
        if self._webhook_task is not None:
            self._webhook_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._webhook_task
            self._webhook_task = None
        if self._poll is not None and not self._poll.future.done():
            self._poll.future.set_result(None)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeTelegramAPI:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def settings(self, **overrides: Any) -> dict[str, Any]:
        """The ``[telegram]`` settings that point a gateway at this server (fast test polling)."""
        return {"bot_token": self.token, "api_url": self.base_url, "poll_timeout": 1, **overrides}

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- test knobs ----------------------------------------------------------------------------

    def fail_next(
        self, method: str, *, status: int = 502, description: str = "Bad Gateway", times: int = 1,
        retry_after: int | None = None,
    ) -> None:
        """Answer the next ``times`` calls of ``method`` with an error, without processing them
        (``retry_after``: in ``parameters``, as Telegram's 429 answers carry it)."""
        self._faults.append(_Fault(method, status, description, times, retry_after))

    def disconnect_next(self, method: str, *, times: int = 1) -> None:
        """Process the next ``times`` calls of ``method``, then drop the connection unanswered."""
        self._disconnects[method] = self._disconnects.get(method, 0) + times

    def add_forum(self, chat_id: int) -> None:
        self.forums.add(chat_id)

    def add_file(self, data: bytes, *, name: str = "file.bin", mime_type: str = "application/octet-stream") -> str:
        """Store a file as if a user had sent it; returns its ``file_id``."""
        file_id = "F" + secrets.token_hex(8)
        unique = "U" + secrets.token_hex(4)
        self.files[file_id] = StoredFile(file_id, unique, data, f"documents/{unique}_{name}", name, mime_type)
        return file_id

    # -- inspection ----------------------------------------------------------------------------

    def calls_to(self, method: str, *, ok: bool | None = None) -> list[RecordedCall]:
        return [c for c in self.calls if c.method == method and (ok is None or (c.status == 200) == ok)]

    @property
    def rate_limited(self) -> list[RecordedCall]:
        return [c for c in self.calls if c.status == 429]

    def visible(self, chat_id: int) -> list[StoredMessage]:
        """The bot's messages in a chat that are still there, oldest first."""
        return [m for m in self.messages.get(chat_id, []) if m.from_bot and not m.deleted]

    def visible_texts(self, chat_id: int) -> list[str]:
        return [m.text for m in self.visible(chat_id)]

    @property
    def pending_updates(self) -> list[dict[str, Any]]:
        return list(self._updates)

    # -- injecting updates ---------------------------------------------------------------------

    def inject(self, update: dict[str, Any]) -> int:
        """Queue an update (``update_id`` is assigned); returns its id."""
        update_id = next(self._update_ids)
        self._updates.append({"update_id": update_id, **update})
        self._new_update.set()
        return update_id

    def user(self, user_id: int, first_name: str = "Ada", **extra: Any) -> dict[str, Any]:
        return {"id": user_id, "is_bot": False, "first_name": first_name, **extra}

    def chat(self, chat_id: int, *, title: str = "Test group") -> dict[str, Any]:
        if chat_id > 0:
            return {"id": chat_id, "type": "private", "first_name": "Ada"}
        data: dict[str, Any] = {"id": chat_id, "type": "supergroup", "title": title}
        if chat_id in self.forums:
            data["is_forum"] = True
        return data

    def message(
        self,
        chat_id: int,
        text: str | None = None,
        *,
        user_id: int | None = None,
        thread_id: int | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """A user's message object (not yet injected), stored in the chat so replies can find it."""
        user_id = user_id if user_id is not None else (chat_id if chat_id > 0 else 42)
        message_id = self._next_message_id(chat_id)
        message: dict[str, Any] = {
            "message_id": message_id,
            "date": int(time.time()),
            "chat": self.chat(chat_id),
            "from": self.user(user_id),
        }
        if text is not None:
            message["text"] = text
        if thread_id is not None:
            message["message_thread_id"] = thread_id
            if chat_id in self.forums:
                message["is_topic_message"] = True
        message.update(fields)
        self.messages.setdefault(chat_id, []).append(
            StoredMessage(chat_id, message_id, text or "", text or "", [], thread_id=thread_id, from_bot=False)
        )
        return message

    def send_text(self, chat_id: int, text: str, **kwargs: Any) -> int:
        """Inject a user's text message; returns the update id."""
        return self.inject({"message": self.message(chat_id, text, **kwargs)})

    def send_document(
        self,
        chat_id: int,
        data: bytes,
        *,
        name: str,
        mime_type: str,
        caption: str | None = None,
        **kwargs: Any,
    ) -> int:
        file_id = self.add_file(data, name=name, mime_type=mime_type)
        stored = self.files[file_id]
        document = {
            "file_id": file_id,
            "file_unique_id": stored.file_unique_id,
            "file_name": name,
            "mime_type": mime_type,
            "file_size": len(data),
        }
        fields: dict[str, Any] = {"document": document}
        if caption is not None:
            fields["caption"] = caption
        return self.inject({"message": self.message(chat_id, None, **fields, **kwargs)})

    def press_button(self, chat_id: int, message_id: int, data: str, *, user_id: int | None = None) -> int:
        """Inject a callback query for a button on one of the bot's messages."""
        stored = next(m for m in self.messages.get(chat_id, []) if m.message_id == message_id)
        query_id = str(next(self._callback_ids))
        self.callback_answers[query_id] = {}
        user_id = user_id if user_id is not None else (chat_id if chat_id > 0 else 42)
        message: dict[str, Any] = {
            "message_id": message_id,
            "date": int(time.time()),
            "chat": self.chat(chat_id),
            "from": {"id": self.bot_id, "is_bot": True, "first_name": "chatgate"},
            "text": stored.text,
        }
        if stored.thread_id is not None:
            message["message_thread_id"] = stored.thread_id
            if chat_id in self.forums:
                message["is_topic_message"] = True
        return self.inject(
            {
                "callback_query": {
                    "id": query_id,
                    "from": self.user(user_id),
                    "chat_instance": str(chat_id),
                    "message": message,
                    "data": data,
                }
            }
        )

    def stop_generation(self, chat_id: int, draft_id: int) -> int:
        """Inject the update a user's press on a draft's stop button produces (Bot API 10.x)."""
        return self.inject({"stopped_message_generation": {"chat": self.chat(chat_id), "draft_id": draft_id}})

    # -- control API (for a fake running in another process: the benchmark) -------------------

    async def _control_send_text(self, request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response({"update_id": self.send_text(int(body["chat_id"]), str(body["text"]))})

    async def _control_calls(self, request: web.Request) -> web.Response:
        return web.json_response(
            [
                {"method": c.method, "status": c.status, "at": self.started + c.at, "chat_id": c.params.get("chat_id")}
                for c in self.calls
            ]
        )

    async def _control_visible(self, request: web.Request) -> web.Response:
        return web.json_response({"texts": self.visible_texts(int(request.query["chat_id"]))})

    # -- HTTP --------------------------------------------------------------------------------

    async def _handle_file(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["token"] != self.token:
            return web.json_response({"ok": False, "error_code": 401, "description": "Unauthorized"}, status=401)
        path = request.match_info["path"]
        for stored in self.files.values():
            if stored.path == path:
                return web.Response(body=stored.data, content_type="application/octet-stream")
        return web.json_response({"ok": False, "error_code": 404, "description": "Not Found"}, status=404)

    async def _handle_method(self, request: web.Request) -> web.StreamResponse:
        method = request.match_info["method"]
        if request.match_info["token"] != self.token:
            return self._answer(method, {}, _Reject(401, "Unauthorized"))
        try:
            params, uploads = await self._read_params(request)
        except ValueError as exc:
            return self._answer(method, {}, _Reject(400, f"Bad Request: {exc}"))
        if self.latency:
            await asyncio.sleep(self.latency)
        for fault in self._faults:
            if fault.method == method and fault.remaining > 0:
                fault.remaining -= 1
                return self._answer(method, params, _Reject(fault.status, fault.description, fault.retry_after))
        handler = getattr(self, f"_m_{method}", None)
        if handler is None or not self._supported(method):
            return self._answer(method, params, _Reject(404, "Not Found"))
        try:
            self._check_rate(method, params)
            result = await handler(params, uploads)
        except _Reject as reject:
            return self._answer(method, params, reject)
        if self._disconnects.get(method, 0) > 0:
            self._disconnects[method] -= 1
            self.calls.append(RecordedCall(method, params, 0, {"ok": True, "result": result}, self._now()))
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=200)
        return self._answer(method, params, result)

    def _supported(self, method: str) -> bool:
        if method == "sendMessageDraft":
            return self.drafts_supported
        if method in ("sendRichMessage", "sendRichMessageDraft"):
            return self.rich_supported
        if method == "sendChatAction":
            return self.chat_action_supported
        return True

    def _answer(self, method: str, params: dict[str, Any], result: Any) -> web.Response:
        if isinstance(result, _Reject):
            body: dict[str, Any] = {
                "ok": False,
                "error_code": result.status,
                "description": result.description,
            }
            if result.retry_after is not None:
                body["parameters"] = {"retry_after": result.retry_after}
            status = result.status
        else:
            body = {"ok": True, "result": result}
            status = 200
        self.calls.append(RecordedCall(method, params, status, body, self._now()))
        return web.json_response(body, status=status)

    async def _read_params(self, request: web.Request) -> tuple[dict[str, Any], dict[str, tuple[str, bytes]]]:
        """The call's parameters from a query string, JSON, urlencoded or multipart body.

        Form values arrive as strings; JSON-serialized ones (objects, arrays) are decoded as the
        Bot API does. Uploaded files are returned separately as ``{field: (filename, bytes)}``.
        """
        params: dict[str, Any] = dict(request.query)
        uploads: dict[str, tuple[str, bytes]] = {}
        if request.method == "POST" and request.can_read_body:
            if request.content_type == "application/json":
                try:
                    body = await request.json()
                except json.JSONDecodeError:
                    raise ValueError("can't parse JSON object") from None
                if not isinstance(body, dict):
                    raise ValueError("JSON body must be an object")
                params.update(body)
            else:
                form = await request.post()
                for key, value in form.items():
                    if isinstance(value, web.FileField):
                        uploads[key] = (value.filename, value.file.read())
                    else:
                        params[key] = value
        for key, value in list(params.items()):
            if isinstance(value, str) and value[:1] in "[{":
                try:
                    params[key] = json.loads(value)
                except json.JSONDecodeError:
                    raise ValueError(f"can't parse {key} JSON object") from None
        for key, value in list(params.items()):
            if isinstance(value, str) and value.startswith("attach://"):
                name = value[len("attach://") :]
                if name in uploads:
                    uploads[key] = uploads.pop(name)
                    del params[key]
        return params, uploads

    def _now(self) -> float:
        return time.monotonic() - self.started

    # -- limits --------------------------------------------------------------------------------

    def _check_rate(self, method: str, params: dict[str, Any]) -> None:
        if not self.enforce_rates:
            return
        if method in DRAFT_METHODS:
            chat_id = _int(params, "chat_id")
            window = self._draft_windows.setdefault(chat_id, _Window(self.rates.drafts_per_chat, self.rate_scale))
            now = time.monotonic()
            wait = window.wait(now)
            if wait > 0:
                raise self._too_many(wait)
            window.add(now)
            return
        if method not in MESSAGE_METHODS:
            return
        chat_id = _int(params, "chat_id")
        windows = self._chat_windows.get(chat_id)
        if windows is None:
            windows = [_Window(self.rates.per_chat, self.rate_scale)]
            if chat_id < 0:
                windows.append(_Window(self.rates.per_group, self.rate_scale))
            self._chat_windows[chat_id] = windows
        now = time.monotonic()
        wait = max([w.wait(now) for w in windows] + [self._global.wait(now)])
        if wait > 0:
            raise self._too_many(wait)
        for window in windows:
            window.add(now)
        self._global.add(now)

    def _too_many(self, wait: float) -> _Reject:
        retry_after = max(1, math.ceil(wait))
        return _Reject(429, f"Too Many Requests: retry after {retry_after}", retry_after=retry_after)

    # -- methods -------------------------------------------------------------------------------

    def _bot_user(self) -> dict[str, Any]:
        return {"id": self.bot_id, "is_bot": True, "first_name": "chatgate", "username": self.bot_username}

    async def _m_getMe(self, params: dict[str, Any], uploads: Any) -> dict[str, Any]:
        return {
            **self._bot_user(),
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
        }

    async def _m_getUpdates(self, params: dict[str, Any], uploads: Any) -> list[dict[str, Any]]:
        if self.webhook is not None:
            raise _Reject(
                409,
                "Conflict: can't use getUpdates method while webhook is active; use deleteWebhook to delete "
                "the webhook first",
            )
        offset = params.get("offset")
        if offset is not None and self.confirm_updates:
            offset = int(offset)
            self._updates = [u for u in self._updates if u["update_id"] >= offset]
        limit = int(params.get("limit") or 100)
        if not 1 <= limit <= 100:
            limit = 100
        timeout = float(params.get("timeout") or 0)
        allowed = params.get("allowed_updates")
        if self._poll is not None and not self._poll.future.done():
            self._poll.terminated = True
            self._poll.future.set_result(None)
        deadline = time.monotonic() + timeout
        while True:
            ready = [u for u in self._updates if _allowed(u, allowed)][:limit]
            if ready or time.monotonic() >= deadline:
                return ready
            self._new_update.clear()
            poll = _Poll(asyncio.get_running_loop().create_future())
            self._poll = poll
            waiter = asyncio.ensure_future(self._new_update.wait())
            try:
                await asyncio.wait(
                    [waiter, poll.future],
                    timeout=max(0.0, deadline - time.monotonic()),
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                waiter.cancel()
            if poll.terminated:
                raise _Reject(
                    409,
                    "Conflict: terminated by other getUpdates request; make sure that only one bot instance is running",
                )

    async def _m_setWebhook(self, params: dict[str, Any], uploads: Any) -> bool:
        url = params.get("url") or ""
        if not url:
            self.webhook = None
            return True
        secret = params.get("secret_token")
        if secret is not None and not re.fullmatch(r"[A-Za-z0-9_-]{1,256}", str(secret)):
            raise _Reject(400, "Bad Request: secret token contains unallowed characters")
        if _truthy(params.get("drop_pending_updates")):
            self._updates.clear()
        self.webhook = {"url": url, "secret_token": secret, "allowed_updates": params.get("allowed_updates")}
        self._new_update.set()
        return True

    async def _m_deleteWebhook(self, params: dict[str, Any], uploads: Any) -> bool:
        self.webhook = None
        if _truthy(params.get("drop_pending_updates")):
            self._updates.clear()
        return True

    async def _m_getWebhookInfo(self, params: dict[str, Any], uploads: Any) -> dict[str, Any]:
        return {
            "url": (self.webhook or {}).get("url", ""),
            "has_custom_certificate": False,
            "pending_update_count": len(self._updates),
        }

    def _check_text(self, params: dict[str, Any], key: str, limit: int, *, required: bool) -> tuple[str, list]:
        source = params.get(key)
        if source is None:
            source = ""
        source = str(source)
        parse_mode = params.get("parse_mode")
        if parse_mode == "HTML" and self.reject_html:
            raise _Reject(400, "Bad Request: can't parse entities: rejected by the test (reject_html)")
        if parse_mode == "HTML":
            try:
                text, entities = parse_html(source)
            except HtmlParseError as exc:
                raise _Reject(400, f"Bad Request: can't parse entities: {exc}") from None
        elif parse_mode in (None, ""):
            text, entities = source, list(params.get("entities") or [])
        else:
            raise _Reject(400, f"Bad Request: unsupported parse_mode {parse_mode!r} in this fake")
        if required and not text.strip():
            raise _Reject(400, "Bad Request: message text is empty")
        if _utf16_len(text) > limit:  # Telegram counts UTF-16 code units after parsing
            what = "message caption is too long" if key == "caption" else "message is too long"
            raise _Reject(400, f"Bad Request: {what}")
        return text, entities

    def _check_markup(self, params: dict[str, Any]) -> dict[str, Any] | None:
        markup = params.get("reply_markup")
        if markup is None:
            return None
        if not isinstance(markup, dict):
            raise _Reject(400, "Bad Request: can't parse reply keyboard markup JSON object")
        for row in markup.get("inline_keyboard", []):
            for button in row:
                data = button.get("callback_data")
                if data is not None and not 1 <= len(str(data).encode()) <= CALLBACK_DATA_LIMIT:
                    raise _Reject(400, "Bad Request: BUTTON_DATA_INVALID")
                url = button.get("url")
                if url is not None and not str(url).startswith(("http://", "https://", "tg://")):
                    raise _Reject(400, f"Bad Request: inline keyboard button URL '{url}' is invalid")
        return markup

    def _chat_id(self, params: dict[str, Any]) -> int:
        try:
            chat_id = _int(params, "chat_id")
        except _Reject:
            raise
        return chat_id

    def _thread(self, params: dict[str, Any]) -> int | None:
        value = params.get("message_thread_id")
        return None if value in (None, "") else int(value)

    def _next_message_id(self, chat_id: int) -> int:
        counter = self._message_ids.setdefault(chat_id, itertools.count(1))
        return next(counter)

    def _store(self, chat_id: int, **fields: Any) -> StoredMessage:
        message = StoredMessage(
            chat_id=chat_id, message_id=self._next_message_id(chat_id), sent_at=self._now(), **fields
        )
        self.messages.setdefault(chat_id, []).append(message)
        return message

    def _message_json(self, message: StoredMessage) -> dict[str, Any]:
        data: dict[str, Any] = {
            "message_id": message.message_id,
            "date": int(time.time()),
            "chat": self.chat(message.chat_id),
            "from": self._bot_user(),
        }
        if message.thread_id is not None:
            data["message_thread_id"] = message.thread_id
        if message.kind == "photo" and message.file_id:
            stored = self.files[message.file_id]
            data["photo"] = [
                {
                    "file_id": stored.file_id,
                    "file_unique_id": stored.file_unique_id,
                    "width": 640,
                    "height": 480,
                    "file_size": len(stored.data),
                }
            ]
            if message.text:
                data["caption"] = message.text
        elif message.kind == "document" and message.file_id:
            stored = self.files[message.file_id]
            data["document"] = {
                "file_id": stored.file_id,
                "file_unique_id": stored.file_unique_id,
                "file_name": stored.name,
                "mime_type": stored.mime_type,
                "file_size": len(stored.data),
            }
            if message.text:
                data["caption"] = message.text
        else:
            data["text"] = message.text
            if message.entities:
                data["entities"] = message.entities
        if message.reply_markup:
            data["reply_markup"] = message.reply_markup
        return data

    def _find(self, chat_id: int, message_id: Any, what: str) -> StoredMessage:
        try:
            wanted = int(message_id)
        except (TypeError, ValueError):
            raise _Reject(400, f"Bad Request: message to {what} not found") from None
        for message in self.messages.get(chat_id, []):
            if message.message_id == wanted and not message.deleted:
                return message
        raise _Reject(400, f"Bad Request: message to {what} not found")

    async def _m_sendMessage(self, params: dict[str, Any], uploads: Any) -> dict[str, Any]:
        chat_id = self._chat_id(params)
        text, entities = self._check_text(params, "text", TEXT_LIMIT, required=True)
        markup = self._check_markup(params)
        message = self._store(
            chat_id,
            text=text,
            source=str(params.get("text")),
            entities=entities,
            reply_markup=markup,
            thread_id=self._thread(params),
        )
        return self._message_json(message)

    async def _m_editMessageText(self, params: dict[str, Any], uploads: Any) -> dict[str, Any]:
        chat_id = self._chat_id(params)
        message = self._find(chat_id, params.get("message_id"), "edit")
        if not message.from_bot:
            raise _Reject(400, "Bad Request: message can't be edited")
        text, entities = self._check_text(params, "text", TEXT_LIMIT, required=True)
        markup = self._check_markup(params)
        if text == message.text and entities == message.entities and markup == message.reply_markup:
            raise _Reject(
                400,
                "Bad Request: message is not modified: specified new message content and reply markup "
                "are exactly the same as a current content and reply markup of the message",
            )
        message.text, message.entities, message.reply_markup = text, entities, markup
        message.source = str(params.get("text"))
        message.edits += 1
        return self._message_json(message)

    async def _m_sendMessageDraft(self, params: dict[str, Any], uploads: Any) -> bool:
        chat_id = self._chat_id(params)
        if chat_id < 0:
            raise _Reject(400, "Bad Request: drafts can be sent only to private chats")
        draft_id = _int(params, "draft_id")
        if draft_id == 0:
            raise _Reject(400, "Bad Request: draft_id must be non-zero")
        text, _ = self._check_text(params, "text", TEXT_LIMIT, required=False)
        self.drafts.setdefault((chat_id, draft_id), []).append(text)
        return True

    async def _m_sendRichMessage(self, params: dict[str, Any], uploads: Any) -> dict[str, Any]:
        chat_id = self._chat_id(params)
        rich = params.get("rich_message")
        if not isinstance(rich, dict) or not (rich.get("markdown") or rich.get("html")):
            raise _Reject(400, "Bad Request: rich message must have markdown or html")
        text = str(rich.get("markdown") or rich.get("html"))
        if _utf16_len(text) > RICH_TEXT_LIMIT:
            raise _Reject(400, "Bad Request: message is too long")
        message = self._store(
            chat_id,
            text=text,
            source=text,
            entities=[],
            kind="rich",
            reply_markup=self._check_markup(params),
            thread_id=self._thread(params),
        )
        return self._message_json(message)

    async def _m_sendRichMessageDraft(self, params: dict[str, Any], uploads: Any) -> bool:
        chat_id = self._chat_id(params)
        rich = params.get("rich_message") or {}
        self.drafts.setdefault((chat_id, _int(params, "draft_id")), []).append(str(rich.get("markdown") or ""))
        return True

    async def _m_sendChatAction(self, params: dict[str, Any], uploads: Any) -> bool:
        self.chat_actions.append((self._chat_id(params), str(params.get("action"))))
        return True

    async def _m_answerCallbackQuery(self, params: dict[str, Any], uploads: Any) -> bool:
        query_id = str(params.get("callback_query_id"))
        if query_id not in self.callback_answers or self.callback_answers[query_id]:
            raise _Reject(400, "Bad Request: query is too old and response timeout expired or query ID is invalid")
        self.callback_answers[query_id] = {"text": params.get("text"), "answered": True}
        return True

    async def _m_deleteMessage(self, params: dict[str, Any], uploads: Any) -> bool:
        message = self._find(self._chat_id(params), params.get("message_id"), "delete")
        message.deleted = True
        return True

    async def _upload(
        self, params: dict[str, Any], uploads: dict[str, tuple[str, bytes]], key: str, mime_type: str
    ) -> str:
        if key in uploads:
            filename, data = uploads[key]
            file_id = self.add_file(data, name=filename or key, mime_type=mime_type)
            return file_id
        value = params.get(key)
        if isinstance(value, str) and value in self.files:
            return value
        if isinstance(value, str) and value.startswith(("http://", "https://")):
            # Telegram downloads the URL itself; the fake fetches it too (loopback only in tests).
            try:
                async with ClientSession(timeout=ClientTimeout(total=5)) as http, http.get(value) as response:
                    if response.status != 200:
                        raise _Reject(400, "Bad Request: wrong file identifier/HTTP URL specified")
                    data = await response.read()
            except OSError:
                raise _Reject(400, "Bad Request: failed to get HTTP URL content") from None
            return self.add_file(data, name=value.rsplit("/", 1)[-1] or key, mime_type=mime_type)
        raise _Reject(400, "Bad Request: wrong file identifier/HTTP URL specified")

    async def _m_sendPhoto(self, params: dict[str, Any], uploads: dict[str, tuple[str, bytes]]) -> dict[str, Any]:
        return await self._send_media(params, uploads, "photo", "image/jpeg")

    async def _m_sendDocument(self, params: dict[str, Any], uploads: dict[str, tuple[str, bytes]]) -> dict[str, Any]:
        return await self._send_media(params, uploads, "document", "application/octet-stream")

    async def _send_media(
        self, params: dict[str, Any], uploads: dict[str, tuple[str, bytes]], kind: str, default_type: str
    ) -> dict[str, Any]:
        """sendPhoto / sendDocument: an upload (or file_id) with an optional caption."""
        chat_id = self._chat_id(params)
        caption, entities = self._check_text(params, "caption", CAPTION_LIMIT, required=False)
        markup = self._check_markup(params)
        file_id = await self._upload(params, uploads, kind, default_type)
        message = self._store(
            chat_id,
            text=caption,
            source=str(params.get("caption") or ""),
            entities=entities,
            reply_markup=markup,
            kind=kind,
            file_id=file_id,
            thread_id=self._thread(params),
        )
        return self._message_json(message)

    async def _m_getFile(self, params: dict[str, Any], uploads: Any) -> dict[str, Any]:
        stored = self.files.get(str(params.get("file_id")))
        if stored is None:
            raise _Reject(400, "Bad Request: invalid file_id")
        return {
            "file_id": stored.file_id,
            "file_unique_id": stored.file_unique_id,
            "file_size": len(stored.data),
            "file_path": stored.path,
        }

    # -- webhook delivery ----------------------------------------------------------------------

    async def _deliver_webhooks(self) -> None:
        """Deliver queued updates to the webhook one at a time; retry until the bot answers 2xx."""
        async with ClientSession(timeout=ClientTimeout(total=10)) as http:
            while True:
                if self.webhook is None or not self._updates:
                    self._new_update.clear()
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._new_update.wait(), timeout=0.2)
                    continue
                update = self._updates[0]
                if not _allowed(update, self.webhook.get("allowed_updates")):
                    self._updates.pop(0)
                    continue
                headers = {}
                if self.webhook.get("secret_token"):
                    headers["X-Telegram-Bot-Api-Secret-Token"] = str(self.webhook["secret_token"])
                try:
                    async with http.post(self.webhook["url"], json=update, headers=headers) as response:
                        status = response.status
                except (TimeoutError, OSError):
                    status = 0
                self.webhook_deliveries.append((update["update_id"], status))
                if 200 <= status < 300:
                    if self._updates and self._updates[0] is update:
                        self._updates.pop(0)
                else:
                    await asyncio.sleep(self.webhook_retry_delay)


def _int(params: dict[str, Any], key: str) -> int:
    value = params.get(key)
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        if value is None:
            raise _Reject(400, f"Bad Request: {key} is empty") from None
        raise _Reject(400, f"Bad Request: chat not found ({key}={value!r})") from None


def _truthy(value: Any) -> bool:
    return value in (True, "true", "True", "1", 1)


def _allowed(update: dict[str, Any], allowed: Any) -> bool:
    if not allowed:
        return True
    return any(kind in update for kind in allowed)


async def _serve(port: int, rate_scale: float, latency: float) -> None:
    async with FakeTelegramAPI(port=port, rate_scale=rate_scale, latency=latency) as api:
        print(f"LISTENING {api.port} {api.token}", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Run the fake Bot API server (control API under /_fake/).")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--rate-scale", type=float, default=1.0)
    parser.add_argument("--latency", type=float, default=0.0)
    options = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(options.port, options.rate_scale, options.latency))
