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

import re
import unicodedata
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Literal
from urllib.parse import urlsplit

from markdown_it import MarkdownIt
from markdown_it.token import Token as MdToken

# --------------------------------------------------------------------------------------------
# The document model
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class Strong:
    children: tuple[Inline, ...]


@dataclass(frozen=True)
class Emphasis:
    children: tuple[Inline, ...]


@dataclass(frozen=True)
class Strikethrough:
    children: tuple[Inline, ...]


@dataclass(frozen=True)
class CodeSpan:
    code: str


@dataclass(frozen=True)
class Link:
    href: str
    """Always a safe absolute URL (see :func:`safe_href`)."""
    children: tuple[Inline, ...]


@dataclass(frozen=True)
class LineBreak:
    hard: bool
    """``False`` for a soft break (a newline in the source): chat platforms show it as one."""


Inline = Text | Strong | Emphasis | Strikethrough | CodeSpan | Link | LineBreak


@dataclass(frozen=True)
class Paragraph:
    children: tuple[Inline, ...]


@dataclass(frozen=True)
class Heading:
    level: int
    children: tuple[Inline, ...]


@dataclass(frozen=True)
class CodeBlock:
    code: str
    """The code without its final newline."""
    language: str = ""


@dataclass(frozen=True)
class BlockQuote:
    blocks: tuple[Block, ...]


@dataclass(frozen=True)
class ListItem:
    blocks: tuple[Block, ...]


@dataclass(frozen=True)
class ListBlock:
    ordered: bool
    items: tuple[ListItem, ...]
    start: int = 1


Cell = tuple[Inline, ...]
Align = Literal["left", "right", "center", ""]


@dataclass(frozen=True)
class Table:
    header: tuple[Cell, ...]
    rows: tuple[tuple[Cell, ...], ...]
    aligns: tuple[Align, ...]


@dataclass(frozen=True)
class ThematicBreak:
    pass


Block = Paragraph | Heading | CodeBlock | BlockQuote | ListBlock | Table | ThematicBreak


@dataclass(frozen=True)
class Document:
    blocks: tuple[Block, ...]


# --------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------

SAFE_URL_SCHEMES = frozenset({"http", "https", "mailto", "tg"})


def safe_href(url: str) -> str | None:
    """The URL if a chat platform can safely link to it, else ``None``.

    Only absolute ``http``/``https`` (with a host), ``mailto`` and ``tg`` URLs pass: this
    refuses ``javascript:``, ``data:``, ``vbscript:``, ``file:`` and relative links (which no
    chat platform can resolve). Control characters and whitespace are refused outright.
    """
    url = url.strip()
    if not url or any(ch.isspace() or unicodedata.category(ch) == "Cc" for ch in url):
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in SAFE_URL_SCHEMES:
        return None
    if scheme in ("http", "https") and not parts.netloc:
        return None
    return url


def _markdown_it() -> MarkdownIt:
    # html=False: raw HTML stays literal text, so "<script>" is content that every renderer
    # escapes. markdown-it's own validateLink already drops javascript:/vbscript:/file:/data:.
    return MarkdownIt("commonmark", {"html": False}).enable(["table", "strikethrough"])


def parse(markdown: str) -> Document:
    """Parse Markdown (CommonMark + GFM tables + ``~~strike~~``) into a :class:`Document`."""
    tokens = _markdown_it().parse(markdown)
    blocks, _ = _parse_blocks(tokens, 0, None)
    return Document(tuple(blocks))


def _parse_blocks(tokens: list[MdToken], i: int, until: str | None) -> tuple[list[Block], int]:
    blocks: list[Block] = []
    while i < len(tokens):
        tok = tokens[i]
        if until is not None and tok.type == until:
            return blocks, i + 1
        kind = tok.type
        if kind == "paragraph_open":
            blocks.append(Paragraph(_inlines(tokens[i + 1])))
            i += 3
        elif kind == "heading_open":
            blocks.append(Heading(int(tok.tag[1:]), _inlines(tokens[i + 1])))
            i += 3
        elif kind in ("fence", "code_block"):
            language = tok.info.strip().split(maxsplit=1)[0] if tok.info.strip() else ""
            code = tok.content[:-1] if tok.content.endswith("\n") else tok.content
            blocks.append(CodeBlock(code, language))
            i += 1
        elif kind == "hr":
            blocks.append(ThematicBreak())
            i += 1
        elif kind == "blockquote_open":
            inner, i = _parse_blocks(tokens, i + 1, "blockquote_close")
            blocks.append(BlockQuote(tuple(inner)))
        elif kind in ("bullet_list_open", "ordered_list_open"):
            ordered = kind == "ordered_list_open"
            start = int(tok.attrs.get("start", 1) or 1) if ordered else 1
            close = "ordered_list_close" if ordered else "bullet_list_close"
            items: list[ListItem] = []
            i += 1
            while tokens[i].type != close:
                inner, i = _parse_blocks(tokens, i + 1, "list_item_close")
                items.append(ListItem(tuple(inner)))
            blocks.append(ListBlock(ordered, tuple(items), start))
            i += 1
        elif kind == "table_open":
            table, i = _parse_table(tokens, i + 1)
            blocks.append(table)
        elif kind == "inline":  # html_block is disabled; be lenient with anything inline-ish
            blocks.append(Paragraph(_inlines(tok)))
            i += 1
        else:
            i += 1
    return blocks, i


