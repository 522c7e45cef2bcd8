"""Which event loop the gateway runs on: uvloop when it is installed (``pip install
'chatgate[fast]'``) and ``server.event_loop`` allows it, asyncio's own otherwise."""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar

T = TypeVar("T")
EventLoopChoice = Literal["auto", "uvloop", "asyncio"]


def loop_factory(choice: EventLoopChoice = "auto") -> tuple[Callable[[], asyncio.AbstractEventLoop] | None, str]:
    """``(factory for asyncio.Runner, its name)``: ``None`` is asyncio's default loop."""
    if choice == "asyncio":
        return None, "asyncio"
    if importlib.util.find_spec("uvloop") is None:
        if choice == "uvloop":
            raise RuntimeError("server.event_loop = \"uvloop\" but uvloop is not installed: "
                               "pip install 'chatgate[fast]' (or set event_loop = \"auto\")")
        return None, "asyncio"
    import uvloop

    return uvloop.new_event_loop, "uvloop"


def run(main: Coroutine[Any, Any, T], choice: EventLoopChoice = "auto") -> T:
    """``asyncio.run(main)`` on the chosen loop."""
    factory, _ = loop_factory(choice)
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


def running_loop_name() -> str:
    """``uvloop`` or ``asyncio``: the loop this coroutine runs on (for the start-up log)."""
    return "uvloop" if type(asyncio.get_running_loop()).__module__.startswith("uvloop") else "asyncio"
