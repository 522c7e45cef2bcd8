"""Integration providers: what a user can connect, from config and ``app.add_integration``.

An OAuth 2 provider has an authorize URL, a token URL, a client id/secret and scopes; a secret
provider has named fields the user types in (an API key). Presets fill in the well-known
providers; any preset value can be overridden in ``[integrations.providers.<name>]``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from gateway.config import ConfigError
from gateway.types import integration_name

ProviderMode = Literal["oauth", "secret"]

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
MAX_FIELD_LENGTH = 8192  # characters a secret field may hold; longer input is refused


@dataclass(frozen=True)
class SecretField:
    """One value a user types into a secret provider's form."""

    name: str
    label: str
    secret: bool = True
    """Shown as a password input, and never echoed back into the form."""
    required: bool = True
    pattern: str | None = None
    """A regular expression the whole value must match (``^sk-[A-Za-z0-9]+$``)."""
    help: str = ""


@dataclass(frozen=True)
class ProviderSpec:
    name: str
    mode: ProviderMode
    title: str
    owner_scoped: bool = False
    """Credentials belong to the owner (``user.owner_id``: the org) rather than the user."""
    # OAuth 2
    authorize_url: str = ""
    token_url: str = ""
    revoke_url: str = ""
    client_id: str = ""
    client_secret: str = ""
    scopes: tuple[str, ...] = ()
    scope_separator: str = " "
    scope_param: str = "scope"
    """The authorize parameter carrying scopes (Slack's user tokens use ``user_scope``)."""
    token_path: str = ""
    """A key of the token response holding the user's token (Slack: ``authed_user``)."""
    authorize_params: Mapping[str, str] = field(default_factory=dict)
    token_auth_method: str = "client_secret_basic"
    pkce: bool = True
    # secret
    fields: tuple[SecretField, ...] = ()

    @property
    def scope_string(self) -> str:
        return self.scope_separator.join(self.scopes)


# Presets. Sources: each provider's OAuth documentation.
GOOGLE_AUTHORIZE = (
    "https://accounts.google.com/o/oauth2/v2/auth"  # developers.google.com/identity/protocols/oauth2/web-server
)
GOOGLE_TOKEN = "https://oauth2.googleapis.com/token"
GOOGLE_REVOKE = "https://oauth2.googleapis.com/revoke"
# Google issues a refresh token only with access_type=offline, and again only with prompt=consent.
GOOGLE_OFFLINE = {"access_type": "offline", "prompt": "consent", "include_granted_scopes": "true"}
MICROSOFT_BASE = "https://login.microsoftonline.com/common/oauth2/v2.0"  # learn.microsoft.com identity platform v2.0


def _google(title: str, *scopes: str) -> dict[str, Any]:
    return {
        "mode": "oauth",
        "title": title,
        "authorize_url": GOOGLE_AUTHORIZE,
        "token_url": GOOGLE_TOKEN,
        "revoke_url": GOOGLE_REVOKE,
        "scopes": ["openid", "email", *scopes],
        "authorize_params": GOOGLE_OFFLINE,
    }


