"""``Dispatcher`` on its own: a real Store (SQLite file, then PostgreSQL) and a fake runner.

The runner is the Dispatcher's one collaborator given as a parameter; here it is a small
recording callable that a test can hold at a gate, so every ordering claim of the module
docstring (lanes, the concurrency bound, prompts, stop, recovery, close, purge) is checked
against the dispatcher alone, not through a whole gateway.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import text

from gateway.dispatch import MAX_ATTEMPTS, Dispatcher, WorkItem
from gateway.ids import instant, new_id
from gateway.inbound import ButtonPress, Inbound, PlatformUser
from gateway.store import Store
from gateway.store.records import SessionRecord
from gateway.types import Message, SessionChannel
from tests.support import until

WAIT = 5.0  # seconds an awaited event may take before the test fails
USER = PlatformUser("test", "user-1")


class FakeRunner:
    """Stands in for ``TurnRunner``: records each work item and marks its inbox row done.

    ``hold(text)`` makes the turn for that message text wait until ``release(text)``;
    ``started(text)`` is an event set when that turn begins. ``active`` counts turns running
    now, per session and in total, so overlaps are seen, not guessed from timing.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self.calls: list[tuple[str, str]] = []  # (session id, text) in start order
        self.items: list[WorkItem] = []
        self.finished: list[str] = []
        self.cancelled: list[str] = []
        self.active: dict[str, int] = {}
        self.peak_per_session = 0
        self.peak_total = 0
        self.fail_on: set[str] = set()
        self.leave_unfinished: set[str] = set()
        self._gates: dict[str, asyncio.Event] = {}
        self._started: dict[str, asyncio.Event] = {}

    def hold(self, label: str) -> None:
        self._gates[label] = asyncio.Event()

    def release(self, label: str) -> None:
        self._gates[label].set()

    def started(self, label: str) -> asyncio.Event:
        return self._started.setdefault(label, asyncio.Event())

    async def __call__(self, item: WorkItem) -> None:
        label = item.inbound.message.text if item.inbound.message else item.inbound.kind
        self.calls.append((item.session_id, label))
        self.items.append(item)
        self.active[item.session_id] = self.active.get(item.session_id, 0) + 1
        self.peak_per_session = max(self.peak_per_session, self.active[item.session_id])
        self.peak_total = max(self.peak_total, sum(self.active.values()))
        self.started(label).set()
        try:
            gate = self._gates.get(label)
            if gate is not None:
                await gate.wait()
            if label in self.fail_on:
                raise RuntimeError(f"runner bug on {label}")
            if label not in self.leave_unfinished:
                await self.store.inbox.set_status(item.inbox_id, "done")
            self.finished.append(label)
        except asyncio.CancelledError:
            self.cancelled.append(label)
            raise
        finally:
            self.active[item.session_id] -= 1

    def texts(self, session_id: str | None = None) -> list[str]:
        return [label for sid, label in self.calls if session_id is None or sid == session_id]


# -- the collaborators, each built in one place ------------------------------------------------


@pytest.fixture
def runner(store) -> FakeRunner:
    return FakeRunner(store)


@pytest.fixture
async def make_dispatcher(store) -> AsyncIterator[Callable[..., Dispatcher]]:
    """Builds Dispatchers (one place to follow a constructor change); closes them all after,
    before the store closes."""
    built: list[Dispatcher] = []

    def make(store: Store, runner: Any, **options: Any) -> Dispatcher:
        dispatcher = Dispatcher(store, runner, **options)
        built.append(dispatcher)
        return dispatcher

    yield make
    for dispatcher in built:
        await dispatcher.close(grace=0)


@pytest.fixture
async def dispatcher(store, runner, make_dispatcher) -> Dispatcher:
    return make_dispatcher(store, runner)


async def new_session(store: Store, name: str = "user-1") -> SessionRecord:
    user = await store.users.resolve(PlatformUser("test", name))
    return await store.sessions.create(SessionChannel("chat"), user)


@pytest.fixture
async def session(store) -> SessionRecord:
    return await new_session(store)


_keys = iter(range(1_000_000))


def message(session: SessionRecord, text_: str, key: str | None = None) -> Inbound:
    return Inbound(
        "message", key or f"test:{next(_keys)}", SessionChannel("chat"), USER,
        message=Message(text_, "user", "chat"), session_id=session.id,
    )


