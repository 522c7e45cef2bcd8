"""``StreamPump`` (and the ``ReplyStream`` around it) against a fake ``StreamSink``.

The sink is the pump's one collaborator: a recording fake whose ``frame`` can be held at a gate
(a platform's pacer waiting out its budget) or made to fail. Every wait below is on an event
the sink sets, never on the clock; ``min_interval`` is either 0 or an hour, so a test that
passes cannot depend on timing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from gateway.outbound import MessageRef
from gateway.streaming import ReplyStream, StreamPump

WAIT = 5.0  # seconds any awaited event may take before the test fails


class FakeSink:
    """A ``StreamSink`` that records what it gets, in one log of what happened in which order."""

    def __init__(self, min_interval: float = 0.0) -> None:
        self.min_interval = min_interval
        self.frames: list[str] = []
        self.closes: list[tuple[str, bool]] = []
        self.log: list[str] = []
        self.gate: asyncio.Event | None = None
        self.failures = 0  # this many frame calls raise, then frames succeed
        self.close_error: Exception | None = None
        self.entered = asyncio.Queue[str]()  # texts as frame() is entered
        self.delivered = asyncio.Queue[str]()  # texts as frame() returns
        self.closed = asyncio.Event()

    async def frame(self, text: str) -> None:
        self.log.append(f"frame> {text}")
        self.entered.put_nowait(text)
        if self.gate is not None:
            await self.gate.wait()
        if self.failures:
            self.failures -= 1
            self.log.append(f"frame! {text}")
            raise ConnectionError("platform said 502")
        self.frames.append(text)
        self.log.append(f"frame< {text}")
        self.delivered.put_nowait(text)

    async def close(self, text: str, *, stopped: bool) -> list[MessageRef]:
        self.log.append(f"close {text}")
        self.closes.append((text, stopped))
        self.closed.set()
        if self.close_error is not None:
            raise self.close_error
        return ["ref-1"]

    @property
    def attempts(self) -> int:
        """How many times ``frame`` was called."""
        return sum(entry.startswith("frame>") for entry in self.log)

    async def next_delivered(self) -> str:
        return await asyncio.wait_for(self.delivered.get(), WAIT)

    async def next_entered(self) -> str:
        return await asyncio.wait_for(self.entered.get(), WAIT)


async def spin(times: int = 20) -> None:
    """Let every ready task run (a pump that would send a frame now has sent it after this)."""
    for _ in range(times):
        await asyncio.sleep(0)


# -- the collaborators, each built in one place ------------------------------------------------


@pytest.fixture
def sink() -> FakeSink:
    return FakeSink()


@pytest.fixture
async def make_pump() -> AsyncIterator[Callable[..., StreamPump]]:
    """Builds pumps, started unless told (one place to follow a constructor change); ends them after."""
    pumps: list[StreamPump] = []

    def make(sink: Any, *, start: bool = True) -> StreamPump:
        pump = StreamPump(sink)
        if start:
            pump.start()
        pumps.append(pump)
        return pump

    yield make
    for pump in pumps:
        if pump._task is not None and not pump._task.done():
            pump._task.cancel()


@pytest.fixture
async def pump(make_pump, sink) -> StreamPump:
    return make_pump(sink)


class Finished:
    """What ``ReplyStream`` hands its ``finish`` callback (the session stores it)."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, str, bool, list[MessageRef]]] = []
        self.done = asyncio.Event()

    async def __call__(self, handle: Any, text: str, stopped: bool, refs: list[MessageRef]) -> None:
        self.calls.append((handle, text, stopped, refs))
        self.done.set()


@pytest.fixture
def make_reply_stream() -> Callable[..., tuple[ReplyStream, Finished]]:
    def make(sink: Any) -> tuple[ReplyStream, Finished]:
        finished = Finished()

        async def open_sink() -> tuple[Any, Any]:
            return sink, "message-1"

        return ReplyStream(open_sink, finished), finished

    return make


# -- the pump --------------------------------------------------------------------------------


