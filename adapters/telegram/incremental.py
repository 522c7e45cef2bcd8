"""Rendering a growing stream without re-rendering what is already final.

A stream's frames are the whole text so far, and rendering plus splitting costs about a
microsecond per character: re-rendering 10,000 characters four times a second in fifty chats is
more CPU than a process has. So once the text outgrows one message, the part that is complete is
*committed*: cut at a paragraph break (a blank line outside code fences, followed by an unindented
line) such that the prefix renders to exactly one message, rendered once, and never again. Later
frames render only the text after the last cut.

Cutting at a blank line between top-level blocks gives the same messages as rendering the whole
text, except for constructs that reach across paragraphs (a reference-style link defined further
down, a loose list's numbering restarting at the cut shows its own number, which Markdown keeps).
If the text is not an extension of what was committed (a handler used ``replace``), everything is
rendered afresh.
"""

from __future__ import annotations

import re

from adapters.telegram.render import TelegramPart, render_telegram

_FENCE = re.compile(r" {0,3}(`{3,}|~{3,})")


def paragraph_breaks(text: str) -> list[int]:
    """Offsets where a top-level block starts after a blank line, outside fenced code."""
    breaks: list[int] = []
    fence: str | None = None
    previous_blank = False
    position = 0
    for line in text.splitlines(keepends=True):
        blank = not line.strip()
        opener = _FENCE.match(line)
        if fence is not None:
            if opener and opener.group(1)[0] == fence[0] and len(opener.group(1)) >= len(fence):
                fence = None
        else:
            if previous_blank and not blank and line[:1] not in (" ", "\t") and position > 0:
                breaks.append(position)
            if opener:
                fence = opener.group(1)
        previous_blank = blank and fence is None
        position += len(line)
    return breaks


class IncrementalRenderer:
    """``render(text)``: the Telegram parts of a stream's text, rendering only the unfinished tail."""

    def __init__(self) -> None:
        self._committed_text = ""
        self._committed_parts: list[TelegramPart] = []

    def render(self, text: str, *, partial: bool = False) -> list[TelegramPart]:
        """``partial=True`` for a frame (text still arriving: markers it cut are healed, see
        ``render_telegram``); the final text is rendered with ``partial=False``. Committed
        prefixes end at a paragraph break, so they are complete either way."""
        if not text.startswith(self._committed_text):
            self._committed_text, self._committed_parts = "", []
        tail = text[len(self._committed_text) :]
        parts = render_telegram(tail, partial=partial)
        if len(parts) >= 2:
            cut = self._cut(tail)
            if cut:
                self._committed_parts += render_telegram(tail[:cut])
                self._committed_text += tail[:cut]
                parts = render_telegram(tail[cut:], partial=partial)
        return self._committed_parts + parts

    @staticmethod
    def _cut(tail: str) -> int:
        """The furthest paragraph break whose prefix fits one message (0: none does)."""
        candidates = paragraph_breaks(tail)
        best, low, high = 0, 0, len(candidates) - 1
        while low <= high:  # longer prefixes never need fewer messages: binary search
            middle = (low + high) // 2
            if len(render_telegram(tail[: candidates[middle]])) == 1:
                best, low = candidates[middle], middle + 1
            else:
                high = middle - 1
        return best
