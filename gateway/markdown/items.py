"""Items: what a renderer produces and the splitter packs."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


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