def event(session: SessionRecord, kind: str, **fields: Any) -> Inbound:
    return Inbound(kind, f"test:{next(_keys)}", SessionChannel("chat"), USER, session_id=session.id,  # type: ignore[arg-type]
                   **fields)


async def status_of(store: Store, inbox_id: str) -> tuple[str, str | None] | None:
    record = await store.inbox.get(inbox_id)
    return None if record is None else (record.status, record.error)


async def _is(value: Any, expected: Any) -> bool:
    return (await value) == expected


# -- intake ----------------------------------------------------------------------------------


async def test_concurrent_submits_of_one_key_run_once(dispatcher, runner, session):
    results = await asyncio.gather(*[dispatcher.submit(message(session, "same", key="slack:Ev1"), session.id)
                                     for _ in range(5)])
    await dispatcher.wait_idle(10)
    assert sum(not r.duplicate for r in results) == 1
    assert len({r.inbound_id for r in results}) == 1
    assert runner.texts() == ["same"]


# -- restart, shutdown, purge ----------------------------------------------------------------


async def test_recover_reruns_unfinished_events_in_order_after_a_restart(database_url, make_dispatcher):
    first_store = Store(database_url)
    await first_store.open()
    first_runner = FakeRunner(first_store)
    first = make_dispatcher(first_store, first_runner)
    record = await new_session(first_store)
    await first.submit(message(record, "done before the crash"), record.id)
    await first.wait_idle(10)
    first_runner.hold("interrupted")
    interrupted = await first.submit(message(record, "interrupted"), record.id)
    await first.submit(message(record, "queued"), record.id)
    # A stop recorded but not handled when the process died: stale after a restart.
    stale_stop = await first_store.inbox.record(record.id, "k-stop", "stop", event(record, "stop").to_json())
    await asyncio.wait_for(first_runner.started("interrupted").wait(), 5)
    await first.close(grace=0)  # the process goes away mid-turn
    assert first_runner.cancelled == ["interrupted"]
    await first_store.close()

    second_store = Store(database_url)  # a new process on the same database
    await second_store.open()
    try:
        second_runner = FakeRunner(second_store)
        second = make_dispatcher(second_store, second_runner)
        await second.recover()
        await second.wait_idle(10)
        assert second_runner.texts() == ["interrupted", "queued"]
        # A recovered item has no message id yet: the runner looks the stored message up.
        assert second_runner.items[0].message_id is None
        assert second_runner.items[0].inbox_id == interrupted.inbound_id
        assert await status_of(second_store, interrupted.inbound_id) == ("done", None)
        assert await status_of(second_store, stale_stop.id) == ("done", "process restarted")
        assert await second.recover() == 0  # nothing left over
    finally:
        await second.close()
        await second_store.close()


async def test_recover_leaves_alone_the_events_this_process_already_has(dispatcher, runner, store, session):
    """The gateway starts its adapters (and the HTTP server) before it recovers: an event that
    arrived meanwhile is unfinished in the inbox, but it is this process's own, queued or running."""
    runner.hold("running")
    await dispatcher.submit(message(session, "running"), session.id)
    await dispatcher.submit(message(session, "queued"), session.id)
    await asyncio.wait_for(runner.started("running").wait(), WAIT)
    await dispatcher.recover()
    runner.release("running")
    await dispatcher.wait_idle(10)
    assert runner.texts() == ["running", "queued"]  # each once
    assert await store.inbox.unfinished() == []  # both done, neither counted as interrupted


