"""``TurnRunner`` on its own: one work item in, one turn run, everything it leaves behind checked.

The runner is called directly with ``WorkItem``s recorded in a real Store (no dispatcher in
between), inside a real Gateway whose only adapter is a recording fake: it sees exactly what an
adapter's outbox would, and notes the inbox status at the moment a turn is announced over.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

import gateway
from gateway.dispatch import WorkItem
from gateway.inbound import Inbound, PlatformUser
from gateway.outbound import Capabilities, Limits, MessageRef
from gateway.runtime import Gateway
from gateway.store.records import SessionRecord
from gateway.testing import test_settings
from gateway.turns import TurnRunner
from gateway.types import Attachment, Message, SessionChannel, UserInfo

WAIT = 5.0
ERROR_MESSAGE = "Something broke on our side (test)."
USER = PlatformUser("test", "user-1")


@dataclass
class Ended:
    inbound_id: str | None
    error: str | None
    inbox_status: tuple[str, str | None] | None
    """The inbox row's ``(status, error)`` when the turn was announced over."""


@dataclass
class Outboxes:
    """What the fake adapter was asked to do, for every session."""

    texts: list[tuple[str, str]] = field(default_factory=list)  # (session id, text)
    ended: list[Ended] = field(default_factory=list)
    turn_ended: asyncio.Event = field(default_factory=asyncio.Event)


class FakeOutbox:
    def __init__(self, adapter: FakeAdapter, session_id: str) -> None:
        self.adapter = adapter
        self.session_id = session_id

    async def send_text(self, message_id: str, text: str) -> list[MessageRef]:
        self.adapter.sent.texts.append((self.session_id, text))
        return [f"ref-{message_id}"]

    def open_stream(self, message_id: str) -> Any:
        raise NotImplementedError("no streams in these tests")

    async def show_block(self, message_id: str, envelope: dict[str, Any], previous: Any) -> list[MessageRef]:
        return [f"ref-{message_id}"]

    async def notify(self, text: str, detail: str) -> None:
        return None

    async def end_turn(self, inbound_id: str | None, error: str | None) -> None:
        record = await self.adapter.gateway.store.inbox.get(inbound_id or "")
        status = None if record is None else (record.status, record.error)
        self.adapter.sent.ended.append(Ended(inbound_id, error, status))
        self.adapter.sent.turn_ended.set()


class FakeAdapter:
    """The one adapter of the test gateway: owns the ``chat`` channel, records everything."""

    channel_types = ("chat",)
    limits = Limits(max_text=100_000)
    capabilities = Capabilities()

    def __init__(self) -> None:
        self.sent = Outboxes()
        self.gateway: Any = None

    async def start(self, running: Any) -> None:
        self.gateway = running

    async def stop(self) -> None:
        return None

    def outbox(self, channel: SessionChannel, session_id: str, turn: str | None = None) -> FakeOutbox:
        return FakeOutbox(self, session_id)

    def resolve_attachment(self, attachment: Attachment) -> Attachment:
        return attachment

    def describe(self) -> str:
        return "turn-runner test recorder"


# -- the collaborators, each built in one place ------------------------------------------------


@pytest.fixture
def app() -> gateway.App:
    """The app; each test registers its handlers on it (the runner looks them up per turn)."""
    return gateway.App("turns")


@pytest.fixture
def adapter() -> FakeAdapter:
    return FakeAdapter()


@pytest.fixture
def dispatch_settings() -> dict[str, Any]:
    return {"error_message": ERROR_MESSAGE}


@pytest.fixture
async def running(app, adapter, tmp_path, database_url, dispatch_settings) -> AsyncIterator[Gateway]:
    settings = test_settings(tmp_path, database={"url": database_url}, dispatch=dispatch_settings)
    built = Gateway(app, settings, adapters=[adapter])
    await built.start()
    try:
        yield built
    finally:
        await built.stop()


