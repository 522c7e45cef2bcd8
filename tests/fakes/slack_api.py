"""A local Slack: the Web API over HTTP, file hosting, and the Events API sender, for tests and benches.

``FakeSlack`` is a real aiohttp server on 127.0.0.1 (port 0) that speaks Slack's Web API the way
slack_sdk expects it: ``POST /api/<method>`` with form, query or JSON arguments and
``Authorization: Bearer <token>``, answering ``{"ok": true, ...}`` or ``{"ok": false, "error": ...}``
with HTTP 200, and HTTP 429 + ``Retry-After`` when a method's rate budget is spent. It keeps the
messages it was sent (with their streaming state), enforces the text and Block Kit limits Slack
enforces, records every call, and hosts files (the external upload flow and ``url_private``).

Slash commands' ``response_url`` is served too (``response_url(channel)`` hands one out; what it
received is in ``responses``), and ``not_member_of`` makes the bot an outsider of a channel, where
the Web API's message methods answer ``not_in_channel`` as Slack's do.

It also plays Slack's side of the Events API: ``deliver_event`` signs a payload with the signing
secret exactly as Slack does (``v0:<timestamp>:<body>``, HMAC-SHA256) and POSTs it to the app.

Rate budgets are those of ``adapters.slack.limits`` scaled by ``time_scale`` (windows and
``Retry-After`` shrink together, so a test sees real 429 behaviour in milliseconds), or set per
method with ``set_budget``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import re
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import aiohttp
from aiohttp import web

from adapters.slack.limits import (
    MAX_ACTIONS_ELEMENTS,
    MAX_BLOCKS,
    MAX_BUTTON_TEXT,
    MAX_BUTTON_VALUE,
    MAX_MARKDOWN_BLOCK_TOTAL,
    MAX_SECTION_TEXT,
    MAX_STREAM_APPEND,
    METHOD_BUDGETS,
    PER_CHANNEL_BUDGETS,
    Budget,
)
from gateway.testing import test_settings

# Slack's own size limits as the server enforces them (method reference pages).
SERVER_MAX_TEXT = 40_000  # chat.postMessage: text beyond 40,000 characters is refused (msg_too_long here)
SERVER_MAX_UPDATE_TEXT = 4_000  # chat.update: text is capped at 4,000 characters
MAX_BLOCK_ID = 255  # Block Kit: block_id / action_id up to 255 characters


@dataclass
class ApiCall:
    method: str
    args: dict[str, Any]
    token: str | None
    at: float
    status: int = 200
    error: str | None = None


@dataclass
class FakeMessage:
    channel: str
    ts: str
    text: str = ""
    blocks: list[dict[str, Any]] = field(default_factory=list)
    thread_ts: str | None = None
    user: str = ""
    streaming: bool = False
    stream_started_at: float = 0.0
    markdown: str = ""
    """The Markdown of a streamed message (startStream + appendStream + stopStream texts)."""
    recipient: tuple[str, str] | None = None
    edits: int = 0
    deleted: bool = False

    @property
    def visible_text(self) -> str:
        """What a person sees, as text: the streamed Markdown, else block texts, else ``text``."""
        if self.markdown:
            return self.markdown
        parts = [block_text(b) for b in self.blocks]
        joined = "\n".join(p for p in parts if p)
        return joined or self.text


_MARKDOWN_ESCAPE = re.compile(r"\\([!-/:-@\[-`{-~])")


def unescape_mrkdwn(text: str) -> str:
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def block_text(block: dict[str, Any]) -> str:
    """A block's text as a reader sees it: Markdown backslash escapes and mrkdwn entities undone."""
    kind = block.get("type")
    if kind == "markdown":
        return _MARKDOWN_ESCAPE.sub(r"\1", str(block.get("text", "")))
    if kind in ("section", "header"):
        text = block.get("text") or {}
        return unescape_mrkdwn(str(text.get("text", ""))) if isinstance(text, dict) else ""
    if kind == "context":
        texts = (str(e.get("text", "")) for e in block.get("elements") or [] if isinstance(e, dict))
        return unescape_mrkdwn(" ".join(texts))
    if kind == "rich_text":
        return json.dumps(block.get("elements"))
    return ""


@dataclass
class FakeResponse:
    """A message posted through a slash command's response URL."""

    channel: str
    body: dict[str, Any]

    @property
    def response_type(self) -> str:
        return str(self.body.get("response_type") or "ephemeral")  # Slack's default

    @property
    def visible_text(self) -> str:
        parts = [block_text(b) for b in self.body.get("blocks") or []]
        return "\n".join(p for p in parts if p) or str(self.body.get("text") or "")