def _parse_table(tokens: list[MdToken], i: int) -> tuple[Table, int]:
    header: list[Cell] = []
    rows: list[tuple[Cell, ...]] = []
    aligns: list[Align] = []
    row: list[Cell] = []
    while tokens[i].type != "table_close":
        tok = tokens[i]
        if tok.type == "tr_open":
            row = []
        elif tok.type in ("th_open", "td_open"):
            if tok.type == "th_open":
                style = str(tok.attrs.get("style", ""))
                align = style.removeprefix("text-align:")
                aligns.append(align if align in ("left", "right", "center") else "")  # type: ignore[arg-type]
            row.append(_inlines(tokens[i + 1]))
            i += 2
        elif tok.type == "tr_close":
            if not header:
                header = row
            else:
                rows.append(tuple(row))
        i += 1
    width = len(header)
    padded = tuple(tuple(r[:width]) + ((),) * (width - len(r)) for r in rows)
    return Table(tuple(header), padded, tuple(aligns)), i + 1


_INLINE_CONTAINERS: dict[str, type[Strong] | type[Emphasis] | type[Strikethrough]] = {
    "strong_open": Strong,
    "em_open": Emphasis,
    "s_open": Strikethrough,
}


def _inlines(tok: MdToken) -> tuple[Inline, ...]:
    children = tok.children or []
    out, _ = _parse_inlines(children, 0, None)
    return tuple(_merge_text(out))


def _parse_inlines(children: list[MdToken], i: int, until: str | None) -> tuple[list[Inline], int]:
    out: list[Inline] = []
    while i < len(children):
        tok = children[i]
        kind = tok.type
        if until is not None and kind == until:
            return out, i + 1
        if kind in _INLINE_CONTAINERS:
            inner, i = _parse_inlines(children, i + 1, kind.replace("_open", "_close"))
            out.append(_INLINE_CONTAINERS[kind](tuple(_merge_text(inner))))
            continue
        if kind == "link_open":
            inner, i = _parse_inlines(children, i + 1, "link_close")
            href = safe_href(str(tok.attrs.get("href", "")))
            inner = _merge_text(inner)
            if href is None:
                out.extend(inner)
            else:
                out.append(Link(href, tuple(inner)))
            continue
        if kind == "image":
            alt = tok.content or str(tok.attrs.get("src", ""))
            href = safe_href(str(tok.attrs.get("src", "")))
            out.append(Link(href, (Text(alt),)) if href else Text(alt))
        elif kind == "code_inline":
            out.append(CodeSpan(tok.content))
        elif kind == "softbreak":
            out.append(LineBreak(hard=False))
        elif kind == "hardbreak":
            out.append(LineBreak(hard=True))
        elif tok.content:  # text, html_inline (literal), anything unknown with content
            out.append(Text(tok.content))
        i += 1
    return out, i


def _merge_text(inlines: Iterable[Inline]) -> list[Inline]:
    merged: list[Inline] = []
    for node in inlines:
        if isinstance(node, Text) and merged and isinstance(merged[-1], Text):
            merged[-1] = Text(merged[-1].text + node.text)
        else:
            merged.append(node)
    return merged


def inline_plain(inlines: Iterable[Inline]) -> str:
    """The visible text of inline content, without any markup."""
    out: list[str] = []
    for node in inlines:
        if isinstance(node, Text):
            out.append(node.text)
        elif isinstance(node, CodeSpan):
            out.append(node.code)
        elif isinstance(node, LineBreak):
            out.append("\n")
        else:
            out.append(inline_plain(node.children))
    return "".join(out)


# --------------------------------------------------------------------------------------------
# Items: what a renderer produces and the splitter packs
# --------------------------------------------------------------------------------------------


class BreakLevel(IntEnum):
    """How good a place to split is; the splitter takes the best one that fits."""

    CHAR = 0
    WORD = 1
    SENTENCE = 2
    LINE = 3
    PARAGRAPH = 4


@dataclass(frozen=True)
class Run:
    """Content text: escaped character by character; the splitter may cut it at any boundary."""

    text: str


