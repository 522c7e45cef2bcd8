"""What one text turn costs the store: counted statements, not timings.

A turn answering a message in a known session reads the session once (the turn's own read; the
intake checks it exists inside the write that records the event), binds each attachment to
its adapter once (at intake; only an event recovered after a restart is bound in the turn), and
reads its history only if the handler uses it (``session.history``, ``chat_messages``)."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
from collections import Counter
from typing import Any

import asyncpg
import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine

import gateway
from adapters.base import Inbound, PlatformUser
from gateway.history import HistoryPrefetch
from gateway.runtime import Gateway
from gateway.store.postgres_turns import listen_statements
from gateway.testing import test_settings
from gateway.types import Attachment, Message, SessionChannel
from tests.support import TextChannel, until


class CountingAdapter(TextChannel):
    """A text channel whose attachments count their bindings."""

    def __init__(self) -> None:
        super().__init__("counted")
        self.bound: Counter[str] = Counter()

    def resolve_attachment(self, attachment: Attachment) -> Attachment:
        self.bound[attachment.url] += 1

        async def fetch() -> bytes:
            return b"%PDF-1.7"

        return Attachment(attachment.name, attachment.content_type, attachment.url, attachment.size, fetch=fetch)


def reads_lazily(database_url: str) -> bool:
    """``session.history`` is read on first use on a SQLite file, up front on PostgreSQL."""
    return database_url.startswith("sqlite")


class StatementLog:
    """Every SQL statement any engine runs while ``recording``: SQLAlchemy's statements by its
    ``before_cursor_execute`` event, on ``sqlite3`` connections (where the store also runs
    statements on the driver itself, ``gateway.store.sqlite_turns``) every statement by the
    driver's own trace callback, set as the engine connects, and on PostgreSQL those the per-turn
    statements run on asyncpg directly (``gateway.store.postgres_turns``) by asyncpg's query
    logger. Listeners, not patches."""

    def __init__(self) -> None:
        self.recording = False
        self.statements: list[str] = []

    def __call__(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if not isinstance(conn.connection.dbapi_connection, sqlite3.Connection):  # traced below
            self.record(statement)

    def connected(self, dbapi_connection: Any, _record: Any) -> None:
        if isinstance(dbapi_connection, sqlite3.Connection):
            dbapi_connection.set_trace_callback(self.record)

    def record(self, statement: str) -> None:
        if self.recording:
            self.statements.append(" ".join(statement.split()))

    def session_reads(self) -> list[str]:
        return [s for s in self.statements if re.match(r"SELECT .* FROM sessions\b", s)]

    def message_reads(self) -> list[str]:
        """Statements that read messages: a ``SELECT``, or on PostgreSQL the statement recording
        an event that also reads the turn's context (``gateway.store.postgres_turns``)."""
        return [s for s in self.statements if re.search(r"\bFROM messages\b", s)]


def changes(statement: str) -> list[str]:
    """What a write statement changes, in order: ``UPDATE sessions``, ``INSERT INTO inbox``... (a
    statement whose ``WITH`` clauses write several tables names each)."""
    return re.findall(r"\b(UPDATE \w+|INSERT INTO \w+|DELETE FROM \w+)", statement)


@pytest.fixture
def statements() -> Any:
    log = StatementLog()
    event.listen(Engine, "before_cursor_execute", log)
    event.listen(Engine, "connect", log.connected)
    stop_listening = listen_statements(log.record)
    yield log
    stop_listening()
    event.remove(Engine, "connect", log.connected)
    event.remove(Engine, "before_cursor_execute", log)


async def counted_session(gw: Gateway) -> Any:
    """A new session of the ``counted`` channel's user ``u1``."""
    user = await gw.sessions.resolve_user(PlatformUser("counted", "u1"))
    return await gw.sessions.create(SessionChannel("counted"), user)


def counted_message(session_id: str, text_: str) -> Inbound:
    """A message from ``u1`` to the session, its dedup key named by its text."""
    return Inbound("message", f"counted:{text_}", SessionChannel("counted"), PlatformUser("counted", "u1"),
                   message=Message(text_, "user", "counted"), session_id=session_id)


