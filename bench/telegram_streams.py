"""Benchmark: many private Telegram chats streaming replies at once through a real gateway.

A real ``Gateway`` (SQLite file in a temporary directory) with the Telegram adapter long-polls the
local Bot API server of ``tests/fakes/telegram_api.py``, which enforces Telegram's published rates
in real time (one message a second per chat, thirty a second per bot, drafts five a second per
chat; HTTP 429 + ``retry_after``). Each chat sends one message, spread over ``--spread`` seconds;
the handler streams ``--tokens`` tokens at ``--rate`` tokens per second. Printed: Bot API calls by
method, 429s (goal 0), whether every chat ended with exactly its full text, and the delay from a
chat's last token to its final message arriving at the server (p50/p99; goal under 300 ms).

    .venv/bin/python bench/telegram_streams.py                      # 50 chats x 2,000 tokens at 100/s
    .venv/bin/python bench/telegram_streams.py --chats 5 --tokens 200
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import gateway  # noqa: E402 - after the path is set
from adapters.telegram.pacer import GLOBAL_MESSAGES_PER_SECOND  # noqa: E402
from gateway.config import load_settings  # noqa: E402
from gateway.runtime import Gateway  # noqa: E402
from tests.fakes.telegram_api import FakeTelegramAPI  # noqa: E402

FIRST_CHAT = 100_000
WORDS = (
    "the gateway streams every token to the chat while the pacer keeps each request inside "
    "Telegram's budget so that nothing is ever rate limited and the final text arrives whole"
).split()


class RemoteFake:
    """The fake Bot API server in its own process (``python -m tests.fakes.telegram_api``): like
    Telegram, it does not share the gateway's CPU or event loop. Same calls as the in-process one."""

    def __init__(self, latency: float) -> None:
        self.latency = latency
        self.process: asyncio.subprocess.Process | None = None
        self.http: aiohttp.ClientSession | None = None
        self.base_url = ""
        self.token = ""
        self.calls: list[dict[str, Any]] = []
        self.visible: dict[int, list[str]] = {}

    async def __aenter__(self) -> RemoteFake:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.fakes.telegram_api",
            "--latency",
            str(self.latency),
            stdout=asyncio.subprocess.PIPE,
            cwd=str(ROOT),
        )
        assert self.process.stdout is not None
        line = (await asyncio.wait_for(self.process.stdout.readline(), 60)).decode().split()
        port, self.token = int(line[1]), line[2]
        self.base_url = f"http://127.0.0.1:{port}"
        self.http = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.http is not None:
            await self.http.close()
        if self.process is not None:
            self.process.terminate()
            await self.process.wait()

    async def send_text(self, chat_id: int, text: str) -> None:
        assert self.http is not None
        async with self.http.post(f"{self.base_url}/_fake/send_text", json={"chat_id": chat_id, "text": text}) as r:
            r.raise_for_status()

    async def visible_texts(self, chat_id: int) -> list[str]:
        assert self.http is not None
        async with self.http.get(f"{self.base_url}/_fake/visible", params={"chat_id": str(chat_id)}) as r:
            texts: list[str] = (await r.json())["texts"]
        self.visible[chat_id] = texts
        return texts

    async def fetch_calls(self) -> list[dict[str, Any]]:
        assert self.http is not None
        async with self.http.get(f"{self.base_url}/_fake/calls") as r:
            self.calls = await r.json()
        return self.calls


class LocalFake(RemoteFake):
    """The fake in this process and event loop (``--in-process``): simpler, but it competes with
    the gateway for the same CPU, so delays include its work."""

    async def __aenter__(self) -> LocalFake:
        self.api = FakeTelegramAPI(latency=self.latency)
        await self.api.start()
        self.base_url, self.token = self.api.base_url, self.api.token
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.api.stop()

    async def send_text(self, chat_id: int, text: str) -> None:
        self.api.send_text(chat_id, text)

    async def visible_texts(self, chat_id: int) -> list[str]:
        self.visible[chat_id] = self.api.visible_texts(chat_id)
        return self.visible[chat_id]

    async def fetch_calls(self) -> list[dict[str, Any]]:
        self.calls = [
            {"method": c.method, "status": c.status, "at": self.api.started + c.at, "chat_id": c.params.get("chat_id")}
            for c in self.api.calls
        ]
        return self.calls


def make_tokens(count: int, seed: int) -> list[str]:
    """About four characters a token, with a paragraph break every ~60 tokens, like model output."""
    rng = random.Random(seed)
    tokens: list[str] = []
    for i in range(count):
        word = rng.choice(WORDS)
        tokens.append(("\n\n" if i and i % 60 == 0 else " " if i else "") + word)
    return tokens


def normalised(text: str) -> str:
    return "".join(text.split())


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


