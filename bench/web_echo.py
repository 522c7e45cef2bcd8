"""Web channel throughput: chatgate's ``send_message`` and WebSocket round trip against a bare
aiohttp echo server, under the same load, in the same run.

    .venv/bin/python bench/web_echo.py --requests 2000 --concurrency 16

Each server runs in its own process (started, measured, stopped in turn); the load generator is
this process. chatgate stores every message (user and reply) in a SQLite file (or --database); the bare server
stores nothing. Printed: requests/s, p50 and p99 latency per target, and chatgate / bare.
Loopback only; every loop is bounded by ``--requests``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

API_KEY = "bench-key"
HOST = "127.0.0.1"
REQUEST_TIMEOUT = 30.0


# -- the servers (each in its own process) ---------------------------------------------------


async def _serve_bare(conn: Any) -> None:
    from aiohttp import web

    async def echo(request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response({"data": {"role": "assistant", "content": "echo: " + body["content"]}}, status=201)

    async def socket(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
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
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, HOST, 0)
    await site.start()
    conn.send(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
    await asyncio.get_running_loop().run_in_executor(None, conn.recv)
    await runner.cleanup()


async def _serve_chatgate(conn: Any, data_dir: str, database: str | None) -> None:
    import logging

    import gateway
    from adapters.web.adapter import WebAdapter
    from adapters.web.testing import web_settings
    from gateway.runtime import Gateway

    logging.basicConfig(level=logging.WARNING)
    app = gateway.App("echo")

    @app.message()
    async def echo(session: gateway.Session, msg: gateway.Message) -> None:
        await session.reply("echo: " + msg.text)

    overrides: dict[str, Any] = {"web": {"api_keys": [API_KEY]}, "logging": {"level": "WARNING"}}
    if database:
        overrides["database"] = {"url": database}
    settings = web_settings(data_dir, **overrides)
    gw = Gateway(app, settings, adapters=[WebAdapter(settings)])
    await gw.start()
    conn.send(gw.port)
    await asyncio.get_running_loop().run_in_executor(None, conn.recv)
    await gw.stop()


def _server_main(kind: str, conn: Any, data_dir: str, database: str | None) -> None:
    asyncio.run(_serve_bare(conn) if kind == "bare" else _serve_chatgate(conn, data_dir, database))


class ServerProcess:
    def __init__(self, kind: str, data_dir: str, database: str | None = None) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_server_main, args=(kind, child, data_dir, database), daemon=True)

    def __enter__(self) -> int:
        self._process.start()
        if not self._conn.poll(60):
            raise RuntimeError("the server did not start within 60 s")
        return int(self._conn.recv())

    def __exit__(self, *_: Any) -> None:
        self._conn.send("stop")
        self._process.join(15)
        if self._process.is_alive():
            self._process.terminate()


# -- the load ---------------------------------------------------------------------------------


@dataclass
class Result:
    target: str
    requests: int
    seconds: float
    latencies: list[float]

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000

    def row(self) -> str:
        return f"{self.target:<28} {self.rps:>9.0f} {self.percentile(50):>9.2f} {self.percentile(99):>9.2f}"


Worker = Callable[[int, int], Awaitable[list[float]]]


async def _load(target: str, requests: int, concurrency: int, worker: Worker) -> Result:
    shares = [requests // concurrency + (1 if i < requests % concurrency else 0) for i in range(concurrency)]
    started = time.perf_counter()
    latencies = await asyncio.gather(*(worker(i, n) for i, n in enumerate(shares) if n))
    elapsed = time.perf_counter() - started
    flat = [x for chunk in latencies for x in chunk]
    return Result(target, len(flat), elapsed, flat)


async def rest_load(url: str, *, chatgate: bool, requests: int, concurrency: int, warmup: int) -> Result:
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
                body = {"content": f"hello {index}-{i}"}
                started = time.perf_counter()
                async with http.post(target, json=body) as response:
                    payload = await response.json()
                times.append(time.perf_counter() - started)
                if response.status != 201 or payload["data"]["content"] != f"echo: hello {index}-{i}":
                    raise RuntimeError(f"unexpected answer {response.status}: {payload}")
            return times

        await _load("warmup", warmup, min(concurrency, warmup), worker)
        name = "chatgate send_message" if chatgate else "bare aiohttp POST"
        return await _load(name, requests, concurrency, worker)


async def socket_load(url: str, *, chatgate: bool, requests: int, concurrency: int, warmup: int) -> Result:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as http:

        async def worker(index: int, count: int) -> list[float]:
            times = []
            async with http.ws_connect(f"{url.replace('http', 'ws', 1)}/ws") as ws:
                if chatgate:
                    await ws.send_json({"type": "hello", "id": f"h{index}", "session_id": None})
                    await ws.receive_json(timeout=REQUEST_TIMEOUT)
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

        await _load("warmup", warmup, min(concurrency, warmup), worker)
        name = "chatgate WebSocket turn" if chatgate else "bare aiohttp WebSocket"
        return await _load(name, requests, concurrency, worker)


async def measure(args: argparse.Namespace) -> list[tuple[Result, Result]]:
    pairs = []
    with tempfile.TemporaryDirectory(prefix="chatgate-bench-") as data_dir:
        results: dict[str, Result] = {}
        for kind in ("bare", "chatgate"):
            with ServerProcess(kind, data_dir, args.database) as port:
                url = f"http://{HOST}:{port}"
                options = {"requests": args.requests, "concurrency": args.concurrency, "warmup": args.warmup}
                results[f"{kind}-rest"] = await rest_load(url, chatgate=kind == "chatgate", **options)
                results[f"{kind}-ws"] = await socket_load(url, chatgate=kind == "chatgate", **options)
        pairs.append((results["chatgate-rest"], results["bare-rest"]))
        pairs.append((results["chatgate-ws"], results["bare-ws"]))
    return pairs


def report(pairs: list[tuple[Result, Result]], args: argparse.Namespace) -> str:
    lines = [
        f"{args.requests} requests per target, {args.concurrency} concurrent clients, loopback, "
        f"chatgate on {'SQLite' if not args.database else args.database.split('://')[0]}",
        f"{'target':<28} {'req/s':>9} {'p50 ms':>9} {'p99 ms':>9}",
    ]
    for ours, bare in pairs:
        lines += [ours.row(), bare.row(), f"{'  ratio chatgate / bare':<28} {ours.rps / bare.rps:>9.2f}"]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=1000, help="measured requests per target (default 1000)")
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent clients (default 8)")
    parser.add_argument("--warmup", type=int, default=50, help="unmeasured requests first (default 50)")
    parser.add_argument(
        "--database",
        metavar="URL",
        help="chatgate's database (default: a SQLite file in a temporary folder); e.g. an empty\n"
        "PostgreSQL database: postgresql+asyncpg://postgres@127.0.0.1/chatgate_bench",
    )
    args = parser.parse_args(argv)
    if args.requests < 1 or args.concurrency < 1 or args.warmup < 0:
        parser.error("--requests and --concurrency must be positive, --warmup not negative")
    args.concurrency = min(args.concurrency, args.requests)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    print(report(asyncio.run(measure(args)), args))


if __name__ == "__main__":
    main()
