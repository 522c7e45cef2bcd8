"""The shared Markdown parse, the Markdown serialiser and the limit-aware splitter."""

from __future__ import annotations

import random
import re

import pytest

from gateway.markdown import (
    BlockQuote,
    BreakLevel,
    Close,
    CodeBlock,
    CodeSpan,
    Document,
    Emphasis,
    Gap,
    Heading,
    LineBreak,
    Link,
    ListBlock,
    ListItem,
    MarkdownRenderer,
    Open,
    Paragraph,
    Run,
    Strikethrough,
    Strong,
    Table,
    Text,
    ThematicBreak,
    Token,
    escape_markdown_char,
    heal_partial,
    parse,
    plain_text,
    safe_href,
    split,
    utf16_len,
)


def assert_same_content(parts: list[str], whole: str) -> None:
    """Parts are consecutive slices of ``whole``: only whitespace separators between them."""
    position = 0
    for part in parts:
        found = whole.find(part, position)
        assert found >= 0, f"part not found in order: {part[:60]!r}"
        assert whole[position:found].strip() == "", f"content lost: {whole[position:found]!r}"
        position = found + len(part)
    assert whole[position:].strip() == "", f"content lost at the end: {whole[position:][:60]!r}"
    assert re.sub(r"\s+", "", "".join(parts)) == re.sub(r"\s+", "", whole)


def md_parts(markdown: str, limit: int) -> list[str]:
    items = MarkdownRenderer().render(parse(markdown))
    return [p.markup for p in split(items, limit=limit, escape=escape_markdown_char)]


# ---- parse ---------------------------------------------------------------------------------


def test_parse_inlines() -> None:
    doc = parse("a **b** *c* ~~d~~ `e` [f](https://x.org/p?q=1) g\\\nh\ni")
    assert doc == Document(
        (
            Paragraph(
                (
                    Text("a "),
                    Strong((Text("b"),)),
                    Text(" "),
                    Emphasis((Text("c"),)),
                    Text(" "),
                    Strikethrough((Text("d"),)),
                    Text(" "),
                    CodeSpan("e"),
                    Text(" "),
                    Link("https://x.org/p?q=1", (Text("f"),)),
                    Text(" g"),
                    LineBreak(hard=True),
                    Text("h"),
                    LineBreak(hard=False),
                    Text("i"),
                )
            ),
        )
    )


def test_parse_blocks() -> None:
    source = (
        "## Title\n\n> quoted\n\n- one\n  - nested\n- two\n\n3. three\n4. four\n\n"
        "```python\nprint(1)\n```\n\n---\n\n| a | b |\n|:--|--:|\n| 1 | *2* |\n"
    )
    doc = parse(source)
    assert doc.blocks == (
        Heading(2, (Text("Title"),)),
        BlockQuote((Paragraph((Text("quoted"),)),)),
        ListBlock(
            False,
            (
                ListItem(
                    (
                        Paragraph((Text("one"),)),
                        ListBlock(False, (ListItem((Paragraph((Text("nested"),)),)),)),
                    )
                ),
                ListItem((Paragraph((Text("two"),)),)),
            ),
        ),
        ListBlock(True, (ListItem((Paragraph((Text("three"),)),)), ListItem((Paragraph((Text("four"),)),))), 3),
        CodeBlock("print(1)", "python"),
        ThematicBreak(),
        Table(
            header=((Text("a"),), (Text("b"),)),
            rows=(((Text("1"),), (Emphasis((Text("2"),)),)),),
            aligns=("left", "right"),
        ),
    )


def test_raw_html_is_text_and_entities_are_decoded() -> None:
    doc = parse("<script>alert(1)</script> &amp; &lt;b&gt;")
    assert doc.blocks == (Paragraph((Text("<script>alert(1)</script> & <b>"),)),)


