"""``GET /api/v1/openapi.json``: a valid OpenAPI 3 document that lists exactly the routes the
gateway serves, and that the official SDK's view of the API (promptrails-api.md) agrees with."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from openapi_spec_validator import validate

import gateway
from adapters.web.testing import base_url, running_gateway

KEY = "openapi-key"
HTTP_METHODS = ("get", "post", "put", "patch", "delete")


def make_app() -> gateway.App:
    app = gateway.App("openapi-bot")

    @app.message()
    async def handle(session: gateway.Session, msg: gateway.Message) -> None:
        await session.reply("echo: " + msg.text)

    return app


@pytest.fixture
async def gw(tmp_path):
    async with running_gateway(make_app(), tmp_path, web={"api_keys": [KEY]}) as running:
        yield running


async def fetch_document(gw) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.get(f"{base_url(gw)}/api/v1/openapi.json") as response:
        assert response.status == 200  # public: no API key needed to read the documentation
        assert response.content_type == "application/json"
        return await response.json()


async def test_the_document_is_valid_openapi_3(gw):
    document = await fetch_document(gw)
    validate(document)  # raises on any violation of the OpenAPI 3.0 schema
    assert document["openapi"].startswith("3.")
    assert document["servers"] == [{"url": f"{base_url(gw)}/api/v1"}]
    assert document["components"]["securitySchemes"]["ApiKey"] == {"type": "apiKey", "in": "header",
                                                                   "name": "X-API-Key"}


async def test_the_document_lists_exactly_the_served_routes(gw):
    document = await fetch_document(gw)
    documented = {
        (path, method.upper()) for path, item in document["paths"].items() for method in item if method in HTTP_METHODS
    }
    rest = next(adapter for adapter in gw.adapters if hasattr(adapter, "rest")).rest
    served = {(path, method) for path, methods in rest.route_table.items() for method in methods}
    assert documented == served
    # And each documented operation is really there: without a key it is a 401, never a 404/405.
    async with aiohttp.ClientSession() as http:
        for path, method in sorted(documented):
            url = base_url(gw) + "/api/v1" + path.replace("{session_id}", "s1").replace("{execution_id}", "e1")
            async with http.request(method, url) as response:
                assert response.status == 401, (method, path, response.status)
                assert (await response.json())["error"]["code"] == "unauthorized"


async def test_the_promptrails_essentials_are_described(gw):
    document = await fetch_document(gw)
    paths = document["paths"]
    send = paths["/chat/sessions/{session_id}/messages"]["post"]
    assert send["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/NewMessage"}
    assert set(send["responses"]) >= {"201", "400", "401", "404"}
    assert "text/event-stream" in paths["/chat/sessions/{session_id}/messages/stream"]["post"]["responses"]["200"][
        "content"]
    assert paths["/chat/sessions/{session_id}"]["delete"]["responses"]["204"] == {"description": "Deleted"}
    meta = document["components"]["schemas"]["PageMeta"]["required"]
    assert set(meta) == {"total", "page", "limit", "pages", "total_pages"}  # every SDK finds its key
    error = document["components"]["schemas"]["Error"]
    assert error["properties"]["error"]["required"] == ["code", "message"]
