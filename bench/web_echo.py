"""Web channel throughput side by side: chatgate (REST ``send_message`` and the widget socket),
Chainlit (no data layer, and its SQLAlchemy data layer on SQLite), chatgate's store alone (the floor
under a stored turn) and a bare aiohttp echo, under the same load, in one run; and the memory an
idle widget socket holds.

    .venv/bin/python bench/web_echo.py --requests 2000 --concurrency 8

Each server runs in its own process (started, measured, stopped in turn); the load generator is
this process (for Chainlit, a process in Chainlit's virtualenv speaking socket.io as its browser
client does, ``bench/chainlit/client.py``). chatgate stores every message (the inbound event,
the user message and the reply) in a SQLite file (or ``--database``); the store alone stores the
same rows with none of the gateway around its store (``_serve_store_alone``); Chainlit + data
layer stores both steps; the others store nothing. Printed per target: messages/s, p50 and p99
latency, and the server's CPU per message (``psutil`` cpu_times of the server process before
and after the measured messages); then every ratio.

Chainlit is installed on first use into ``.bench/chainlit-venv`` (``python -m venv`` + pip from
PyPI) and reused afterwards; ``--no-chainlit`` skips it. Loopback only; every loop is bounded by
``--requests`` / ``--idle-sockets``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil
from database_cpu import database_cpu_seconds, is_local_postgres

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

API_KEY = "bench-key"
HOST = "127.0.0.1"
REQUEST_TIMEOUT = 30.0
START_TIMEOUT = 90.0
CACHE = ROOT / ".bench"
CHAINLIT_VENV = CACHE / "chainlit-venv"
CHAINLIT_DIR = Path(__file__).resolve().parent / "chainlit"
CHAINLIT_PACKAGES = [
    "chainlit>=2.0,<3",
    "sqlalchemy[asyncio]>=2.0,<3", "aiosqlite>=0.20,<1", "greenlet>=3,<4",  # its SQLAlchemy data layer on SQLite
    "aiohttp>=3.9,<4",  # python-socketio's asyncio client (bench/chainlit/client.py)
]


# -- the servers (each in its own process) ---------------------------------------------------

BROWSER_COMPRESSION = 15
"""The loads' sockets offer permessage-deflate with 15 window bits, as every browser does. The bare
and store-alone servers decline it, as chatgate's socket does by default (``web.socket_compression``):
accepted, zlib's state costs an idle socket about 110 KiB and each frame its compression."""

STORE_ALONE_NAMES = ("store alone, REST turn", "store alone, socket turn")
"""The rows of ``_serve_store_alone``: a turn's durable work with none of the gateway around it."""


