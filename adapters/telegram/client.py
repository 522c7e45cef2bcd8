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

Degradation (:mod:`adapters.telegram.features`): a newer, optional method (rich messages, rich
drafts, drafts, chat actions) that fails in any way but a rate limit or a network error is not
retried: the call falls back at once to its basic twin (HTML ``sendMessage``, plain drafts,
send-then-edit, nothing) and the method is off for the bot until it is tried again later. A final
reply is never lost to an optional method while ``sendMessage`` can carry it. Markup Telegram
rejects ("can't parse entities") is resent as the plain twin of the same part.
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
    SendRichMessageDraft,
    TelegramMethod,
)
from aiogram.types import InlineKeyboardMarkup, InputRichMessage, Message
from aiohttp import ClientConnectorError
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, wait_random_exponential

from adapters.base import platform_call
from adapters.telegram.features import (
    OPTIONAL_RETRY_AFTER,
    OptionalMethod,
    OptionalMethods,
    describe_failure,
    failure_scope,
)
from adapters.telegram.pacer import Pacer, SlotKind
from adapters.telegram.render import TelegramPart, render_telegram, render_telegram_markdown

log = logging.getLogger("chatgate.telegram")

T = TypeVar("T")

NOT_MODIFIED = "message is not modified"  # Bot API 400 for an edit that changes nothing: a success for us
PARSE_ERROR = "can't parse entities"  # Bot API 400 for markup it cannot parse
DRAFT_ID_MAX = 2**31 - 1  # draft_id is an Integer (32-bit signed in the Bot API's TL layer)


