"""Integrations without a running gateway: provider presets and config errors, the encryption
key, the signed state, the authorize URLs authlib builds, and the token responses we accept."""

from __future__ import annotations

import time
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import pytest

import gateway
from gateway.config import ConfigError
from gateway.integrations.crypto import CredentialCipher, UnreadableCredentials, generate_key
from gateway.integrations.oauth import OAuthClient, OAuthFailure, new_code_verifier
from gateway.integrations.providers import PRESETS, build_providers, provider_from_options
from gateway.integrations.secrets_form import validate_secret_form
from gateway.integrations.state import StateRefused, StateSigner

CLIENT = {"client_id": "id-1", "client_secret": "secret-1"}


def query_of(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


# -- presets -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["github", "google", "slack", "linear", "microsoft"])
def test_every_required_preset_builds_with_a_client(name: str) -> None:
    provider = provider_from_options(name, CLIENT)
    assert provider.mode == "oauth"
    assert provider.authorize_url.startswith("https://") and provider.token_url.startswith("https://")
    assert provider.scopes and provider.client_id == "id-1"


def test_preset_facts() -> None:
    github = provider_from_options("github", CLIENT)
    assert github.authorize_url == "https://github.com/login/oauth/authorize"
    assert github.token_url == "https://github.com/login/oauth/access_token"
    microsoft = provider_from_options("microsoft", CLIENT)
    assert "offline_access" in microsoft.scopes
    assert microsoft.token_url == "https://login.microsoftonline.com/common/oauth2/v2.0/token"
    google = provider_from_options("google", CLIENT)
    assert google.authorize_params["access_type"] == "offline"
    linear = provider_from_options("linear", CLIENT)
    assert linear.scope_separator == "," and linear.revoke_url
    slack = provider_from_options("slack", CLIENT)
    assert slack.scope_param == "user_scope" and slack.token_path == "authed_user"


def test_a_preset_under_another_name_and_overrides() -> None:
    provider = provider_from_options("work_github", {**CLIENT, "preset": "github", "scopes": ["read:org"],
                                                     "title": "GitHub (work)", "owner_scoped": True})
    assert provider.authorize_url == PRESETS["github"]["authorize_url"]
    assert provider.scopes == ("read:org",) and provider.title == "GitHub (work)" and provider.owner_scoped


def test_secret_presets_and_custom_fields() -> None:
    aws = provider_from_options("aws", {})
    assert aws.mode == "secret" and [f.name for f in aws.fields] == ["access_key_id", "secret_access_key", "region"]
    custom = provider_from_options("openai", {"fields": ["api_key"]})
    assert custom.mode == "secret" and custom.fields[0].label == "Api key" and custom.fields[0].secret


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("custom", {"authorize_url": "https://a/authorize", "token_url": "https://a/token"}, "client_id is required"),
        ("github", {"client_id": "x"}, "client_secret is required"),
        ("x", {**CLIENT, "preset": "gitbucket"}, "no preset 'gitbucket'"),
        ("github", {**CLIENT, "scope": "repo"}, "unknown option(s) scope"),
        ("x", {"mode": "magic"}, "use 'oauth' or 'secret'"),
        ("x", {"fields": ["api_key"], "client_id": "y"}, "a secret provider takes fields"),
        ("x", {"fields": ["a", "a"]}, "must be unique"),
        ("x", {"fields": [{"name": "a", "pattern": "("}]}, "not a regular expression"),
        ("x", {"fields": ["not valid"]}, "must be a Python-style identifier"),
        ("Bad Name", {"fields": ["a"]}, "a provider name is lower-case"),
        ("x", {**CLIENT, "authorize_url": "ftp://a", "token_url": "https://a"}, "must be an http(s) URL"),
        ("github", {**CLIENT, "owner_scoped": "yes"}, "use true or false"),
        ("github", {**CLIENT, "token_auth_method": "private_key_jwt"}, "token_auth_method"),
    ],
)
def test_bad_provider_options_name_the_key(name: str, options: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        provider_from_options(name, options)
    assert message in str(info.value)
    assert f"integrations.providers.{name}" in str(info.value) and "\n" not in str(info.value)


def test_providers_declared_in_code_and_overridden_by_config() -> None:
    @dataclass
    class GitHub:  # a Capsule-style integration object
        type: str = "GitHub"
        scopes: tuple[str, ...] = ("repo",)

    app = gateway.App("x")
    app.add_integration(GitHub(), client_id="code-id", client_secret="code-secret")
    app.add_integration("vault", fields=["token"])
    providers = build_providers({"github": {"client_secret": "from-config"}}, app.integration_specs)
    assert set(providers) == {"github", "vault"}
    assert providers["github"].client_id == "code-id" and providers["github"].client_secret == "from-config"
    assert providers["github"].scopes == ("repo",)
    assert providers["vault"].mode == "secret"


# -- the authorize URL and token responses ---------------------------------------------------


def test_authorize_urls_carry_pkce_scopes_and_params() -> None:
    oauth = OAuthClient(timeout=1)
    verifier = new_code_verifier()
    assert 43 <= len(verifier) <= 128
    microsoft = provider_from_options("microsoft", CLIENT)
    query = query_of(
        oauth.authorization_url(microsoft, redirect_uri="https://gw/cb", state="S", code_verifier=verifier)
    )
    assert query["response_type"] == "code" and query["client_id"] == "id-1" and query["state"] == "S"
    assert query["redirect_uri"] == "https://gw/cb" and query["code_challenge_method"] == "S256"
    assert "offline_access" in query["scope"].split()
    slack = provider_from_options("slack", CLIENT)
    query = query_of(oauth.authorization_url(slack, redirect_uri="https://gw/cb", state="S", code_verifier=verifier))
    assert query["user_scope"] == "users:read,chat:write" and "scope" not in query
    google = provider_from_options("google", CLIENT)
    query = query_of(oauth.authorization_url(google, redirect_uri="https://gw/cb", state="S", code_verifier=verifier))
    assert query["access_type"] == "offline" and query["prompt"] == "consent"


def test_token_responses_are_normalised() -> None:
    slack = provider_from_options("slack", CLIENT)
    tokens = OAuthClient._token_set(slack, {
        "ok": True, "access_token": "xoxb-bot", "token_type": "bot",
        "authed_user": {"access_token": "xoxp-user", "token_type": "user", "scope": "users:read,chat:write"},
    }, fallback_refresh="")
    assert tokens.access_token == "xoxp-user" and tokens.scopes == ["users:read", "chat:write"]
    github = provider_from_options("github", CLIENT)
    tokens = OAuthClient._token_set(github, {"access_token": "a", "token_type": "bearer", "expires_in": 60},
                                    fallback_refresh="old-refresh")
    assert tokens.token_type == "Bearer" and tokens.refresh_token == "old-refresh"
    assert time.time() + 50 < tokens.expires_at <= time.time() + 61 and tokens.scopes == list(github.scopes)
    with pytest.raises(OAuthFailure, match="no access_token"):
        OAuthClient._token_set(github, {"token_type": "bearer"}, fallback_refresh="")


# -- encryption ------------------------------------------------------------------------------


def test_cipher_round_trip_and_key_rotation() -> None:
    old, new = generate_key(), generate_key()
    stored = CredentialCipher(old).encrypt({"access_token": "t"})
    assert "t\"" not in stored
    rotated = CredentialCipher(f"{new},{old}")
    assert rotated.decrypt(stored) == {"access_token": "t"}
    assert CredentialCipher(new).decrypt(rotated.encrypt({"a": 1})) == {"a": 1}  # the first key encrypts
    with pytest.raises(UnreadableCredentials):
        CredentialCipher(new).decrypt(stored)


@pytest.mark.parametrize("key", ["", "not-a-fernet-key", "  ,  "])
def test_a_bad_encryption_key_is_a_config_error(key: str) -> None:
    with pytest.raises(ConfigError, match="chatgate integrations key"):
        CredentialCipher(key)


# -- state -----------------------------------------------------------------------------------


def test_state_is_signed_bound_and_expiring() -> None:
    signer = StateSigner("secret")
    state, token = signer.issue(provider="github", user_id="u1", scope_key="org:o", session_id="s1",
                                prompt_id="int_github_1", ttl=60)
    assert signer.verify(token, provider="github") == state
    with pytest.raises(StateRefused, match="another integration"):
        signer.verify(token, provider="linear")
    with pytest.raises(StateRefused, match="signature"):
        StateSigner("other-secret").verify(token)
    with pytest.raises(StateRefused, match="signature"):
        signer.verify(token[:-2] + ("xx" if not token.endswith("xx") else "yy"))
    _, expired = signer.issue(provider="github", user_id="u1", scope_key="u1", session_id="s1", prompt_id=None,
                              ttl=-1)
    with pytest.raises(StateRefused) as info:
        signer.verify(expired)
    assert info.value.expired


def test_secret_form_validation() -> None:
    provider = provider_from_options("x", {"fields": [
        {"name": "key", "label": "Key", "pattern": "k-[0-9]+"}, {"name": "note", "required": False},
    ]})
    assert validate_secret_form(provider, {"key": " k-12 ", "note": ""}) == ({"key": "k-12"}, {})
    values, errors = validate_secret_form(provider, {"key": "nope\x00", "extra": "ignored"})
    assert values == {} and set(errors) == {"key"}
    assert validate_secret_form(provider, {})[1] == {"key": "Key is required."}


def test_pages_escape_everything() -> None:
    from gateway.integrations.pages import PageStyle, oauth_start_page, secret_form_page

    hostile = "<script>alert(1)</script>"
    style = PageStyle(app_name=hostile, accent="red;}</style><script>")
    provider = provider_from_options("x", {**CLIENT, "authorize_url": "https://a/auth", "token_url": "https://a/t",
                                           "title": hostile, "scopes": [hostile]})
    page = oauth_start_page(style, provider, state='"><script>', action_url="connect", decline_url="decline")
    assert "<script>" not in page and "&lt;script&gt;" in page and "--accent: #4f46e5" in page
    secret = provider_from_options("y", {"fields": [{"name": "k", "label": hostile, "secret": False}]})
    form = secret_form_page(style, secret, state="s", action_url="connect", decline_url="decline",
                            values={"k": '"><script>'}, errors={"k": hostile})
    assert "<script>" not in form


def test_connect_pages_warn_bystanders() -> None:
    """A connect link seen in a group chat says it connects the account for the asker."""
    from gateway.integrations.pages import PageStyle, oauth_start_page, secret_form_page

    style = PageStyle(app_name="Helper")
    provider = provider_from_options("x", {**CLIENT, "authorize_url": "https://a/auth", "token_url": "https://a/t"})
    page = oauth_start_page(style, provider, state="s", action_url="connect", decline_url="decline")
    secret = provider_from_options("y", {"fields": [{"name": "k", "label": "Key"}]})
    form = secret_form_page(style, secret, state="s", action_url="connect", decline_url="decline")
    for html in (page, form):
        assert "for the person who asked the bot for it" in html and "close this page" in html
