"""TestClient answering integration prompts: connecting (OAuth tokens, secret fields), declining,
leaving a prompt to time out, and connecting before the first message. Real SQLite store, real
integrations service (the credentials go through its storing code, the prompt is answered by its
``signal``); no provider is contacted (tokens that never expire are not refreshed)."""

from __future__ import annotations

from typing import Any

import pytest

import gateway
from gateway.inbound import PlatformUser
from gateway.integrations.crypto import generate_key
from gateway.testing import TestClient
from gateway.types import IntegrationDeclined, IntegrationTimeout

PROVIDERS: dict[str, Any] = {
    "vault": {
        "title": "Vault",
        "fields": [
            {"name": "api_key", "label": "API key", "pattern": r"sk-[A-Za-z0-9]{8,}", "help": "starts with sk-"},
            {"name": "region", "label": "Region", "secret": False, "required": False},
        ],
    },
    "teamcode": {
        "authorize_url": "https://code.example.test/authorize",
        "token_url": "https://code.example.test/token",
        "client_id": "cid",
        "client_secret": "csecret",
        "owner_scoped": True,
    },
}


def build_app() -> gateway.App:
    app = gateway.App("testing-integrations")
    app.add_integration("github", client_id="gh-client", client_secret="gh-secret")  # the preset

    @app.message()
    async def handle(session: gateway.Session, msg: gateway.Message) -> None:
        kind, _, wait = msg.text.partition(" ")
        had = session.get_integration(kind)
        try:
            credentials = await session.require_integration(kind, reason="to read your code",
                                                            timeout=float(wait or 10))
        except IntegrationDeclined:
            await session.reply("declined")
            return
        except IntegrationTimeout:
            await session.reply("timed out")
            return
        held = session.integrations[kind]
        what = credentials.access_token or ",".join(f"{k}={v}" for k, v in sorted(credentials.fields.items()))
        await session.reply(f"{'had' if had else 'got'} {kind} {what} scopes={','.join(held.scopes)}")

    return app


def client_for(tmp_path: Any) -> TestClient:
    return TestClient(build_app(), tmp_path, integrations={"encryption_key": generate_key(), "providers": PROVIDERS})


async def stored_for(client: TestClient, user: str, kind: str) -> gateway.IntegrationCredentials | None:
    info = await client.gateway.store.users.resolve(PlatformUser("test", user))
    return await client.gateway.integrations.credentials_for(info, kind)


async def test_connecting_an_oauth_account_answers_the_prompt_and_is_stored_for_the_user(tmp_path: Any) -> None:
    async with client_for(tmp_path) as client:
        chat = await client.conversation("alice")
        asked = await chat.send("github")
        assert asked.replies == ["to read your code"]
        card = asked.block("integration_prompt")["payload"]
        assert card["blocking"] is True and card["title"] == "GitHub"
        assert await stored_for(client, "alice", "github") is None

        answered = await chat.connect_integration("github", access_token="gho_alice", timeout=10)
        assert answered.ended and answered.error is None
        assert answered.replies == ["got github gho_alice scopes=read:user,repo"]  # the preset's scopes
        assert answered.block("integration_prompt")["payload"]["completed"] is True
        assert chat.waiting_prompt is None

        stored = await stored_for(client, "alice", "github")
        assert stored is not None and stored.access_token == "gho_alice" and stored.scopes == ["read:user", "repo"]
        # Later turns (another chat of the same user too) find it without asking; another user does not.
        assert (await chat.send("github")).replies == ["had github gho_alice scopes=read:user,repo"]
        telegram = await client.conversation("alice", channel="telegram")
        again = await telegram.send("github")
        assert again.blocks == [] and again.replies == ["had github gho_alice scopes=read:user,repo"]
        bob = await client.conversation("bob")
        assert (await bob.send("github")).block("integration_prompt")["payload"]["blocking"] is True
        assert await stored_for(client, "bob", "github") is None
        await bob.decline_integration()


