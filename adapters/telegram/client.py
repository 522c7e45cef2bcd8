"""The bot's outbound requests: paced, retried when that is safe, degrading when a method is missing.

Retries (tenacity, bounded, jittered) follow one rule: **never post a message twice**. Telegram
has no idempotency key, so a request that may have arrived is not repeated unless repeating it is
harmless:

- ``429`` (with ``retry_after``) and ``5xx`` answers: the server says it did not do it; retried
  after the pause (``429`` pauses the chat's pacer, see :mod:`adapters.telegram.pacer`);
- a connection that could not be made (refused, DNS, TLS handshake): the request never left;
- any other network error (timeout, connection dropped mid-request) is retried only for
  idempotent methods (``editMessageText``, drafts, chat actions, ``getFile``, deletes,
  ``getUpdates``...). A ``sendMessage`` that may have arrived is not retried; the error is logged
  and raised, and the caller's own fallback applies (the core keeps the text in the history).

Degradation, remembered per bot (an older or local Bot API server answers ``404 Not Found`` for a
method it lacks): no drafts → streams by edits; no rich messages → HTML; no chat action → nothing.
Markup Telegram rejects ("can't parse entities") is resent as the plain twin of the same part.
"""

from __future__ import annotations

import logging
from typing import Any, TypeVar

from aiogram import Bot
from aiogram.exceptions import (
    ClientDecodeError,
    TelegramAPIError,
    TelegramBadRequest,
    TelegramConflictError,
    TelegramEntityTooLarge,
    TelegramForbiddenError,
    TelegramMigrateToChat,
    TelegramNetworkError,
    TelegramNotFound,
    TelegramRetryAfter,
    TelegramServerError,
    TelegramUnauthorizedError,
)
from aiogram.methods import (
    AnswerCallbackQuery,
    DeleteMessage,
    EditMessageText,
    SendChatAction,
    SendMessage,
    SendMessageDraft,
    SendRichMessage,
    TelegramMethod,
)
from aiogram.types import InlineKeyboardMarkup, InputRichMessage, Message
from aiohttp import ClientConnectorError
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, wait_random_exponential

from adapters.base import platform_call
from adapters.telegram.pacer import Pacer, SlotKind
from adapters.telegram.render import TelegramPart

log = logging.getLogger("chatgate.telegram")

T = TypeVar("T")

NOT_MODIFIED = "message is not modified"  # Bot API 400 for an edit that changes nothing: a success for us
PARSE_ERROR = "can't parse entities"  # Bot API 400 for markup it cannot parse
DRAFT_ID_MAX = 2**31 - 1  # draft_id is an Integer (32-bit signed in the Bot API's TL layer)


class MethodUnsupported(Exception):
    """The Bot API server does not have this method (an older or local server)."""


def is_unsupported(exc: TelegramAPIError) -> bool:
    """``404 Not Found`` is how the Bot API answers a method it does not know."""
    if isinstance(exc, TelegramNotFound):
        return True
    message = exc.message.lower()
    return (
        isinstance(exc, TelegramBadRequest)
        and "method" in message
        and ("not found" in message or "unsupported" in message or "unknown" in message)
    )


def _never_arrived(exc: BaseException) -> bool:
    return isinstance(exc, TelegramNetworkError) and isinstance(exc.__cause__, ClientConnectorError)


# What a failed Bot API request answered, for the gateway's platform-call counter: aiogram raises
# these by HTTP status (BaseSession.check_response); the first match wins (a too-large entity is a
# network error to aiogram, a 413 to Telegram).
BOT_API_ERROR_STATUS: tuple[tuple[type[Exception], int | str], ...] = (
    (TelegramRetryAfter, 429),
    (TelegramEntityTooLarge, 413),
    (TelegramNetworkError, "network_error"),
    (ClientDecodeError, "bad_response"),
    (TelegramBadRequest, 400),
    (TelegramMigrateToChat, 400),
    (TelegramUnauthorizedError, 401),
    (TelegramForbiddenError, 403),
    (TelegramNotFound, 404),
    (TelegramConflictError, 409),
    (TelegramServerError, "5xx"),
)


async def count_bot_api_request(make_request: Any, bot: Bot, method: TelegramMethod[Any]) -> Any:
    """aiogram request middleware: counts every Bot API request (each attempt, polls included)
    for the gateway's /metrics, with the status it ended with."""
    try:
        response = await make_request(bot, method)
    except Exception as exc:
        status = next((status for kind, status in BOT_API_ERROR_STATUS if isinstance(exc, kind)), "api_error")
        platform_call("telegram", method.__api_method__, status)
        raise
    platform_call("telegram", method.__api_method__, 200)
    return response


