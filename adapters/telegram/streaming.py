"""Streamed replies on Telegram: drafts in private chats, send-then-edit everywhere else.

- :class:`RichDraftStream` (private chats, ``sendRichMessageDraft``, Bot API 10.1, with
  ``telegram.rich_messages``): Markdown drafts Telegram renders itself, persisted by
  ``sendRichMessage``; falls back to the next kind when the server fails it.

The other two render every frame from the whole text so far (``render_telegram`` through
:class:`~adapters.telegram.incremental.IncrementalRenderer`, which renders finished messages once),
so a stream that outgrows 4,096 characters rolls over into a new message at a paragraph break.

- :class:`DraftStream` (private chats, ``sendMessageDraft``, Bot API 9.3): the current part is a
  draft, animated under one ``draft_id`` with a stop button; parts the text has grown past are
  posted as messages; ``close`` posts the rest (a rich message where the server has them and
  nothing was posted yet, as the Bot API suggests). Drafts use their own budget, so the final
  ``sendMessage`` does not wait behind them. A server without drafts switches the stream (and
  the bot, remembered) to edits mid-stream without losing what was already posted.
- :class:`EditStream`: ``sendMessage`` once, then ``editMessageText`` at most every ``interval``
  (1.1 s private, 3.1 s groups by default), skipping unchanged parts; "not modified" is success.
  A preview edit waits rather than queue while the chat's or the bot's budget is busy
  (``Pacer.room_for_preview``), so final texts and new messages never wait behind previews;
  a rollover (the finished part, then the next message) is not a preview and queues like them.

Every sink's ``frame`` returns once its preview is shown or skipped (:class:`_PacedFrames`), so
the core's pump coalesces what is written while the chat's budget is busy.

``close`` makes every part exactly the final rendering (edits are idempotent, so a retried edit
never duplicates anything) and deletes messages the final text no longer needs.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time

from adapters.base import MessageRef
from adapters.telegram.client import DRAFT_ID_MAX, MethodUnsupported, TelegramClient
from adapters.telegram.incremental import IncrementalRenderer
from adapters.telegram.render import TelegramPart, render_telegram_markdown

log = logging.getLogger("chatgate.telegram")


class _Posted:
    """The messages a stream has posted so far and the HTML each shows."""

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.shown: list[str] = []

    def refs(self) -> list[MessageRef]:
        return [str(i) for i in self.ids]


async def _sync(
    client: TelegramClient, chat_id: int, thread_id: int | None, posted: _Posted, parts: list[TelegramPart]
) -> None:
    """Make ``posted`` show ``parts``: edit what changed, post what is new."""
    for index, part in enumerate(parts):
        if index < len(posted.ids):
            if posted.shown[index] != part.html:
                await client.edit_part(chat_id, posted.ids[index], part)
                posted.shown[index] = part.html
        else:
            message = await client.send_part(chat_id, part, thread_id=thread_id)
            posted.ids.append(message.message_id)
            posted.shown.append(part.html)


async def _finish(
    client: TelegramClient, chat_id: int, thread_id: int | None, posted: _Posted, parts: list[TelegramPart]
) -> list[MessageRef]:
    await _sync(client, chat_id, thread_id, posted, parts)
    for extra in posted.ids[len(parts) :]:
        await client.delete(chat_id, extra)
    del posted.ids[len(parts) :], posted.shown[len(parts) :]
    return posted.refs()


PREVIEW_PATIENCE = 1.0
"""How many ``min_interval``s a preview waits for room in a busy budget before it is skipped
(the next frame, or ``close``, carries the whole text anyway)."""


class _PacedFrames:
    """The :class:`~gateway.outbound.StreamSink` contract: ``frame`` returns once its text is shown
    (or the preview was skipped), so while a frame waits for the chat's budget or is on the wire
    the core's pump coalesces the tokens written meanwhile into the next frame: a slow chat gets
    fewer, larger frames, and no preview ever queues behind another.

    A preview waits for its budget at most ``PREVIEW_PATIENCE`` intervals, so ``close`` (which
    the pump calls only after the frame in hand has returned) is not held up behind a preview
    that cannot go; a text that outgrew its message is not a preview and waits like a final."""

    min_interval: float

    def _delay(self) -> float:
        """Seconds to wait before the next preview may be shown."""
        raise NotImplementedError

    def _ready(self) -> bool:
        """Whether a preview may go now (checked after the delay); else wait a little longer."""
        return True

    async def _show(self, text: str) -> None:
        raise NotImplementedError

    _latest = ""

    async def frame(self, text: str) -> None:
        self._latest = text
        delay = self._delay()
        if delay > 0:
            await asyncio.sleep(delay)
        give_up = time.monotonic() + self.min_interval * PREVIEW_PATIENCE
        while not self._ready():
            if time.monotonic() >= give_up:
                log.debug("telegram stream preview skipped: no room in the budget")
                return
            await asyncio.sleep(self.min_interval / 4)
        await self._show(text)


class EditStream(_PacedFrames):
    """Send, then edit no more often than ``interval``."""

    def __init__(
        self,
        client: TelegramClient,
        chat_id: int,
        thread_id: int | None,
        interval: float,
        posted: _Posted | None = None,
        renderer: IncrementalRenderer | None = None,
    ) -> None:
        self.client = client
        self.renderer = renderer or IncrementalRenderer()
        self.chat_id = chat_id
        self.thread_id = thread_id
        self.min_interval = interval
        self._posted = posted or _Posted()
        self._last = 0.0

    def _delay(self) -> float:
        if not self._posted.ids:
            return 0.0  # the first message goes at once
        return max(0.0, self._last + self.min_interval - time.monotonic())

    def _ready(self) -> bool:
        # a preview edit never queues for the budget: final texts and new messages go first. A
        # text that has outgrown its messages is not a preview: the finished part and the next
        # message are sent now, in line with finals (close would have to send them anyway, one
        # chat interval apart, after the last token)
        if not self._posted.ids or self.client.pacer.room_for_preview(self.chat_id):
            return True
        return len(self.renderer.render(self._latest, partial=True)) > len(self._posted.ids)

    async def _show(self, text: str) -> None:
        parts = self.renderer.render(text, partial=True)
        if parts:
            await _sync(self.client, self.chat_id, self.thread_id, self._posted, parts)
            self._last = time.monotonic()

    async def close(self, text: str, *, stopped: bool) -> list[MessageRef]:
        parts = self.renderer.render(text)
        return await _finish(self.client, self.chat_id, self.thread_id, self._posted, parts)


class _DraftFrames(_PacedFrames):
    """Drafts (plain or rich) are paced by the chat's draft budget, and once a stream fell back
    to a plainer way (``_fallback``) every later frame goes there."""

    client: TelegramClient
    chat_id: int
    _fallback: _PacedFrames | None

    async def frame(self, text: str) -> None:
        if self._fallback is not None:
            await self._fallback.frame(text)
            return
        await super().frame(text)

    def _delay(self) -> float:
        return self.client.pacer.draft_delay(self.chat_id)


class DraftStream(_DraftFrames):
    """Drafts for the part being written; messages for finished parts and the final text."""

    def __init__(
        self,
        client: TelegramClient,
        chat_id: int,
        thread_id: int | None,
        *,
        draft_interval: float,
        edit_interval: float,
        draft_id: int | None = None,
    ) -> None:
        self.client = client
        self.chat_id = chat_id
        self.thread_id = thread_id
        self.min_interval = draft_interval
        self.edit_interval = edit_interval
        self.draft_id = draft_id or secrets.randbelow(DRAFT_ID_MAX) + 1
        self._posted = _Posted()
        self._fallback: EditStream | None = None
        self.renderer = IncrementalRenderer()

    async def _show(self, text: str) -> None:
        if self._fallback is not None:
            await self._fallback.frame(text)
            return
        parts = self.renderer.render(text, partial=True)
        if not parts:
            return
        # parts the text has grown past are complete: post them as messages
        await _sync(self.client, self.chat_id, self.thread_id, self._posted, parts[: len(parts) - 1])
        try:
            if not self.client.supports_drafts:  # another stream learnt it meanwhile
                raise MethodUnsupported("sendMessageDraft")
            await self.client.send_draft(self.chat_id, self.draft_id, parts[-1], thread_id=self.thread_id)
        except MethodUnsupported:
            self._fallback = EditStream(
                self.client, self.chat_id, self.thread_id, self.edit_interval, self._posted, self.renderer
            )
            await self._fallback.frame(text)

    async def close(self, text: str, *, stopped: bool) -> list[MessageRef]:
        if self._fallback is not None:
            return await self._fallback.close(text, stopped=stopped)
        # sending a message in the chat ends the draft; nothing else to clear
        if not self._posted.ids and self.client.supports_rich:  # a rich message where the server has them
            return [str(i) for i in await self.client.send_markdown(self.chat_id, text, thread_id=self.thread_id)]
        parts = self.renderer.render(text)
        return await _finish(self.client, self.chat_id, self.thread_id, self._posted, parts)


class RichDraftStream(_DraftFrames):
    """Rich drafts (``sendRichMessageDraft``, Bot API 10.1): the draft is standard Markdown that
    Telegram renders itself (tables, headings, code), and ``close`` persists the reply with
    ``sendRichMessage``, as the Bot API asks (a draft is an ephemeral preview).

    Nothing is posted before ``close``: a reply longer than one rich message (32,768 characters)
    shows its last chunk as the draft, and ``close`` posts every chunk. If the server fails the
    rich draft, the stream goes on as a :class:`DraftStream` (plain drafts, then edits) under the
    same ``draft_id``; the final text goes as HTML where ``sendRichMessage`` fails too."""

    def __init__(
        self,
        client: TelegramClient,
        chat_id: int,
        thread_id: int | None,
        *,
        draft_interval: float,
        edit_interval: float,
    ) -> None:
        self.client = client
        self.chat_id = chat_id
        self.thread_id = thread_id
        self.min_interval = draft_interval
        self.edit_interval = edit_interval
        self.draft_id = secrets.randbelow(DRAFT_ID_MAX) + 1
        self._fallback: DraftStream | EditStream | None = None

    def _plain(self) -> DraftStream | EditStream:
        if self.client.supports_drafts:
            return DraftStream(
                self.client,
                self.chat_id,
                self.thread_id,
                draft_interval=self.min_interval,
                edit_interval=self.edit_interval,
                draft_id=self.draft_id,
            )
        return EditStream(self.client, self.chat_id, self.thread_id, self.edit_interval)

    async def _show(self, text: str) -> None:
        chunks = render_telegram_markdown(text, partial=True)
        if not chunks:
            return
        try:
            if not self.client.supports_rich_drafts:  # another stream learnt it meanwhile
                raise MethodUnsupported("sendRichMessageDraft")
            await self.client.send_rich_draft(self.chat_id, self.draft_id, chunks[-1], thread_id=self.thread_id)
        except MethodUnsupported:
            self._fallback = self._plain()
            await self._fallback.frame(text)

    async def close(self, text: str, *, stopped: bool) -> list[MessageRef]:
        if self._fallback is not None:
            return await self._fallback.close(text, stopped=stopped)
        ids = await self.client.send_markdown(self.chat_id, text, thread_id=self.thread_id)
        return [str(i) for i in ids]
