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
        suggestions = turn.block("suggestions")["payload"]["suggestions"]
        assert [s["label"] for s in suggestions] == ["list notes", "Clear", "Help"]
        assert suggestions[1] == {"label": "Clear", "target": "action", "value": "clear_notes", "accent": "red",
                                  "primary": True}  # action= given the decorated function, as Capsule allows
        turn = await conv.click("list notes")
        assert turn.replies == ["buy milk, call mom"]
        other = await client.conversation("bob")
        assert (await other.send("list notes")).replies == ["no notes"]  # user-scoped collection
        turn = await conv.click("Clear")
        assert turn.replies == ["cleared 2"]
        await conv.send("confirm")
        turn = await conv.approve()
        assert turn.replies == ["confirmed"]
        record = await client.gateway.store.sessions.get(conv.session_id)
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
            # Query values arrive as strings; parameters annotated int/float/bool get converted.
            async with http.get(f"{base}/data/page?offset=3&size=2&desc=true") as r:
                assert await r.json() == {"rows": [4, 3]}
            async with http.get(f"{base}/data/page?offset=three") as r:
                body = await r.json()
                assert r.status == 400 and "'offset' must be an integer" in body["error"]["message"]
            async with http.get(f"{base}/data/page?offset=1&size=2&scale=0.5") as r:
                assert await r.json() == {"rows": [0.5, 1.0]}
            async with http.get(f"{base}/data/page?offset=1&scale=nan") as r:
                assert r.status == 400 and "'scale' must be a finite number" in (await r.json())["error"]["message"]
            async with http.get(f"{base}/data/page?offset=1&desc=maybe") as r:
                assert r.status == 400 and "'desc' must be true or false" in (await r.json())["error"]["message"]
            async with http.get(f"{base}/data/page") as r:  # a required parameter left out
                body = await r.json()
                assert r.status == 400 and "offset" in body["error"]["message"]
            async with http.get(f"{base}/data/broken") as r:
                body = await r.json()
                assert r.status == 500 and body["error"]["code"] == "internal_error" and "NoneType" not in str(body)


async def test_scoped_collections_in_http_handlers_act_for_the_caller(capsule_app, tmp_path, database_url):
    async with TestClient(capsule_app, tmp_path, database_url=database_url,
                          web={"enabled": False, "api_keys": ["k1"]}) as client:
        alice = await client.conversation("alice")
        await alice.send("note buy milk")
        await alice.send("note call mom")
        base, key = client.gateway.public_url, {"X-API-Key": "k1"}
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/data/my_notes?session_id={alice.session_id}", headers=key) as r:
                assert r.status == 200 and await r.json() == {"notes": ["buy milk", "call mom"], "current": True}
            async with http.post(f"{base}/notes", json={"text": "from the API"}, headers=key) as r:
                assert r.status == 200 and await r.json() == {"owner": "api", "count": 1, "current": None,
                                                              "tags": ["new"]}
            async with http.post(f"{base}/notes", json={"text": "anonymous"}) as r:
                assert r.status == 401
            # A session parameter with a default is optional; a session asked for must be the caller's.
            async with http.get(f"{base}/data/greeting?name=ada") as r:
                assert await r.json() == {"text": "hello ada (no session)"}
            async with http.get(f"{base}/data/greeting?session_id={alice.session_id}", headers=key) as r:
                assert await r.json() == {"text": f"hello you (session {alice.session_id})"}
            async with http.get(f"{base}/data/greeting?session_id={alice.session_id}") as r:
                assert r.status == 404  # anonymous callers get no one's session
            async with http.get(f"{base}/data/my_notes", headers=key) as r:
                assert r.status == 404 and "session_id" in (await r.json())["error"]["message"]
        assert (await alice.send("list notes")).replies == ["buy milk, call mom"]


async def test_bad_request_bodies_get_a_json_400_and_the_gateway_keeps_serving(capsule_app, tmp_path):
    overrides = {"server": {"max_request_bytes": 4096}, "files": {"max_upload_bytes": 1024}}
    async with TestClient(capsule_app, tmp_path, **overrides) as client:
        base = client.gateway.public_url
        limit = max(4096, 1024 + 64 * 1024)  # the server's body limit (uploads get their own margin)
        async with aiohttp.ClientSession() as http:
            headers = {"Content-Type": "application/json"}
            async with http.post(f"{base}/echo", data=b'{"a": [1,', headers=headers) as r:
                body = await r.json()
                assert r.status == 400 and body["error"]["code"] == "bad_request"
                assert "not valid JSON" in body["error"]["message"]
            async with http.post(f"{base}/echo", data=b'"\xff\xfe"'.decode("unicode_escape").encode("latin-1"),
                                 headers=headers) as r:
                body = await r.json()
                assert r.status == 400 and "UTF-8" in body["error"]["message"]
            async with http.post(f"{base}/echo", data=b"[" + b"1," * limit + b"1]", headers=headers) as r:
                body = await r.json()
                assert r.status == 413 and body["error"]["code"] == "too_large"
            async with http.post(f"{base}/upstream", json={"fine": True}) as r:
                body = await r.json()
                assert r.status == 500 and body["error"]["code"] == "internal_error"
            async with http.post(f"{base}/echo", json=[1, "two"]) as r:  # any JSON value is the app's to judge
                assert r.status == 200 and await r.text() == "[1, 'two']"
            async with http.post(f"{base}/echo", json={"still": "serving"}) as r:
                assert r.status == 200 and await r.json() == {"still": "serving"}