async def test_purge_forgets_finished_events_past_retention(store, runner, make_dispatcher, session):
    dispatcher = make_dispatcher(store, runner, dedup_retention=timedelta(hours=1))
    old_done = await dispatcher.submit(message(session, "old", key="k-old"), session.id)
    old_pending = await store.inbox.record(session.id, "k-old-pending", "message", {"kind": "message"})
    recent_done = await dispatcher.submit(message(session, "recent", key="k-recent"), session.id)
    await dispatcher.wait_idle(10)
    # Two events recorded two hours ago: an id names the instant its event was recorded (the
    # purge finds old events by it), so both are rewritten.
    two_hours_ago_ns = time.time_ns() - 2 * 3600 * 10**9
    aged = {old_done.inbound_id: new_id(two_hours_ago_ns), old_pending.id: new_id(two_hours_ago_ns + 1000)}
    async with store.engine.begin() as conn:
        for was, now_id in aged.items():
            await conn.execute(text("UPDATE inbox SET id = :id, created_at = :t WHERE id = :was"),
                               {"id": now_id, "t": instant(two_hours_ago_ns), "was": was})
    old_done_id, old_pending_id = aged[old_done.inbound_id], aged[old_pending.id]

    purge = asyncio.create_task(dispatcher.purge_forever())
    try:
        await until(lambda: _is(store.inbox.get(old_done_id), None))
    finally:
        purge.cancel()
        await asyncio.gather(purge, return_exceptions=True)
    assert await status_of(store, old_pending_id) == ("pending", None)  # unfinished: kept to rerun
    assert await status_of(store, recent_done.inbound_id) == ("done", None)  # inside retention
    # The forgotten key is no longer a duplicate; the remembered one still is.
    again = await dispatcher.submit(message(session, "old again", key="k-old"), session.id)
    repeated = await dispatcher.submit(message(session, "recent", key="k-recent"), session.id)
    await dispatcher.wait_idle(10)
    assert not again.duplicate and repeated.duplicate
    assert runner.texts() == ["old", "recent", "old again"]


# -- lanes, prompts, stop, shutdown, intake details (a SQLite file is enough) -----------------