async def test_each_frame_carries_the_whole_text_so_far(pump, sink):
    pump.push("Hel")
    assert await sink.next_delivered() == "Hel"
    pump.push("Hello")
    assert await sink.next_delivered() == "Hello"
    pump.push("Hello, world")
    assert await sink.next_delivered() == "Hello, world"
    assert await pump.close(stopped=False) == ["ref-1"]
    assert sink.frames == ["Hel", "Hello", "Hello, world"]
    assert sink.closes == [("Hello, world", False)]
    assert pump.frames == 3


async def test_a_slow_sink_gets_fewer_larger_frames_and_loses_nothing(pump, sink):
    sink.gate = asyncio.Event()  # the platform's pacer holds the first frame
    text = "t"
    pump.push(text)
    assert await sink.next_entered() == "t"
    for token in "he quick brown fox":  # tokens keep arriving while the frame waits
        text += token
        pump.push(text)
        await spin(2)
    assert sink.attempts == 1  # nothing was sent beside the held frame
    sink.gate.set()
    assert await sink.next_delivered() == "t"
    assert await sink.next_delivered() == "the quick brown fox"  # one frame for all that came meanwhile
    await pump.close(stopped=False)
    assert sink.frames == ["t", "the quick brown fox"]
    assert sink.closes == [("the quick brown fox", False)]


async def test_frames_arrive_in_order_and_only_grow(pump, sink):
    sink.gate = asyncio.Event()
    texts = [" ".join(str(n) for n in range(k)) for k in range(1, 60)]
    for index, text in enumerate(texts):
        pump.push(text)
        if index % 7 == 0:  # the pacer lets a frame through now and then
            sink.gate.set()
            await spin(3)
            sink.gate.clear()
    sink.gate.set()
    await pump.close(stopped=False)
    positions = [texts.index(frame) for frame in sink.frames]
    assert positions == sorted(set(positions))  # in push order, never the same text twice
    assert sink.closes == [(texts[-1], False)]


async def test_the_same_text_is_never_sent_twice(pump, sink):
    pump.push("same")
    assert await sink.next_delivered() == "same"
    pump.push("same")
    pump.push("same")
    await spin()
    assert sink.attempts == 1
    pump.push("same, more")
    assert await sink.next_delivered() == "same, more"
    await pump.close(stopped=False)
    assert sink.frames == ["same", "same, more"]


async def test_min_interval_spaces_frames_and_close_does_not_wait_for_it(make_pump):
    sink = FakeSink(min_interval=3600.0)  # an hour: a second frame would need the clock to run
    pump = make_pump(sink)
    pump.push("a")
    assert await sink.next_delivered() == "a"
    pump.push("ab")
    pump.push("abc")
    await spin()
    assert sink.attempts == 1  # held back by the interval
    await asyncio.wait_for(pump.close(stopped=False), WAIT)  # close cuts the wait short
    assert sink.frames == ["a"]
    assert sink.closes == [("abc", False)]


async def test_close_finishes_the_frame_in_flight_then_delivers_the_whole_text(pump, sink):
    sink.gate = asyncio.Event()
    pump.push("first")
    assert await sink.next_entered() == "first"
    pump.push("first and the rest")
    closing = asyncio.create_task(pump.close(stopped=False))
    await spin()
    assert not closing.done() and sink.closes == []  # waits for the frame the platform holds
    sink.gate.set()
    assert await asyncio.wait_for(closing, WAIT) == ["ref-1"]
    # The text that came during the frame goes out with close, not as one more frame.
    assert sink.log == ["frame> first", "frame< first", "close first and the rest"]


async def test_a_failing_frame_is_logged_and_streaming_goes_on(pump, sink, caplog):
    sink.failures = 1
    with caplog.at_level(logging.WARNING, logger="chatgate.streaming"):
        pump.push("lost frame")
        assert await sink.next_entered() == "lost frame"
        await spin()
        pump.push("lost frame, then more")
        assert await sink.next_delivered() == "lost frame, then more"
        await pump.close(stopped=False)
    assert sink.frames == ["lost frame, then more"]
    assert sink.closes == [("lost frame, then more", False)]
    assert pump.frames == 1
    warnings = [r for r in caplog.records if "stream frame failed" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].exc_info is not None


