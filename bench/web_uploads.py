"""Memory of the gateway while widget uploads arrive: concurrent large uploads, peak RSS.

    .venv/bin/python bench/web_uploads.py --uploads 12 --mib 19

The gateway (the web channel, a SQLite file, the file store in a temporary folder) runs in its
own process; this process opens one anonymous visitor per upload (a socket's ``hello``) and
posts every file at once. Printed: the server's resident memory before, its peak (``VmHWM``
from /proc, Linux only) and the time the uploads took. An upload held whole in memory costs its
size; one streamed to disk costs a chunk. Loopback only; bounded by ``--uploads`` and ``--mib``.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

HOST = "127.0.0.1"
MIB = 1024 * 1024


async def _serve(conn: Any, data_dir: str, max_bytes: int) -> None:
    import logging

    import gateway
    from adapters.web.adapter import WebAdapter
    from adapters.web.testing import web_settings
    from gateway.runtime import Gateway

    logging.basicConfig(level=logging.WARNING)
    app = gateway.App("uploads")

    @app.message()
    async def echo(session: gateway.Session, msg: gateway.Message) -> None:
        await session.reply(msg.text)

    settings = web_settings(data_dir, files={"max_upload_bytes": max_bytes}, logging={"level": "WARNING"})
    gw = Gateway(app, settings, adapters=[WebAdapter(settings)])
    await gw.start()
    conn.send((os.getpid(), gw.port))
    await asyncio.get_running_loop().run_in_executor(None, conn.recv)
    await gw.stop()


def _server_main(conn: Any, data_dir: str, max_bytes: int) -> None:
    asyncio.run(_serve(conn, data_dir, max_bytes))


def memory_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/status has no {field}")


async def upload_all(url: str, uploads: int, size: int) -> float:
    payload = os.urandom(MIB) * (size // MIB) + os.urandom(size % MIB)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as http:
        visitors = []
        for _ in range(uploads):
            async with http.ws_connect(f"{url.replace('http', 'ws', 1)}/ws") as ws:
                await ws.send_json({"type": "hello", "id": "h", "session_id": None})
                ready = await ws.receive_json(timeout=30)
            visitors.append((ready["visitor_token"], ready["session_id"]))

        async def one(visitor: str, session_id: str) -> None:
            form = aiohttp.FormData()
            form.add_field("session_id", session_id)
            form.add_field("file", payload, filename="big.bin", content_type="application/octet-stream")
            async with http.post(f"{url}/upload", params={"visitor": visitor}, data=form) as response:
                if response.status != 201:
                    raise RuntimeError(f"upload answered {response.status}: {await response.text()}")

        started = time.perf_counter()
        await asyncio.gather(*(one(visitor, session_id) for visitor, session_id in visitors))
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--uploads", type=int, default=12, help="concurrent uploads, one visitor each")
    parser.add_argument("--mib", type=float, default=19.0, help="size of each upload in MiB")
    args = parser.parse_args()
    size = int(args.mib * MIB)
    with tempfile.TemporaryDirectory(prefix="chatgate-bench-") as data_dir:
        context = multiprocessing.get_context("spawn")
        conn, child = context.Pipe()
        process = context.Process(target=_server_main, args=(child, data_dir, size + MIB), daemon=True)
        process.start()
        try:
            if not conn.poll(60):
                raise RuntimeError("the server did not start within 60 s")
            pid, port = conn.recv()
            before = memory_kib(pid, "VmRSS")
            seconds = asyncio.run(upload_all(f"http://{HOST}:{port}", args.uploads, size))
            peak = memory_kib(pid, "VmHWM")
        finally:
            conn.send("stop")
            process.join(15)
            if process.is_alive():
                process.terminate()
    total = args.uploads * size / MIB
    print(f"{args.uploads} concurrent uploads of {args.mib:g} MiB ({total:.0f} MiB) in {seconds:.2f} s")
    print(f"server RSS before {before / 1024:.0f} MiB, peak {peak / 1024:.0f} MiB (+{(peak - before) / 1024:.0f} MiB)")


if __name__ == "__main__":
    main()
