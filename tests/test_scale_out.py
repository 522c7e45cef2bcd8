"""``chatgate web`` + ``chatgate worker`` as real processes on this machine's PostgreSQL and Redis.

Each test starts ``python -m gateway.cli web/worker`` on loopback ports with an app file written
to ``tmp_path`` and drives them over HTTP and WebSockets, as a deployment would be driven (issue
11, "What it must show"): 1,000 messages through 2 web + 2 workers with a worker killed with
SIGKILL mid-run, a web process killed mid-run, a rolling SIGTERM restart of both workers, a worker
paused with SIGSTOP past its lease, a prompt answered and a widget stream resumed through the
other web process, Telegram and Slack streams through two workers against the fake platforms.
Leases are short here (``dispatch.lease_ttl``) so a takeover takes seconds.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from tests.fakes.slack_api import FakeSlack
from tests.fakes.telegram_api import FakeTelegramAPI, RateWindow, TelegramRates

ROOT = Path(__file__).resolve().parent.parent
CHATGATE = [sys.executable, "-m", "gateway.cli"]
KEY = "scale-key"
START_TIMEOUT = 30.0

APP = '''
import asyncio
import os

import gateway

app = gateway.App("echo")


@app.message()
async def handle(session: gateway.Session, msg: gateway.Message) -> None:
    text = msg.text
    if text.startswith("slow:"):
        await asyncio.sleep(float(text.split(":")[1]))
        session.data["slow_by"] = os.getpid()
        await session.reply(f"slow done by {os.getpid()}")
        return
    if text == "deploy":
        approved = await session.prompt_approval("Deploy to production?", timeout=20)
        await session.reply(f"{'deploying' if approved else 'cancelled'} (worker {os.getpid()})")
        return
    if text.startswith("stream:"):  # stream:<words>:<seconds between words>
        _, words, pause = text.split(":")
        async with session.stream_reply() as reply:
            for i in range(int(words)):
                reply.write(f" w{i}" if i else "w0")
                await asyncio.sleep(float(pause))
        session.data["streamed_by"] = os.getpid()
        return
    await asyncio.sleep(0.02)  # a model call: a kill finds handlers mid-turn
    session.data["count"] = session.data.get("count", 0) + 1
    await session.reply(f"echo: {text}")
'''


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Process:
    def __init__(self, role: str, port: int, popen: subprocess.Popen[bytes], log: Path) -> None:
        self.role, self.port, self.popen, self.log = role, port, popen, log

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def text(self) -> str:
        return self.log.read_text(errors="replace")


class Cluster:
    """Web and worker processes sharing one PostgreSQL database and one Redis."""

    def __init__(self, tmp_path: Path, database_url: str, redis_url: str, **settings: str) -> None:
        self.tmp_path = tmp_path
        self.database_url = database_url
        self.app_file = tmp_path / "echo_app.py"
        self.app_file.write_text(APP)
        self.env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "CHATGATE_REDIS__KEY_PREFIX": f"scale-{secrets.token_hex(4)}",
            "CHATGATE_SECRET_KEY": secrets.token_urlsafe(32),
            "CHATGATE_DATA_DIR": str(tmp_path / "data"),
            "CHATGATE_FILES__DIR": str(tmp_path / "data" / "files"),
            "CHATGATE_WEB__API_KEYS": f'["{KEY}"]',
            "CHATGATE_SCHEDULER__ENABLED": "false",
            **settings,
        }
        self.processes: list[Process] = []

    def start(self, role: str) -> Process:
        port = _free_port()
        log = self.tmp_path / f"{role}-{len(self.processes)}.log"
        popen = subprocess.Popen(
            [*CHATGATE, role, str(self.app_file), "--port", str(port)],
            stdout=log.open("w"), stderr=subprocess.STDOUT, env=self.env, cwd=self.tmp_path,
        )
        process = Process(role, port, popen, log)
        self.processes.append(process)
        return process

    async def ready(self, *processes: Process) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        for process in processes:
            marker = "worker ready in" if process.role == "worker" else "ready in"
            while marker not in process.text():
                assert process.popen.poll() is None, f"{process.role} exited:\n{process.text()}"
                assert time.monotonic() < deadline, f"{process.role} did not start:\n{process.text()}"
                await asyncio.sleep(0.05)

    def stop_all(self) -> None:
        for process in self.processes:
            if process.popen.poll() is None:
                process.popen.send_signal(signal.SIGCONT)
                process.popen.kill()
        for process in self.processes:
            process.popen.wait(10)

    async def query(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        connection = await asyncpg.connect(self.database_url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            return await connection.fetch(sql, *args)
        finally:
            await connection.close()


@pytest.fixture
def cluster_factory(tmp_path, postgres_url, redis_url) -> Iterator[Callable[..., Cluster]]:
    made: list[Cluster] = []

    def make(**settings: str) -> Cluster:
        cluster = Cluster(tmp_path, postgres_url, redis_url, **settings)
        made.append(cluster)
        return cluster

    try:
        yield make
    finally:
        for cluster in made:
            cluster.stop_all()


async def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


class Api:
    """The PromptRails REST surface of one web process."""

    def __init__(self, http: aiohttp.ClientSession, web: Process) -> None:
        self.http, self.base = http, web.base + "/api/v1"

    async def create_session(self) -> str:
        async with self.http.post(f"{self.base}/chat/sessions", json={"agent_id": "echo"},
                                  headers={"X-API-Key": KEY}) as response:
            assert response.status == 201, await response.text()
            return (await response.json())["data"]["id"]

    async def send(self, session_id: str, content: str) -> dict[str, Any]:
        async with self.http.post(f"{self.base}/chat/sessions/{session_id}/messages", json={"content": content},
                                  headers={"X-API-Key": KEY}) as response:
            assert response.status in (200, 201), await response.text()
            return (await response.json())["data"]

    async def transcript(self, session_id: str) -> list[tuple[str, str]]:
        """The session's messages, oldest first, every page of them."""
        rows: list[tuple[str, str]] = []
        page, pages = 1, 1
        while page <= pages:
            params = {"limit": "100", "page": str(page)}
            async with self.http.get(f"{self.base}/chat/sessions/{session_id}/messages", params=params,
                                     headers={"X-API-Key": KEY}) as response:
                assert response.status == 200, await response.text()
                body = await response.json()
            rows += [(m["role"], m["content"]) for m in body["data"]]
            page, pages = page + 1, body["meta"]["pages"]
        return rows


