"""A slash command's ``response_url``: how a reply still reaches the user when the bot is not a
member of the channel the command was typed in.

Every slash command carries a ``response_url`` that takes up to 5 messages within 30 minutes,
membership or not (docs.slack.dev, "Handling slash commands"). chat.postMessage in a channel the
bot is not in answers ``not_in_channel`` (``channel_not_found`` in private channels and DMs it
cannot see); for a conversation that came from a slash command, the text then goes to the
response URL instead of being lost: a JSON POST of ``text`` (plus non-interactive blocks) with
``response_type: in_channel``, visible to the channel as a posted reply would have been.

What a response URL cannot do: be edited (so stream previews are skipped and only final texts
are sent, keeping the 5 uses for them) or carry buttons (they would arrive, but their cards could
not be edited in place). The URL is a capability: it is kept in memory only, never logged, never
stored (a restart forgets it, and with it the fallback).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from adapters.slack.text import render_parts

log = logging.getLogger(__name__)

RESPONSE_URL_LIFETIME = 30 * 60.0
"""Seconds a slash command's response_url takes messages (docs.slack.dev, "Handling slash commands")."""
RESPONSE_URL_USES = 5
"""Messages one response_url takes (same page)."""
RESPONSE_TIMEOUT = 10.0
"""Seconds we wait for Slack to answer a response_url POST."""
NOT_MEMBER_ERRORS = frozenset({"not_in_channel", "channel_not_found"})
"""chat.postMessage errors that mean the bot cannot post in the conversation itself."""
REF_PREFIX = "response_url:"
"""Message refs of messages sent through a response URL: Slack returns no ``ts`` for them."""


def is_response_ref(ref: str) -> bool:
    return ref.startswith(REF_PREFIX)


@dataclass
class CommandResponse:
    """The response URL of the latest slash command in one conversation."""

    url: str = field(repr=False)
    command: str
    received_at: float = field(default_factory=time.monotonic)
    uses: int = 0
    not_member: bool = False
    """chat.postMessage has answered that the bot is not in the conversation: go straight here."""

    def usable(self) -> bool:
        fresh = time.monotonic() - self.received_at < RESPONSE_URL_LIFETIME
        return fresh and self.uses < RESPONSE_URL_USES


def response_blocks(blocks: list[dict[str, Any]] | None) -> tuple[list[dict[str, Any]], bool]:
    """The blocks to send through a response URL, and whether buttons had to be left out.
    Markdown blocks become mrkdwn sections (the classic Block Kit every message surface shows)."""
    out: list[dict[str, Any]] = []
    dropped = False
    for block in blocks or []:
        kind = block.get("type")
        if kind == "actions":
            dropped = True
        elif kind == "markdown":
            for part in render_parts(str(block.get("text") or ""), style="mrkdwn"):
                out.extend(part.blocks)
        else:
            out.append(block)
    return out, dropped


async def send_response(entry: CommandResponse, text: str, blocks: list[dict[str, Any]] | None) -> bool:
    """POST one message to the response URL; True when Slack took it. Uses one of its 5 messages
    (counted even when the POST fails: Slack may have counted it). Never retried: a new message."""
    entry.uses += 1
    shown, dropped = response_blocks(blocks)
    if dropped:
        log.info("slack: buttons left out of a reply sent through %s's response URL", entry.command)
    body: dict[str, Any] = {"text": text, "response_type": "in_channel"}
    if shown:
        body["blocks"] = shown
    try:
        timeout = aiohttp.ClientTimeout(total=RESPONSE_TIMEOUT)
        async with aiohttp.ClientSession(timeout=timeout) as http, http.post(entry.url, json=body) as response:
            answer = (await response.text())[:100]
            if response.status == 200:
                return True
            log.warning(
                "slack: %s's response URL refused a reply (HTTP %s: %s)", entry.command, response.status, answer
            )
    except (aiohttp.ClientError, TimeoutError) as exc:
        # The exception's text may carry the URL: only its type is logged.
        log.warning("slack: %s's response URL could not be reached (%s)", entry.command, type(exc).__name__)
    return False
