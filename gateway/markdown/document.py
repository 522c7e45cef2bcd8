"""The document model and the one Markdown parse every renderer shares."""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from markdown_it import MarkdownIt
from markdown_it.token import Token as MdToken


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