# -- the commands refuse what they cannot run on --------------------------------------------------


@pytest.mark.parametrize("role", ["web", "worker"])
def test_web_and_worker_refuse_sqlite_and_a_missing_redis(role, tmp_path):
    app = tmp_path / "app.py"
    app.write_text(APP)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CHATGATE_DATA_DIR": str(tmp_path / "data")}
    for name in ("REDIS_URL", "CHATGATE_SECRET_KEY", "CHATGATE_REDIS__URL"):
        env.pop(name, None)
    on_sqlite = subprocess.run([*CHATGATE, role, str(app)], capture_output=True, text=True, timeout=30,
                               env={**env, "DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}"}, cwd=tmp_path)
    assert on_sqlite.returncode == 2
    assert on_sqlite.stderr.count("\n") == 1 and "needs PostgreSQL: set database.url" in on_sqlite.stderr
    no_redis = subprocess.run([*CHATGATE, role, str(app)], capture_output=True, text=True, timeout=30,
                              env={**env, "DATABASE_URL": "postgresql://postgres@127.0.0.1/nothing"}, cwd=tmp_path)
    assert no_redis.returncode == 2
    assert no_redis.stderr.count("\n") == 1 and "needs Redis: set redis.url" in no_redis.stderr
    no_key = subprocess.run([*CHATGATE, role, str(app)], capture_output=True, text=True, timeout=30, cwd=tmp_path,
                            env={**env, "DATABASE_URL": "postgresql://postgres@127.0.0.1/nothing",
                                 "REDIS_URL": "redis://127.0.0.1:6379/0"})
    assert no_key.returncode == 2
    assert no_key.stderr.count("\n") == 1 and "needs secret_key: set secret_key" in no_key.stderr
    assert not (tmp_path / "x.db").exists()  # stopped before touching anything


@pytest.mark.parametrize("choice", ["auto", "asyncio"])
async def test_web_and_worker_run_on_the_event_loop_the_settings_choose(cluster_factory, choice):
    """``server.event_loop`` applies to ``chatgate web`` and ``worker`` as to ``run``: uvloop by
    default when it is installed (they ran on asyncio's own loop whatever the setting, once)."""
    import importlib.util

    expected = "uvloop" if choice == "auto" and importlib.util.find_spec("uvloop") else "asyncio"
    cluster = cluster_factory(CHATGATE_SERVER__EVENT_LOOP=choice)
    web, worker = cluster.start("web"), cluster.start("worker")
    await cluster.ready(web, worker)
    for process in (web, worker):
        assert f"event loop: {expected}" in process.text(), process.text()


async def test_a_web_process_holds_more_widget_sockets_than_a_redis_pool_has_connections(cluster_factory):
    """Every bus subscription of a web process shares one Redis connection. With a connection
    each, the socket past redis-py's pool of 100 failed its hello, and each idle socket held a
    Redis client (issue 12)."""
    sockets = 150
    cluster = cluster_factory(**{
        f"CHATGATE_WEB__LIMITS__{limit}": "0"
        for limit in ("SOCKETS_PER_IP", "NEW_SESSIONS_PER_IP", "MESSAGES_PER_IP")
    })
    web, worker = cluster.start("web"), cluster.start("worker")
    await cluster.ready(web, worker)
    unlimited = aiohttp.TCPConnector(limit=0)  # aiohttp's client also stops at 100 connections
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60), connector=unlimited) as http:
        widgets = [await _widget(http, web) for _ in range(sockets)]
        readies = await asyncio.gather(*(widget.hello() for widget in widgets))
        assert [ready["type"] for ready in readies] == ["ready"] * sockets, readies
        for n, widget in enumerate(widgets):
            await widget.send("message", text=f"hi {n}")
        await asyncio.gather(*(
            widget.until(lambda f, n=n: f["type"] == "message" and f["message"]["text"] == f"echo: hi {n}")
            for n, widget in enumerate(widgets)
        ))
        for widget in widgets:
            await widget.ws.close()


async def _has_reply(api: Api, session_id: str, text: str) -> bool:
    return ("assistant", f"echo: {text}") in await api.transcript(session_id)


# -- a worker stopped with SIGTERM -----------------------------------------------------------------


