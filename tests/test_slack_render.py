"""Markdown -> Slack: markdown blocks and mrkdwn sections, escaping, limits, splitting.

Every message is checked against the Block Kit limits the fake Slack Web API enforces
(``tests/fakes/slack_api.py``) as well as against our own constants.
"""

from __future__ import annotations

import random

import pytest

from adapters.slack.render import (
    SLACK_MARKDOWN_BLOCKS_LIMIT,
    SLACK_MAX_BLOCKS,
    SLACK_MESSAGE_BLOCKS_TEXT_BUDGET,
    SLACK_SECTION_TEXT_LIMIT,
    SLACK_TEXT_LIMIT,
    SlackMrkdwnRenderer,
    SlackPart,
    _group_sections,
    escape_mrkdwn,
    render_slack,
)
from gateway.markdown import Link, MarkdownRenderer, Part, parse, split, utf16_len
from tests.fakes.slack_api import _check_blocks
from tests.test_markdown import _random_document, assert_same_content, mixed_document


def check(parts: list[SlackPart]) -> list[SlackPart]:
    for part in parts:
        _check_blocks(part.blocks)  # raises SlackApiFailure where Slack would refuse
        assert 0 < len(part.blocks) <= SLACK_MAX_BLOCKS
        assert part.text.strip() and len(part.text) <= SLACK_TEXT_LIMIT
        markdown_total = 0
        for block in part.blocks:
            if block["type"] == "markdown":
                markdown_total += utf16_len(block["text"])
            else:
                assert block["type"] == "section" and block["text"]["type"] == "mrkdwn"
                assert utf16_len(block["text"]["text"]) <= SLACK_SECTION_TEXT_LIMIT
        assert markdown_total <= SLACK_MARKDOWN_BLOCKS_LIMIT
        block_text = sum(utf16_len(b["text"]["text"]) for b in part.blocks if b["type"] == "section")
        assert block_text <= SLACK_MESSAGE_BLOCKS_TEXT_BUDGET
    return parts


def mrkdwn(markdown: str) -> str:
    (part,) = check(render_slack(markdown, style="mrkdwn"))
    (block,) = part.blocks
    return block["text"]["text"]


def markdown_block(markdown: str) -> str:
    (part,) = check(render_slack(markdown))
    (block,) = part.blocks
    assert block["type"] == "markdown"
    return block["text"]


# ---- mrkdwn --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("markdown", "expected"),
    [
        ("**bold** *it* ~~gone~~", "*bold* _it_ ~gone~"),
        ("`x < y`", "`x &lt; y`"),
        ("[site](https://e.com/?a=1&b=2)", "<https://e.com/?a=1&amp;b=2|site>"),
        ("[**b** a](https://e.com)", "<https://e.com|*b* a>"),
        ("# Title *x*", "*Title _x_*"),
        ("> quoted\n> more", "> quoted\n> more"),
        ("> one\n>\n> > nested", "> one\n\n> nested"),
        ("- a\n- b\n  - c", "• a\n• b\n  ◦ c"),
        ("2. two\n3. three", "2. two\n3. three"),
        ("```python\nif a < b:\n    pass\n```", "```\nif a &lt; b:\n    pass\n```"),
        ("| a | b |\n|---|---|\n| 1 | 2 |", "```\na | b\n--+--\n1 | 2\n```"),
        ("---", "──────────"),
        ("a\\\nb", "a\nb"),
        ("**bold `code`**", "*bold code*"),
        ("`` a`b ``", "a`b"),
    ],
)
def test_mrkdwn_constructs(markdown: str, expected: str) -> None:
    assert mrkdwn(markdown) == expected


def test_mrkdwn_escapes_markup_and_special_mentions() -> None:
    text = mrkdwn("<!channel> <@U123> a & b <script>x</script> &amp;")
    assert text == "&lt;!channel&gt; &lt;@U123&gt; a &amp; b &lt;script&gt;x&lt;/script&gt; &amp;"
    assert escape_mrkdwn("<&>") == "&lt;&amp;&gt;"


@pytest.mark.parametrize("markdown", ["[x](javascript:alert(1))", "[x](/relative)", "[x](data:text/html,hi)"])
def test_unsafe_links_are_refused(markdown: str) -> None:
    # mrkdwn: no <url|label> made; the Markdown text is literal, which mrkdwn does not link
    assert "|x>" not in mrkdwn(markdown) and "<" not in mrkdwn(markdown)
    # markdown block: Slack re-parses it, so the brackets must come back escaped, not as a link
    text = markdown_block(markdown)
    assert not any(isinstance(node, Link) for block in parse(text).blocks for node in block.children)  # type: ignore[union-attr]


def test_link_urls_cannot_break_out_of_mrkdwn_links() -> None:
    text = mrkdwn("[x](https://e.com/a|b>c)")
    assert text.count("|") == 1 and text.endswith("|x>")


# ---- markdown blocks -----------------------------------------------------------------------


def test_markdown_block_carries_normalised_markdown() -> None:
    text = markdown_block("# T\n\n**b** _i_ ~~s~~ `c` [l](https://e.com)\n\n| a | b |\n|---|---|\n| 1 | 2 |")
    assert text == "# T\n\n**b** *i* ~~s~~ `c` [l](https://e.com)\n\n| a | b |\n| --- | --- |\n| 1 | 2 |"