def echo_app() -> gateway.App:
    app = gateway.App("counted")

    @app.message()
    async def echo(session: gateway.Session, msg: gateway.Message) -> None:
        names = [a.name for a in msg.attachments or []]
        contents = [await a.read() for a in msg.attachments or []] if names else []
        await session.reply(f"echo: {msg.text} {names} {[len(c) for c in contents]}")

    return app


async def test_one_text_turn_reads_its_session_once_and_binds_attachments_once(
    tmp_path, database_url, statements
) -> None:
    adapter = CountingAdapter()
    gw = Gateway(echo_app(), test_settings(tmp_path, database={"url": database_url}), adapters=[adapter])
    await gw.start()
    try:
        user = await gw.sessions.resolve_user(PlatformUser("counted", "u1"))
        record = await gw.sessions.create(SessionChannel("counted"), user)

        async def turn(key: str, message: Message) -> str:
            await gw.submit(Inbound("message", key, SessionChannel("counted"), PlatformUser("counted", "u1"),
                                    message=message, session_id=record.id))
            return await asyncio.wait_for(adapter.replies.get(), 10)

        await turn("counted:0", Message("first", "user", "counted"))  # the session's first turn runs @app.enter
        await until(lambda: not gw.dispatcher.busy(record.id))  # its reply and status stored
        attachment = Attachment("report.pdf", "application/pdf", "counted-file:1", 8)
        statements.recording = True
        reply = await turn("counted:1", Message("hello", "user", "counted", attachments=[attachment]))
        await until(lambda: not gw.dispatcher.busy(record.id))  # marked done
        statements.recording = False
    finally:
        await gw.stop()

    assert reply == "echo: hello ['report.pdf'] [8]"
    # The handler never looked at its history: on a SQLite file nothing is read for it; on
    # PostgreSQL the history is read before the handler (a lazy read there would block the loop),
    # with the session and its user, in the very statement that records the event: the session
    # was idle, so its turn starts at once and reads nothing of its own.
    reads = [s for s in statements.statements if s.startswith("SELECT")]
    if reads_lazily(database_url):
        assert len(statements.session_reads()) == 1, statements.session_reads()
        assert statements.message_reads() == [], statements.message_reads()
    else:
        assert reads == [], reads
        [recording] = [s for s in statements.statements if "INSERT INTO inbox" in s]
        assert re.search(r"JOIN sessions .* JOIN users .* FROM messages", recording), recording
    assert adapter.bound == {"counted-file:1": 1}
    writes = [s for s in statements.statements if s.startswith(("INSERT", "UPDATE", "DELETE", "WITH"))]
    # the event and the user's message, in one transaction with the session check; the reply; done
    assert [change for w in writes for change in changes(w)] == [
        "UPDATE sessions", "INSERT INTO inbox", "INSERT INTO messages", "INSERT INTO messages", "UPDATE inbox",
    ], "\n".join(w[:90] for w in writes)
    if not database_url.startswith("sqlite"):
        # PostgreSQL records the event in one statement (gateway.store.postgres_turns), and the
        # reply, queued rather than awaited (Session.queue_replies), goes out with the event's
        # status in one batch: two round trips in all.
        assert len(writes) == 2 and not {"BEGIN", "COMMIT"} & set(statements.statements), statements.statements
        assert changes(writes[1]) == ["INSERT INTO messages", "UPDATE inbox"], writes[1]


async def test_an_event_for_a_session_that_does_not_exist_records_nothing(tmp_path, database_url) -> None:
    adapter = CountingAdapter()
    gw = Gateway(echo_app(), test_settings(tmp_path, database={"url": database_url}), adapters=[adapter])
    await gw.start()
    try:
        inbound = Inbound("message", "counted:ghost", SessionChannel("counted"), PlatformUser("counted", "u1"),
                          message=Message("anyone?", "user", "counted"), session_id="01NOSUCHSESSION")
        with pytest.raises(gateway.types.UnknownSession):
            await gw.submit(inbound)
        assert await gw.store.inbox.unfinished() == []
    finally:
        await gw.stop()


