"""The limit-aware splitter: items -> parts within a platform's limit."""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from gateway.markdown.items import BreakLevel, Close, Gap, Item, Open, Part, Run, Token

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
    items = list(items)
    use_markup = measure == "markup"
    if _total_cost(items, escape, length, use_markup) <= (first_limit if first_limit is not None else limit):
        # everything fits in one part (most stream frames): the same part, without per-character atoms
        whole = _emit_whole(items, escape)
        return [whole] if whole.plain.strip() else []
    atoms = _flatten(items, escape)
    count = len(atoms.markup)

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


def _total_cost(
    items: Sequence[Item], escape: Callable[[str], str], length: Callable[[str], int], use_markup: bool
) -> int:
    """What :func:`split` would count for all of ``items`` (``length`` adds up over a string)."""
    total = 0
    stack: list[Open] = []
    for item in items:
        if isinstance(item, Run):
            if use_markup and not any(entity.verbatim for entity in stack):
                total += length("".join(map(escape, item.text)))
            else:
                total += length(item.text)
        elif isinstance(item, Token | Gap):
            total += length(item.markup if use_markup else item.plain)
        elif isinstance(item, Open):
            stack.append(item)
            total += length(item.markup) if use_markup else 0
        elif stack:
            total += length(stack.pop().close) if use_markup else 0
    return total


def _emit_whole(items: Sequence[Item], escape: Callable[[str], str]) -> Part:
    """``_emit`` over all of ``items``, item by item instead of atom by atom (the same rules:
    entities open lazily at their first content, line prefixes go before pending entities)."""
    markup: list[str] = []
    plain: list[str] = []
    stack: list[_OpenEntity] = []

    def open_pending() -> None:
        for entry in stack:
            if not entry.written:
                markup.append(entry.entity.markup)
                entry.written = True

    for item in items:
        if isinstance(item, Run):
            if item.text:
                open_pending()
                verbatim = any(entry.entity.verbatim for entry in stack)
                markup.append(item.text if verbatim else "".join(map(escape, item.text)))
                plain.append(item.text)
        elif isinstance(item, Open):
            stack.append(_OpenEntity(item, reopened=False))
        elif isinstance(item, Close):
            if not stack:
                raise ValueError("Close without a matching Open in the rendered items")
            closing = stack.pop()
            if closing.written:
                markup.append(closing.entity.close)
        elif isinstance(item, Token) and item.line_prefix and not all(entry.written for entry in stack):
            markup.append(item.markup)  # before the entities waiting to open
            plain.append(item.plain)
        else:
            open_pending()
            markup.append(item.markup)
            plain.append(item.plain)
    for entry in reversed(stack):
        if entry.written:
            markup.append(entry.entity.close)
    return Part("".join(markup), "".join(plain))


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