@pytest.fixture
def make_runner(running) -> Callable[[], TurnRunner]:
    """Builds TurnRunners on the test gateway (one place to follow a constructor change)."""
    return lambda: TurnRunner(running)


@pytest.fixture
def runner(make_runner) -> TurnRunner:
    return make_runner()


@pytest.fixture
async def session(running) -> SessionRecord:
    user = await running.store.users.resolve(USER)
    return await running.store.sessions.create(SessionChannel("chat"), user)


@pytest.fixture
def make_item(running) -> Callable[..., Awaitable[WorkItem]]:
    """Record a message event in the inbox as ``Dispatcher.submit`` does; returns its work item."""
    counter = iter(range(1_000_000))

    async def make(record: SessionRecord, text: str, *, recovered: bool = False) -> WorkItem:
        inbound = Inbound("message", f"test:{next(counter)}", record.channel, USER,
                          message=Message(text, "user", "chat"), session_id=record.id)
        entry = await running.store.inbox.record(record.id, inbound.dedup_key, "message", inbound.to_json(),
                                                   user_text=text, attachments=[])
        if recovered:  # as Dispatcher.recover builds it: the message id is not known yet
            return WorkItem(entry.id, record.id, Inbound.from_json(inbound.to_json()))
        return WorkItem(entry.id, record.id, inbound, entry.message_id)

    return make


async def stored(running: Gateway, session_id: str) -> list[tuple[str, str, str | None]]:
    messages, _ = await running.store.messages.page(session_id, limit=100)
    return [(m.role, m.text, m.inbound_id) for m in messages]


async def inbox(running: Gateway, inbox_id: str) -> tuple[str, str | None] | None:
    record = await running.store.inbox.get(inbox_id)
    return None if record is None else (record.status, record.error)


# -- on every database: what the turn writes -------------------------------------------------


async def test_session_data_is_saved_after_each_turn_and_after_a_failing_one(app, running, runner, session,
                                                                              make_item):
    @app.message()
    async def handle(s, msg):
        s.data["count"] = s.data.get("count", 0) + 1
        s.data.setdefault("seen", []).append(msg.text)
        if msg.text == "fail":
            raise RuntimeError("after changing data")

    for text in ("a", "b", "fail"):
        await runner(await make_item(session, text))
    record = await running.store.sessions.get(session.id)
    assert record is not None
    assert record.data == {"count": 3, "seen": ["a", "b", "fail"]}


async def test_a_session_deleted_while_its_handler_runs_drops_the_turn_quietly(
    app, running, runner, adapter, session, make_item, caplog
):
    deleted, handler_resumed = asyncio.Event(), asyncio.Event()

    @app.message()
    async def handle(s, msg):
        await deleted.wait()
        handler_resumed.set()
        await s.reply("into the void")  # its session is gone: storing the reply fails
        s.data["never"] = "saved"

    item = await make_item(session, "slow")
    turn = asyncio.create_task(runner(item))
    await asyncio.sleep(0)
    assert await running.sessions.delete(session.id)
    deleted.set()
    with caplog.at_level(logging.INFO, logger="chatgate.turns"):
        await asyncio.wait_for(turn, WAIT)
    assert handler_resumed.is_set()
    assert [e.error for e in adapter.sent.ended] == ["session_deleted"]
    assert ERROR_MESSAGE not in [t for _, t in adapter.sent.texts]  # nobody to apologise to
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # not a handler bug
    assert await running.store.sessions.get(session.id) is None  # the turn brought nothing back
    assert await stored(running, session.id) == []
    assert await inbox(running, item.inbox_id) is None


# -- one database is enough: the turn's control flow -----------------------------------------