async def test_a_text_whose_frame_failed_is_delivered_by_close(pump, sink):
    sink.failures = 10**6  # the platform refuses every edit
    for text in ("a", "ab", "abc"):
        pump.push(text)
        await sink.next_entered()
    await pump.close(stopped=False)
    assert sink.frames == [] and pump.frames == 0
    assert sink.closes == [("abc", False)]


async def test_an_empty_stream_sends_no_frame_and_closes_once_with_nothing(pump, sink):
    await spin()
    assert await pump.close(stopped=False) == ["ref-1"]
    assert sink.frames == [] and sink.closes == [("", False)]


async def test_stopped_is_passed_to_the_sink(pump, sink):
    pump.push("cut short")
    await sink.next_delivered()
    await pump.close(stopped=True)
    assert sink.closes == [("cut short", True)]


async def test_a_failing_close_reaches_the_caller(pump, sink):
    sink.close_error = ConnectionError("final send failed")
    pump.push("x")
    with pytest.raises(ConnectionError):
        await pump.close(stopped=False)


async def test_a_pump_never_started_still_delivers_on_close(make_pump, sink):
    pump = make_pump(sink, start=False)
    pump.push("direct")
    assert await pump.close(stopped=False) == ["ref-1"]
    assert sink.frames == [] and sink.closes == [("direct", False)]


# -- the ReplyStream around it ---------------------------------------------------------------


async def test_reply_stream_pumps_what_is_written_and_finishes_once(make_reply_stream, sink):
    reply, finished = make_reply_stream(sink)
    async with reply:
        reply.write("Hello")
        assert await sink.next_delivered() == "Hello"
        reply.write(", world")
    assert sink.closes == [("Hello, world", False)]
    assert finished.calls == [("message-1", "Hello, world", False, ["ref-1"])]


async def test_cancelling_the_handler_mid_stream_still_delivers_what_was_written(make_reply_stream, sink):
    reply, finished = make_reply_stream(sink)
    sink.gate = asyncio.Event()

    async def handler() -> None:
        async with reply:
            reply.write("partial answer")
            await asyncio.Event().wait()  # the model hangs; the user presses stop

    task = asyncio.create_task(handler())
    assert await sink.next_entered() == "partial answer"  # a frame is in flight when stop comes
    task.cancel()
    await spin()
    sink.gate.set()
    await asyncio.wait_for(finished.done.wait(), WAIT)
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sink.closes == [("partial answer", True)]
    assert finished.calls == [("message-1", "partial answer", True, ["ref-1"])]


async def test_a_handler_error_ends_the_stream_as_not_stopped(make_reply_stream, sink):
    reply, finished = make_reply_stream(sink)
    with pytest.raises(ValueError):
        async with reply:
            reply.write("half")
            raise ValueError("model failed")
    assert sink.closes == [("half", False)]
    assert finished.calls[0][1:3] == ("half", False)


async def test_a_failing_final_send_still_finishes_the_reply(make_reply_stream, sink, caplog):
    sink.close_error = ConnectionError("platform down")
    reply, finished = make_reply_stream(sink)
    with caplog.at_level(logging.ERROR, logger="chatgate.streaming"):
        async with reply:
            reply.write("kept")
    # The text is still stored (no refs: nothing reached the platform), and the failure logged.
    assert finished.calls == [("message-1", "kept", False, [])]
    assert any("could not deliver the final text" in r.getMessage() for r in caplog.records)


async def test_with_no_sink_the_text_is_still_finished(make_reply_stream):
    reply, finished = make_reply_stream(None)  # no adapter owns the conversation
    async with reply:
        reply.write("to nobody")
    assert finished.calls == [("message-1", "to nobody", False, [])]


async def test_writes_after_the_end_are_ignored_and_non_text_is_refused(make_reply_stream, sink):
    reply, finished = make_reply_stream(sink)
    async with reply:
        with pytest.raises(TypeError):
            reply.write(42)  # type: ignore[arg-type]
        reply.write("")
        reply.write("ok")
    reply.write(" too late")
    assert reply.text == "ok"
    assert finished.calls[0][1] == "ok"
    with pytest.raises(RuntimeError):
        async with reply:
            pass