PRESETS: dict[str, dict[str, Any]] = {
    # docs.github.com/en/apps/oauth-apps/building-oauth-apps/authorizing-oauth-apps
    "github": {
        "mode": "oauth",
        "title": "GitHub",
        "authorize_url": "https://github.com/login/oauth/authorize",
        "token_url": "https://github.com/login/oauth/access_token",
        "scopes": ["read:user", "repo"],
        "token_auth_method": "client_secret_post",
    },
    "google": _google("Google", "profile"),
    "gmail": _google("Gmail", "https://www.googleapis.com/auth/gmail.modify"),
    "gcal": _google("Google Calendar", "https://www.googleapis.com/auth/calendar"),
    "gdrive": _google("Google Drive", "https://www.googleapis.com/auth/drive.file"),
    # docs.slack.dev/authentication/installing-with-oauth: user tokens come back under authed_user
    "slack": {
        "mode": "oauth",
        "title": "Slack",
        "authorize_url": "https://slack.com/oauth/v2/authorize",
        "token_url": "https://slack.com/api/oauth.v2.access",
        "revoke_url": "",
        "scopes": ["users:read", "chat:write"],
        "scope_separator": ",",
        "scope_param": "user_scope",
        "token_path": "authed_user",
        "token_auth_method": "client_secret_post",
    },
    # linear.app/developers/oauth-2-0-authentication
    "linear": {
        "mode": "oauth",
        "title": "Linear",
        "authorize_url": "https://linear.app/oauth/authorize",
        "token_url": "https://api.linear.app/oauth/token",
        "revoke_url": "https://api.linear.app/oauth/revoke",
        "scopes": ["read", "write"],
        "scope_separator": ",",
        "token_auth_method": "client_secret_post",
    },
    # Microsoft returns a refresh token only when offline_access is asked for.
    "microsoft": {
        "mode": "oauth",
        "title": "Microsoft",
        "authorize_url": f"{MICROSOFT_BASE}/authorize",
        "token_url": f"{MICROSOFT_BASE}/token",
        "scopes": ["openid", "email", "profile", "offline_access", "User.Read"],
        "token_auth_method": "client_secret_post",
    },
    "outlook": {
        "mode": "oauth",
        "title": "Outlook",
        "authorize_url": f"{MICROSOFT_BASE}/authorize",
        "token_url": f"{MICROSOFT_BASE}/token",
        "scopes": ["openid", "email", "offline_access", "Mail.ReadWrite", "Calendars.ReadWrite"],
        "token_auth_method": "client_secret_post",
    },
    # Capsule's secret integrations.
    "aws": {
        "mode": "secret",
        "title": "AWS",
        "fields": [
            {"name": "access_key_id", "label": "Access key ID", "secret": False, "pattern": r"[A-Z0-9]{16,128}"},
            {"name": "secret_access_key", "label": "Secret access key"},
            {"name": "region", "label": "Region", "secret": False, "required": False},
        ],
    },
    "tailscale": {
        "mode": "secret",
        "title": "Tailscale",
        "fields": [{"name": "auth_key", "label": "Auth key", "pattern": r"tskey-\S+"}],
    },
}

OPTION_NAMES = {
    "preset",
    "mode",
    "title",
    "owner_scoped",
    "authorize_url",
    "token_url",
    "revoke_url",
    "client_id",
    "client_secret",
    "scopes",
    "scope_separator",
    "scope_param",
    "token_path",
    "authorize_params",
    "token_auth_method",
    "pkce",
    "fields",
}
TOKEN_AUTH_METHODS = ("client_secret_basic", "client_secret_post", "none")


def build_providers(
    configured: Mapping[str, Mapping[str, Any]], declared: Mapping[str, Mapping[str, Any]] | None = None
) -> dict[str, ProviderSpec]:
    """Providers from ``[integrations.providers.*]`` and ``app.add_integration`` (config wins
    where both name the same provider: the deployment knows its client secret best).

    Raises :class:`ConfigError` naming the first bad option.
    """
    options_by_name: dict[str, dict[str, Any]] = {}
    for name, spec in (declared or {}).items():
        options_by_name[integration_name(name)] = _declared_options(spec)
    for name, options in configured.items():
        key = integration_name(name)
        options_by_name[key] = {**options_by_name.get(key, {}), **dict(options)}
    return {name: provider_from_options(name, options) for name, options in options_by_name.items()}


