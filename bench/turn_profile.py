"""Where a stored turn's time goes: py-spy samples of chatgate under web_echo's load, grouped.

Starts chatgate's echo server as ``web_echo.py`` does (SQLite, or ``--database``), loads it with
REST ``send_message`` or widget socket turns, records the server with ``py-spy record --gil``
(samples of the thread holding the GIL) and prints the share of each group of work. A sample
goes to the first group that matches, from its innermost frame outwards.

    .venv/bin/python bench/turn_profile.py rest socket     # needs py-spy: pip install -e '.[bench]'
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import web_echo

GROUPS = [  # (a substring of a py-spy frame, the group it names), the most specific first
    ("record_inbound", "store: record the event and the user's message"),
    ("insert_message", "store: store the reply"),
    ("set_inbox_status", "store: mark the event done"),
    ("turn_context (gateway/store/sqlite_turns", "store: read the session and user"),
    ("session (gateway/store/sqlite_turns", "store: read the session and user"),
    ("turn_messages", "store: read the turn back"),
    ("postgres_turns", "store: asyncpg statements"),
    ("GroupCommit", "store: the transaction (BEGIN, savepoints, COMMIT, batching)"),
    ("driver_thread", "store: hand-off to the writer thread and back"),
    ("gateway/store", "store: the awaiting coroutines, stamps, ids"),
    ("adapters/web/rest", "REST route, PromptRails shapes"),
    ("adapters/web/widget", "widget socket: frames, feed"),
    ("adapters/web/outbox", "web outbox + bus"),
    ("gateway/bus", "web outbox + bus"),
    ("adapters/web/subscription", "web outbox + bus"),
    ("json", "JSON (json module)"),
    ("aiohttp", "HTTP / WebSocket parsing and routing (aiohttp)"),
    ("gateway/", "turn runner, dispatcher, Session, the handler"),
    ("adapters/", "web adapter, other"),
    ("asyncio", "event loop (uvloop's run loop, asyncio tasks and futures)"),
]
OTHER = "other"


def group_samples(raw: Path) -> tuple[collections.Counter[str], int]:
    """``py-spy record --format raw`` output (``frame;frame;... count`` lines) by group."""
    counts: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        if not line.strip():
            continue
        stack, count = line.rsplit(" ", 1)
        total += int(count)
        for frame in reversed(stack.split(";")):
            group = next((name for pattern, name in GROUPS if pattern in frame), None)
            if group is not None:
                counts[group] += int(count)
                break
        else:
            counts[OTHER] += int(count)
    return counts, total


def profile(target: str, args: argparse.Namespace, out: Path) -> str:
    py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if py_spy is None:
        raise SystemExit("py-spy is not installed: .venv/bin/pip install -e '.[bench]'")
    with tempfile.TemporaryDirectory() as data, web_echo.ServerProcess("chatgate", data, args.database) as server:
        url = f"http://{web_echo.HOST}:{server.port}"
        spy = subprocess.Popen(
            [py_spy, "record", "--pid", str(server.pid), "--duration", str(args.seconds), "--rate", "400",
             "--gil", "--nonblocking", "--format", "raw", "-o", str(out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        load = web_echo.rest_load if target == "rest" else web_echo.socket_load
        result = asyncio.run(load(url, chatgate=True, requests=args.requests, concurrency=args.concurrency,
                                  warmup=50, pid=server.pid))
        spy.wait()
    return result.row()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("targets", nargs="+", choices=["rest", "socket"], help="the turns to load the server with")
    parser.add_argument("--requests", type=int, default=3000, help="messages per target (default 3000)")
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent clients (default 8)")
    parser.add_argument("--seconds", type=int, default=8, help="how long py-spy records (default 8)")
    parser.add_argument("--database", metavar="URL", help="chatgate's database (default: a SQLite file)")
    parser.add_argument("--keep", metavar="DIR", help="keep the raw py-spy samples in DIR")
    args = parser.parse_args()
    folder = Path(args.keep or tempfile.mkdtemp(prefix="chatgate-profile-"))
    folder.mkdir(parents=True, exist_ok=True)
    columns = []
    for target in args.targets:
        print(profile(target, args, folder / f"{target}.txt"))
        columns.append(group_samples(folder / f"{target}.txt"))
    print(f"{'':62s}" + "".join(f"{target:>8s}" for target in args.targets))
    for name in dict.fromkeys([name for _, name in GROUPS] + [OTHER]):
        shares = [counts[name] / total * 100 if total else 0.0 for counts, total in columns]
        if max(shares) >= 0.05:
            print(f"{name:62s}" + "".join(f"{share:7.1f}%" for share in shares))
    if not args.keep:
        shutil.rmtree(folder)


if __name__ == "__main__":
    main()
