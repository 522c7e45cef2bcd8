"""A Capsule chat app runs with ``import gateway as cpsl`` as its only change."""

from __future__ import annotations

import sys
from pathlib import Path

import aiohttp
import pytest

import gateway
from gateway.cli import load_app
from gateway.testing import TestClient

CAPSULE_APP = Path(__file__).parent / "apps" / "capsule_app.py"


def capsule_app_source() -> str:
    return CAPSULE_APP.read_text()


@pytest.fixture
def capsule_app(tmp_path):
    path = tmp_path / "capsule_notes.py"
    path.write_text(capsule_app_source())
    app = load_app(str(path))
    yield app
    sys.modules.pop("capsule_notes", None)


def test_only_the_import_line_mentions_gateway():
    imports = [line for line in capsule_app_source().splitlines() if line.startswith(("import ", "from "))]
    assert imports == ["import gateway as cpsl  # the only line that differs from the Capsule original: `import cpsl`"]


async def test_capsule_app_chats_in_the_test_client(capsule_app, tmp_path, database_url):
    async with TestClient(capsule_app, tmp_path, database_url=database_url) as client:
        assert capsule_app.booted is True
        conv = await client.conversation("alice", channel="telegram")
        turn = await conv.send("hi")
        assert turn.streams and turn.replies == ["turn 1: you said hi (1 messages) "]
        turn = await conv.send("note buy milk")
        assert turn.notifications == ["Saved"] and turn.replies == ["saved (1 notes)"]
        await conv.send("note call mom")
        turn = await conv.send("menu")
        labels = [s["label"] for s in turn.block("suggestions")["payload"]["suggestions"]]
        assert labels == ["list notes", "Clear", "Help"]
        turn = await conv.click("list notes")
        assert turn.replies == ["buy milk, call mom"]
        other = await client.conversation("bob")
        assert (await other.send("list notes")).replies == ["no notes"]  # user-scoped collection
        turn = await conv.click("Clear")
        assert turn.replies == ["cleared 2"]
        await conv.send("confirm")
        turn = await conv.approve()
        assert turn.replies == ["confirmed"]
        record = await client.gateway.store.get_session(conv.session_id)
        assert record.data["turns"] >= 6


async def test_capsule_endpoints_and_data_sources(capsule_app, tmp_path):
    async with TestClient(capsule_app, tmp_path, web={"enabled": False, "api_keys": ["k1"]}) as client:
        base = client.gateway.public_url
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/hello") as r:
                assert r.status == 200 and await r.json() == {"hello": "anonymous", "authenticated": False}
            async with http.post(f"{base}/echo", json={"a": [1]}) as r:
                assert await r.json() == {"a": [1]}
            async with http.get(f"{base}/private") as r:
                assert r.status == 401 and (await r.json())["error"]["code"] == "unauthorized"
            async with http.get(f"{base}/private", headers={"X-API-Key": "k1"}) as r:
                assert r.status == 200 and await r.json() == {"user": "api"}
            async with http.get(f"{base}/text") as r:
                assert await r.text() == "[1, 2, 3]"
            async with http.get(f"{base}/data/stats?limit=3&version_id=v1") as r:
                assert await r.json() == {"limit": 3, "user": "anonymous"}
            async with http.get(f"{base}/data/stats?bogus=1") as r:
                body = await r.json()
                assert r.status == 400 and "bogus" in body["error"]["message"]
            async with http.get(f"{base}/data/secret") as r:
                assert r.status == 401
            async with http.get(f"{base}/data/secret", headers={"X-API-Key": "k1"}) as r:
                assert await r.json() == {"ok": True}
            async with http.get(f"{base}/data/none") as r:
                assert r.status == 404 and (await r.json())["error"]["code"] == "not_found"


async def test_http_errors_are_json(tmp_path):
    app = gateway.App("errors")

    @app.endpoint("GET", "/boom", authorized=False)
    async def boom(request):
        raise RuntimeError("internal detail")

    async with TestClient(app, tmp_path) as client:
        base = client.gateway.public_url
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/nope") as r:
                assert r.status == 404 and (await r.json())["error"]["code"] == "not_found"
            async with http.post(f"{base}/healthz") as r:
                assert r.status == 405 and (await r.json())["error"]["code"] == "method_not_allowed"
            async with http.get(f"{base}/boom") as r:
                body = await r.json()
                assert r.status == 500 and "internal detail" not in str(body)
            async with http.get(f"{base}/healthz") as r:
                assert (await r.json())["status"] == "ok"
            async with http.get(f"{base}/_meta") as r:
                assert (await r.json())["name"] == "errors"
            async with http.get(f"{base}/files/abc?s=&exp=1&sig=x") as r:
                assert r.status == 403
            async with http.get(f"{base}/files/..%2f..%2fetc?s=&exp=9999999999&sig=x") as r:
                assert r.status in (403, 404)
