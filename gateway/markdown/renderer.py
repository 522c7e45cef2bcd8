"""Walking a document into items: the base class of every platform renderer."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence

from gateway.markdown.document import (
    Block,
    BlockQuote,
    CodeBlock,
    CodeSpan,
    Document,
    Emphasis,
    Heading,
    Inline,
    LineBreak,
    ListBlock,
    Paragraph,
    Strikethrough,
    Strong,
    Table,
    Text,
    inline_plain,
)
from gateway.markdown.items import BreakLevel, Close, Gap, Item, Open, Run, Token


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
