"""Markdown -> Telegram HTML: every construct, injection, limits in UTF-16, splitting, fallbacks.

Every part is checked with the strict parser of Telegram's HTML subset that the fake Bot API
server uses (``tests/fakes/telegram_api.py``): it must parse, and its text must equal the
part's plain twin.
"""

from __future__ import annotations

import random
import re

import pytest

from adapters.telegram.render import (
    TELEGRAM_CAPTION_LIMIT,
    TELEGRAM_RICH_TEXT_LIMIT,
    TELEGRAM_TEXT_LIMIT,
    TelegramHTMLRenderer,
    TelegramPart,
    _escape_char,
    escape_html,
    render_telegram,
    render_telegram_caption,
    render_telegram_markdown,
)
from gateway.markdown import CodeBlock, MarkdownRenderer, escape_markdown_char, heal_partial, parse, split, utf16_len
from gateway.markdown.split import _emit, _flatten
from tests.fakes.telegram_api import parse_html
from tests.test_markdown import _random_document, assert_same_content, mixed_document


def check(parts: list[TelegramPart], limit: int = TELEGRAM_TEXT_LIMIT) -> list[TelegramPart]:
    for part in parts:
        text, _ = parse_html(part.html)
        assert text == part.plain
        assert 0 < utf16_len(part.plain) <= limit
    return parts


def one(markdown: str) -> TelegramPart:
    (part,) = check(render_telegram(markdown))
    return part


# ---- constructs ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("markdown", "html"),
    [
        ("**bold** and __bold__", "<b>bold</b> and <b>bold</b>"),
        ("*it* _it_", "<i>it</i> <i>it</i>"),
        ("~~gone~~", "<s>gone</s>"),
        ("`x < y`", "<code>x &lt; y</code>"),
        ("***both***", "<i><b>both</b></i>"),
        ("[site](https://example.com/?a=1&b=2)", '<a href="https://example.com/?a=1&amp;b=2">site</a>'),
        ("<https://example.com>", '<a href="https://example.com">https://example.com</a>'),
        ("[**bold link**](https://e.com)", '<a href="https://e.com"><b>bold link</b></a>'),
        ("# Title", "<b>Title</b>"),
        ("### Title *x*", "<b>Title <i>x</i></b>"),
        ("line one\nline two", "line one\nline two"),
        ("hard\\\nbreak", "hard\nbreak"),
        ("> quoted", "<blockquote>quoted</blockquote>"),
        ("---", "──────────"),
        ("```python\nprint('<hi>')\n```", "<pre><code class=\"language-python\">print('&lt;hi&gt;')</code></pre>"),
        ("```\nplain code\n```", "<pre>plain code</pre>"),
        ("    indented code", "<pre>indented code</pre>"),
        ("- a\n- b\n  - c\n    - d", "• a\n• b\n  ◦ c\n    ▪ d"),
        ("3. three\n4. four", "3. three\n4. four"),
        ("![alt text](https://e.com/i.png)", '<a href="https://e.com/i.png">alt text</a>'),
    ],
)
def test_constructs(markdown: str, html: str) -> None:
    assert one(markdown).html == html


def test_paragraphs_are_separated_by_a_blank_line() -> None:
    part = one("one\n\ntwo")
    assert part.html == "one\n\ntwo" and part.plain == "one\n\ntwo"


def test_table_is_monospace() -> None:
    part = one("| name | n |\n|:--|--:|\n| alpha | 1 |\n| b | 22 |")
    assert part.html == "<pre>name  |  n\n------+---\nalpha |  1\nb     | 22</pre>"


def test_code_span_inside_other_entities_is_plain_text() -> None:
    # Bot API: bold/italic/... can't contain code, links can't contain anything but those.
    assert one("**bold `code`**").html == "<b>bold code</b>"
    assert one("[`code`](https://e.com)").html == '<a href="https://e.com">code</a>'


def test_code_blocks_stand_outside_quotes_and_nested_quotes_flatten() -> None:
    part = one("> before\n>\n> ```\n> code\n> ```\n>\n> after\n>\n> > nested")
    assert part.html == "<blockquote>before</blockquote>\n\n<pre>code</pre>\n\n<blockquote>after\n\nnested</blockquote>"


def test_language_is_sanitised() -> None:
    part = one('```c++"><script>\nx\n```')
    assert part.html.startswith('<pre><code class="language-c++script">')


# ---- injection -----------------------------------------------------------------------------


