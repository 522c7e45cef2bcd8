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
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import gateway
from tests.fakes.slack_api import FakeSlack, SlackGateway

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
        choices=("dm", "channel"),
        default="dm",
        help="dm: each thread in its own user's DM (an assistant app); channel: all threads in one channel",
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


def thread_of(slack: FakeSlack, call: Any) -> tuple[str, str] | None:
    """The (channel, thread_ts) a successful Web API call wrote to."""
    args = call.args
    channel = args.get("channel")
    if not channel:
        return None
    if call.method in ("chat.postMessage", "chat.startStream"):
        thread = args.get("thread_ts")
        if thread:
            return str(channel), str(thread)
        message = next((m for m in slack.messages.values() if m.channel == channel and m.thread_ts is None), None)
        return (str(channel), message.ts) if message else None
    message = slack.messages.get((str(channel), str(args.get("ts"))))
    if message is None:
        return None
    return str(channel), str(message.thread_ts or message.ts)


async def run(args: argparse.Namespace) -> int:
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
                    last_token_at[str(session.channel.thread_id)] = time.monotonic()
                delay = started + (i + 1) * interval - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)

    with tempfile.TemporaryDirectory(prefix="chatgate-bench-") as data_dir:
        async with FakeSlack(time_scale=args.time_scale) as slack:
            async with SlackGateway(app, data_dir, slack, update_interval=args.update_interval) as gw:
                events = []
                for i in range(args.threads):
                    user, ts = f"U{i:04d}", f"1700000000.{i + 1:06d}"
                    slack.add_user(user, email=f"user{i}@example.com")
                    if args.where == "dm":
                        event = {"type": "message", "channel": f"D{i:04d}", "channel_type": "im", "user": user}
                    else:
                        event = {"type": "app_mention", "channel": "C0001", "user": user}
                    events.append({**event, "text": "<@UBOT> tell me a long story", "ts": ts})
                started = time.monotonic()
                results = await asyncio.gather(
                    *(slack.deliver_event(gw.events_url, e, event_id=f"Ev{i}") for i, e in enumerate(events))
                )
                acks = [elapsed for _, _, elapsed in results]
                statuses = Counter(status for status, _, _ in results)
                await gw.idle(timeout=args.tokens / args.rate * 20 + 600)
                wall = time.monotonic() - started
                stats = gw.adapter.pacer.stats

        final_at: dict[tuple[str, str], float] = {}
        for call in slack.calls:
            if call.method in STREAM_METHODS and call.status == 200 and call.error is None:
                key = thread_of(slack, call)
                if key is not None:
                    final_at[key] = max(final_at.get(key, 0.0), call.at)
        delays, incomplete, native = [], 0, 0
        for event in events:
            channel, ts = event["channel"], event["ts"]
            messages = slack.thread(channel, ts)
            text = "".join(m.visible_text for m in messages)
            if text.strip() != expected.strip():
                incomplete += 1
            native += any(m.recipient or m.markdown for m in messages)
            if ts in last_token_at and (channel, ts) in final_at:
                delays.append(final_at[(channel, ts)] - last_token_at[ts])

    methods = Counter(c.method for c in slack.calls)
    rate_limited = len(slack.rate_limited_calls())
    print(f"threads {args.threads} x {args.tokens} tokens at {args.rate:g}/s ({args.where}), wall {wall:.1f} s")
    print(f"acks: {dict(statuses)}; ack time p50 {percentile(acks, 0.5) * 1000:.0f} ms, max {max(acks) * 1000:.0f} ms")
    print(f"Web API calls: {len(slack.calls)} " + ", ".join(f"{m} {n}" for m, n in sorted(methods.items())))
    print(f"HTTP 429s: {rate_limited}")
    print(f"replies streamed natively: {native}/{args.threads}; incomplete final texts: {incomplete}")
    print(f"frames skipped by the pacer: {stats.skipped_frames}; pacer waits: {stats.waited_seconds:.1f} s total")
    if delays:
        print(
            f"last token -> final text: p50 {percentile(delays, 0.5) * 1000:.0f} ms, "
            f"p99 {percentile(delays, 0.99) * 1000:.0f} ms, max {max(delays) * 1000:.0f} ms"
        )
    return 0 if incomplete == 0 else 1


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(run(parse_args(argv)))


if __name__ == "__main__":
    raise SystemExit(main())
