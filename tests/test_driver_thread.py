"""The thread that runs SQLite work for the event loop (``gateway.store.driver_thread``)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from gateway.store.driver_thread import DriverThread, ThreadClosed


async def test_work_runs_in_order_on_its_thread_and_errors_reach_the_caller():
    thread = DriverThread("test-driver")
    try:
        seen: list[tuple[int, str]] = []

        def work(n: int) -> int:
            seen.append((n, threading.current_thread().name))
            if n == 3:
                raise ValueError("three")
            return n * 10

        outcomes = await asyncio.gather(*(thread.run(work, n) for n in range(5)), return_exceptions=True)
        assert outcomes[:3] == [0, 10, 20] and outcomes[4] == 40
        assert isinstance(outcomes[3], ValueError)
        assert seen == [(n, "test-driver") for n in range(5)]
    finally:
        await asyncio.to_thread(thread.shutdown)


async def test_work_cancelled_before_the_thread_takes_it_is_skipped():
    thread = DriverThread("test-driver")
    inside, gate = threading.Event(), threading.Event()
    ran: list[str] = []
    try:
        held = thread.run(lambda: (inside.set(), gate.wait(10)))
        await asyncio.to_thread(inside.wait, 10)
        skipped = thread.run(ran.append, "skipped")
        kept = thread.run(ran.append, "kept")
        skipped.cancel()
        gate.set()
        await held
        await kept
        assert ran == ["kept"]
    finally:
        await asyncio.to_thread(thread.shutdown)


async def test_shutdown_finishes_the_work_handed_over_then_refuses_more():
    thread = DriverThread("test-driver")
    inside, gate = threading.Event(), threading.Event()
    held = thread.run(lambda: (inside.set(), gate.wait(10)))
    queued = thread.run(lambda: "done")
    await asyncio.to_thread(inside.wait, 10)
    stopping = asyncio.ensure_future(asyncio.to_thread(thread.shutdown))
    await asyncio.sleep(0.05)
    assert not stopping.done()  # still busy with the work handed over
    gate.set()
    await stopping
    await held
    assert await queued == "done"
    with pytest.raises(ThreadClosed):
        thread.run(lambda: None)
