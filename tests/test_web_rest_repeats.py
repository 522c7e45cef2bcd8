"""A re-POST of the same content joins the first turn in any web process and after a restart.

The PromptRails SDK re-POSTs ``send_message`` on timeouts and 5xx. Within ``web.dedup_window``
the repeat must not run the handler again, whichever process it reaches: the claim is written in
the transaction that records the first message, so the store answers it, not a process's memory.
"""

from __future__ import annotations

import asyncio

import aiohttp

import gateway
from adapters.web.testing import base_url, running_gateway
from tests.support import until

KEY = "repeat-key-one"


def counting_app(calls: list[str], release: asyncio.Event | None = None) -> gateway.App:
    app = gateway.App("repeat-bot")

    @app.message()
    async def echo(session: gateway.Session, msg: gateway.Message) -> None:
        calls.append(msg.text)
        if release is not None and msg.text.startswith("slow"):
            await release.wait()
        await session.reply(f"echo: {msg.text}")

    return app


async def post(http: aiohttp.ClientSession, url: str, session_id: str, content: str) -> dict:
    async with http.post(f"{url}/api/v1/chat/sessions/{session_id}/messages", json={"content": content},
                         headers={"X-API-Key": KEY}) as response:
        assert response.status == 201, await response.text()
        return (await response.json())["data"]


async def new_session(http: aiohttp.ClientSession, url: str) -> str:
    async with http.post(f"{url}/api/v1/chat/sessions", json={"agent_id": "repeat-bot"},
                         headers={"X-API-Key": KEY}) as response:
        assert response.status == 201, await response.text()
        return (await response.json())["data"]["id"]


async def test_a_repost_to_another_web_process_joins_the_running_turn(tmp_path, postgres_url, redis_url):
    calls: list[str] = []
    release = asyncio.Event()
    shared = {"web": {"api_keys": [KEY]}, "database": {"url": postgres_url}, "redis": {"url": redis_url}}
    async with running_gateway(counting_app(calls, release), tmp_path / "a", **shared) as first, \
            running_gateway(counting_app(calls, release), tmp_path / "b", **shared) as second, \
            aiohttp.ClientSession() as http:
        session_id = await new_session(http, base_url(first))
        original = asyncio.create_task(post(http, base_url(first), session_id, "slow question"))
        await until(lambda: calls == ["slow question"])
        repeat = asyncio.create_task(post(http, base_url(second), session_id, "slow question"))
        await asyncio.sleep(0.3)  # the repeat is waiting on the first turn, not running its own
        assert calls == ["slow question"]
        release.set()
        answers = await asyncio.gather(original, repeat)
        assert calls == ["slow question"]  # the handler ran once
        assert answers[0]["execution_id"] == answers[1]["execution_id"]
        assert answers[0]["assistant_message"]["content"] == answers[1]["assistant_message"]["content"]
        async with http.get(f"{base_url(second)}/api/v1/chat/sessions/{session_id}/messages",
                            headers={"X-API-Key": KEY}) as response:
            contents = [m["content"] for m in (await response.json())["data"]]
        assert contents == ["slow question", "echo: slow question"]  # each once


async def test_a_repost_after_a_restart_joins_the_finished_turn(tmp_path):
    calls: list[str] = []
    settings = {"web": {"api_keys": [KEY], "dedup_window": 60}}
    async with aiohttp.ClientSession() as http:
        async with running_gateway(counting_app(calls), tmp_path, **settings) as before:
            session_id = await new_session(http, base_url(before))
            first = await post(http, base_url(before), session_id, "hello")
        async with running_gateway(counting_app(calls), tmp_path, **settings) as after:  # same SQLite file
            again = await post(http, base_url(after), session_id, "hello")
            assert calls == ["hello"]
            assert again["execution_id"] == first["execution_id"]
            assert again["assistant_message"]["content"] == "echo: hello"
            other = await post(http, base_url(after), session_id, "something else")
            assert calls == ["hello", "something else"]
            assert other["execution_id"] != first["execution_id"]


async def test_the_same_content_after_the_window_is_a_new_turn(tmp_path):
    calls: list[str] = []
    async with running_gateway(counting_app(calls), tmp_path, web={"api_keys": [KEY], "dedup_window": 0.2}) as gw, \
            aiohttp.ClientSession() as http:
        session_id = await new_session(http, base_url(gw))
        first = await post(http, base_url(gw), session_id, "again?")
        await asyncio.sleep(0.5)  # the claim's window is over (in the store, not only in memory)
        second = await post(http, base_url(gw), session_id, "again?")
        assert calls == ["again?", "again?"]
        assert first["execution_id"] != second["execution_id"]