async def _serve_bare(conn: Any) -> None:
    from aiohttp import web

    async def echo(request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response({"data": {"role": "assistant", "content": "echo: " + body["content"]}}, status=201)

    async def socket(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False)  # as chatgate's (BROWSER_COMPRESSION)
        await ws.prepare(request)
        async for message in ws:
            if message.type == aiohttp.WSMsgType.TEXT:
                frame = json.loads(message.data)
                await ws.send_json(
                    {"type": "message", "message": {"role": "assistant", "text": "echo: " + frame["text"]}}
                )
        return ws

    app = web.Application()
    app.router.add_post("/echo", echo)
    app.router.add_get("/ws", socket)
    await _serve_until_told(conn, app)


async def _serve_until_told(conn: Any, app: Any) -> None:
    """Serve ``app`` on a free loopback port, send the port to the parent, and serve until the
    parent says stop."""
    from aiohttp import web

    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, HOST, 0)
    await site.start()
    conn.send(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
    await asyncio.get_running_loop().run_in_executor(None, conn.recv)
    await runner.cleanup()


async def _serve_chatgate(conn: Any, data_dir: str, database: str | None, *, compression: bool = False) -> None:
    import logging

    import gateway
    from adapters.web.adapter import WebAdapter
    from adapters.web.testing import web_settings
    from gateway.heap import tune_collector_after_startup
    from gateway.runtime import Gateway

    logging.basicConfig(level=logging.WARNING)
    app = gateway.App("echo")

    @app.message()
    async def echo(session: gateway.Session, msg: gateway.Message) -> None:
        await session.reply("echo: " + msg.text)

    overrides: dict[str, Any] = {
        "web": {"api_keys": [API_KEY], "socket_compression": compression},
        "logging": {"level": "WARNING"},
        "server": {"max_connections_per_ip": 0},  # the idle-socket line opens hundreds from loopback
    }
    if database:
        overrides["database"] = {"url": database}
    settings = web_settings(data_dir, **overrides)
    gw = Gateway(app, settings, adapters=[WebAdapter(settings)])
    await gw.start()
    tune_collector_after_startup()  # as chatgate run does (gateway/heap.py)
    conn.send(gw.port)
    await asyncio.get_running_loop().run_in_executor(None, conn.recv)
    await gw.stop()


async def _serve_store_alone(conn: Any, data_dir: str, database: str | None) -> None:
    """The floor under a stored turn: chatgate's own store doing exactly what a turn stores (the
    event and the user's message, committed before the ack; the session and its user read; the
    reply and the event's status), behind bare aiohttp routes that answer in the shapes the load
    expects (``send_message``'s body; the socket's ``ack``, ``message`` and ``turn_end`` frames),
    with nothing of the gateway between: no dispatcher, turn, ``Session``, outbox or bus.

    A REST turn also makes the repeat claim ``send_message`` makes for ``web.dedup_window`` (keyed
    here by a fresh id rather than a digest of the content: the same rows, no hashing). As in a
    turn, PostgreSQL reads the session with the event and commits the reply and the status
    together (``Database.queues_writes``); SQLite reads the session in this process. Its frames
    carry the fields the load reads, not every field of chatgate's."""
    from aiohttp import web

    from adapters.web.testing import web_settings
    from gateway.heap import tune_collector_after_startup
    from gateway.ids import new_id
    from gateway.inbound import Inbound, PlatformUser
    from gateway.store import Store
    from gateway.types import Message, SessionChannel

    overrides: dict[str, Any] = {"database": {"url": database}} if database else {}
    settings = web_settings(os.path.join(data_dir, "store-alone"), **overrides)
    store = Store(settings.database.url, pool_size=settings.database.pool_size,
                  sqlite_writes=settings.database.sqlite_writes)
    await store.open()
    platform_user = PlatformUser("api", "store-alone-bench")
    user = await store.users.resolve(platform_user)
    channel = SessionChannel("api")
    dedup_window = settings.web.dedup_window

    async def new_session() -> str:
        return (await store.sessions.create(channel, user)).id

    async def turn(session_id: str, text: str, repeat: str | None, acked: Callable[[str], Awaitable[None]],
                   replied: Callable[[str], Awaitable[None]]) -> str:
        dedup_key = f"bench:{new_id()}"
        inbound = Inbound(kind="message", dedup_key=dedup_key, channel=channel, user=platform_user,
                          message=Message(text, "user", "api"), session_id=session_id)
        entry = await store.inbox.record(
            session_id, dedup_key, "message", inbound.to_json(), user_text=text,
            repeat=None if repeat is None else (repeat, dedup_window),
            context=None if store.is_sqlite else (new_id(), 0),
        )
        await acked(entry.id)
        if entry.context is None and await store.sessions.turn_context(session_id) is None:
            raise RuntimeError(f"no session {session_id}")
        reply = "echo: " + text
        if store.queues_writes:
            stored = store.messages.queue_add(session_id, "assistant", reply, message_id=new_id(),
                                              inbound_id=entry.id, status="complete", platform_refs=[], fence=None)
            status = store.inbox.queue_status(entry.id, "done")
            await stored
            await replied(reply)
            await status
        else:
            await store.messages.add(session_id, "assistant", reply, inbound_id=entry.id)
            await replied(reply)
            await store.inbox.set_status(entry.id, "done")
        return entry.id

    async def nothing(_: str) -> None:
        return None

    async def create(request: web.Request) -> web.Response:
        return web.json_response({"data": {"id": await new_session()}}, status=201)

    async def send_message(request: web.Request) -> web.Response:
        session_id = request.match_info["session_id"]
        content = (await request.json())["content"]
        replies: list[str] = []

        async def keep(reply: str) -> None:
            replies.append(reply)

        inbound_id = await turn(session_id, content, f"api:{new_id()}", nothing, keep)
        return web.json_response({"data": {"content": replies[-1], "execution_id": inbound_id}}, status=201)

    async def socket(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False)  # as chatgate's (BROWSER_COMPRESSION)
        await ws.prepare(request)
        session_id = ""
        async for message in ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                continue
            frame = json.loads(message.data)
            if frame["type"] == "hello":
                session_id = await new_session()
                await ws.send_json({"type": "ready", "id": frame["id"], "session_id": session_id})
                continue

            async def ack(inbound_id: str, frame_id: str = frame["id"]) -> None:
                await ws.send_json({"type": "ack", "id": frame_id, "inbound_id": inbound_id, "duplicate": False})

            async def say(reply: str) -> None:
                await ws.send_json({"type": "message", "message": {"role": "assistant", "text": reply}})

            inbound_id = await turn(session_id, frame["text"], None, ack, say)
            await ws.send_json({"type": "turn_end", "inbound_id": inbound_id, "error": None})
        return ws

    app = web.Application()
    app.router.add_post("/api/v1/chat/sessions", create)
    app.router.add_post("/api/v1/chat/sessions/{session_id}/messages", send_message)
    app.router.add_get("/ws", socket)
    tune_collector_after_startup()  # as chatgate's server does (gateway/heap.py)
    try:
        await _serve_until_told(conn, app)
    finally:
        await store.close()


def _server_main(kind: str, conn: Any, data_dir: str, database: str | None, event_loop: str) -> None:
    from gateway.loop import run

    servers = {
        "bare": lambda: _serve_bare(conn),
        "chatgate": lambda: _serve_chatgate(conn, data_dir, database),
        "chatgate-compressed": lambda: _serve_chatgate(conn, data_dir, database, compression=True),
        "store": lambda: _serve_store_alone(conn, data_dir, database),
    }
    run(servers[kind](), event_loop)  # type: ignore[arg-type]


class ServerProcess:
    """A bare or chatgate server in a child process; ``pid`` for its CPU and memory."""

    def __init__(self, kind: str, data_dir: str, database: str | None = None, event_loop: str = "auto") -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=_server_main, args=(kind, child, data_dir, database, event_loop), daemon=True
        )
        self.pid = 0

    def __enter__(self) -> ServerProcess:
        self._process.start()
        if not self._conn.poll(START_TIMEOUT):
            raise RuntimeError(f"the server did not start within {START_TIMEOUT:.0f} s")
        self.port = int(self._conn.recv())
        self.pid = self._process.pid or 0
        return self

    def __exit__(self, *_: Any) -> None:
        self._conn.send("stop")
        self._process.join(15)
        if self._process.is_alive():
            self._process.terminate()