@dataclass(frozen=True)
class Token:
    """An unsplittable unit: ``markup`` is sent as-is, ``plain`` is its visible text (may be empty,
    e.g. a ``> `` quote prefix that only the markup has)."""

    markup: str
    plain: str
    line_prefix: bool = False
    """A quote marker or list indentation at the start of a line: entities reopened after a
    split open after it (``> **bold**``, not ``**> bold**``)."""


@dataclass(frozen=True)
class Gap:
    """A separator where a split is welcome (between blocks, lines, list items). When a split
    falls on it, it is dropped; otherwise it is sent like a :class:`Token`."""

    markup: str
    plain: str
    level: BreakLevel


@dataclass(frozen=True)
class Open:
    """Starts an entity. ``close`` ends it; both are reissued when a split cuts the entity.

    ``code``: code text (no sentence breaks; splits only at lines, then words).
    ``verbatim``: text inside is sent unescaped (Markdown code; HTML code is still escaped).
    ``reopen``: markup to start a continuation part with instead of ``markup`` (a table's
    header repeated, say); it is markup only, never part of the plain text.
    """

    markup: str
    close: str
    code: bool = False
    reopen: str | None = None
    verbatim: bool = False


@dataclass(frozen=True)
class Close:
    pass


Item = Run | Token | Gap | Open | Close


@dataclass(frozen=True)
class Part:
    """One message's worth of rendered output."""

    markup: str
    plain: str


def utf16_len(text: str) -> int:
    """Length in UTF-16 code units (Telegram and JavaScript count these)."""
    return len(text.encode("utf-16-le")) // 2


# --------------------------------------------------------------------------------------------
# The splitter
# --------------------------------------------------------------------------------------------

_SENTENCE_END = frozenset(".!?…")
_CJK_SENTENCE_END = frozenset("。！？")


@dataclass
class _Atoms:
    """The item stream flattened to atoms (one character of a Run, or one whole item)."""

    markup: list[str] = field(default_factory=list)
    plain: list[str] = field(default_factory=list)
    kind: list[str] = field(default_factory=list)  # "c" content, "p" line prefix, "g" gap, "o"/"x" entity
    entity: list[Open | None] = field(default_factory=list)
    stack: list[tuple[Open, ...]] = field(default_factory=list)  # entities open before atom i
    breaks: dict[int, tuple[BreakLevel, int]] = field(default_factory=dict)  # i -> (level, skip)

    def add(self, markup: str, plain: str, kind: str, entity: Open | None, stack: tuple[Open, ...]) -> int:
        self.markup.append(markup)
        self.plain.append(plain)
        self.kind.append(kind)
        self.entity.append(entity)
        self.stack.append(stack)
        return len(self.markup) - 1


def _grapheme_continues(prev: str, ch: str) -> bool:
    """True if a split between ``prev`` and ``ch`` would cut a user-perceived character."""
    if ch < "\u0300" and prev < "\u0300":
        return prev == "\r" and ch == "\n"
    if prev == "\r" and ch == "\n":
        return True
    if prev == "\u200d" or ch in ("\u200d", "\ufe0f", "\ufe0e"):
        return True
    if 0x1F3FB <= ord(ch) <= 0x1F3FF:  # skin-tone modifiers
        return True
    if 0x1F1E6 <= ord(prev) <= 0x1F1FF and 0x1F1E6 <= ord(ch) <= 0x1F1FF:  # flag pairs (approx.)
        return True
    return unicodedata.category(ch) in ("Mn", "Me", "Mc")


def _flatten(items: Iterable[Item], escape: Callable[[str], str]) -> _Atoms:
    atoms = _Atoms()
    stack: tuple[Open, ...] = ()
    for item in items:
        if isinstance(item, Run):
            in_code = any(entity.code for entity in stack)
            verbatim = any(entity.verbatim for entity in stack)
            text = item.text
            for pos, ch in enumerate(text):
                index = atoms.add(ch if verbatim else escape(ch), ch, "c", None, stack)
                prev = text[pos - 1] if pos else ""
                if ch == "\n":
                    atoms.breaks[index] = (BreakLevel.LINE, 1)
                elif ch == " " or ch == "\t":
                    sentence = not in_code and prev in _SENTENCE_END
                    atoms.breaks[index] = (BreakLevel.SENTENCE if sentence else BreakLevel.WORD, 1)
                elif prev in _CJK_SENTENCE_END and not in_code:
                    atoms.breaks[index] = (BreakLevel.SENTENCE, 0)
                elif prev and _grapheme_continues(prev, ch):
                    atoms.breaks[index] = (BreakLevel.CHAR, -1)  # -1: never split here
        elif isinstance(item, Token):
            atoms.add(item.markup, item.plain, "p" if item.line_prefix else "c", None, stack)
        elif isinstance(item, Gap):
            index = atoms.add(item.markup, item.plain, "g", None, stack)
            atoms.breaks[index] = (item.level, 1)
        elif isinstance(item, Open):
            atoms.add(item.markup, "", "o", item, stack)
            stack = (*stack, item)
        else:
            if not stack:
                raise ValueError("Close without a matching Open in the rendered items")
            closing = stack[-1]
            atoms.add(closing.close, "", "x", closing, stack)
            stack = stack[:-1]
    atoms.stack.append(stack)  # the state after the last atom
    return atoms


