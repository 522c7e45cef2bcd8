"""Markdown -> the Slack message parts we post: the bridge to the shared renderer.

``adapters.slack.render.render_slack`` (one markdown-it parse, split at Slack's limits) is the
renderer. Until it is importable this module falls back to a plain splitter that puts the
Markdown in ``markdown`` blocks, cut at paragraph, then line, then character boundaries, so the
adapter never sends more than Slack accepts and never drops text.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from adapters.slack.limits import MAX_MARKDOWN_BLOCK_TOTAL, MAX_TEXT

Style = Literal["markdown", "mrkdwn"]


class Part(Protocol):
    text: str
    blocks: list[dict[str, Any]]


@dataclass
class FallbackPart:
    text: str
    blocks: list[dict[str, Any]] = field(default_factory=list)


def _pieces(markdown: str, limit: int) -> list[str]:
    """Cut ``markdown`` into pieces of at most ``limit`` characters, preferring blank lines, then
    line ends; the pieces concatenate back to the input."""
    pieces: list[str] = []
    rest = markdown
    while len(rest) > limit:
        window = rest[:limit]
        cut = window.rfind("\n\n")
        if cut <= 0:
            cut = window.rfind("\n")
        cut = limit if cut <= 0 else cut + 1
        pieces.append(rest[:cut])
        rest = rest[cut:]
    if rest or not pieces:
        pieces.append(rest)
    return pieces


def _fallback_render(markdown: str) -> list[Part]:
    return [
        FallbackPart(text=piece[:MAX_TEXT], blocks=[{"type": "markdown", "text": piece}])
        for piece in _pieces(markdown, MAX_MARKDOWN_BLOCK_TOTAL)
        if piece.strip()
    ]


def render_parts(markdown: str, *, style: Style = "markdown") -> list[Part]:
    """The messages that carry ``markdown``, in order (empty for blank text)."""
    if not markdown.strip():
        return []
    try:
        from adapters.slack.render import render_slack
    except ImportError:
        return _fallback_render(markdown)
    parts = render_slack(markdown, style=style)
    return list(parts)


RENDER_INLINE_MAX = 2_000
"""Characters rendered on the event loop; longer texts render in a worker thread so a burst of
long final texts (many replies finishing at once) does not hold up other conversations' I/O."""


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
