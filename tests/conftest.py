"""Shared fixtures: real databases (a SQLite file, this machine's PostgreSQL), real services.

Tests that need PostgreSQL or Redis skip when the server is not reachable, unless
``CHATGATE_REQUIRE_SERVICES=1`` (CI sets it): then they fail, so CI never passes by skipping.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

POSTGRES_HOST = os.environ.get("CHATGATE_TEST_PG_HOST", "127.0.0.1")
POSTGRES_PORT = int(os.environ.get("CHATGATE_TEST_PG_PORT", "5432"))
POSTGRES_USER = os.environ.get("CHATGATE_TEST_PG_USER", "postgres")
REDIS_URL = os.environ.get("CHATGATE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
CHROMIUM = "/usr/bin/chromium"


def services_required() -> bool:
    return os.environ.get("CHATGATE_REQUIRE_SERVICES") == "1"


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def require_service(name: str, host: str, port: int) -> None:
    """Skip (locally) or fail (CI) when a service a test needs is not there."""
    if _reachable(host, port):
        return
    message = f"{name} is not reachable on {host}:{port}"
    if services_required():
        pytest.fail(message + " and CHATGATE_REQUIRE_SERVICES=1")
    pytest.skip(message)


async def _admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(host=POSTGRES_HOST, port=POSTGRES_PORT, user=POSTGRES_USER, database="postgres")
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    require_service("PostgreSQL", POSTGRES_HOST, POSTGRES_PORT)
    name = f"chatgate_test_{secrets.token_hex(6)}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql+asyncpg://{POSTGRES_USER}@{POSTGRES_HOST}:{POSTGRES_PORT}/{name}"
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'chatgate.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request, tmp_path) -> str:
    """Runs a test once on a SQLite file and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'chatgate.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def redis_url() -> str:
    require_service("Redis", "127.0.0.1", 6379)
    return REDIS_URL


@pytest.fixture
def chromium_path() -> str:
    if not os.path.exists(CHROMIUM):
        message = f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)"
        if services_required():
            pytest.fail(message)
        pytest.skip(message)
    return CHROMIUM


@pytest.fixture
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


__all__ = ["AsyncIterator", "require_service", "services_required"]


@pytest.fixture
async def store(database_url) -> AsyncIterator[Any]:
    """A real, open Store on ``database_url`` (SQLite file, then PostgreSQL)."""
    from gateway.store import Store

    opened = Store(database_url)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
async def postgres_store(postgres_url) -> AsyncIterator[Any]:
    """An open Store on PostgreSQL, its per-turn statements on asyncpg (``Store.postgres_turns``)."""
    from gateway.store import Store

    opened = Store(postgres_url)
    await opened.open()
    assert opened.postgres_turns is not None
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
def turn_statements() -> Iterator[list[str]]:
    """Every statement the per-turn connections run from now on (``listen_statements``)."""
    from gateway.store.postgres_turns import listen_statements

    seen: list[str] = []
    stop = listen_statements(seen.append)
    yield seen
    stop()