def split(
    items: Iterable[Item],
    *,
    limit: int,
    escape: Callable[[str], str] = lambda ch: ch,
    length: Callable[[str], int] = len,
    measure: Literal["markup", "plain"] = "markup",
    first_limit: int | None = None,
) -> list[Part]:
    """Pack rendered items into parts of at most ``limit`` (``first_limit`` for the first part).

    ``escape`` turns one content character into markup (``&`` -> ``&amp;``); ``length`` measures
    a string (``len``, :func:`utf16_len`); ``measure`` says what the platform counts: the markup
    it is sent, or the visible text left after it parses the markup (Telegram).

    A part can exceed the limit only when one unsplittable :class:`Token` (or the markup needed
    to reopen its entities) is larger than the limit by itself. Parts with no visible content
    are dropped, so an empty document gives ``[]``.
    """
    if limit < 1 or (first_limit is not None and first_limit < 1):
        raise ValueError("limit must be positive")
    atoms = _flatten(items, escape)
    count = len(atoms.markup)
    use_markup = measure == "markup"

    cost = [0] * count
    for i in range(count):
        if atoms.kind[i] in ("c", "p", "g"):
            cost[i] = length(atoms.markup[i] if use_markup else atoms.plain[i])
        elif use_markup:
            cost[i] = length(atoms.markup[i])

    def open_cost(stack: tuple[Open, ...]) -> int:
        if not use_markup:
            return 0
        return sum(length(e.reopen if e.reopen is not None else e.markup) for e in stack)

    close_costs: dict[int, int] = {}  # by id(): the stack tuples are shared between atoms

    def close_cost(stack: tuple[Open, ...]) -> int:
        if not use_markup or not stack:
            return 0
        key = id(stack)
        if key not in close_costs:
            close_costs[key] = sum(length(e.close) for e in stack)
        return close_costs[key]

    parts: list[Part] = []
    start = 0
    budget = first_limit if first_limit is not None else limit
    while start < count:
        end, skip = _choose_end(atoms, cost, start, budget, open_cost, close_cost)
        part = _emit(atoms, start, end)
        if part.plain.strip():
            parts.append(part)
            budget = limit
        start = end + skip
        while start < count and atoms.kind[start] == "g":
            start += 1  # a separator never opens a part
    return parts


def _choose_end(
    atoms: _Atoms,
    cost: Sequence[int],
    start: int,
    budget: int,
    open_cost: Callable[[tuple[Open, ...]], int],
    close_cost: Callable[[tuple[Open, ...]], int],
) -> tuple[int, int]:
    """The best ``(end, skip)`` for a part starting at ``start``: the part is atoms
    ``[start, end)`` and the next starts at ``end + skip`` (skipping the separator)."""
    count = len(cost)
    used = open_cost(atoms.stack[start])
    best: tuple[BreakLevel, int, int] | None = None  # (level, end, skip)
    furthest_char = -1
    index = start
    while index < count:
        used += cost[index]
        if used > budget:
            break
        index += 1
        if index == count:
            return count, 0  # everything left fits
        fits = used + close_cost(atoms.stack[index]) <= budget
        if not fits:
            continue
        level, skip = atoms.breaks.get(index, (BreakLevel.CHAR, 0))
        if skip < 0:
            continue
        if level > BreakLevel.CHAR and (best is None or level >= best[0]):
            best = (level, index, skip)
        furthest_char = index
    if best is not None:
        return best[1], best[2]
    if furthest_char > start:
        return furthest_char, 0
    # Nothing fits: one atom must go alone (an oversized Token), or progress stops.
    end = start + 1
    while end < count and atoms.kind[end - 1] not in ("c", "p", "g"):
        end += 1
    _, skip = atoms.breaks.get(end, (BreakLevel.CHAR, 0))
    return end, max(skip, 0)


@dataclass
class _OpenEntity:
    entity: Open
    reopened: bool
    written: bool = False


