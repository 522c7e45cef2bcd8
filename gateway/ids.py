"""chatgate's ids: ULIDs that name the instant they were made, to the microsecond.

A ULID is 26 characters of Crockford base32: 48 bits of Unix milliseconds, then 80 random bits.
Ours spend the first 20 of those on the nanoseconds within the millisecond, so ids made one after
the other sort in creation order even within one millisecond (a message and its reply do), and
an id says exactly when it was made. A stored row's ``created_at`` is its id's instant
(``stamped_id``), so whoever holds an id (an adapter that just published a reply) knows the
``created_at`` the store keeps for it without reading it back (``id_instant``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

CROCKFORD_BASE32 = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # the ULID alphabet (github.com/ulid/spec)
_PAIRS = [high + low for high in CROCKFORD_BASE32 for low in CROCKFORD_BASE32]  # 10 bits -> 2 characters
_PAIR_SHIFTS = tuple(range(120, -1, -10))  # 26 characters: 130 bits, the top two always 0
_MILLIS_SHIFTS = (40, 30, 20, 10, 0)  # the first 10 characters: the two zero bits and 48 of milliseconds
_RANDOM_CHARACTERS = 12  # the last 60 bits: 12 characters of 5 random bits each
_AS_CROCKFORD = bytes.maketrans(bytes(range(256)), bytes(ord(CROCKFORD_BASE32[b & 31]) for b in range(256)))
"""A random byte as a random character of the alphabet: its low 5 bits (256 is a multiple of 32,
so each character stays equally likely)."""
_RANDOM_BATCH = 4092  # bytes of the OS's randomness read at once: 341 ids' random parts
_BASE32HEX = "0123456789ABCDEFGHIJKLMNOPQRSTUV"  # the digits int(text, 32) reads, in the same order
_AS_BASE32HEX = str.maketrans(
    {**{c: h for c, h in zip(CROCKFORD_BASE32 + CROCKFORD_BASE32.lower(), _BASE32HEX * 2, strict=True)},
     **{c: "!" for c in "ILOUilou"}}  # not Crockford's: made unreadable
)
"""An id as ``int(text, 32)`` reads it: decoded in C (the Python loop took 5 us an id)."""
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NANOS_PER_MILLI = 1_000_000


def new_id(at_ns: int | None = None) -> str:
    """A new id for the instant ``at_ns`` (``time.time_ns()``; now by default).

    Made as three runs of characters: the millisecond's ten, kept while the millisecond lasts;
    the nanoseconds' four; twelve random ones from a batch of the OS's randomness (``os.urandom``,
    what ``secrets`` reads), read 341 ids at a time. A turn makes four ids: the ``ulid`` package's
    encoder took 2-3 us each, encoding all 130 bits and reading the OS's randomness for each id
    1.9 us, this 0.5 us (``tests/test_ids.py`` checks that ``ulid`` reads them as the same ULID).
    """
    millis, nanos = divmod(time.time_ns() if at_ns is None else at_ns, _NANOS_PER_MILLI)  # nanos < 2**20
    cached = _millis_prefix
    if cached[0] != millis:
        cached = _remember_millis(millis)
    try:
        random_part = next(_random_parts)
    except StopIteration:
        _read_randomness()
        random_part = next(_random_parts)
    return cached[1] + _PAIRS[nanos >> 10] + _PAIRS[nanos & 1023] + random_part


def _remember_millis(millis: int) -> tuple[int, str]:
    global _millis_prefix
    # One tuple, replaced whole: a thread reading it sees a millisecond and its own characters.
    _millis_prefix = (millis, "".join([_PAIRS[(millis >> shift) & 1023] for shift in _MILLIS_SHIFTS]))
    return _millis_prefix


def _read_randomness() -> None:
    """A new batch of random parts. Each is handed out once: ``next`` on a list's iterator is
    one step under the GIL, so two threads never take the same part; a process made by ``fork``
    reads a batch of its own before its first id (its parent's batch is not its to reuse)."""
    global _random_parts
    characters = os.urandom(_RANDOM_BATCH).translate(_AS_CROCKFORD).decode("ascii")
    _random_parts = iter([characters[at : at + _RANDOM_CHARACTERS]
                          for at in range(0, _RANDOM_BATCH, _RANDOM_CHARACTERS)])


_millis_prefix: tuple[int, str] = (-1, "")
_random_parts: Iterator[str] = iter(())
os.register_at_fork(after_in_child=_read_randomness)


def floor_id(moment: datetime) -> str:
    """The least id ``new_id`` can make at ``moment`` or later: ``id < floor_id(t)`` holds exactly
    for the ids made before ``t`` (to the microsecond, as ``instant`` keeps time)."""
    micros = (moment - _EPOCH) // timedelta(microseconds=1)
    millis, micros_in_milli = divmod(micros, 1000)
    return _encode((millis << 80) | ((micros_in_milli * 1000) << 60))


def _encode(value: int) -> str:
    return "".join([_PAIRS[(value >> shift) & 1023] for shift in _PAIR_SHIFTS])


def instant(at_ns: int) -> datetime:
    """``at_ns`` as an aware UTC datetime, truncated to the microsecond (as the store keeps it)."""
    return _EPOCH + timedelta(microseconds=at_ns // 1000)


def stamped_id() -> tuple[str, datetime]:
    """A new id and the instant it names: the ``created_at`` of the row it keys."""
    now = time.time_ns()
    return new_id(now), instant(now)


def id_instant(record_id: str) -> datetime | None:
    """The instant an id made by ``new_id`` names; for another ULID, its millisecond; ``None``
    for anything that is not a ULID (or names a time past the year 9999)."""
    if len(record_id) != 26:
        return None
    digits = record_id.translate(_AS_BASE32HEX)
    if not (digits.isascii() and digits.isalnum()):  # int() would also take "_", "+", spaces
        return None
    try:
        value = int(digits, 32)
    except ValueError:  # a letter past V: not Crockford's either
        return None
    if value >> 128:
        return None
    millis, nanos = value >> 80, (value >> 60) & 0xFFFFF
    if nanos >= _NANOS_PER_MILLI:  # not one of ours: its random part says nothing of the time
        nanos = 0
    try:
        return instant(millis * _NANOS_PER_MILLI + nanos)
    except OverflowError:
        return None
