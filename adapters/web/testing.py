"""A real gateway with the web channel on a loopback port, for tests and benchmarks.

```python
async with running_gateway(app, tmp_path, web={"api_keys": ["k"]}) as gw:
    url = base_url(gw)   # http://127.0.0.1:<port>
```
Everything is real: the SQLite file under ``root``, the dispatcher, the HTTP server, the adapter.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt

from gateway.app import App
from gateway.runtime import Gateway
from gateway.testing import test_settings

from .adapter import WebAdapter


def web_settings(root: str | Path, **overrides: Any) -> Any:
    """``gateway.testing.test_settings`` with the web channel on and frames unthrottled."""
    web = {"enabled": True, "stream_interval": 0.0, **overrides.pop("web", {})}
    return test_settings(root, web=web, **overrides)


@contextlib.asynccontextmanager
async def running_gateway(app: App, root: str | Path, **overrides: Any) -> AsyncIterator[Gateway]:
    settings = web_settings(root, **overrides)
    gateway = Gateway(app, settings, adapters=[WebAdapter(settings)])
    await gateway.start()
    try:
        yield gateway
    finally:
        await gateway.stop()


def base_url(gateway: Gateway) -> str:
    return f"http://127.0.0.1:{gateway.port}"


def identity_token(secret: str, sub: str, *, email: str | None = None, org: str | None = None, ttl: float = 300) -> str:
    """A host site's identity token, as a host site would mint it."""
    claims: dict[str, Any] = {"sub": sub, "exp": int(time.time() + ttl)}
    if email:
        claims["email"] = email
    if org:
        claims["org"] = org
    return jwt.encode(claims, secret, algorithm="HS256")
