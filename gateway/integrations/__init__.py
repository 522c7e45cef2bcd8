"""Integrations: users connect accounts (OAuth 2) or type in secrets (API keys) so a handler's
``session.require_integration("github")`` gets credentials, on every channel.

``Gateway`` calls :func:`attach` at start-up and :func:`mount` for the connect pages. This module
stays import-light: the OAuth client (authlib, httpx) loads only when a provider is configured.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from aiohttp import web

    from gateway.integrations.service import IntegrationService, IntegrationsHost

    class IntegrationsRuntime(IntegrationsHost, Protocol):
        """The running gateway, which keeps the service once it is built."""

        integrations: IntegrationService | None


async def attach(runtime: IntegrationsRuntime) -> None:
    """Set ``runtime.integrations`` to the service when any provider is configured or declared.

    Raises ``ConfigError`` for a bad provider, or providers without an encryption key.
    """
    from gateway.integrations.providers import build_providers

    settings = runtime.settings.integrations
    providers = build_providers(settings.providers, runtime.app.integration_specs)
    if not providers:
        runtime.integrations = None
        return
    # Only now: the OAuth client (authlib, httpx) is a tenth of a second of start-up.
    from gateway.config import ConfigError
    from gateway.integrations.crypto import KEY_HELP, CredentialCipher
    from gateway.integrations.service import IntegrationService
    if not settings.encryption_key:
        names = ", ".join(sorted(providers))
        raise ConfigError(
            f"config error: integrations.encryption_key is not set, and credentials for {names} must be stored "
            f"encrypted; {KEY_HELP}"
        )
    runtime.integrations = IntegrationService(runtime, providers, CredentialCipher(settings.encryption_key))


def mount(web_app: web.Application, service: IntegrationService) -> None:
    """Add the connect pages and the ``/integrations`` JSON API for ``service``."""
    from gateway.integrations.routes import add_routes

    add_routes(web_app, service)


__all__ = ["attach", "mount"]