@dataclass
class ResponseUrl:
    channel: str
    issued_at: float
    uses: int = 0


RESPONSE_URL_USES = 5  # a response_url takes up to 5 messages within 30 minutes (slash command docs)
RESPONSE_URL_LIFETIME = 30 * 60.0
NOT_MEMBER_METHODS = frozenset({"chat.postMessage", "chat.update", "chat.delete", "chat.startStream"})
"""Methods that answer ``not_in_channel`` in a public channel the bot is not a member of."""


@dataclass
class FakeFile:
    id: str
    name: str
    length: int
    data: bytes = b""
    uploaded: bool = False
    completed: bool = False
    title: str | None = None
    mimetype: str = "application/octet-stream"
    shared_to: list[tuple[str, str | None]] = field(default_factory=list)


class RateLimiter:
    """Sliding one-window logs per key, like Slack's per-minute windows."""

    def __init__(self) -> None:
        self.logs: dict[tuple[str, ...], deque[float]] = {}

    def check(self, key: tuple[str, ...], budget: Budget, now: float) -> float:
        """0 when a call fits (and records it), else seconds until it would fit."""
        if budget.calls <= 0:
            return budget.window
        log = self.logs.setdefault(key, deque())
        while log and log[0] <= now - budget.window:
            log.popleft()
        if len(log) >= budget.calls:
            return log[len(log) - budget.calls] + budget.window - now
        log.append(now)
        return 0.0


class SlackApiFailure(Exception):
    def __init__(self, error: str, status: int = 200, extra: dict[str, Any] | None = None) -> None:
        super().__init__(error)
        self.error = error
        self.status = status
        self.extra = extra or {}


def _check_blocks(blocks: Any) -> None:
    """Refuse what Slack refuses with ``invalid_blocks`` (Block Kit reference limits)."""
    if not isinstance(blocks, list):
        raise SlackApiFailure("invalid_blocks_format")
    if len(blocks) > MAX_BLOCKS:
        raise SlackApiFailure("invalid_blocks")
    markdown_total = 0
    block_ids: set[str] = set()
    for block in blocks:
        if not isinstance(block, dict) or "type" not in block:
            raise SlackApiFailure("invalid_blocks")
        block_id = block.get("block_id")
        if block_id is not None:
            if len(block_id) > MAX_BLOCK_ID or block_id in block_ids:
                raise SlackApiFailure("invalid_blocks")
            block_ids.add(block_id)
        kind = block["type"]
        if kind == "markdown":
            markdown_total += len(block.get("text", ""))
        elif kind == "section":
            text = block.get("text") or {}
            if len(text.get("text", "")) > MAX_SECTION_TEXT or (not text and not block.get("fields")):
                raise SlackApiFailure("invalid_blocks")
        elif kind == "actions":
            elements = block.get("elements") or []
            if not elements or len(elements) > MAX_ACTIONS_ELEMENTS:
                raise SlackApiFailure("invalid_blocks")
            action_ids: set[str] = set()
            for element in elements:
                if element.get("type") == "button":
                    label = (element.get("text") or {}).get("text", "")
                    if not label or len(label) > MAX_BUTTON_TEXT:
                        raise SlackApiFailure("invalid_blocks")
                    if len(element.get("value", "")) > MAX_BUTTON_VALUE:
                        raise SlackApiFailure("invalid_blocks")
                action_id = element.get("action_id")
                if action_id is not None:
                    if len(action_id) > MAX_BLOCK_ID or action_id in action_ids:
                        raise SlackApiFailure("invalid_blocks")
                    action_ids.add(action_id)
        elif kind == "image":
            has_url = bool(block.get("image_url"))
            slack_file = block.get("slack_file") or {}
            if not has_url and not (slack_file.get("id") or slack_file.get("url")):
                raise SlackApiFailure("invalid_blocks")
            if not block.get("alt_text"):
                raise SlackApiFailure("invalid_blocks")
        elif kind == "context":
            elements = block.get("elements") or []
            if not elements or len(elements) > 10:
                raise SlackApiFailure("invalid_blocks")
    if markdown_total > MAX_MARKDOWN_BLOCK_TOTAL:
        raise SlackApiFailure("msg_blocks_too_long")


