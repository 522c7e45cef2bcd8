"""Markdown -> the Slack message parts we post: the adapter's side of the shared renderer
(``adapters.slack.render.render_slack``: one markdown-it parse, split at Slack's limits)."""

from __future__ import annotations

import asyncio
from typing import Literal

from adapters.slack.limits import MAX_TEXT
from adapters.slack.render import SlackPart, render_slack

Style = Literal["markdown", "mrkdwn"]
Part = SlackPart

RENDER_INLINE_MAX = 2_000
"""Characters rendered on the event loop; longer texts render in a worker thread so a burst of
long final texts (many replies finishing at once) does not hold up other conversations' I/O."""


def render_parts(markdown: str, *, style: Style = "markdown") -> list[Part]:
    """The messages that carry ``markdown``, in order (empty for blank text)."""
    if not markdown.strip():
        return []
    return list(render_slack(markdown, style=style))


async def render_parts_async(markdown: str, *, style: Style = "markdown") -> list[Part]:
    if len(markdown) <= RENDER_INLINE_MAX:
        return render_parts(markdown, style=style)
    return await asyncio.to_thread(render_parts, markdown, style=style)


def notification_text(part: Part) -> str:
    """The ``text`` argument for a part: Slack shows it in notifications when blocks are set,
    and chat.update refuses more than 4,000 characters (the blocks carry the whole text)."""
    return part.text[:MAX_TEXT] if part.blocks else part.text


def same_content(a: Part, b: Part) -> bool:
    return a.text == b.text and a.blocks == b.blocks