def history_app(seen: list[Any]) -> gateway.App:
    """``look*`` messages report what the handler sees of its history; ``empty`` stores an
    empty reply (left out of history); anything else is echoed."""
    app = gateway.App("counted")

    @app.message()
    async def handle(session: gateway.Session, msg: gateway.Message) -> None:
        if msg.text == "look after a reply":
            await session.reply("first reply")  # appended before anyone read the history
            seen.append([(m.sender, m.text) for m in session.history])
            assert session.history is session.history  # one list, read once
        elif msg.text == "look through chat_messages":
            seen.append(session.chat_messages(msg))
        await session.reply("" if msg.text == "empty" else f"echo: {msg.text}")

    return app


async def test_history_is_read_on_first_use_and_is_the_list_capsule_gives(
    tmp_path, database_url, statements
) -> None:
    adapter = CountingAdapter()
    seen: list[Any] = []
    settings = test_settings(tmp_path, database={"url": database_url}, dispatch={"history_limit": 3})
    gw = Gateway(history_app(seen), settings, adapters=[adapter])
    await gw.start()
    try:
        user = await gw.sessions.resolve_user(PlatformUser("counted", "u1"))
        record = await gw.sessions.create(SessionChannel("counted"), user)

        async def turn(key: str, text: str) -> list[str]:
            await gw.submit(Inbound("message", key, SessionChannel("counted"), PlatformUser("counted", "u1"),
                                    message=Message(text, "user", "counted"), session_id=record.id))
            replies = [await asyncio.wait_for(adapter.replies.get(), 10)]
            await until(lambda: gw.dispatcher.running_inbound(record.id) is None)
            while not adapter.replies.empty():
                replies.append(adapter.replies.get_nowait())
            return replies

        for number, text in enumerate(["one", "two", "empty"]):
            await turn(f"counted:{number}", text)
        statements.recording = True
        assert await turn("counted:3", "look after a reply") == ["first reply", "echo: look after a reply"]
        statements.recording = False
        # The last 3 stored before the turn (its own message left out): "echo: two", "empty" and
        # the empty reply, which history leaves out; then the reply sent before the first read.
        assert seen.pop() == [("app", "echo: two"), ("user", "empty"), ("app", "first reply")]
        assert len(statements.message_reads()) == 1, statements.message_reads()

        statements.statements.clear()
        statements.recording = True
        await turn("counted:4", "look through chat_messages")
        statements.recording = False
        assert seen.pop() == [
            {"role": "user", "content": "look after a reply"},
            {"role": "assistant", "content": "first replyecho: look after a reply"},
            {"role": "user", "content": "look through chat_messages"},
        ]
        assert len(statements.message_reads()) == 1, statements.message_reads()

        # A session opened outside a turn (a job, a task, a broadcast) reads it on first use too.
        statements.statements.clear()
        statements.recording = True
        opened = await gw.sessions.open(record.id)
        await opened.reply("from a job")
        assert len(statements.message_reads()) == (0 if reads_lazily(database_url) else 1)
        assert opened.last_message_id is not None
        history = [(m.sender, m.text) for m in opened.history]
        statements.recording = False
        assert history == [  # the last 3 stored before it was opened, then its own reply
            ("app", "echo: look after a reply"),
            ("user", "look through chat_messages"),
            ("app", "echo: look through chat_messages"),
            ("app", "from a job"),
        ]
        assert opened.history[-1].id == opened.last_message_id
        assert len(statements.message_reads()) == 1, statements.message_reads()
    finally:
        await gw.stop()


async def test_a_block_updated_in_place_before_the_history_is_read_shows_as_it_was(tmp_path, database_url) -> None:
    """Showing a block again updates its stored row: the history read afterwards would show
    the new envelope twice, so a Session reads its history before it shows a block."""
    adapter = CountingAdapter()
    seen: list[Any] = []
    app = gateway.App("counted")

    @app.message()
    async def handle(session: gateway.Session, msg: gateway.Message) -> None:
        await session.set_title(msg.text)  # the block title_<session id>, updated in place
        if msg.text == "second":
            seen.append([(m.sender, m.text) for m in session.history])
        await session.reply("ok")

    gw = Gateway(app, test_settings(tmp_path, database={"url": database_url}), adapters=[adapter])
    await gw.start()
    try:
        user = await gw.sessions.resolve_user(PlatformUser("counted", "u1"))
        record = await gw.sessions.create(SessionChannel("counted"), user)
        for number, text in enumerate(["first", "second"]):
            await gw.submit(Inbound("message", f"counted:{number}", SessionChannel("counted"),
                                    PlatformUser("counted", "u1"), message=Message(text, "user", "counted"),
                                    session_id=record.id))
            assert await asyncio.wait_for(adapter.replies.get(), 10) == "ok"
            await until(lambda: gw.dispatcher.running_inbound(record.id) is None)
    finally:
        await gw.stop()
    titles = [json.loads(text)["payload"]["title"] for sender, text in seen[0] if sender == "block"]
    assert titles == ["first", "second"]
    assert [(s, t) for s, t in seen[0] if s != "block"] == [("user", "first"), ("app", "ok")]


