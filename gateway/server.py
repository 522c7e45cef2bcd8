"""The one aiohttp Application every HTTP request enters.

Core routes: ``GET /healthz`` (alive), ``GET /readyz`` and ``GET /metrics`` (``gateway.operations``),
``GET /_meta``, ``GET /files/{id}`` (signed), ``GET /data/{name}`` and every ``@app.endpoint``.
Adapters add theirs in ``Adapter.mount``. Errors, the router's 404 and 405 included, are JSON:
``{"error": {"code": "...", "message": "..."}}``.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from aiohttp import web

from gateway.app import App, DataSpec, EndpointSpec
from gateway.callers import Callers
from gateway.calls import call_maybe_async
from gateway.config import ConfigError, Settings
from gateway.context import bind_http_caller, reset_current_session, set_current_session, unbind_http_caller
from gateway.files import FileStore
from gateway.operations import Operations, mount_operations
from gateway.request_headers import readable_headers
from gateway.store import Store
from gateway.types import HomeContext, IntegrationCredentials, RequestContext, UserInfo


class ServerHost(Protocol):
    """What the core routes need from the running gateway (``gateway.runtime.Gateway``)."""

    app: App
    settings: Settings
    store: Store
    files: FileStore
    callers: Callers
    operations: Operations

    def adapter_names(self) -> list[str]: ...

    async def integrations_for(self, user: UserInfo) -> dict[str, IntegrationCredentials]: ...


log = logging.getLogger("chatgate.server")

RUNTIME_KEY: web.AppKey[Any] = web.AppKey("chatgate_runtime", object)
"""The ``ServerHost`` behind every route (typed ``Any``: aiohttp's key needs a runtime class)."""
DATA_RESERVED_PARAMS = ("version_id", "session_id")  # removed before calling @app.data (Capsule)

STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "timeout",
    413: "too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}


def json_error(status: int, message: str, code: str | None = None, **extra: Any) -> web.Response:
    body: dict[str, Any] = {"code": code or STATUS_CODES.get(status, "error"), "message": message}
    if extra:
        body["details"] = extra
    return web.json_response({"error": body}, status=status)


@web.middleware
async def checked_requests(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> Any:
    """Requests whose headers are not text are refused (``gateway.request_headers``), and every
    error leaves as JSON, including aiohttp's own 404/405/413. One middleware, so one suspended
    frame per open widget socket rather than two."""
    try:
        checked = readable_headers(request)
        if isinstance(checked, web.Response):
            return checked
        return await handler(checked)
    except web.HTTPException as exc:
        return _as_json(request, exc)
    except Exception:
        return _internal_error(request)


def _as_json(request: web.Request, exc: web.HTTPException) -> web.StreamResponse:
    """aiohttp's own error (404, 405, 413...) as JSON; a success or a JSON error is raised on."""
    if exc.status < 400 or (exc.content_type == "application/json"):
        raise exc
    message = exc.reason if exc.status in (404, 405) else (exc.text or exc.reason)
    if exc.status == 404:
        message = f"no route for {request.method} {request.path}"
    elif exc.status == 405:
        message = f"{request.method} is not allowed on {request.path}"
    response = json_error(exc.status, message or exc.reason)
    for header in ("Allow", "Retry-After"):
        if header in exc.headers:
            response.headers[header] = exc.headers[header]
    return response


def _internal_error(request: web.Request) -> web.StreamResponse:
    log.exception("unhandled error on %s %s", request.method, request.path)
    return json_error(500, "internal error; the gateway log has the details", "internal_error")


def build_web_app(runtime: ServerHost) -> web.Application:
    settings = runtime.settings
    max_size = max(settings.server.max_request_bytes, settings.files.max_upload_bytes + 64 * 1024)
    web_app = web.Application(middlewares=[checked_requests], client_max_size=max_size)
    web_app[RUNTIME_KEY] = runtime
    web_app.router.add_get("/healthz", healthz)
    mount_operations(web_app, runtime.operations)
    web_app.router.add_get("/_meta", meta)
    web_app.router.add_get("/files/{file_id}", serve_file)
    web_app.router.add_get("/data/{name}", serve_data)
    for spec in runtime.app.endpoints:
        web_app.router.add_route(spec.method, spec.path, _endpoint_view(spec))
    return web_app


def build_operations_app(runtime: ServerHost) -> web.Application:
    """The small app of a ``chatgate worker``: ``/healthz``, ``/readyz`` and ``/metrics`` only."""
    web_app = web.Application(middlewares=[checked_requests])
    web_app[RUNTIME_KEY] = runtime
    web_app.router.add_get("/healthz", healthz)
    mount_operations(web_app, runtime.operations)
    return web_app


def refuse_shadowed_endpoints(web_app: web.Application, endpoints: list[EndpointSpec]) -> None:
    """Raise ``ConfigError`` when an ``@app.endpoint`` has the method and path of a route of
    chatgate's own (``/healthz``, the widget's ``/``, a webhook): one of the two would never run."""
    for spec in endpoints:
        method = spec.method.upper()
        same = [
            route for route in web_app.router.routes()
            if route.resource is not None and route.resource.canonical == spec.path and route.method in (method, "*")
        ]
        if len(same) > 1:
            raise ConfigError(
                f"config error: @app.endpoint({spec.method!r}, {spec.path!r}) has the path of one of "
                "chatgate's own routes; choose another path"
            )


async def healthz(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME_KEY]
    return web.json_response({"status": "ok", "app": runtime.app.name, "adapters": runtime.adapter_names()})


async def meta(request: web.Request) -> web.Response:
    return web.json_response(request.app[RUNTIME_KEY].app.manifest())


async def serve_file(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME_KEY]
    file_id = request.match_info["file_id"]
    query = request.query
    if not file_id.isalnum() or not runtime.files.verify(
        file_id, query.get("s", ""), query.get("exp", ""), query.get("sig", "")
    ):
        return json_error(403, "this file link is invalid or has expired")
    record = await runtime.store.files.get(file_id)
    if record is None or (record.session_id or "") != query.get("s", ""):
        return json_error(404, "file not found")
    path = runtime.files.path(file_id)
    if not path.exists():
        return json_error(404, "file not found")
    response = web.FileResponse(path)
    response.content_type = record.content_type
    response.headers["Content-Disposition"] = f'inline; filename="{_safe_filename(record.name)}"'
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Content-Security-Policy"] = "sandbox"
    return response


def _safe_filename(name: str) -> str:
    return "".join(c for c in name if c.isprintable() and c not in '"\\') or "file"


# -- @app.endpoint and @app.data ------------------------------------------------------------


def _wants_context(fn: Callable[..., Any]) -> bool:
    """Capsule passes a RequestContext when the first parameter is ``ctx`` or is annotated as one."""
    params = list(inspect.signature(fn).parameters.values())
    if not params:
        return False
    first = params[0]
    if first.name == "ctx":
        return True
    annotation = first.annotation
    if isinstance(annotation, str):
        return annotation.split(".")[-1] in ("RequestContext", "HomeContext")
    return isinstance(annotation, type) and issubclass(annotation, RequestContext)


async def _context(request: web.Request, user: UserInfo, authenticated: bool,
                   cls: type[RequestContext] = RequestContext) -> RequestContext:
    runtime = request.app[RUNTIME_KEY]
    integrations = await runtime.integrations_for(user) if authenticated else {}
    if cls is HomeContext:
        return HomeContext(user=user, integrations=integrations, authenticated=authenticated, request=request)
    return RequestContext(user, integrations, authenticated, request, app_id=runtime.app.name)


def _to_response(result: Any) -> web.StreamResponse:
    if isinstance(result, web.StreamResponse):
        return result
    if isinstance(result, dict):  # datetimes, sets, models... coerced as session.data is
        return web.json_response(result, dumps=_dumps)
    return web.Response(text="" if result is None else str(result))


async def _unreadable_body(request: web.Request, exc: Exception) -> str | None:
    """What is wrong with the request body when the handler failed decoding that very body
    (``await request.json()`` on malformed input): the caller's mistake, a 400, not a 500. An
    error decoding anything else is the handler's own."""
    if not isinstance(exc, (json.JSONDecodeError, UnicodeDecodeError)) or not request.body_exists:
        return None
    try:
        body = await request.read()
    except web.HTTPException:
        return None
    if isinstance(exc, UnicodeDecodeError):
        return "the request body is not valid UTF-8 text" if bytes(exc.object) == body else None
    if exc.doc != body.decode(request.charset or "utf-8", errors="replace"):
        return None
    return f"the request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"


def _endpoint_view(spec: EndpointSpec) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    wants_ctx = _wants_context(spec.handler)

    async def view(request: web.Request) -> web.StreamResponse:
        user, authenticated = await request.app[RUNTIME_KEY].callers.identify(request)
        if spec.authorized and not authenticated:
            return json_error(401, "this endpoint needs an authenticated caller")
        argument = await _context(request, user, authenticated) if wants_ctx else request
        caller = bind_http_caller(user) if authenticated else None
        try:
            return _to_response(await call_maybe_async(spec.handler, argument))
        except web.HTTPException:
            raise
        except Exception as exc:
            bad_body = await _unreadable_body(request, exc)
            if bad_body is not None:
                return json_error(400, bad_body)
            log.exception("@app.endpoint %s %s raised", spec.method, spec.path)
            return json_error(500, "the endpoint failed; the gateway log has the details", "internal_error")
        finally:
            if caller is not None:
                unbind_http_caller(caller)

    view.__name__ = spec.handler.__name__
    return view


async def serve_data(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME_KEY]
    spec: DataSpec | None = runtime.app.data_sources.get(request.match_info["name"])
    if spec is None:
        return json_error(404, f"no data source named {request.match_info['name']!r}")
    user, authenticated = await runtime.callers.identify(request)
    if spec.access == "authenticated" and not authenticated:
        return json_error(401, "this data source needs an authenticated caller")
    signature = inspect.signature(spec.handler)
    params = list(signature.parameters.values())
    kwargs: dict[str, Any] = {k: v for k, v in request.query.items() if k not in DATA_RESERVED_PARAMS}
    args: list[Any] = []
    if params and _wants_context(spec.handler):
        args.append(await _context(request, user, authenticated))
        params = params[1:]
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    session_param = next((p for p in params if p.name == "session" or "Session" in str(p.annotation)), None)
    session = None
    if session_param is not None:
        names.discard(session_param.name)
        kwargs.pop(session_param.name, None)
        session = await runtime.callers.session_for_request(request, user, authenticated)
        named = request.query.get("session_id") or request.headers.get("X-Capsule-Session-Id")
        if session is not None:
            kwargs[session_param.name] = session
        elif named or session_param.default is inspect.Parameter.empty:
            return json_error(404, "session not found; pass ?session_id= of one of your sessions")
        # else: no session asked for and the parameter has a default (``session=None``): use it
    unknown = [k for k in kwargs if k not in names and (session_param is None or k != session_param.name)]
    if unknown and not accepts_any:
        return json_error(400, f"unknown query parameter(s): {', '.join(sorted(unknown))}",
                          accepted=sorted(names))
    problem = _coerce_query(spec.handler, kwargs, skip=session_param.name if session_param else None)
    if problem is None:
        try:
            signature.bind(*args, **kwargs)
        except TypeError as exc:  # a required parameter is missing from the query
            problem = f"bad query for data source {spec.name!r}: {exc}"
    if problem is not None:
        return json_error(400, problem, accepted=sorted(names))
    # As in Capsule: a handler given a session runs as it (current_session(), scoped collections);
    # otherwise an authenticated caller's collections are theirs.
    current = set_current_session(session) if session is not None else None
    caller = bind_http_caller(user) if authenticated and session is None else None
    try:
        result = await call_maybe_async(spec.handler, *args, **kwargs)
    except Exception:
        log.exception("@app.data %s raised", spec.name)
        return json_error(500, "the data source failed; the gateway log has the details", "internal_error")
    finally:
        if caller is not None:
            unbind_http_caller(caller)
        if current is not None:
            reset_current_session(current)
    if isinstance(result, web.StreamResponse):
        return result
    return web.json_response(result, dumps=_dumps)


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


# What a query value is converted to for a parameter annotated with the type (or its name, under
# ``from __future__ import annotations``), and how it is described when it does not convert.
QUERY_TYPES: dict[Any, tuple[str, Callable[[str], Any]]] = {
    int: ("an integer", int), "int": ("an integer", int),
    float: ("a finite number", _parse_float), "float": ("a finite number", _parse_float),
    bool: ("true or false", _parse_bool), "bool": ("true or false", _parse_bool),
}


def _coerce_query(fn: Callable[..., Any], kwargs: dict[str, Any], *, skip: str | None) -> str | None:
    """Convert query values for parameters annotated ``int``, ``float`` or ``bool`` (Capsule
    passes every value as a string); a value that does not convert is the caller's mistake."""
    for param in inspect.signature(fn).parameters.values():
        if param.name == skip or param.name not in kwargs or not isinstance(kwargs[param.name], str):
            continue
        try:
            wanted = QUERY_TYPES.get(param.annotation)
        except TypeError:  # an unhashable annotation: nothing to convert to
            wanted = None
        if wanted is None:
            continue
        what, convert = wanted
        try:
            kwargs[param.name] = convert(kwargs[param.name])
        except ValueError:
            return f"query parameter {param.name!r} must be {what} (got {kwargs[param.name]!r})"
    return None


def _dumps(value: Any) -> str:
    from gateway.session_data import to_json_value

    return json.dumps(to_json_value(value))


__all__ = ["RUNTIME_KEY", "UserInfo", "build_web_app", "json_error"]
