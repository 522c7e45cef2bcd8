"""Streamed replies on Telegram: drafts in private chats, send-then-edit everywhere else.

Both sinks render every frame from the whole text so far (``render_telegram`` through
:class:`~adapters.telegram.incremental.IncrementalRenderer`, which renders finished messages once),
so a stream that outgrows 4,096 characters rolls over into a new message at a paragraph break.

- :class:`DraftStream` (private chats, ``sendMessageDraft``, Bot API 9.3): the current part is a
  draft, animated under one ``draft_id`` with a stop button; parts the text has grown past are
  posted as messages; ``close`` posts the rest. Drafts use their own budget, so the final
  ``sendMessage`` does not wait behind them. A server without drafts switches the stream (and
  the bot, remembered) to edits mid-stream without losing what was already posted.
- :class:`EditStream`: ``sendMessage`` once, then ``editMessageText`` at most every ``interval``
  (1.1 s private, 3.1 s groups by default), skipping unchanged parts; "not modified" is success.
  A preview edit waits rather than queue while the chat's or the bot's budget is busy
  (``Pacer.room_for_preview``), so final texts and new messages never wait behind previews;
  a rollover (the finished part, then the next message) is not a preview and queues like them.

Previews are sent by one background task per stream (:class:`_BackgroundFlush`): ``frame``
returns at once, and ``close`` does not wait for a preview that has not left yet.

``close`` makes every part exactly the final rendering (edits are idempotent, so a retried edit
never duplicates anything) and deletes messages the final text no longer needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time

from adapters.telegram.client import DRAFT_ID_MAX, MethodUnsupported, TelegramClient
from adapters.telegram.incremental import IncrementalRenderer
from adapters.telegram.render import TelegramPart
from gateway.outbound import MessageRef

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


class _BackgroundFlush:
    """``frame`` never waits: it hands the text to one background flush per stream, which shows the
    newest text when the budget allows (frames that arrive meanwhile are coalesced). So ``close``
    is never held up behind a preview waiting for its budget: it cancels a flush that has not
    started sending, waits only for one already on the wire (a preview landing after the final
    text would undo it), then delivers the final text."""

    min_interval: float

    def __init__(self) -> None:
        self._latest = ""
        self._flush_task: asyncio.Task[None] | None = None
        self._sending = False

    async def frame(self, text: str) -> None:
        self._latest = text
        if self._flush_task is None or self._flush_task.done():
            self._flush_task = asyncio.create_task(self._flush(), name="telegram-stream-preview")

    def _delay(self) -> float:
        """Seconds to wait before the next preview may be shown."""
        raise NotImplementedError

    def _ready(self) -> bool:
        """Whether a preview may go now (checked after the delay); else wait a little longer."""
        return True

    async def _show(self, text: str) -> None:
        raise NotImplementedError

    async def _flush(self) -> None:
        shown: str | None = None
        while self._latest != shown:
            await asyncio.sleep(self._delay())
            if not self._ready():
                await asyncio.sleep(self.min_interval / 4)
                continue
            text = self._latest
            self._sending = True
            try:
                await self._show(text)
            except Exception:  # a lost preview is not fatal: close() delivers the whole text
                log.warning("telegram stream preview failed; the final text will carry it", exc_info=True)
            finally:
                self._sending = False
            shown = text

    async def _stop_flush(self) -> None:
        task = self._flush_task
        if task is None or task.done():
            return
        if self._sending:
            await asyncio.shield(task)
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class EditStream(_BackgroundFlush):
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
        super().__init__()
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
        await self._stop_flush()
        parts = self.renderer.render(text)
        return await _finish(self.client, self.chat_id, self.thread_id, self._posted, parts)


class DraftStream(_BackgroundFlush):
    """Drafts for the part being written; messages for finished parts and the final text."""

    def __init__(
        self,
        client: TelegramClient,
        chat_id: int,
        thread_id: int | None,
        *,
        draft_interval: float,
        edit_interval: float,
    ) -> None:
        super().__init__()
        self.client = client
        self.chat_id = chat_id
        self.thread_id = thread_id
        self.min_interval = draft_interval
        self.edit_interval = edit_interval
        self.draft_id = secrets.randbelow(DRAFT_ID_MAX) + 1
        self._posted = _Posted()
        self._fallback: EditStream | None = None
        self.renderer = IncrementalRenderer()

    async def frame(self, text: str) -> None:
        if self._fallback is not None:
            await self._fallback.frame(text)
            return
        await super().frame(text)

    def _delay(self) -> float:
        return self.client.pacer.draft_delay(self.chat_id)

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
            await self.client.send_draft(self.chat_id, self.draft_id, parts[-1], thread_id=self.thread_id)
        except MethodUnsupported:
            self._fallback = EditStream(
                self.client, self.chat_id, self.thread_id, self.edit_interval, self._posted, self.renderer
            )
            await self._fallback.frame(text)

    async def close(self, text: str, *, stopped: bool) -> list[MessageRef]:
        await self._stop_flush()
        if self._fallback is not None:
            return await self._fallback.close(text, stopped=stopped)
        # sending a message in the chat ends the draft; nothing else to clear
        parts = self.renderer.render(text)
        return await _finish(self.client, self.chat_id, self.thread_id, self._posted, parts)
