"""The scoped KV store on a real database: every test runs on a SQLite file and on PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from sqlmodel import select

from gateway.collections import ScopeIdentity
from gateway.kv import KVStore
from gateway.store.documents import KVRow
from gateway.types import UserInfo


@pytest.fixture
def kv(store) -> KVStore:
    return KVStore(lambda: store)


ALICE = ScopeIdentity.for_user(UserInfo("alice", org_id="acme"), "s-alice")
ALICE_OTHER_CHAT = ScopeIdentity.for_user(UserInfo("alice", org_id="acme"), "s-alice-2")
BOB = ScopeIdentity.for_user(UserInfo("bob", org_id="acme"), "s-bob")
CAROL = ScopeIdentity.for_user(UserInfo("carol"), "s-carol")


async def test_get_set_delete_and_defaults(kv):
    assert await kv.get("missing") is None
    assert await kv.get("missing", 42) == 42
    await kv.set("greeting", "hello")
    assert await kv.get("greeting") == "hello"
    await kv.set("greeting", {"text": "bye"})  # overwrite, any JSON type
    assert await kv.get("greeting") == {"text": "bye"}
    assert await kv.delete("greeting") is True
    assert await kv.delete("greeting") is False
    assert await kv.get("greeting", "gone") == "gone"


async def test_stored_none_is_not_the_default(kv):
    await kv.set("empty", None)
    assert await kv.get("empty", "default") is None  # as Capsule: the document exists


async def test_json_round_trip_of_nested_unicode_values(kv):
    value = {
        "name": "Zoë 🚀 東京",
        "list": [1, 2.5, True, None, {"deep": ["ü"]}],
        "when": datetime(2026, 1, 2, tzinfo=UTC),
        "tags": ("a", "b"),
    }
    await kv.set("ключ-🔑", value)
    assert await kv.get("ключ-🔑") == {
        "name": "Zoë 🚀 東京",
        "list": [1, 2.5, True, None, {"deep": ["ü"]}],
        "when": "2026-01-02T00:00:00+00:00",
        "tags": ["a", "b"],
    }


async def test_the_four_scopes_are_separate(kv):
    await kv.set("k", "app")
    await kv.set("k", "user alice", scope="user", scope_id="alice")
    await kv.set("k", "owner acme", scope="owner", scope_id="org:acme")
    await kv.set("k", "session s1", scope="session", scope_id="s1")
    assert await kv.get("k") == "app"
    assert await kv.get("k", scope="app", scope_id="ignored for app scope") == "app"
    assert await kv.get("k", scope="user", scope_id="alice") == "user alice"
    assert await kv.get("k", scope="user", scope_id="bob") is None
    assert await kv.get("k", scope="owner", scope_id="org:acme") == "owner acme"
    assert await kv.get("k", scope="session", scope_id="s1") == "session s1"
    assert await kv.get("k", scope="session", scope_id="alice") is None  # scope ids never mix scopes
    await kv.delete("k", scope="user", scope_id="alice")
    assert await kv.get("k") == "app"
    assert await kv.get("k", scope="owner", scope_id="org:acme") == "owner acme"


async def test_session_kv_for_an_identity(kv):
    alice, alice_other_chat, bob, carol = (kv.for_identity(i) for i in (ALICE, ALICE_OTHER_CHAT, BOB, CAROL))
    await alice.set("draft", "in chat 1")  # the default scope is "session", as in Capsule
    await alice.set("theme", "dark", scope="user")
    await alice.set("plan", "pro", scope="owner")
    await alice.set("motd", "hi all", scope="app")

    assert await alice.get("draft") == "in chat 1"
    assert await alice_other_chat.get("draft") is None
    assert await alice_other_chat.get("theme", scope="user") == "dark"
    assert await bob.get("theme", scope="user") is None
    assert await bob.get("plan", scope="owner") == "pro"  # same org
    assert await carol.get("plan", scope="owner") is None  # no org: her own owner scope
    assert await carol.get("motd", scope="app") == "hi all"
    assert await kv.app_scope().get("motd") == "hi all"  # app.get(key)

    await alice.delete("plan", scope="owner")
    assert await bob.get("plan", scope="owner") is None


async def test_synthetic_sessions_share_one_bucket_as_in_capsule(kv):
    scheduled = kv.for_identity(ScopeIdentity.for_user(UserInfo("owner"), ""))
    await scheduled.set("last_run", "today")
    again = kv.for_identity(ScopeIdentity.for_user(UserInfo("owner"), ""))
    assert await again.get("last_run") == "today"


async def test_concurrent_sets_of_one_key_keep_one_entry(kv, store):
    await asyncio.gather(*(kv.set("counter", n, scope="user", scope_id="u") for n in range(20)))
    assert await kv.get("counter", scope="user", scope_id="u") in range(20)
    async with store.session() as session:
        rows = (await session.exec(select(KVRow).where(KVRow.key == "counter"))).all()
    assert len(rows) == 1


async def test_bad_input_raises_value_error(kv):
    with pytest.raises(ValueError, match="scope"):
        await kv.get("k", scope="team")
    with pytest.raises(ValueError, match="key"):
        await kv.set("", 1)
    with pytest.raises(ValueError, match="key"):
        await kv.get(None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="key"):
        await kv.delete("x" * 513)
    with pytest.raises(ValueError, match="scope"):
        await kv.for_identity(ALICE).get("k", scope="everyone")


async def test_unstarted_store_raises_runtime_error():
    kv = KVStore(lambda: None)
    with pytest.raises(RuntimeError, match="not started"):
        await kv.get("k")
