"""One Telegram conversation's outbound side (the core's ``Outbox``).

Refs are Telegram message ids as strings; the chat is the outbox's own.

``notify()`` shows what a Telegram user expects while a bot works: the "typing…" chat action
(free: it uses no message budget and expires by itself), and in private chats with drafts the
status text as a draft bubble, which Telegram removes as soon as the reply is sent. No status
*message* is posted: in groups it would spend a twentieth of the chat's minute budget and leave a
message to delete.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from aiogram.exceptions import TelegramAPIError, TelegramBadRequest
from aiogram.methods import SendPhoto
from aiogram.types import BufferedInputFile

from adapters.base import MessageRef, StreamSink
from adapters.telegram.blocks import BlockView, absolute_url, view_block
from adapters.telegram.client import PARSE_ERROR, MethodUnsupported, TelegramClient
from adapters.telegram.render import (
    TelegramPart,
    escape_html,
    render_telegram,
    render_telegram_caption,
)
from adapters.telegram.settings import TelegramSettings
from adapters.telegram.streaming import DraftStream, EditStream, RichDraftStream
from gateway.types import SessionChannel


class TelegramAdapter(Protocol):
    """What an outbox needs of the adapter that made it (``adapters.telegram.adapter.TelegramAdapter``)."""

    client: TelegramClient
    config: TelegramSettings
    status_draft_id: int

    @property
    def public_url(self) -> str: ...

    @property
    def files(self) -> Any: ...

log = logging.getLogger("chatgate.telegram")


class TelegramOutbox:
    def __init__(self, adapter: TelegramAdapter, channel: SessionChannel) -> None:
        self.adapter = adapter
        self.client = adapter.client
        self.channel = channel
        self.chat_id = int(channel.chat_id or 0)
        self.thread_id = int(channel.thread_id) if channel.thread_id else None

    @property
    def private(self) -> bool:
        return self.chat_id > 0  # Telegram: a private chat's id is the user's (positive) id

    # -- text ------------------------------------------------------------------------------------

    async def send_text(self, message_id: str, text: str) -> list[MessageRef]:
        """Rich Markdown messages where the server has them; HTML parts otherwise, and for any
        chunk the rich method could not carry (the server failed it or refused the text)."""
        ids = await self.client.send_markdown(self.chat_id, text, thread_id=self.thread_id)
        return [str(i) for i in ids]

    async def _send_parts(self, parts: list[TelegramPart], keyboard: Any = None) -> list[MessageRef]:
        refs: list[MessageRef] = []
        for index, part in enumerate(parts):
            markup = keyboard if index == len(parts) - 1 else None
            sent = await self.client.send_part(self.chat_id, part, thread_id=self.thread_id, reply_markup=markup)
            refs.append(str(sent.message_id))
        return refs

    def open_stream(self, message_id: str) -> StreamSink:
        config = self.adapter.config
        scale = config.rate_scale
        edit_interval = (config.private_edit_interval if self.private else config.group_edit_interval) * scale
        if self.private and config.use_drafts:
            kind = RichDraftStream if self.client.supports_rich_drafts else DraftStream
            if kind is RichDraftStream or self.client.supports_drafts:
                return kind(
                    self.client,
                    self.chat_id,
                    self.thread_id,
                    draft_interval=config.draft_interval * scale,
                    edit_interval=edit_interval,
                )
        return EditStream(self.client, self.chat_id, self.thread_id, edit_interval)

    # -- blocks ----------------------------------------------------------------------------------

    async def show_block(
        self, message_id: str, envelope: dict[str, Any], previous: list[MessageRef] | None
    ) -> list[MessageRef]:
        view = view_block(envelope, self.adapter.public_url)
        if view.awaiting_file is not None:
            self.adapter.set_awaiting_file(self.channel, view.awaiting_file)
        if view.kind == "skip":
            return previous or []
        if view.kind == "image":
            return await self._show_image(view, previous)
        parts = render_telegram(view.markdown) or [TelegramPart(html="…", plain="…")]
        if previous and len(previous) == len(parts):
            try:
                for index, (ref, part) in enumerate(zip(previous, parts, strict=True)):
                    markup = view.keyboard if index == len(parts) - 1 else None
                    await self.client.edit_part(self.chat_id, int(ref), part, reply_markup=markup)
                return list(previous)
            except TelegramBadRequest as exc:  # gone (deleted, too old): post it again
                log.info("could not edit block %s (%s); posting it again", envelope.get("id"), exc.message)
        elif previous:
            for ref in previous:
                await self.client.delete(self.chat_id, int(ref))
        try:
            return await self._send_parts(parts, view.keyboard)
        except TelegramBadRequest as exc:
            if view.keyboard is None or "button" not in exc.message.lower():
                raise
            # Telegram refused a button (a URL it will not link to): put the links in the text
            links = [b.url for row in view.keyboard.inline_keyboard for b in row if b.url]
            log.warning("telegram refused the block's buttons (%s); sending links as text", exc.message)
            fallback = view.markdown + "".join(f"\n\n{url}" for url in links)
            return await self._send_parts(render_telegram(fallback))

    async def _show_image(self, view: BlockView, previous: list[MessageRef] | None) -> list[MessageRef]:
        payload = view.image
        caption, rest = render_telegram_caption(view.markdown) if view.markdown else (None, [])
        photo: Any
        file_id = payload.get("file_id")
        url = str(payload.get("url") or "")
        if file_id and self.adapter.files is not None:
            data = await self.adapter.files.read(str(file_id))
            name = self.adapter.files.path(str(file_id)).name or "image"
            photo = BufferedInputFile(data, filename=name)
        else:
            photo = absolute_url(url, self.adapter.public_url)
        try:
            sent = await self._send_photo(photo, caption)
            refs = [str(sent.message_id)]
        except TelegramAPIError as exc:
            # Telegram could not take the image (a URL it cannot fetch, a format it refuses): link it
            log.warning("sendPhoto failed (%s); sending the image as a link", exc)
            label = escape_html(view.markdown or url or "image")
            target = absolute_url(url, self.adapter.public_url) if url else ""
            html = f'<a href="{escape_html(target)}">{label}</a>' if target.startswith("http") else label
            sent = await self.client.send_part(
                self.chat_id, TelegramPart(html=html, plain=f"{label} {target}"), thread_id=self.thread_id
            )
            refs = [str(sent.message_id)]
        refs += await self._send_parts(rest)
        for ref in previous or []:
            await self.client.delete(self.chat_id, int(ref))
        return refs

    async def _send_photo(self, photo: Any, caption: TelegramPart | None) -> Any:
        """``sendPhoto`` with an HTML caption; if Telegram rejects the markup, with its plain twin."""
        captions = ((caption.html, "HTML"), (caption.plain, None)) if caption else ((None, None),)
        for index, (text, parse_mode) in enumerate(captions):
            try:
                return await self.client.raw(
                    SendPhoto(
                        chat_id=self.chat_id,
                        photo=photo,
                        message_thread_id=self.thread_id,
                        caption=text,
                        parse_mode=parse_mode,
                    ),
                    chat_id=self.chat_id,
                )
            except TelegramBadRequest as exc:
                if PARSE_ERROR not in exc.message or index == len(captions) - 1:
                    raise
                log.warning("telegram rejected the caption's markup (%s); sending it as plain text", exc.message)
        raise AssertionError("unreachable: the last caption raises")  # pragma: no cover

    # -- status ----------------------------------------------------------------------------------

    async def notify(self, text: str, detail: str) -> None:
        await self.client.chat_action(self.chat_id, "typing", thread_id=self.thread_id)
        if not (self.private and text and self.adapter.config.use_drafts and self.client.supports_drafts):
            return
        status = escape_html(text) + (f"\n{escape_html(detail)}" if detail else "")
        part = TelegramPart(html=f"<i>{status}</i>", plain=text + (f"\n{detail}" if detail else ""))
        try:
            await self.client.send_draft(self.chat_id, self.adapter.status_draft_id, part, thread_id=self.thread_id)
        except (MethodUnsupported, TelegramAPIError) as exc:
            log.info("status draft not shown: %s", exc)

    async def end_turn(self, inbound_id: str | None, error: str | None) -> None:
        """Nothing to clear: the typing action and status drafts expire by themselves, and the
        reply (or the core's error message) replaces a status draft when it is sent."""
        return None
