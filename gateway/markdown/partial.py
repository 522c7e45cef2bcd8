"""Healing a stream cut mid-token, so a frame looks like the end of a reply."""

from __future__ import annotations

import re

from gateway.markdown.document import parse
from gateway.markdown.writer import plain_text

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