async def test_sigterm_lets_the_running_handler_finish_and_hands_the_rest_over_at_once(cluster_factory):
    # A lease of 20 s: the hand-over must not wait for it to expire.
    cluster = cluster_factory(CHATGATE_DISPATCH__LEASE_TTL="20", CHATGATE_WEB__SEND_TIMEOUT="30",
                              CHATGATE_WORKER__SHUTDOWN_GRACE="10")
    web = cluster.start("web")
    workers = [cluster.start("worker"), cluster.start("worker")]
    await cluster.ready(web, *workers)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
        api = Api(http, web)
        session_id = await api.create_session()
        slow = asyncio.create_task(api.send(session_id, "slow:1.5"))
        lease = await wait_for(lambda: cluster.query(
            "SELECT holder FROM session_leases WHERE session_id = $1 AND holder <> ''", session_id), 10, "a claim")
        stopping = next(w for w in workers if f":{w.popen.pid}:" in lease[0]["holder"])
        other = next(w for w in workers if w is not stopping)
        queued = asyncio.create_task(api.send(session_id, "after"))  # waits in the same session's lane
        await wait_for(lambda: cluster.query("SELECT 1 FROM inbox WHERE session_id = $1 AND payload::text LIKE "
                                             "'%after%'", session_id), 10, "the second event to be recorded")
        started = time.monotonic()
        stopping.popen.send_signal(signal.SIGTERM)
        assert (await asyncio.wait_for(slow, 15))["content"] == f"slow done by {stopping.popen.pid}"
        assert (await asyncio.wait_for(queued, 15))["content"] == "echo: after"
        assert time.monotonic() - started < 10  # not the 20 s lease: handed over on release
        assert await asyncio.to_thread(stopping.popen.wait, 15) == 0
        assert await api.transcript(session_id) == [
            ("user", "slow:1.5"), ("user", "after"),  # the second was stored as it arrived
            ("assistant", f"slow done by {stopping.popen.pid}"), ("assistant", "echo: after"),
        ]
    assert "stopped" in stopping.text() and "Traceback" not in stopping.text() + other.text()


async def test_a_handler_cut_off_by_the_sigterm_grace_runs_again_as_after_a_crash(cluster_factory):
    cluster = cluster_factory(CHATGATE_DISPATCH__LEASE_TTL="20", CHATGATE_WEB__SEND_TIMEOUT="30",
                              CHATGATE_WORKER__SHUTDOWN_GRACE="0.3")
    web = cluster.start("web")
    workers = [cluster.start("worker"), cluster.start("worker")]
    await cluster.ready(web, *workers)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
        api = Api(http, web)
        session_id = await api.create_session()
        answer = asyncio.create_task(api.send(session_id, "slow:2"))
        lease = await wait_for(lambda: cluster.query(
            "SELECT holder FROM session_leases WHERE session_id = $1 AND holder <> ''", session_id), 10, "a claim")
        stopping = next(w for w in workers if f":{w.popen.pid}:" in lease[0]["holder"])
        other = next(w for w in workers if w is not stopping)
        stopping.popen.send_signal(signal.SIGTERM)
        assert (await asyncio.wait_for(answer, 15))["content"] == f"slow done by {other.popen.pid}"
        assert await asyncio.to_thread(stopping.popen.wait, 15) == 0
        transcript = await api.transcript(session_id)
        assert transcript == [("user", "slow:2"), ("assistant", f"slow done by {other.popen.pid}")]
    rows = await cluster.query("SELECT status, attempts FROM inbox WHERE session_id = $1", session_id)
    assert [(r["status"], r["attempts"]) for r in rows] == [("done", 1)]  # counted: it was interrupted
    assert "which left it unfinished" in other.text()


# -- a session deleted through a web process while its handler runs in a worker ------------------


async def test_deleting_a_session_stops_its_handler_in_the_worker(cluster_factory):
    cluster = cluster_factory(CHATGATE_DISPATCH__LEASE_TTL="1.5", CHATGATE_WEB__SEND_TIMEOUT="30")
    web, worker = cluster.start("web"), cluster.start("worker")
    await cluster.ready(web, worker)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
        api = Api(http, web)
        session_id = await api.create_session()
        async def ask() -> tuple[int, dict[str, Any]]:
            async with http.post(f"{api.base}/chat/sessions/{session_id}/messages", json={"content": "slow:8"},
                                 headers={"X-API-Key": KEY}) as response:
                return response.status, await response.json()

        answer = asyncio.create_task(ask())
        await wait_for(lambda: cluster.query("SELECT 1 FROM session_leases WHERE session_id = $1 AND holder <> ''",
                                             session_id), 10, "the worker to claim the session")
        started = time.monotonic()
        async with http.delete(f"{api.base}/chat/sessions/{session_id}", headers={"X-API-Key": KEY}) as response:
            assert response.status in (200, 204), await response.text()
        # The renewal finds the session gone: the handler is cancelled and its turn ends.
        await wait_for(lambda: "lost the lease of session" in worker.text(), 10, "the worker to give it up")
        assert time.monotonic() - started < 5  # not the handler's 8 s
        status, body = await asyncio.wait_for(answer, 10)  # the waiting request learns it at once
        async with http.get(f"http://127.0.0.1:{worker.port}/readyz") as response:  # the worker's own port
            assert response.status == 200
            assert set((await response.json())["checks"]) == {"database", "redis", "dispatcher", "queue"}
        assert status == 404 and "deleted before the bot answered" in body["error"]["message"]
    assert await cluster.query("SELECT id FROM messages WHERE session_id = $1", session_id) == []
    assert "slow done by" not in worker.text() and "Traceback" not in worker.text()


# -- a paused worker ----------------------------------------------------------------------------