# -- Chainlit, in a virtualenv of its own ------------------------------------------------------


def chainlit_python() -> Path:
    """The Chainlit virtualenv's Python, made (venv + pip from PyPI) when missing."""
    python = CHAINLIT_VENV / "bin" / "python"
    check = [str(python), "-c", "import chainlit, socketio, aiohttp, aiosqlite, sqlalchemy, greenlet"]
    # From the cache folder: importing chainlit writes a .chainlit/ config into the working directory.
    if python.exists() and subprocess.run(check, capture_output=True, cwd=CACHE).returncode == 0:
        return python
    print(f"installing Chainlit into {CHAINLIT_VENV} (once; --no-chainlit skips it)", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(CHAINLIT_VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *CHAINLIT_PACKAGES], check=True)
    return python


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def chainlit_server(python: Path, project: Path, database: Path | None) -> Iterator[tuple[int, int]]:
    """Chainlit's echo app (``bench/chainlit/echo_app.py``) headless on a free port:
    yields (port, pid). With ``database``, its SQLAlchemy data layer on that SQLite file."""
    project.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("BENCH_CHAINLIT_DB", None)
    if database is not None:
        with contextlib.closing(sqlite3.connect(database)) as db:
            db.executescript((CHAINLIT_DIR / "schema.sql").read_text())
        env["BENCH_CHAINLIT_DB"] = str(database)
    port = _free_port()
    command = [str(python), "-m", "chainlit", "run", str(CHAINLIT_DIR / "echo_app.py"), "--headless",
               "--host", HOST, "--port", str(port)]
    log = open(project / "chainlit.log", "w")
    process = subprocess.Popen(command, cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=1):
                break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Chainlit did not start: see {project / 'chainlit.log'}")
            time.sleep(0.2)
        yield port, process.pid
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def _stored_steps(database: Path) -> int:
    with contextlib.closing(sqlite3.connect(database)) as db:
        return int(db.execute("SELECT count(*) FROM steps WHERE type IN ('user_message', 'assistant_message')")
                   .fetchone()[0])