@pytest.mark.parametrize(
    ("url", "safe"),
    [
        ("https://example.com/a?b=1", True),
        ("http://example.com", True),
        ("mailto:someone@example.com", True),
        ("tg://user?id=42", True),
        ("javascript:alert(1)", False),
        ("JAVASCRIPT:alert(1)", False),
        ("data:text/html;base64,PHNjcmlwdD4=", False),
        ("vbscript:msgbox", False),
        ("file:///etc/passwd", False),
        ("/relative/path", False),
        ("https:///no-host", False),
        ("https://exa mple.com", False),
        ("", False),
    ],
)
def test_safe_href(url: str, safe: bool) -> None:
    assert (safe_href(url) is not None) is safe


def test_unsafe_links_keep_only_their_label() -> None:
    doc = parse("[click](javascript:alert(1)) [rel](/x) ![img](data:image/png;base64,AAAA)")
    text = plain_text(doc)
    assert "click" in text and "rel" in text
    assert not any(isinstance(node, Link) for node in doc.blocks[0].children)  # type: ignore[union-attr]


def test_partial_markdown_parses_sanely() -> None:
    doc = parse("Intro **unclosed bold and `open code\n\n```py\ndef f():\n    return")
    assert doc.blocks[0] == Paragraph((Text("Intro **unclosed bold and `open code"),))
    assert doc.blocks[1] == CodeBlock("def f():\n    return", "py")
    assert parse("") == Document(())


# ---- the Markdown serialiser ---------------------------------------------------------------

ROUND_TRIP_SOURCES = [
    "# Heading *one*\n\nSome **bold**, *italic*, ~~gone~~ and `code` with [a link](https://e.com/x_y).",
    "> quoted **text**\n>\n> > nested quote",
    "- one\n- two\n  - two a\n  - two b\n- three",
    "7. seven\n8. eight",
    "```rust\nfn main() {}\n```",
    "Literal \\*stars\\*, \\_under\\_, \\# hash, 1\\. not a list, a < b & c > d, back\\\\slash",
    "\\- not a bullet\n\n\\+ nor this",
    "text\n1\\. not a list\n\\- nor this\n\\=== nor a heading\n**1. bold** 2. fine",
    "AT&T &amp;amp; &copy; a&b;",
    "Code with `` a`b `` inside",
    "line one\\\nline two",
    "***",
]


@pytest.mark.parametrize("source", ROUND_TRIP_SOURCES)
def test_markdown_serialiser_round_trips(source: str) -> None:
    doc = parse(source)
    (rendered,) = md_parts(source, 10_000)
    assert parse(rendered) == doc, rendered


def test_markdown_serialiser_tables_and_fences_with_backticks() -> None:
    source = "| a | b |\n|---|:-:|\n| x \\| y | z |\n\n````\n```\ninner fence\n```\n````"
    (rendered,) = md_parts(source, 10_000)
    again = parse(rendered)
    assert again.blocks[0] == parse(source).blocks[0]
    assert again.blocks[1] == CodeBlock("```\ninner fence\n```", "")


# ---- the splitter: boundaries --------------------------------------------------------------


def test_split_prefers_paragraphs() -> None:
    parts = md_parts("First paragraph here.\nStill first.\n\nSecond paragraph.", 45)
    assert parts == ["First paragraph here.\nStill first.", "Second paragraph."]


def test_split_falls_back_to_lines() -> None:
    parts = md_parts("line one is here\nline two is here\nline three", 35)
    assert parts == ["line one is here\nline two is here", "line three"]


def test_split_falls_back_to_sentences() -> None:
    parts = md_parts("One sentence here. Another one here. A third.", 40)
    assert parts == ["One sentence here. Another one here.", "A third."]


def test_split_falls_back_to_words() -> None:
    parts = md_parts("alpha beta gamma delta epsilon", 12)
    assert parts == ["alpha beta", "gamma delta", "epsilon"]


def test_split_hard_at_characters_as_a_last_resort() -> None:
    word = "x" * 25
    parts = md_parts(word, 10)
    assert parts == ["x" * 10, "x" * 10, "x" * 5]


def test_split_takes_the_best_boundary_not_the_furthest() -> None:
    # A paragraph break early beats word breaks later in the window.
    parts = md_parts("short.\n\n" + "word " * 10, 30)
    assert parts[0] == "short."