async def test_a_worker_paused_past_its_lease_writes_nothing_after(cluster_factory):
    cluster = cluster_factory(CHATGATE_DISPATCH__LEASE_TTL="1.5", CHATGATE_WEB__SEND_TIMEOUT="30")
    web = cluster.start("web")
    workers = [cluster.start("worker"), cluster.start("worker")]
    await cluster.ready(web, *workers)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
        api = Api(http, web)
        session_id = await api.create_session()
        answer = asyncio.create_task(api.send(session_id, "slow:3"))

        async def holder() -> asyncpg.Record | None:
            rows = await cluster.query("SELECT holder, token FROM session_leases WHERE session_id = $1", session_id)
            return rows[0] if rows and rows[0]["holder"] else None

        first = await wait_for(holder, 10, "a worker to claim the session")
        paused = next(w for w in workers if f":{w.popen.pid}:" in first["holder"])
        other = next(w for w in workers if w is not paused)
        # Paused inside the handler's sleep, not while it claims the session: a worker stopped
        # inside a transaction that checked its fence keeps the lease row locked, and the
        # takeover waits for it (seen once in a full run).
        await asyncio.sleep(0.5)
        paused.popen.send_signal(signal.SIGSTOP)
        try:
            # The other worker's sweep finds the lease expired and takes the session over.
            async def taken_over() -> bool:
                lease = await holder()
                return lease is not None and lease["token"] == first["token"] + 1
            await wait_for(taken_over, 15, "the other worker to take the session over")
            lease = await holder()
            assert lease is not None and f":{other.popen.pid}:" in lease["holder"]
        finally:
            paused.popen.send_signal(signal.SIGCONT)
        reply = await asyncio.wait_for(answer, 30)
        # The paused worker's handler woke up after the takeover: what it tried to send or write
        # was refused, and it gave the session up.
        await wait_for(lambda: "lost the lease of session" in paused.text(), 10, "the paused worker to notice")
        transcript = await api.transcript(session_id)
    assert reply["content"] == f"slow done by {other.popen.pid}"
    assert transcript == [("user", "slow:3"), ("assistant", f"slow done by {other.popen.pid}")]
    data = await cluster.query("SELECT data FROM sessions WHERE id = $1", session_id)
    assert json.loads(data[0][0])["slow_by"] == other.popen.pid
    statuses = await cluster.query("SELECT status, attempts FROM inbox WHERE session_id = $1", session_id)
    assert [(r["status"], r["attempts"]) for r in statuses] == [("done", 1)]


# -- a prompt answered through the other web process --------------------------------------------


async def test_a_prompt_waiting_in_a_worker_is_answered_through_another_web_process(cluster_factory):
    cluster = cluster_factory(CHATGATE_WEB__STREAM_INTERVAL="0", CHATGATE_WEB__SEND_TIMEOUT="20")
    webs = [cluster.start("web"), cluster.start("web")]
    worker = cluster.start("worker")
    await cluster.ready(*webs, worker)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        first = await _widget(http, webs[0])
        ready = await first.hello()
        await first.send("message", text="deploy")
        block = (await first.until(lambda f: f["type"] == "block"))["block"]
        assert block["type"] == "approval_prompt" and block["payload"]["blocking"] is True
        # The same visitor, on the other web process: the button press reaches the worker.
        second = await _widget(http, webs[1], visitor=ready["visitor_token"])
        assert (await second.hello(session_id=ready["session_id"]))["type"] == "ready"
        await second.send("button", block_id=block["id"], value="approve")
        reply = await first.until(lambda f: f["type"] == "message" and f["message"]["role"] == "assistant")
        assert reply["message"]["text"] == f"deploying (worker {worker.popen.pid})"
        await first.until(lambda f: f["type"] == "turn_end")
        await first.ws.close()
        await second.ws.close()

        # The same through PromptRails' approval API: asked on one web process, approved on the other.
        asking, approving = Api(http, webs[0]), Api(http, webs[1])
        session_id = await asking.create_session()
        answer = asyncio.create_task(asking.send(session_id, "deploy"))

        async def waiting() -> list[dict[str, Any]]:
            async with http.get(f"{approving.base}/executions/approval-inbox", headers={"X-API-Key": KEY}) as r:
                assert r.status == 200, await r.text()
                return (await r.json())["data"]

        [execution] = await wait_for(waiting, 10, "the execution to wait for approval")
        assert execution["status"] == "waiting_approval" and execution["session_id"] == session_id
        async with http.post(f"{approving.base}/executions/{execution['id']}/approve", json={},
                             headers={"X-API-Key": KEY}) as response:
            assert response.status == 200, await response.text()
        reply = await asyncio.wait_for(answer, 15)
        assert reply["content"] == f"deploying (worker {worker.popen.pid})"
        assert await waiting() == []


class _Widget:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws

    async def send(self, frame_type: str, **fields: Any) -> None:
        await self.ws.send_json({"type": frame_type, "id": secrets.token_hex(6), **fields})

    async def until(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 20) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.ws.receive_json()
                if predicate(frame):
                    return frame

    async def hello(self, session_id: str | None = None) -> dict[str, Any]:
        await self.send("hello", session_id=session_id)
        return await self.until(lambda f: f["type"] in ("ready", "error"))


async def _widget(http: aiohttp.ClientSession, web: Process, **params: str) -> _Widget:
    return _Widget(await http.ws_connect(f"{web.base}/ws", params=params))



# -- the main run: 2 web + 2 workers under load, one process failing -----------------------


