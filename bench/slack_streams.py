"""Benchmark: many Slack threads streaming replies at once through a real gateway.

A real ``Gateway`` (SQLite file in a temporary directory) with the Slack adapter talks to the
local Slack of ``tests/fakes/slack_api.py``, which enforces Slack's rate tiers in real time
(one-minute windows, HTTP 429 + Retry-After). Each thread gets one user message (signed Events
API POST); the handler streams ``--tokens`` tokens at ``--rate`` tokens per second. Printed:
Web API calls by method, 429s (goal 0), how each reply was delivered (native stream or post +
edits), and the delay from a thread's last token to its final text landing in Slack.

    .venv/bin/python bench/slack_streams.py                       # 50 threads x 2,000 tokens at 100/s
    .venv/bin/python bench/slack_streams.py --threads 5 --tokens 200
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp

import gateway
from tests.fakes.slack_api import FakeSlack, SlackGateway

TOP = "top-level"
"""The conversation key of a top-level DM session (no thread)."""
STREAM_METHODS = ("chat.postMessage", "chat.update", "chat.startStream", "chat.appendStream", "chat.stopStream")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=50, help="concurrent Slack threads (default 50)")
    parser.add_argument("--tokens", type=int, default=2000, help="tokens streamed per reply (default 2000)")
    parser.add_argument("--rate", type=float, default=100.0, help="tokens per second per reply (default 100)")
    parser.add_argument("--token", default="word ", help="the text of one token (default 'word ')")
    parser.add_argument(
        "--where",
        choices=("dm", "dm-top", "channel"),
        default="dm",
        help="dm: each thread in its own user's DM (an assistant app); dm-top: top-level DMs with "
        "dm_sessions=per_dm (no thread: post + edit); channel: all threads in one channel",
    )
    parser.add_argument(
        "--update-interval", type=float, default=1.0, help="seconds between frames (slack.update_interval)"
    )
    parser.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        help="the fake Slack's rate windows x this (1 = Slack's real one-minute windows)",
    )
    return parser.parse_args(argv)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def serve_fake_slack(port_queue: Any, stop_event: Any, time_scale: float) -> None:
    """The local Slack in its own process, as Slack is another machine: its CPU is not ours."""

    async def serve() -> None:
        async with FakeSlack(time_scale=time_scale) as slack:
            port_queue.put(slack.port)
            await asyncio.to_thread(stop_event.wait)

    asyncio.run(serve())


def thread_of(messages: dict[tuple[str, str], dict[str, Any]], call: dict[str, Any]) -> tuple[str, str] | None:
    """The (channel, thread_ts) a successful Web API call wrote to."""
    args = call["args"]
    channel = args.get("channel")
    if not channel:
        return None
    if call["method"] in ("chat.postMessage", "chat.startStream"):
        return str(channel), str(args.get("thread_ts") or TOP)
    message = messages.get((str(channel), str(args.get("ts"))))
    if message is None:
        return None
    return str(channel), str(message["thread_ts"] or TOP)


async def run(args: argparse.Namespace, port: int) -> int:
    expected = args.token * args.tokens
    last_token_at: dict[str, float] = {}
    app = gateway.App("bench")

    @app.message()
    async def handle(session: gateway.Session, msg: gateway.Message) -> None:
        interval = 1.0 / args.rate
        started = time.monotonic()
        async with session.stream_reply() as reply:
            for i in range(args.tokens):
                reply.write(args.token)
                if i == args.tokens - 1:
                    last_token_at[f"{session.channel.chat_id}/{session.channel.thread_id or TOP}"] = time.monotonic()
                delay = started + (i + 1) * interval - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)

    slack = FakeSlack(time_scale=args.time_scale)  # not started: the one in the other process answers
    slack.port = port
    with tempfile.TemporaryDirectory(prefix="chatgate-bench-") as data_dir:
        async with aiohttp.ClientSession() as http:
            events = []
            for i in range(args.threads):
                user, ts = f"U{i:04d}", f"1700000000.{i + 1:06d}"
                async with http.post(f"{slack.base_url}/_fake/users", json={"id": user, "email": f"u{i}@example.com"}):
                    pass
                if args.where in ("dm", "dm-top"):
                    event = {"type": "message", "channel": f"D{i:04d}", "channel_type": "im", "user": user}
                else:
                    event = {"type": "app_mention", "channel": "C0001", "user": user}
                events.append({**event, "text": "<@UBOT> tell me a long story", "ts": ts})
            dm_sessions = "per_dm" if args.where == "dm-top" else "per_thread"
            async with SlackGateway(
                app, data_dir, slack, update_interval=args.update_interval, dm_sessions=dm_sessions
            ) as gw:
                started = time.monotonic()
                results = await asyncio.gather(
                    *(slack.deliver_event(gw.events_url, e, event_id=f"Ev{i}") for i, e in enumerate(events))
                )
                acks = [elapsed for _, _, elapsed in results]
                statuses = Counter(status for status, _, _ in results)
                await gw.idle(timeout=args.tokens / args.rate * 20 + 600)
                wall = time.monotonic() - started
                stats = gw.adapter.pacer.stats
            async with http.get(f"{slack.base_url}/_fake/state") as response:
                state = await response.json()
        await slack.stop()

    calls = state["calls"]
    messages = {(m["channel"], m["ts"]): m for m in state["messages"]}
    final_at: dict[tuple[str, str], float] = {}
    for call in calls:
        if call["method"] in STREAM_METHODS and call["status"] == 200 and call["error"] is None:
            key = thread_of(messages, call)
            if key is not None:
                final_at[key] = max(final_at.get(key, 0.0), call["at"])
    delays, incomplete, native = [], 0, 0
    delays_by_mode: dict[str, list[float]] = {"native stream": [], "post/edit": []}
    for event in events:
        channel = event["channel"]
        ts = TOP if args.where == "dm-top" else event["ts"]
        thread = sorted(
            (
                m
                for m in messages.values()
                if m["channel"] == channel and (m["thread_ts"] or TOP) == ts and not m["deleted"]
            ),
            key=lambda m: float(m["ts"]),
        )
        if "".join(m["visible_text"] for m in thread).strip() != expected.strip():
            incomplete += 1
        streamed_natively = any(m["streamed"] for m in thread)
        native += streamed_natively
        token_key = f"{channel}/{ts}"
        if token_key in last_token_at and (channel, ts) in final_at:
            delays.append(final_at[(channel, ts)] - last_token_at[token_key])
            delays_by_mode["native stream" if streamed_natively else "post/edit"].append(delays[-1])

    methods = Counter(c["method"] for c in calls)
    rate_limited = Counter(c["method"] for c in calls if c["status"] == 429)
    ms = 1000
    print(f"threads {args.threads} x {args.tokens} tokens at {args.rate:g}/s ({args.where}), wall {wall:.1f} s")
    print(f"acks: {dict(statuses)}; ack time p50 {percentile(acks, 0.5) * ms:.0f} ms, max {max(acks) * ms:.0f} ms")
    print(f"Web API calls: {len(calls)} (" + ", ".join(f"{m} {n}" for m, n in sorted(methods.items())) + ")")
    print(f"HTTP 429s: {sum(rate_limited.values())}" + (f" {dict(rate_limited)}" if rate_limited else ""))
    print(f"replies streamed natively: {native}/{args.threads}; incomplete final texts: {incomplete}")
    print(f"preview frames skipped by the pacer: {stats.skipped_frames}")
    print(f"longest wait of an urgent call (final text) for its slot: {stats.longest_urgent_wait * ms:.0f} ms")
    if delays:
        print(
            f"last token -> final text: p50 {percentile(delays, 0.5) * ms:.0f} ms, "
            f"p99 {percentile(delays, 0.99) * ms:.0f} ms, max {max(delays) * ms:.0f} ms"
        )
        for mode, values in delays_by_mode.items():
            if values:
                p50, top = percentile(values, 0.5) * ms, max(values) * ms
                print(f"  {mode} ({len(values)} threads): p50 {p50:.0f} ms, max {top:.0f} ms")
    return 0 if incomplete == 0 else 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    context = multiprocessing.get_context("spawn")
    port_queue, stop_event = context.Queue(), context.Event()
    server = context.Process(target=serve_fake_slack, args=(port_queue, stop_event, args.time_scale), daemon=True)
    server.start()
    try:
        return asyncio.run(run(args, port_queue.get(timeout=30)))
    finally:
        stop_event.set()
        server.join(5)


if __name__ == "__main__":
    raise SystemExit(main())
