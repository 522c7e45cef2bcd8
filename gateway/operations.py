"""The operations routes, ``GET /readyz`` and ``GET /metrics``, on any aiohttp application: the
gateway's server (``gateway.server``) mounts them, and a process with a small port of its own (a
worker) can mount the same ones. ``/healthz`` (alive: the process answers) is the server's.

``/readyz``: 200 ``{"status": "ready", "checks": {name: {"ok", "latency_ms"}}}`` when every check
passes; otherwise 503 with the failing checks named, in the server's error shape as well
(``{"error": {"code": "not_ready", "message": ...}}``). Open to anyone who reaches the port (load
balancers and orchestrators probe without credentials); the body holds no setting.

``/metrics``: the Prometheus exposition. With ``server.metrics_token`` set it needs
``Authorization: Bearer <token>``; without one it answers only requests made directly on the
loopback interface: a request relayed by a proxy (``Forwarded``/``X-Forwarded-For``) or from
another host gets 403 naming the setting. So a gateway published on the internet never shows its
counters unasked, and a scraper on the same host works with no setting.
"""

from __future__ import annotations

import hmac
import ipaddress
from dataclasses import dataclass

from aiohttp import web

from gateway.health import Readiness
from gateway.metrics import GatewayMetrics

PROXY_HEADERS = ("Forwarded", "X-Forwarded-For", "X-Real-IP")


@dataclass
class Operations:
    readiness: Readiness
    metrics: GatewayMetrics
    metrics_token: str | None = None


OPERATIONS_KEY: web.AppKey[Operations] = web.AppKey("chatgate_operations", Operations)


def mount_operations(web_app: web.Application, operations: Operations) -> None:
    """Add ``GET /readyz`` and ``GET /metrics`` to ``web_app``."""
    web_app[OPERATIONS_KEY] = operations
    web_app.router.add_get("/readyz", readyz)
    web_app.router.add_get("/metrics", metrics)


def _error(http_status: int, code: str, message: str, **extra: object) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}, **extra}, status=http_status)


async def readyz(request: web.Request) -> web.Response:
    results = await request.app[OPERATIONS_KEY].readiness.run()
    checks = {result.name: result.to_json() for result in results}
    failing = [result for result in results if not result.ok]
    if not failing:
        return web.json_response({"status": "ready", "checks": checks})
    message = "not ready: " + "; ".join(f"{result.name} ({result.error})" for result in failing)
    return _error(503, "not_ready", message, status="unavailable",
                  failing=[result.name for result in failing], checks=checks)


async def metrics(request: web.Request) -> web.Response:
    operations = request.app[OPERATIONS_KEY]
    refused = _refuse(request, operations.metrics_token)
    if refused is not None:
        return refused
    await operations.metrics.refresh(operations.readiness.timeout)
    body, content_type = operations.metrics.render(request.headers.get("Accept", ""))
    return web.Response(body=body, headers={"Content-Type": content_type, "Cache-Control": "no-store"})


def _refuse(request: web.Request, token: str | None) -> web.Response | None:
    if token:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode()):
            return None
        response = _error(401, "unauthorized", "/metrics needs Authorization: Bearer <server.metrics_token>")
        response.headers["WWW-Authenticate"] = 'Bearer realm="chatgate metrics"'
        return response
    if _direct_loopback(request):
        return None
    return _error(403, "forbidden", "/metrics answers only local requests; set server.metrics_token "
                  "(CHATGATE_SERVER__METRICS_TOKEN) and scrape with that bearer token")


def _direct_loopback(request: web.Request) -> bool:
    if any(header in request.headers for header in PROXY_HEADERS):
        return False  # relayed by a proxy on this host: the client is elsewhere
    try:
        address = ipaddress.ip_address((request.remote or "").split("%", 1)[0])
    except ValueError:
        return False  # a unix socket or an unknown peer
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1 on a dual-stack socket
    return (mapped or address).is_loopback
