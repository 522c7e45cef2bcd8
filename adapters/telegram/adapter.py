"""The Telegram channel: aiogram's ``Bot`` against a configurable Bot API server.

Inbound, updates arrive by long polling (:mod:`adapters.telegram.polling`: one process at a time,
nothing dropped) or by a webhook on the gateway's own aiohttp server (``webhook_path``, checked
against Telegram's ``X-Telegram-Bot-Api-Secret-Token``; answered 200 only after ``gw.submit``
has recorded the update, so a failure makes Telegram deliver it again). Outbound, every request
goes through :class:`~adapters.telegram.client.TelegramClient` (pacing, safe retries, degradation).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import io
import json
import logging
import secrets
from typing import Any, ClassVar

from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.methods import DeleteWebhook, GetFile, GetMe, SetWebhook
from aiogram.types import Update
from aiohttp import ClientError, web
from pydantic import ValidationError
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from adapters.base import Adapter, Capabilities, GatewayContext, Limits, Outbox, SharedBudgets
from adapters.telegram.client import DRAFT_ID_MAX, TelegramClient
from adapters.telegram.inbound import (
    ALLOWED_UPDATES,
    CHANNEL_TYPE,
    FILE_URL_PREFIX,
    BotIdentity,
    UpdatePolicy,
    convert,
)
from adapters.telegram.outbox import TelegramOutbox
from adapters.telegram.pacer import DRAFT_MIN_INTERVAL, Pacer
from adapters.telegram.polling import Poller
from adapters.telegram.render import TELEGRAM_CAPTION_LIMIT, TELEGRAM_TEXT_LIMIT
from gateway.config import Settings
from gateway.types import Attachment, SessionChannel

log = logging.getLogger("chatgate.telegram")

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"  # Bot API setWebhook: secret_token is sent in this header
WEBHOOK_MAX_BODY = 1024 * 1024
"""Bytes a webhook request may carry. An update is one message or query (at most 4,096 characters
of text with its entities, and the message it replies to): kilobytes, never near a megabyte."""
INLINE_KEYBOARD_MAX_BUTTONS = 100  # Bot API: an inline keyboard holds at most 100 buttons


def bot_id_of(token: str) -> str:
    """The bot's id: the part of its token before the colon (Bot API: "123456:ABC-DEF...")."""
    head = token.split(":", 1)[0]
    return head if head.isdigit() else hashlib.sha256(token.encode()).hexdigest()[:16]


