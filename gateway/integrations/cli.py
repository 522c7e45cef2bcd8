"""``chatgate integrations list | revoke | key``: see and revoke connected accounts from a shell.

Works on the database directly (the gateway need not run). Providers come from the config file;
a provider declared only in code with ``app.add_integration`` is still listed and revoked here,
but cannot be told at the provider's side.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import TYPE_CHECKING, Any, TextIO

from gateway.config import Settings, load_settings
from gateway.integrations.crypto import CredentialCipher, generate_key
from gateway.integrations.providers import build_providers

if TYPE_CHECKING:
    from gateway.store import Store
    from gateway.store.integrations import IntegrationQueries

# The store, records and the OAuth client (authlib, httpx) are imported by the commands that use
# them: every `chatgate` command loads this module to register `integrations`, and start-up
# time counts.

EXIT_NOT_FOUND = 1


def register_cli(subparsers: Any) -> None:
    """Add ``integrations`` to ``chatgate``'s subcommands (``handler`` runs it)."""
    parser = subparsers.add_parser(
        "integrations", help="list and revoke connected accounts (OAuth and secrets)",
        description="List and revoke the accounts users connected, or make an encryption key.",
    )
    actions = parser.add_subparsers(dest="integrations_command", metavar="ACTION")
    actions.required = True

    listing = actions.add_parser("list", help="list connected accounts (no secrets are shown)")
    _common(listing)
    listing.add_argument("--user", metavar="ID", help="only this user id (or org:<id> for owner-scoped providers)")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")

    revoke = actions.add_parser("revoke", help="forget a connected account and revoke it at the provider")
    _common(revoke)
    revoke.add_argument("provider", metavar="PROVIDER", help="the integration name, e.g. github")
    revoke.add_argument("--user", metavar="ID", required=True,
                        help="the user id (or org:<id> for an owner-scoped provider)")
    revoke.add_argument("--local-only", action="store_true",
                        help="only delete the stored credentials; do not call the provider's revocation endpoint")

    key = actions.add_parser("key", help="print a new encryption key for [integrations] encryption_key")
    key.set_defaults(handler=run_cli)

    for sub in (listing, revoke):
        sub.set_defaults(handler=run_cli)
    parser.set_defaults(handler=run_cli)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="TOML config file (default: ./chatgate.toml if present)")
    parser.add_argument("--database", metavar="URL", help="database URL (default: database.url or $DATABASE_URL)")


def run_cli(args: argparse.Namespace, *, out: TextIO | None = None) -> int:
    """Run ``chatgate integrations <action>``; returns the exit status."""
    out = out or sys.stdout
    action = getattr(args, "integrations_command", None)
    if action == "key":
        print(generate_key(), file=out)
        return 0
    settings = load_settings(getattr(args, "config", None))
    if getattr(args, "database", None):
        settings.database.url = args.database
    if action == "list":
        return asyncio.run(list_command(settings, user=args.user, as_json=args.json, out=out))
    if action == "revoke":
        return asyncio.run(revoke_command(settings, args.provider, user=args.user,
                                          local_only=args.local_only, out=out))
    print("chatgate integrations: choose list, revoke or key", file=sys.stderr)
    return 2


def _records(settings: Settings, store: Store) -> IntegrationQueries:
    from gateway.store.integrations import IntegrationQueries

    key = settings.integrations.encryption_key
    return IntegrationQueries(store, CredentialCipher(key) if key else None)


async def list_command(settings: Settings, *, user: str | None, as_json: bool, out: TextIO) -> int:
    from gateway.integrations.service import describe
    from gateway.store import Store

    providers = build_providers(settings.integrations.providers)
    store = Store(settings.database.url)
    await store.open()
    try:
        rows = [describe(stored, providers.get(stored.provider))
                for stored in await _records(settings, store).listing(user)]
    finally:
        await store.close()
    if not settings.integrations.encryption_key:
        for row in rows:
            row.pop("scopes", None)
            row["readable"] = None
    if as_json:
        print(json.dumps(rows, indent=2), file=out)
        return 0
    if not rows:
        print("no connected integrations" + (f" for {user}" if user else ""), file=out)
        return 0
    header = ("PROVIDER", "USER/OWNER", "CONNECTED BY", "CONNECTED", "EXPIRES")
    table = [header] + [
        (r["provider"], r["scope_key"], r["connected_by"], _when(r["connected_at"]), _expiry(r["expires_at"]))
        for r in rows
    ]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    for line in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip(), file=out)
    return 0


async def revoke_command(settings: Settings, provider_name: str, *, user: str, local_only: bool, out: TextIO) -> int:
    from gateway.integrations.oauth import OAuthClient
    from gateway.integrations.service import revoke_at_provider
    from gateway.store import Store

    providers = build_providers(settings.integrations.providers)
    name = provider_name.lower()
    store = Store(settings.database.url)
    await store.open()
    try:
        stored = await _records(settings, store).delete(user, name)
    finally:
        await store.close()
    if stored is None:
        print(f"{name} is not connected for {user}", file=sys.stderr)
        return EXIT_NOT_FOUND
    print(f"revoked {name} for {user}", file=out)
    provider = providers.get(name)
    if local_only or provider is None or provider.mode != "oauth" or not provider.revoke_url:
        return 0
    if stored.payload is None:
        print(f"warning: the stored {name} tokens could not be decrypted (no or wrong encryption_key), "
              "so the provider was not asked to revoke them", file=sys.stderr)
        return 0
    oauth = OAuthClient(timeout=settings.integrations.http_timeout)
    if await revoke_at_provider(oauth, provider, stored.payload):
        print(f"{provider.title} revoked the tokens too", file=out)
    else:
        print(f"warning: {provider.title} did not confirm the revocation; revoke the app's access in your "
              f"{provider.title} account settings", file=sys.stderr)
    return 0


def _when(timestamp: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(timestamp)) if timestamp else "-"


def _expiry(expires_at: int) -> str:
    if not expires_at:
        return "never"
    return _when(expires_at) + (" (expired)" if expires_at < time.time() else "")