def test_html_in_text_is_escaped() -> None:
    part = one("<script>alert(1)</script> <b>not bold</b>")
    assert part.html == "&lt;script&gt;alert(1)&lt;/script&gt; &lt;b&gt;not bold&lt;/b&gt;"
    assert part.plain == "<script>alert(1)</script> <b>not bold</b>"


def test_entities_in_markdown_are_shown_as_written() -> None:
    part = one("AT&T &amp; &lt;tag&gt; &copy;")
    assert part.html == "AT&amp;T &amp; &lt;tag&gt; ©"
    assert part.plain == "AT&T & <tag> ©"


@pytest.mark.parametrize(
    "markdown",
    [
        "[x](javascript:alert(1))",
        "[x](JaVaScRiPt:alert(1))",
        "[x](data:text/html;base64,PHNjcmlwdD4=)",
        "[x](vbscript:msgbox(1))",
        "[x](/relative)",
        "<javascript:alert(1)>",
    ],
)
def test_unsafe_links_are_refused(markdown: str) -> None:
    part = one(markdown)
    assert "<a" not in part.html
    assert "x" in part.plain or "javascript" in part.plain


def test_quotes_in_hrefs_cannot_break_out_of_the_attribute() -> None:
    part = one('[x](https://e.com/a"onclick="alert(1))')
    match = re.fullmatch(r'<a href="([^"]*)">x</a>', part.html)
    assert match is not None, part.html
    assert '"' not in match.group(1)
    part = one('[x](<https://e.com/a"b>)')
    assert part.html in ('<a href="https://e.com/a%22b">x</a>', '<a href="https://e.com/a&quot;b">x</a>')


def test_escape_html() -> None:
    assert escape_html("a & b < c > d") == "a &amp; b &lt; c &gt; d"


# ---- limits and splitting ------------------------------------------------------------------


def test_limit_counts_text_after_entity_parsing() -> None:
    # 4,096 characters of bold text, each escaped: the HTML is far longer, yet it is one part.
    part = one("**" + "&" * 4000 + "**")
    assert len(part.html) > 4096 * 4
    assert utf16_len(part.plain) == 4000


def test_emoji_count_as_two_utf16_units() -> None:
    parts = check(render_telegram("😀" * 3000))
    assert len(parts) == 2
    assert utf16_len(parts[0].plain) == 4096 and len(parts[0].plain) == 2048
    assert "".join(p.plain for p in parts) == "😀" * 3000


def test_emoji_sequences_are_never_cut() -> None:
    family = "👨\u200d👩\u200d👧\u200d👦"
    parts = check(render_telegram(family * 1000))
    assert len(parts) > 1
    assert all(p.plain.startswith("👨") and p.plain.endswith("👦") for p in parts)


def test_splits_at_paragraphs_first() -> None:
    paragraph = "word " * 500  # 2,500 characters
    parts = check(render_telegram(f"{paragraph}\n\n{paragraph}\n\n{paragraph}"))
    assert [p.plain for p in parts] == [paragraph.strip()] * 3


def test_splits_inside_a_paragraph_at_sentences_then_words() -> None:
    text = "This is one sentence. " * 400
    parts = check(render_telegram(text))
    assert all(p.plain.endswith(".") for p in parts)
    words = "abc " * 3000
    parts = check(render_telegram(words))
    assert all(p.plain.endswith("abc") for p in parts)


def test_bold_across_a_split_is_closed_and_reopened() -> None:
    parts = check(render_telegram("**" + ("bold words " * 800).strip() + "**"))
    assert len(parts) == 3
    assert all(p.html.startswith("<b>") and p.html.endswith("</b>") for p in parts)


def test_oversized_code_block_becomes_complete_pre_blocks() -> None:
    code = "\n".join(f"result_{i} = compute({i})  # {'&' * 20}" for i in range(400))
    parts = check(render_telegram(f"```python\n{code}\n```"))
    assert len(parts) > 3
    for part in parts:
        assert part.html.startswith('<pre><code class="language-python">')
        assert part.html.endswith("</code></pre>")
    assert "\n".join(p.plain for p in parts) == code


def test_custom_limit_and_caption() -> None:
    text = "Caption words here. " * 200
    caption, rest = render_telegram_caption(text)
    assert caption is not None
    check([caption], TELEGRAM_CAPTION_LIMIT)
    check(rest, TELEGRAM_TEXT_LIMIT)
    assert utf16_len(caption.plain) <= TELEGRAM_CAPTION_LIMIT < utf16_len(rest[0].plain) + 1
    assert_same_content([caption.plain] + [p.plain for p in rest], text.strip())
    assert render_telegram_caption("") == (None, [])
    assert all(utf16_len(p.plain) <= 100 for p in check(render_telegram(text, limit=100), 100))


