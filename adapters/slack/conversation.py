"""One Slack conversation as the outbound code sees it: where to post, and the paced Web API calls."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack.pacer import SlackPacer
from adapters.slack.response_url import (
    NOT_MEMBER_ERRORS,
    REF_PREFIX,
    CommandResponse,
    is_response_ref,
    send_response,
)
from adapters.slack.text import Part, notification_text

log = logging.getLogger(__name__)


@dataclass
class Conversation:
    client: AsyncWebClient
    pacer: SlackPacer
    team: str
    channel: str
    thread_ts: str | None
    recipient_user: str | None = None
    """The Slack user a native stream is addressed to (required in channels, not in DMs)."""
    command_response: CommandResponse | None = None
    """The response URL of the slash command this top-level conversation came from, if any: where
    replies go when the bot is not a member (see ``adapters.slack.response_url``)."""

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
        """chat.postMessage in the conversation's thread; the new message's ts (None: skipped).
        Where the bot is not a member, a slash command's conversation answers through the
        command's response URL instead (final texts only; the ref is then not a ``ts``)."""
        fallback = self.command_response
        if fallback is not None and fallback.not_member and fallback.usable():
            return await self._respond(fallback, text, blocks, urgent=urgent, error=None)
        try:
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
        except SlackApiError as error:
            code = error.response.get("error")
            if fallback is None or code not in NOT_MEMBER_ERRORS or not fallback.usable():
                raise
            if not fallback.not_member:
                fallback.not_member = True
                log.warning(
                    "slack: the bot is not a member of %s (%s): replying to %s through its response URL; "
                    "invite the bot to the channel for streaming, edits and buttons",
                    self.channel,
                    code,
                    fallback.command,
                )
            return await self._respond(fallback, text, blocks, urgent=urgent, error=error)
        return None if response is None else str(response["ts"])

    async def _respond(
        self,
        fallback: CommandResponse,
        text: str,
        blocks: list[dict[str, Any]] | None,
        *,
        urgent: bool,
        error: SlackApiError | None,
    ) -> str | None:
        if not urgent:
            return None  # a preview: a response URL message cannot be edited, keep its uses for final texts
        if await send_response(fallback, text, blocks):
            return f"{REF_PREFIX}{fallback.uses}"
        if error is not None:
            raise error
        raise SlackApiError(f"a reply to {fallback.command} could not be sent through its response URL", {})

    async def update(
        self,
        ts: str,
        text: str,
        blocks: list[dict[str, Any]] | None,
        *,
        urgent: bool = True,
        max_wait: float | None = None,
    ) -> bool:
        """chat.update of one of our messages; False when skipped by the pacer. A message sent
        through a response URL cannot be edited: the text is sent as a new message."""
        if is_response_ref(ts):
            return await self.post(text, blocks, urgent=urgent, max_wait=max_wait) is not None
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
        if is_response_ref(ts):
            return  # not ours to delete: Slack gave no ts for it
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
