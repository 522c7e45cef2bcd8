"""Back to Markdown, for platforms that parse standard Markdown themselves."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from gateway.markdown.document import (
    Block,
    Cell,
    CodeBlock,
    Document,
    Heading,
    Inline,
    ListBlock,
    Paragraph,
    Table,
    Text,
    inline_plain,
)
from gateway.markdown.items import BreakLevel, Close, Gap, Item, Open, Run, Token
from gateway.markdown.renderer import StreamRenderer
from gateway.markdown.split import split

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
