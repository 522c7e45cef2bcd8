"""gateway/heap.py: the commands freeze what start-up built, so full collections skip it, and
collect the young generation less often."""

from __future__ import annotations

import gc
import weakref

from gateway.heap import YOUNG_GENERATION_THRESHOLD, tune_collector_after_startup


class Cycle:
    def __init__(self) -> None:
        self.me = self


def test_start_up_garbage_is_freed_the_rest_frozen_and_later_garbage_still_collected() -> None:
    thresholds = gc.get_threshold()
    try:
        garbage = Cycle()
        freed = weakref.ref(garbage)
        del garbage
        kept = [Cycle() for _ in range(10)]
        frozen = tune_collector_after_startup()
        assert freed() is None  # freed by the collection before the freeze, not frozen
        assert frozen == gc.get_freeze_count() >= len(kept)
        later = [weakref.ref(Cycle()) for _ in range(100)]  # garbage made after the freeze...
        gc.collect()
        assert all(ref() is None for ref in later)  # ...is collected as before
        assert gc.get_freeze_count() == frozen
        assert gc.get_threshold() == (YOUNG_GENERATION_THRESHOLD, *thresholds[1:])
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