class Load:
    """Clients conversing in many sessions at once, each message through the next web process in
    turn. A request cut off by a dying web process is sent again, same content, to a live one
    (the SDK's re-POST): within ``web.dedup_window`` it joins the first turn wherever that was
    recorded. ``at(n)`` is set once ``n`` exchanges are complete. Each session sends
    ``per_session`` messages, and with ``until`` goes on until it is set (at most ``CAP``)."""

    CAP = 150
    """The most messages a session sends while waiting for ``until``: a bound on a run whose
    event never comes, far above what a restart takes (a replacement worker starting on two
    busy cores took long enough for 45)."""

    def __init__(
        self, http: aiohttp.ClientSession, webs: list[Process], sessions: int, per_session: int,
        until: asyncio.Event | None = None,
    ) -> None:
        self.apis = [Api(http, web) for web in webs]
        self.alive = list(self.apis)
        self.sessions, self.per_session, self.until = sessions, per_session, until
        self.session_ids: list[str] = []
        self.sent = [0] * sessions
        """Per session, the messages answered so far."""
        self.done = 0
        self.retried = 0
        self.resent: list[str] = []
        """The contents sent again after a web process died under them."""
        self.late: list[str] = []
        """The contents whose answer was not their reply (``web.send_timeout`` passed first)."""
        self._marks: dict[int, asyncio.Event] = {}

    def at(self, exchanges: int) -> asyncio.Event:
        mark = self._marks.setdefault(exchanges, asyncio.Event())
        if self.done >= exchanges:
            mark.set()
        return mark

    async def run(self) -> None:
        self.session_ids = [await self.apis[i % len(self.apis)].create_session() for i in range(self.sessions)]
        await asyncio.gather(*(self._converse(i, s) for i, s in enumerate(self.session_ids)))

    def _more(self, index: int) -> bool:
        n = self.sent[index]
        return n < self.per_session or (self.until is not None and not self.until.is_set() and n < self.CAP)

    async def _converse(self, index: int, session_id: str) -> None:
        while self._more(index):
            n = self.sent[index]
            text = f"s{index} m{n}"
            answer = await self._send(index + n, session_id, text)
            if answer["content"] != f"echo: {text}":  # send_timeout passed (the turn moved workers)
                self.late.append(text)
                await wait_for(partial(_has_reply, self.alive[0], session_id, text), 30, f"the reply to {text}")
            self.sent[index] += 1
            self.done += 1
            if self.done in self._marks:
                self._marks[self.done].set()

    async def _send(self, turn: int, session_id: str, text: str) -> dict[str, Any]:
        while True:
            api = self.alive[turn % len(self.alive)]
            try:
                return await api.send(session_id, text)
            except aiohttp.ClientConnectionError:
                # The web process died under the request (or refuses connections): the same
                # content again, to the next live one.
                if api in self.alive and len(self.alive) > 1:
                    self.alive.remove(api)
                self.retried += 1
                self.resent.append(text)

    async def check_transcripts(self, cluster: Cluster) -> None:
        """Every session: each user message once and each reply once, in order. A mismatch also
        shows what the store and the processes' logs say of that session (``_session_story``)."""
        api = self.alive[0]
        transcripts = await asyncio.gather(*(api.transcript(s) for s in self.session_ids))
        for index, transcript in enumerate(transcripts):
            expected = []
            for n in range(self.sent[index]):
                expected += [("user", f"s{index} m{n}"), ("assistant", f"echo: s{index} m{n}")]
            if transcript != expected:
                story = await _session_story(cluster, self.session_ids[index])
                raise AssertionError(f"session {index}: {transcript}\n{story}")

    def messages(self) -> dict[str, int]:
        return dict(zip(self.session_ids, self.sent, strict=True))


async def _session_story(cluster: Cluster, session_id: str) -> str:
    """A session's stored messages and events, and every log line that names it: what a failed
    transcript check needs to say which process wrote what."""
    messages = await cluster.query(
        "SELECT id, role, text, status, inbound_id FROM messages WHERE session_id = $1 ORDER BY id", session_id)
    events = await cluster.query(
        "SELECT id, status, attempts, error, payload::json->'message'->>'text' AS text FROM inbox"
        " WHERE session_id = $1 ORDER BY id", session_id)
    lines = [f"{process.log.name}: {line}" for process in cluster.processes
             for line in process.text().splitlines() if session_id in line]
    return "\n".join([
        "messages:", *(str(tuple(row)) for row in messages),
        "events:", *(str(tuple(row)) for row in events),
        "log lines:", *lines,
    ])


async def _handler_runs(cluster: Cluster) -> dict[str, int]:
    """How often each session's handler ran to its ``session.data`` save."""
    rows = await cluster.query("SELECT id, data FROM sessions")
    return {row["id"]: json.loads(row["data"]).get("count", 0) for row in rows}


async def _unfinished(cluster: Cluster) -> int:
    return (await cluster.query("SELECT count(*) FROM inbox WHERE status IN ('pending', 'running')"))[0][0]


async def _busiest_worker(cluster: Cluster, workers: list[Process]) -> Process:
    """The live worker holding the most leases right now (one at random when none holds any)."""
    rows = await cluster.query(
        "SELECT holder FROM session_leases WHERE holder <> '' AND expires_at > now() "
        "GROUP BY holder ORDER BY count(*) DESC"
    )
    live = [w for w in workers if w.popen.poll() is None]
    for row in rows:
        for worker in live:
            if f":{worker.popen.pid}:" in row["holder"]:
                return worker
    return live[0]


MAIN_SESSIONS = 50
MAIN_PER_SESSION = 20  # 1,000 messages, the scale