def test_markdown_block_escapes_raw_html() -> None:
    assert markdown_block("<script>x</script> & <!here>") == "\\<script\\>x\\</script\\> & \\<!here\\>"


def test_fallback_text_is_plain() -> None:
    (part,) = check(render_slack("**Hello** [there](https://e.com) `x`"))
    assert part.text == "Hello there x"
    (part,) = check(render_slack("**Hello** [there](https://e.com) `x`", style="mrkdwn"))
    assert part.text == "Hello there x"


# ---- splitting -----------------------------------------------------------------------------


def test_long_text_becomes_several_markdown_messages() -> None:
    paragraph = "Some words in a sentence. " * 100  # 2,600 characters
    parts = check(render_slack("\n\n".join([paragraph] * 12)))
    assert len(parts) == 3
    assert all(len(p.blocks) == 1 for p in parts)


def test_mrkdwn_sections_within_3000_and_messages_within_the_budget() -> None:
    paragraph = "Some words in a sentence. " * 100
    parts = check(render_slack("\n\n".join([paragraph] * 12), style="mrkdwn"))
    sections = [b for p in parts for b in p.blocks]
    assert len(sections) == 12  # one paragraph per section: split at paragraph boundaries
    assert len(parts) == 3


def test_oversized_code_block_in_mrkdwn_sections() -> None:
    code = "\n".join(f"line_{i} = {i} & {i}" for i in range(500))
    parts = check(render_slack(f"```\n{code}\n```", style="mrkdwn"))
    texts = [b["text"]["text"] for p in parts for b in p.blocks]
    assert len(texts) > 3
    assert all(t.startswith("```\n") and t.endswith("\n```") for t in texts)
    rebuilt = "\n".join(t[4:-4] for t in texts).replace("&amp;", "&")
    assert rebuilt == code


def test_bold_across_sections_is_closed_and_reopened() -> None:
    parts = check(render_slack("**" + ("bold words " * 600).strip() + "**", style="mrkdwn"))
    texts = [b["text"]["text"] for p in parts for b in p.blocks]
    assert len(texts) == 3
    assert all(t.startswith("*") and t.endswith("*") for t in texts)


def test_messages_never_exceed_fifty_blocks() -> None:
    sections = [Part(markup="x" * 10, plain="x" * 10) for _ in range(120)]
    groups = _group_sections(sections)
    assert [len(g) for g in groups] == [50, 50, 20]
    big = [Part(markup="y" * 2900, plain="y") for _ in range(9)]
    assert [len(g) for g in _group_sections(big)] == [4, 4, 1]


@pytest.mark.parametrize("style", ["markdown", "mrkdwn"])
def test_twenty_thousand_character_document(style: str) -> None:
    source = mixed_document()
    parts = check(render_slack(source, style=style))  # type: ignore[arg-type]
    assert len(parts) >= 2
    # The fallback texts, in order, hold the document's whole text: nothing lost or repeated.
    renderer = MarkdownRenderer() if style == "markdown" else SlackMrkdwnRenderer()
    (full,) = split(renderer.render(parse(source)), limit=1 << 30)
    assert_same_content([line for p in parts for line in p.text.split("\n")], full.plain)


# ---- partial, empty, bad input -------------------------------------------------------------


@pytest.mark.parametrize("style", ["markdown", "mrkdwn"])
@pytest.mark.parametrize(
    "markdown",
    ["**never closed", "`never closed", "```python\nx = 1", "[half](https://e", "> q\n> ```\n> code", "*"],
)
def test_partial_markdown_renders(style: str, markdown: str) -> None:
    (part,) = check(render_slack(markdown, style=style))  # type: ignore[arg-type]
    assert part.text.strip()


def test_unclosed_fence_is_a_code_block() -> None:
    assert mrkdwn("```python\nx = 1") == "```\nx = 1\n```"
    assert markdown_block("```python\nx = 1") == "```python\nx = 1\n```"


def test_empty_and_unknown_style() -> None:
    assert render_slack("") == []
    assert render_slack("   ", style="mrkdwn") == []
    with pytest.raises(ValueError, match="style"):
        render_slack("x", style="html")  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("style", ["markdown", "mrkdwn"])
def test_random_documents_give_valid_messages(seed: int, style: str) -> None:
    rng = random.Random(seed)
    source = _random_document(rng, rng.randrange(2_000, 40_000))
    parts = check(render_slack(source, style=style))  # type: ignore[arg-type]
    renderer = MarkdownRenderer() if style == "markdown" else SlackMrkdwnRenderer()
    (full,) = split(renderer.render(parse(source)), limit=1 << 30)
    assert_same_content([line for p in parts for line in p.text.split("\n")], full.plain)


def test_stream_frames_heal_what_the_cut_left_open() -> None:
    (part,) = check(render_slack("Hello **bold so fa", style="mrkdwn", partial=True))
    assert part.blocks[0]["text"]["text"] == "Hello *bold so fa*"
    (part,) = check(render_slack("See [docs](https://exa", partial=True))
    assert part.blocks[0]["text"] == "See docs"