# -- the load ---------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


@dataclass
class Result:
    target: str
    requests: int
    seconds: float
    latencies: list[float]
    cpu: float = 0.0  # server CPU seconds over the measured messages
    note: str = ""
    database_cpu: float | None = None  # PostgreSQL's CPU seconds over them, when it is local

    @property
    def database_cpu_ms(self) -> float | None:
        if self.database_cpu is None or not self.requests:
            return None
        return self.database_cpu / self.requests * 1000

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def cpu_ms(self) -> float:
        return self.cpu / self.requests * 1000 if self.requests else 0.0

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000

    def row(self) -> str:
        database = "" if self.database_cpu_ms is None else f"{self.database_cpu_ms:>7.3f}"
        return (f"{self.target:<30} {self.rps:>8.0f} {self.percentile(50):>8.2f} {self.percentile(99):>8.2f} "
                f"{self.cpu_ms:>9.3f} {database:>7}  {self.note}").rstrip()


Worker = Callable[[int, int], Awaitable[list[float]]]


async def _load(target: str, requests: int, concurrency: int, worker: Worker, pid: int = 0,
                database: bool = False) -> Result:
    shares = [requests // concurrency + (1 if i < requests % concurrency else 0) for i in range(concurrency)]
    cpu_before = cpu_seconds(pid) if pid else 0.0
    database_before = database_cpu_seconds() if database else 0.0
    started = time.perf_counter()
    latencies = await asyncio.gather(*(worker(i, n) for i, n in enumerate(shares) if n))
    elapsed = time.perf_counter() - started
    cpu = cpu_seconds(pid) - cpu_before if pid else 0.0
    database_cpu = database_cpu_seconds() - database_before if database else None
    flat = [x for chunk in latencies for x in chunk]
    return Result(target, len(flat), elapsed, flat, cpu, database_cpu=database_cpu)


async def rest_load(url: str, *, chatgate: bool, requests: int, concurrency: int, warmup: int,
                    pid: int = 0, database: bool = False, name: str | None = None) -> Result:
    """``send_message`` turns (``chatgate``: the PromptRails routes, a session per client) or the
    bare echo's POSTs; ``name`` labels the row."""
    headers = {"X-API-Key": API_KEY, "Content-Type": "application/json"}
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    connector = aiohttp.TCPConnector(limit=concurrency * 2)
    async with aiohttp.ClientSession(headers=headers, timeout=timeout, connector=connector) as http:

        async def session_url() -> str:
            if not chatgate:
                return f"{url}/echo"
            async with http.post(f"{url}/api/v1/chat/sessions", json={"agent_id": "default"}) as response:
                response.raise_for_status()
                session_id = (await response.json())["data"]["id"]
            return f"{url}/api/v1/chat/sessions/{session_id}/messages"

        async def worker(index: int, count: int) -> list[float]:
            target = await session_url()
            times = []
            for i in range(count):
                # Distinct content: an identical re-POST within web.dedup_window joins the first turn.
                body = {"content": f"hello {index}-{i}-{time.monotonic_ns()}"}
                started = time.perf_counter()
                async with http.post(target, json=body) as response:
                    payload = await response.json()
                times.append(time.perf_counter() - started)
                if response.status != 201 or payload["data"]["content"] != "echo: " + body["content"]:
                    raise RuntimeError(f"unexpected answer {response.status}: {payload}")
            return times

        if warmup:
            await _load("warmup", warmup, min(concurrency, warmup), worker)
        name = name or ("chatgate REST send_message" if chatgate else "bare aiohttp POST")
        return await _load(name, requests, concurrency, worker, pid, database)


async def _hello(ws: aiohttp.ClientWebSocketResponse, index: int) -> None:
    await ws.send_json({"type": "hello", "id": f"h{index}", "session_id": None})
    await ws.receive_json(timeout=REQUEST_TIMEOUT)


async def socket_load(url: str, *, chatgate: bool, requests: int, concurrency: int, warmup: int,
                      pid: int = 0, database: bool = False, name: str | None = None) -> Result:
    """Widget socket turns (``chatgate``: hello first, then each message's frames until its reply)
    or the bare echo's frames; ``name`` labels the row."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as http:

        async def worker(index: int, count: int) -> list[float]:
            times = []
            async with http.ws_connect(f"{url.replace('http', 'ws', 1)}/ws", compress=BROWSER_COMPRESSION) as ws:
                if chatgate:
                    await _hello(ws, index)
                for i in range(count):
                    text = f"hi {index}-{i}-{time.monotonic_ns()}"
                    started = time.perf_counter()
                    await ws.send_json({"type": "message", "id": f"m{index}x{i}x{time.monotonic_ns()}", "text": text})
                    while True:  # until the reply: chatgate also sends ack and turn_end frames
                        frame = await ws.receive_json(timeout=REQUEST_TIMEOUT)
                        if frame.get("type") == "message" and frame["message"].get("role") == "assistant":
                            break
                    times.append(time.perf_counter() - started)
                    if frame["message"]["text"] != "echo: " + text:
                        raise RuntimeError(f"unexpected reply {frame}")
            return times

        if warmup:
            await _load("warmup", warmup, min(concurrency, warmup), worker)
        name = name or ("chatgate socket turn" if chatgate else "bare aiohttp WebSocket")
        return await _load(name, requests, concurrency, worker, pid, database)


async def chainlit_load(python: Path, port: int, pid: int, *, name: str, requests: int, concurrency: int,
                        warmup: int, database: Path | None) -> Result:
    """Runs ``bench/chainlit/client.py`` and measures the server's CPU around its measured part.
    With a data layer, Chainlit stores steps in tasks it does not wait for: the CPU is counted
    until every message of the run is in the database."""
    client = await asyncio.create_subprocess_exec(
        str(python), str(CHAINLIT_DIR / "client.py"), "load", f"http://{HOST}:{port}", str(requests),
        str(concurrency), str(warmup), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )
    assert client.stdin is not None and client.stdout is not None
    line = await asyncio.wait_for(client.stdout.readline(), START_TIMEOUT)
    if line.strip() != b"warm":
        raise RuntimeError(f"the Chainlit client failed: {line!r}")
    if database is not None:  # the warm-up's steps stored before the measured part starts
        await _wait_for(lambda: _stored_steps(database) >= 2 * warmup)
    cpu_before = cpu_seconds(pid)
    client.stdin.write(b"go\n")
    await client.stdin.drain()
    result = json.loads(await asyncio.wait_for(client.stdout.readline(), REQUEST_TIMEOUT * 10))
    note = ""
    if database is not None:
        replied = time.perf_counter()
        expected = 2 * (warmup + requests)
        stored = await _stored_until_settled(database, expected)
        note = f"stored {time.perf_counter() - replied:.2f} s after the last reply"
        if stored < expected:  # its stores run in tasks nobody awaits: a failed one is simply gone
            note += f"; {expected - stored} of {expected} messages never stored"
    cpu = cpu_seconds(pid) - cpu_before
    await client.wait()
    return Result(name, len(result["latencies"]), result["seconds"], result["latencies"], cpu, note)


async def _wait_for(predicate: Callable[[], bool], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError("Chainlit's data layer did not store every message in time")
        await asyncio.sleep(0.05)


STORE_SETTLED = 15.0
"""Seconds without one more stored step after which Chainlit's data layer is taken to be done."""


async def _stored_until_settled(database: Path, expected: int) -> int:
    """Wait until ``expected`` steps are stored, or the count stops growing (its data layer
    drains a backlog of thousands in minutes, and may drop some); returns the count."""
    stored, changed = _stored_steps(database), time.monotonic()
    while stored < expected and time.monotonic() - changed < STORE_SETTLED:
        await asyncio.sleep(0.2)
        now = _stored_steps(database)
        if now != stored:
            stored, changed = now, time.monotonic()
    return stored


# -- idle sockets ------------------------------------------------------------------------------


@dataclass
class IdleResult:
    target: str
    sockets: int
    rss_before: int
    rss_after: int

    @property
    def kib_per_socket(self) -> float:
        return (self.rss_after - self.rss_before) / self.sockets / 1024

    def row(self) -> str:
        return (f"{self.target:<30} {self.sockets:>8} {self.rss_before / 2**20:>9.1f} {self.rss_after / 2**20:>9.1f} "
                f"{self.kib_per_socket:>9.1f}")


def rss(pid: int) -> int:
    return int(psutil.Process(pid).memory_info().rss)


async def chatgate_idle(url: str, pid: int, sockets: int, target: str = "chatgate widget socket") -> IdleResult:
    """Open ``sockets`` widget sockets that said hello (each a new visitor and session), each
    offering compression as a browser does, and compare the server's RSS before and after."""
    await asyncio.sleep(0.5)
    before = rss(pid)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None)) as http:
        opened: list[aiohttp.ClientWebSocketResponse] = []
        try:
            for start in range(0, sockets, 50):
                batch = [await http.ws_connect(f"{url.replace('http', 'ws', 1)}/ws", compress=BROWSER_COMPRESSION)
                         for _ in range(min(50, sockets - start))]
                await asyncio.gather(*(_hello(ws, start + i) for i, ws in enumerate(batch)))
                opened += batch
            await asyncio.sleep(1.0)
            after = rss(pid)
        finally:
            await asyncio.gather(*(ws.close() for ws in opened), return_exceptions=True)
    return IdleResult(target, sockets, before, after)


