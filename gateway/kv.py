"""The scoped key-value store: Capsule's ``session.get/set/delete(key, *, scope="session")`` and
``app.get/set/delete(key)``, on the collections' scopes (``gateway.collections``).

``KVStore(store_getter, *, write_gate=None)``
    ``await get(key, default=None, *, scope="app", scope_id="")``, ``set``, ``delete``: the raw
    store. ``for_identity(identity)`` gives Capsule's ``session.get/set/delete(key, *,
    scope="session")``; ``app_scope()`` gives ``app.get/set/delete(key)``.
"""

from __future__ import annotations

from typing import Any

from gateway.collections import VALID_SCOPES, Backend, DocumentStore, ScopeIdentity, StoreGetter
from gateway.store.documents import WriteGate

MAX_KV_KEY = 512


def _check_key(key: Any) -> str:
    if not isinstance(key, str) or not key or len(key) > MAX_KV_KEY:
        raise ValueError(f"a KV key must be a non-empty string of at most {MAX_KV_KEY} characters")
    return key


class KVStore:
    """Scoped key-value entries: ``(scope, scope_id, key) -> JSON value``.

    Unlike collections, an empty ``scope_id`` is accepted for every scope, as in Capsule, where
    ``session.set(k, v)`` in a scheduled job (session id "") writes one shared bucket.
    """

    def __init__(self, store_getter: StoreGetter, *, write_gate: WriteGate | None = None) -> None:
        self._backend = Backend(store_getter, None, write_gate or WriteGate())

    def _source(self) -> DocumentStore:
        return self._backend.source("The KV store")

    @staticmethod
    def _where(scope: str, scope_id: str | None) -> tuple[str, str]:
        if scope not in VALID_SCOPES:
            raise ValueError(f"scope must be one of {VALID_SCOPES}, got {scope!r}")
        return scope, "" if scope == "app" else str(scope_id or "")

    @staticmethod
    def scope_id_for(scope: str, identity: ScopeIdentity | None) -> str:
        """The id an identity has in ``scope`` ("" when it has none)."""
        if scope == "app" or identity is None:
            return ""
        if scope == "user":
            return identity.user_id or ""
        if scope == "owner":
            return identity.owner_id or identity.user_id or ""
        if scope == "session":
            return identity.session_id or ""
        raise ValueError(f"scope must be one of {VALID_SCOPES}, got {scope!r}")

    async def get(self, key: str, default: Any = None, *, scope: str = "app", scope_id: str = "") -> Any:
        """The stored value (a stored ``None`` is returned as ``None``), else ``default``."""
        where = self._where(scope, scope_id)
        found, value = await self._source().kv.get(*where, _check_key(key))
        return value if found else default

    async def set(self, key: str, value: Any, *, scope: str = "app", scope_id: str = "") -> None:
        """Store ``value`` (converted to JSON types the way session data is)."""
        where = self._where(scope, scope_id)
        await self._source().kv.set(*where, _check_key(key), value, gate=self._backend.gate)

    async def delete(self, key: str, *, scope: str = "app", scope_id: str = "") -> bool:
        """Remove the key; True when it existed."""
        where = self._where(scope, scope_id)
        return await self._source().kv.delete(*where, _check_key(key), gate=self._backend.gate)

    def for_identity(self, identity: ScopeIdentity | None) -> IdentityKV:
        return IdentityKV(self, identity)

    def app_scope(self) -> IdentityKV:
        return IdentityKV(self, None, default_scope="app")


class IdentityKV:
    """Capsule's ``session.get/set/delete(key, *, scope="session")`` for one identity."""

    def __init__(self, store: KVStore, identity: ScopeIdentity | None, *, default_scope: str = "session") -> None:
        self._store = store
        self._identity = identity
        self._default_scope = default_scope

    def _scope(self, scope: str | None) -> tuple[str, str]:
        resolved = scope or self._default_scope
        return resolved, KVStore.scope_id_for(resolved, self._identity)

    async def get(self, key: str, default: Any = None, *, scope: str | None = None) -> Any:
        resolved, scope_id = self._scope(scope)
        return await self._store.get(key, default, scope=resolved, scope_id=scope_id)

    async def set(self, key: str, value: Any, *, scope: str | None = None) -> None:
        resolved, scope_id = self._scope(scope)
        await self._store.set(key, value, scope=resolved, scope_id=scope_id)

    async def delete(self, key: str, *, scope: str | None = None) -> None:
        resolved, scope_id = self._scope(scope)
        await self._store.delete(key, scope=resolved, scope_id=scope_id)
