"""Streaming a reply into Slack, two ways.

``NativeStreamSink``: chat.startStream / appendStream / stopStream, Slack's own streaming
message (Tier 4 appends, Markdown rendered by Slack). Used where Slack allows it: in a thread,
and in channels only with a known recipient. A streamed message is rolled over into a new one
before it outgrows ``MAX_STREAM_MESSAGE``, and after Slack ends a stream on its own
(``message_not_in_streaming_state``, about five minutes in) the rest goes into a new message.
If Slack refuses to start a stream at all, the sink falls back to editing.

``EditStreamSink``: chat.postMessage, then chat.update about once a second (``chat.update`` is
Tier 3 for the whole workspace), skipping unchanged frames, rolling into more messages when the
text outgrows one message.

Both: preview frames are best effort (the pacer may skip them; the next frame carries the whole
text anyway), ``close`` is urgent and delivers the complete final text exactly once.
"""

from __future__ import annotations

import logging

from slack_sdk.errors import SlackApiError

from adapters.base import MessageRef
from adapters.slack.conversation import Conversation
from adapters.slack.limits import MAX_STREAM_APPEND, MAX_STREAM_MESSAGE
from adapters.slack.pacer import is_rate_limited
from adapters.slack.text import Part, render_parts_async, same_content

log = logging.getLogger(__name__)

STOPPED_MARK = "\n\n_(stopped)_"
MESSAGE_GONE_ERRORS = frozenset({"message_not_found", "cant_update_message", "edit_window_closed"})
"""chat.update errors meaning the preview cannot be edited any more: post the text anew."""
STREAM_ENDED_ERRORS = frozenset({"message_not_in_streaming_state", "stopped_by_user", "message_not_found"})
"""appendStream/stopStream errors meaning the stream is over (Slack timed it out or the user stopped it)."""


def cut(text: str, room: int) -> str:
    """The longest head of ``text`` that fits ``room`` characters (and one API call), ending at a
    line break when one is in the second half, so Markdown is not cut mid-line."""
    limit = max(0, min(room, MAX_STREAM_APPEND))
    if len(text) <= limit:
        return text
    piece = text[:limit]
    newline = piece.rfind("\n")
    return piece[: newline + 1] if newline >= limit // 2 else piece


def final_text(text: str, stopped: bool) -> str:
    return text + STOPPED_MARK if stopped and text.strip() else text


class EditStreamSink:
    """Post, then edit in place; more messages when the text outgrows one."""

    def __init__(self, conversation: Conversation, *, min_interval: float) -> None:
        self.conversation = conversation
        self.min_interval = min_interval
        self.refs: list[str] = []
        self.shown: list[Part] = []
        self.closed = False
        self.final_reserved = False

    async def frame(self, text: str) -> None:
        if self.closed:
            return
        c = self.conversation
        if not self.final_reserved:
            # A preview is shown only once its final edit is promised a chat.update slot. Without
            # the promise, previews of other replies may have spent the workspace's minute, and
            # the final text would wait for their slots to expire (up to a minute).
            if not c.pacer.reserve_final("chat.update", c.team):
                c.pacer.stats.skipped_frames += 1
                return  # no preview: the final text is posted as a new message instead
            self.final_reserved = True
        method = "chat.update" if self.refs else "chat.postMessage"
        if not c.pacer.available_within(method, c.team, c.channel, self.min_interval):
            c.pacer.stats.skipped_frames += 1
            return  # no budget for a preview now: skip the rendering too
        await self._show(await render_parts_async(text), urgent=False)

    async def close(self, text: str, *, stopped: bool) -> list[MessageRef]:
        if self.closed:
            return list(self.refs)
        self.closed = True
        try:
            parts = await render_parts_async(final_text(text, stopped))
            await self._show(parts, urgent=True)
            for ts in self.refs[len(parts) :]:  # previews the final text no longer needs
                await self.conversation.delete(ts)
            self.refs = self.refs[: len(parts)]
            return list(self.refs)
        finally:
            if self.final_reserved:
                self.conversation.pacer.release_final("chat.update", self.conversation.team)

    async def _show(self, parts: list[Part], *, urgent: bool) -> None:
        max_wait = None if urgent else self.min_interval
        for i, part in enumerate(parts):
            if i < len(self.refs):
                if same_content(self.shown[i], part):
                    continue
                try:
                    updated = await self.conversation.update_part(self.refs[i], part, urgent=urgent, max_wait=max_wait)
                except SlackApiError as error:
                    if error.response.get("error") not in MESSAGE_GONE_ERRORS:
                        raise
                    # Someone deleted the preview (or it can no longer be edited): post it anew.
                    ts = await self.conversation.post_part(part, urgent=urgent, max_wait=max_wait)
                    if ts is None:
                        return
                    self.refs[i], self.shown[i] = ts, part
                    continue
                if not updated:
                    return  # frame skipped by the pacer: the next frame brings the text again
                self.shown[i] = part
            else:
                ts = await self.conversation.post_part(part, urgent=urgent, max_wait=max_wait)
                if ts is None:
                    return
                self.refs.append(ts)
                self.shown.append(part)