async def chainlit_idle(python: Path, port: int, pid: int, sockets: int) -> IdleResult:
    await asyncio.sleep(0.5)
    before = rss(pid)
    client = await asyncio.create_subprocess_exec(
        str(python), str(CHAINLIT_DIR / "client.py"), "idle", f"http://{HOST}:{port}", str(sockets),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )
    assert client.stdin is not None and client.stdout is not None
    if (await asyncio.wait_for(client.stdout.readline(), START_TIMEOUT)).strip() != b"ready":
        raise RuntimeError("the Chainlit client failed to open its sockets")
    after = rss(pid)
    client.stdin.write(b"close\n")
    await client.stdin.drain()
    await client.wait()
    return IdleResult("Chainlit socket.io session", sockets, before, after)


# -- the run -----------------------------------------------------------------------------------


@dataclass
class Run:
    results: dict[str, Result] = field(default_factory=dict)
    idle: list[IdleResult] = field(default_factory=list)


async def measure(args: argparse.Namespace) -> Run:
    run = Run()
    options = {"requests": args.requests, "concurrency": args.concurrency, "warmup": args.warmup}
    with tempfile.TemporaryDirectory(prefix="chatgate-bench-") as data_dir:
        for kind in ("bare", "chatgate", "store"):
            with ServerProcess(kind, data_dir, args.database, args.event_loop) as server:
                url = f"http://{HOST}:{server.port}"
                chatgate = kind == "chatgate"
                speaks_chatgate = kind != "bare"  # the store alone answers in chatgate's shapes
                # PostgreSQL's own CPU, when it runs here: a turn's cost is the gateway's and its.
                database = speaks_chatgate and is_local_postgres(args.database)
                names = STORE_ALONE_NAMES if kind == "store" else (None, None)
                run.results[f"{kind}-rest"] = await rest_load(url, chatgate=speaks_chatgate, pid=server.pid,
                                                              database=database, name=names[0], **options)
                run.results[f"{kind}-ws"] = await socket_load(url, chatgate=speaks_chatgate, pid=server.pid,
                                                              database=database, name=names[1], **options)
                if chatgate and args.idle_sockets:
                    run.idle.append(await chatgate_idle(url, server.pid, args.idle_sockets))
        if args.idle_sockets:  # what web.socket_compression costs, for the same sockets
            with ServerProcess("chatgate-compressed", data_dir, args.database, args.event_loop) as server:
                run.idle.append(await chatgate_idle(f"http://{HOST}:{server.port}", server.pid, args.idle_sockets,
                                                    "chatgate, socket_compression on"))
        if args.chainlit:
            python = chainlit_python()
            for key, name, stored in (("chainlit", "Chainlit socket.io", False),
                                      ("chainlit-db", "Chainlit + SQLAlchemy/SQLite", True)):
                project = Path(data_dir) / key
                database = project / "chainlit.db" if stored else None
                with chainlit_server(python, project, database) as (port, pid):
                    run.results[key] = await chainlit_load(python, port, pid, name=name, database=database,
                                                           **options)
                    if not stored and args.idle_sockets:
                        run.idle.append(await chainlit_idle(python, port, pid, args.idle_sockets))
    return run