class TelegramClient:
    """Wraps one ``aiogram.Bot`` with the pacer, the retry policy and the degradation flags."""

    def __init__(
        self,
        bot: Bot,
        pacer: Pacer,
        *,
        attempts: int = 5,
        backoff: float = 0.5,
        backoff_max: float = 10.0,
        drafts: bool = True,
        rich: bool = False,
    ) -> None:
        self.bot = bot
        bot.session.middleware(count_bot_api_request)
        self.pacer = pacer
        self.attempts = attempts
        self.backoff = backoff
        self.backoff_max = backoff_max
        self.supports_drafts = drafts
        self.supports_rich = rich
        self.supports_chat_action = True
        self.requests = 0
        self.retries = 0
        self.closed = False
        self._in_flight = 0

    # -- the one entry point ------------------------------------------------------------------

    async def call(
        self,
        method: TelegramMethod[T],
        *,
        chat_id: int | None = None,
        kind: SlotKind | None = None,
        idempotent: bool = False,
        timeout: int | None = None,
    ) -> T:
        """Send ``method``; paced when ``kind`` is given, retried per the module's rule."""

        def retryable(exc: BaseException) -> bool:
            if isinstance(exc, TelegramRetryAfter | TelegramServerError):
                return True
            if isinstance(exc, TelegramEntityTooLarge):
                return False
            if isinstance(exc, TelegramNetworkError | ClientDecodeError):
                return idempotent or _never_arrived(exc)
            return False

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            if isinstance(exc, TelegramRetryAfter):
                if chat_id is not None and kind is not None:
                    self.pacer.retry_after(chat_id, exc.retry_after * self.pacer.scale, kind)
                    return 0.0  # the pacer's pause does the waiting, for every sender to the chat
                return float(exc.retry_after)
            return wait_random_exponential(multiplier=self.backoff, max=self.backoff_max)(state)

        def before_sleep(state: RetryCallState) -> None:
            self.retries += 1
            exc = state.outcome.exception() if state.outcome else None
            log.warning("telegram %s failed (%s); retrying", method.__api_method__, exc)

        self._in_flight += 1
        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception(retryable),
                stop=stop_after_attempt(self.attempts),
                wait=wait,
                before_sleep=before_sleep,
                reraise=True,
            ):
                with attempt:
                    self.requests += 1
                    if kind is not None and chat_id is not None:
                        async with self.pacer.slot(chat_id, kind):
                            return await self.bot(method, request_timeout=timeout)
                    return await self.bot(method, request_timeout=timeout)
            raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover
        finally:
            self._in_flight -= 1
            if self.closed and self._in_flight == 0:
                await self.bot.session.close()

    async def close(self) -> None:
        """Close the HTTP session. Handlers the core still lets finish after the adapter stopped
        may send later: such a call reopens the session (aiogram does) and closes it again when
        it is done, so late replies are delivered and no connection is left open."""
        self.closed = True
        if self._in_flight == 0:
            await self.bot.session.close()

    # -- messages -----------------------------------------------------------------------------

    async def send_part(
        self,
        chat_id: int,
        part: TelegramPart,
        *,
        thread_id: int | None = None,
        reply_markup: InlineKeyboardMarkup | None = None,
    ) -> Message:
        """Send one rendered part as HTML; if Telegram rejects the markup, as its plain twin."""
        try:
            return await self.call(
                SendMessage(
                    chat_id=chat_id,
                    text=part.html,
                    parse_mode="HTML",
                    message_thread_id=thread_id,
                    reply_markup=reply_markup,
                ),
                chat_id=chat_id,
                kind="message",
            )
        except TelegramBadRequest as exc:
            if PARSE_ERROR not in exc.message:
                raise
            log.warning("telegram rejected the markup (%s); sending plain text", exc.message)
        return await self.call(
            SendMessage(
                chat_id=chat_id,
                text=part.plain,
                parse_mode=None,
                message_thread_id=thread_id,
                reply_markup=reply_markup,
            ),
            chat_id=chat_id,
            kind="message",
        )

    async def send_rich(
        self,
        chat_id: int,
        markdown: str,
        *,
        thread_id: int | None = None,
        reply_markup: InlineKeyboardMarkup | None = None,
    ) -> Message:
        """``sendRichMessage`` (Bot API 10.1): Telegram parses standard Markdown itself.

        Raises :class:`MethodUnsupported` (and remembers it) when the server lacks the method.
        """
        try:
            return await self.call(
                SendRichMessage(
                    chat_id=chat_id,
                    rich_message=InputRichMessage(markdown=markdown),
                    message_thread_id=thread_id,
                    reply_markup=reply_markup,
                ),
                chat_id=chat_id,
                kind="message",
            )
        except TelegramAPIError as exc:
            if is_unsupported(exc):
                self.supports_rich = False
                log.info("this Bot API server has no sendRichMessage; using HTML")
                raise MethodUnsupported("sendRichMessage") from exc
            raise

    async def edit_part(
        self,
        chat_id: int,
        message_id: int,
        part: TelegramPart,
        *,
        reply_markup: InlineKeyboardMarkup | None = None,
    ) -> None:
        """Edit a message to ``part``; "not modified" is success, rejected markup falls back to plain."""
        for text, parse_mode in ((part.html, "HTML"), (part.plain, None)):
            try:
                await self.call(
                    EditMessageText(
                        chat_id=chat_id,
                        message_id=message_id,
                        text=text,
                        parse_mode=parse_mode,
                        reply_markup=reply_markup,
                    ),
                    chat_id=chat_id,
                    kind="message",
                    idempotent=True,
                )
                return
            except TelegramBadRequest as exc:
                if NOT_MODIFIED in exc.message:
                    return
                if PARSE_ERROR not in exc.message or parse_mode is None:
                    raise
                log.warning("telegram rejected the markup (%s); editing to plain text", exc.message)

    async def send_draft(
        self, chat_id: int, draft_id: int, part: TelegramPart | None, *, thread_id: int | None = None
    ) -> None:
        """Show a draft (``None``: the "Thinking…" placeholder). Raises :class:`MethodUnsupported`."""
        attempts = ((part.html, "HTML"), (part.plain, None)) if part is not None else (("", None),)
        for text, parse_mode in attempts:
            try:
                await self.call(
                    SendMessageDraft(
                        chat_id=chat_id,
                        draft_id=draft_id,
                        text=text,
                        parse_mode=parse_mode,
                        message_thread_id=thread_id,
                        can_stop=True,
                    ),
                    chat_id=chat_id,
                    kind="draft",
                    idempotent=True,
                )
                return
            except TelegramAPIError as exc:
                if is_unsupported(exc):
                    self.supports_drafts = False
                    log.info("this Bot API server has no sendMessageDraft (%s); streaming by edits", exc.message)
                    raise MethodUnsupported("sendMessageDraft") from exc
                if isinstance(exc, TelegramBadRequest) and PARSE_ERROR in exc.message and parse_mode:
                    continue  # the plain twin next
                if isinstance(exc, TelegramBadRequest):
                    # refused for this chat (not a private chat, a bot without the needed mode...):
                    # this stream goes on by edits; the next one tries drafts again
                    log.info("telegram refused a draft in %s (%s); streaming by edits", chat_id, exc.message)
                    raise MethodUnsupported("sendMessageDraft") from exc
                raise

    async def chat_action(self, chat_id: int, action: str = "typing", *, thread_id: int | None = None) -> None:
        """``sendChatAction``; a server without it, or any failure, costs nothing but a log line."""
        if not self.supports_chat_action:
            return
        try:
            await self.call(
                SendChatAction(chat_id=chat_id, action=action, message_thread_id=thread_id), idempotent=True
            )
        except TelegramAPIError as exc:
            if is_unsupported(exc):
                self.supports_chat_action = False
                log.info("this Bot API server has no sendChatAction; status is not shown")
            else:
                log.warning("sendChatAction failed: %s", exc)

    async def delete(self, chat_id: int, message_id: int) -> None:
        try:
            await self.call(DeleteMessage(chat_id=chat_id, message_id=message_id), idempotent=True)
        except TelegramBadRequest as exc:
            log.info("could not delete message %s in %s: %s", message_id, chat_id, exc.message)

    async def answer_callback(self, query_id: str, text: str | None = None) -> None:
        try:
            await self.call(AnswerCallbackQuery(callback_query_id=query_id, text=text), idempotent=True)
        except TelegramAPIError as exc:  # the button stays spinning a few seconds; nothing is lost
            log.info("answerCallbackQuery failed: %s", exc)

    async def raw(self, method: TelegramMethod[Any], *, chat_id: int, idempotent: bool = False) -> Any:
        """A paced message-kind request for methods without a helper here (photos, documents)."""
        return await self.call(method, chat_id=chat_id, kind="message", idempotent=idempotent)