def _emit(atoms: _Atoms, start: int, end: int) -> Part:
    """Render atoms ``[start, end)``: entities cut at ``start`` reopen, those cut at ``end`` close.
    An entity opens lazily at its first content, so none is ever emitted empty."""
    markup: list[str] = []
    plain: list[str] = []
    stack = [_OpenEntity(entity, reopened=True) for entity in atoms.stack[start]]
    for i in range(start, end):
        kind = atoms.kind[i]
        entity = atoms.entity[i]
        if kind == "o" and entity is not None:
            stack.append(_OpenEntity(entity, reopened=False))
        elif kind == "x":
            closing = stack.pop()
            if closing.written:
                markup.append(closing.entity.close)
        elif kind == "p" and not all(entry.written for entry in stack):
            markup.append(atoms.markup[i])  # before the entities waiting to (re)open
            plain.append(atoms.plain[i])
        else:
            for entry in stack:
                if not entry.written:
                    reopen = entry.entity.reopen if entry.reopened else None
                    markup.append(reopen if reopen is not None else entry.entity.markup)
                    entry.written = True
            markup.append(atoms.markup[i])
            plain.append(atoms.plain[i])
    for entry in reversed(stack):
        if entry.written:
            markup.append(entry.entity.close)
    return Part("".join(markup), "".join(plain))


# --------------------------------------------------------------------------------------------
# Walking a document into items
# --------------------------------------------------------------------------------------------