class TestLanes:
    """Ordering, the bound, prompts, stop, shutdown and intake details: the database kind plays
    no part here. What PostgreSQL does its own way (a unique-key race, recovery by a second
    process, the purge) is covered by the module-level tests, which run on both."""

    @pytest.fixture
    def database_url(self, sqlite_url: str) -> str:
        return sqlite_url

    async def test_one_session_runs_one_event_at_a_time_in_arrival_order(self, dispatcher, runner, session):
        runner.hold("m0")  # the first turn holds the lane while the rest arrive
        for n in range(6):
            await dispatcher.submit(message(session, f"m{n}"), session.id)
        await asyncio.wait_for(runner.started("m0").wait(), 5)
        assert runner.texts() == ["m0"]
        assert dispatcher.busy(session.id)
        runner.release("m0")
        await dispatcher.wait_idle(10)
        assert runner.texts() == [f"m{n}" for n in range(6)]
        assert runner.finished == runner.texts()
        assert runner.peak_per_session == 1
        assert not dispatcher.busy(session.id)

    async def test_sessions_run_concurrently(self, dispatcher, runner, store):
        a, b = await new_session(store, "a"), await new_session(store, "b")
        runner.hold("a1")
        runner.hold("b1")
        await dispatcher.submit(message(a, "a1"), a.id)
        await dispatcher.submit(message(b, "b1"), b.id)
        # Both turns start while the other is still held: nothing orders one session behind another.
        await asyncio.wait_for(asyncio.gather(runner.started("a1").wait(), runner.started("b1").wait()), 5)
        assert runner.peak_total == 2
        runner.release("a1")
        runner.release("b1")
        await dispatcher.wait_idle(10)

    async def test_max_concurrent_bounds_the_sessions_that_run_at_once(self, store, runner, make_dispatcher):
        dispatcher = make_dispatcher(store, runner, max_concurrent=2)
        sessions = [await new_session(store, f"u{n}") for n in range(4)]
        for n, record in enumerate(sessions):
            runner.hold(f"s{n}")
            await dispatcher.submit(message(record, f"s{n}"), record.id)
        await asyncio.wait_for(asyncio.gather(runner.started("s0").wait(), runner.started("s1").wait()), 5)
        for _ in range(20):  # let the waiting lanes reach the bound (they would start now if they could)
            await asyncio.sleep(0)
        assert runner.texts() == ["s0", "s1"]
        assert all(dispatcher.busy(record.id) for record in sessions)  # the others wait, queued
        assert dispatcher.running_inbound(sessions[2].id) is None
        runner.release("s0")
        await asyncio.wait_for(runner.started("s2").wait(), 5)
        assert runner.texts() == ["s0", "s1", "s2"]
        for label in ("s1", "s2", "s3"):
            runner.release(label)
        await dispatcher.wait_idle(10)
        assert sorted(runner.finished) == ["s0", "s1", "s2", "s3"]
        assert runner.peak_total == 2

    async def test_a_freed_slot_goes_to_the_session_that_waited_longest(self, store, runner, make_dispatcher):
        """A session with more events queued goes behind the sessions already waiting for a slot."""
        dispatcher = make_dispatcher(store, runner, max_concurrent=1)
        a, b, c = [await new_session(store, name) for name in "abc"]
        runner.hold("a1")
        await dispatcher.submit(message(a, "a1"), a.id)
        await dispatcher.submit(message(a, "a2"), a.id)
        await dispatcher.submit(message(b, "b1"), b.id)
        await dispatcher.submit(message(c, "c1"), c.id)
        await asyncio.wait_for(runner.started("a1").wait(), 5)
        runner.release("a1")
        await dispatcher.wait_idle(10)
        assert runner.texts() == ["a1", "b1", "c1", "a2"]
        assert runner.peak_total == 1

    async def test_a_turn_recording_its_outcome_is_not_stopped_and_close_lets_it_finish(
        self, dispatcher, runner, store, session
    ):
        """Once its handler is over (``WorkItem.finishing``), a turn records its outcome whole: a
        stop does not cancel it, and shutdown waits for it past the grace."""
        gate = asyncio.Event()
        finishing = asyncio.Event()

        async def finishing_runner(item: WorkItem) -> None:
            item.finishing = True  # as TurnRunner does once the handler returned
            finishing.set()
            await gate.wait()
            await store.inbox.set_status(item.inbox_id, "done")

        dispatcher.runner = finishing_runner
        accepted = await dispatcher.submit(message(session, "almost done"), session.id)
        await asyncio.wait_for(finishing.wait(), 5)
        assert dispatcher.stop(session.id) is False
        closing = asyncio.create_task(dispatcher.close(grace=1.0))
        await asyncio.sleep(1.3)  # past the grace: still finishing, not cancelled (it gets one more)
        assert not closing.done()
        gate.set()
        await asyncio.wait_for(closing, 10)
        assert await status_of(store, accepted.inbound_id) == ("done", None)
        assert session.id not in dispatcher.interrupted

    async def test_a_turn_writing_its_status_hands_the_lane_over_and_keeps_the_session_busy(
        self, dispatcher, runner, store, session
    ):
        """A turn calls ``WorkItem.hand_over`` just before it writes its status (``TurnRunner``):
        the session's next event starts then, while the first turn still waits for its write.
        The session stays busy (its lease held, ``wait_idle`` waiting) until that write is done,
        and neither a stop nor close cuts it."""
        status_gate = asyncio.Event()
        handed_over = asyncio.Event()
        idle_calls: list[str] = []
        dispatcher.on_idle = idle_calls.append

        async def handing_over(item: WorkItem) -> None:
            if item.inbound.message is not None and item.inbound.message.text == "first":
                item.finishing = True
                assert item.hand_over is not None
                item.hand_over(asyncio.get_running_loop().create_future())
                handed_over.set()
                await status_gate.wait()  # the status write's round trip, made long
                await store.inbox.set_status(item.inbox_id, "done")
                runner.finished.append("first")
                return
            await runner(item)

        dispatcher.runner = handing_over
        first = await dispatcher.submit(message(session, "first"), session.id)
        await asyncio.wait_for(handed_over.wait(), 5)
        assert dispatcher.running_inbound(session.id) is None  # nothing handles an event here now
        assert dispatcher.busy(session.id)
        runner.hold("second")
        await dispatcher.submit(message(session, "second"), session.id)
        await asyncio.wait_for(runner.started("second").wait(), 5)  # started before the first is written
        assert dispatcher.stop(session.id) is True  # stops the second; the first records its outcome
        for _ in range(20):
            await asyncio.sleep(0)
        assert runner.cancelled == ["second"]
        assert dispatcher.busy(session.id) and idle_calls == []
        with pytest.raises(TimeoutError):
            await dispatcher.wait_idle(0.2)
        closing = asyncio.create_task(dispatcher.close(grace=0.5))
        await asyncio.sleep(0.7)  # past the grace: still writing its status, not cancelled (it gets one more)
        assert not closing.done()
        status_gate.set()
        await asyncio.wait_for(closing, 10)
        assert await status_of(store, first.inbound_id) == ("done", None)
        assert runner.finished == ["first"]
        assert session.id not in dispatcher.interrupted
        assert not dispatcher.busy(session.id)
        assert idle_calls == [session.id]  # the lease goes back only once the first is written

    async def test_a_handed_over_turn_frees_its_slot_for_another_session(self, store, runner, make_dispatcher):
        dispatcher = make_dispatcher(store, runner, max_concurrent=1)
        a, b = await new_session(store, "a"), await new_session(store, "b")
        status_gate = asyncio.Event()

        async def handing_over(item: WorkItem) -> None:
            if item.session_id == a.id:
                assert item.hand_over is not None
                item.hand_over(asyncio.get_running_loop().create_future())
                await status_gate.wait()
                await store.inbox.set_status(item.inbox_id, "done")
                return
            await runner(item)

        dispatcher.runner = handing_over
        await dispatcher.submit(message(a, "a1"), a.id)
        await dispatcher.submit(message(b, "b1"), b.id)
        await asyncio.wait_for(runner.started("b1").wait(), 5)
        await until(lambda: not dispatcher.busy(b.id))
        assert dispatcher.busy(a.id)
        status_gate.set()
        await dispatcher.wait_idle(10)
        assert not dispatcher.busy(a.id)

    async def test_running_inbound_names_the_event_being_handled(self, dispatcher, runner, session):
        runner.hold("first")
        first = await dispatcher.submit(message(session, "first"), session.id)
        await dispatcher.submit(message(session, "second"), session.id)
        await asyncio.wait_for(runner.started("first").wait(), 5)
        assert dispatcher.running_inbound(session.id) == first.inbound_id
        runner.release("first")
        await dispatcher.wait_idle(10)
        assert dispatcher.running_inbound(session.id) is None

    async def test_a_runner_that_raises_is_logged_and_the_lane_goes_on(self, dispatcher, runner, session, caplog):
        runner.fail_on.add("boom")
        await dispatcher.submit(message(session, "boom"), session.id)
        await dispatcher.submit(message(session, "after"), session.id)
        with caplog.at_level(logging.ERROR, logger="chatgate.dispatch"):
            await dispatcher.wait_idle(10)
        assert runner.finished == ["after"]
        failures = [r for r in caplog.records if "failed outside the handler" in r.getMessage()]
        assert failures and failures[0].exc_info is not None  # with its traceback

    async def test_an_event_answering_a_waiting_prompt_resolves_it_instead_of_a_new_turn(
        self, dispatcher, runner, store, session
    ):
        answers: list[Any] = []

        async def prompting_runner(item: WorkItem) -> None:
            await runner(item)
            if item.inbound.message and item.inbound.message.text == "ask":
                waiter = dispatcher.prompts.register(session.id, "approval", "block-1")
                try:
                    answers.append(await waiter)
                finally:
                    dispatcher.prompts.unregister(session.id, "block-1")

        dispatcher.runner = prompting_runner
        await dispatcher.submit(message(session, "ask"), session.id)
        await until(lambda: dispatcher.prompts.waiting(session.id, "approval"))
        queued = await dispatcher.submit(message(session, "queued behind the prompt"), session.id)
        press_elsewhere = event(session, "button", button=ButtonPress("block-2", "approve"))
        other_block = await dispatcher.submit(press_elsewhere, session.id)
        answer = await dispatcher.submit(event(session, "button", button=ButtonPress("block-1", "approve")), session.id)
        await dispatcher.wait_idle(10)
        assert answers == ["approve"]
        # The answer never became a turn; the press on another block and the message queued as turns.
        assert runner.texts() == ["ask", "queued behind the prompt", "button"]
        assert [i.inbox_id for i in runner.items[1:]] == [queued.inbound_id, other_block.inbound_id]
        assert await until(lambda: _is(status_of(store, answer.inbound_id), ("done", None)))

    async def test_a_signal_nobody_waits_for_is_closed_not_run(self, dispatcher, runner, store, session):
        accepted = await dispatcher.submit(event(session, "signal", prompt_id="gone", payload={"ok": True}), session.id)
        await dispatcher.close()  # waits for the background status write
        assert runner.calls == []
        assert await status_of(store, accepted.inbound_id) == ("done", "no prompt was waiting")

    async def test_stop_cancels_the_running_handler_and_the_lane_goes_on(self, dispatcher, runner, store, session):
        runner.hold("long")
        await dispatcher.submit(message(session, "long"), session.id)
        await dispatcher.submit(message(session, "next"), session.id)
        await asyncio.wait_for(runner.started("long").wait(), 5)
        stop = await dispatcher.submit(event(session, "stop"), session.id)
        await dispatcher.wait_idle(10)
        assert runner.cancelled == ["long"]
        assert runner.finished == ["next"]  # a stop ends the running turn, not the ones queued after it
        assert "stop" not in runner.texts()  # a stop never queues
        await dispatcher.close()
        assert await status_of(store, stop.inbound_id) == ("done", None)

    async def test_stop_with_nothing_running_is_harmless(self, dispatcher, runner, session):
        assert dispatcher.stop(session.id) is False
        await dispatcher.submit(event(session, "stop"), session.id)
        await dispatcher.submit(message(session, "after"), session.id)
        await dispatcher.wait_idle(10)
        assert runner.finished == ["after"]

    async def test_close_lets_the_running_handler_finish_then_refuses_events(self, dispatcher, runner, store, session):
        runner.hold("finishing")
        accepted = await dispatcher.submit(message(session, "finishing"), session.id)
        await asyncio.wait_for(runner.started("finishing").wait(), 5)
        closing = asyncio.create_task(dispatcher.close(grace=30))
        await asyncio.sleep(0)
        assert dispatcher.closing and not closing.done()
        with pytest.raises(RuntimeError, match="shutting down"):
            await dispatcher.submit(message(session, "too late"), session.id)
        runner.release("finishing")
        await asyncio.wait_for(closing, 10)
        assert runner.finished == ["finishing"] and runner.cancelled == []
        assert await status_of(store, accepted.inbound_id) == ("done", None)

    async def test_close_cancels_a_handler_past_the_grace_and_leaves_it_for_the_next_start(
        self, dispatcher, runner, store, session
    ):
        runner.hold("stuck")
        stuck = await dispatcher.submit(message(session, "stuck"), session.id)
        behind = await dispatcher.submit(message(session, "behind"), session.id)
        await asyncio.wait_for(runner.started("stuck").wait(), 5)
        await asyncio.wait_for(dispatcher.close(grace=0.01), 10)
        assert runner.cancelled == ["stuck"]
        assert runner.texts() == ["stuck"]  # nothing new starts once shutdown began
        unfinished = {row.id for row in await store.inbox.unfinished()}
        assert {stuck.inbound_id, behind.inbound_id} <= unfinished

    async def test_a_session_abandoned_while_it_waits_for_a_slot_runs_nothing_and_goes_idle(
        self, store, runner, make_dispatcher, caplog
    ):
        """Its lease was lost while its events waited for a slot: once a slot frees, nothing of it
        runs here, and the claims hear that it went idle (the lane's task used to fail there,
        popping an event from the emptied queue)."""
        dispatcher = make_dispatcher(store, runner, max_concurrent=1)
        idle: list[str] = []
        dispatcher.on_idle = idle.append
        a, b = await new_session(store, "a"), await new_session(store, "b")
        runner.hold("a1")
        await dispatcher.submit(message(a, "a1"), a.id)
        await dispatcher.submit(message(b, "b1"), b.id)
        await asyncio.wait_for(runner.started("a1").wait(), 5)
        dispatcher.abandon(b.id)
        assert not dispatcher.busy(b.id)
        with caplog.at_level(logging.ERROR, logger="asyncio"):
            runner.release("a1")
            await dispatcher.wait_idle(10)
            await asyncio.sleep(0.05)
            gc.collect()  # a task that failed unobserved is reported as it is collected
        assert runner.texts() == ["a1"]
        assert sorted(idle) == sorted([a.id, b.id])
        assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == []

    async def test_a_session_waiting_for_a_slot_is_busy_and_does_not_start_after_close(
        self, store, runner, make_dispatcher
    ):
        dispatcher = make_dispatcher(store, runner, max_concurrent=1)
        a, b = await new_session(store, "a"), await new_session(store, "b")
        runner.hold("a1")
        await dispatcher.submit(message(a, "a1"), a.id)
        waiting = await dispatcher.submit(message(b, "b1"), b.id)
        await asyncio.wait_for(runner.started("a1").wait(), 5)
        for _ in range(20):
            await asyncio.sleep(0)
        assert dispatcher.busy(b.id)  # its event waits for a slot: the session is not idle
        closing = asyncio.create_task(dispatcher.close(grace=30))
        await asyncio.sleep(0)
        runner.release("a1")  # frees the slot while shutdown is under way
        await asyncio.wait_for(closing, 10)
        assert runner.texts() == ["a1"]  # b1 did not start during shutdown ...
        unfinished = {row.id for row in await store.inbox.unfinished()}
        assert waiting.inbound_id in unfinished  # ... it runs at the next start

    async def test_submit_records_the_event_and_its_user_message_before_returning(
        self, dispatcher, runner, store, session
    ):
        runner.hold("hello")
        inbound = message(session, "hello")
        accepted = await dispatcher.submit(inbound, session.id)
        assert not accepted.duplicate and accepted.session_id == session.id
        # Durable on return (the adapter acknowledges the platform now): a fresh read finds both.
        assert await status_of(store, accepted.inbound_id) == ("pending", None)
        stored = await store.messages.for_inbound(session.id, accepted.inbound_id, role="user")
        assert stored is not None and stored.text == "hello"
        assert inbound.message is not None and inbound.message.id == stored.id
        await asyncio.wait_for(runner.started("hello").wait(), 5)
        assert runner.items[0].message_id == stored.id
        runner.release("hello")
        await dispatcher.wait_idle(10)
        assert await status_of(store, accepted.inbound_id) == ("done", None)

    async def test_a_repeated_dedup_key_is_dropped(self, dispatcher, runner, store, session):
        runner.hold("once")
        first = await dispatcher.submit(message(session, "once", key="tg:1:100"), session.id)
        again_while_running = await dispatcher.submit(message(session, "once", key="tg:1:100"), session.id)
        runner.release("once")
        await dispatcher.wait_idle(10)
        again_after_done = await dispatcher.submit(message(session, "once", key="tg:1:100"), session.id)
        await dispatcher.wait_idle(10)
        assert again_while_running.duplicate and again_after_done.duplicate
        assert again_while_running.inbound_id == again_after_done.inbound_id == first.inbound_id
        assert runner.texts() == ["once"]
        messages, _ = await store.messages.page(session.id, limit=10)
        assert [m.text for m in messages] == ["once"]  # the user message is not stored twice

    async def test_an_event_interrupted_too_often_is_given_up(self, store, make_dispatcher, session, caplog):
        crasher = FakeRunner(store)
        crasher.leave_unfinished.add("poison")  # as if the process died in every attempt
        accepted = await make_dispatcher(store, crasher).submit(message(session, "poison"), session.id)
        for _ in range(MAX_ATTEMPTS):
            dispatcher = make_dispatcher(store, crasher)
            await dispatcher.recover()
            await dispatcher.wait_idle(10)
        # Once by submit, then MAX_ATTEMPTS - 1 recoveries; the last recovery gives it up.
        assert crasher.texts() == ["poison"] * MAX_ATTEMPTS
        status = await status_of(store, accepted.inbound_id)
        assert status is not None and status[0] == "failed" and f"{MAX_ATTEMPTS} times" in (status[1] or "")


