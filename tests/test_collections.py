"""Collections on a real database: every test runs on a SQLite file and on PostgreSQL."""

from __future__ import annotations

import asyncio
import contextvars
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlmodel import select

from gateway.collections import (
    CollectionManager,
    CollectionRow,
    Column,
    ScopeIdentity,
)
from gateway.store import Store
from gateway.store.documents import SCAN_BATCH, DocumentRow, DuplicateKeyError
from gateway.types import UserInfo


@dataclass
class Harness:
    """A manager wired the way the core wires it: a store getter and a handler-context identity."""

    store: Store
    manager: CollectionManager
    identity: contextvars.ContextVar[ScopeIdentity | None]
    changes: list[tuple[str, str]]

    def acting_as(self, identity: ScopeIdentity | None) -> contextvars.Token:
        return self.identity.set(identity)


@pytest.fixture
def harness(store) -> Harness:
    identity: contextvars.ContextVar[ScopeIdentity | None] = contextvars.ContextVar("identity", default=None)
    changes: list[tuple[str, str]] = []

    async def on_change(collection: str, reason: str) -> None:
        changes.append((collection, reason))

    manager = CollectionManager(lambda: store, identity.get, on_change=on_change)
    return Harness(store, manager, identity, changes)


ALICE = ScopeIdentity.for_user(UserInfo("alice", org_id="acme"), "s-alice")
BOB = ScopeIdentity.for_user(UserInfo("bob", org_id="acme"), "s-bob")
CAROL = ScopeIdentity.for_user(UserInfo("carol"), "s-carol")
ALICE_OTHER_CHAT = ScopeIdentity.for_user(UserInfo("alice", org_id="acme"), "s-alice-2")


# -- CRUD and the JSON round trip -------------------------------------------------------------------


async def test_insert_find_round_trip_of_nested_unicode_documents(harness):
    notes = harness.manager.unscoped().notes
    document = {
        "title": "Grüße aus Köln — 東京 🚀",
        "nested": {"list": [1, 2.5, None, True, {"deep": ["ü", {"x": "😀"}]}], "empty": {}},
        "when": datetime(2026, 5, 1, 12, 30, tzinfo=UTC),
        "count": 0,
    }
    row = await notes.insert_one(document)
    assert isinstance(row, CollectionRow)
    assert row["_id"] == row["id"] == row.id
    assert re.fullmatch(r"[0-9A-Z]{26}", row.id)  # a ULID
    assert row["when"] == "2026-05-01T12:30:00+00:00"  # datetimes are stored as ISO strings
    assert "_id" not in document  # the caller's dict is not changed

    found = await notes.find_one({"_id": row.id})
    assert found == row
    assert found["nested"]["list"][4]["deep"][1]["x"] == "😀"
    assert found["title"] == "Grüße aus Köln — 東京 🚀"
    assert await notes.find_one({"title": {"$regex": "東京"}}) == row
    assert await notes.find_one({"when": {"$gte": datetime(2026, 1, 1, tzinfo=UTC)}}) == row
    assert await notes.count() == 1


async def test_insert_with_own_id_and_duplicates(harness):
    notes = harness.manager.unscoped().notes
    row = await notes.insert_one({"_id": "custom-1", "n": 1})
    assert row.id == "custom-1"
    with pytest.raises(DuplicateKeyError):
        await notes.insert_one({"_id": "custom-1", "n": 2})
    with pytest.raises(ValueError):
        await notes.insert_many([{"_id": "a"}, {"_id": "a"}])
    with pytest.raises(ValueError):  # all or nothing: "b" is not kept either
        await notes.insert_many([{"_id": "b"}, {"_id": "custom-1"}])
    assert await notes.count() == 1
    # the same _id may exist in another collection
    assert (await harness.manager.unscoped().other.insert_one({"_id": "custom-1"})).id == "custom-1"
    with pytest.raises(ValueError):
        await notes.insert_one({"_id": 5})
    with pytest.raises(ValueError):
        await notes.insert_one(["not", "a", "dict"])  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        await notes.insert_one({"$set": 1})


