"""Markdown -> Slack messages: Block Kit ``markdown`` blocks or mrkdwn ``section`` blocks.

The API the Slack adapter uses::

    for part in render_slack(markdown):                    # style="markdown" (the default)
        await client.chat_postMessage(channel=..., text=part.text, blocks=part.blocks)

    parts = render_slack(markdown, style="mrkdwn")         # section blocks, for surfaces
                                                           # without markdown blocks
    frame = render_slack(text_so_far, partial=True)        # a stream frame: cut markers healed

Each :class:`SlackPart` is one message: ``blocks`` to send, and ``text``, the plain-text
fallback Slack shows in notifications (and where blocks cannot be shown). Text longer than one
message allows becomes several parts, never truncated.

* ``style="markdown"``: one ``markdown`` block per message carrying standard Markdown (Slack
  renders it: bold, italic, strike, links, lists, quotes, code, headings, tables). All
  markdown blocks of a payload share 12,000 characters, so each part holds at most that.
* ``style="mrkdwn"``: ``section`` blocks of Slack mrkdwn (``*bold*``, ``_italic_``, ``~strike~``,
  ```code```, fenced pre, ``<url|label>``, ``&``/``<``/``>`` escaped), each section within
  3,000 characters, at most 50 blocks and 12,000 characters of block text per message. Lists
  are bullet lines, headings bold, tables a monospace code block.

Splits fall at paragraph, then line, sentence and word boundaries; formatting and code blocks
cut by a split are closed and reopened (see ``gateway.markdown``). Links only to absolute
http(s)/mailto/tg URLs; raw HTML in the Markdown is shown as text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from gateway.markdown import (
    Close,
    Item,
    MarkdownRenderer,
    Open,
    Part,
    Run,
    StreamRenderer,
    Token,
    escape_markdown_char,
    heal_partial,
    parse,
    split,
    utf16_len,
)

SLACK_MARKDOWN_BLOCKS_LIMIT = 12_000
"""docs.slack.dev/reference/block-kit/blocks/markdown-block: the cumulative limit for all
markdown blocks in a single payload is 12,000 characters."""

SLACK_SECTION_TEXT_LIMIT = 3_000
"""docs.slack.dev/reference/block-kit/blocks/section-block: ``text`` max 3,000 characters."""

SLACK_MAX_BLOCKS = 50
"""docs.slack.dev/reference/block-kit/blocks: up to 50 blocks in each message."""

SLACK_MESSAGE_BLOCKS_TEXT_BUDGET = 12_000
"""Block text per message. Slack rejects blocks whose text adds up past ~13,200 characters
with ``msg_blocks_too_long`` although no single limit is exceeded (slackapi/bolt-js#2509);
section messages keep to the markdown blocks' documented 12,000."""

SLACK_TEXT_LIMIT = 40_000
"""docs.slack.dev/reference/methods/chat.postMessage: ``text`` is truncated past 40,000
characters."""

SlackStyle = Literal["markdown", "mrkdwn"]


@dataclass(frozen=True)
class SlackPart:
    """One Slack message: send ``blocks`` with ``text`` as the notification/fallback text."""

    text: str
    blocks: list[dict[str, Any]] = field(default_factory=list)


_MRKDWN_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}


def escape_mrkdwn(text: str) -> str:
    """Escape text for Slack mrkdwn (``&``, ``<``, ``>``: the only characters Slack escapes)."""
    return "".join(_MRKDWN_ESCAPES.get(ch, ch) for ch in text)


def _escape_mrkdwn_char(ch: str) -> str:
    return _MRKDWN_ESCAPES.get(ch, ch)


class SlackMrkdwnRenderer(StreamRenderer):
    """Walks the shared document into Slack mrkdwn items."""

    quote_prefix = Token("> ", "", line_prefix=True)
    nested_quotes = False

    def strong(self) -> Open:
        return Open("*", "*")

    def emphasis(self) -> Open:
        return Open("_", "_")

    def strike(self) -> Open:
        return Open("~", "~")

    def link(self, href: str) -> Open:
        return Open(f"<{escape_mrkdwn(href)}|", ">")

    def code_span(self, code: str) -> list[Item]:
        if self.inside_inline_entity or "`" in code:
            # mrkdwn has no code inside bold/links, and no way to put a backtick in code.
            return [Run(code)]
        return [Open("`", "`", code=True), Run(code), Close()]

    def code_block(self, language: str) -> Open:
        return Open("```\n", "\n```", code=True)


def render_slack(markdown: str, *, style: SlackStyle = "markdown", partial: bool = False) -> list[SlackPart]:
    """Render Markdown as one or more Slack messages (see the module docstring).

    ``partial=True`` for a stream frame (text still arriving): markers the stream cut open
    (``**bold so fa``, a link whose URL is incomplete) render as they will when finished."""
    doc = parse(heal_partial(markdown) if partial else markdown)
    if style == "markdown":
        items = MarkdownRenderer().render(doc)
        parts = split(
            items,
            limit=SLACK_MARKDOWN_BLOCKS_LIMIT,
            escape=escape_markdown_char,
            length=utf16_len,
            measure="markup",
        )
        return [SlackPart(text=_fallback_text([p]), blocks=[{"type": "markdown", "text": p.markup}]) for p in parts]
    if style == "mrkdwn":
        items = SlackMrkdwnRenderer().render(doc)
        sections = split(
            items,
            limit=SLACK_SECTION_TEXT_LIMIT,
            escape=_escape_mrkdwn_char,
            length=utf16_len,
            measure="markup",
        )
        return [_section_message(group) for group in _group_sections(sections)]
    raise ValueError(f"unknown Slack style {style!r}: use 'markdown' or 'mrkdwn'")


def _group_sections(sections: list[Part]) -> list[list[Part]]:
    groups: list[list[Part]] = []
    current: list[Part] = []
    used = 0
    for section in sections:
        size = utf16_len(section.markup)
        if current and (len(current) >= SLACK_MAX_BLOCKS or used + size > SLACK_MESSAGE_BLOCKS_TEXT_BUDGET):
            groups.append(current)
            current, used = [], 0
        current.append(section)
        used += size
    if current:
        groups.append(current)
    return groups


def _section_message(sections: list[Part]) -> SlackPart:
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": s.markup}} for s in sections]
    return SlackPart(text=_fallback_text(sections), blocks=blocks)


def _fallback_text(parts: list[Part]) -> str:
    # Parts are at most 12,000 characters, far below SLACK_TEXT_LIMIT: nothing to truncate.
    return "\n".join(p.plain for p in parts)
