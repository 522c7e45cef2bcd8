"""Small helpers shared by the test modules."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any

from gateway.config import settings_class

ShippedSettings = settings_class(distribution="chatgate")
"""Every option chatgate ships (the core's and its own adapters' sections): what
config.example.toml documents. Third-party adapters installed for the tests are left out."""


async def until(predicate: Callable[[], Any], timeout: float = 5.0) -> Any:
    """Poll ``predicate`` until it returns something truthy (returned), or fail after ``timeout``.

    For conditions that live in another process or a fake server with no event to wait on."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if inspect.isawaitable(value):  # an async check (a store query)
            value = await value
        if value:
            return value
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")
