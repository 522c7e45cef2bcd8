"""gateway/loop.py: the event loop `chatgate run` picks (server.event_loop)."""

from __future__ import annotations

import importlib.util

import pytest

from gateway.loop import loop_factory, run, running_loop_name


async def loop_name() -> str:
    return running_loop_name()


def test_asyncio_is_asyncios_own_loop() -> None:
    assert run(loop_name(), "asyncio") == "asyncio"
    assert loop_factory("asyncio") == (None, "asyncio")


@pytest.mark.skipif(importlib.util.find_spec("uvloop") is None, reason="uvloop (chatgate[fast]) is not installed")
def test_auto_and_uvloop_run_on_uvloop_when_it_is_installed() -> None:
    assert run(loop_name(), "auto") == "uvloop"
    assert run(loop_name(), "uvloop") == "uvloop"


@pytest.mark.skipif(importlib.util.find_spec("uvloop") is not None, reason="uvloop is installed")
def test_without_uvloop_auto_falls_back_and_uvloop_says_how_to_get_it() -> None:
    assert run(loop_name(), "auto") == "asyncio"
    with pytest.raises(RuntimeError, match=r"chatgate\[fast\]"):
        loop_factory("uvloop")


async def test_the_start_up_lines_name_the_loop(tmp_path) -> None:
    from gateway import App
    from gateway.runtime import Gateway
    from gateway.testing import test_settings

    gw = Gateway(App("loop"), test_settings(tmp_path))
    await gw.start()
    try:
        assert "event loop: asyncio" in gw.describe()  # pytest-asyncio runs asyncio's own loop
    finally:
        await gw.stop()