def test_twenty_thousand_character_document() -> None:
    source = mixed_document()
    parts = check(render_telegram(source))
    (whole,) = render_telegram(source, limit=1 << 30)
    assert len(parts) >= 6
    assert_same_content([p.plain for p in parts], whole.plain)
    assert len(whole.plain) > 15_000


# ---- partial and empty ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "markdown",
    [
        "Streaming **bold that never clo",
        "Streaming `code that never clo",
        "Start\n\n```python\ndef f():\n    return '<x>'",
        "A [link that](https://exa",
        "| a | b |\n|---|",
        "> quote\n> - item\n>   ```\n>   code",
        "***",
        "*",
        "<",
    ],
)
def test_partial_markdown_renders_valid_html(markdown: str) -> None:
    for part in check(render_telegram(markdown)):
        assert part.plain.strip()


def test_unclosed_fence_becomes_a_code_block() -> None:
    part = one("Start\n\n```python\ndef f():\n    return 1")
    assert part.html == 'Start\n\n<pre><code class="language-python">def f():\n    return 1</code></pre>'


def test_empty_text_gives_no_parts() -> None:
    assert render_telegram("") == []
    assert render_telegram("  \n\n ") == []


# ---- standard Markdown for rich messages ---------------------------------------------------


def test_rich_markdown_is_normalised_and_split() -> None:
    (only,) = render_telegram_markdown("# Title\n\n<b>raw</b> [x](javascript:alert(1)) **ok**")
    # markdown-it never makes a link of javascript:, so it stays literal (escaped) text
    assert only == "# Title\n\n\\<b\\>raw\\</b\\> \\[x\\](javascript:alert(1)) **ok**"
    source = mixed_document(70_000)
    parts = render_telegram_markdown(source)
    assert len(parts) >= 2
    assert all(utf16_len(p) <= TELEGRAM_RICH_TEXT_LIMIT for p in parts)
    small = render_telegram_markdown("```python\n" + "x = 1\n" * 500 + "```", limit=1000)
    assert len(small) > 2
    for part in small:
        (block,) = parse(part).blocks
        assert isinstance(block, CodeBlock) and block.language == "python"


@pytest.mark.parametrize("seed", range(10))
def test_random_documents_give_valid_parts_within_any_limit(seed: int) -> None:
    rng = random.Random(seed)
    source = _random_document(rng, rng.randrange(500, 6000))
    limit = rng.randrange(30, 1500)
    parts = check(render_telegram(source, limit=limit), limit)
    (whole,) = render_telegram(source, limit=1 << 30)
    assert_same_content([p.plain for p in parts], whole.plain)


def test_stream_frames_heal_what_the_cut_left_open() -> None:
    assert check(render_telegram("Hello **bold so fa", partial=True))[0].html == "Hello <b>bold so fa</b>"
    assert check(render_telegram("See [docs](https://exa", partial=True))[0].html == "See docs"
    assert check(render_telegram("Hello **bold so fa"))[0].html == "Hello **bold so fa"  # final text: as written
    (rich,) = render_telegram_markdown("a `code", partial=True)
    assert rich == "a `code`"


@pytest.mark.parametrize("seed", range(12))
def test_a_text_that_fits_one_part_gives_what_the_character_splitter_gives(seed: int) -> None:
    """``split``'s one-part shortcut (most stream frames) equals the atom-by-atom path."""
    rng = random.Random(seed)
    source = _random_document(rng, rng.randrange(50, 3000))
    if seed % 2:
        source = heal_partial(source[: rng.randrange(1, len(source))])  # a frame cut anywhere
    for items, escape, measure in (
        (TelegramHTMLRenderer().render(parse(source)), _escape_char, "plain"),
        (MarkdownRenderer().render(parse(source)), escape_markdown_char, "markup"),
    ):
        atoms = _flatten(items, escape)
        slow = _emit(atoms, 0, len(atoms.markup))
        assert split(items, limit=1 << 30, escape=escape, length=utf16_len, measure=measure) == (
            [slow] if slow.plain.strip() else []
        )
        # at exactly the size of the text the shortcut still applies; one unit less, it splits
        size = utf16_len(slow.markup if measure == "markup" else slow.plain)
        if slow.plain.strip() and measure == "plain":
            assert split(items, limit=size, escape=escape, length=utf16_len, measure=measure) == [slow]
            assert len(split(items, limit=max(1, size - 1), escape=escape, length=utf16_len, measure=measure)) >= 2