def test_capsule_names_a_chat_app_uses_are_exported():
    """capsule-api.md §1: the names that matter for chat apps, plus the integration helpers."""
    names = """App Image Chat Channel ChannelRef API Telegram Slack WhatsApp Session Message Attachment Block
        FileUpload UserInfo SessionChannel RequestContext HomeContext Event ReplyStream IntegrationCredentials
        IntegrationTimeout IntegrationDeclined FileUploadTimeout current_session Suggestion TaskHandle
        TaskDescriptor CollectionManager CollectionRef Column DynamicCollection Secret Integration
        IntegrationConfig Google Gmail GoogleCalendar GoogleDrive Outlook GitHub Linear Tailscale AWS
        INTEGRATION_GITHUB INTEGRATION_GOOGLE INTEGRATION_AWS PRICING_ONE_TIME PRICING_MONTHLY""".split()
    missing = [name for name in names if not hasattr(gateway, name)]
    assert not missing
    assert issubclass(gateway.IntegrationTimeout, TimeoutError) and issubclass(gateway.FileUploadTimeout, TimeoutError)
    assert issubclass(gateway.IntegrationDeclined, RuntimeError)


def test_suggestion_has_capsules_fields_and_rules():
    s = gateway.Suggestion("Go", None, None, None, "go", "does it", "rocket", "go.png", "green", True, {"n": 1})
    assert s.to_dict() == {"label": "Go", "target": "action", "value": "go", "description": "does it",
                           "icon": "rocket", "image": "go.png", "accent": "green", "primary": True,
                           "payload": {"n": 1}}
    assert gateway.Suggestion("Say hi", prompt="hi").to_dict() == {"label": "Say hi", "target": "prompt",
                                                                   "value": "hi"}
    with pytest.raises(ValueError):
        gateway.Suggestion("Both", prompt="hi", action="go")
    with pytest.raises(ValueError):
        gateway.Suggestion("Payload without action", prompt="hi", payload={"a": 1})
    with pytest.raises(ValueError, match="not workflow or page"):
        gateway.Suggestion("Docs", page="docs").to_dict()


def test_integration_declarations_read_secrets_from_the_environment(monkeypatch):
    from gateway.config import ConfigError
    from gateway.integrations.providers import build_providers
    from gateway.types import integration_name

    app = gateway.App("integrations")
    app.add_integration(gateway.GitHub(client_id=gateway.Secret.from_name("T_GITHUB_ID"),
                                       client_secret=gateway.Secret.from_name("T_GITHUB_SECRET"), scopes=["repo"]))
    with pytest.raises(ConfigError, match=r"github\.client_id"):  # not in the environment, not in the config
        build_providers({}, app.integration_specs)
    monkeypatch.setenv("T_GITHUB_ID", "id-123")
    monkeypatch.setenv("T_GITHUB_SECRET", "s3cret")
    assert gateway.Secret.from_name("T_GITHUB_ID").value == "id-123"
    app.add_integration(gateway.GitHub(client_id=gateway.Secret.from_name("T_GITHUB_ID"),
                                       client_secret=gateway.Secret.from_name("T_GITHUB_SECRET"), scopes=["repo"]))
    app.add_integration(gateway.AWS())
    app.add_integration(gateway.Outlook(client_id="o-id", client_secret="o-secret", scopes=["Mail.Read"]))
    providers = build_providers({}, app.integration_specs)
    github = providers["github"]
    assert (github.mode, github.client_id, github.client_secret, github.scopes) == ("oauth", "id-123", "s3cret",
                                                                                    ("repo",))
    assert providers["aws"].mode == "secret" and "secret_access_key" in [f.name for f in providers["aws"].fields]
    assert "offline_access" in providers["outlook"].scopes
    assert integration_name(gateway.Integration.GCAL) == gateway.INTEGRATION_GCAL == "gcal"
    with pytest.raises(ValueError, match="T_UNSET"):
        gateway.Secret.from_name("T_UNSET").value  # noqa: B018


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


@pytest.fixture
def example_app():
    loaded: list[str] = []

    def load(name: str):
        loaded.append(name)
        return load_app(str(Path(__file__).resolve().parent.parent / "examples" / f"{name}.py"))

    yield load
    for name in loaded:
        sys.modules.pop(name, None)


async def test_the_examples_run_in_the_test_client(example_app, tmp_path, database_url):
    async with TestClient(example_app("echo"), tmp_path / "echo") as client:
        assert (await client.send("hi")).replies == ["echo: hi"]
    async with TestClient(example_app("assistant"), tmp_path / "assistant") as client:
        turn = await client.send("why?")
        assert turn.notifications == ["Thinking…"]
        assert len(turn.streams) == 1 and turn.replies[0].startswith("Good question. You asked: *why?*")
        assert "message 1 of our conversation" in turn.replies[0]
        turn = await client.send("ok")
        assert turn.replies == ["Noted: ok. (That is message 2; ask me a question, ending with '?'.)"]
    async with TestClient(example_app("showcase"), tmp_path / "showcase", database_url=database_url) as client:
        conv = await client.conversation("ada")
        turn = await conv.send("menu")
        assert turn.replies == ["Welcome! Say **menu** to see what I can do."]
        assert [s["label"] for s in turn.block("suggestions")["payload"]["suggestions"]][-1] == "count"
        turn = await conv.click("approve something")
        assert turn.block("approval_prompt")["payload"]["blocking"] is True
        assert (await conv.approve()).replies == ["Noted."]
        await conv.send("note buy milk")
        turn = await conv.send("my notes")
        assert turn.replies == ["Your latest notes:\n\n- buy milk\n- approved something"]
        turn = await conv.send("upload a file")
        assert (await conv.upload("a.txt", b"abc")).replies == ["Got **a.txt** (3 bytes, text/plain)."]
        assert (await conv.click("count")).replies == ["We have exchanged 5 message(s) in this conversation."]
        other = await client.conversation("bob")
        assert (await other.send("my notes")).replies[-1].endswith("_no notes yet_")