class MethodUnsupported(Exception):
    """This call of an optional method must go the basic way (the server lacks the method, answered
    it oddly, or refused this content); see :mod:`adapters.telegram.features`."""


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
        optional_retry_after: float = OPTIONAL_RETRY_AFTER,
    ) -> None:
        self.bot = bot
        bot.session.middleware(count_bot_api_request)
        self.pacer = pacer
        self.attempts = attempts
        self.backoff = backoff
        self.backoff_max = backoff_max
        enabled: list[OptionalMethod] = ["sendChatAction"]
        if drafts:
            enabled.append("sendMessageDraft")
        if rich:
            enabled.append("sendRichMessage")
        if rich and drafts:
            enabled.append("sendRichMessageDraft")
        self.optional = OptionalMethods(enabled, retry_after=optional_retry_after)
        self.requests = 0
        self.retries = 0
        self.closed = False
        self._in_flight = 0

    @property
    def supports_drafts(self) -> bool:
        return self.optional.available("sendMessageDraft")

    @property
    def supports_rich(self) -> bool:
        return self.optional.available("sendRichMessage")

    @property
    def supports_rich_drafts(self) -> bool:
        return self.optional.available("sendRichMessageDraft") and self.supports_rich

    def _unsupported(self, method: OptionalMethod, exc: Exception) -> MethodUnsupported | None:
        """What an optional call's failure means: ``None`` (not the method's fault: re-raise it),
        else the :class:`MethodUnsupported` to raise, remembered for the bot where it should be."""
        scope = failure_scope(exc)
        if scope == "not_the_method":
            return None
        if scope == "the_bot":
            self.optional.failed(method, exc)
        else:
            log.info("telegram refused this %s (%s); sending it the basic way", method, describe_failure(exc))
        return MethodUnsupported(method)

    # -- the one entry point ------------------------------------------------------------------

    async def call(
        self,
        method: TelegramMethod[T],
        *,
        chat_id: int | None = None,
        kind: SlotKind | None = None,
        idempotent: bool = False,
        optional: bool = False,
        timeout: int | None = None,
    ) -> T:
        """Send ``method``; paced when ``kind`` is given, retried per the module's rule.

        ``optional``: a newer method with a basic twin. Only ``429`` and network errors are retried:
        any other failure is the caller's cue to fall back at once, not after five ``500``s."""

        def retryable(exc: BaseException) -> bool:
            if isinstance(exc, TelegramRetryAfter):
                return True
            if optional and not isinstance(exc, TelegramNetworkError):
                return False
            if isinstance(exc, TelegramServerError):
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

        Raises :class:`MethodUnsupported` when this text must go as HTML (remembered for the bot
        when the failure says the server does not serve the method); ``429`` and network errors
        are raised as they are.
        """
        try:
            sent = await self.call(
                SendRichMessage(
                    chat_id=chat_id,
                    rich_message=InputRichMessage(markdown=markdown),
                    message_thread_id=thread_id,
                    reply_markup=reply_markup,
                ),
                chat_id=chat_id,
                kind="message",
                optional=True,
            )
            if not isinstance(sent, Message):
                raise ValueError(f"sendRichMessage answered ok without the message ({sent!r})")
            return sent
        except Exception as exc:
            unsupported = self._unsupported("sendRichMessage", exc)
            if unsupported is None:
                raise
            raise unsupported from exc

    async def send_markdown(
        self,
        chat_id: int,
        markdown: str,
        *,
        thread_id: int | None = None,
    ) -> list[int]:
        """Send Markdown as rich messages where the server has them, else as HTML parts; a chunk
        the rich method could not carry goes as HTML. Returns the message ids in order."""
        ids: list[int] = []
        chunks = render_telegram_markdown(markdown) if self.supports_rich else [markdown]
        for chunk in chunks:
            if self.supports_rich:
                try:
                    ids.append((await self.send_rich(chat_id, chunk, thread_id=thread_id)).message_id)
                    continue
                except MethodUnsupported:
                    pass  # this chunk goes as HTML (the following ones too, when it is remembered)
                except TelegramRetryAfter as exc:  # still limited after every retry: one last try, basic
                    log.warning("sendRichMessage stayed rate limited (%s); sending this part as HTML", exc.message)
            for part in render_telegram(chunk):
                ids.append((await self.send_part(chat_id, part, thread_id=thread_id)).message_id)
        return ids

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
        """Show a draft (``None``: the "Thinking…" placeholder). Raises :class:`MethodUnsupported`
        when the stream must go on by edits (remembered for the bot unless the text was refused)."""
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
                    optional=True,
                )
                return
            except Exception as exc:
                if isinstance(exc, TelegramBadRequest) and PARSE_ERROR in exc.message and parse_mode:
                    continue  # the plain twin next
                unsupported = self._unsupported("sendMessageDraft", exc)
                if unsupported is None:
                    raise
                raise unsupported from exc

    async def send_rich_draft(
        self, chat_id: int, draft_id: int, markdown: str, *, thread_id: int | None = None
    ) -> None:
        """``sendRichMessageDraft`` (Bot API 10.1): a draft of standard Markdown, parsed by Telegram.
        Raises :class:`MethodUnsupported` when the stream must go on with plain drafts."""
        try:
            await self.call(
                SendRichMessageDraft(
                    chat_id=chat_id,
                    draft_id=draft_id,
                    rich_message=InputRichMessage(markdown=markdown),
                    message_thread_id=thread_id,
                    can_stop=True,
                ),
                chat_id=chat_id,
                kind="draft",
                idempotent=True,
                optional=True,
            )
        except Exception as exc:
            unsupported = self._unsupported("sendRichMessageDraft", exc)
            if unsupported is None:
                raise
            raise unsupported from exc

    async def chat_action(self, chat_id: int, action: str = "typing", *, thread_id: int | None = None) -> None:
        """``sendChatAction``; a server without it, or any failure, costs nothing but a log line."""
        if not self.optional.available("sendChatAction"):
            return
        try:
            await self.call(
                SendChatAction(chat_id=chat_id, action=action, message_thread_id=thread_id),
                idempotent=True,
                optional=True,
            )
        except Exception as exc:
            if self._unsupported("sendChatAction", exc) is None:
                log.warning("sendChatAction failed: %s", describe_failure(exc))

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
