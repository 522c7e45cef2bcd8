"""chatgate's ids (``gateway.ids``): ULIDs that sort in the order they were made and name the
instant they were made, which is the ``created_at`` the store keeps for their rows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st
from ulid import ULID

from gateway.ids import floor_id, id_instant, instant, new_id, stamped_id

LAST_NS = int((datetime(9999, 12, 31, tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds()) * 10**9


def test_ids_sort_in_the_order_they_were_made_even_within_a_millisecond():
    ids = [new_id() for _ in range(5000)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


@given(st.integers(min_value=0, max_value=LAST_NS))
def test_an_id_is_a_ulid_of_its_millisecond_and_names_its_instant_exactly(at_ns):
    made = new_id(at_ns)
    parsed = ULID.from_str(made)  # the ulid package reads it as the same ULID
    assert str(parsed) == made and len(made) == 26
    assert parsed.milliseconds == at_ns // 1_000_000
    assert id_instant(made) == instant(at_ns)
    assert id_instant(made.lower()) == instant(at_ns)


def test_a_stamped_id_names_the_instant_it_is_stamped_with():
    record_id, created_at = stamped_id()
    assert id_instant(record_id) == created_at
    assert abs((created_at - datetime.now(UTC)).total_seconds()) < 5


def test_another_ulid_names_its_millisecond_and_anything_else_nothing():
    other = ULID()  # random bits where ours keep the nanoseconds
    assert id_instant(str(other)).replace(microsecond=0) == other.datetime.replace(microsecond=0)
    assert id_instant(new_id((2**48 - 1) * 1_000_000)) is None  # a valid ULID, past the year 9999
    made = new_id()
    for not_an_id in ("", "m-1", "x" * 26, "8" + "0" * 25, "01HZ" + "!" * 22, "01" * 20,
                      # what int(text, 32) would read: separators, signs, spaces, other digits
                      made[:10] + "_" + made[11:], "+" + made[1:], " " + made[1:], made[:-1] + "\n",
                      made[:-1] + "\u0663", made[:-1] + "I", made[:-1] + "u", made[:-1] + "é"):
        assert id_instant(not_an_id) is None, not_an_id


@given(st.text(min_size=26, max_size=26))
def test_any_text_of_an_ids_length_is_read_as_the_reference_decoder_reads_it(text):
    """Decoded in C (``int(text, 32)`` after a translation): the same answer as reading the
    characters one by one from Crockford's alphabet, for any text."""
    from gateway.ids import CROCKFORD_BASE32

    value = 0
    for character in text.upper() if text.isascii() else "!":
        if character not in CROCKFORD_BASE32:
            value = -1
            break
        value = (value << 5) | CROCKFORD_BASE32.index(character)
    if value < 0 or value >> 128:
        assert id_instant(text) is None
    else:
        assert id_instant(text) is not None or (value >> 80) > 253402300799999


@given(st.integers(min_value=0, max_value=LAST_NS - 10**9))
def test_the_floor_of_an_instant_parts_the_ids_made_before_it_from_the_rest(at_ns):
    """``id < floor_id(t)`` is "made before t" (the inbox purge finds old events by their ids)."""
    made, moment = new_id(at_ns), instant(at_ns)
    assert floor_id(moment) <= made < floor_id(moment + timedelta(microseconds=1))
    assert id_instant(floor_id(moment)) == moment


def test_the_random_part_is_every_character_of_the_alphabet_alike_and_never_handed_out_twice():
    """Twelve characters from the OS's randomness, read in batches: across many batches no two
    ids share their random part, and each of the 32 characters turns up about as often."""
    from collections import Counter

    from gateway.ids import CROCKFORD_BASE32

    parts = [new_id(0)[14:] for _ in range(20_000)]  # one instant: only the random part differs
    assert len(set(parts)) == len(parts) and all(len(part) == 12 for part in parts)
    counts = Counter("".join(parts))
    assert set(counts) == set(CROCKFORD_BASE32)
    expected = 12 * len(parts) / 32
    assert all(abs(count - expected) < 0.05 * expected for count in counts.values()), counts


def test_threads_making_ids_at_once_never_make_the_same_one():
    from concurrent.futures import ThreadPoolExecutor

    def make(_: int) -> list[str]:
        return [new_id(0) for _ in range(5_000)]

    with ThreadPoolExecutor(4) as pool:
        made = [i for batch in pool.map(make, range(4)) for i in batch]
    assert len(set(made)) == len(made)


def test_a_forked_process_does_not_repeat_its_parents_random_parts():
    import os

    new_id()  # the parent holds a batch it has begun
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child writes its ids and leaves
        os.write(write, "".join(new_id(0) for _ in range(5)).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(child, 0)
    with os.fdopen(read) as pipe:
        childs = pipe.read()
    parents = "".join(new_id(0) for _ in range(5))
    assert len(childs) == 130 and childs != parents
    assert not {childs[at:at + 26] for at in range(0, 130, 26)} & {parents[at:at + 26] for at in range(0, 130, 26)}