def report(run: Run, args: argparse.Namespace) -> str:
    r = run.results
    database = "SQLite" if not args.database else args.database.split("://")[0]
    lines = [
        f"{args.requests} messages per target, {args.concurrency} concurrent clients, loopback; "
        f"chatgate on {database}, event loop {args.event_loop}",
        f"{'target':<30} {'msg/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'CPU ms/msg':>9}"
        + (f" {'DB ms':>7}" if any(result.database_cpu is not None for result in r.values()) else ""),
    ]
    order = ["chatgate-rest", "chatgate-ws", "chainlit", "chainlit-db", "store-rest", "store-ws", "bare-rest",
             "bare-ws"]
    lines += [r[key].row() for key in order if key in r]
    lines.append("ratios (messages/s; CPU per message)")

    def ratio(label: str, ours: str, theirs: str) -> None:
        if ours in r and theirs in r and r[theirs].rps and r[theirs].cpu_ms:
            lines.append(f"  {label:<44} {r[ours].rps / r[theirs].rps:>6.2f}x  "
                         f"CPU {r[ours].cpu_ms / r[theirs].cpu_ms:>5.2f}x")

    for ours, label in (("chatgate-rest", "chatgate REST"), ("chatgate-ws", "chatgate socket")):
        ratio(f"{label} / bare aiohttp", ours, "bare-rest" if ours.endswith("rest") else "bare-ws")
        ratio(f"{label} / Chainlit", ours, "chainlit")
        ratio(f"{label} / Chainlit + data layer", ours, "chainlit-db")
    ratio("chatgate REST / the store alone", "chatgate-rest", "store-rest")
    ratio("chatgate socket / the store alone", "chatgate-ws", "store-ws")
    ratio("the store alone, REST / bare aiohttp", "store-rest", "bare-rest")
    ratio("the store alone, socket / bare aiohttp", "store-ws", "bare-ws")
    ratio("Chainlit / bare aiohttp WebSocket", "chainlit", "bare-ws")
    ratio("Chainlit + data layer / Chainlit", "chainlit-db", "chainlit")
    if run.idle:
        lines += ["", f"{'idle sockets (after hello)':<30} {'sockets':>8} {'RSS MiB':>9} {'after':>9} "
                      f"{'KiB each':>9}"]
        lines += [i.row() for i in run.idle]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=1000, help="measured messages per target (default 1000)")
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent clients (default 8)")
    parser.add_argument("--warmup", type=int, default=50, help="unmeasured messages first (default 50)")
    parser.add_argument(
        "--database",
        metavar="URL",
        help="chatgate's database (default: a SQLite file in a temporary folder); e.g. an empty\n"
        "PostgreSQL database: postgresql+asyncpg://postgres@127.0.0.1/chatgate_bench",
    )
    parser.add_argument("--no-chainlit", dest="chainlit", action="store_false",
                        help="skip Chainlit (otherwise installed once into .bench/chainlit-venv)")
    parser.add_argument("--idle-sockets", type=int, default=500, metavar="N",
                        help="idle sockets opened for the memory line (default 500; 0 skips it)")
    parser.add_argument("--event-loop", choices=("auto", "uvloop", "asyncio"), default="auto",
                        help="the chatgate and bare servers' event loop (auto: uvloop when installed)")
    args = parser.parse_args(argv)
    if args.requests < 1 or args.concurrency < 1 or args.warmup < 0 or args.idle_sockets < 0:
        parser.error("--requests and --concurrency must be positive, --warmup and --idle-sockets not negative")
    args.concurrency = min(args.concurrency, args.requests)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    print(report(asyncio.run(measure(args)), args))


if __name__ == "__main__":
    main()
