"""One Slack conversation as the outbound code sees it: where to post, and the paced Web API calls."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack.pacer import SlackPacer
from adapters.slack.text import Part, notification_text


@dataclass
class Conversation:
    client: AsyncWebClient
    pacer: SlackPacer
    team: str
    channel: str
    thread_ts: str | None
    recipient_user: str | None = None
    """The Slack user a native stream is addressed to (required in channels, not in DMs)."""

    @property
    def is_dm(self) -> bool:
        """DM channel ids start with ``D`` (Slack conversation id prefixes)."""
        return self.channel.startswith("D")

    @property
    def can_stream_natively(self) -> bool:
        """chat.startStream needs a thread, and in channels a recipient user and team."""
        return bool(self.thread_ts) and (self.is_dm or bool(self.recipient_user and self.team))

    async def post(
        self, text: str, blocks: list[dict[str, Any]] | None, *, urgent: bool = True, max_wait: float | None = None
    ) -> str | None:
        """chat.postMessage in the conversation's thread; the new message's ts (None: skipped)."""
        response = await self.pacer.call(
            "chat.postMessage",
            self.team,
            self.channel,
            lambda: self.client.chat_postMessage(
                channel=self.channel, thread_ts=self.thread_ts, text=text, blocks=blocks or None
            ),
            urgent=urgent,
            max_wait=max_wait,
        )
        return None if response is None else str(response["ts"])

    async def update(
        self,
        ts: str,
        text: str,
        blocks: list[dict[str, Any]] | None,
        *,
        urgent: bool = True,
        max_wait: float | None = None,
    ) -> bool:
        """chat.update of one of our messages; False when skipped by the pacer."""
        response = await self.pacer.call(
            "chat.update",
            self.team,
            self.channel,
            lambda: self.client.chat_update(channel=self.channel, ts=ts, text=text, blocks=blocks or []),
            urgent=urgent,
            max_wait=max_wait,
            idempotent=True,  # the same edit twice is the same message
        )
        return response is not None

    async def delete(self, ts: str) -> None:
        await self.pacer.call(
            "chat.delete",
            self.team,
            self.channel,
            lambda: self.client.chat_delete(channel=self.channel, ts=ts),
            idempotent=True,
        )

    async def post_part(self, part: Part, *, urgent: bool = True, max_wait: float | None = None) -> str | None:
        return await self.post(notification_text(part), part.blocks, urgent=urgent, max_wait=max_wait)

    async def update_part(self, ts: str, part: Part, *, urgent: bool = True, max_wait: float | None = None) -> bool:
        return await self.update(ts, notification_text(part), part.blocks, urgent=urgent, max_wait=max_wait)
