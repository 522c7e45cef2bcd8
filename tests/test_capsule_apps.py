"""The six kinds of Capsule app (issue 14), written from Capsule's reference: each differs from
Capsule code only in its import line (checked: with ``import cpsl`` each one loads in the real
SDK), and each runs end to end through a real gateway."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType

import aiohttp
import pytest

from gateway.cli import load_app
from gateway.integrations.crypto import generate_key
from gateway.testing import TestClient
from tests.support import until

APPS = Path(__file__).parent / "apps"
KINDS = ("assistant", "blocks", "prompts", "state", "jobs", "http")
IMPORT_LINE = "import gateway as cpsl  # the only line that differs from the Capsule original: `import cpsl`"


def source(kind: str) -> str:
    return (APPS / f"capsule_{kind}.py").read_text()


@pytest.fixture
def capsule_app(request, tmp_path) -> Iterator[ModuleType]:
    """The app module ``request.param``, loaded fresh from a copy (module state per test)."""
    kind = request.param
    path = tmp_path / f"capsule_kind_{kind}.py"
    path.write_text(source(kind))
    app = load_app(str(path))
    yield app
    sys.modules.pop(path.stem, None)


@pytest.mark.parametrize("kind", KINDS)
def test_only_the_import_line_differs_from_capsule_code(kind, tmp_path):
    lines = source(kind).splitlines()
    assert [line for line in lines if "gateway" in line] == [IMPORT_LINE]
    capsule_source = source(kind).replace(IMPORT_LINE, "import cpsl")
    path = tmp_path / f"capsule_original_{kind}.py"
    path.write_text(capsule_source)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # Capsule's own SDK accepts every declaration
    assert type(module.app).__module__ == "cpsl.app"


def _client(app, tmp_path, **options) -> TestClient:
    return TestClient(app, tmp_path, scheduler={"enabled": True, "task_poll_seconds": 0.05,
                                                "leader_lease_seconds": 0.6}, **options)


@pytest.mark.parametrize("capsule_app", ["assistant"], indirect=True)
async def test_streaming_assistant(capsule_app, tmp_path):
    async with _client(capsule_app, tmp_path) as client:
        conv = await client.conversation("alice", channel="telegram")
        first = await conv.send("hello")
        assert first.replies == ["You said: hello (1 messages so far)"] and len(first.streams) == 1
        partials = await conv.send("/partials again")
        assert partials.replies == ["You said: /partials again (3 messages so far)"]  # not the snapshots glued
        plain = await conv.send("/plain ha ha")
        assert plain.replies == ["You said: /plain ha ha (5 messages so far)"]
        stored = await client.gateway.store.messages.recent(conv.session_id, 10)
        assert [m.text for m in stored if m.role == "assistant"] == first.replies + partials.replies + plain.replies
        record = await client.gateway.store.sessions.get(conv.session_id)
        assert record.data["last_answer"] == partials.replies[0]


@pytest.mark.parametrize("capsule_app", ["blocks"], indirect=True)
async def test_blocks(capsule_app, tmp_path):
    async with _client(capsule_app, tmp_path) as client:
        conv = await client.conversation("alice")
        turn = await conv.send("Lisbon")
        assert turn.error is None and turn.replies == ["Cheapest flight to Lisbon: 99"]
        assert turn.notifications == ["Searching"]
        kinds = [b["type"] for b in turn.blocks]
        assert kinds == ["session_title", "step_status", "flight_card", "flight_card", "step_status", "activity",
                         "suggestions"]
        assert turn.blocks[0]["payload"] == {"title": "Trip to Lisbon"}
        cards = [b for b in turn.blocks if b["type"] == "flight_card"]
        assert cards[0]["id"] == cards[1]["id"] == "flight" and cards[1]["payload"]["price"] == 99
        steps = [b for b in turn.blocks if b["type"] == "step_status"]
        assert steps[0]["id"] == steps[1]["id"] and steps[1]["payload"]["status"] == "done"
        assert await client.gateway.store.messages.block(conv.session_id, "flight") is not None
        stored = await client.gateway.store.messages.block(conv.session_id, "flight")
        assert stored["payload"]["price"] == 99  # updated in place, not a second card
        suggestions = turn.block("suggestions")["payload"]
        assert suggestions["title"] == "What next?" and [s["label"] for s in suggestions["suggestions"]] == [
            "Show hotels", "Book it"]
        booked = await conv.click("Book it")
        assert booked.replies == ["Booked for 99"]


@pytest.mark.parametrize("capsule_app", ["prompts"], indirect=True)
async def test_prompts(capsule_app, tmp_path):
    async with _client(capsule_app, tmp_path, integrations={"encryption_key": generate_key()}) as client:
        conv = await client.conversation("alice")
        asked = await conv.send("import")
        assert asked.block("file_upload")["payload"]["message"] == "Send the CSV to import"
        approval = await conv.upload("sales.csv", b"a,1\nb,2\n\nc,3\n")
        assert approval.block("approval_prompt")["payload"]["message"] == "Import 3 rows?"
        done = await conv.approve()
        assert done.replies == ["Imported 3 rows from sales.csv"]
        record = await client.gateway.store.sessions.get(conv.session_id)
        assert record.data["imported"] == ["a,1", "b,2", "c,3"]

        await conv.send("import")
        await conv.upload("more.csv", b"x\n")
        assert (await conv.reject()).replies == ["Import cancelled"]

        hurried = await conv.send("hurry")
        assert hurried.block("file_upload")["payload"]["message"] == "Quick, a file!"
        assert (await conv.finish()).replies == ["No file came"]  # FileUploadTimeout, caught by the app

        asked = await conv.send("repos")
        assert asked.replies == ["to list your repositories"] and asked.block("integration_prompt")
        connected = await conv.connect_integration("github", access_token="gho_secret1234")
        assert connected.replies == ["Token ends with 1234"]
        bob = await client.conversation("bob")
        await bob.send("repos")
        assert (await bob.decline_integration()).replies == ["Not connected"]


@pytest.mark.parametrize("capsule_app", ["state"], indirect=True)
async def test_state_and_collections(capsule_app, tmp_path, database_url):
    async with _client(capsule_app, tmp_path, database_url=database_url) as client:
        alice = await client.conversation("alice")
        assert (await alice.send("add bread, apples, butter")).replies == ["Added 3"]
        assert (await alice.send("done apples")).replies == ["Marked 1"]
        assert (await alice.send("list")).replies == ["bread, butter"]
        assert (await alice.send("count")).replies == ["1 done; first b: bread"]
        bob = await client.conversation("bob")
        assert (await bob.send("list")).replies == ["Nothing to do"]  # user scope
        assert (await alice.send("lang pt")).replies == ["Saved"]
        alice_on_telegram = await client.conversation("alice", channel="telegram")
        assert (await alice_on_telegram.send("whoami")).replies == ["lang=pt last=pt audit=1 turns=1"]
        assert (await bob.send("whoami")).replies == ["lang=en last=pt audit=1 turns=2"]
        record = await client.gateway.store.sessions.get(alice.session_id)
        assert record.data["turns"] == 5


@pytest.mark.parametrize("capsule_app", ["jobs"], indirect=True)
async def test_schedules_and_tasks(capsule_app, tmp_path):
    app = capsule_app
    async with _client(app, tmp_path) as client:
        conv = await client.conversation("alice", channel="slack")
        turn = await conv.send("report sales")
        assert "On it" in turn.replies  # the task's own reply may land while the turn still runs
        card = turn.block("task_card")["payload"]
        assert card["message"] == "Building your report" and card["display_name"] == "sales report"
        await until(lambda: any(s.text == "Report on sales: 42 sales" for s in conv.sent))

        async def completed_card() -> bool:
            block = await client.gateway.store.messages.block(conv.session_id, f"task_{card['task_id']}")
            return block is not None and block["payload"]["status"] == "completed"

        await until(completed_card)
        assert (await conv.send("status")).replies == ["sales report: completed; 1 done; 1 tasks"]

        await client.gateway.scheduler.reschedule("morning", datetime.now(UTC) + timedelta(seconds=0.05))
        [run] = await until(lambda: app.db.runs.find({"kind": "morning"}))
        assert run["session"] == "" and run["owner"]  # the synthetic owner session
        await until(lambda: app.db.runs.find({"kind": "cleanup"}))
        # The task's body wrote that row; its status is written once the body has returned.
        [cleanup] = await until(lambda: app.cleanup.find(status="completed"))
        assert cleanup.kwargs == {"days": 7}
        assert await app.tasks.count(status="completed") == 2


@pytest.mark.parametrize("capsule_app", ["http"], indirect=True)
async def test_http_endpoints_and_hooks(capsule_app, tmp_path):
    app = capsule_app
    async with _client(app, tmp_path, web={"enabled": False, "api_keys": ["k1"]}) as client:
        assert app.lifecycle == ["boot"]
        base = client.gateway.public_url
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{base}/webhook", json={"order": 7}) as response:
                assert response.status == 200 and await response.json() == {"ok": True, "authenticated": False}
            async with http.get(f"{base}/me") as response:
                assert response.status == 401
            async with http.get(f"{base}/me", headers={"X-API-Key": "k1"}) as response:
                assert response.status == 200 and await response.json() == {"user": "api"}
            async with http.get(f"{base}/echo?q=hi") as response:
                assert await response.json() == {"q": "hi"}
            async with http.get(f"{base}/data/events?limit=5") as response:
                assert await response.json() == {"kind": "webhook", "count": 1}
            async with http.get(f"{base}/data/events?limit=many") as response:
                assert response.status == 400  # an int parameter that does not convert

        conv = await client.conversation("alice")
        first = await conv.send("hi")
        assert first.replies == ["Welcome! Send me anything.", "hi (webhooks so far: 1)"]
        assert (await conv.send("again")).replies == ["again (webhooks so far: 1)"]  # enter runs once
        assert await client.gateway.sessions.delete(conv.session_id)
        assert [e["session"] for e in await app.db.events.find({"kind": "exit"})] == [conv.session_id]
    assert app.lifecycle == ["boot", "shutdown"]