def test_split_never_cuts_a_grapheme() -> None:
    family = "👨\u200d👩\u200d👧"
    parts = [p.plain for p in split([Run(family * 4)], limit=7, length=utf16_len)]
    assert "".join(parts) == family * 4
    assert all(p.count("\u200d") % 2 == 0 for p in parts)  # every family whole
    assert all(utf16_len(p) <= 8 for p in parts)


def test_cjk_sentences_split_after_full_stops() -> None:
    text = "今日は晴れです。明日は雨です。"
    parts = [p.plain for p in split([Run(text)], limit=10)]
    assert parts == ["今日は晴れです。", "明日は雨です。"]


# ---- the splitter: entities ----------------------------------------------------------------


def test_inline_entities_close_and_reopen_across_parts() -> None:
    parts = md_parts("**" + " ".join(["bold"] * 10) + "** tail", 24)
    assert all(p.startswith("**") for p in parts[:-1])
    for part in parts:
        assert part.count("**") % 2 == 0, part
        assert len(part) <= 24
    for part in parts:  # each part is valid Markdown on its own
        text = parse(part).blocks[0]
        assert "**" not in "".join(t.text for t in text.children if isinstance(t, Text))  # type: ignore[union-attr]


def test_links_are_reopened_with_their_target() -> None:
    parts = md_parts("[one two three four five six](https://e.com/a)", 40)
    assert len(parts) > 1
    assert all(p.startswith("[") and p.endswith("](https://e.com/a)") for p in parts)


def test_oversized_code_block_becomes_several_complete_blocks() -> None:
    code = "\n".join(f"print({i})  # line {i}" for i in range(60))
    parts = md_parts(f"Intro.\n\n```python\n{code}\n```\n\nOutro.", 300)
    assert parts[0] == "Intro."
    assert parts[-1].endswith("\n```\n\nOutro.")  # the last piece of code had room for it
    code_parts = [p for p in parts if "print(" in p]
    assert len(code_parts) > 2
    blocks = []
    for part in code_parts:
        assert part.startswith("```python\n") and "\n```" in part, part
        assert len(part) <= 300
        block = parse(part).blocks[0]
        assert isinstance(block, CodeBlock) and block.language == "python"
        blocks.append(block.code)
    assert "\n".join(blocks) == code


def test_code_block_is_moved_whole_when_it_fits_in_the_next_part() -> None:
    code = "a = 1\nb = 2\nc = 3"
    parts = md_parts("Text before the code.\n\n```\n" + code + "\n```", 30)
    assert parts == ["Text before the code.", "```\n" + code + "\n```"]


def test_table_split_repeats_its_header() -> None:
    rows = "\n".join(f"| r{i} | v{i} |" for i in range(20))
    parts = md_parts("| key | value |\n|---|---|\n" + rows, 80)
    assert len(parts) > 1
    for part in parts:
        assert part.startswith("| key | value |\n| --- | --- |\n")
        assert isinstance(parse(part).blocks[0], Table)


def test_entities_are_never_emitted_empty() -> None:
    items = [Open("<b>", "</b>"), Close(), Run("text"), Open("<i>", "</i>"), Close()]
    assert [p.markup for p in split(items, limit=100)] == ["text"]


def test_measure_plain_ignores_markup() -> None:
    items = [Open("<b>", "</b>"), Run("abcdef"), Close()]
    assert [p.markup for p in split(items, limit=6, measure="plain")] == ["<b>abcdef</b>"]
    parts = split(items, limit=10, measure="markup")
    assert [p.markup for p in parts] == ["<b>abc</b>", "<b>def</b>"]


def test_escaping_counts_towards_markup_limits() -> None:
    parts = split([Run("&&&&")], limit=10, escape=lambda ch: "&amp;" if ch == "&" else ch)
    assert [p.markup for p in parts] == ["&amp;&amp;", "&amp;&amp;"]
    assert [p.plain for p in parts] == ["&&", "&&"]


def test_first_limit_applies_to_the_first_part_only() -> None:
    parts = split([Run("aaaa bbbb cccc dddd eeee")], limit=14, first_limit=4)
    assert [p.plain for p in parts] == ["aaaa", "bbbb cccc dddd", "eeee"]


