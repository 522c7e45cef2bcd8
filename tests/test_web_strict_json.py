"""adapters/web/wire.py's ``strict_json``: every body and frame the web channel reads goes
through it. It takes what ``json.loads`` takes, with the same values, except what the rest of the
system cannot keep (NaN and the infinities, lone surrogates, NUL, nesting that exhausts the
parser), which it refuses with ``JSONRefused``."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.web.wire import JSONRefused, strict_json

keep = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"))
values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | keep,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keep, inner, max_size=4),
    max_leaves=30,
)


@given(values, st.booleans())
def test_what_the_system_can_keep_reads_back_as_it_was_written(value: Any, ascii_only: bool) -> None:
    text = json.dumps(value, ensure_ascii=ascii_only)
    assert strict_json(text) == value
    assert strict_json(text.encode()) == value


@given(st.text(alphabet=st.sampled_from('{}[]":,0123456789.eE+-tfnrulasNIiy\\ u\ufeff\0')) | st.text())
def test_anything_else_reads_as_json_loads_reads_it_or_is_refused(text: str) -> None:
    try:
        expected = json.loads(text)
    except (ValueError, RecursionError):
        with pytest.raises(ValueError):
            strict_json(text)
        return
    try:
        value = strict_json(text)
    except JSONRefused:
        return  # NaN, an infinity, a lone surrogate or NUL: json.loads takes them, the store cannot
    assert value == expected


@pytest.mark.parametrize("text", ['{"a": NaN}', "[Infinity]", "-Infinity", '"\\ud800"', '{"k": "a\\u0000b"}',
                                  "[" * 100_000 + "]" * 100_000])
def test_what_the_system_cannot_keep_is_refused(text: str) -> None:
    with pytest.raises(JSONRefused):
        strict_json(text)


def test_a_byte_order_mark_is_taken_on_bytes_only_as_json_loads_takes_it() -> None:
    assert strict_json(b'\xef\xbb\xbf{"a": 1}') == {"a": 1}  # UTF-8 with a BOM: the BOM is not content
    with pytest.raises(json.JSONDecodeError, match="BOM"):
        strict_json('\ufeff{"a": 1}')  # a str holds characters: U+FEFF is not JSON
    with pytest.raises(UnicodeDecodeError):
        strict_json(b'{"a": "\xff"}')