async def test_connecting_a_secret_provider_checks_fields_as_its_form_does(tmp_path: Any) -> None:
    async with client_for(tmp_path) as client:
        chat = await client.conversation("alice")
        card = (await chat.send("vault")).block("integration_prompt")["payload"]
        assert card["mode"] == "secret"

        with pytest.raises(ValueError, match="API key does not look right: starts with sk-"):
            await chat.connect_integration("vault", fields={"api_key": "nope"})
        with pytest.raises(ValueError, match="secret provider: pass fields="):
            await chat.connect_integration("vault", access_token="tok")
        with pytest.raises(AssertionError, match="waits on 'vault', not 'github'"):
            await chat.connect_integration("github", access_token="tok")
        assert chat.waiting_prompt is not None  # none of that answered it

        turn = await chat.connect_integration(fields={"api_key": " sk-abcdefgh12 ", "region": "eu"})
        assert turn.replies == ["got vault api_key=sk-abcdefgh12,region=eu scopes="]
        stored = await stored_for(client, "alice", "vault")
        assert stored is not None and stored.fields == {"api_key": "sk-abcdefgh12", "region": "eu"}
        assert (await chat.send("vault")).replies == ["had vault api_key=sk-abcdefgh12,region=eu scopes="]


async def test_declining_raises_integration_declined_in_the_handler(tmp_path: Any) -> None:
    async with client_for(tmp_path) as client:
        chat = await client.conversation("alice")
        await chat.send("github")
        turn = await chat.decline_integration("github")
        assert turn.ended and turn.replies == ["declined"]
        assert turn.block("integration_prompt")["payload"]["declined"] is True
        assert await stored_for(client, "alice", "github") is None
        with pytest.raises(AssertionError, match="not waiting on a integration_prompt"):
            await chat.connect_integration("github", access_token="late")
        # Declined is not connected: the next turn asks again.
        assert (await chat.send("github")).block("integration_prompt")["payload"]["blocking"] is True
        connected = await chat.connect_integration(access_token="gho_2")
        assert connected.replies == ["got github gho_2 scopes=read:user,repo"]


async def test_an_unanswered_prompt_raises_integration_timeout(tmp_path: Any) -> None:
    async with client_for(tmp_path) as client:
        chat = await client.conversation("alice")
        await chat.send("github 0.05")
        turn = await chat.finish()
        assert turn.replies[-1] == "timed out"
        assert turn.block("integration_prompt")["payload"]["timed_out"] is True
        assert chat.waiting_prompt is None
        with pytest.raises(AssertionError, match="not waiting on a integration_prompt"):
            await chat.decline_integration()


async def test_connecting_before_the_first_message(tmp_path: Any) -> None:
    async with client_for(tmp_path) as client:
        await client.connect_integration("github", "alice", access_token="gho_pre", scopes=["repo"])
        await client.connect_integration(gateway.Integration.GITHUB, "carol", access_token="gho_carol")
        await client.connect_integration("vault", "alice", fields={"api_key": "sk-0123456789"})
        await client.connect_integration("teamcode", "dana", org_id="acme-corp", access_token="tc_org")
        with pytest.raises(AssertionError, match="no integration named 'gitlab'"):
            await client.connect_integration("gitlab", "alice", access_token="x")
        with pytest.raises(ValueError, match="OAuth provider: pass access_token="):
            await client.connect_integration("github", "alice", fields={"api_key": "x"})

        alice = await client.conversation("alice")
        first = await alice.send("github")
        assert first.blocks == [] and first.replies == ["had github gho_pre scopes=repo"]
        assert (await alice.send("vault")).replies == ["had vault api_key=sk-0123456789 scopes="]
        assert (await (await client.conversation("carol")).send("github")).replies == [
            "had github gho_carol scopes=read:user,repo"
        ]
        # Owner-scoped: stored for the org, so a colleague has it and an outsider does not.
        colleague = await client.conversation("erin", org_id="acme-corp")
        assert (await colleague.send("teamcode")).replies == ["had teamcode tc_org scopes="]
        outsider = await client.conversation("frank", org_id="other-corp")
        assert (await outsider.send("teamcode")).block("integration_prompt")["payload"]["blocking"] is True
        await outsider.decline_integration()