async def test_a_store_that_cannot_read_now_reads_the_history_when_awaited(tmp_path) -> None:
    """An in-memory SQLite store has no connection a synchronous read could use: a turn there
    reads the history up front (``read_async``), and ``read`` says why it cannot."""
    from gateway.history import StoredHistory
    from gateway.store import Store

    store = Store("sqlite+aiosqlite:///:memory:")
    await store.open()
    try:
        user = await store.users.resolve(PlatformUser("counted", "u1"))
        record = await store.sessions.create(SessionChannel("counted"), user)
        await store.messages.add(record.id, "user", "hi")
        await store.messages.add(record.id, "assistant", "")  # an empty reply: left out
        await store.messages.add(record.id, "assistant", "hello")
        history = StoredHistory(store.messages, record.id, "counted", 50)
        assert not history.reads_now
        assert [(m.sender, m.text) for m in await history.read_async()] == [("user", "hi"), ("app", "hello")]
        with pytest.raises(RuntimeError, match="no synchronous reads"):
            history.read()
        nothing = StoredHistory(store.messages, record.id, "counted", 0)  # dispatch.history_limit = 0
        assert nothing.reads_now and nothing.read() == []
    finally:
        await store.close()


async def test_plain_turns_write_no_entry_in_the_indexes_of_unfinished_events_and_of_blocks(tmp_path) -> None:
    """Each index a turn writes costs it a WAL frame: a finished text turn leaves nothing in the
    index of unfinished events (its entry went with its end) nor in the index of blocks (its
    messages carry none). Counted in the file's own b-trees (SQLite's ``dbstat``)."""
    from gateway.testing import TestClient

    async with TestClient(echo_app(), tmp_path) as client:
        conv = await client.conversation()
        for n in range(20):
            await conv.send(f"hello {n}")
        await client.gateway.dispatcher.wait_idle(10)
        with sqlite3.connect(tmp_path / "chatgate.db") as db:
            def entries(index: str) -> int:
                return db.execute("SELECT coalesce(sum(ncell), 0) FROM dbstat WHERE name = ? AND pagetype = 'leaf'",
                                  (index,)).fetchone()[0]

            indexes = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
            assert {"ix_inbox_unfinished", "ix_messages_block_id"} <= indexes
            assert entries("ix_messages_session_id_id") == 40  # the count works: every message is there
            assert entries("ix_inbox_unfinished") == 0
            assert entries("ix_messages_block_id") == 0


async def test_a_message_that_waits_behind_another_turn_reads_what_that_turn_left(tmp_path, database_url) -> None:
    """On PostgreSQL a message for an idle session has its turn's context read as it is recorded.
    Two messages recorded at once for one session: the second waits for the first turn, and
    must see that turn's ``session.data`` and reply, not what its own recording read."""
    adapter = CountingAdapter()
    app = gateway.App("counted")
    seen: list[tuple[int, list[str]]] = []

    @app.message()
    async def count(session: gateway.Session, msg: gateway.Message) -> None:
        number = session.data.get("n", 0) + 1
        seen.append((number, [m.text for m in session.history]))
        await asyncio.sleep(0.05)  # the other message is recorded meanwhile
        session.data["n"] = number
        await session.reply(f"reply {number}")

    gw = Gateway(app, test_settings(tmp_path, database={"url": database_url}), adapters=[adapter])
    await gw.start()
    try:
        record = await counted_session(gw)

        def inbound(number: int) -> Inbound:
            return counted_message(record.id, f"m{number}")

        await asyncio.gather(gw.submit(inbound(1)), gw.submit(inbound(2)))
        replies = [await asyncio.wait_for(adapter.replies.get(), 10) for _ in range(2)]
        await until(lambda: gw.dispatcher.running_inbound(record.id) is None)
        stored = await gw.store.sessions.get(record.id)
    finally:
        await gw.stop()

    assert replies == ["reply 1", "reply 2"]
    assert [number for number, _ in seen] == [1, 2]
    assert seen[1][1][-1] == "reply 1"  # the first turn's reply is in the second's history
    assert stored is not None and stored.data["n"] == 2


