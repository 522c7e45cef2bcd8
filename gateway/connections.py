"""The HTTP/1.1 connection layer under the one Application: what happens before a request reaches
a handler, and to requests aiohttp cannot parse.

aiohttp's ``RequestHandler`` (the asyncio protocol of one connection) waits for a request's head
and body as long as the client takes, and answers unparsable requests (an over-long request line
or header, garbage, TLS on the HTTP port) in plain text. ``GuardedRequestHandler`` adds:

- **a header timeout**: the request line and headers must arrive within ``header_timeout``
  seconds of the connection opening (or of a kept-alive request's first byte), else 408;
- **a body timeout**: while a request's body is incomplete, the client must send some of it at
  least every ``body_timeout`` seconds, else the handler reading it gets 408 and the connection
  is closed (nginx's ``client_header_timeout`` / ``client_body_timeout``);
- **a per-IP connection cap**: more than ``max_connections_per_ip`` open connections from one
  address are answered 429 and closed;
- **JSON parse errors**: ``{"error": {"code": "bad_request", "message"}}`` like every other error.

aiohttp has no hook for these (``handler_args`` only passes its own keyword arguments), so
``GuardedServer`` makes the guarded protocol and ``GuardedAppRunner`` serves with it; the rest is
aiohttp's. Written by hand because no library adds read timeouts to aiohttp's server.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMethod, LineTooLong
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler

from gateway.config import ServerSettings

log = logging.getLogger("chatgate.server")

LINGER_SECONDS = 1.0
"""After answering a connection that is then closed, how long its further bytes are read and
dropped: closing with unread input resets the connection, and a reset can destroy the answer
before the client reads it (RFC 9112 section 9.6, "lingering close")."""
RETRY_AFTER_SECONDS = 5
"""``Retry-After`` of the 429 sent to an address over its connection cap."""
_NO_MORE_REQUESTS: Any = ()
"""The request queue of an upgraded connection: empty, and an error to append to."""


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout: float
    body_timeout: float
    max_connections_per_ip: int
    max_header_line_bytes: int

    @classmethod
    def from_settings(cls, server: ServerSettings) -> ConnectionLimits:
        return cls(server.header_timeout, server.body_timeout, server.max_connections_per_ip,
                   server.max_header_line_bytes)


def raw_json_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> bytes:
    """A complete HTTP/1.1 response, for answering a connection no request object exists for."""
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    lines = [
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
        "Content-Type: application/json; charset=utf-8",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *(f"{name}: {value}" for name, value in (headers or {}).items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + body


def parse_error_message(exc: BaseException | None, limits: ConnectionLimits, fallback: str | None) -> str:
    """What is wrong with a request aiohttp could not parse, without echoing the request back."""
    if isinstance(exc, LineTooLong):
        return (f"the request line or a header is longer than {limits.max_header_line_bytes} bytes "
                "(server.max_header_line_bytes)")
    if isinstance(exc, BadHttpMethod):
        return "this is not an HTTP request (is it HTTPS sent to the HTTP port?)"
    detail = (fallback or "").strip().splitlines()[0][:200] if fallback and fallback.strip() else ""
    return f"malformed HTTP request: {detail}" if detail else "malformed HTTP request"


class GuardedRequestHandler(RequestHandler):
    """aiohttp's protocol for one connection, with read timeouts, a per-IP cap and JSON errors.

    Slotted like aiohttp's own classes, and a connection upgraded to a WebSocket drops its HTTP
    parser and request queue: an idle widget socket holds a protocol for hours (issue 12)."""

    __slots__ = (
        "_body", "_body_timer", "_header_timer", "_limits", "_linger", "_over_cap", "_peer_ip", "_peers", "last_read",
    )

    def __init__(self, manager: GuardedServer, *, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._limits = limits
        self._peers = manager.peers
        self._over_cap = manager.over_cap
        self._peer_ip: str | None = None
        self._header_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._body: StreamReader | None = None
        """The payload of the newest request whose head has arrived, while it may still grow."""
        self._linger: asyncio.TimerHandle | None = None
        self.last_read = 0.0
        """When a WebSocket on this connection last received bytes (loop time; from the upgrade):
        what the widget's heartbeat (``adapters/web/widget/heartbeat.py``) watches."""

    # -- the connection --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        ip = peer[0] if isinstance(peer, (tuple, list)) and peer else None
        cap = self._limits.max_connections_per_ip
        if cap and ip is not None:
            if self._peers[ip] >= cap:
                if ip not in self._over_cap:  # once per episode, not once per refused connection
                    self._over_cap.add(ip)
                    log.warning("refusing connections from %s: it holds %d open (server.max_connections_per_ip)",
                                ip, cap)
                self._refuse(429, "rate_limited",
                             f"too many connections from your address (at most {cap}); close some and retry",
                             {"Retry-After": str(RETRY_AFTER_SECONDS)})
                return
            self._peers[ip] += 1
            self._peer_ip = ip
        self._arm_header_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_timers()
        if self._peer_ip is not None:
            self._peers[self._peer_ip] -= 1
            if self._peers[self._peer_ip] <= 0:
                del self._peers[self._peer_ip]
            self._over_cap.discard(self._peer_ip)
            self._peer_ip = None
        super().connection_lost(exc)

    def _refuse(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        """Answer without a request (the connection is over) and close, after a short linger."""
        transport = self.transport
        if transport is None:
            return
        if self._request_in_progress:  # a response is on its way (pipelining): just close
            self.force_close()
            return
        transport.write(raw_json_response(status, code, message, headers))
        self.close()  # what the client still sends is ignored
        if transport.can_write_eof():
            transport.write_eof()
        self._linger = self._loop.call_later(LINGER_SECONDS, self.force_close)

    def set_parser(self, parser: Any, data_received_cb: Callable[[], None] | None = None) -> None:
        """The upgrade is accepted (aiohttp hands the connection to the WebSocket's reader): no
        HTTP request will be parsed on it again, so its parser and queue (~1.5 KB) are freed.
        aiohttp only reads them while not upgraded (``data_received``, ``start``) and checks
        the queue is empty after the handler (``finish_response``): an empty tuple is."""
        super().set_parser(parser, data_received_cb)
        self._parser = None
        self._messages = _NO_MORE_REQUESTS
        self.last_read = self._loop.time()

    # -- reading ---------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._payload_parser is not None or self._upgraded or self._force_close or self._close:
            # A WebSocket (its heartbeat finds dead peers) or a connection that is closing.
            self._cancel_header_timer()
            self._stop_body_timer()
            self.last_read = self._loop.time()
            super().data_received(data)
            return
        reading_body = self._body is not None and not self._body.is_eof()
        parsed = self._request_count
        super().data_received(data)
        if self._request_count > parsed and self._messages:  # a request's head is complete
            self._cancel_header_timer()
            payload = self._messages[-1][1]
            self._body = payload if isinstance(payload, StreamReader) else None
            self._time_body()
        elif reading_body:
            self._time_body()
        elif data:
            self._arm_header_timer()  # the first bytes of a kept-alive connection's next request

    def _arm_header_timer(self) -> None:
        if self._limits.header_timeout > 0 and self._header_timer is None:
            self._header_timer = self._loop.call_later(self._limits.header_timeout, self._headers_too_slow)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.transport is None:
            return
        log.debug("closed a connection from %s: no complete request head within %ss (server.header_timeout)",
                 self._peer_ip or "?", self._limits.header_timeout)
        self._refuse(408, "timeout",
                     f"the request head did not arrive within {self._limits.header_timeout:g} seconds")

    def _time_body(self) -> None:
        """(Re)start the body timer while the newest request's body is incomplete."""
        self._stop_body_timer()
        if self._body is None or self._body.is_eof():
            self._body = None
            return
        if self._limits.body_timeout > 0:
            self._body_timer = self._loop.call_later(self._limits.body_timeout, self._body_too_slow)

    def _body_too_slow(self) -> None:
        self._body_timer = None
        body = self._body
        if body is None or body.is_eof() or self.transport is None:
            return
        if self._reading_paused or self._buffer_paused:  # we stopped reading, not the client
            self._time_body()
            return
        log.debug("closing a connection from %s: its request body stalled for %ss (server.body_timeout)",
                 self._peer_ip or "?", self._limits.body_timeout)
        self.close()  # no keep-alive, later bytes are ignored; the handler still answers
        timeout = f"the request body stalled for {self._limits.body_timeout:g} seconds"
        body.set_exception(web.HTTPRequestTimeout(text=timeout))
        body.feed_eof()  # what remains unread is not waited for after the response either
        self._body = None

    def _stop_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _cancel_timers(self) -> None:
        self._cancel_header_timer()
        self._stop_body_timer()
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None

    # -- errors ----------------------------------------------------------------------------------

    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """aiohttp's answer to a request it could not parse (or a failure outside every handler),
        as JSON. A malformed request is the client's doing: logged at DEBUG, without a traceback."""
        if status >= 500:
            self.log_exception("error handling a request from %s", request.remote, exc_info=exc)
            code, text = "internal_error", "internal error; the gateway log has the details"
        else:
            text = parse_error_message(exc, self._limits, message)
            code = "bad_request" if status == 400 else "error"
            log.debug("refused a malformed request from %s: %s", request.remote, message or exc)
        if request.writer.output_size > 0:
            raise ConnectionError("the response has begun; the error cannot be sent")
        response = web.json_response({"error": {"code": code, "message": text}}, status=status)
        response.force_close()
        return response


class GuardedServer(web.Server):
    """aiohttp's ``Server`` (the protocol factory of the listening socket), making guarded
    protocols that share one count of open connections per address."""

    def __init__(self, *args: Any, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits
        self.peers: Counter[str] = Counter()
        """Open connections per client address."""
        self.over_cap: set[str] = set()
        """Addresses refused since they last dropped below the cap (logged once)."""

    def __call__(self) -> RequestHandler:
        return GuardedRequestHandler(self, loop=self._loop, limits=self.limits, **self._kwargs)


class GuardedAppRunner(web.AppRunner):
    """``web.AppRunner`` serving the Application through ``GuardedServer``."""

    def __init__(self, app: web.Application, server: ServerSettings, **kwargs: Any) -> None:
        kwargs.setdefault("keepalive_timeout", server.keepalive_timeout)
        kwargs.setdefault("max_line_size", server.max_header_line_bytes)
        kwargs.setdefault("max_field_size", server.max_header_line_bytes)
        super().__init__(app, **kwargs)
        self._limits = ConnectionLimits.from_settings(server)

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()  # runs the app's startup; makes aiohttp's Server
        return GuardedServer(
            plain.request_handler,
            request_factory=plain.request_factory,
            handler_cancellation=plain.handler_cancellation,
            loop=asyncio.get_running_loop(),
            limits=self._limits,
            **plain._kwargs,  # the handler keyword arguments aiohttp resolved (handler_args too)
        )