def _declared_options(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Options from ``app.add_integration(integration, **options)``; attributes of a Capsule
    ``Integration``/``IntegrationConfig`` object fill what the keywords leave out."""
    options = {k: v for k, v in spec.items() if k != "integration" and v not in (None, "", [], ())}
    integration = spec.get("integration")
    if not isinstance(integration, str) and integration is not None:
        for attr in ("client_id", "client_secret", "scopes", "fields", "authorize_url", "token_url", "title"):
            value = getattr(integration, attr, None)
            if value not in (None, "", [], ()) and attr not in options:
                options[attr] = value
    return options


def provider_from_options(name: str, options: Mapping[str, Any]) -> ProviderSpec:
    where = f"integrations.providers.{name}"
    if not NAME_PATTERN.match(name):
        raise ConfigError(f"config error: {where}: a provider name is lower-case letters, digits, '-', '_' or '.'")
    unknown = sorted(set(options) - OPTION_NAMES)
    if unknown:
        raise ConfigError(
            f"config error: {where}: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(OPTION_NAMES))}"
        )
    preset_name = str(options.get("preset") or (name if name in PRESETS else ""))
    if preset_name and preset_name not in PRESETS:
        raise ConfigError(
            f"config error: {where}.preset: no preset {preset_name!r}; presets: {', '.join(sorted(PRESETS))}"
        )
    merged: dict[str, Any] = {**PRESETS.get(preset_name, {}), **{k: v for k, v in options.items() if k != "preset"}}
    mode = merged.get("mode") or ("secret" if merged.get("fields") else "oauth")
    if mode not in ("oauth", "secret"):
        raise ConfigError(f"config error: {where}.mode: use 'oauth' or 'secret' (got {mode!r})")
    title = str(merged.get("title") or name.replace("_", " ").title())
    owner_scoped = _bool(merged.get("owner_scoped", False), f"{where}.owner_scoped")
    if mode == "secret":
        if merged.get("client_id") or merged.get("client_secret"):
            raise ConfigError(f"config error: {where}: a secret provider takes fields, not client_id/client_secret")
        fields = tuple(_secret_field(item, f"{where}.fields") for item in merged.get("fields") or [])
        if not fields:
            raise ConfigError(f"config error: {where}.fields: a secret provider needs at least one field")
        names = [f.name for f in fields]
        if len(set(names)) != len(names):
            raise ConfigError(f"config error: {where}.fields: field names must be unique")
        return ProviderSpec(name=name, mode="secret", title=title, owner_scoped=owner_scoped, fields=fields)
    for required in ("authorize_url", "token_url", "client_id"):
        value = merged.get(required)
        if not isinstance(value, str) or not value:
            raise ConfigError(f"config error: {where}.{required} is required for an OAuth 2 provider")
    for url_key in ("authorize_url", "token_url", "revoke_url"):
        value = merged.get(url_key) or ""
        if value and not str(value).startswith(("https://", "http://")):
            raise ConfigError(f"config error: {where}.{url_key}: must be an http(s) URL (got {value!r})")
    auth_method = str(merged.get("token_auth_method") or "client_secret_basic")
    if auth_method not in TOKEN_AUTH_METHODS:
        raise ConfigError(f"config error: {where}.token_auth_method: one of {', '.join(TOKEN_AUTH_METHODS)}")
    if not merged.get("client_secret") and auth_method != "none":
        raise ConfigError(
            f'config error: {where}.client_secret is required (or set token_auth_method = "none" for a public client)'
        )
    scopes = merged.get("scopes") or []
    if isinstance(scopes, str):
        scopes = scopes.replace(",", " ").split()
    params = merged.get("authorize_params") or {}
    if not isinstance(params, Mapping):
        raise ConfigError(f"config error: {where}.authorize_params must be a table of strings")
    return ProviderSpec(
        name=name,
        mode="oauth",
        title=title,
        owner_scoped=owner_scoped,
        authorize_url=str(merged["authorize_url"]),
        token_url=str(merged["token_url"]),
        revoke_url=str(merged.get("revoke_url") or ""),
        client_id=str(merged["client_id"]),
        client_secret=str(merged.get("client_secret") or ""),
        scopes=tuple(str(s) for s in scopes),
        scope_separator=str(merged.get("scope_separator") or " "),
        scope_param=str(merged.get("scope_param") or "scope"),
        token_path=str(merged.get("token_path") or ""),
        authorize_params={str(k): str(v) for k, v in params.items()},
        token_auth_method=auth_method,
        pkce=_bool(merged.get("pkce", True), f"{where}.pkce"),
    )


def _bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    raise ConfigError(f"config error: {where}: use true or false (got {value!r})")


def _secret_field(item: Any, where: str) -> SecretField:
    if isinstance(item, str):
        item = {"name": item}
    if isinstance(item, SecretField):
        return item
    if not isinstance(item, Mapping) or not isinstance(item.get("name"), str) or not item["name"]:
        raise ConfigError(f"config error: {where}: each field is a name or a table with a name")
    name = item["name"]
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", name):
        raise ConfigError(f"config error: {where}: field name {name!r} must be a Python-style identifier")
    unknown = sorted(set(item) - {"name", "label", "secret", "required", "pattern", "help"})
    if unknown:
        raise ConfigError(f"config error: {where}.{name}: unknown option(s) {', '.join(unknown)}")
    pattern = item.get("pattern")
    if pattern is not None:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ConfigError(f"config error: {where}.{name}.pattern: not a regular expression ({exc})") from None
    return SecretField(
        name=name,
        label=str(item.get("label") or name.replace("_", " ").capitalize()),
        secret=_bool(item.get("secret", True), f"{where}.{name}.secret"),
        required=_bool(item.get("required", True), f"{where}.{name}.required"),
        pattern=pattern,
        help=str(item.get("help") or ""),
    )
