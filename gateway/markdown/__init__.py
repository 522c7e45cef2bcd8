"""One Markdown parse shared by every renderer, and the limit-aware splitter they all use.

The pipeline every platform renderer follows::

    doc = parse(markdown)                 # markdown-it-py (CommonMark + tables + strikethrough)
    items = MyRenderer().render(doc)      # a subclass of StreamRenderer: Document -> Items
    parts = split(items, limit=..., escape=..., length=..., measure="plain" | "markup")

* :func:`parse` turns Markdown into a small typed :class:`Document` (blocks and inlines below).
  Raw HTML is never interpreted (it stays text), and links whose target is not an absolute
  ``http``/``https``/``mailto``/``tg`` URL are kept as their label only (:func:`safe_href`).
  Partial Markdown from a stream cut mid-token renders sanely: an unclosed code fence runs to
  the end of the text, an unclosed ``**`` or backtick stays literal. For stream frames,
  :func:`heal_partial` first closes what the cut left open, so a frame looks like the end.
* A :class:`StreamRenderer` subclass walks the document into *items*: content text
  (:class:`Run`, :class:`Token`), separators where a split is welcome (:class:`Gap`), and
  entities (:class:`Open` ... :class:`Close`: bold, links, code blocks, quotes) with the
  platform's own markup. The renderer decides the markup; it never decides where to split.
* :func:`split` packs items into :class:`Part` values, each within ``limit`` as measured by the
  caller's ``length`` function, over either the markup (Slack counts what it is sent) or the
  visible text (Telegram counts text after entity parsing). It breaks at the best boundary that
  fits: paragraph, then line, then sentence, then word, then (last resort) between characters.
  An entity cut by a split is closed at the end of the part and reopened at the start of the
  next, so an oversized code block becomes several complete code blocks. Only the separator the
  split falls on (a blank line, a newline, a space) is dropped; no other character of content
  is lost or repeated. (Quote markers and list indentation are line prefixes, not entities: a
  single quoted line longer than a whole part continues unquoted in the next part.)

:class:`MarkdownRenderer` serialises the document back to normalised CommonMark, for the
platforms that take standard Markdown (Slack ``markdown`` blocks, Telegram rich messages), so
that long text can be split there with entities balanced too.

Everything here is platform-free: platform limits and markup live in ``adapters/<platform>/``.
"""

from __future__ import annotations

from gateway.markdown.document import (
    SAFE_URL_SCHEMES,
    Align,
    Block,
    BlockQuote,
    Cell,
    CodeBlock,
    CodeSpan,
    Document,
    Emphasis,
    Heading,
    Inline,
    LineBreak,
    Link,
    ListBlock,
    ListItem,
    Paragraph,
    Strikethrough,
    Strong,
    Table,
    Text,
    ThematicBreak,
    inline_plain,
    parse,
    safe_href,
)
from gateway.markdown.items import BreakLevel, Close, Gap, Item, Open, Part, Run, Token, utf16_len
from gateway.markdown.partial import heal_partial
from gateway.markdown.renderer import StreamRenderer, monospace_table
from gateway.markdown.split import split
from gateway.markdown.writer import MarkdownRenderer, escape_markdown_char, inline_plain_row, plain_text

__all__ = [
    "SAFE_URL_SCHEMES",
    "Align",
    "Block",
    "BlockQuote",
    "BreakLevel",
    "Cell",
    "Close",
    "CodeBlock",
    "CodeSpan",
    "Document",
    "Emphasis",
    "Gap",
    "Heading",
    "Inline",
    "Item",
    "LineBreak",
    "Link",
    "ListBlock",
    "ListItem",
    "MarkdownRenderer",
    "Open",
    "Paragraph",
    "Part",
    "Run",
    "StreamRenderer",
    "Strikethrough",
    "Strong",
    "Table",
    "Text",
    "ThematicBreak",
    "Token",
    "escape_markdown_char",
    "heal_partial",
    "inline_plain",
    "inline_plain_row",
    "monospace_table",
    "parse",
    "plain_text",
    "safe_href",
    "split",
    "utf16_len",
]
