"""Calling user code that may be sync or async (Capsule accepts both for every decorator)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any


async def call_maybe_async(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call a handler that may be sync or async (Capsule allows both)."""
    result = fn(*args, **kwargs)
    if inspect.isawaitable(result):
        return await result
    return result
