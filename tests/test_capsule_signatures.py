"""Capsule's parameter names (issue 14.3): every public callable of the installed ``cpsl`` package
against ``gateway`` (introspection only), with the intended differences read from
``tests/capsule_signature_exceptions.toml``; then the mismatches it found, fixed, used the way
Capsule code uses them."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import gateway
from gateway.collections import CollectionManager, Column
from gateway.session_data import SessionData
from gateway.testing import TestClient
from tests.capsule_signatures import compare_callables, differences, intended

pytest.importorskip("cpsl")


def test_every_difference_from_capsule_is_intended():
    reasons = intended()
    unexpected = [f"{d.key}: {d.what}" for d in differences() if d.key not in reasons]
    assert not unexpected, "fix these, or list them with a reason in capsule_signature_exceptions.toml:\n" + "\n".join(
        unexpected
    )


def test_no_listed_difference_is_stale():
    found = {d.key for d in differences()}
    stale = sorted(set(intended()) - found)
    assert not stale, f"these no longer differ from Capsule; remove them from the exceptions file: {stale}"


def test_every_listed_difference_has_a_reason():
    assert all(reason.strip() for reason in intended().values())


def test_the_comparison_sees_names_kinds_defaults_and_awaitables():
    def capsule(self, documents, *, upsert=False): ...
    def renamed(self, documents_to_insert, *, upsert=False): ...
    def positional(self, documents, upsert=False): ...
    def other_default(self, documents, *, upsert=True): ...
    def extra_optional(self, documents, *, upsert=False, sort=None): ...
    def extra_required(self, documents, extra, *, upsert=False): ...
    def extra_var_keyword(self, documents, *, upsert=False, **options): ...
    async def awaited(self, documents, *, upsert=False): ...

    assert compare_callables(capsule, renamed)
    assert compare_callables(capsule, positional)
    assert compare_callables(capsule, other_default)
    assert compare_callables(capsule, extra_optional) is None  # the one built-in allowance
    assert compare_callables(capsule, extra_required)
    assert compare_callables(capsule, extra_var_keyword)
    assert compare_callables(capsule, awaited)


# -- the fixes, used as Capsule code uses them ------------------------------------------------


async def test_insert_many_takes_documents_and_update_one_a_keyword_upsert(store):
    manager = CollectionManager(lambda: store, lambda: None)
    notes = manager.unscoped().notes
    rows = await notes.insert_many(documents=[{"text": "a"}, {"text": "b"}])
    assert [r["text"] for r in rows] == ["a", "b"]
    assert await notes.update_one({"text": "c"}, {"$set": {"n": 1}}, upsert=True) == {
        "matched": 0, "modified": 0, "upserted_id": (await notes.find_one({"text": "c"}))["_id"]}
    with pytest.raises(TypeError):
        await notes.update_one({"text": "c"}, {"n": 2}, True)  # keyword-only, as in Capsule
    with pytest.raises(TypeError):
        await notes.insert_many(documents_to_insert=[{"text": "x"}])


def test_app_takes_capsules_keywords_and_refuses_unknown_ones():
    image = gateway.Image(python_packages="httpx").add_python_packages(["rich"]).add_apt_packages(["curl"])
    app = gateway.App("deploy", image=image, channels=[gateway.Chat(), gateway.Channel("support-bot")], cpu=1.0,
                      memory=1024, gpu=None, price=5, pricing_type=gateway.PRICING_MONTHLY, keep_warm_seconds=60)
    assert app.deploy_fields["cpu"] == 1.0 and app.deploy_fields["channels"][1].to_dict() == {
        "type": "_resource", "name": "support-bot"}
    assert image.to_dict() == {"python_packages": ["httpx", "rich"], "apt_packages": ["curl"], "commands": []}
    with pytest.raises(TypeError):
        gateway.App("typo", cpus=2)  # Capsule refuses it too: a typo is not silently ignored
    with pytest.raises(TypeError):
        gateway.App()  # the name is required, as in Capsule


def test_channel_classes_have_capsules_fields():
    token = gateway.Secret.from_name("TG_TOKEN")
    expected = {"type": "telegram", "bot_token": {"_secret_name": "TG_TOKEN"}}
    assert gateway.Telegram(bot_token=token).to_dict() == expected
    assert gateway.Slack(bot_token="x", signing_secret="y").to_dict()["signing_secret"] == "y"
    assert gateway.WhatsApp(phone_number_id="1").phone_number_id == "1"
    assert gateway.API().to_dict() == {"type": "api"} and gateway.ChannelRef is gateway.Channel
    with pytest.raises(TypeError):
        gateway.Telegram(token="x")


def test_column_from_dict_and_app_collection_keywords():
    priced = Column("price", "currency", "Price")
    assert Column.from_dict({"key": "price", "type": "currency", "label": "Price"}) == priced
    assert Column.from_dict("name") == Column("name")
    app = gateway.App("cols")
    ref = app.collection("orders", columns=["name", Column("price", "currency")], scope="user", sortable=True,
                         paginate=20)
    assert ref.name == "orders"
    with pytest.raises(TypeError):
        app.collection("orders", "user")  # keyword-only after the name, as in Capsule


def test_session_data_pop_takes_args_like_dict():
    data = SessionData({"a": 1})
    assert data.pop("a") == 1 and data.pop("missing", None) is None
    with pytest.raises(TypeError):
        data.pop()
    with pytest.raises(KeyError):
        data.pop("missing")


async def test_app_task_with_capsules_options_and_bare(tmp_path: Path):
    app = gateway.App("tasks")

    @app.task(retries=2, timeout=10, lock="user:{user_id}", retry_for=[ValueError], callback_url=None, process=False)
    async def sync_user(user_id: str) -> str:
        return f"synced {user_id}"

    @app.task
    async def ping() -> str:
        return "pong"

    assert app.sync_user is sync_user and sync_user.options.retries == 2
    assert sync_user.options.retry_for == (ValueError,)
    assert app.ping is ping and ping.options.retries == 0
    async with TestClient(app, tmp_path, scheduler={"task_poll_seconds": 0.05}):
        handle = await app.sync_user.submit(user_id="u1")
        assert await asyncio.wait_for(handle.result(), 10) == "synced u1"
        assert await (await app.ping.submit()).result(timeout=10) == "pong"