class StreamRenderer(ABC):
    """Walks a :class:`Document` into :class:`Item` values; subclasses supply the markup.

    Lists become text lines ("• item", "1. item", nested ones indented), since no chat markup
    has list entities. Block quotes are an entity (``quote_entity``) or a per-line prefix
    (``quote_prefix``). Code blocks are never put inside a quote: a quote is closed around
    them, since some platforms refuse ``pre`` inside a quote.
    """

    bullets: tuple[str, ...] = ("•", "◦", "▪")
    quote_prefix: Token | None = None
    """Markup put at the start of each quoted line (mrkdwn / Markdown ``> ``)."""
    blank_quote_line: str = ""
    """Markup of an empty quoted line between two quoted blocks (Markdown ``>``)."""
    nested_quotes: bool = True
    """Whether a quote inside a quote gets a second prefix (mrkdwn has no nested quotes)."""

    def __init__(self) -> None:
        self.items: list[Item] = []
        self._prefix: list[Token] = []
        self._quote_depth = 0
        self._quote_suspended = False
        self._inline_depth = 0

    # ---- markup hooks (subclasses override) -------------------------------------------------

    def quote_entity(self) -> Open | None:
        return None

    @abstractmethod
    def strong(self) -> Open: ...

    @abstractmethod
    def emphasis(self) -> Open: ...

    @abstractmethod
    def strike(self) -> Open: ...

    @abstractmethod
    def link(self, href: str) -> Open: ...

    @abstractmethod
    def code_span(self, code: str) -> list[Item]: ...

    @abstractmethod
    def code_block(self, language: str) -> Open: ...

    def heading(self, node: Heading) -> None:
        self.items.append(self.strong())
        self.inlines(node.children)
        self.items.append(Close())

    def table(self, node: Table) -> None:
        self.items.append(self.code_block(""))
        self.items.append(Run(monospace_table(node)))
        self.items.append(Close())

    def thematic_break(self) -> None:
        self.items.append(Token("──────────", "──────────"))

    # ---- the walk ------------------------------------------------------------------------------

    def render(self, doc: Document) -> list[Item]:
        self.items = []
        self.blocks(doc.blocks)
        return self.items

    def _separator(self, gap: Gap, *, prefix: bool = True) -> None:
        self.items.append(gap)
        if self._quote_suspended:  # a code block interrupted the quote entity: resume it
            quote = self.quote_entity()
            if quote is not None:
                self.items.append(quote)
            self._quote_suspended = False
        if prefix:
            self.items.extend(self._prefix)

    def newline(self, level: BreakLevel = BreakLevel.LINE) -> None:
        self._separator(Gap("\n", "\n", level))

    def blank_line(self) -> None:
        """The separator between two blocks."""
        if self._prefix and self.blank_quote_line:
            marker = "".join(t.markup for t in self._prefix).rstrip()
            self._separator(Gap("\n" + marker + "\n", "\n\n", BreakLevel.PARAGRAPH))
        else:
            self._separator(Gap("\n\n", "\n\n", BreakLevel.PARAGRAPH))

    def blocks(self, blocks: Sequence[Block]) -> None:
        for index, block in enumerate(blocks):
            if index:
                if isinstance(block, CodeBlock) or isinstance(blocks[index - 1], CodeBlock):
                    self._plain_blank_line(block)
                else:
                    self.blank_line()
            self.block(block)

    def _plain_blank_line(self, block: Block) -> None:
        # Code blocks stand outside quotes: no prefix before one, prefixes again after one.
        self._separator(Gap("\n\n", "\n\n", BreakLevel.PARAGRAPH), prefix=not isinstance(block, CodeBlock))

    def block(self, block: Block) -> None:
        if isinstance(block, Paragraph):
            self.inlines(block.children)
        elif isinstance(block, Heading):
            self.heading(block)
        elif isinstance(block, CodeBlock):
            self._code_block(block)
        elif isinstance(block, BlockQuote):
            self._quote(block)
        elif isinstance(block, ListBlock):
            self._list(block, depth=0)
        elif isinstance(block, Table):
            self._detached(lambda: self.table(block))
        else:
            self.thematic_break()

    def _code_block(self, block: CodeBlock) -> None:
        def emit() -> None:
            self.items.append(self.code_block(block.language))
            self.items.append(Run(block.code))
            self.items.append(Close())

        self._detached(emit)

    def _detached(self, emit: Callable[[], None]) -> None:
        """Emit a code block or table at column 0, outside any quote or list indentation."""
        while self.items and isinstance(self.items[-1], Token) and self.items[-1] in self._prefix:
            self.items.pop()
        saved, self._prefix = self._prefix, []
        if self._quote_depth and self.quote_entity() is not None:
            # Close the quote before the separator that leads to this block; the separator
            # after the block resumes it (see _separator).
            reopened_just_now = bool(self.items) and self.items[-1] == self.quote_entity()
            if reopened_just_now:
                self.items.pop()  # the quote opened (or resumed) with nothing in it yet
            leading: list[Item] = []
            while self.items and isinstance(self.items[-1], Gap):
                leading.insert(0, self.items.pop())
            if not reopened_just_now and not self._quote_suspended:
                self.items.append(Close())
            self.items.extend(leading)
            emit()
            self._quote_suspended = True
        else:
            emit()
        self._prefix = saved

    def _quote(self, block: BlockQuote) -> None:
        quote = self.quote_entity()
        self._quote_depth += 1
        if quote is not None:
            if self._quote_depth == 1:
                self.items.append(quote)
            self.blocks(block.blocks)
            if self._quote_depth == 1:
                if self._quote_suspended:
                    self._quote_suspended = False
                else:
                    self.items.append(Close())
        elif self.quote_prefix is not None and (self.nested_quotes or self._quote_depth == 1):
            self._prefix.append(self.quote_prefix)
            self.items.append(self.quote_prefix)
            self.blocks(block.blocks)
            self._prefix.pop()
        else:
            self.blocks(block.blocks)
        self._quote_depth -= 1

    def list_marker(self, node: ListBlock, index: int, depth: int) -> str:
        if node.ordered:
            return f"{node.start + index}. "
        return self.bullets[depth % len(self.bullets)] + " "

    def _list(self, node: ListBlock, depth: int) -> None:
        for index, item in enumerate(node.items):
            if index:
                self.newline(BreakLevel.LINE)
            marker = self.list_marker(node, index, depth)
            self.items.append(Token(marker, marker))
            if item.blocks and isinstance(item.blocks[0], CodeBlock | Table):
                self.items.append(Gap("\n", "\n", BreakLevel.LINE))
            self._prefix.append(Token(" " * len(marker), " " * len(marker), line_prefix=True))
            for block_index, block in enumerate(item.blocks):
                if block_index:
                    if isinstance(block, ListBlock):
                        self.newline(BreakLevel.LINE)
                    elif isinstance(block, CodeBlock) or isinstance(item.blocks[block_index - 1], CodeBlock):
                        self._plain_blank_line(block)
                    else:
                        self.newline(BreakLevel.LINE)
                if isinstance(block, ListBlock):
                    self._list(block, depth + 1)
                else:
                    self.block(block)
            self._prefix.pop()

    def inlines(self, nodes: Iterable[Inline]) -> None:
        for node in nodes:
            if isinstance(node, Text):
                self.items.append(Run(node.text))
            elif isinstance(node, LineBreak):
                self.line_break(node.hard)
            elif isinstance(node, CodeSpan):
                self.items.extend(self.code_span(node.code))
            else:
                if isinstance(node, Strong):
                    entity = self.strong()
                elif isinstance(node, Emphasis):
                    entity = self.emphasis()
                elif isinstance(node, Strikethrough):
                    entity = self.strike()
                else:
                    entity = self.link(node.href)
                self.items.append(entity)
                self._inline_depth += 1
                self.inlines(node.children)
                self._inline_depth -= 1
                self.items.append(Close())

    def line_break(self, hard: bool) -> None:
        self.newline(BreakLevel.LINE)

    @property
    def inside_inline_entity(self) -> bool:
        return self._inline_depth > 0


