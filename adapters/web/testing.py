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

NO_LIMITS: dict[str, Any] = {
    "sockets_per_ip": 0,
    "sockets_per_visitor": 0,
    "new_sessions_per_ip": "",
    "new_sessions_per_visitor": "",
    "messages_per_ip": "",
    "messages_per_visitor": "",
    "upload_bytes_per_ip": "",
    "upload_bytes_per_visitor": "",
    "uploads_per_ip": 0,
    "uploads_per_visitor": 0,
}
"""Every ``web.limits`` entry off: tests and benchmarks send from one loopback address."""


def web_settings(root: str | Path, **overrides: Any) -> Any:
    """``gateway.testing.test_settings`` with the web channel on, frames unthrottled and the
    per-IP/per-visitor limits off except those given (``web={"limits": {...}}``)."""
    web_overrides = dict(overrides.pop("web", {}))
    limits = {**NO_LIMITS, **web_overrides.pop("limits", {})}
    web = {"enabled": True, "stream_interval": 0.0, "limits": limits, **web_overrides}
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