async def test_two_web_two_workers_a_thousand_messages_a_worker_killed_mid_run(cluster_factory):
    """Issue 11's main run: 1,000 REST messages over 50 sessions through both web processes (each
    session's messages alternate between them), two workers, the busiest worker killed with
    SIGKILL a third of the way in and a new one started: every transcript exact, nothing left
    unfinished, each handler run at most once more than it had messages (the kill)."""
    cluster = cluster_factory(CHATGATE_DISPATCH__LEASE_TTL="2", CHATGATE_WEB__SEND_TIMEOUT="6")
    webs = [cluster.start("web"), cluster.start("web")]
    workers = [cluster.start("worker"), cluster.start("worker")]
    await cluster.ready(*webs, *workers)
    total = MAIN_SESSIONS * MAIN_PER_SESSION
    doomed: list[Process] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
        load = Load(http, webs, MAIN_SESSIONS, MAIN_PER_SESSION)

        async def kill_one_worker() -> None:
            await load.at(total // 3).wait()
            victim = await _busiest_worker(cluster, workers)
            victim.popen.send_signal(signal.SIGKILL)
            await asyncio.to_thread(victim.popen.wait, 5)
            doomed.append(victim)
            await cluster.ready(cluster.start("worker"))

        await asyncio.wait_for(asyncio.gather(load.run(), kill_one_worker()), 100)
        await load.check_transcripts(cluster)
    assert load.retried == 0  # both web processes answered every request
    assert await _unfinished(cluster) == 0
    runs = await _handler_runs(cluster)
    assert len(runs) == MAIN_SESSIONS, runs
    assert all(r in (MAIN_PER_SESSION, MAIN_PER_SESSION + 1) for r in runs.values()), sorted(runs.values())
    others = "".join(p.text() for p in cluster.processes if p not in doomed)
    assert "which left it unfinished" in others  # the killed worker's turns ran again elsewhere
    assert "Traceback" not in others, others


async def test_a_web_process_killed_mid_run_clients_retry_on_the_other(cluster_factory):
    """kill -9 of one of two web processes while 20 clients converse through both: requests it
    held are sent again to the other (same content: the re-POST joins the first turn if the dead
    process had recorded it), later ones go to the survivor. Every transcript exact; every
    handler ran exactly once per message (a join runs nothing again); nothing unfinished."""
    cluster = cluster_factory(CHATGATE_DISPATCH__LEASE_TTL="2", CHATGATE_WEB__SEND_TIMEOUT="6",
                              CHATGATE_WEB__DEDUP_WINDOW="60")
    webs = [cluster.start("web"), cluster.start("web")]
    workers = [cluster.start("worker"), cluster.start("worker")]
    await cluster.ready(*webs, *workers)
    sessions, per_session = 20, 12
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
        load = Load(http, webs, sessions, per_session)

        killed_at: list[Any] = []

        async def kill_a_web_process() -> None:
            await load.at(sessions * per_session // 3).wait()
            webs[0].popen.send_signal(signal.SIGKILL)
            await asyncio.to_thread(webs[0].popen.wait, 5)
            killed_at.append((await cluster.query("SELECT now() AT TIME ZONE 'UTC'"))[0][0])  # as stored

        await asyncio.wait_for(asyncio.gather(load.run(), kill_a_web_process()), 60)
        assert load.alive == [load.apis[1]] and load.retried > 0
        await load.check_transcripts(cluster)
    # Some requests the dead process held had been recorded by it: their re-POSTs to the other
    # process joined those turns (the transcripts above hold each of them once).
    recorded_by_the_dead = await cluster.query(
        "SELECT count(*) FROM messages WHERE role = 'user' AND text = ANY($1::text[]) AND created_at < $2",
        load.resent, killed_at[0])
    assert recorded_by_the_dead[0][0] > 0
    assert await _unfinished(cluster) == 0
    assert await _handler_runs(cluster) == load.messages()
    survivors = "".join(p.text() for p in cluster.processes if p is not webs[0])
    assert "Traceback" not in survivors, survivors


async def test_a_re_post_to_another_web_process_joins_a_turn_still_running_past_the_window(cluster_factory):
    """``web.dedup_window`` counts from the end of the first turn, as in one process: a client
    whose web process died while a slow turn ran re-POSTs to the other one after more than the
    window since its first POST; the turn is still running, so the re-POST joins it instead of
    running the handler a second time."""
    cluster = cluster_factory(CHATGATE_WEB__DEDUP_WINDOW="1", CHATGATE_WEB__SEND_TIMEOUT="20")
    webs = [cluster.start("web"), cluster.start("web")]
    worker = cluster.start("worker")
    await cluster.ready(*webs, worker)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        first, second = Api(http, webs[0]), Api(http, webs[1])
        session_id = await first.create_session()
        posted = time.monotonic()
        cut_off = asyncio.create_task(first.send(session_id, "slow:4"))
        await wait_for(lambda: cluster.query("SELECT 1 FROM session_leases WHERE session_id = $1 AND holder <> ''",
                                             session_id), 10, "the worker to claim the session")
        await asyncio.sleep(max(0.0, posted + 1.5 - time.monotonic()))  # past the window, the turn runs on
        webs[0].popen.send_signal(signal.SIGKILL)
        with pytest.raises(aiohttp.ClientConnectionError):
            await cut_off
        answer = await second.send(session_id, "slow:4")
        assert answer["content"] == f"slow done by {worker.popen.pid}"
        assert await second.transcript(session_id) == [("user", "slow:4"), ("assistant", answer["content"])]
    assert len(await cluster.query("SELECT id FROM inbox WHERE session_id = $1", session_id)) == 1


async def test_a_rolling_sigterm_restart_of_both_workers_under_load(cluster_factory):
    """Both workers replaced one after the other while 20 clients converse through two web
    processes (and go on until the restart is over): two new workers start, then each old one
    in turn gets SIGTERM and exits cleanly. Nothing lost, nothing repeated: transcripts exact,
    each handler ran once per message, no event needed a second attempt. Nothing waited for a
    sweep (every lease ttl, 20 s): every answer came within ``web.send_timeout`` (10 s)."""
    cluster = cluster_factory(CHATGATE_DISPATCH__LEASE_TTL="20", CHATGATE_WEB__SEND_TIMEOUT="10",
                              CHATGATE_WORKER__SHUTDOWN_GRACE="10")
    webs = [cluster.start("web"), cluster.start("web")]
    workers = [cluster.start("worker"), cluster.start("worker")]
    await cluster.ready(*webs, *workers)
    restarted = asyncio.Event()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
        load = Load(http, webs, sessions=20, per_session=5, until=restarted)

        async def roll() -> None:
            replacements = [cluster.start("worker") for _ in workers]  # up before the old ones go
            await load.at(40).wait()
            await cluster.ready(*replacements)
            for old in workers:
                old.popen.send_signal(signal.SIGTERM)
                assert await asyncio.to_thread(old.popen.wait, 15) == 0
            restarted.set()

        await asyncio.wait_for(asyncio.gather(load.run(), roll()), 60)
        await load.check_transcripts(cluster)
    assert max(load.sent) < Load.CAP  # the clients were still sending when the restart ended
    assert load.late == []  # every hand-over woke a worker at once
    assert await _unfinished(cluster) == 0
    assert await _handler_runs(cluster) == load.messages()
    retried = await cluster.query("SELECT count(*) FROM inbox WHERE attempts > 0")
    assert retried[0][0] == 0
    logs = "".join(p.text() for p in cluster.processes)
    assert "which left it unfinished" not in logs and "Traceback" not in logs, logs
    assert all("stopped" in w.text() for w in workers)


# -- a widget stream resumed on the other web process ----------------------------------------------


class _Reader(_Widget):
    """A widget that keeps each message's text as docs/web-protocol.md says, and checks that every
    delta starts exactly where its text ends (a gap or a repeat fails the test)."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        super().__init__(ws)
        self.texts: dict[str, str] = {}
        self.roles: dict[str, str] = {}
        self.first_status: dict[str, str] = {}
        self.deltas = 0

    async def until(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 20) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.ws.receive_json()
                self._apply(frame)
                if predicate(frame):
                    return frame

    def _apply(self, frame: dict[str, Any]) -> None:
        if frame["type"] == "message":
            message = frame["message"]
            self.texts[message["id"]] = message["text"]
            self.roles[message["id"]] = message["role"]
            self.first_status.setdefault(message["id"], message["status"])
        elif frame["type"] == "delta":
            have = self.texts[frame["message_id"]]
            assert frame["offset"] == len(have.encode("utf-16-le")) // 2, (have, frame)  # no gap, no repeat
            self.texts[frame["message_id"]] = have + frame["delta"]
            self.deltas += 1
        elif frame["type"] == "done":
            assert self.texts[frame["message_id"]] == frame["text"], "deltas and done disagree"


async def test_a_widget_stream_resumed_on_the_other_web_process(cluster_factory):
    """A widget watches a slow streaming reply through web A, which is killed (SIGKILL) mid-stream;
    the widget reconnects to web B asking to resume after its last final message (as the widget's
    client.js does): B replays the reply as far as it has got and streams the rest, every delta
    continuing exactly where the text ends, and the final text is exact."""
    cluster = cluster_factory(CHATGATE_WEB__STREAM_INTERVAL="0")
    webs = [cluster.start("web"), cluster.start("web")]
    worker = cluster.start("worker")
    await cluster.ready(*webs, worker)
    words = 60
    final = " ".join(f"w{i}" for i in range(words))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        first = _Reader(await http.ws_connect(f"{webs[0].base}/ws"))
        ready = await first.hello()
        await first.send("message", text="hi")
        echo = await first.until(lambda f: f["type"] == "message" and f["message"]["text"] == "echo: hi")
        await first.until(lambda f: f["type"] == "turn_end")
        await first.send("message", text=f"stream:{words}:0.04")
        # Mid-stream: part of the reply seen, then web A is killed under the socket.
        await first.until(lambda f: first.deltas >= 5)
        [reply_id] = [m for m, role in first.roles.items() if role == "assistant" and m != echo["message"]["id"]]
        seen = first.texts[reply_id]
        webs[0].popen.send_signal(signal.SIGKILL)
        await asyncio.to_thread(webs[0].popen.wait, 5)
        assert (await first.ws.receive()).type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                                                   aiohttp.WSMsgType.ERROR)
        assert final.startswith(seen) and seen != final

        # The last message known final is the echo (the widget's own message has no id until it
        # is replayed): resume after it, on the other web process.
        second = _Reader(await http.ws_connect(f"{webs[1].base}/ws", params={"visitor": ready["visitor_token"]}))
        await second.send("hello", session_id=ready["session_id"], after=echo["message"]["id"])
        assert (await second.until(lambda f: f["type"] in ("ready", "error")))["type"] == "ready"
        done = await second.until(lambda f: f["type"] == "done")
        await second.until(lambda f: f["type"] == "turn_end")
        await second.ws.close()
    assert done["message_id"] == reply_id and done["text"] == final and second.texts[reply_id] == final
    # After the echo: the user's message and the reply, each once.
    assert [second.roles[m] for m in second.roles] == ["user", "assistant"] and list(second.roles)[1] == reply_id
    assert second.first_status[reply_id] == "streaming" and second.deltas > 0  # joined mid-stream, the rest live
    transcript = await cluster.query("SELECT role, text, status FROM messages ORDER BY id")
    assert [tuple(r) for r in transcript] == [
        ("user", "hi", "complete"), ("assistant", "echo: hi", "complete"),
        ("user", f"stream:{words}:0.04", "complete"), ("assistant", final, "complete"),
    ]


# -- Telegram and Slack streams through two workers ------------------------------------------------

PLATFORM_SCALE = 0.05  # Telegram's windows shrunk on both sides (the fake's limits and the pacing)
BOT_RATE = 1  # the bot-wide window narrowed on both sides: 1 message a (scaled) second, 20/s here
"""Narrowed so that the groups' previews from two workers want about twice what the bot may send:
each worker alone would stay inside it, together only by sharing it through Redis."""


async def test_telegram_and_slack_streams_through_two_workers_stay_inside_the_limits(cluster_factory):
    """Twenty-one chats stream at once through two workers. Telegram: three private chats (drafts,
    then the final message) and six groups (a message, then edits), the updates taken in by the
    web process holding the poller lease. Slack: six DMs and six channel mentions (native streams),
    the events POSTed to both web processes in turn. Together the streams want more than the
    bot's Telegram window and Slack's chat.appendStream tier allow (each worker alone would not):
    the fakes, which enforce the limits, answer 0 × 429, and every chat ends with exactly its
    final text, once."""
    words = 40
    final = " ".join(f"w{i}" for i in range(words))
    prompt = f"stream:{words}:0.05"
    rates = TelegramRates(global_=RateWindow(BOT_RATE, 1.0))
    async with FakeTelegramAPI(rate_scale=PLATFORM_SCALE, rates=rates) as telegram, FakeSlack() as slack:
        slack.add_user("U1", email="ada@example.com")
        cluster = cluster_factory(
            CHATGATE_TELEGRAM__BOT_TOKEN=telegram.token, CHATGATE_TELEGRAM__API_URL=telegram.base_url,
            CHATGATE_TELEGRAM__POLL_TIMEOUT="1", CHATGATE_TELEGRAM__RATE_SCALE=str(PLATFORM_SCALE),
            CHATGATE_TELEGRAM__GLOBAL_RATE=str(BOT_RATE), CHATGATE_TELEGRAM__RETRY_BACKOFF="0.2",
            CHATGATE_TELEGRAM__GROUP_TRIGGER="all",
            CHATGATE_SLACK__BOT_TOKEN=slack.bot_token, CHATGATE_SLACK__SIGNING_SECRET=slack.signing_secret,
            CHATGATE_SLACK__API_URL=slack.api_url, CHATGATE_SLACK__UPDATE_INTERVAL="0.1",
        )
        webs = [cluster.start("web"), cluster.start("web")]
        workers = [cluster.start("worker"), cluster.start("worker")]
        await cluster.ready(*webs, *workers)

        privates, groups = [5101, 5102, 5103], [-5201 - i for i in range(6)]
        for chat in privates + groups:
            telegram.send_text(chat, prompt)
        dms = [(f"D{i}", f"100.00000{i}") for i in range(1, 7)]
        mentions = [(f"C{i}", f"200.00000{i}") for i in range(1, 7)]
        events = [{"type": "message", "channel": c, "channel_type": "im", "user": "U1", "text": prompt, "ts": ts}
                  for c, ts in dms]
        events += [{"type": "app_mention", "channel": c, "user": "U1", "text": f"<@UBOT> {prompt}", "ts": ts}
                   for c, ts in mentions]
        for index, event in enumerate(events):
            url = f"{webs[index % 2].base}/slack/events"
            status, body, _ = await slack.deliver_event(url, event, event_id=f"Ev{index}")
            assert status == 200, body

        def telegram_done() -> bool:
            return all(telegram.visible_texts(chat) == [final] for chat in privates + groups)

        def slack_done() -> bool:
            return all(
                [m.visible_text for m in slack.thread(c, ts) if not m.streaming] == [final] for c, ts in dms + mentions
            )

        await wait_for(lambda: telegram_done() and slack_done(), 30, "every chat's final text")
        await wait_for(lambda: _unfinished_is_zero(cluster), 10, "every event finished")
        assert telegram.rate_limited == []
        assert slack.rate_limited_calls() == []
        for chat in privates + groups:  # the final text exactly, once, and nothing else
            assert telegram.visible_texts(chat) == [final]
        for channel, ts in dms + mentions:
            assert [m.visible_text for m in slack.thread(channel, ts)] == [final]
        assert telegram.calls_to("sendMessageDraft") and telegram.calls_to("editMessageText")  # previews shown
        assert slack.calls_of("chat.appendStream")
    senders = {json.loads(row[0]).get("streamed_by") for row in await cluster.query("SELECT data FROM sessions")}
    assert senders == {w.popen.pid for w in workers}  # both workers streamed replies
    logs = "".join(p.text() for p in cluster.processes)
    assert "Traceback" not in logs, logs


async def _unfinished_is_zero(cluster: Cluster) -> bool:
    return await _unfinished(cluster) == 0
