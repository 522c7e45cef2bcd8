"""Which newer, optional Bot API methods this bot's server has, learnt from how it answers.

Telegram's own server answers a method it lacks with ``404 Not Found``; other Bot API servers
(local servers, emulators people test bots with, proxies) answer in their own ways: a JSON body
without ``ok``, an HTML error page, ``400`` with a description of their own, a ``500``, a ``200``
whose body is not JSON. None of that may cost a reply: every optional method has a basic twin that
carries the same content (``sendRichMessage`` → ``sendMessage`` with HTML, drafts → send-then-edit,
``sendRichMessageDraft`` → ``sendMessageDraft``, ``sendChatAction`` → nothing).

So any failure of an optional method that says something about the *method* makes that call fall
back at once and turns the method off for the bot. A failure that says nothing about the method
falls back for that call only and is not remembered:

- ``429`` and network errors are the server's or the network's state, not the method's: paced and
  retried like every request (:mod:`adapters.telegram.client`);
- a refusal of the content ("can't parse entities", too long, empty) is about this text;
- ``401``/``403`` and a chat that migrated are about the bot or the chat: the basic method gets
  the same answer.

**A reply rather than a guard against duplicates.** A ``200`` whose body cannot be read might
mean the server did post the rich message; the basic method then posts it again. A possible
duplicate, once per server that answers so, is the lesser harm than a reply that never arrives.
(Network errors keep the usual rule: a request that may have arrived is not repeated.)

**Tried again after a while.** A method turned off is tried once more ``retry_after`` seconds
later (``telegram.optional_retry_after``, ten minutes by default), so a server upgraded while the
bot runs, or a passing ``500`` from Telegram itself, costs rich formatting for minutes, not for the
life of the process. The cost of a retry against a server that still lacks the method is one
failed request, and the reply goes the basic way as before. Methods switched off in the settings
(``use_drafts = false``, ``rich_messages = false``) are never tried.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Literal

from aiogram.exceptions import (
    ClientDecodeError,
    TelegramBadRequest,
    TelegramForbiddenError,
    TelegramMigrateToChat,
    TelegramNetworkError,
    TelegramRetryAfter,
    TelegramUnauthorizedError,
)

log = logging.getLogger("chatgate.telegram")

OptionalMethod = Literal["sendRichMessage", "sendRichMessageDraft", "sendMessageDraft", "sendChatAction"]

OPTIONAL_RETRY_AFTER = 600.0
"""Seconds a failed optional method stays off before it is tried again (the setting's default)."""

CONTENT_REFUSALS = ("can't parse", "too long", "is empty", "must be non-empty")
"""Bot API 400 descriptions that refuse this text, not the method ("can't parse entities",
"message is too long", "message text is empty", "text must be non-empty")."""

RATE_LIMITED = "Too Many Requests"  # Bot API: the description of every 429

FailureScope = Literal["not_the_method", "this_call", "the_bot"]


def failure_scope(exc: BaseException) -> FailureScope:
    """What a failed optional call tells about its method.

    ``not_the_method``: a rate limit or a network error (raise it: the basic method would wait or
    fail the same way); ``this_call``: fall back for this call only; ``the_bot``: fall back and
    remember that this server does not serve the method."""
    if isinstance(exc, TelegramRetryAfter | TelegramNetworkError):
        return "not_the_method"
    if getattr(exc, "message", "").startswith(RATE_LIMITED):  # a 429 without retry_after
        return "this_call"
    if isinstance(exc, TelegramBadRequest) and any(r in exc.message.lower() for r in CONTENT_REFUSALS):
        return "this_call"
    if isinstance(exc, TelegramForbiddenError | TelegramUnauthorizedError | TelegramMigrateToChat):
        return "this_call"
    return "the_bot"


def describe_failure(exc: BaseException) -> str:
    """One line for the log: the server's description, or what could not be read."""
    if isinstance(exc, ClientDecodeError):
        body = str(exc.data)[:120].replace("\n", " ")
        return f"an answer that is not a Bot API response ({body!r})"
    message = getattr(exc, "message", None)
    return str(message or exc or type(exc).__name__)


class OptionalMethods:
    """The optional methods this bot may try now; each one failed is off until ``retry_after``."""

    def __init__(
        self,
        enabled: Iterable[OptionalMethod],
        *,
        retry_after: float = OPTIONAL_RETRY_AFTER,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.enabled = frozenset(enabled)
        self.retry_after = retry_after
        self._clock = clock
        self._off_until: dict[OptionalMethod, float] = {}

    def available(self, method: OptionalMethod) -> bool:
        if method not in self.enabled:
            return False
        until = self._off_until.get(method)
        if until is None:
            return True
        if self._clock() >= until:
            del self._off_until[method]
            log.info("trying %s again on this Bot API server", method)
            return True
        return False

    def failed(self, method: OptionalMethod, exc: BaseException) -> None:
        """Turn ``method`` off for ``retry_after`` seconds (logged once per failure)."""
        self._off_until[method] = self._clock() + self.retry_after
        log.warning(
            "this Bot API server answered %s with %s; using the basic method instead, and trying %s again in %.0f s",
            method,
            describe_failure(exc),
            method,
            self.retry_after,
        )