async def test_rows_read_back_can_be_reinserted_without_the_alias(harness):
    notes = harness.manager.unscoped().notes
    row = await notes.insert_one({"text": "x"})
    copy = await harness.manager.unscoped().archive.insert_one(dict(row))
    assert copy.id == row.id
    stored = await harness.manager.unscoped().archive.find_one()
    assert stored == {"_id": row.id, "id": row.id, "text": "x"}
    async with harness.store.session() as session:
        raw = (await session.exec(select(DocumentRow).where(DocumentRow.collection == "archive"))).one()
    assert raw.doc == {"_id": row.id, "text": "x"}  # "id" is an alias, never stored


FILTER_CASES = [
    ({"age": 30}, ["b"]),
    ({"age": {"$ne": 30}}, ["a", "c", "d", "e"]),
    ({"age": {"$gt": 30}}, ["c", "d"]),
    ({"age": {"$gte": 30}}, ["b", "c", "d"]),
    ({"age": {"$lt": 30}}, ["a"]),
    ({"age": {"$lte": 30}}, ["a", "b"]),
    ({"age": {"$in": [20, 40]}}, ["a", "c"]),
    ({"age": {"$nin": [20, 40]}}, ["b", "d", "e"]),
    ({"age": {"$exists": False}}, ["e"]),
    ({"name": {"$regex": "^a", "$options": "i"}}, ["a", "e"]),
    ({"name": {"$not": {"$regex": "^A"}}}, ["b", "c", "d", "e"]),
    ({"$and": [{"age": {"$gt": 10}}, {"tags": "x"}]}, ["a", "c"]),
    ({"$or": [{"age": 20}, {"name": "Dora"}]}, ["a", "d"]),
    ({"$nor": [{"tags": "x"}, {"age": {"$exists": False}}]}, ["b", "d"]),
    ({"profile.city": "Paris"}, ["b", "c"]),
    ({"tags": {"$all": ["x", "y"]}}, ["c"]),
    ({"age": {"$gt": "20"}}, []),  # a string never compares with numbers
    ({"_id": {"$in": ["a", "c", "zz"]}}, ["a", "c"]),
    ({"_id": "d"}, ["d"]),
    ({"_id": {"$ne": "d"}}, ["a", "b", "c", "e"]),
]


@pytest.mark.parametrize(("filter", "expected"), FILTER_CASES)
async def test_filters_select_the_right_documents(harness, filter, expected):
    people = harness.manager.unscoped().people
    await people.insert_many(
        [
            {"_id": "a", "name": "Ann", "age": 20, "tags": ["x"]},
            {"_id": "b", "name": "Bob", "age": 30, "tags": [], "profile": {"city": "Paris"}},
            {"_id": "c", "name": "Cid", "age": 40, "tags": ["x", "y"], "profile": {"city": "Paris"}},
            {"_id": "d", "name": "Dora", "age": 50, "profile": {"city": "Rome"}},
            {"_id": "e", "name": "anon"},
        ]
    )
    rows = await people.find(filter)
    assert [row.id for row in rows] == expected
    assert await people.count(filter) == len(expected)


async def test_sort_skip_limit_and_natural_order(harness):
    items = harness.manager.unscoped().items
    inserted = await items.insert_many([{"n": n % 4, "label": f"item-{n:02d}"} for n in range(12)])
    natural = await items.find()
    assert [row.id for row in natural] == [row.id for row in inserted]  # insertion order
    assert [row["label"] for row in await items.find(sort={"_id": -1}, limit=2)] == ["item-11", "item-10"]
    by_n = await items.find(sort={"n": 1, "label": -1})
    assert [row["label"] for row in by_n[:4]] == ["item-08", "item-04", "item-00", "item-09"]
    page = await items.find({"n": {"$gte": 1}}, sort="-label", skip=2, limit=3)
    assert [row["label"] for row in page] == ["item-09", "item-07", "item-06"]
    assert [row["label"] for row in await items.find(skip=10)] == ["item-10", "item-11"]
    assert [row["label"] for row in await items.find({"n": 3}, skip=1, limit=1)] == ["item-07"]
    with pytest.raises(ValueError):
        await items.find(limit=-1)
    with pytest.raises(ValueError):
        await items.find(sort={"n": 0})


