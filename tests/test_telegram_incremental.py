"""Incremental rendering of a growing stream: finished messages are rendered once, and the parts
match what rendering the whole text gives."""

from __future__ import annotations

import itertools
import random

from adapters.telegram.incremental import IncrementalRenderer, paragraph_breaks
from adapters.telegram.render import render_telegram


def test_paragraph_breaks_skip_code_fences_and_indented_continuations() -> None:
    text = "a\n\nb\n\n```\nx\n\ny\n```\n\n  indented\n\n~~~~\n\n~~~\n\n~~~~\n\nz"
    breaks = paragraph_breaks(text)
    assert [text[b] for b in breaks] == ["b", "`", "~", "z"]
    assert paragraph_breaks("no breaks at all") == []


def stream(text: str, step: int) -> tuple[IncrementalRenderer, list[list[str]]]:
    renderer = IncrementalRenderer()
    frames = [[p.html for p in renderer.render(text[:end])] for end in range(step, len(text) + step, step)]
    return renderer, frames


def test_a_long_stream_gives_the_same_messages_as_one_render() -> None:
    rng = random.Random(4)
    words = "alpha **beta** gamma `delta` epsilon [link](https://example.com) zeta".split()
    paragraphs = [" ".join(rng.choice(words) for _ in range(rng.randint(20, 120))) for _ in range(60)]
    paragraphs[10] = "```python\n" + "print('x')\n" * 40 + "```"
    paragraphs[30] = "- one\n- two\n- three"
    text = "\n\n".join(paragraphs)
    renderer, frames = stream(text, 97)
    final = renderer.render(text)
    whole = render_telegram(text)
    assert len(final) >= 3
    assert [p.plain for p in final] == [p.plain for p in whole]
    assert [p.html for p in final] == [p.html for p in whole]
    # a message, once complete, never changes in later frames
    for earlier, later in itertools.pairwise(frames):
        assert later[: len(earlier) - 1] == earlier[: len(earlier) - 1]


def test_a_paragraph_longer_than_a_message_still_splits() -> None:
    text = "word " * 2000  # one paragraph: no break to cut at
    renderer = IncrementalRenderer()
    parts = renderer.render(text)
    assert len(parts) == 3 and " ".join(p.plain for p in parts).split() == text.split()


def test_a_replaced_text_is_rendered_afresh() -> None:
    renderer = IncrementalRenderer()
    first = ("para " * 300 + "\n\n") * 5
    renderer.render(first)
    replaced = "a different answer"
    assert [p.plain for p in renderer.render(replaced)] == ["a different answer"]