def test_gaps_are_dropped_only_where_a_split_falls() -> None:
    items = [Run("aa"), Gap("\n\n", "\n\n", BreakLevel.PARAGRAPH), Run("bb")]
    assert [p.plain for p in split(items, limit=100)] == ["aa\n\nbb"]
    assert [p.plain for p in split(items, limit=3)] == ["aa", "bb"]


def test_an_oversized_token_goes_alone() -> None:
    items = [Run("ab "), Token("<" + "x" * 20 + ">", "x"), Run(" cd")]
    parts = split(items, limit=5)
    assert [p.markup for p in parts] == ["ab", "<" + "x" * 20 + ">", "cd"]


def test_empty_and_whitespace_give_no_parts() -> None:
    assert split([], limit=10) == []
    assert split([Run("  \n ")], limit=10) == []
    assert md_parts("", 10) == []


def test_bad_input_is_refused_clearly() -> None:
    with pytest.raises(ValueError, match="limit"):
        split([Run("x")], limit=0)
    with pytest.raises(ValueError, match="Close"):
        split([Close()], limit=10)


# ---- nothing lost, nothing repeated --------------------------------------------------------


def _random_document(rng: random.Random, size: int) -> str:
    words = ["alpha", "beta", "gamma", "δέλτα", "😀", "ok.", "why?", "a&b", "<tag>", "x_y", "1.5", "日本語。"]
    blocks: list[str] = []
    while sum(map(len, blocks)) < size:
        kind = rng.randrange(11)
        sentence = " ".join(rng.choice(words) for _ in range(rng.randrange(3, 40)))
        if kind == 0:
            blocks.append(f"## {sentence[:40]}")
        elif kind == 1:
            blocks.append(f"Some **{sentence}** and *{sentence[:20]}* [link](https://e.com/{rng.randrange(99)})")
        elif kind == 2:
            blocks.append("\n".join(f"- {sentence[: rng.randrange(5, 60)]}" for _ in range(rng.randrange(1, 6))))
        elif kind == 3:
            body = "\n".join(f"    line {i} {sentence[:30]}" for i in range(rng.randrange(1, 30)))
            blocks.append(f"```py\n{body}\n```")
        elif kind == 4:
            blocks.append(f"> {sentence}\n> `code {rng.randrange(9)}`")
        elif kind == 5:
            blocks.append("x" * rng.randrange(1, 200))
        elif kind == 6:
            blocks.append(f"***{sentence[:30]}** {sentence[:15]}* [**b** `c` *i*](https://e.com/?q=1&r=2) ~~s~~")
        elif kind == 7:
            blocks.append(f"> - quoted item **{sentence[:50]}**\n>   more\\\n>   hard break\n> 1. `x`\n>\n> > deeper")
        elif kind == 8:
            rows = "\n".join(f"| {rng.choice(words)} | *{i}* | `{i}` |" for i in range(rng.randrange(1, 12)))
            blocks.append(f"| a | b | c |\n|:-|:-:|-:|\n{rows}")
        elif kind == 9:
            blocks.append(f"1. step\n\n   ```\n   code {sentence[:20]}\n   ```\n2. next **{sentence[:25]}**")
        else:
            blocks.append(sentence)
    return "\n\n".join(blocks)


@pytest.mark.parametrize("seed", range(12))
def test_random_documents_split_without_loss(seed: int) -> None:
    rng = random.Random(seed)
    source = _random_document(rng, rng.randrange(200, 3000))
    limit = rng.randrange(40, 600)
    items = MarkdownRenderer().render(parse(source))
    whole = split(items, limit=1 << 30, escape=escape_markdown_char)
    parts = split(items, limit=limit, escape=escape_markdown_char, length=utf16_len)
    assert_same_content([p.plain for p in parts], whole[0].plain)
    for part in parts:
        assert utf16_len(part.markup) <= limit, part.markup


def test_plain_text_of_a_document() -> None:
    assert plain_text(parse("# T\n\n**a** [b](https://e.com)\n\n- c")) == "T\n\na b\n\n- c"