class TestTurnFlow:
    @pytest.fixture
    def database_url(self, sqlite_url: str) -> str:
        return sqlite_url

    async def test_a_handler_that_raises_is_logged_the_user_gets_a_short_message_and_the_session_goes_on(
        self, app, running, runner, adapter, session, make_item, caplog
    ):
        @app.message()
        async def handle(s, msg):
            if msg.text == "boom":
                raise ValueError("secret internal detail")
            await s.reply(f"fine: {msg.text}")

        failing = await make_item(session, "boom")
        with caplog.at_level(logging.ERROR, logger="chatgate.turns"):
            await runner(failing)
        raised = [r for r in caplog.records if "raised" in r.getMessage()]
        assert len(raised) == 1 and raised[0].exc_info is not None
        assert raised[0].exc_info[0] is ValueError  # the traceback is in the log ...
        assert adapter.sent.texts == [(session.id, ERROR_MESSAGE)]  # ... not in front of the user
        assert adapter.sent.ended == [Ended(failing.inbox_id, "handler_error", ("done", "handler_error"))]

        after = await make_item(session, "again")
        await runner(after)
        assert adapter.sent.texts[-1] == (session.id, "fine: again")
        assert adapter.sent.ended[-1] == Ended(after.inbox_id, None, ("done", None))

    async def test_the_handler_sees_the_history_without_its_own_message(self, app, runner, session, make_item):
        seen: list[list[tuple[str, str]]] = []

        @app.message()
        async def handle(s, msg):
            seen.append([(m.sender, m.text) for m in s.history])
            await s.reply(f"re: {msg.text}")

        await runner(await make_item(session, "first"))
        await runner(await make_item(session, "second"))
        assert seen == [[], [("user", "first"), ("app", "re: first")]]

    async def test_a_recovered_item_finds_its_stored_message(self, app, running, runner, session, make_item):
        ids: list[str | None] = []

        @app.message()
        async def handle(s, msg):
            ids.append(msg.id)

        item = await make_item(session, "from before the restart", recovered=True)
        assert item.message_id is None
        await runner(item)
        user_message = await running.store.messages.for_inbound(session.id, item.inbox_id, role="user")
        assert user_message is not None and ids == [user_message.id]
        assert [role for role, _, _ in await stored(running, session.id)] == ["user"]  # not stored twice

    async def test_a_session_deleted_before_its_turn_ends_the_turn_without_running(
        self, app, running, runner, adapter, session, make_item
    ):
        ran: list[str] = []

        @app.message()
        async def handle(s, msg):
            ran.append(msg.text)

        item = await make_item(session, "waited in the queue")
        await running.sessions.delete(session.id)
        await runner(item)
        assert ran == []
        assert [(e.inbound_id, e.error) for e in adapter.sent.ended] == [(item.inbox_id, "session_deleted")]

    async def test_a_stopped_turn_keeps_what_it_did_and_ends_as_stopped(
        self, app, running, runner, adapter, session, make_item
    ):
        started = asyncio.Event()

        @app.message()
        async def handle(s, msg):
            await s.reply("working on it")
            s.data["progress"] = "half"
            started.set()
            await asyncio.Event().wait()

        item = await make_item(session, "long job")
        turn = asyncio.create_task(runner(item))
        await asyncio.wait_for(started.wait(), WAIT)
        turn.cancel()  # what Dispatcher.stop does
        await asyncio.wait_for(asyncio.gather(turn, return_exceptions=True), WAIT)
        assert adapter.sent.ended == [Ended(item.inbox_id, "stopped", ("done", "stopped"))]
        record = await running.store.sessions.get(session.id)
        assert record is not None and record.data == {"progress": "half"}
        assert ("assistant", "working on it", item.inbox_id) in await stored(running, session.id)

    async def test_a_turn_cut_by_shutdown_is_left_to_run_again(self, app, running, runner, adapter, session, make_item):
        started = asyncio.Event()

        @app.message()
        async def handle(s, msg):
            s.data["partial"] = True
            started.set()
            await asyncio.Event().wait()

        item = await make_item(session, "interrupted")
        turn = asyncio.create_task(runner(item))
        await asyncio.wait_for(started.wait(), WAIT)
        await running.dispatcher.close(grace=0)  # shutdown began (the dispatcher is idle otherwise)
        turn.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(turn, WAIT)
        assert await inbox(running, item.inbox_id) == ("pending", None)  # runs again at the next start
        assert adapter.sent.ended == []  # not over: it continues after the restart
        record = await running.store.sessions.get(session.id)
        assert record is not None and record.data == {"partial": True}

    async def test_a_turn_whose_user_is_gone_fails_and_still_ends(
        self, app, running, runner, adapter, make_item
    ):
        ran: list[str] = []

        @app.message()
        async def handle(s, msg):
            ran.append(msg.text)

        orphan = await running.store.sessions.create(SessionChannel("chat"), UserInfo("no-such-user"))
        item = await make_item(orphan, "hello?")
        await runner(item)
        assert ran == []
        assert await inbox(running, item.inbox_id) == ("failed", "user missing")
        # Whoever waits on the turn (a REST call, the widget's typing line) learns it is over.
        assert [(e.inbound_id, e.error) for e in adapter.sent.ended] == [(item.inbox_id, "handler_error")]

    async def test_replies_are_sent_stored_and_the_inbox_row_marked_done(
        self, app, running, runner, adapter, session, make_item
    ):
        @app.message()
        async def handle(s, msg):
            await s.reply(f"one: {msg.text}")
            await s.reply("two")

        item = await make_item(session, "hi")
        await runner(item)
        assert adapter.sent.texts == [(session.id, "one: hi"), (session.id, "two")]
        assert await stored(running, session.id) == [
            ("user", "hi", item.inbox_id), ("assistant", "one: hi", item.inbox_id), ("assistant", "two", item.inbox_id),
        ]
        # Marked done before the end is announced: whoever learns of the end and asks finds it done.
        assert adapter.sent.ended == [Ended(item.inbox_id, None, ("done", None))]


    async def test_enter_hooks_run_on_the_first_turn_of_a_session_only(
        self, app, runner, make_runner, adapter, session, make_item
    ):
        entered: list[str] = []

        @app.enter()
        async def hello(s):
            entered.append(s.id)
            await s.reply("welcome")

        @app.message()
        async def handle(s, msg):
            await s.reply(msg.text)

        await runner(await make_item(session, "a"))
        await make_runner()(await make_item(session, "b"))  # another runner: a restarted process
        assert entered == [session.id]
        assert [t for _, t in adapter.sent.texts] == ["welcome", "a", "b"]


