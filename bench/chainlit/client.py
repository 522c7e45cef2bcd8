"""Drives a Chainlit server over socket.io as its browser client does (run by ``bench/web_echo.py``
with the Chainlit virtualenv's Python, which has python-socketio).

What the React client does (chainlit/frontend, ``useChatSession``): POST /set-session-cookie
with the session id, connect to ``/ws/socket.io`` with ``auth`` = {clientType, sessionId,
threadId, userEnv, chatProfile}, emit ``connection_successful`` and ``fetch_favorites``; a
message is ``client_message`` {message: step dict of type user_message, fileReferences}; the
reply arrives as ``new_message`` (an ``assistant_message`` step).

    python client.py load URL REQUESTS CONCURRENCY WARMUP   # prints "warm", waits for a line, prints JSON
    python client.py idle URL SOCKETS                       # connects, prints "ready", waits for a line
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import aiohttp
import socketio

TIMEOUT = 30.0


class Client:
    def __init__(self, url: str) -> None:
        self.url = url
        self.session_id = str(uuid.uuid4())
        self.sio = socketio.AsyncClient(reconnection=False)
        self.replies: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.sio.on("new_message", self._new_message)

    async def _new_message(self, step: dict[str, Any]) -> None:
        if step.get("type") == "assistant_message":
            self.replies.put_nowait(step)

    async def connect(self, http: aiohttp.ClientSession) -> None:
        async with http.post(f"{self.url}/set-session-cookie", json={"session_id": self.session_id}) as response:
            response.raise_for_status()
            cookie = response.cookies.get("X-Chainlit-Session-id")
        headers = {"Cookie": f"X-Chainlit-Session-id={cookie.value}"} if cookie else {}
        auth = {"clientType": "webapp", "sessionId": self.session_id, "threadId": "", "userEnv": "{}",
                "chatProfile": ""}
        await self.sio.connect(self.url, socketio_path="/ws/socket.io", transports=["websocket"], auth=auth,
                               headers=headers, wait_timeout=TIMEOUT)
        await self.sio.emit("connection_successful")
        await self.sio.emit("fetch_favorites")

    async def send(self, text: str) -> None:
        message = {
            "threadId": "", "id": str(uuid.uuid4()), "name": "User", "type": "user_message", "output": text,
            "createdAt": datetime.now(UTC).isoformat(), "metadata": {"location": self.url + "/"},
        }
        await self.sio.emit("client_message", {"message": message, "fileReferences": []})
        reply = await asyncio.wait_for(self.replies.get(), TIMEOUT)
        if reply.get("output") != "echo: " + text:
            raise RuntimeError(f"unexpected reply {reply}")


async def load(url: str, requests: int, concurrency: int, warmup: int) -> None:
    async with aiohttp.ClientSession() as http:
        clients = [Client(url) for _ in range(concurrency)]
        await asyncio.gather(*(c.connect(http) for c in clients))

        async def run(total: int, tag: str) -> tuple[float, list[float]]:
            shares = [total // concurrency + (1 if i < total % concurrency else 0) for i in range(concurrency)]

            async def worker(index: int, count: int) -> list[float]:
                times = []
                for i in range(count):
                    started = time.perf_counter()
                    await clients[index].send(f"{tag} {index}-{i}")
                    times.append(time.perf_counter() - started)
                return times

            started = time.perf_counter()
            chunks = await asyncio.gather(*(worker(i, n) for i, n in enumerate(shares) if n))
            return time.perf_counter() - started, [x for chunk in chunks for x in chunk]

        if warmup:
            await run(warmup, "warm")
        print("warm", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        seconds, latencies = await run(requests, "hello")
        print(json.dumps({"seconds": seconds, "latencies": latencies}), flush=True)
        await asyncio.gather(*(c.sio.disconnect() for c in clients))


async def idle(url: str, sockets: int) -> None:
    async with aiohttp.ClientSession() as http:
        clients = [Client(url) for _ in range(sockets)]
        for start in range(0, sockets, 50):
            await asyncio.gather(*(c.connect(http) for c in clients[start:start + 50]))
        await asyncio.sleep(1.0)  # connection_successful handled everywhere
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        await asyncio.gather(*(c.sio.disconnect() for c in clients))


if __name__ == "__main__":
    mode, url, *rest = sys.argv[1:]
    if mode == "load":
        asyncio.run(load(url, *(int(x) for x in rest)))
    else:
        asyncio.run(idle(url, int(rest[0])))