async def test_a_turn_whose_end_is_seen_before_submit_returns_settles_with_its_own_replies():
    """The watcher subscribes before the event is recorded, so a fast turn's frames (and other
    turns' of the same session) can arrive before the inbound id is known."""
    from adapters.web.rest.turns import RestTurn

    turn = RestTurn("s1", "this-process")

    def reply(turn_id: str, message_id: str) -> dict:
        return {"type": "message", "turn": turn_id, "message": {"id": message_id, "role": "assistant", "text": "x"}}

    for event in (
        reply("other", "m0"),
        reply("mine", "m2"),
        reply("mine", "m1"),
        {"type": "message", "turn": "mine", "message": {"id": "u", "role": "user"}},
        {"type": "turn_end", "inbound_id": "other", "error": None, "told_all": "this-process"},
        {"type": "turn_end", "inbound_id": "mine", "error": None, "told_all": "this-process"},
    ):
        turn.observe(event)
    assert not turn.ended.is_set()
    turn.inbound_id = "mine"
    turn.submitted.set()
    assert turn.settle() and turn.error is None and turn.told_all
    assert [m["id"] for m in turn.replies] == ["m1", "m2"]


async def test_a_turn_that_outlives_its_post_is_joined_and_no_subscription_is_left(tmp_path):
    """The first POST stops waiting at ``send_timeout``; the turn is still watched, so a re-POST
    joins it and gets its reply. Once the turns are over, nothing is subscribed to the session."""
    from adapters.web.outbox import session_topic

    calls: list[str] = []
    release = asyncio.Event()
    settings = {"web": {"api_keys": [KEY], "send_timeout": 1.0, "dedup_window": 60}}
    async with running_gateway(counting_app(calls, release), tmp_path, **settings) as gw, \
            aiohttp.ClientSession() as http:
        session_id = await new_session(http, base_url(gw))
        quick = await post(http, base_url(gw), session_id, "quick")
        assert quick["assistant_message"]["content"] == "echo: quick"
        first = await post(http, base_url(gw), session_id, "slow one")
        assert first["assistant_message"] is None  # send_timeout passed: the user message alone
        repeat = asyncio.create_task(post(http, base_url(gw), session_id, "slow one"))
        await asyncio.sleep(0.1)
        release.set()
        again = await repeat
        assert calls == ["quick", "slow one"]  # the re-POST joined the turn
        assert again["execution_id"] == first["execution_id"]
        assert again["assistant_message"]["content"] == "echo: slow one"
        await until(lambda: session_topic(session_id) not in gw.bus._topics)


async def test_turns_kept_for_the_window_hold_nothing_of_their_own_and_go_without_the_collector(tmp_path):
    """A turn over is kept ``dedup_window`` seconds (thousands of them on a busy gateway): it keeps
    its answer, shares one set flag with every other turn over instead of two events of its own,
    and holds no callback back to itself, so reference counting frees it once the window passed;
    the cyclic collector is not needed (it is switched off here)."""
    import gc
    import weakref

    from adapters.web.adapter import WebAdapter
    from adapters.web.rest.turns import OVER

    calls: list[str] = []
    async with running_gateway(counting_app(calls), tmp_path, web={"api_keys": [KEY], "dedup_window": 0.3}) as gw, \
            aiohttp.ClientSession() as http:
        (web,) = [adapter for adapter in gw._adapters if isinstance(adapter, WebAdapter)]
        session_id = await new_session(http, base_url(gw))
        gc.disable()
        try:
            answers = [await post(http, base_url(gw), session_id, f"question {n}") for n in range(3)]
            kept = list(web.rest.turns._recent.values())
            assert len(kept) == 3
            assert all(turn.ended is OVER and turn.submitted is OVER and turn.on_end is None for turn in kept)
            assert [turn.replies[0]["text"] for turn in kept] == [f"echo: question {n}" for n in range(3)]
            gone = [weakref.ref(turn) for turn in kept]
            del kept
            await asyncio.sleep(0.5)
            await post(http, base_url(gw), session_id, "later")  # forgets the turns past their window
            assert [ref() for ref in gone] == [None, None, None]
        finally:
            gc.enable()
        assert [a["assistant_message"]["content"] for a in answers] == [f"echo: question {n}" for n in range(3)]