def mixed_document(size: int = 20_000) -> str:
    """A deterministic document of every construct, with an oversized code block, a word longer
    than any limit, emoji, CJK, and text that looks like markup."""
    sections: list[str] = []
    index = 0
    while sum(map(len, sections)) < size:
        index += 1
        sections.append(
            f"## Section {index}: *results* & <notes>\n\n"
            f"Paragraph {index} has **bold {index}**, *italic*, ~~struck~~, `code & <tags>`, "
            f"a [link {index}](https://example.com/{index}?a=1&b=2), emoji 😀👍🏽 and 日本語の文。"
            f" It keeps going. Does it? Yes! " + "More words follow here. " * 12 + "\n\n"
            "- first item with **bold**\n  - nested item\n    - deeper item\n- second item\n\n"
            "1. one\n2. two\n\n"
            "> A quote with *style* and `code`.\n>\n> ```\n> quoted code\n> ```\n\n"
            "| name | value |\n|:-----|------:|\n| alpha | 1 |\n| beta & co | 22 |\n\n"
            "<script>alert('x')</script> &amp; &lt;b&gt; [bad](javascript:alert(1))\n\n---"
        )
        if index == 2:
            body = "\n".join(f"    value_{i} = compute({i}) * {i}  # step {i}" for i in range(150))
            sections.append(f"```python\n{body}\n```")
        if index == 3:
            sections.append("https://example.com/" + "x" * 5000)
    return "\n\n".join(sections)


def test_mixed_document_splits_without_loss_as_markdown() -> None:
    source = mixed_document()
    assert len(source) >= 20_000
    items = MarkdownRenderer().render(parse(source))
    (whole,) = split(items, limit=1 << 30, escape=escape_markdown_char)
    parts = split(items, limit=4000, escape=escape_markdown_char, length=utf16_len)
    assert len(parts) > 5
    assert all(utf16_len(p.markup) <= 4000 for p in parts)
    assert_same_content([p.plain for p in parts], whole.plain)


def test_entities_reopen_after_quote_markers_and_list_indentation() -> None:
    parts = md_parts("> **bold words\n> more bold words**", 22)
    assert parts == ["> **bold words**", "> **more bold words**"]
    parts = md_parts("- *item text\n  continued here*", 18)
    assert parts == ["- *item text*", "  *continued here*"]
    for part in parts[:1]:
        assert parse(part) == parse(part.strip())


# ---- healing stream frames -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "healed"),
    [
        ("Hello **bold so fa", "Hello **bold so fa**"),
        ("Hello **bold** and *it", "Hello **bold** and *it*"),
        ("**bold *and it", "**bold *and it***"),
        ("x ~~gone", "x ~~gone~~"),
        ("a `code so", "a `code so`"),
        ("a `code **not bold", "a `code **not bold`"),
        ("snake_case and more", "snake_case and more"),
        ("2 * 3 = 6 and 4 * 5", "2 * 3 = 6 and 4 * 5"),
        ("**trailing space ", "**trailing space**"),
        ("See [the docs](https://exa", "See the docs"),
        ("See [**the docs**](https://exa", "See **the docs**"),
        ("> quote **b", "> quote **b**"),
        ("```py\nx = **", "```py\nx = **"),
        ("```py\nx = 1\n```\n\nafter **b", "```py\nx = 1\n```\n\nafter **b**"),
        ("first **para**\n\nsecond", "first **para**\n\nsecond"),
        ("escaped \\*star", "escaped \\*star"),
        ("", ""),
    ],
)
def test_heal_partial(frame: str, healed: str) -> None:
    assert heal_partial(frame) == healed


def test_healing_never_adds_visible_characters() -> None:
    rng = random.Random(3)
    source = mixed_document(4000)
    for _ in range(80):
        frame = source[: rng.randrange(1, len(source))]
        healed_text = re.sub(r"\s+", "", plain_text(parse(heal_partial(frame))))
        raw_text = re.sub(r"\s+", "", plain_text(parse(frame)))
        assert len(healed_text) <= len(raw_text), frame[-80:]
