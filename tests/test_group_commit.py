"""Group commit on SQLite (``gateway.store.group_commit``): concurrent writes share one
transaction, and nobody hears of a write before the COMMIT that holds it.

Both places a batch is written are tested: the event loop (``database.sqlite_writes = "loop"``,
the default) and the writer thread (``"thread"``, and where the loop's batches go when the
database is busy). On a real SQLite file, read back through a connection of the test's own; two
tests kill a real process with SIGKILL while a batch is written and not yet committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import Connection, Engine, event
from sqlalchemy.exc import IntegrityError

from gateway.store.database import Database
from gateway.store.group_commit import CHECKPOINT_EVERY, StoreClosed
from tests.support import until

ROOT = Path(__file__).resolve().parent.parent


def rows(path: Path, table: str = "t") -> list[str]:
    """What another connection (another process would see the same) finds committed."""
    with sqlite3.connect(path) as conn:
        return [row[0] for row in conn.execute(f"SELECT k FROM {table} ORDER BY k")]


def insert(key: str, then: Any = None) -> Any:
    def work(conn: Connection) -> str:
        conn.exec_driver_sql("INSERT INTO t (k) VALUES (?)", (key,))
        if then is not None:
            then(conn)
        return key

    return work


WRITER_THREAD = "chatgate-sqlite-write"

both_places = pytest.mark.parametrize("writes", ["loop", "thread"])


async def open_database(path: Path, writes: str = "loop") -> Database:
    db = Database(f"sqlite+aiosqlite:///{path}", sqlite_writes=writes)  # type: ignore[arg-type]
    await db.open()
    await db.run_write(lambda conn: conn.exec_driver_sql("CREATE TABLE t (k TEXT PRIMARY KEY)"))
    return db


async def hold_the_writer(db: Database) -> tuple[asyncio.Task[Any], threading.Event]:
    """Hold the writer thread inside a first batch until the returned gate opens: every write
    started meanwhile shares the next batch."""
    inside, gate = threading.Event(), threading.Event()

    def blocker(conn: Connection) -> None:
        inside.set()
        gate.wait(10)

    task = asyncio.ensure_future(db.run_write(blocker))
    await asyncio.to_thread(inside.wait, 10)
    return task, gate


@contextlib.asynccontextmanager
async def one_batch(db: Database, writes: str) -> AsyncIterator[None]:
    """The writes started in the block share one batch. On the thread, they queue behind a batch
    that holds the writer until the block ends; on the loop, the writes started in one turn of
    the loop share the batch written at its end (so the block must not await)."""
    if writes == "loop":
        yield
        return
    held, gate = await hold_the_writer(db)
    yield
    await asyncio.sleep(0.02)  # every write of the block is queued
    gate.set()
    await held


def thread_name(names: list[str]) -> Any:
    return lambda _conn: names.append(threading.current_thread().name)


async def test_concurrent_writes_share_one_transaction(tmp_path):
    db = await open_database(tmp_path / "g.db", "thread")
    try:
        held, gate = await hold_the_writer(db)
        connections: list[Connection] = []
        tasks = [asyncio.ensure_future(db.run_write(insert(f"k{i}", connections.append))) for i in range(10)]
        await asyncio.sleep(0.05)
        assert not any(task.done() for task in tasks)  # queued behind the held batch
        gate.set()
        assert await asyncio.gather(*tasks) == [f"k{i}" for i in range(10)]
        await held
        # One batch: every write of it ran on the same connection, in one transaction.
        assert len({id(conn) for conn in connections}) == 1
        assert rows(tmp_path / "g.db") == sorted(f"k{i}" for i in range(10))
    finally:
        await db.close()


async def test_on_the_loop_the_writes_of_one_turn_of_the_loop_share_a_transaction(tmp_path):
    """One batch, written on the loop's thread; inside it, nobody has been answered yet and no
    other connection sees its rows."""
    path = tmp_path / "g.db"
    db = await open_database(path)
    try:
        connections: list[Connection] = []
        names: list[str] = []
        seen_by_last: dict[str, Any] = {}

        def last(conn: Connection) -> None:
            seen_by_last["answered"] = [task.done() for task in tasks]
            seen_by_last["committed"] = rows(path)

        tasks = [asyncio.ensure_future(db.run_write(insert(f"k{i}", connections.append))) for i in range(10)]
        tasks.append(asyncio.ensure_future(db.run_write(insert("z", last))))
        tasks.append(asyncio.ensure_future(db.run_write(thread_name(names))))
        await asyncio.gather(*tasks)
        assert [task.result() for task in tasks[:11]] == [f"k{i}" for i in range(10)] + ["z"]
        assert len({id(conn) for conn in connections}) == 1
        assert names == [threading.current_thread().name]  # not handed to a thread
        assert seen_by_last == {"answered": [False] * 12, "committed": []}
        assert rows(path) == sorted([f"k{i}" for i in range(10)] + ["z"])
    finally:
        await db.close()


async def test_on_the_loop_a_batch_waits_a_few_turns_of_the_loop_while_writes_keep_arriving(tmp_path):
    """Writes asked for over the next turns of the loop join the batch while they keep coming
    (under load a commit then holds twice the writes); a batch waits at most
    ``MAX_WAITING_TURNS`` turns, so a write asked for on every turn still gets committed."""
    from gateway.store.group_commit import MAX_WAITING_TURNS

    path = tmp_path / "g.db"
    db = await open_database(path)
    commits: list[str] = []

    def count_commits(conn: Connection) -> None:
        conn.connection.dbapi_connection.set_trace_callback(  # type: ignore[union-attr]
            lambda sql: commits.append(sql) if sql == "COMMIT" else None)

    await db.run_write(count_commits)  # on the loop's own connection, for the batches below
    try:
        commits.clear()
        first = asyncio.ensure_future(db.run_write(insert("a")))
        await asyncio.sleep(0)  # one turn of the loop later...
        second = asyncio.ensure_future(db.run_write(insert("b")))
        await asyncio.sleep(0)  # ...and another
        third = asyncio.ensure_future(db.run_write(insert("c")))
        assert await asyncio.gather(first, second, third) == ["a", "b", "c"]
        assert commits == ["COMMIT"]  # one batch

        commits.clear()
        endless = [asyncio.ensure_future(db.run_write(insert("d0")))]
        turns = 0
        while not endless[0].done() and turns < 100:  # a write on every turn of the loop
            turns += 1
            endless.append(asyncio.ensure_future(db.run_write(insert(f"d{turns}"))))
            await asyncio.sleep(0)
        assert turns <= MAX_WAITING_TURNS + 3  # and the turns of the commit and of the writer's wake-up
        await asyncio.gather(*endless)
        assert len(rows(path)) == 3 + len(endless)
    finally:
        await db.close()


async def test_no_caller_hears_of_its_write_before_the_commit(tmp_path):
    path = tmp_path / "g.db"
    db = await open_database(path, "thread")
    try:
        held, gate = await hold_the_writer(db)
        inside_second, release_second = threading.Event(), threading.Event()

        def wait_inside(conn: Connection) -> None:
            inside_second.set()
            release_second.wait(10)

        first = asyncio.ensure_future(db.run_write(insert("a")))
        second = asyncio.ensure_future(db.run_write(insert("b", wait_inside)))
        await asyncio.sleep(0.02)
        gate.set()
        await held
        await asyncio.to_thread(inside_second.wait, 10)
        # "a" is written inside the transaction, and "b" holds the transaction open: the caller
        # of "a" has no answer yet, and nobody else can see "a".
        await asyncio.sleep(0.05)
        assert not first.done()
        assert rows(path) == []
        release_second.set()
        assert await first == "a"
        assert rows(path) == ["a", "b"]  # the moment "a" is answered, it is committed
        assert await second == "b"
    finally:
        await db.close()


@both_places
async def test_a_failing_write_is_rolled_back_alone(tmp_path, writes):
    path = tmp_path / "g.db"
    db = await open_database(path, writes)
    try:
        await db.run_write(insert("taken"))

        def fail(conn: Connection) -> None:
            raise ValueError("the handler's own bug")

        async with one_batch(db, writes):
            tasks = [
                asyncio.ensure_future(db.run_write(insert("a"))),
                asyncio.ensure_future(db.run_write(insert("b", fail))),  # wrote "b", then raised
                asyncio.ensure_future(db.run_write(insert("taken"))),  # a duplicate key
                asyncio.ensure_future(db.run_write(insert("d"))),
            ]
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        assert outcomes[0] == "a" and outcomes[3] == "d"
        assert isinstance(outcomes[1], ValueError)
        assert isinstance(outcomes[2], IntegrityError)
        assert rows(path) == ["a", "d", "taken"]
    finally:
        await db.close()


@both_places
async def test_a_batch_takes_one_savepoint_and_one_per_write_only_when_a_write_fails(tmp_path, writes):
    """Works almost never fail: a batch runs under one savepoint, and only a batch in which one
    write raised is run again with a savepoint per write (that write alone rolled back)."""
    path = tmp_path / "g.db"
    statements: list[str] = []

    def trace(dbapi_connection: Any, _record: Any) -> None:
        if isinstance(dbapi_connection, sqlite3.Connection):
            dbapi_connection.set_trace_callback(statements.append)

    event.listen(Engine, "connect", trace)
    try:
        db = await open_database(path, writes)
        try:
            def savepoints() -> list[str]:
                return [sql.split()[0] + " " + sql.split()[-1] for sql in statements
                        if sql.startswith(("SAVEPOINT", "RELEASE", "ROLLBACK TO"))]

            statements.clear()
            async with one_batch(db, writes):
                fine = [asyncio.ensure_future(db.run_write(insert(key))) for key in ("a", "b", "c")]
            assert await asyncio.gather(*fine) == ["a", "b", "c"]
            assert savepoints() == ["SAVEPOINT chatgate_batch", "RELEASE chatgate_batch"]

            def fail(conn: Connection) -> None:
                raise ValueError("the handler's own bug")

            statements.clear()
            async with one_batch(db, writes):
                mixed = [asyncio.ensure_future(db.run_write(insert(key, then)))
                         for key, then in (("d", None), ("e", fail), ("f", None))]
            outcomes = await asyncio.gather(*mixed, return_exceptions=True)
            assert outcomes[0] == "d" and isinstance(outcomes[1], ValueError) and outcomes[2] == "f"
            assert savepoints() == [
                "SAVEPOINT chatgate_batch", "ROLLBACK chatgate_batch", "RELEASE chatgate_batch",
                *["SAVEPOINT chatgate_write", "RELEASE chatgate_write"],
                *["SAVEPOINT chatgate_write", "ROLLBACK chatgate_write", "RELEASE chatgate_write"],
                *["SAVEPOINT chatgate_write", "RELEASE chatgate_write"],
            ]
            assert rows(path) == ["a", "b", "c", "d", "f"]
        finally:
            await db.close()
    finally:
        event.remove(Engine, "connect", trace)


@both_places
async def test_a_failed_commit_fails_every_caller_of_its_batch_and_stores_nothing(tmp_path, writes):
    path = tmp_path / "g.db"
    db = await open_database(path, writes)
    try:
        await db.run_write(lambda conn: conn.exec_driver_sql(
            "CREATE TABLE child (k TEXT PRIMARY KEY, parent TEXT REFERENCES t (k))"))

        def orphan(conn: Connection) -> None:
            # A foreign key checked at COMMIT (not at the statement): the COMMIT itself fails.
            conn.exec_driver_sql("PRAGMA defer_foreign_keys = ON")
            conn.exec_driver_sql("INSERT INTO child (k, parent) VALUES ('c', 'nobody')")

        async with one_batch(db, writes):
            tasks = [asyncio.ensure_future(db.run_write(insert("a"))), asyncio.ensure_future(db.run_write(orphan))]
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(outcome, IntegrityError) for outcome in outcomes), outcomes
        assert rows(path) == []
        assert await db.run_write(insert("after")) == "after"  # the writer goes on
        assert rows(path) == ["after"]
    finally:
        await db.close()


@both_places
async def test_a_write_cancelled_before_its_batch_began_is_not_run(tmp_path, writes):
    path = tmp_path / "g.db"
    db = await open_database(path, writes)
    try:
        async with one_batch(db, writes):
            cancelled = asyncio.ensure_future(db.run_write(insert("cancelled")))
            kept = asyncio.ensure_future(db.run_write(insert("kept")))
            # After both asked for their write (in the next turn of the loop), before the batch.
            asyncio.get_running_loop().call_soon(cancelled.cancel)
        assert await kept == "kept"
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        assert rows(path) == ["kept"]
    finally:
        await db.close()


CHILD = textwrap.dedent("""
    import asyncio, pathlib, sys, threading, time
    from gateway.store.database import Database

    path, writes = pathlib.Path(sys.argv[1]), sys.argv[2]

    def insert(key, then=None):
        def work(conn):
            conn.exec_driver_sql("INSERT INTO t (k) VALUES (?)", (key,))
            if then is not None:
                then()
        return work

    async def main():
        db = Database(f"sqlite+aiosqlite:///{path}", sqlite_writes=writes)
        await db.open()
        await db.run_write(lambda conn: conn.exec_driver_sql("CREATE TABLE t (k TEXT PRIMARY KEY)"))
        await db.run_write(insert("before"))
        print("acked before", flush=True)
        inside, gate = threading.Event(), threading.Event()
        if writes == "thread":  # "a" and "b" queue behind a batch that holds the writer thread
            held = asyncio.ensure_future(db.run_write(lambda conn: (inside.set(), gate.wait(30))))
            await asyncio.to_thread(inside.wait, 10)
        else:  # on the loop, writes asked for in one turn of the loop share a batch
            held = asyncio.ensure_future(asyncio.sleep(0))

        async def write(key, then=None):
            await db.run_write(insert(key, then))
            print("acked", key, flush=True)

        def stop_inside_the_transaction():
            (path.parent / "written").touch()  # "a" and "b" are written, not committed
            time.sleep(60)

        tasks = [asyncio.ensure_future(write("a")), asyncio.ensure_future(write("b", stop_inside_the_transaction))]
        if writes == "thread":
            await asyncio.sleep(0.05)
            gate.set()
        await asyncio.gather(held, *tasks)

    asyncio.run(main())