class NativeStreamSink:
    """chat.startStream / appendStream / stopStream, with roll-over and an edit fallback."""

    def __init__(self, conversation: Conversation, *, min_interval: float, on_refused: object = None) -> None:
        self.conversation = conversation
        self.min_interval = min_interval
        self.sent = ""
        """The text already streamed into Slack."""
        self.current_ts: str | None = None
        self.current_len = 0
        self.refs: list[str] = []
        self.fallback: EditStreamSink | None = None
        self.fallback_offset = 0
        self.closed = False
        self._on_refused = on_refused

    async def frame(self, text: str) -> None:
        if self.closed:
            return
        c = self.conversation
        if self.fallback is None and self.current_ts is None and not self.sent:
            if not c.pacer.available_within("chat.startStream", c.team, c.channel, self.min_interval):
                # The workspace's stream starts are spent for now: preview by post + edit instead
                # of showing nothing until the end.
                self._use_fallback()
        if self.fallback is not None:
            await self.fallback.frame(text[self.fallback_offset :])
            return
        await self._push(text, urgent=False, final=False)

    async def close(self, text: str, *, stopped: bool) -> list[MessageRef]:
        if self.closed:
            return list(self.refs)
        self.closed = True
        text = final_text(text, stopped)
        if self.fallback is None and self.current_ts is None and not self.sent:
            # Nothing streamed yet (a short reply): one plain message is cheaper than start + stop.
            self._use_fallback()
        if self.fallback is None:
            await self._push(text, urgent=True, final=True)
        if self.fallback is not None:
            self.refs += await self.fallback.close(text[self.fallback_offset :], stopped=False)
        return list(self.refs)

    def _use_fallback(self) -> None:
        self.fallback = EditStreamSink(self.conversation, min_interval=self.min_interval)
        self.fallback_offset = len(self.sent)

    async def _push(self, text: str, *, urgent: bool, final: bool) -> None:
        """Bring Slack up to ``text``. A frame makes at most one call; the final push makes as many
        as it needs and ends with stopStream carrying the last piece."""
        if not text.startswith(self.sent):
            # The core only ever grows the text; if it did not, finish what was streamed and let
            # the fallback carry the rest rather than repeat or lose anything.
            if final:
                if self.current_ts is not None:
                    await self._stop(None, urgent=True)
                self._use_fallback()
            return
        max_wait = None if urgent else self.min_interval
        while True:
            rest = text[len(self.sent) :]
            if self.current_ts is None:
                if not rest:
                    return
                if not await self._start(cut(rest, MAX_STREAM_MESSAGE), urgent=urgent, max_wait=max_wait):
                    return
                if not final:
                    return
                continue
            piece = cut(rest, MAX_STREAM_MESSAGE - self.current_len)
            if final and len(piece) == len(rest):
                if await self._stop(piece, urgent=True):
                    self.sent += piece
                    return
                continue  # Slack had ended the stream: the rest goes into a new one
            if not piece:
                if not rest:
                    return
                await self._stop(None, urgent=True)  # this message is full: roll over
                continue
            if not await self._append(piece, urgent=urgent, max_wait=max_wait):
                if final and self.current_ts is None:
                    continue
                return
            if not final:
                return

    async def _start(self, piece: str, *, urgent: bool, max_wait: float | None) -> bool:
        c = self.conversation
        try:
            response = await c.pacer.call(
                "chat.startStream",
                c.team,
                c.channel,
                lambda: c.client.chat_startStream(
                    channel=c.channel,
                    thread_ts=c.thread_ts or "",
                    markdown_text=piece,
                    recipient_user_id=None if c.is_dm else c.recipient_user,
                    recipient_team_id=None if c.is_dm else c.team,
                ),
                urgent=urgent,
                max_wait=max_wait,
            )
        except SlackApiError as error:
            if is_rate_limited(error):
                raise
            log.warning("chat.startStream refused (%s); streaming by edits instead", error.response.get("error"))
            if callable(self._on_refused):
                self._on_refused(str(error.response.get("error")))
            self._use_fallback()
            return False
        if response is None:
            return False
        self.current_ts = str(response["ts"])
        self.current_len = len(piece)
        self.refs.append(self.current_ts)
        self.sent += piece
        return True

    async def _append(self, piece: str, *, urgent: bool, max_wait: float | None) -> bool:
        c = self.conversation
        ts = self.current_ts
        assert ts is not None
        try:
            response = await c.pacer.call(
                "chat.appendStream",
                c.team,
                c.channel,
                lambda: c.client.chat_appendStream(channel=c.channel, ts=ts, markdown_text=piece),
                urgent=urgent,
                max_wait=max_wait,
            )
        except SlackApiError as error:
            if error.response.get("error") in STREAM_ENDED_ERRORS:
                self.current_ts = None  # Slack ended the stream; the next push starts a new message
                return False
            raise
        if response is None:
            return False
        self.current_len += len(piece)
        self.sent += piece
        return True

    async def _stop(self, piece: str | None, *, urgent: bool) -> bool:
        """stopStream, with ``piece`` as the last text. False when the stream was already over."""
        c = self.conversation
        ts = self.current_ts
        assert ts is not None
        try:
            await c.pacer.call(
                "chat.stopStream",
                c.team,
                c.channel,
                lambda: c.client.chat_stopStream(channel=c.channel, ts=ts, markdown_text=piece or None),
                urgent=urgent,
            )
        except SlackApiError as error:
            if error.response.get("error") not in STREAM_ENDED_ERRORS:
                raise
            self.current_ts = None
            return False
        self.current_ts = None
        self.current_len = 0
        return True
