"""Turns per second across topologies: `chatgate run`, 1 web + 1 worker, 2 web + 2 workers.

    .venv/bin/python bench/scale.py                       # 600 messages, 16 clients, both handlers
    .venv/bin/python bench/scale.py --messages 200 --handler echo --topology run 1+1

Every topology runs as real processes (``python -m gateway.cli run|web|worker``) on a fresh
PostgreSQL database and a Redis key prefix of its own, with the same app: ``echo`` replies at
once, ``model`` awaits 200 ms first (a model call). The load is REST ``send_message`` from
``--clients`` concurrent clients, one session each, spread round-robin over the web processes.
For each run it prints turns/s, p50/p99 latency, the server CPU per turn (all the topology's
processes, psutil), and what one turn costs the shared services: PostgreSQL transactions and
rows written (``pg_stat_database``), Redis commands (``INFO commandstats``) and, when PostgreSQL
runs on this machine, its own CPU (``DB ms/t``, its processes' psutil times). A run whose
events were answered more than once (each handler replies once) says so under its line: speed
bought by running a turn twice is a defect, not a figure. Loopback only; every loop is bounded
by ``--messages``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import asyncpg
import psutil
import redis.asyncio as redis
from database_cpu import database_cpu_seconds, is_local_postgres

ROOT = Path(__file__).resolve().parent.parent
KEY = "bench-key"
APP = '''
import asyncio

import gateway

app = gateway.App("bench")


@app.message()
async def handle(session: gateway.Session, msg: gateway.Message) -> None:
    if msg.text.startswith("model:"):
        await asyncio.sleep(0.2)  # a model call
    await session.reply("echo: " + msg.text)
'''
TOPOLOGIES = {"run": (("run", 1),), "1+1": (("web", 1), ("worker", 1)), "2+2": (("web", 2), ("worker", 2))}
START_TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Result:
    topology: str
    handler: str
    turns: int
    seconds: float
    latencies: list[float]
    cpu_seconds: float
    transactions: int
    rows_written: int
    redis_commands: int
    database_cpu_seconds: float | None
    """PostgreSQL's own CPU over the run, when it runs on this machine."""
    answered_twice: int = 0
    """Events with more than one reply: the echo and model handlers reply once, so any is a
    handler run twice (a claim that read a finished event as unfinished, say)."""

    def line(self) -> str:
        p50 = statistics.median(self.latencies) * 1000
        p99 = statistics.quantiles(self.latencies, n=100)[98] * 1000 if len(self.latencies) >= 100 else max(
            self.latencies) * 1000
        per = max(self.turns, 1)
        return (f"{self.topology:>5} {self.handler:>6} {self.turns / self.seconds:9.1f} {p50:8.1f} {p99:8.1f}"
                f" {self.cpu_seconds / per * 1000:9.2f} {self.transactions / per:8.1f} {self.rows_written / per:8.1f}"
                f" {self.redis_commands / per:8.1f}"
                + ("" if self.database_cpu_seconds is None else f" {self.database_cpu_seconds / per * 1000:8.2f}")
                + (f"\n      {self.answered_twice} events answered more than once: a defect" if self.answered_twice
                   else ""))


class Topology:
    def __init__(self, name: str, database_url: str, redis_url: str, workdir: Path) -> None:
        self.name = name
        self.workdir = workdir
        app = workdir / "bench_app.py"
        app.write_text(APP)
        self.app = app
        self.env = {
            **os.environ, "PYTHONPATH": str(ROOT), "DATABASE_URL": database_url, "REDIS_URL": redis_url,
            "CHATGATE_REDIS__KEY_PREFIX": f"bench-{secrets.token_hex(4)}",
            "CHATGATE_SECRET_KEY": secrets.token_urlsafe(32), "CHATGATE_DATA_DIR": str(workdir / "data"),
            "CHATGATE_FILES__DIR": str(workdir / "data" / "files"), "CHATGATE_WEB__API_KEYS": f'["{KEY}"]',
            "CHATGATE_SCHEDULER__ENABLED": "false",
            "CHATGATE_WEB__LIMITS__MESSAGES_PER_IP": "", "CHATGATE_WEB__LIMITS__MESSAGES_PER_VISITOR": "",
            "CHATGATE_SERVER__MAX_CONNECTIONS_PER_IP": "0",
        }
        self.processes: list[tuple[str, int, subprocess.Popen[bytes], Path]] = []

    def start(self) -> None:
        for role, count in TOPOLOGIES[self.name]:
            for index in range(count):
                port = free_port()
                log = self.workdir / f"{role}-{index}.log"
                command = [sys.executable, "-m", "gateway.cli", role, str(self.app), "--port", str(port)]
                popen = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, env=self.env,
                                         cwd=self.workdir)
                self.processes.append((role, port, popen, log))

    async def ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        async with aiohttp.ClientSession() as http:
            for role, port, popen, log in self.processes:
                path = "/readyz"
                while True:
                    if popen.poll() is not None:
                        raise SystemExit(f"{role} exited:\n{log.read_text()[-2000:]}")
                    if time.monotonic() > deadline:
                        raise SystemExit(f"{role} did not become ready:\n{log.read_text()[-2000:]}")
                    if role == "worker":
                        if "worker ready in" in log.read_text():
                            break
                    else:
                        try:
                            async with http.get(f"http://127.0.0.1:{port}{path}") as response:
                                if response.status == 200:
                                    break
                        except aiohttp.ClientError:
                            pass
                    await asyncio.sleep(0.1)

    @property
    def web_ports(self) -> list[int]:
        return [port for role, port, _, _ in self.processes if role in ("web", "run")]

    def cpu_seconds(self) -> float:
        total = 0.0
        for _, _, popen, _ in self.processes:
            try:
                times = psutil.Process(popen.pid).cpu_times()
                total += times.user + times.system
            except psutil.NoSuchProcess:
                pass
        return total

    def stop(self) -> None:
        for _, _, popen, _ in self.processes:
            popen.terminate()
        for _, _, popen, _ in self.processes:
            try:
                popen.wait(15)
            except subprocess.TimeoutExpired:
                popen.kill()