def monospace_table(node: Table) -> str:
    """A table as aligned monospace text lines (for platforms without native tables)."""
    header = [inline_plain(cell).replace("\n", " ") for cell in node.header]
    rows = [[inline_plain(cell).replace("\n", " ") for cell in row] for row in node.rows]
    widths = [max([len(header[c])] + [len(r[c]) for r in rows]) for c in range(len(header))]

    def line(cells: list[str]) -> str:
        padded = []
        for column, text in enumerate(cells):
            align = node.aligns[column] if column < len(node.aligns) else ""
            if align == "right":
                padded.append(text.rjust(widths[column]))
            elif align == "center":
                padded.append(text.center(widths[column]))
            else:
                padded.append(text.ljust(widths[column]))
        return " | ".join(padded).rstrip()

    rule = "-+-".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


# --------------------------------------------------------------------------------------------
# Back to Markdown (for platforms that parse standard Markdown themselves)
# --------------------------------------------------------------------------------------------

_MD_ALWAYS_ESCAPE = frozenset("\\`*_[]<>~|#")
_ENTITY_LIKE = re.compile(r"&(?=#?[0-9A-Za-z]+;)")


def escape_markdown_char(ch: str) -> str:
    """Backslash-escape one character of text that Markdown would otherwise read as syntax.

    ``&`` is left alone here: :class:`MarkdownRenderer` escapes it only where it would start an
    entity reference (``&amp;``), so "AT&T" stays as written."""
    return "\\" + ch if ch in _MD_ALWAYS_ESCAPE else ch


_LINE_START_HAZARD = re.compile(r"^(?:[-+=]|\d{1,9}[.)])")


class MarkdownRenderer(StreamRenderer):
    """Serialises a document back to normalised CommonMark (+ GFM tables, ``~~``).

    Split parts stay valid: emphasis markers, links and fences are closed at the end of a part
    and reopened at the start of the next; a table split across parts repeats its header.
    Render with ``escape=escape_markdown_char`` in :func:`split`.
    """

    bullets = ("-",)
    quote_prefix = Token("> ", "", line_prefix=True)
    blank_quote_line = ">"

    def strong(self) -> Open:
        return Open("**", "**")

    def emphasis(self) -> Open:
        return Open("*", "*")

    def strike(self) -> Open:
        return Open("~~", "~~")

    def link(self, href: str) -> Open:
        target = href.replace("\\", "%5C").replace(")", "%29").replace("(", "%28").replace(" ", "%20")
        return Open("[", f"]({target})")

    def code_span(self, code: str) -> list[Item]:
        longest = max((len(m) for m in re.findall(r"`+", code)), default=0)
        fence = "`" * (longest + 1)
        pad = " " if code.startswith("`") or code.endswith("`") or not code.strip() else ""
        return [Open(fence + pad, pad + fence, code=True, verbatim=True), Run(code), Close()]

    def code_block(self, language: str) -> Open:
        return Open(f"```{language}\n", "\n```", code=True, verbatim=True)

    def _code_block(self, block: CodeBlock) -> None:
        longest = max((len(m) for m in re.findall(r"^`{3,}", block.code, re.MULTILINE)), default=0)
        fence = "`" * max(3, longest + 1)
        language = re.sub(r"[^\w+#.-]", "", block.language)

        def emit() -> None:
            self.items.append(Open(f"{fence}{language}\n", f"\n{fence}", code=True, verbatim=True))
            self.items.append(Run(block.code))
            self.items.append(Close())

        self._detached(emit)

    def heading(self, node: Heading) -> None:
        hashes = "#" * node.level + " "
        self.items.append(Open(hashes, ""))
        self.inlines(node.children)
        self.items.append(Close())

    def thematic_break(self) -> None:
        self.items.append(Token("---", "---"))

    def line_break(self, hard: bool) -> None:
        if hard:  # two trailing spaces: harmless where a split drops the newline after them
            self.items.append(Token("  ", ""))
        self.newline(BreakLevel.LINE)
        self._line_start = True

    def list_marker(self, node: ListBlock, index: int, depth: int) -> str:
        return f"{node.start + index}. " if node.ordered else "- "

    def table(self, node: Table) -> None:
        def row(cells: Sequence[Cell]) -> str:
            texts = []
            for cell in cells:
                texts.append("".join(_escape_markdown_text(inline_plain(cell).replace("\n", " "))))
            return "| " + " | ".join(texts) + " |"

        rule = {"left": ":---", "right": "---:", "center": ":---:"}
        delimiter = "| " + " | ".join(rule.get(a, "---") for a in node.aligns) + " |"
        head = row(node.header) + "\n" + delimiter
        self.items.append(Open("", "", reopen=head + "\n"))
        self.items.append(Token(head, inline_plain_row(node.header)))
        for cells in node.rows:
            self.items.append(Gap("\n", "\n", BreakLevel.LINE))
            self.items.append(Token(row(cells), inline_plain_row(cells)))
        self.items.append(Close())

    _line_start = False

    def block(self, block: Block) -> None:
        self._line_start = isinstance(block, Paragraph)
        super().block(block)

    def inlines(self, nodes: Iterable[Inline]) -> None:
        for node in nodes:
            if isinstance(node, Text) and self._line_start:
                node = self._line_start_text(node.text)
            self._line_start = False
            if isinstance(node, Text) and "&" in node.text:
                self._text_with_ampersands(node.text)
            else:
                super().inlines([node])

    def _line_start_text(self, text: str) -> Text:
        """ "1. not a list", "- not a bullet", "+", "=" starting a line must stay text."""
        match = _LINE_START_HAZARD.match(text)
        if match is None:
            return Text(text)
        marker = match.group(0)
        self.items.append(Run(marker[:-1]))
        self.items.append(Token("\\" + marker[-1], marker[-1]))
        return Text(text[len(marker) :])

    def _text_with_ampersands(self, text: str) -> None:
        position = 0
        for match in _ENTITY_LIKE.finditer(text):
            if match.start() > position:
                self.items.append(Run(text[position : match.start()]))
            self.items.append(Token("\\&", "&"))
            position = match.end()
        if position < len(text):
            self.items.append(Run(text[position:]))