async def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING)
    expected: dict[int, str] = {}
    last_token: dict[int, float] = {}
    app = gateway.App("telegram-bench")

    @app.message()
    async def stream(session: gateway.Session, msg: gateway.Message) -> None:
        chat_id = int(session.channel.chat_id or 0)
        tokens = make_tokens(args.tokens, chat_id)
        interval = 1.0 / args.rate
        started = time.monotonic()
        async with session.stream_reply() as reply:
            for index, token in enumerate(tokens):
                delay = started + index * interval - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                reply.write(token)
            last_token[chat_id] = time.monotonic()

    chats = [FIRST_CHAT + i for i in range(args.chats)]
    for chat_id in chats:
        expected[chat_id] = "".join(make_tokens(args.tokens, chat_id))

    fake: RemoteFake = LocalFake(args.latency) if args.in_process else RemoteFake(args.latency)
    async with fake:
        with tempfile.TemporaryDirectory() as tmp:
            settings = load_settings(
                None,
                data_dir=tmp,
                secret_key="bench-secret-key-of-at-least-32-bytes",
                server={"host": "127.0.0.1", "port": 0},
                database={"url": f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}"},
                files={"dir": str(Path(tmp) / "files")},
                web={"enabled": False},
                scheduler={"enabled": False},
                dispatch={"max_concurrent_sessions": max(64, args.chats)},
                telegram={
                    "bot_token": fake.token,
                    "api_url": fake.base_url,
                    "poll_timeout": 5,
                    "use_drafts": not args.no_drafts,
                },
            )
            gw = Gateway(app, settings)
            await gw.start()
            try:
                began = time.monotonic()
                rng = random.Random(7)
                for at, chat_id in sorted((rng.uniform(0, args.spread), c) for c in chats):
                    await asyncio.sleep(max(0.0, began + at - time.monotonic()))
                    await fake.send_text(chat_id, "stream please")
                deadline = began + args.spread + args.tokens / args.rate + args.timeout
                while time.monotonic() < deadline:
                    if len(last_token) == len(chats):
                        texts = await asyncio.gather(*(fake.visible_texts(c) for c in chats))
                        if all(
                            normalised("".join(t)) == normalised(expected[c]) for c, t in zip(chats, texts, strict=True)
                        ):
                            break
                    await asyncio.sleep(0.2)
                elapsed = time.monotonic() - began
                await asyncio.sleep(0.5)  # let anything stray arrive before counting
                await asyncio.gather(*(fake.visible_texts(c) for c in chats))
                await fake.fetch_calls()
            finally:
                await gw.stop()
        return report(args, fake, chats, expected, last_token, elapsed)


def budget_floor(ends: list[float], per_second: int = int(GLOBAL_MESSAGES_PER_SECOND)) -> float:
    """The least worst-case delay *any* sender can achieve for finals due at ``ends`` when the bot
    may send at most ``per_second`` messages in any one second: of the streams ending between
    ``ends[i - per_second]`` and ``ends[i]`` (one more than a second's budget), the last final
    to go leaves at least a second after the first could, so some final waits at least
    ``ends[i - per_second] + 1 - ends[i]``."""
    ordered = sorted(ends)
    gaps = [ordered[i - per_second] + 1.0 - ordered[i] for i in range(per_second, len(ordered))]
    return max([0.0, *gaps])


def report(
    args: argparse.Namespace,
    fake: RemoteFake,
    chats: list[int],
    expected: dict[int, str],
    last_token: dict[int, float],
    elapsed: float,
) -> int:
    by_method = Counter(c["method"] for c in fake.calls)
    limited = [c for c in fake.calls if c["status"] == 429]
    delays: list[float] = []
    exact = 0
    for chat_id in chats:
        # the final text lands with the chat's last sendMessage (drafts) or editMessageText (edits)
        finals = [
            c
            for c in fake.calls
            if c["method"] in ("sendMessage", "editMessageText") and c["status"] == 200 and int(c["chat_id"]) == chat_id
        ]
        if normalised("".join(fake.visible.get(chat_id, []))) == normalised(expected[chat_id]):
            exact += 1
        if finals and chat_id in last_token:
            delays.append(finals[-1]["at"] - last_token[chat_id])
    print(
        f"chats: {args.chats}   tokens per chat: {args.tokens} at {args.rate:g}/s   "
        f"arrivals spread over {args.spread:g} s   drafts: {'off' if args.no_drafts else 'on'}   "
        f"fake server: {'in this process' if args.in_process else 'own process'}"
    )
    print(f"wall time: {elapsed:.1f} s")
    print(f"Bot API calls: {len(fake.calls)}  " + "  ".join(f"{m}={n}" for m, n in by_method.most_common()))
    print(f"429 answers: {len(limited)}" + (f"  ({Counter(c['method'] for c in limited)})" if limited else ""))
    print(f"chats whose messages hold exactly the full text: {exact}/{len(chats)}")
    if delays:
        print(
            f"last token -> final message: p50 {statistics.median(delays) * 1000:.0f} ms   "
            f"p99 {percentile(delays, 99) * 1000:.0f} ms   max {max(delays) * 1000:.0f} ms"
        )
        print(
            f"  floor for these end times at {GLOBAL_MESSAGES_PER_SECOND:g} messages/s (any pacer): "
            f"max {budget_floor(list(last_token.values())) * 1000:.0f} ms"
        )
    ok = exact == len(chats) and not limited
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--chats", type=int, default=50, help="concurrent private chats, one stream each")
    parser.add_argument("--tokens", type=int, default=2000, help="tokens per streamed reply")
    parser.add_argument("--rate", type=float, default=100.0, help="tokens per second per stream")
    parser.add_argument(
        "--spread", type=float, default=1.0, help="seconds over which the chats' first messages arrive (0: all at once)"
    )
    parser.add_argument("--latency", type=float, default=0.0, help="seconds the fake server adds per request")
    parser.add_argument("--timeout", type=float, default=60.0, help="extra seconds to wait for the final texts")
    parser.add_argument("--no-drafts", action="store_true", help="stream by edits (a server without drafts)")
    parser.add_argument(
        "--in-process", action="store_true", help="run the fake Bot API server in this process instead of its own"
    )
    args = parser.parse_args(argv)
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