async def test_a_message_arriving_while_the_last_turn_writes_its_status_runs_only_once_that_is_stored(
    tmp_path, postgres_url
) -> None:
    """A turn hands its session over as soon as its status is queued (``Dispatcher._hand_over``):
    the next message starts, yet runs nothing before that status is stored, so a crash leaves
    at most one event of the session to run again. Here the status is held on a row lock taken
    by another connection; released, the second turn sees the first's ``session.data`` and reply."""
    adapter = CountingAdapter()
    app = gateway.App("counted")
    seen: list[tuple[int, list[str]]] = []
    may_return = asyncio.Event()

    @app.message()
    async def count(session: gateway.Session, msg: gateway.Message) -> None:
        number = session.data.get("n", 0) + 1
        seen.append((number, [m.text for m in session.history]))
        session.data["n"] = number
        await session.reply(f"reply {number}")
        if number == 1:
            await may_return.wait()

    locker = await asyncpg.connect(postgres_url.replace("postgresql+asyncpg://", "postgresql://"))
    gw = Gateway(app, test_settings(tmp_path, database={"url": postgres_url}), adapters=[adapter])
    await gw.start()
    try:
        record = await counted_session(gw)

        def inbound(number: int) -> Inbound:
            return counted_message(record.id, f"m{number}")

        first = await gw.submit(inbound(1))
        assert await asyncio.wait_for(adapter.replies.get(), 10) == "reply 1"
        lock = locker.transaction()
        await lock.start()
        await locker.execute("SELECT 1 FROM inbox WHERE id = $1 FOR UPDATE", first.inbound_id)
        may_return.set()
        # handed over: nothing handles an event of the session, yet it is busy writing the first's status
        await until(lambda: gw.dispatcher.running_inbound(record.id) is None and gw.dispatcher.busy(record.id))
        second = await gw.submit(inbound(2))
        await until(lambda: gw.dispatcher.running_inbound(record.id) == second.inbound_id)  # started...
        await asyncio.sleep(0.3)
        ran_early = len(seen) > 1  # ...but not run
        await lock.rollback()
        assert await asyncio.wait_for(adapter.replies.get(), 10) == "reply 2"
        await until(lambda: not gw.dispatcher.busy(record.id))
        first_event = await gw.store.inbox.get(first.inbound_id)
        stored = await gw.store.sessions.get(record.id)
    finally:
        await gw.stop()
        await locker.close()

    assert not ran_early
    assert first_event is not None and first_event.status == "done"
    assert seen[1] == (2, ["m1", "reply 1"])
    assert stored is not None and stored.data["n"] == 2


async def test_history_left_alone_is_no_longer_fetched_and_is_still_there_when_read(
    tmp_path, database_url, statements
) -> None:
    """On PostgreSQL a turn fetches its history before its handler runs while handlers read it
    (``gateway.history.HistoryPrefetch``). After turns that left it alone it is no longer
    fetched; the handler that reads it then gets it all the same (a read that holds the loop up
    once), and fetching resumes."""
    adapter = CountingAdapter()
    seen: list[Any] = []
    settings = test_settings(tmp_path, database={"url": database_url}, dispatch={"history_limit": 4})
    gw = Gateway(history_app(seen), settings, adapters=[adapter])
    gw.history_prefetch = HistoryPrefetch("auto", quiet_turns=2)
    await gw.start()
    try:
        user = await gw.sessions.resolve_user(PlatformUser("counted", "u1"))
        record = await gw.sessions.create(SessionChannel("counted"), user)

        async def turn(key: str, text: str) -> None:
            await gw.submit(Inbound("message", key, SessionChannel("counted"), PlatformUser("counted", "u1"),
                                    message=Message(text, "user", "counted"), session_id=record.id))
            await asyncio.wait_for(adapter.replies.get(), 10)
            await until(lambda: gw.dispatcher.running_inbound(record.id) is None)
            while not adapter.replies.empty():
                adapter.replies.get_nowait()

        assert gw.history_prefetch.wanted
        for number, text in enumerate(["one", "two", "three"]):
            await turn(f"counted:{number}", text)
        assert not gw.history_prefetch.wanted  # two turns in a row left it alone
        statements.recording = True
        await turn("counted:3", "look after a reply")
        statements.recording = False
        assert seen.pop() == [("user", "two"), ("app", "echo: two"), ("user", "three"), ("app", "echo: three"),
                              ("app", "first reply")]
        history_reads = [s for s in statements.statements if s.startswith("SELECT") and "FROM messages" in s]
        assert len(history_reads) == 1, statements.statements  # read when the handler looked, not before
        assert gw.history_prefetch.wanted  # it was read: fetched again from the next turn
    finally:
        await gw.stop()


