"""Benchmark: what sharing the platform budgets through Redis costs per paced request.

Runs the Telegram pacer's ``slot`` (the step every paced request takes) for ``--slots`` requests
spread over ``--chats`` chats by ``--concurrency`` tasks, with budgets so large they never make a
request wait, twice: in memory (one process) and with the budgets shared in Redis. Printed per
mode: slots/s, p50/p99 of the time to enter a slot, and the Redis commands per slot (from
``INFO commandstats``: the scripts that take and settle a slot). The difference is the price of
sharing; the platform's own budget (30 messages/s per Telegram bot) is far below either rate.

    .venv/bin/python bench/shared_budgets.py                        # 5,000 slots, 16 tasks
    .venv/bin/python bench/shared_budgets.py --redis redis://127.0.0.1:6379/0 --slots 20000
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import sys
import time
from pathlib import Path

import redis.asyncio as redis_asyncio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from adapters.telegram.pacer import Pacer  # noqa: E402 - after the path is set
from gateway.ratelimit import SharedBudgets  # noqa: E402


async def redis_commands(url: str) -> int:
    client = redis_asyncio.Redis.from_url(url)
    try:
        stats = await client.info("commandstats")
    finally:
        await client.aclose()
    return sum(int(v["calls"]) for k, v in stats.items() if k in ("cmdstat_evalsha", "cmdstat_eval"))


async def run(pacer: Pacer, slots: int, chats: int, concurrency: int) -> tuple[float, list[float]]:
    waits: list[float] = []
    counter = iter(range(slots))

    async def worker() -> None:
        for index in counter:
            began = time.perf_counter()
            async with pacer.slot(1000 + index % chats):
                waits.append(time.perf_counter() - began)

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - began, waits


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--slots", type=int, default=5000)
    parser.add_argument("--chats", type=int, default=5000, help="distinct chats (a chat's own window never waits)")
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()

    budgets = {"chat_interval": 1e-6, "global_per_second": 1e9, "draft_interval": 1e-6}
    print(f"{args.slots} slots over {args.chats} chats, {args.concurrency} tasks, budgets never full")
    print(f"{'mode':<22}{'slots/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'redis cmds/slot':>18}")
    for mode in ("in memory", "shared in Redis"):
        shared = SharedBudgets.from_url(args.redis) if mode != "in memory" else None
        pacer = Pacer(**budgets, shared=shared, namespace=f"{{bench-{secrets.token_hex(4)}}}")  # type: ignore[arg-type]
        before = await redis_commands(args.redis)
        elapsed, waits = await run(pacer, args.slots, args.chats, args.concurrency)
        await pacer.close()
        commands = (await redis_commands(args.redis) - before) / args.slots
        waits.sort()
        p50 = statistics.median(waits) * 1000
        p99 = waits[int(len(waits) * 0.99) - 1] * 1000
        print(f"{mode:<22}{args.slots / elapsed:>10.0f}{p50:>10.2f}{p99:>10.2f}{commands:>18.2f}")


if __name__ == "__main__":
    asyncio.run(main())