async def test_scans_cross_batches(harness):
    big = harness.manager.unscoped().big
    total = SCAN_BATCH * 2 + 37
    await big.insert_many([{"i": i, "even": i % 2 == 0} for i in range(total)])
    evens = await big.find({"even": True})
    assert len(evens) == (total + 1) // 2
    assert [row["i"] for row in evens[:3]] == [0, 2, 4]
    assert await big.count({"even": False}) == total // 2
    assert [row["i"] for row in await big.find({"even": False}, skip=SCAN_BATCH, limit=2)] == [
        2 * SCAN_BATCH + 1,
        2 * SCAN_BATCH + 3,
    ]
    assert (await big.find_one({"i": total - 1}))["i"] == total - 1
    assert (await big.delete_many({"even": True})) == {"deleted": (total + 1) // 2}
    assert await big.count() == total // 2


# -- updates -----------------------------------------------------------------------------------------


async def test_update_one_operators_and_results(harness):
    notes = harness.manager.unscoped().notes
    row = await notes.insert_one({"title": "a", "n": 1, "tags": ["x"]})
    assert await notes.update_one({"_id": row.id}, {"title": "b"}) == {"matched": 1, "modified": 1}
    assert await notes.update_one({"_id": row.id}, {"title": "b"}) == {"matched": 1, "modified": 0}
    assert await notes.update_one({"title": "zzz"}, {"title": "c"}) == {"matched": 0, "modified": 0}
    await notes.update_one(
        {"title": "b"},
        {"$inc": {"n": 2}, "$push": {"tags": "y"}, "$set": {"meta.by": "me"}, "$unset": {"gone": ""}},
    )
    await notes.update_one({"_id": row.id}, {"$addToSet": {"tags": "x"}})
    await notes.update_one({"_id": row.id}, {"$pull": {"tags": "y"}})
    with pytest.raises(ValueError, match="conflict"):  # one path, two operators: MongoDB refuses too
        await notes.update_one({"_id": row.id}, {"$addToSet": {"tags": "x"}, "$pull": {"tags": "y"}})
    found = await notes.find_one({"_id": row.id})
    assert found == {"_id": row.id, "id": row.id, "title": "b", "n": 3, "tags": ["x"], "meta": {"by": "me"}}


async def test_update_one_touches_only_the_first_match(harness):
    notes = harness.manager.unscoped().notes
    await notes.insert_many([{"k": 1, "seen": False}, {"k": 1, "seen": False}])
    await notes.update_one({"k": 1}, {"seen": True})
    assert [row["seen"] for row in await notes.find()] == [True, False]


@pytest.mark.parametrize(
    "update",
    [{}, {"$set": {"a": 1}, "b": 2}, {"$inc": {"n": "one"}}, {"$rename": {"a": 5}}, {"$bogus": {"a": 1}}],
)
async def test_malformed_updates_raise_value_error(harness, update):
    notes = harness.manager.unscoped().notes
    await notes.insert_one({"_id": "x", "n": 1, "s": "text"})
    with pytest.raises(ValueError):
        await notes.update_one({"_id": "x"}, update)
    assert (await notes.find_one({"_id": "x"}))["n"] == 1


async def test_update_errors_from_the_stored_document(harness):
    notes = harness.manager.unscoped().notes
    await notes.insert_one({"_id": "x", "s": "text"})
    with pytest.raises(ValueError, match="non-numeric"):
        await notes.update_one({"_id": "x"}, {"$inc": {"s": 1}})
    with pytest.raises(ValueError, match="immutable"):
        await notes.update_one({"_id": "x"}, {"$set": {"_id": "y"}})
    with pytest.raises(ValueError, match="unsupported query operator"):
        await notes.find({"s": {"$near": 1}})
    assert await notes.find_one({"_id": "x"}) == {"_id": "x", "id": "x", "s": "text"}


async def test_upsert_inserts_then_updates(harness):
    counters = harness.manager.unscoped().counters
    first = await counters.update_one(
        {"name": "visits", "kind": {"$eq": "page"}, "n": {"$gt": 100}},
        {"$inc": {"n": 1}, "$setOnInsert": {"created": "now"}},
        upsert=True,
    )
    assert first["matched"] == 0 and first["modified"] == 0 and first["upserted_id"]
    stored = await counters.find_one({"name": "visits"})
    upserted = first["upserted_id"]
    assert stored == {"_id": upserted, "id": upserted, "name": "visits", "kind": "page", "n": 1, "created": "now"}
    second = await counters.update_one(
        {"name": "visits"}, {"$inc": {"n": 1}, "$setOnInsert": {"created": "x"}}, upsert=True
    )
    assert second == {"matched": 1, "modified": 1}
    stored = await counters.find_one({"name": "visits"})
    assert stored["n"] == 2 and stored["created"] == "now"
    assert await counters.count() == 1


async def test_concurrent_upserts_of_one_id_make_one_document(harness):
    counters = harness.manager.unscoped().counters
    await asyncio.gather(*(counters.update_one({"_id": "shared"}, {"$inc": {"n": 1}}, upsert=True) for _ in range(10)))
    assert await counters.find(None) == [{"_id": "shared", "id": "shared", "n": 10}]


async def test_concurrent_inc_from_20_tasks_loses_nothing(harness):
    counters = harness.manager.unscoped().counters
    row = await counters.insert_one({"name": "hits", "n": 0, "log": []})

    async def bump(task: int) -> None:
        for step in range(3):
            result = await counters.update_one({"name": "hits"}, {"$inc": {"n": 1}, "$push": {"log": f"{task}-{step}"}})
            assert result == {"matched": 1, "modified": 1}

    await asyncio.gather(*(bump(task) for task in range(20)))
    stored = await counters.find_one({"_id": row.id})
    assert stored["n"] == 60
    assert sorted(stored["log"]) == sorted(f"{task}-{step}" for task in range(20) for step in range(3))


async def test_concurrent_inc_from_two_processes_loses_nothing(database_url, store):
    """Two engines and two managers, as two gateway processes have: the compare-and-swap decides."""
    second_store = Store(database_url)
    await second_store.open()
    try:
        first = CollectionManager(lambda: store, lambda: None).unscoped().counters
        second = CollectionManager(lambda: second_store, lambda: None).unscoped().counters
        await first.insert_one({"_id": "hits", "n": 0})

        async def bump(counters) -> None:
            for _ in range(3):
                await counters.update_one({"_id": "hits"}, {"$inc": {"n": 1}})

        await asyncio.gather(*(bump(first if task % 2 else second) for task in range(20)))
        assert (await first.find_one({"_id": "hits"}))["n"] == 60
    finally:
        await second_store.close()


async def test_concurrent_deletes_delete_once(harness):
    jobs = harness.manager.unscoped().jobs
    await jobs.insert_many([{"state": "queued", "i": i} for i in range(5)])
    results = await asyncio.gather(*(jobs.delete_one({"state": "queued"}) for _ in range(8)))
    assert sorted(result["deleted"] for result in results) == [0, 0, 0, 1, 1, 1, 1, 1]
    assert await jobs.count() == 0


# -- deletes -----------------------------------------------------------------------------------------


async def test_delete_one_many_and_rows(harness):
    notes = harness.manager.unscoped().notes
    rows = await notes.insert_many([{"k": k} for k in ("a", "a", "b", "c", "d")])
    assert await notes.delete_one({"k": "a"}) == {"deleted": 1}
    assert [row["k"] for row in await notes.find()] == ["a", "b", "c", "d"]
    assert await notes.delete_one({"k": "zz"}) == {"deleted": 0}
    assert await notes.delete_many({"k": {"$in": ["a", "b"]}}) == {"deleted": 2}
    assert await notes.delete_rows([rows[3], rows[4].id]) == {"deleted": 2}
    assert await notes.count() == 0
    with pytest.raises(ValueError):
        await notes.delete_rows([])
    with pytest.raises(ValueError):
        await notes.delete_many(None)


# -- Django-style queries ----------------------------------------------------------------------------


async def test_django_style_queries(harness):
    tasks = harness.manager.unscoped().tasks
    await tasks.insert_many(
        [
            {"title": "Write report", "priority": 3, "done": False},
            {"title": "review Report", "priority": 1, "done": True},
            {"title": "Ship it", "priority": 2, "done": False},
            {"title": "Plan", "priority": 5, "done": False},
        ]
    )
    open_tasks = await tasks.filter(done=False).order_by("-priority")
    assert [row["title"] for row in open_tasks] == ["Plan", "Write report", "Ship it"]
    assert [row["title"] for row in await tasks.filter(title__contains="REPORT").order_by("priority")] == [
        "review Report",
        "Write report",
    ]
    assert [row["title"] for row in await tasks.filter(title__startswith="w")] == ["Write report"]
    assert [row["title"] for row in await tasks.filter(title__endswith="IT")] == ["Ship it"]
    query = tasks.filter(priority__gte=2).filter(priority__lt=5)  # both conditions hold
    assert sorted(row["priority"] for row in await query) == [2, 3]
    assert await query.count() == 2
    assert [row["priority"] for row in await tasks.all().order_by("priority").offset(1).limit(2)] == [2, 3]
    assert [row["priority"] for row in await tasks.exclude(done=False)] == [1]
    assert (await tasks.filter(priority__in=[5, 9]).first())["title"] == "Plan"
    assert await tasks.filter(priority=99).first() is None
    assert (await tasks.filter(priority=2).one())["title"] == "Ship it"
    with pytest.raises(ValueError):
        await tasks.filter(done=False).one()
    with pytest.raises(ValueError):
        await tasks.filter(priority=99).one()
    plan = await tasks.get(title="Plan")
    assert plan is not None and await tasks.get(id=plan.id) == plan
    assert await tasks.get(title="nope") is None
    # keys starting with "_" are silently ignored, as in Capsule
    assert len(await tasks.filter(_title="Plan")) == 4
    with pytest.raises(ValueError):
        tasks.filter(priority__between=1)
    titles = [row["title"] async for row in tasks.filter(done=True)]
    assert titles == ["review Report"]


async def test_query_delete_and_row_helpers(harness):
    tasks = harness.manager.unscoped().tasks
    await tasks.insert_many([{"p": p} for p in range(6)])
    assert await tasks.filter(p__gte=4).delete() == {"deleted": 2}
    assert await tasks.all().order_by("-p").limit(1).delete() == {"deleted": 1}  # only the selected row
    assert sorted(row["p"] for row in await tasks.all()) == [0, 1, 2]
    row = await tasks.get(p=1)
    assert await row.update({"p": 10, "note": "changed"}) == {"matched": 1, "modified": 1}
    assert row["p"] == 10 and row["note"] == "changed" and row.id == row["id"]
    await row.update({"$inc": {"p": 5}})
    assert row["p"] == 15  # refreshed from the store, not patched locally
    assert (await tasks.get(id=row.id))["p"] == 15
    assert await row.delete() == {"deleted": 1}
    assert await tasks.get(id=row.id) is None


# -- scoping -----------------------------------------------------------------------------------------


async def test_user_scope_isolates_users(harness):
    harness.manager.declare("notes", scope="user", columns=["title", Column("done", type="boolean")])
    alice, bob = harness.manager.scoped(ALICE).notes, harness.manager.scoped(BOB).notes
    row = await alice.insert_one({"title": "alice's", "_user_id": "bob"})  # the scope wins
    assert row["_user_id"] == "alice"
    await bob.insert_one({"title": "bob's"})
    assert [r["title"] for r in await alice.find()] == ["alice's"]
    assert [r["title"] for r in await bob.find()] == ["bob's"]
    assert await bob.find({"_user_id": "alice"}) == []  # naming the field cannot widen the scope
    assert await bob.find_one({"_id": row.id}) is None
    assert await bob.update_one({"_id": row.id}, {"title": "stolen"}) == {"matched": 0, "modified": 0}
    assert await bob.delete_many({}) == {"deleted": 1}
    assert await alice.count() == 1
    with pytest.raises(ValueError, match="_user_id"):
        await alice.update_one({"_id": row.id}, {"_user_id": "bob"})
    with pytest.raises(ValueError, match="_user_id"):
        await alice.update_one({"_id": row.id}, {"$rename": {"title": "_user_id"}})
    everything = await harness.manager.unscoped().notes.find()
    assert [(r["title"], r["_user_id"]) for r in everything] == [("alice's", "alice")]


async def test_owner_scope_is_shared_by_an_org_and_session_scope_by_a_session(harness):
    harness.manager.declare("wiki", scope="owner")
    harness.manager.declare("scratch", scope="session")
    await harness.manager.scoped(ALICE).wiki.insert_one({"page": "home"})
    bob_view = await harness.manager.scoped(BOB).wiki.find()
    assert [(r["page"], r["_team_id"]) for r in bob_view] == [("home", "org:acme")]
    assert await harness.manager.scoped(CAROL).wiki.find() == []
    await harness.manager.scoped(CAROL).wiki.insert_one({"page": "mine"})
    assert (await harness.manager.scoped(CAROL).wiki.find_one())["_team_id"] == "carol"

    await harness.manager.scoped(ALICE).scratch.insert_one({"draft": 1})
    other_session = ScopeIdentity(user_id="alice", owner_id="org:acme", session_id="s-other")
    assert await harness.manager.scoped(other_session).scratch.find() == []
    assert (await harness.manager.scoped(ALICE).scratch.find_one())["_session_id"] == "s-alice"


async def test_session_db_refuses_app_scoped_and_undeclared_collections(harness):
    harness.manager.declare("settings", scope="app")
    db = harness.manager.scoped(ALICE)
    with pytest.raises(ValueError, match=r"Use app\.db\.settings instead"):
        db.settings  # noqa: B018
    with pytest.raises(ValueError, match=r"Use app\.db\.unknown instead"):
        db["unknown"]
    with pytest.raises(AttributeError):
        db._private  # noqa: B018
    with pytest.raises(RuntimeError, match="session"):
        harness.manager.declare("scratch", scope="session")
        harness.manager.scoped(ScopeIdentity(user_id="u")).scratch  # noqa: B018


async def test_collection_ref_takes_the_identity_from_the_running_handler(harness):
    notes = harness.manager.declare("notes", scope="user")
    shared = harness.manager.declare("shared")
    await shared.insert_one({"x": 1})  # app scope works outside a handler
    with pytest.raises(RuntimeError, match="no active handler context"):
        await notes.find()
    token = harness.acting_as(ALICE)
    try:
        await notes.insert_one({"title": "from a handler"})
        assert [row["title"] for row in await notes.find()] == ["from a handler"]
        assert (await notes.filter(title__contains="handler").first())["_user_id"] == "alice"
    finally:
        harness.identity.reset(token)
    token = harness.acting_as(BOB)
    try:
        assert await notes.find() == []
    finally:
        harness.identity.reset(token)
    token = harness.acting_as(ScopeIdentity(session_id="s1"))  # a handler without a user
    try:
        with pytest.raises(RuntimeError, match="authenticated user"):
            await notes.count()
    finally:
        harness.identity.reset(token)


async def test_declarations_and_dynamic_collections(harness):
    ref = harness.manager.declare("notes", scope="user", columns=["a", {"key": "b", "type": "number"}])
    assert ref.scope == "user" and [c.key for c in ref.columns] == ["a", "b"]
    unstarted = CollectionManager(lambda: None, lambda: None).declare("notes", columns=["a"])
    assert [c.key for c in await unstarted.list_columns()] == ["a"]  # declared columns before start
    assert harness.manager.spec("notes").to_dict()["columns"][1] == {"key": "b", "type": "number"}
    with pytest.raises(ValueError):
        harness.manager.declare("notes", scope="app")
    with pytest.raises(ValueError):
        harness.manager.declare("bad", scope="team")
    with pytest.raises(ValueError):
        harness.manager.declare("bad", columns=[Column("x", type="colour")])
    with pytest.raises(ValueError):
        harness.manager.declare("$bad")

    dynamic = await harness.manager.for_identity(ALICE).get("notes")
    await dynamic.insert_one({"a": 1})
    assert (await harness.manager.scoped(ALICE).notes.find_one())["a"] == 1
    with pytest.raises(ValueError, match="scope is required"):
        await harness.manager.for_identity(ALICE).get("undeclared")
    with pytest.raises(ValueError, match="declared with scope"):
        await harness.manager.for_identity(ALICE).get("notes", scope="owner")
    adhoc = await harness.manager.for_identity(ALICE).get("adhoc", scope="session")
    assert (await adhoc.insert_one({"z": 1}))["_session_id"] == "s-alice"
    with pytest.raises(RuntimeError):
        await harness.manager.get("adhoc", scope="user")  # no handler context


async def test_change_hook_and_unstarted_store(harness):
    notes = harness.manager.unscoped().notes
    row = await notes.insert_one({"a": 1})
    await notes.update_one({"_id": row.id}, {"a": 2})
    await notes.update_one({"_id": "missing"}, {"a": 2})  # no match: no change
    await notes.delete_one({"_id": row.id})
    await harness.manager.unscoped()["_kv_like"].insert_one({"a": 1})  # names starting with "_" are quiet
    assert harness.changes == [("notes", "data")] * 3

    unstarted = CollectionManager(lambda: None, lambda: None)
    with pytest.raises(RuntimeError, match="not started"):
        await unstarted.unscoped().notes.find()


async def test_update_many_in_scope(harness):
    harness.manager.declare("todos", scope="user")
    alice, bob = harness.manager.scoped(ALICE).todos, harness.manager.scoped(BOB).todos
    await alice.insert_many([{"done": False, "n": i} for i in range(4)])
    await bob.insert_one({"done": False, "n": 9})
    assert await alice.update_many({"n": {"$gte": 1}}, {"$set": {"done": True}, "$inc": {"n": 10}}) == {
        "matched": 3,
        "modified": 3,
    }
    assert await alice.update_many({"done": True}, {"done": True}) == {"matched": 3, "modified": 0}
    assert sorted((row["n"], row["done"]) for row in await alice.find()) == [
        (0, False),
        (11, True),
        (12, True),
        (13, True),
    ]
    assert (await bob.find_one())["done"] is False  # another user's rows are untouched
    with pytest.raises(ValueError, match="non-numeric"):  # all or nothing
        await harness.manager.unscoped().todos.update_many({}, {"$inc": {"done": 1}})
    assert sorted(row["n"] for row in await alice.find()) == [0, 11, 12, 13]


async def test_column_schemas(harness):
    ref = harness.manager.declare("venues", scope="user", columns=["name", Column("revenue", type="currency")])
    token = harness.acting_as(ALICE)
    try:
        await ref.insert_many([{"name": "A", "city": "Rome"}, {"name": "B"}])
        assert [c.key for c in await ref.list_columns()] == ["name", "revenue"]  # declared
        columns = await ref.add_column("status", type="status", backfill=True, default="new")
        assert [c.key for c in columns] == ["name", "revenue", "status"]
        assert [row["status"] for row in await ref.find()] == ["new", "new"]
        with pytest.raises(ValueError, match="already exists"):
            await ref.add_column("status")
        with pytest.raises(ValueError, match="backfill"):
            await ref.add_column("other", default=1)
        await ref.add_column("city")
        columns = await ref.rename_column("city", "town", migrate_values=True)
        assert [c.key for c in columns] == ["name", "revenue", "status", "town"]
        assert [row.get("town") for row in await ref.find()] == ["Rome", None]
        with pytest.raises(ValueError, match="does not exist"):
            await ref.rename_column("nope", "x")
        columns = await ref.remove_column("status", drop_values=True)
        assert "status" not in [c.key for c in columns]
        assert all("status" not in row for row in await ref.find())
        assert [c.to_dict() for c in await ref.list_columns()][1] == {"key": "revenue", "type": "currency"}
    finally:
        harness.identity.reset(token)
    # schemas are per scope value: Bob still sees the declared columns
    bob_view = await harness.manager.for_identity(BOB).get("venues")
    assert [c.key for c in await bob_view.list_columns()] == ["name", "revenue"]
    assert ("venues", "schema") in harness.changes
    with pytest.raises(RuntimeError):
        await ref.list_columns()  # a user-scoped schema needs a handler context


async def test_deleting_a_scope_value_removes_its_documents_and_kv(harness):
    from gateway.kv import KVStore

    harness.manager.declare("scratch", scope="session")
    harness.manager.declare("notes", scope="user")
    kv = KVStore(lambda: harness.store).for_identity(ALICE)
    await harness.manager.scoped(ALICE).scratch.insert_many([{"a": 1}, {"a": 2}])
    await harness.manager.scoped(ALICE).notes.insert_one({"keep": True})  # user scope: not the session's
    await harness.manager.scoped(ALICE_OTHER_CHAT).scratch.insert_one({"a": 3})
    await kv.set("draft", "x")
    await kv.set("theme", "dark", scope="user")
    assert await harness.store.documents.delete_scope("session", ALICE.session_id) == (2, 1)
    assert await harness.manager.scoped(ALICE).scratch.count() == 0
    assert await harness.manager.scoped(ALICE_OTHER_CHAT).scratch.count() == 1
    assert await harness.manager.scoped(ALICE).notes.count() == 1
    assert await kv.get("theme", scope="user") == "dark"
    assert await harness.store.documents.delete_scope("user", "alice") == (1, 1)
    with pytest.raises(ValueError):
        await harness.store.documents.delete_scope("app", "")


# -- end to end, through the core: App, handlers, session.db, CollectionRef, app.db -------------------


def notes_app() -> Any:
    import gateway

    app = gateway.App("collections-e2e")
    notes = app.collection("notes", scope="user", columns=["text"])
    wiki = app.collection("wiki", scope="owner")
    app.collection("settings", scope="app")

    @app.message()
    async def handle(session: Any, msg: Any) -> None:
        command, _, argument = msg.text.partition(" ")
        if command == "note":
            row = await session.db.notes.insert_one({"text": argument})
            await session.reply(f"saved {row['_user_id'] == session.user.id}")
        elif command == "notes":
            rows = await notes.filter(text__contains=argument).order_by("text")  # the CollectionRef
            await session.reply(", ".join(row["text"] for row in rows) or "none")
        elif command == "wiki":
            await wiki.update_one({"page": "home"}, {"$inc": {"edits": 1}}, upsert=True)
            page = await session.db.wiki.find_one({"page": "home"})
            await session.reply(f"edits {page['edits']} team {page['_team_id']}")
        elif command == "settings":
            try:
                session.db.settings  # noqa: B018
            except ValueError as exc:
                await session.reply(str(exc))
        elif command == "all":
            await session.reply(str(await app.db.notes.count()))

    return app


async def test_collections_through_the_core(tmp_path, database_url):
    from gateway.testing import TestClient

    app = notes_app()
    async with TestClient(app, tmp_path, database_url=database_url) as client:
        alice = await client.conversation("alice", org_id="acme")
        bob = await client.conversation("bob", org_id="acme")
        carol = await client.conversation("carol")
        assert (await alice.send("note buy milk")).replies == ["saved True"]
        await alice.send("note call mom")
        await bob.send("note bob's own")
        assert (await alice.send("notes")).replies == ["buy milk, call mom"]
        assert (await alice.send("notes MILK")).replies == ["buy milk"]
        assert (await bob.send("notes")).replies == ["bob's own"]
        assert (await alice.send("wiki")).replies == ["edits 1 team org:acme"]
        assert (await bob.send("wiki")).replies == ["edits 2 team org:acme"]  # shared by the org
        carol_user = (await carol.send("wiki")).replies[0]
        assert carol_user.startswith("edits 1 team ") and "org:" not in carol_user  # her own owner scope
        assert (await alice.send("settings")).replies == [
            "Collection 'settings' has scope='app'. Use app.db.settings instead of session.db.settings"
        ]
        assert (await carol.send("all")).replies == ["3"]
        with pytest.raises(RuntimeError, match="no active handler context"):
            await app.collections.declare("notes", scope="user").find()  # outside a handler
        assert await app.db.wiki.count() == 2
