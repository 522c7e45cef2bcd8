"""A thread that runs blocking SQLite work for the event loop, with the least hand-off there is.

``loop.run_in_executor`` wraps every call in a ``concurrent.futures.Future`` chained to an
asyncio future: a work item, a condition variable, a lock taken on submit and on each callback,
and the two threads contending for them. On a turn's four or five hops that hand-off was a
sixth of the gateway's CPU (py-spy, bench/README.md). Here the work goes in through a
``queue.SimpleQueue`` (implemented in C, no Python-level lock) and its outcome comes back with
one ``call_soon_threadsafe``, straight into the caller's asyncio future.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_Job = tuple[Callable[..., Any], tuple[Any, ...], asyncio.AbstractEventLoop, "asyncio.Future[Any]"]


class ThreadClosed(RuntimeError):
    """Work was handed to a thread that has been shut down."""


class DriverThread:
    """One daemon thread, serving work in the order it was handed over."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def run(self, function: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """``function(*args)`` on the thread; an asyncio future of the running loop for its
        outcome. Cancelling the future before the thread takes the work skips it; once taken, the
        work runs to its end (its outcome is then dropped)."""
        if self._closed:
            raise ThreadClosed(f"{self._thread.name} is shut down")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put((function, args, loop, future))
        return future

    def shutdown(self) -> None:
        """Finish the work already handed over, then stop the thread."""
        if not self._closed:
            self._closed = True
            self._jobs.put(None)
        self._thread.join()

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            function, args, loop, future = job
            if future.cancelled():  # read across threads: at worst the work runs and is dropped
                continue
            try:
                outcome, ok = function(*args), True
            except BaseException as error:  # handed to the caller, as run_in_executor does
                outcome, ok = error, False
            try:
                loop.call_soon_threadsafe(_resolve, future, ok, outcome)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                pass


def _resolve(future: asyncio.Future[Any], ok: bool, outcome: Any) -> None:
    if future.done():  # cancelled while the work ran
        return
    if ok:
        future.set_result(outcome)
    else:
        future.set_exception(outcome)