class TestTimeout:
    @pytest.fixture
    def database_url(self, sqlite_url: str) -> str:
        return sqlite_url

    @pytest.fixture
    def dispatch_settings(self) -> dict[str, Any]:
        return {"error_message": ERROR_MESSAGE, "handler_timeout": 0.2, "timeout_message": "Too slow (test)."}

    async def test_a_handler_past_its_deadline_is_cut_and_the_user_told(
        self, app, running, runner, adapter, session, make_item
    ):
        @app.message()
        async def handle(s, msg):
            if msg.text == "hang":
                await asyncio.Event().wait()
            await s.reply("quick")

        hanging = await make_item(session, "hang")
        await asyncio.wait_for(runner(hanging), WAIT)
        assert adapter.sent.texts == [(session.id, "Too slow (test).")]
        assert adapter.sent.ended == [Ended(hanging.inbox_id, "timeout", ("done", "timeout"))]
        await runner(await make_item(session, "next"))
        assert adapter.sent.texts[-1] == (session.id, "quick")

    async def test_a_timeout_the_handler_raises_itself_is_a_handler_error(
        self, app, running, runner, adapter, session, make_item
    ):
        @app.message()
        async def handle(s, msg):
            raise TimeoutError("an upstream API timed out")

        item = await make_item(session, "x")
        await runner(item)
        assert adapter.sent.texts == [(session.id, ERROR_MESSAGE)]
        assert adapter.sent.ended[0].error == "handler_error"
