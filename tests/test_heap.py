"""gateway/heap.py: the commands freeze what start-up built, so full collections skip it."""

from __future__ import annotations

import gc
import weakref

from gateway.heap import freeze_startup_objects


class Cycle:
    def __init__(self) -> None:
        self.me = self


def test_start_up_garbage_is_freed_the_rest_frozen_and_later_garbage_still_collected() -> None:
    try:
        garbage = Cycle()
        freed = weakref.ref(garbage)
        del garbage
        kept = [Cycle() for _ in range(10)]
        frozen = freeze_startup_objects()
        assert freed() is None  # freed by the collection before the freeze, not frozen
        assert frozen == gc.get_freeze_count() >= len(kept)
        later = [weakref.ref(Cycle()) for _ in range(100)]  # garbage made after the freeze...
        gc.collect()
        assert all(ref() is None for ref in later)  # ...is collected as before
        assert gc.get_freeze_count() == frozen
    finally:
        gc.unfreeze()
