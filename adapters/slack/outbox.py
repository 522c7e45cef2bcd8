"""The outbound side of one Slack conversation (``gateway.outbound.Outbox``)."""

from __future__ import annotations

import logging
from typing import Any, Protocol

from slack_sdk.errors import SlackApiError

from adapters.base import MessageRef, StreamSink
from adapters.slack.blocks import render_block
from adapters.slack.conversation import Conversation
from adapters.slack.limits import MAX_STATUS
from adapters.slack.streaming import EditStreamSink, NativeStreamSink
from adapters.slack.text import render_parts_async
from gateway.config import Settings


class SlackAdapter(Protocol):
    """What an outbox needs of the adapter that made it (``adapters.slack.adapter.SlackAdapter``):
    the per-workspace memory of what Slack refused, threads and shown statuses."""

    settings: Settings
    statuses_shown: set[tuple[str, str | None]]

    def remember_thread(self, conversation: Conversation) -> None: ...

    def native_streaming_allowed(self, team: str) -> bool: ...

    def native_stream_refused(self, team: str, error: str) -> None: ...

    def status_allowed(self, team: str) -> bool: ...

    def status_unavailable(self, team: str, error: str) -> None: ...

    async def slack_file_for(self, team: str, file_id: str, alt_text: str) -> str: ...

log = logging.getLogger(__name__)

STATUS_UNAVAILABLE_ERRORS = frozenset(
    {"missing_scope", "not_allowed_token_type", "channel_type_not_supported", "feature_not_enabled", "not_allowed"}
)
"""assistant.threads.setStatus errors meaning the workspace or app has no assistant threads."""


class SlackOutbox:
    def __init__(self, adapter: SlackAdapter, conversation: Conversation, session_id: str = "") -> None:
        self.adapter = adapter
        self.conversation = conversation
        self.session_id = session_id

    async def send_text(self, message_id: str, text: str) -> list[MessageRef]:
        refs: list[MessageRef] = []
        for part in await render_parts_async(text):
            ts = await self.conversation.post_part(part)
            if ts is not None:
                refs.append(ts)
        self.adapter.remember_thread(self.conversation)
        return refs

    def open_stream(self, message_id: str) -> StreamSink:
        c = self.conversation
        if c.thread_ts and not c.is_dm and not c.recipient_user and self.session_id:
            return RecipientLookupSink(self)  # native or not is decided once the recipient is read
        return self.make_sink()

    def make_sink(self) -> StreamSink:
        interval = self.adapter.settings.slack.update_interval
        self.adapter.remember_thread(self.conversation)
        if self.conversation.can_stream_natively and self.adapter.native_streaming_allowed(self.conversation.team):
            return NativeStreamSink(
                self.conversation,
                min_interval=interval,
                on_refused=lambda error: self.adapter.native_stream_refused(self.conversation.team, error),
            )
        return EditStreamSink(self.conversation, min_interval=interval)

    async def show_block(
        self, message_id: str, envelope: dict[str, Any], previous: list[MessageRef] | None
    ) -> list[MessageRef]:
        rendered = render_block(envelope)
        if rendered is None:
            return list(previous or [])
        blocks = rendered.blocks
        if rendered.image_file_id is not None:
            slack_file_id = await self.adapter.slack_file_for(
                self.conversation.team, rendered.image_file_id, rendered.text
            )
            blocks = [{**blocks[0], "slack_file": {"id": slack_file_id}}]
        self.adapter.remember_thread(self.conversation)
        if previous:
            try:
                await self.conversation.update(previous[0], rendered.text, blocks)
                return [previous[0]]
            except SlackApiError as error:
                if error.response.get("error") not in (
                    "message_not_found",
                    "cant_update_message",
                    "edit_window_closed",
                ):
                    raise
                log.info("block %s could not be edited (%s); posting it again", envelope.get("id"), error)
        ts = await self.conversation.post(rendered.text, blocks)
        return [ts] if ts else []

    async def notify(self, text: str, detail: str) -> None:
        """A status line under the thread (assistant threads only: Slack has no other bot typing
        indicator). Never part of the history; cleared by ``end_turn`` or by our next reply."""
        status = f"{text} {detail}".strip() if detail else text
        if len(status) > MAX_STATUS:
            status = status[: MAX_STATUS - 1] + "…"
        await self._set_status(status)

    async def end_turn(self, inbound_id: str | None, error: str | None) -> None:
        c = self.conversation
        if (c.channel, c.thread_ts) in self.adapter.statuses_shown:
            await self._set_status("")

    async def _set_status(self, status: str) -> None:
        c = self.conversation
        if not c.thread_ts or not c.is_dm or not self.adapter.status_allowed(c.team):
            return
        try:
            # A status line is superseded by the next one, like a preview frame: when the
            # workspace's budget has no slot soon it is skipped, not waited for (a handler that
            # reports progress often would otherwise stall for up to a minute). Clearing is urgent.
            sent = await c.pacer.call(
                "assistant.threads.setStatus",
                c.team,
                c.channel,
                lambda: c.client.assistant_threads_setStatus(
                    channel_id=c.channel, thread_ts=c.thread_ts or "", status=status
                ),
                idempotent=True,
                urgent=not status,
                max_wait=self.adapter.settings.slack.update_interval if status else None,
            )
        except SlackApiError as exc:
            code = str(exc.response.get("error"))
            if code in STATUS_UNAVAILABLE_ERRORS:
                self.adapter.status_unavailable(c.team, code)
                return
            raise
        if sent is None:
            return  # skipped by the pacer
        if status:
            self.adapter.statuses_shown.add((c.channel, c.thread_ts))
        else:
            self.adapter.statuses_shown.discard((c.channel, c.thread_ts))


class RecipientLookupSink:
    """A stream in a channel thread whose recipient is not cached (after a restart, or from a
    scheduled job): reads it from the session first, then streams natively when it can."""

    def __init__(self, outbox: SlackOutbox) -> None:
        self.outbox = outbox
        self.min_interval = outbox.adapter.settings.slack.update_interval
        self._inner: StreamSink | None = None

    async def _sink(self) -> StreamSink:
        if self._inner is None:
            await self.outbox.adapter.load_recipient(self.outbox.conversation, self.outbox.session_id)
            self._inner = self.outbox.make_sink()
        return self._inner

    async def frame(self, text: str) -> None:
        await (await self._sink()).frame(text)

    async def close(self, text: str, *, stopped: bool) -> list[MessageRef]:
        return await (await self._sink()).close(text, stopped=stopped)
