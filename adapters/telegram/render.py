"""Markdown -> Telegram: HTML parse mode, split to Telegram's limits, with a plain twin per part.

The API the Telegram adapter uses::

    parts = render_telegram(markdown)             # list[TelegramPart], each within 4,096
    frame = render_telegram(text_so_far, partial=True)  # a stream frame: cut markers healed
    await bot.send_message(chat_id, parts[0].html, parse_mode="HTML")
    # Telegram refused the markup ("can't parse entities")? resend the same part as text:
    await bot.send_message(chat_id, parts[0].plain)

    caption, rest = render_telegram_caption(markdown)   # caption within 1,024, rest within 4,096
    chunks = render_telegram_markdown(markdown)   # standard Markdown for sendRichMessage

Telegram measures text *after* entity parsing, in UTF-16 code units: a part's ``plain`` is
exactly the text Telegram counts, so every part satisfies
``utf16_len(part.plain) <= limit`` however many tags and escapes its ``html`` has.
``plain`` keeps link labels but not their URLs (that is what the HTML part shows too).

Markup used (the tags Telegram's HTML mode accepts): ``b``, ``i``, ``s``, ``code``,
``pre`` + ``code class="language-x"``, ``a href``, ``blockquote``. Headings are bold; lists are
"•"/"1." text lines; tables are monospace ``pre`` text. Telegram forbids ``code`` inside
another entity, so a code span inside bold/italic/a link is shown as its text; code blocks
and tables are set outside block quotes. Links only to absolute http(s)/mailto/tg URLs.

An empty or whitespace-only text renders to no parts (Telegram refuses empty messages).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gateway.markdown import (
    Close,
    Item,
    MarkdownRenderer,
    Open,
    Run,
    StreamRenderer,
    escape_markdown_char,
    heal_partial,
    parse,
    split,
    utf16_len,
)

TELEGRAM_TEXT_LIMIT = 4096
"""core.telegram.org/bots/api#sendmessage: text, 1-4096 characters after entities parsing."""

TELEGRAM_CAPTION_LIMIT = 1024
"""core.telegram.org/bots/api#sendphoto: caption, 0-1024 characters after entities parsing."""

TELEGRAM_RICH_TEXT_LIMIT = 32768
"""core.telegram.org/bots/api#rich-message-formatting-options: up to 32,768 characters of text
in one rich message (sendRichMessage, Bot API 10.1+)."""


@dataclass(frozen=True)
class TelegramPart:
    html: str
    """Send with ``parse_mode="HTML"``."""
    plain: str
    """The same part as plain text: what Telegram shows of ``html``; the fallback to resend
    without a parse mode when Telegram rejects the markup."""


def escape_html(text: str) -> str:
    """Escape text for Telegram's HTML parse mode (``&``, ``<``, ``>``)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _escape_attribute(value: str) -> str:
    return escape_html(value).replace('"', "&quot;")


_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}


def _escape_char(ch: str) -> str:
    return _ESCAPES.get(ch, ch)


class TelegramHTMLRenderer(StreamRenderer):
    """Walks the shared document into Telegram HTML items."""

    def quote_entity(self) -> Open | None:
        return Open("<blockquote>", "</blockquote>")

    def strong(self) -> Open:
        return Open("<b>", "</b>")

    def emphasis(self) -> Open:
        return Open("<i>", "</i>")

    def strike(self) -> Open:
        return Open("<s>", "</s>")

    def link(self, href: str) -> Open:
        return Open(f'<a href="{_escape_attribute(href)}">', "</a>")

    def code_span(self, code: str) -> list[Item]:
        if self.inside_inline_entity:  # Bot API: code can't be part of bold, italic, links...
            return [Run(code)]
        return [Open("<code>", "</code>", code=True), Run(code), Close()]

    def code_block(self, language: str) -> Open:
        language = re.sub(r"[^\w+#.-]", "", language)
        if language:
            return Open(f'<pre><code class="language-{language}">', "</code></pre>", code=True)
        return Open("<pre>", "</pre>", code=True)


def render_telegram(markdown: str, limit: int = TELEGRAM_TEXT_LIMIT, *, partial: bool = False) -> list[TelegramPart]:
    """Render Markdown to Telegram HTML parts, each at most ``limit`` UTF-16 units of text.

    ``partial=True`` for a stream frame (text still arriving): markers the stream cut open
    (``**bold so fa``, a link whose URL is incomplete) render as they will when finished
    (:func:`gateway.markdown.heal_partial`)."""
    if partial:
        markdown = heal_partial(markdown)
    items = TelegramHTMLRenderer().render(parse(markdown))
    parts = split(items, limit=limit, escape=_escape_char, length=utf16_len, measure="plain")
    return [TelegramPart(p.markup, p.plain) for p in parts]


def render_telegram_caption(markdown: str) -> tuple[TelegramPart | None, list[TelegramPart]]:
    """Split for a media message: a caption within 1,024 and the rest as messages within 4,096.

    Returns ``(None, [])`` for empty text."""
    items = TelegramHTMLRenderer().render(parse(markdown))
    parts = split(
        items,
        limit=TELEGRAM_TEXT_LIMIT,
        first_limit=TELEGRAM_CAPTION_LIMIT,
        escape=_escape_char,
        length=utf16_len,
        measure="plain",
    )
    rendered = [TelegramPart(p.markup, p.plain) for p in parts]
    if not rendered:
        return None, []
    return rendered[0], rendered[1:]


def render_telegram_markdown(
    markdown: str, limit: int = TELEGRAM_RICH_TEXT_LIMIT, *, partial: bool = False
) -> list[str]:
    """Standard Markdown parts for ``sendRichMessage`` (``InputRichMessage(markdown=...)``),
    which Telegram parses server-side (headings, tables, lists and code natively).

    The Markdown is normalised from the same parse (raw HTML escaped, unsafe links reduced to
    their label) and split with fences and emphasis balanced; the markup is measured, in
    UTF-16 units, so each part is within ``limit`` however Telegram counts it. ``partial``
    as for :func:`render_telegram` (for ``sendRichMessageDraft`` frames)."""
    if partial:
        markdown = heal_partial(markdown)
    items = MarkdownRenderer().render(parse(markdown))
    parts = split(items, limit=limit, escape=escape_markdown_char, length=utf16_len, measure="markup")
    return [p.markup for p in parts]