# -- at start-up, inside a gateway -----------------------------------------------------------


class EagerAdapter:
    """An adapter that hands the gateway an event the moment it starts, as Telegram's polling
    does with the updates that waited while the process was down."""

    channel_types = ("chat",)

    def __init__(self, inbound: Inbound) -> None:
        self.inbound = inbound

    async def start(self, running: Any) -> None:
        await running.submit(self.inbound)

    async def stop(self) -> None:
        return None

    def outbox(self, channel: SessionChannel, session_id: str, turn: str | None = None) -> None:
        return None  # replies go nowhere; the test looks at what the handler saw

    def resolve_attachment(self, attachment: Any) -> Any:
        return attachment

    def describe(self) -> str:
        return "eager test adapter"


async def test_an_interrupted_event_runs_before_one_that_arrives_at_start_up(tmp_path):
    import gateway
    from gateway.runtime import Gateway
    from gateway.testing import test_settings

    settings = test_settings(tmp_path)
    before = Store(settings.database.url)  # the process that died: it recorded "older", no more
    await before.open()
    record = await new_session(before)
    older = message(record, "older")
    await before.inbox.record(record.id, older.dedup_key, "message", older.to_json(), user_text="older")
    await before.close()

    seen: list[str] = []
    app = gateway.App("start-up order")

    @app.message()
    async def handle(session, msg):
        seen.append(msg.text)

    running = Gateway(app, settings, adapters=[EagerAdapter(message(record, "newer"))])
    await running.start()
    try:
        await running.dispatcher.wait_idle(10)
    finally:
        await running.stop()
    assert seen == ["older", "newer"]  # one session's events run in arrival order