class TelegramAdapter(Adapter):
    channel_types: ClassVar[tuple[str, ...]] = (CHANNEL_TYPE,)
    limits: ClassVar[Limits] = Limits(
        max_text=TELEGRAM_TEXT_LIMIT, max_caption=TELEGRAM_CAPTION_LIMIT, max_buttons=INLINE_KEYBOARD_MAX_BUTTONS
    )
    capabilities: ClassVar[Capabilities] = Capabilities(edits=True, native_stream=True, buttons=True, markdown=True)

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.config = settings.telegram
        if not self.config.bot_token:
            raise ValueError("telegram.bot_token is not set")
        self.bot = Bot(
            self.config.bot_token,
            session=AiohttpSession(api=TelegramAPIServer.from_base(self.config.api_url)),
        )
        self.pacer = Pacer(
            chat_interval=self.config.chat_interval,
            group_per_minute=self.config.group_messages_per_minute,
            global_per_second=self.config.global_rate,
            draft_interval=min(DRAFT_MIN_INTERVAL, self.config.draft_interval),
            scale=self.config.rate_scale,
            shared=SharedBudgets.from_url(settings.redis.url) if settings.redis.url else None,
            # a hash tag: the keys one script touches share a Redis Cluster slot
            namespace=f"{{{settings.redis.key_prefix}:budget:telegram:{bot_id_of(self.config.bot_token)}}}",
        )
        self.client = TelegramClient(
            self.bot,
            self.pacer,
            attempts=self.config.retry_attempts,
            backoff=self.config.retry_backoff * self.config.rate_scale,
            drafts=self.config.use_drafts,
            rich=self.config.rich_messages,
            optional_retry_after=self.config.optional_retry_after,
        )
        self.policy = UpdatePolicy(self.config.group_trigger, self.config.edited_messages)
        self.identity: BotIdentity | None = None
        self.status_draft_id = secrets.randbelow(DRAFT_ID_MAX) + 1
        self.poller: Poller | None = None
        self._gw: GatewayContext | None = None
        self._awaiting_file: set[tuple[str, str | None]] = set()
        self._poll_task: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    def mount(self, web_app: web.Application) -> None:
        if self.config.mode == "webhook":
            web_app.router.add_post(self.config.webhook_path, self._webhook)

    async def start(self, gateway: GatewayContext) -> None:
        self._gw = gateway
        me = await self.client.call(GetMe(), idempotent=True)
        self.identity = BotIdentity(me.id, me.username or "")
        if not gateway.inbound:  # a chatgate worker only sends: the web processes take updates in
            return
        if self.config.mode == "webhook":
            await self.client.call(
                SetWebhook(
                    url=gateway.public_url + self.config.webhook_path,
                    secret_token=self.webhook_secret,
                    allowed_updates=ALLOWED_UPDATES,
                    drop_pending_updates=False,
                ),
                idempotent=True,
            )
            return
        # polling: a webhook left from an earlier deployment would block getUpdates; keep its updates
        await self.client.call(DeleteWebhook(drop_pending_updates=False), idempotent=True)
        self.poller = Poller(
            self.client,
            self.handle_update,
            bot_id=me.id,
            leases=gateway.leases,
            poll_timeout=self.config.poll_timeout,
            backoff=self.config.retry_backoff * self.config.rate_scale,
        )
        self._poll_task = gateway.spawn(self.poller.run(), name="chatgate-telegram-poll")

    async def stop(self) -> None:
        if self._poll_task is not None:
            self._poll_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poll_task
            self._poll_task = None
        if self.poller is not None:
            try:
                await self.poller.release()
            except Exception:
                log.warning("could not release the telegram polling lease", exc_info=True)
        await self.client.close()
        await self.pacer.close()

    def describe(self) -> str:
        name = f"@{self.identity.username}" if self.identity else "telegram"
        return f"telegram {name} ({self.config.mode}, {self.config.api_url})"

    # -- inbound ---------------------------------------------------------------------------------

    @property
    def webhook_secret(self) -> str:
        """The configured secret, else one derived from the gateway's secret key and the token:
        stable across restarts and processes, never sent anywhere but to Telegram."""
        if self.config.webhook_secret:
            return self.config.webhook_secret
        key = self.settings.resolved_secret_key().encode()
        return hmac.new(key, b"telegram-webhook:" + (self.config.bot_token or "").encode(), hashlib.sha256).hexdigest()

    async def handle_update(self, update: Update) -> None:
        """Record the update (raises if it could not be: the caller must not acknowledge it)."""
        assert self._gw is not None and self.identity is not None
        try:
            converted = convert(update, self.identity, self.policy, awaiting_file=self._awaiting_file)
        except Exception:  # an update we cannot read must not block the ones after it
            log.exception("could not read telegram update %s; skipping it", update.update_id)
            return
        if converted.inbound is not None:
            await self._gw.submit(converted.inbound)
        if converted.callback_query_id is not None:
            await self.client.answer_callback(converted.callback_query_id, converted.callback_text)

    async def _webhook(self, request: web.Request) -> web.Response:
        if self._gw is None or self.identity is None:
            return _error(503, "the Telegram adapter is starting")
        given = request.headers.get(SECRET_HEADER, "").encode("utf-8", "backslashreplace")
        if not hmac.compare_digest(given, self.webhook_secret.encode()):  # bytes: any header value compares
            return _error(401, "bad or missing secret token")
        body = await _read_limited(request, WEBHOOK_MAX_BODY)
        if body is None:
            return _error(413, f"the body is larger than {WEBHOOK_MAX_BODY} bytes; a Telegram update is not")
        try:
            data = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(400, "the body is not JSON")
        if not isinstance(data, dict):
            return _error(400, "the body is not a JSON object")
        try:
            update = Update.model_validate(data, context={"bot": self.bot})
        except ValidationError as exc:
            return _error(400, f"not a Telegram update: {exc.errors()[0].get('msg', 'invalid')}")
        try:
            await self.handle_update(update)
        except Exception:
            log.exception("could not record telegram update %s", update.update_id)
            return _error(500, "could not record the update; retry")
        return web.json_response({"ok": True})

    def set_awaiting_file(self, channel: SessionChannel, waiting: bool) -> None:
        """A file prompt is (no longer) waiting in ``channel``: its next document or photo goes to
        the bot even in a group that otherwise hears only mentions. In memory: after a restart a
        waiting prompt in such a group is answered by a document that mentions or replies to the bot."""
        key = (channel.chat_id or "", channel.thread_id)
        if waiting:
            self._awaiting_file.add(key)
        else:
            self._awaiting_file.discard(key)

    # -- outbound --------------------------------------------------------------------------------

    @property
    def public_url(self) -> str:
        if self._gw is not None:
            return self._gw.public_url
        return self.settings.server.base_url()

    @property
    def files(self) -> Any:
        return getattr(self._gw, "files", None)

    def outbox(self, channel: SessionChannel, session_id: str, turn: str | None = None) -> Outbox:
        return TelegramOutbox(self, channel)

    def resolve_attachment(self, attachment: Attachment) -> Attachment:
        if attachment.url.startswith(FILE_URL_PREFIX):
            file_id = attachment.url[len(FILE_URL_PREFIX) :]

            async def fetch() -> bytes:
                return await self.download(file_id)

            attachment.fetch = fetch
        return attachment

    async def download(self, file_id: str) -> bytes:
        """``getFile``, then the file URL; both retried (reading twice is harmless)."""
        file = await self.client.call(GetFile(file_id=file_id), idempotent=True)
        if not file.file_path:
            raise FileNotFoundError(f"telegram has no path for file {file_id}")
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type((ClientError, TimeoutError)),
            stop=stop_after_attempt(self.config.retry_attempts),
            wait=wait_random_exponential(multiplier=self.config.retry_backoff * self.config.rate_scale, max=10),
            reraise=True,
        ):
            with attempt:
                buffer = await self.bot.download_file(file.file_path, destination=io.BytesIO())
                assert buffer is not None
                return buffer.getvalue()
        raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover


async def _read_limited(request: web.Request, limit: int) -> bytes | None:
    """The request body, or ``None`` when it is over ``limit`` bytes (stops reading there)."""
    if request.content_length is not None and request.content_length > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"ok": False, "error": message}, status=status)
