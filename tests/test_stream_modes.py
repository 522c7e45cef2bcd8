"""Streams of deltas and of cumulative snapshots (issue 14.1): ``StreamText``'s rule, then the
same streams through ``stream()``, ``stream_reply_from()`` and ``write()`` in a real gateway."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from promptrails import AsyncPromptRails

import gateway
from adapters.web.testing import base_url, running_gateway
from gateway.stream_text import StreamText
from gateway.testing import TestClient


def joined(items: list[str]) -> str:
    text = StreamText()
    for item in items:
        text.add(item)
    text.finish()
    return text.text


def capsule_rule(items: list[str]) -> str:
    """Capsule's rule, as capsule-api.md §5 describes it: an item equal to or extending the text
    so far is a snapshot (only its new suffix is added), anything else a delta."""
    text = ""
    for item in items:
        if not item:
            continue
        text = item if item.startswith(text) else text + item
    return text


# -- the rule ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("items", "expected", "mode"),
    [
        (["You", "You said", "You said: hi"], "You said: hi", "cumulative"),
        (["You", " said", ": hi"], "You said: hi", "deltas"),
        (["ha", "ha"], "haha", "deltas"),
        (["ha", "ha", "!"], "haha!", "deltas"),
        (["ha", "ha", "hah", "a"], "hahahaha", "deltas"),
        (["You", "You", "You said"], "You said", "cumulative"),  # a snapshot repeated before it grew
        (["", "You", "", "You said", ""], "You said", "cumulative"),  # empty items do not count
        (["only"], "only", "undecided"),
        ([], "", "undecided"),
        (["", ""], "", "undecided"),
        ([" ", " "], "  ", "deltas"),  # whitespace is text
        (["Hi ", "Hi there", "Hi there "], "Hi there ", "cumulative"),
        (["Hello wrold", "Hello wrold!", "Hello world!"], "Hello world!", "cumulative"),  # a revision replaces
        (["Hi", "Hi!", "Hi!"], "Hi!", "cumulative"),  # an equal snapshot adds nothing
        (["The", " cat", " The cat"], "The cat The cat", "deltas"),  # a delta that repeats the text is kept
        (["a", "ab"], "ab", "cumulative"),  # the one ambiguous stream: documented
    ],
)
def test_the_first_two_different_items_decide(items, expected, mode):
    text = StreamText()
    for item in items:
        text.add(item)
    text.finish()
    assert (text.text, text.mode) == (expected, mode)


@pytest.mark.parametrize(
    ("items", "ours", "capsules"),
    [
        (["ha", "ha"], "haha", "ha"),
        (["ha", "ha", "hah", "a"], "hahahaha", "haha"),
        (["The", " cat", "The cat sat"], "The catThe cat sat", "The cat sat"),  # deltas stay deltas
        (["Hello wrold", "Hello wrold!", "Hello world!"], "Hello world!", "Hello wrold!Hello world!"),
    ],
)
def test_where_capsules_rule_loses_text_and_ours_does_not(items, ours, capsules):
    assert joined(items) == ours
    assert capsule_rule(items) == capsules


def test_repeats_before_the_mode_is_known_read_as_deltas_until_a_snapshot_says_otherwise():
    text = StreamText()
    assert text.add("ha") is True and text.text == "ha"
    assert text.add("ha") is True and text.text == "haha"  # shown at once: a repeated token never stalls
    assert text.add("") is False
    assert text.add(" ho") is True and text.text == "haha ho" and text.mode == "deltas"
    snapshots = StreamText()
    for item in ("You", "You", "You"):
        snapshots.add(item)
    assert snapshots.text == "YouYouYou" and snapshots.mode == "undecided"
    snapshots.add("You said")
    assert snapshots.text == "You said" and snapshots.mode == "cumulative"


def test_a_long_run_of_one_repeated_token_grows_with_every_item():
    text = StreamText()
    for count in range(1, 200):
        assert text.add("more ") is True
        assert text.text == "more " * count


def test_replace_sets_the_whole_text_in_every_mode():
    text = StreamText()
    text.add("draft")
    text.replace("final")
    text.add("!")  # undecided: starts over from the replaced text, "!" does not extend it
    assert text.text == "final!" and text.mode == "deltas"
    cumulative = StreamText()
    for item in ("a b", "a b c"):
        cumulative.add(item)
    cumulative.replace("x")
    cumulative.add("x y")
    assert cumulative.text == "x y"


tokens = st.text(min_size=0, max_size=6)


@given(st.lists(tokens, max_size=30))
def test_any_delta_stream_round_trips(items):
    """Every stream of deltas whose first different non-empty token does not extend the first
    one (all but the documented ``"a", "ab"`` case) comes out exactly as written."""
    non_empty = [i for i in items if i]
    different = [i for i in non_empty[1:] if i != non_empty[0]] if non_empty else []
    assume(not different or not different[0].startswith(non_empty[0]))
    assert joined(items) == "".join(items)


@given(
    st.text(min_size=2, max_size=60),
    st.lists(st.integers(min_value=1, max_value=60), min_size=1, max_size=15),
    st.lists(st.integers(min_value=0, max_value=20), max_size=5),
)
def test_any_growing_snapshot_stream_yields_its_last_snapshot(final, cuts, repeats_at):
    snapshots = sorted({min(c, len(final)) for c in cuts} | {len(final)})
    items = [final[:c] for c in snapshots]
    assume(len(set(items)) >= 2)  # one snapshot repeated and never grown reads as deltas
    for position in repeats_at:  # models repeat a snapshot when nothing new arrived
        index = position % len(items)
        items.insert(index, items[index])
        items.insert(index, "")
    assert joined(items) == items[-1] == final


@given(st.lists(st.text(min_size=1, max_size=20), min_size=2, max_size=10))
def test_a_cumulative_stream_that_revises_itself_ends_on_its_last_item(revisions):
    first = revisions[0]
    items = [first, first + "\u2026", *revisions[1:]]  # the second item strictly extends the first
    assert joined(items) == items[-1]


# -- through a real gateway -------------------------------------------------------------------


SNAPSHOTS = ["You", "You said", "You said", "You said: hi"]
DELTAS = ["ha", "ha", " ", "ha", "!"]


async def _items(items: list[str | None]) -> AsyncIterator[str | None]:
    for item in items:
        await asyncio.sleep(0)
        yield item


def streaming_app() -> gateway.App:
    app = gateway.App("streams")

    @app.message()
    async def handle(session: gateway.Session, msg: gateway.Message) -> None:
        how, kind = msg.text.split()
        items: list[str | None] = list(SNAPSHOTS if kind == "snapshots" else DELTAS)
        items.insert(1, None)
        items.insert(2, "")
        if how == "stream":
            await session.stream(_items(items))
        elif how == "from":
            text = await session.stream_reply_from(iter(items))
            session.data["returned"] = text
        else:
            async with session.stream_reply() as reply:
                for item in items:
                    if item is not None:
                        reply.write(item)
                        await asyncio.sleep(0)

    return app


@pytest.mark.parametrize("how", ["stream", "from", "write"])
@pytest.mark.parametrize(("kind", "expected"), [("snapshots", "You said: hi"), ("deltas", "haha ha!")])
async def test_the_stored_and_shown_reply_is_exact(tmp_path, how, kind, expected):
    async with TestClient(streaming_app(), tmp_path) as client:
        conv = await client.conversation("alice")
        turn = await conv.send(f"{how} {kind}")
        assert turn.error is None
        [stream] = turn.streams
        assert stream.text == expected  # what the channel was given to show, finally
        assert all(expected.startswith(frame) for frame in stream.frames)  # and on the way
        stored = await client.gateway.store.messages.recent(conv.session_id, 10)
        assert [(m.role, m.text) for m in stored] == [("user", f"{how} {kind}"), ("assistant", expected)]
        if how == "from":
            record = await client.gateway.store.sessions.get(conv.session_id)
            assert record.data["returned"] == expected


async def test_a_cumulative_stream_over_rest_and_sse_is_exact(tmp_path):
    async with running_gateway(streaming_app(), tmp_path, web={"api_keys": ["k"], "send_timeout": 10}) as gw:
        sdk = AsyncPromptRails("k", base_url=base_url(gw), max_retries=0)
        session = await sdk.chat.create_session(agent_id="default")
        events = [e async for e in sdk.chat.send_message_stream(session.id, content="from snapshots")]
        assert "".join(e.content for e in events if e.type == "content") == "You said: hi"
        assert events[-1].output["content"] == "You said: hi"
        reply = await sdk.chat.send_message(session.id, content="write deltas")
        assert reply.content == "haha ha!"
        listed = await sdk.chat.list_messages(session.id)
        assert [m.content for m in listed.data] == ["from snapshots", "You said: hi", "write deltas", "haha ha!"]