def test_history_prefetch_stops_after_quiet_turns_and_resumes_on_a_read() -> None:
    auto = HistoryPrefetch("auto", quiet_turns=3)
    for _ in range(2):
        auto.turn_ended(read_history=False)
    assert auto.wanted
    auto.turn_ended(read_history=False)
    assert not auto.wanted
    for _ in range(100):
        auto.turn_ended(read_history=False)
    auto.turn_ended(read_history=True)
    assert auto.wanted
    always = HistoryPrefetch("always", quiet_turns=1)
    for _ in range(5):
        always.turn_ended(read_history=False)
    assert always.wanted


# -- PostgreSQL: replies queued, the turn's end waits for them ----------------------------------


class EndingChannel(CountingAdapter):
    """``CountingAdapter`` that also keeps each turn's end, as its outbox is told it."""

    def __init__(self) -> None:
        super().__init__()
        self.ends: asyncio.Queue[tuple[str | None, str | None]] = asyncio.Queue()

    def outbox(self, channel: SessionChannel, session_id: str, turn: str | None = None) -> Any:
        inner, ends = super().outbox(channel, session_id, turn), self.ends

        class Outbox:
            async def send_text(self, message_id: str, text: str) -> list[str]:
                return await inner.send_text(message_id, text)

            async def end_turn(self, inbound_id: str | None, error: str | None) -> None:
                ends.put_nowait((inbound_id, error))

        return Outbox()


async def _pg_turn(tmp_path: Any, postgres_url: str, app: gateway.App, text_: str,
                   before: Any = None) -> tuple[Gateway, EndingChannel, str, tuple[str | None, str | None]]:
    """Run one message through a gateway on PostgreSQL; the gateway is left running."""
    adapter = EndingChannel()
    gw = Gateway(app, test_settings(tmp_path, database={"url": postgres_url}), adapters=[adapter])
    await gw.start()
    if before is not None:
        await before(gw)
    record = await counted_session(gw)
    accepted = await gw.submit(counted_message(record.id, text_))
    end = await asyncio.wait_for(adapter.ends.get(), 10)
    assert end[0] == accepted.inbound_id
    await until(lambda: not gw.dispatcher.busy(record.id))
    return gw, adapter, record.id, end


async def test_a_turns_replies_are_queued_and_go_out_with_its_status_in_order(tmp_path, postgres_url, statements):
    """On PostgreSQL ``session.reply`` returns once the reply is delivered; its write is queued
    (``Session.queue_replies``), and the turn's end waits for them all before the event's status
    is written and the end announced. Replies past ``MAX_QUEUED_REPLIES`` wait for the earlier."""
    from gateway.session import MAX_QUEUED_REPLIES

    app = gateway.App("counted")
    count = MAX_QUEUED_REPLIES + 6

    @app.message()
    async def chatty(session: gateway.Session, msg: gateway.Message) -> None:
        for n in range(count):
            await session.reply(f"part {n}")

    statements.recording = True
    gw, adapter, session_id, end = await _pg_turn(tmp_path, postgres_url, app, "go")
    statements.recording = False
    try:
        stored, _ = await gw.store.messages.page(session_id, offset=0, limit=200)
        events = [row for row in await gw.store.inbox.unfinished() if row.session_id == session_id]
    finally:
        await gw.stop()
    assert end[1] is None
    assert adapter.texts == [f"part {n}" for n in range(count)]
    assert [m.text for m in stored if m.role == "assistant"] == [f"part {n}" for n in range(count)]
    assert events == []  # the event is done
    batches = [s for s in statements.statements if "INSERT INTO messages" in s and "unnest" in s]
    # one batch for the first MAX_QUEUED_REPLIES, and the rest go with the status
    assert len(batches) == 2, len(batches)
    assert changes(batches[-1]) == ["INSERT INTO messages", "UPDATE inbox"]