class FakeSlack:
    """The local Slack. ``await start()``; ``api_url`` goes into ``settings.slack.api_url``."""

    def __init__(
        self,
        *,
        bot_token: str = "xoxb-test-token",
        app_token: str = "xapp-test-token",
        signing_secret: str = "test-signing-secret",
        team_id: str = "T0001",
        bot_user_id: str = "UBOT",
        bot_id: str = "BBOT",
        time_scale: float = 1.0,
        rate_limits: bool = True,
    ) -> None:
        self.bot_token = bot_token
        self.app_token = app_token
        self.signing_secret = signing_secret
        self.team_id = team_id
        self.bot_user_id = bot_user_id
        self.bot_id = bot_id
        self.time_scale = time_scale
        self.rate_limits = rate_limits
        self.calls: list[ApiCall] = []
        self.messages: dict[tuple[str, str], FakeMessage] = {}
        self.files: dict[str, FakeFile] = {}
        self.users: dict[str, dict[str, Any]] = {}
        self.statuses: list[dict[str, Any]] = []
        self.responses: list[FakeResponse] = []
        """Messages posted through response URLs, oldest first."""
        self.not_member_of: set[str] = set()
        """Channels the bot is not in: its message methods there answer ``not_in_channel``."""
        self.response_url_lifetime = RESPONSE_URL_LIFETIME
        self._response_urls: dict[str, ResponseUrl] = {}
        self.budgets: dict[str, Budget] = {m: self._scaled(b) for m, b in METHOD_BUDGETS.items()}
        self.channel_budgets: dict[str, Budget] = {m: self._scaled(b) for m, b in PER_CHANNEL_BUDGETS.items()}
        self.stream_timeout: float | None = None
        """Seconds after which Slack ends a stream on its own (about 5 minutes on Slack)."""
        self.socket_url: str | None = None
        """Set by the Socket Mode fake: what apps.connections.open hands out."""
        self._limiter = RateLimiter()
        self._failures: dict[str, deque[tuple[str, int]]] = {}
        self._drops: dict[str, int] = {}
        self._ts_counter = itertools.count(1)
        self._file_counter = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self._http: aiohttp.ClientSession | None = None
        self.port = 0
        self.changed = asyncio.Event()

    # ---- life cycle ----

    async def start(self) -> FakeSlack:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/api/{method}", self._api)
        app.router.add_get("/api/{method}", self._api)
        app.router.add_post("/upload/{file_id}", self._upload)
        app.router.add_get("/files-pri/{file_id}/{name}", self._download)
        app.router.add_post("/commands/{token:.+}", self._response_url_post)
        app.router.add_get("/_fake/state", self._state)
        app.router.add_post("/_fake/users", self._add_user_http)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self._http is not None:
            await self._http.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> FakeSlack:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.base_url}/api/"

    # ---- knobs ----

    def _scaled(self, budget: Budget) -> Budget:
        return Budget(budget.calls, budget.window * self.time_scale)

    def set_budget(self, method: str, calls: int, window: float, *, per_channel: bool = False) -> None:
        (self.channel_budgets if per_channel else self.budgets)[method] = Budget(calls, window)

    def fail_next(self, method: str, error: str, times: int = 1, *, status: int = 200) -> None:
        """The next ``times`` calls of ``method`` answer ``{"ok": false, "error": error}`` (with HTTP
        ``status``: Slack answers most errors with 200, an outage with 5xx), carrying nothing out."""
        self._failures.setdefault(method, deque()).extend([(error, status)] * times)

    def drop_next(self, method: str, times: int = 1) -> None:
        """The next ``times`` calls of ``method`` lose their connection before any answer (the
        call is not carried out): what a network failure looks like to the client."""
        self._drops.setdefault(method, 0)
        self._drops[method] += times

    def add_user(self, user_id: str, *, email: str | None = None, name: str = "", team_id: str | None = None) -> None:
        profile: dict[str, Any] = {"real_name": name or user_id, "display_name": name or user_id}
        if email is not None:
            profile["email"] = email
        self.users[user_id] = {
            "id": user_id,
            "team_id": team_id or self.team_id,
            "name": name or user_id.lower(),
            "real_name": name or user_id,
            "is_bot": False,
            "profile": profile,
        }

    def add_file(self, data: bytes, *, name: str, mimetype: str) -> dict[str, Any]:
        """A file a user shared: returns the ``files[]`` entry an event carries."""
        file_id = f"F{next(self._file_counter):08d}"
        self.files[file_id] = FakeFile(file_id, name, len(data), data, True, True, name, mimetype)
        return self.file_object(file_id)

    def file_object(self, file_id: str) -> dict[str, Any]:
        f = self.files[file_id]
        url = f"{self.base_url}/files-pri/{file_id}/{f.name}"
        return {
            "id": file_id,
            "name": f.name,
            "title": f.title or f.name,
            "mimetype": f.mimetype,
            "size": f.length,
            "url_private": url,
            "url_private_download": url + "?download=1",
        }

    def response_url(self, channel: str) -> str:
        """A new response URL, as a slash command typed in ``channel`` carries."""
        token = f"{self.team_id}/{next(self._file_counter)}/{hashlib.sha256(self.new_ts().encode()).hexdigest()[:24]}"
        self._response_urls[token] = ResponseUrl(channel, time.monotonic())
        return f"{self.base_url}/commands/{token}"

    # ---- what tests look at ----

    def calls_of(self, method: str) -> list[ApiCall]:
        return [c for c in self.calls if c.method == method]

    def rate_limited_calls(self) -> list[ApiCall]:
        return [c for c in self.calls if c.status == 429]

    def thread(self, channel: str, thread_ts: str | None) -> list[FakeMessage]:
        """Messages the bot posted in a thread (or top level when ``thread_ts`` is None), oldest first."""
        found = [
            m
            for (ch, _), m in self.messages.items()
            if ch == channel and m.thread_ts == thread_ts and not m.deleted and m.user == self.bot_user_id
        ]
        return sorted(found, key=lambda m: float(m.ts))

    async def wait_for(self, predicate: Any, timeout: float = 5.0) -> None:
        """Wait until ``predicate()`` is true (re-checked after every API call)."""
        deadline = time.monotonic() + timeout
        while not predicate():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("condition not met on the fake Slack")
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), min(remaining, 0.1))
            except TimeoutError:
                pass

    # ---- remote control (a fake in another process: benches) ----

    def snapshot(self) -> dict[str, Any]:
        """Every call and message as JSON (``at`` is ``time.monotonic()``, system-wide on Linux)."""
        return {
            "calls": [
                {
                    "method": c.method,
                    "status": c.status,
                    "error": c.error,
                    "at": c.at,
                    "args": {k: c.args[k] for k in ("channel", "ts", "thread_ts") if k in c.args},
                }
                for c in self.calls
            ],
            "messages": [
                {
                    "channel": m.channel,
                    "ts": m.ts,
                    "thread_ts": m.thread_ts,
                    "user": m.user,
                    "deleted": m.deleted,
                    "streamed": bool(m.markdown),
                    "visible_text": m.visible_text,
                }
                for m in self.messages.values()
            ],
        }

    async def _state(self, request: web.Request) -> web.Response:
        return web.json_response(self.snapshot())

    async def _add_user_http(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.add_user(str(body["id"]), email=body.get("email"), name=str(body.get("name") or ""))
        return web.json_response({"ok": True})

    # ---- the Events API, Slack's side ----

    def sign(self, body: bytes, timestamp: int | None = None) -> dict[str, str]:
        ts = str(int(time.time()) if timestamp is None else timestamp)
        base = f"v0:{ts}:".encode() + body
        signature = "v0=" + hmac.new(self.signing_secret.encode(), base, hashlib.sha256).hexdigest()
        return {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": signature}

    async def deliver(
        self,
        url: str,
        body: bytes,
        *,
        content_type: str,
        retry_num: int | None = None,
        timestamp: int | None = None,
        signature: str | None = None,
    ) -> tuple[int, str, float]:
        """POST a signed request like Slack does; returns (status, body, seconds it took)."""
        if self._http is None:
            self._http = aiohttp.ClientSession()
        headers = {"Content-Type": content_type, **self.sign(body, timestamp)}
        if signature is not None:
            headers["X-Slack-Signature"] = signature
        if retry_num is not None:
            headers["X-Slack-Retry-Num"] = str(retry_num)
            headers["X-Slack-Retry-Reason"] = "http_timeout"
        started = time.monotonic()
        async with self._http.post(url, data=body, headers=headers) as response:
            text = await response.text()
            return response.status, text, time.monotonic() - started

    async def deliver_event(
        self, url: str, event: dict[str, Any], *, event_id: str, **kw: Any
    ) -> tuple[int, str, float]:
        body = json.dumps(self.event_callback(event, event_id=event_id)).encode()
        return await self.deliver(url, body, content_type="application/json", **kw)

    async def deliver_interactive(self, url: str, payload: dict[str, Any], **kw: Any) -> tuple[int, str, float]:
        body = urlencode({"payload": json.dumps(payload)}).encode()
        return await self.deliver(url, body, content_type="application/x-www-form-urlencoded", **kw)

    async def deliver_command(self, url: str, fields: dict[str, str], **kw: Any) -> tuple[int, str, float]:
        body = urlencode(fields).encode()
        return await self.deliver(url, body, content_type="application/x-www-form-urlencoded", **kw)

    def button_payload(self, message: FakeMessage, value: str, *, user: str = "U1") -> dict[str, Any]:
        """The ``block_actions`` payload Slack sends when ``user`` clicks the button with ``value``
        on ``message`` (raises if the message shows no such button)."""
        for block in message.blocks:
            for element in block.get("elements") or [] if block.get("type") == "actions" else []:
                if element.get("type") == "button" and element.get("value") == value:
                    action = {
                        "type": "button",
                        "action_id": element.get("action_id"),
                        "block_id": block.get("block_id"),
                        "value": value,
                        "text": element.get("text"),
                        "action_ts": self.new_ts(),
                    }
                    if element.get("url"):
                        action["url"] = element["url"]
                    return {
                        "type": "block_actions",
                        "user": {"id": user, "team_id": self.team_id},
                        "api_app_id": "A0001",
                        "team": {"id": self.team_id, "domain": "fake"},
                        "channel": {"id": message.channel},
                        "container": {
                            "type": "message",
                            "message_ts": message.ts,
                            "channel_id": message.channel,
                            "thread_ts": message.thread_ts,
                        },
                        "trigger_id": f"trigger-{self.new_ts()}",
                        "message": {"ts": message.ts, "thread_ts": message.thread_ts, "blocks": message.blocks},
                        "actions": [action],
                    }
        raise LookupError(f"no button with value {value!r} on message {message.ts}")

    def event_callback(self, event: dict[str, Any], *, event_id: str) -> dict[str, Any]:
        return {
            "token": "legacy-verification-token",
            "team_id": self.team_id,
            "api_app_id": "A0001",
            "event": event,
            "type": "event_callback",
            "event_id": event_id,
            "event_time": int(time.time()),
            "authorizations": [{"team_id": self.team_id, "user_id": self.bot_user_id, "is_bot": True}],
        }

    # ---- the Web API ----

    def new_ts(self) -> str:
        return f"{int(time.time())}.{next(self._ts_counter):06d}"

    async def _arguments(self, request: web.Request) -> dict[str, Any]:
        args: dict[str, Any] = dict(request.query)
        if request.method == "POST" and request.can_read_body:
            if request.content_type == "application/json":
                try:
                    body = await request.json()
                except json.JSONDecodeError as exc:
                    raise SlackApiFailure("invalid_json") from exc
                if not isinstance(body, dict):
                    raise SlackApiFailure("invalid_json")
                args.update(body)
            else:
                args.update(dict(await request.post()))
        for key in ("blocks", "files", "chunks", "loading_messages"):
            if isinstance(args.get(key), str):
                try:
                    args[key] = json.loads(args[key])
                except json.JSONDecodeError as exc:
                    raise SlackApiFailure(f"invalid_{key}") from exc
        return args

    @staticmethod
    def _token(request: web.Request, args: dict[str, Any]) -> str | None:
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            return auth[len("Bearer ") :]
        token = args.pop("token", None)
        return str(token) if token else None

    def _rate_check(self, method: str, channel: str | None) -> float:
        if not self.rate_limits:
            return 0.0
        now = time.monotonic()
        wait = 0.0
        budget = self.budgets.get(method)
        if budget is not None:
            wait = self._limiter.check(("team", method), budget, now)
        channel_budget = self.channel_budgets.get(method)
        if wait == 0 and channel_budget is not None and channel:
            wait = self._limiter.check(("channel", channel, method), channel_budget, now)
            if wait > 0 and budget is not None:  # refund the workspace slot the refused call took
                self._limiter.logs[("team", method)].pop()
        return wait

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        record = ApiCall(method, {}, None, time.monotonic())
        self.calls.append(record)
        if self._drops.get(method):
            self._drops[method] -= 1
            record.status, record.error = 0, "connection_dropped"
            if request.transport is not None:
                request.transport.abort()
            self.changed.set()
            return web.Response(status=500)
        try:
            args = await self._arguments(request)
            record.args = args
            record.token = self._token(request, args)
            expected = self.app_token if method == "apps.connections.open" else self.bot_token
            if record.token != expected:
                raise SlackApiFailure("invalid_auth" if record.token else "not_authed")
            wait = self._rate_check(method, args.get("channel") or args.get("channel_id"))
            if wait > 0:
                record.status, record.error = 429, "ratelimited"
                retry_after = f"{wait:.3f}" if self.time_scale != 1.0 else str(max(1, round(wait + 0.5)))
                return web.json_response(
                    {"ok": False, "error": "ratelimited"}, status=429, headers={"Retry-After": retry_after}
                )
            if method in NOT_MEMBER_METHODS and args.get("channel") in self.not_member_of:
                raise SlackApiFailure("not_in_channel")
            queued = self._failures.get(method)
            if queued:
                raise SlackApiFailure(*queued.popleft())
            handler = getattr(self, "_m_" + method.replace(".", "_"), None)
            if handler is None:
                raise SlackApiFailure("unknown_method", status=404)
            result = handler(args)
            return web.json_response({"ok": True, **result})
        except SlackApiFailure as failure:
            record.error, record.status = failure.error, failure.status
            return web.json_response({"ok": False, "error": failure.error, **failure.extra}, status=failure.status)
        finally:
            self.changed.set()

    @staticmethod
    def _require(args: dict[str, Any], *names: str) -> None:
        for name in names:
            if not args.get(name):
                raise SlackApiFailure("invalid_arguments", extra={"response_metadata": {"messages": [name]}})

    def _find(self, channel: str, ts: str) -> FakeMessage:
        message = self.messages.get((channel, ts))
        if message is None or message.deleted:
            raise SlackApiFailure("message_not_found")
        return message

    def _m_auth_test(self, args: dict[str, Any]) -> dict[str, Any]:
        return {
            "url": "https://fake.slack.test/",
            "team": "Fake Team",
            "user": "chatgate",
            "team_id": self.team_id,
            "user_id": self.bot_user_id,
            "bot_id": self.bot_id,
            "is_enterprise_install": False,
        }

    def _m_apps_connections_open(self, args: dict[str, Any]) -> dict[str, Any]:
        if not self.socket_url:
            raise SlackApiFailure("not_allowed_token_type")
        return {"url": self.socket_url}

    def _content(self, args: dict[str, Any], *, max_text: int) -> tuple[str, list[dict[str, Any]]]:
        text = str(args.get("text") or "")
        blocks = args.get("blocks") or []
        if not text and not blocks and not args.get("markdown_text"):
            raise SlackApiFailure("no_text")
        if len(text) > max_text:
            raise SlackApiFailure("msg_too_long")
        if blocks:
            _check_blocks(blocks)
        return text, blocks

    def _m_chat_postMessage(self, args: dict[str, Any]) -> dict[str, Any]:
        self._require(args, "channel")
        if args.get("markdown_text"):
            if args.get("text") or args.get("blocks"):
                raise SlackApiFailure("markdown_text_conflict")
            if len(args["markdown_text"]) > MAX_MARKDOWN_BLOCK_TOTAL:
                raise SlackApiFailure("msg_too_long")
        text, blocks = self._content(args, max_text=SERVER_MAX_TEXT)
        thread_ts = args.get("thread_ts") or None
        if thread_ts and (args["channel"], thread_ts) not in self.messages and not self._is_user_ts(thread_ts):
            raise SlackApiFailure("thread_not_found")
        message = FakeMessage(args["channel"], self.new_ts(), text, blocks, thread_ts, self.bot_user_id)
        if args.get("markdown_text"):
            message.markdown = args["markdown_text"]
        self.messages[(message.channel, message.ts)] = message
        return {"channel": message.channel, "ts": message.ts, "message": {"text": text, "ts": message.ts}}

    @staticmethod
    def _is_user_ts(ts: str) -> bool:
        """Tests address user messages by ts values the fake never issued; accept any well-formed one."""
        head, _, tail = ts.partition(".")
        return head.isdigit() and tail.isdigit()

    def _m_chat_update(self, args: dict[str, Any]) -> dict[str, Any]:
        self._require(args, "channel", "ts")
        message = self._find(args["channel"], args["ts"])
        if message.streaming:
            raise SlackApiFailure("message_is_streaming")
        if message.user != self.bot_user_id:
            raise SlackApiFailure("cant_update_message")
        text, blocks = self._content(args, max_text=SERVER_MAX_UPDATE_TEXT)
        message.text, message.blocks, message.edits = text, blocks, message.edits + 1
        if args.get("markdown_text") is not None or blocks or text:
            message.markdown = str(args.get("markdown_text") or "")
        return {"channel": message.channel, "ts": message.ts, "text": text}

    def _m_chat_delete(self, args: dict[str, Any]) -> dict[str, Any]:
        self._require(args, "channel", "ts")
        message = self._find(args["channel"], args["ts"])
        message.deleted = True
        return {"channel": message.channel, "ts": message.ts}

    def _m_chat_startStream(self, args: dict[str, Any]) -> dict[str, Any]:
        self._require(args, "channel", "thread_ts")
        channel = args["channel"]
        recipient = (args.get("recipient_user_id"), args.get("recipient_team_id"))
        if not channel.startswith("D"):  # streaming to a channel needs a recipient (method reference)
            if not recipient[0]:
                raise SlackApiFailure("missing_recipient_user_id")
            if not recipient[1]:
                raise SlackApiFailure("missing_recipient_team_id")
        markdown = str(args.get("markdown_text") or "")
        if len(markdown) > MAX_STREAM_APPEND:
            raise SlackApiFailure("msg_too_long")
        message = FakeMessage(channel, self.new_ts(), thread_ts=args["thread_ts"], user=self.bot_user_id)
        message.streaming, message.stream_started_at, message.markdown = True, time.monotonic(), markdown
        message.recipient = recipient if all(recipient) else None  # type: ignore[assignment]
        self.messages[(channel, message.ts)] = message
        return {"channel": channel, "ts": message.ts}

    def _streaming(self, args: dict[str, Any]) -> FakeMessage:
        self._require(args, "channel", "ts")
        message = self._find(args["channel"], args["ts"])
        if message.streaming and self.stream_timeout is not None:
            if time.monotonic() - message.stream_started_at > self.stream_timeout:
                message.streaming = False
        if not message.streaming:
            raise SlackApiFailure("message_not_in_streaming_state")
        return message

    def _m_chat_appendStream(self, args: dict[str, Any]) -> dict[str, Any]:
        message = self._streaming(args)
        self._require(args, "markdown_text")
        if len(args["markdown_text"]) > MAX_STREAM_APPEND:
            raise SlackApiFailure("msg_too_long")
        message.markdown += args["markdown_text"]
        return {"channel": message.channel, "ts": message.ts}

    def _m_chat_stopStream(self, args: dict[str, Any]) -> dict[str, Any]:
        message = self._streaming(args)
        markdown = str(args.get("markdown_text") or "")
        if len(markdown) > MAX_STREAM_APPEND:
            raise SlackApiFailure("msg_too_long")
        if args.get("blocks"):
            _check_blocks(args["blocks"])
            message.blocks = args["blocks"]
        message.markdown += markdown
        message.streaming = False
        return {"channel": message.channel, "ts": message.ts, "message": {"text": message.markdown}}

    def _m_assistant_threads_setStatus(self, args: dict[str, Any]) -> dict[str, Any]:
        self._require(args, "channel_id", "thread_ts")
        if "status" not in args:
            raise SlackApiFailure("invalid_arguments")
        if not str(args["channel_id"]).startswith("D"):
            raise SlackApiFailure("channel_type_not_supported")  # assistant threads live in the app's DMs
        self.statuses.append(
            {"channel_id": args["channel_id"], "thread_ts": args["thread_ts"], "status": args["status"]}
        )
        return {}

    def _m_files_getUploadURLExternal(self, args: dict[str, Any]) -> dict[str, Any]:
        self._require(args, "filename", "length")
        try:
            length = int(args["length"])
        except ValueError as exc:
            raise SlackApiFailure("invalid_arguments") from exc
        file_id = f"F{next(self._file_counter):08d}"
        self.files[file_id] = FakeFile(file_id, str(args["filename"]), length)
        return {"upload_url": f"{self.base_url}/upload/{file_id}", "file_id": file_id}

    async def _response_url_post(self, request: web.Request) -> web.Response:
        """A response URL: JSON with ``text`` and/or ``blocks``, ``response_type`` ``in_channel`` or
        ``ephemeral``; no token needed, and no channel membership. Up to 5 messages in 30 minutes."""
        try:
            url = self._response_urls.get(request.match_info["token"])
            if url is None:
                return web.Response(status=404, text="no_such_url")
            if time.monotonic() - url.issued_at > self.response_url_lifetime:
                return web.Response(status=404, text="expired_url")
            if url.uses >= RESPONSE_URL_USES:
                return web.Response(status=404, text="used_url")
            try:
                body = await request.json()
            except json.JSONDecodeError:
                return web.Response(status=400, text="invalid_payload")
            if not isinstance(body, dict) or not (body.get("text") or body.get("blocks")):
                return web.Response(status=400, text="no_text")
            if body.get("response_type", "ephemeral") not in ("in_channel", "ephemeral"):
                return web.Response(status=400, text="invalid_response_type")
            if body.get("blocks"):
                try:
                    _check_blocks(body["blocks"])
                except SlackApiFailure as failure:
                    return web.Response(status=400, text=failure.error)
            url.uses += 1
            self.responses.append(FakeResponse(url.channel, body))
            return web.Response(text="ok")
        finally:
            self.changed.set()

    async def _upload(self, request: web.Request) -> web.Response:
        """The upload URL Slack hands out: raw bytes or a multipart form with one file part."""
        f = self.files.get(request.match_info["file_id"])
        if f is None or f.completed:
            return web.Response(status=404, text="not found")
        if request.content_type.startswith("multipart/"):
            form = await request.post()
            part = next((v for v in form.values() if isinstance(v, web.FileField)), None)
            data = part.file.read() if part is not None else b""
        else:
            data = await request.read()
        if len(data) != f.length:
            return web.Response(status=400, text="length mismatch")
        f.data, f.uploaded = data, True
        self.changed.set()
        return web.Response(text=f"OK - {len(data)}")

    def _m_files_completeUploadExternal(self, args: dict[str, Any]) -> dict[str, Any]:
        files = args.get("files")
        if not isinstance(files, list) or not files:
            raise SlackApiFailure("invalid_arguments")
        done = []
        for entry in files:
            f = self.files.get(entry.get("id", ""))
            if f is None or not f.uploaded:
                raise SlackApiFailure("file_not_found")
            f.completed, f.title = True, entry.get("title") or f.name
            channel = args.get("channel_id") or args.get("channels")
            if channel:
                f.shared_to.append((str(channel), args.get("thread_ts")))
            done.append({"id": f.id, "title": f.title, "name": f.name})
        return {"files": done}

    async def _download(self, request: web.Request) -> web.Response:
        """``url_private``: needs the bot token, like Slack's file servers."""
        if request.headers.get("Authorization") != f"Bearer {self.bot_token}":
            return web.Response(status=302, headers={"Location": f"{self.base_url}/login"})
        f = self.files.get(request.match_info["file_id"])
        if f is None or not f.completed:
            return web.Response(status=404, text="file not found")
        return web.Response(body=f.data, content_type=f.mimetype)

    def _m_users_info(self, args: dict[str, Any]) -> dict[str, Any]:
        self._require(args, "user")
        user = self.users.get(args["user"])
        if user is None:
            raise SlackApiFailure("user_not_found")
        return {"user": user}


# ---- a running gateway wired to the local Slack (tests and benches) ----


def slack_settings(data_dir: Any, slack: FakeSlack, **slack_options: Any) -> Any:
    """Settings for a gateway on a loopback port, a SQLite file in ``data_dir``, and the Slack
    channel pointed at ``slack``. ``slack_options`` override the ``[slack]`` section."""

    section = {
        "bot_token": slack.bot_token,
        "signing_secret": slack.signing_secret,
        "app_token": slack.app_token,
        "api_url": slack.api_url,
        "update_interval": 0.1,
        **slack_options,
    }
    return test_settings(data_dir, slack=section)


class SlackGateway:
    """``async with SlackGateway(app, tmp_path, slack) as gw``: a real Gateway with the Slack
    adapter only; ``events_url`` is its Events API Request URL."""

    def __init__(self, app: Any, data_dir: Any, slack: FakeSlack, **slack_options: Any) -> None:
        self.app = app
        self.slack = slack
        self.settings = slack_settings(data_dir, slack, **slack_options)
        self.gateway: Any = None

    async def __aenter__(self) -> Any:
        from adapters.slack import SlackAdapter
        from gateway.runtime import Gateway

        self.gateway = Gateway(self.app, self.settings, adapters=[SlackAdapter(self.settings)])
        await self.gateway.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.gateway.stop()

    @property
    def adapter(self) -> Any:
        return self.gateway.adapters[0]

    @property
    def events_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway.port}{self.settings.slack.events_path}"

    async def idle(self, timeout: float = 5.0) -> None:
        """Wait until every submitted event has been handled."""
        await self.gateway.dispatcher.wait_idle(timeout)