def _escape_markdown_text(text: str) -> list[str]:
    return [escape_markdown_char(ch) for ch in text]


def inline_plain_row(cells: Sequence[Cell]) -> str:
    return " | ".join(inline_plain(cell).replace("\n", " ") for cell in cells)


def plain_text(doc: Document) -> str:
    """The document's visible text (what every renderer's ``plain`` parts add up to, give or
    take the separators a split drops)."""
    return "".join(part.plain for part in split(MarkdownRenderer().render(doc), limit=1 << 40))


# --------------------------------------------------------------------------------------------
# Healing a stream cut mid-token
# --------------------------------------------------------------------------------------------

_FENCE_LINE = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$")
_PARTIAL_LINK = re.compile(r"\[([^\[\]\n]*)\]\([^()\s]*$")
_EMPHASIS_MARKERS = ("**", "__", "~~", "*", "_")


def heal_partial(markdown: str) -> str:
    """Close what a stream cut open at the end of ``markdown``, so that a frame renders the way
    the finished text will: ``**bold so fa`` shows bold (not two literal asterisks) and a link
    whose URL is still arriving shows its label. Use for stream frames, never for final text.

    Only the last paragraph is touched; inside an unclosed code fence nothing is (the parse
    already shows code to the end). A closing marker is kept only if the parse confirms that it
    closed something, so healing never adds a visible character.
    """
    if _inside_open_fence(markdown):
        return markdown
    paragraph_start = markdown.rfind("\n\n") + 1
    head, tail = markdown[:paragraph_start], markdown[paragraph_start:].rstrip()
    link = _PARTIAL_LINK.search(tail)
    if link is not None:
        tail = tail[: link.start()] + "[" + link.group(1) + "]"
    closers = _unclosed_markers(tail)
    if not closers and link is None:
        return markdown
    healed = head + tail + closers
    if closers:  # the last paragraph alone decides: parsing it is cheap at every frame
        before = len(plain_text(parse(tail)))
        if len(plain_text(parse(tail + closers))) != before - len(closers):
            healed = head + tail  # the parse disagrees with the guess: add nothing
    if link is not None:
        # "[label]" with no target renders as literal brackets: drop them, keep the label.
        label_start = len(head) + link.start()
        healed = healed[:label_start] + link.group(1) + healed[label_start + len(link.group(1)) + 2 :]
    return healed


def _inside_open_fence(markdown: str) -> bool:
    fence: str | None = None
    for line in markdown.split("\n"):
        match = _FENCE_LINE.match(line)
        if match is None:
            continue
        marker = match.group(1)
        if fence is None:
            if not (marker[0] == "`" and "`" in match.group(2)):
                fence = marker
        elif marker[0] == fence[0] and len(marker) >= len(fence) and not match.group(2).strip():
            fence = None
    return fence is not None


def _unclosed_markers(text: str) -> str:
    """The closers for the code span and emphasis left open at the end of ``text``."""
    stack: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "`":
            run = len(text) - i - len(text[i:].lstrip("`"))
            closing = text.find("`" * run, i + run)
            if closing < 0:
                return "`" * run  # inside an open code span: emphasis markers are code there
            i = closing + run
            continue
        marker = next((m for m in _EMPHASIS_MARKERS if text.startswith(m, i)), None)
        if marker is None:
            i += 1
            continue
        before = text[i - 1] if i else " "
        after = text[i + len(marker)] if i + len(marker) < len(text) else " "
        if stack and stack[-1] == marker and not before.isspace():
            stack.pop()
        elif not after.isspace() and not (marker[0] == "_" and before.isalnum()):
            stack.append(marker)
        i += len(marker)
    return "".join(reversed(stack))