""")


@both_places
def test_killed_between_write_and_commit_nothing_is_acknowledged_or_stored(tmp_path, writes):
    path = tmp_path / "g.db"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path), writes], stdout=subprocess.PIPE, text=True,
                             env=env)
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "written").exists():
            assert child.poll() is None, "the child ended early"
            assert time.monotonic() < deadline, "the batch was never written"
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
        out, _ = child.communicate(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
    assert out.splitlines() == ["acked before"]  # "a" shared the batch: it was never answered
    assert rows(path) == ["before"]  # and nothing of the uncommitted batch is in the database


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def killed_database(request, tmp_path) -> tuple[str, Callable[[str], Awaitable[list[tuple[Any, ...]]]]]:
    """``(DATABASE_URL, query)`` for the kill test: a SQLite file, or a fresh PostgreSQL database
    (where the events recorded at the same time share a statement, and so do the replies)."""
    if request.param == "sqlite":
        database = tmp_path / "data" / "chatgate.db"

        async def query_sqlite(sql: str) -> list[tuple[Any, ...]]:
            with sqlite3.connect(database) as conn:
                return conn.execute(sql).fetchall()

        return f"sqlite:///{database}", query_sqlite
    url = request.getfixturevalue("postgres_url")

    async def query_postgres(sql: str) -> list[tuple[Any, ...]]:
        import asyncpg

        conn = await asyncpg.connect("postgresql://" + url.split("://", 1)[1])
        try:
            return [tuple(row) for row in await conn.fetch(sql)]
        finally:
            await conn.close()

    return url, query_postgres


async def test_killed_under_load_every_answered_turn_is_stored_and_nothing_runs_twice(
    tmp_path, free_port, killed_database
):
    """``chatgate run`` answering 8 REST clients (group commit batches their writes; on
    PostgreSQL the recordings too) is killed with SIGKILL mid-load: every message it answered is
    in the database with its reply; after a restart every message it recorded has exactly one
    reply, and nothing is left unfinished."""
    database_url, query = killed_database
    env = {
        **os.environ, "PYTHONPATH": str(ROOT), "CHATGATE_WEB__API_KEYS": '["test-key"]',
        "CHATGATE_DATA_DIR": str(tmp_path / "data"), "DATABASE_URL": database_url,
        "CHATGATE_LOGGING__LEVEL": "WARNING",
    }
    base = f"http://127.0.0.1:{free_port}/api/v1/chat/sessions"
    headers = {"X-API-Key": "test-key"}
    app = str(ROOT / "tests" / "apps" / "echo_app.py")

    def start(log_name: str) -> subprocess.Popen[bytes]:
        log = open(tmp_path / log_name, "wb")
        return subprocess.Popen([sys.executable, "-m", "gateway.cli", "run", app, "--port", str(free_port)],
                                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)

    async def ready(http: aiohttp.ClientSession) -> None:
        for _ in range(300):
            try:
                async with http.get(f"http://127.0.0.1:{free_port}/healthz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
        raise AssertionError("chatgate did not start")

    answered: list[str] = []
    enough = asyncio.Event()

    async def client(http: aiohttp.ClientSession, index: int) -> None:
        async with http.post(base, json={"agent_id": "default"}, headers=headers) as response:
            session_id = (await response.json())["data"]["id"]
        for n in range(10_000):
            text = f"c{index} m{n}"
            try:
                async with http.post(f"{base}/{session_id}/messages", json={"content": text},
                                     headers=headers) as response:
                    body = await response.json()
            except (TimeoutError, aiohttp.ClientError):
                return  # the server is gone
            assert response.status == 201 and body["data"]["content"] == f"echo: {text}", body
            answered.append(text)
            if len(answered) >= 200:
                enough.set()

    first = start("first.log")
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            await ready(http)
            clients = [asyncio.ensure_future(client(http, i)) for i in range(8)]
            await asyncio.wait_for(enough.wait(), 60)
            first.send_signal(signal.SIGKILL)
            await asyncio.to_thread(first.wait, 10)
            await asyncio.gather(*clients)
    finally:
        if first.poll() is None:
            first.kill()

    async def messages() -> list[tuple[Any, ...]]:
        return await query("SELECT role, text, inbound_id FROM messages ORDER BY id")

    stored = await messages()
    users = [text for role, text, _ in stored if role == "user"]
    replies = [text for role, text, _ in stored if role == "assistant"]
    for text in answered:  # answered means committed: the message and its reply are stored
        assert users.count(text) == 1 and replies.count(f"echo: {text}") == 1, text
    assert len(users) == len(set(users))

    second = start("second.log")
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            await ready(http)
            deadline = time.monotonic() + 30
            while True:  # the events recorded and not finished run again
                [(unfinished,)] = await query("SELECT count(*) FROM inbox WHERE status IN ('pending', 'running')")
                if unfinished == 0:
                    break
                assert time.monotonic() < deadline, f"{unfinished} events never finished"
                await asyncio.sleep(0.1)
    finally:
        second.send_signal(signal.SIGTERM)
        try:
            second.wait(15)
        except subprocess.TimeoutExpired:
            second.kill()
    stored = await messages()
    users = [text for role, text, _ in stored if role == "user"]
    replies = [text for role, text, _ in stored if role == "assistant"]
    assert sorted(replies) == sorted(f"echo: {text}" for text in users)  # one reply each, none twice
    assert len(users) >= len(answered)


async def test_closing_lets_the_batch_being_written_commit_and_refuses_the_rest(tmp_path):
    path = tmp_path / "g.db"
    db = await open_database(path, "thread")
    inside, gate = threading.Event(), threading.Event()

    def writing(conn: Connection) -> str:
        conn.exec_driver_sql("INSERT INTO t (k) VALUES ('in the batch')")
        inside.set()
        gate.wait(10)
        return "written"

    in_batch = asyncio.ensure_future(db.run_write(writing))
    await asyncio.to_thread(inside.wait, 10)
    waiting = asyncio.ensure_future(db.run_write(insert("waiting")))
    await asyncio.sleep(0.02)
    closing = asyncio.ensure_future(db.close())
    await asyncio.sleep(0.02)
    with pytest.raises(StoreClosed):
        await waiting  # not begun: refused at once, while the batch is still being written
    assert not in_batch.done()
    gate.set()
    await closing
    assert await in_batch == "written"
    assert rows(path) == ["in the batch"]
    with pytest.raises(RuntimeError):  # the store is closed: no more writes
        await db.run_write(insert("late"))


async def test_on_the_loop_closing_refuses_the_batch_not_yet_written(tmp_path):
    path = tmp_path / "g.db"
    db = await open_database(path)
    waiting = asyncio.ensure_future(db.run_write(insert("waiting")))
    closing = asyncio.ensure_future(db.close())  # in the same turn of the loop, before the batch
    with pytest.raises(StoreClosed):
        await waiting
    await closing
    assert rows(path) == []


async def test_on_the_loop_a_busy_database_is_waited_for_on_the_writer_thread(tmp_path):
    """Another process holds SQLite's write lock: the loop does not wait for it (its connection
    has no busy timeout); the batch waits on the writer thread, and the next is on the loop again."""
    path = tmp_path / "g.db"
    db = await open_database(path)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("INSERT INTO t (k) VALUES ('other')")
        names: list[str] = []
        mine = asyncio.ensure_future(db.run_write(insert("mine", thread_name(names))))
        # Had the loop waited on the lock, this sleep would end only after the busy timeout,
        # and "mine" would have failed by then.
        await asyncio.sleep(0.2)
        assert not mine.done() and names == []
        other.execute("COMMIT")
        assert await mine == "mine"
        assert names == [WRITER_THREAD]
        assert await db.run_write(insert("next", thread_name(names))) == "next"
        assert names == [WRITER_THREAD, threading.current_thread().name]
        assert rows(path) == ["mine", "next", "other"]
    finally:
        other.close()
        await db.close()


async def test_on_the_loop_a_write_waits_for_the_async_engines_transaction(tmp_path):
    """An ORM write of this process is inside its transaction (holding the write lock across
    awaits): a batch asked for meanwhile runs after it, not beside it."""
    path = tmp_path / "g.db"
    db = await open_database(path)
    try:
        async with db.writing() as conn:
            await conn.exec_driver_sql("INSERT INTO t (k) VALUES ('orm')")
            mine = asyncio.ensure_future(db.run_write(insert("mine")))
            await asyncio.sleep(0.05)
            assert not mine.done()
        assert await mine == "mine"
        assert rows(path) == ["mine", "orm"]
        assert await db.run_write(insert("after")) == "after"
    finally:
        await db.close()


async def test_on_the_loop_the_wal_is_checkpointed_on_the_writer_thread(tmp_path):
    """The loop's connection never checkpoints (an fsync would stall the loop); every
    CHECKPOINT_EVERY commits, a checkpoint (passive, then restart) runs on the writer thread."""
    path = tmp_path / "g.db"
    statements: list[tuple[str, str]] = []

    def trace(dbapi_connection: Any, _record: Any) -> None:
        if not isinstance(dbapi_connection, sqlite3.Connection):  # the async engine's
            return
        dbapi_connection.set_trace_callback(
            lambda sql: statements.append((threading.current_thread().name, sql)))

    event.listen(Engine, "connect", trace)
    try:
        db = await open_database(path)  # its CREATE TABLE is the first commit

        def checkpoints() -> list[str]:
            return [name for name, sql in statements if "wal_checkpoint(RESTART)" in sql]

        try:
            written = 1
            for expected in (1, 2):
                while written < expected * CHECKPOINT_EVERY:  # one batch each
                    await db.run_write(insert(f"k{written:04}"))
                    written += 1
                # The checkpoint runs beside the loop: wait for it before the next round.
                await until(lambda expected=expected: len(checkpoints()) == expected)  # type: ignore[misc]
        finally:
            await db.close()
    finally:
        event.remove(Engine, "connect", trace)
    assert checkpoints() == [WRITER_THREAD, WRITER_THREAD]
    passes = [(name, sql) for name, sql in statements if "wal_checkpoint" in sql]
    assert passes == [(WRITER_THREAD, "PRAGMA wal_checkpoint(PASSIVE)"),
                      (WRITER_THREAD, "PRAGMA wal_checkpoint(RESTART)")] * 2
    inserts = {name for name, sql in statements if sql.startswith("INSERT INTO t")}
    assert inserts == {threading.current_thread().name}
    assert len(rows(path)) == 2 * CHECKPOINT_EVERY - 1


async def test_on_the_loop_a_turns_reads_use_the_connection_that_wrote(tmp_path):
    """Reads on the loop's thread go to the loop's write connection (its page cache holds what
    it wrote; any other connection's was emptied by that write); another thread reads on a
    connection of its own."""
    db = await open_database(tmp_path / "g.db")
    try:
        writers: list[Any] = []
        await db.run_write(insert("k", lambda conn: writers.append(conn.connection.dbapi_connection)))

        def read(driver: sqlite3.Connection) -> tuple[sqlite3.Connection, list[Any]]:
            return driver, driver.execute("SELECT k FROM t").fetchall()

        driver, found = await db.run_driver_read(read)
        assert driver is writers[0] and found == [("k",)]
        elsewhere, found = await asyncio.to_thread(lambda: asyncio.run(db.run_driver_read(read)))
        assert elsewhere is not writers[0] and found == [("k",)]
    finally:
        await db.close()


def wal_restarts(path: Path) -> int:
    """How many times the WAL started over: its header's checkpoint sequence number."""
    header = (path.parent / (path.name + "-wal")).read_bytes()[:16]
    return int.from_bytes(header[12:16], "big")


async def test_under_endless_writes_the_wal_starts_over_and_stays_small(tmp_path):
    """The loop's batches never pause, as under load: each checkpoint still ends with the WAL
    starting over from its beginning, so it stays the size of one round of commits. A checkpoint
    that ran beside the writes (passive) never found the moment to start over: the WAL grew by
    every commit, without end."""
    path = tmp_path / "g.db"
    db = await open_database(path)
    await db.run_write(lambda conn: conn.exec_driver_sql("CREATE TABLE blobs (k INTEGER PRIMARY KEY, v BLOB)"))
    frame = 24 + 4096  # a WAL frame: its header and a page
    rounds = 6
    commits = 0
    try:
        first = wal_restarts(path)
        while commits < rounds * CHECKPOINT_EVERY:
            # Two rows of most of a page each: every commit adds at least two frames to the WAL.
            def work(conn: Connection, n: int = commits) -> None:
                for row in (2 * n, 2 * n + 1):
                    conn.exec_driver_sql("INSERT INTO blobs (k, v) VALUES (?, randomblob(3000))", (row,))

            await db.run_write(work)
            commits += 1
            await asyncio.sleep(0.0005)  # about as often as a busy gateway commits
        restarts = wal_restarts(path) - first
        wal_size = (tmp_path / "g.db-wal").stat().st_size
    finally:
        await db.close()
    assert restarts >= rounds - 1
    # A WAL that never started over would hold every frame: at least two per commit. This one
    # holds a round or two of them.
    assert wal_size < 0.7 * commits * 2 * frame, wal_size


async def test_every_connection_keeps_temporary_data_in_memory_and_caps_the_wal(tmp_path):
    """SQLite's temporary tables and statement journals stay in memory (on a file they cost an
    open and an unlink in /var/tmp every few turns), and a WAL that grew is cut back when it
    starts over; on the loop's connection, the reader threads' and the async engine's alike."""
    from gateway.store.database import WAL_SIZE_LIMIT

    db = await open_database(tmp_path / "g.db")
    try:
        def pragmas(conn: Connection) -> tuple[int, int]:
            return (conn.exec_driver_sql("PRAGMA temp_store").scalar_one(),
                    conn.exec_driver_sql("PRAGMA journal_size_limit").scalar_one())

        memory = 2  # PRAGMA temp_store: 0 default, 1 file, 2 memory
        assert await db.run_write(pragmas) == (memory, WAL_SIZE_LIMIT)
        assert await db.run_read(pragmas) == (memory, WAL_SIZE_LIMIT)
        assert await db.run_driver_read(
            lambda driver: tuple(driver.execute(sql).fetchone()[0]
                                 for sql in ("PRAGMA temp_store", "PRAGMA journal_size_limit"))
        ) == (memory, WAL_SIZE_LIMIT)
    finally:
        await db.close()


async def test_a_long_reader_does_not_hold_writes_off_while_the_wal_is_checkpointed(tmp_path):
    """A checkpoint's ``RESTART`` pass holds new writes off while it waits for readers to leave
    the WAL: it waits ``RESTART_WAIT_MS`` at most, so a read left open for seconds (another
    process, a big listing) costs the writes of its round milliseconds, not the 10 s busy
    timeout. Once the reader is gone, the WAL starts over again."""
    from gateway.store.group_commit import RESTART_WAIT_MS

    path = tmp_path / "g.db"
    db = await open_database(path)
    reader = sqlite3.connect(path, isolation_level=None)
    try:
        await db.run_write(insert("first"))
        reader.execute("BEGIN")
        assert reader.execute("SELECT count(*) FROM t").fetchone() == (1,)  # a snapshot, held open
        slowest = 0.0
        for n in range(2 * CHECKPOINT_EVERY):  # two checkpoint rounds with the reader inside
            started = time.perf_counter()
            await db.run_write(insert(f"k{n:04}"))
            slowest = max(slowest, time.perf_counter() - started)
            await asyncio.sleep(0.0005)
        restarts_with_reader = wal_restarts(path)
        assert slowest < 1.0, slowest  # never the 10 s busy timeout; about RESTART_WAIT_MS
        reader.execute("COMMIT")
        for n in range(2 * CHECKPOINT_EVERY):
            await db.run_write(insert(f"m{n:04}"))
            await asyncio.sleep(0.0005)
        assert wal_restarts(path) > restarts_with_reader
    finally:
        reader.close()
        await db.close()
    assert RESTART_WAIT_MS < 1000