async def test_a_queued_reply_the_database_refuses_marks_the_event_failed(tmp_path, postgres_url, caplog):
    """The handler returned before its reply was stored: when storing it fails, the turn ends as
    a handler error (logged, the event failed), not as done."""
    app = gateway.App("counted")

    @app.message()
    async def answer(session: gateway.Session, msg: gateway.Message) -> None:
        await session.reply("refused")

    async def refuse_that_reply(gw: Gateway) -> None:
        dsn = postgres_url.replace("postgresql+asyncpg://", "postgresql://")
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute("ALTER TABLE messages ADD CONSTRAINT no_refused CHECK (text <> 'refused')")
        finally:
            await conn.close()

    gw, adapter, session_id, end = await _pg_turn(tmp_path, postgres_url, app, "hi", before=refuse_that_reply)
    try:
        assert end[0] is not None
        event_ = await gw.store.inbox.get(end[0])
        stored, _ = await gw.store.messages.page(session_id, offset=0, limit=10)
    finally:
        await gw.stop()
    assert adapter.texts == ["refused"]  # delivered before it was stored, as always
    assert end[1] == "handler_error"
    assert event_ is not None and (event_.status, event_.error) == ("failed", "handler_error")
    assert [m.role for m in stored] == ["user"]
    assert any("storing a reply of session" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("history_fetched", [True, False], ids=["history-fetched", "history-on-first-use"])
async def test_the_next_turn_reads_its_session_only_once_the_last_turns_queued_reply_is_stored(
    tmp_path, postgres_url, history_fetched
):
    """The session is handed to its next event as soon as a turn's status is asked for, while
    its last reply (queued, ``Session.queue_replies``) may still be on its way: the next turn
    waits for that reply before it reads its history (``WorkItem.after``), whether the history
    comes with the session or, no longer fetched (``HistoryPrefetch``), on first use (then the
    session and user were read with the recording). Here the batch holding the reply and the
    status is held on a row lock."""
    adapter = EndingChannel()
    app = gateway.App("counted")
    seen: list[list[str]] = []
    may_reply = asyncio.Event()

    @app.message()
    async def answer(session: gateway.Session, msg: gateway.Message) -> None:
        seen.append([m.text for m in session.history])
        if msg.text == "m1":
            await may_reply.wait()
        await session.reply(f"reply to {msg.text}")

    locker = await asyncpg.connect(postgres_url.replace("postgresql+asyncpg://", "postgresql://"))
    gw = Gateway(app, test_settings(tmp_path, database={"url": postgres_url}), adapters=[adapter])
    if not history_fetched:
        gw.history_prefetch = HistoryPrefetch("auto", quiet_turns=0)
    await gw.start()
    try:
        record = await counted_session(gw)

        def inbound(text_: str) -> Inbound:
            return counted_message(record.id, text_)

        first = await gw.submit(inbound("m1"))
        lock = locker.transaction()
        await lock.start()
        await locker.execute("SELECT 1 FROM inbox WHERE id = $1 FOR UPDATE", first.inbound_id)
        may_reply.set()
        assert await asyncio.wait_for(adapter.replies.get(), 10) == "reply to m1"  # delivered, not stored
        await until(lambda: gw.dispatcher.running_inbound(record.id) is None and gw.dispatcher.busy(record.id))
        await gw.submit(inbound("m2"))
        await asyncio.sleep(0.3)
        waited = len(seen) == 1  # the second turn has not read its session yet
        await lock.rollback()
        assert await asyncio.wait_for(adapter.replies.get(), 10) == "reply to m2"
        await until(lambda: not gw.dispatcher.busy(record.id))
    finally:
        await gw.stop()
        await locker.close()

    assert waited
    assert seen == [[], ["m1", "reply to m1"]]