async def database_counters(admin_dsn: str, name: str) -> tuple[int, int]:
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        row = await conn.fetchrow(
            "SELECT xact_commit, tup_inserted + tup_updated + tup_deleted AS written FROM pg_stat_database "
            "WHERE datname = $1", name)
        return int(row["xact_commit"]), int(row["written"])
    finally:
        await conn.close()


async def redis_commands(client: redis.Redis) -> int:
    stats = await client.info("commandstats")
    return sum(int(value["calls"]) for key, value in stats.items() if key.startswith("cmdstat_"))


async def drive(ports: list[int], messages: int, clients: int, handler: str) -> tuple[float, list[float]]:
    headers = {"X-API-Key": KEY}
    latencies: list[float] = []
    per_client = [messages // clients + (1 if i < messages % clients else 0) for i in range(clients)]

    async def client(index: int, http: aiohttp.ClientSession) -> None:
        base = f"http://127.0.0.1:{ports[index % len(ports)]}/api/v1"
        async with http.post(f"{base}/chat/sessions", json={"agent_id": "bench"}, headers=headers) as response:
            session_id = (await response.json())["data"]["id"]
        for n in range(per_client[index]):
            text = f"{'model:' if handler == 'model' else ''}{index}-{n}"
            started = time.perf_counter()
            async with http.post(f"{base}/chat/sessions/{session_id}/messages", json={"content": text},
                                 headers=headers) as response:
                body = await response.json()
                if response.status != 201 or body["data"]["assistant_message"]["content"] != f"echo: {text}":
                    raise SystemExit(f"unexpected answer {response.status}: {body}")
            latencies.append(time.perf_counter() - started)

    connector = aiohttp.TCPConnector(limit=clients * 2)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(i, http) for i in range(clients)))
        return time.perf_counter() - started, latencies


async def run_one(args: argparse.Namespace, topology_name: str, handler: str) -> Result:
    name = f"chatgate_bench_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(args.postgres_admin)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    database_url = args.postgres_admin.replace("postgresql://", "postgresql+asyncpg://").rsplit("/", 1)[0] + f"/{name}"
    client = redis.from_url(args.redis)
    workdir = Path(tempfile.mkdtemp(prefix=f"chatgate-scale-{topology_name}-"))
    topology = Topology(topology_name, database_url, args.redis, workdir)
    try:
        topology.start()
        await topology.ready()
        await drive(topology.web_ports, min(args.clients * 2, args.messages), args.clients, handler)  # warm-up
        cpu_before = topology.cpu_seconds()
        local_database = is_local_postgres(database_url)
        database_cpu_before = database_cpu_seconds() if local_database else 0.0
        transactions_before, written_before = await database_counters(args.postgres_admin, name)
        redis_before = await redis_commands(client)
        seconds, latencies = await drive(topology.web_ports, args.messages, args.clients, handler)
        await asyncio.sleep(2.0)  # the turns' last writes land, and PostgreSQL flushes its statistics
        cpu = topology.cpu_seconds() - cpu_before
        database_cpu = database_cpu_seconds() - database_cpu_before if local_database else None
        transactions_after, written_after = await database_counters(args.postgres_admin, name)
        redis_after = await redis_commands(client)
        answered_twice = await events_answered_twice(database_url)
    finally:
        topology.stop()
        await client.aclose()
        admin = await asyncpg.connect(args.postgres_admin)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    return Result(topology_name, handler, args.messages, seconds, latencies, cpu,
                  transactions_after - transactions_before, written_after - written_before, redis_after - redis_before,
                  database_cpu, answered_twice)


ANSWERED_TWICE = (
    "SELECT count(*) FROM (SELECT inbound_id FROM messages WHERE role = 'assistant'"
    " GROUP BY inbound_id HAVING count(*) > 1) AS repeated"
)


async def events_answered_twice(database_url: str) -> int:
    """How many events of the run's database have more than one reply (``Result.answered_twice``)."""
    conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        return int(await conn.fetchval(ANSWERED_TWICE))
    finally:
        await conn.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=600, help="measured messages per run (default 600)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent REST clients, one session each")
    parser.add_argument("--handler", choices=("echo", "model", "both"), default="both")
    parser.add_argument("--topology", nargs="+", choices=tuple(TOPOLOGIES), default=list(TOPOLOGIES))
    parser.add_argument("--postgres-admin", default="postgresql://postgres@127.0.0.1:5432/postgres",
                        help="a PostgreSQL URL allowed to create and drop databases")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    handlers = ("echo", "model") if args.handler == "both" else (args.handler,)
    print(f"{args.messages} REST messages per run, {args.clients} clients, PostgreSQL + Redis on loopback, "
          f"{psutil.cpu_count()} cores")
    print(f"{'topo':>5} {'handler':>6} {'turns/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'CPU ms/t':>9} "
          f"{'xact/t':>8} {'rows/t':>8} {'redis/t':>8}"
          + (f" {'DB ms/t':>8}" if is_local_postgres(args.postgres_admin) else ""))
    for handler in handlers:
        for topology in args.topology:
            print((await run_one(args, topology, handler)).line(), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
