"""Connected accounts: credentials (encrypted on the way in, decrypted on the way out)
and connect flows. Each method is one short transaction through the core ``Store``."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from gateway.integrations.crypto import CredentialCipher, UnreadableCredentials
from gateway.integrations.state import ConnectState
from gateway.store.database import Database
from gateway.store.integration_tables import IntegrationCredentialRow, IntegrationFlowRow


@dataclass
class StoredCredential:
    provider: str
    scope_key: str
    connected_by: str
    expires_at: int
    created_at: float
    updated_at: float
    payload: dict[str, Any] | None
    """The decrypted tokens or fields; ``None`` when the configured key cannot read them."""


class IntegrationQueries:
    def __init__(self, store: Database, cipher: CredentialCipher | None) -> None:
        self.store = store
        self.cipher = cipher

    # -- credentials -----------------------------------------------------------------------

    def _stored(self, row: IntegrationCredentialRow) -> StoredCredential:
        payload: dict[str, Any] | None = None
        if self.cipher is not None:
            try:
                payload = self.cipher.decrypt(row.secret)
            except UnreadableCredentials:
                payload = None
        return StoredCredential(
            row.provider, row.scope_key, row.connected_by, row.expires_at, row.created_at, row.updated_at, payload
        )

    def _require_cipher(self) -> CredentialCipher:
        if self.cipher is None:
            raise RuntimeError("no integrations.encryption_key is configured")
        return self.cipher

    async def get(self, scope_key: str, provider: str) -> StoredCredential | None:
        async with self.store.session() as db:
            row = (
                await db.exec(_credential(scope_key, provider))
            ).first()
        return None if row is None else self._stored(row)

    async def for_scopes(self, scope_keys: Iterable[str]) -> list[StoredCredential]:
        """Every credential stored under any of ``scope_keys``, in one query."""
        keys = sorted(set(scope_keys))
        async with self.store.session() as db:
            rows = (
                await db.exec(select(IntegrationCredentialRow).where(col(IntegrationCredentialRow.scope_key).in_(keys)))
            ).all()
        return [self._stored(row) for row in rows]

    async def listing(self, scope_key: str | None = None) -> list[StoredCredential]:
        statement = select(IntegrationCredentialRow).order_by(
            col(IntegrationCredentialRow.scope_key), col(IntegrationCredentialRow.provider)
        )
        if scope_key is not None:
            statement = statement.where(IntegrationCredentialRow.scope_key == scope_key)
        async with self.store.session() as db:
            rows = (await db.exec(statement)).all()
        return [self._stored(row) for row in rows]

    async def save(
        self, scope_key: str, provider: str, *, connected_by: str, payload: dict[str, Any], expires_at: int
    ) -> None:
        """Insert or replace the credentials of ``provider`` under ``scope_key``."""
        secret = self._require_cipher().encrypt(payload)
        now = time.time()
        values: dict[str, Any] = {
            "connected_by": connected_by, "secret": secret, "expires_at": expires_at, "updated_at": now,
        }
        for _ in range(2):  # a concurrent insert of the same key turns the second into an update
            try:
                async with self.store.write() as db:
                    result = await db.exec(
                        update(IntegrationCredentialRow)
                        .where(col(IntegrationCredentialRow.scope_key) == scope_key)
                        .where(col(IntegrationCredentialRow.provider) == provider)
                        .values(**values)
                    )
                    if not result.rowcount:
                        db.add(
                            IntegrationCredentialRow(provider=provider, scope_key=scope_key, created_at=now, **values)
                        )
                return
            except IntegrityError:
                continue
        raise RuntimeError(f"could not store {provider} credentials for {scope_key}")

    async def replace_tokens(
        self, scope_key: str, provider: str, *, previous_updated_at: float, payload: dict[str, Any], expires_at: int
    ) -> bool:
        """Store refreshed tokens unless the row changed meanwhile (another refresh or a revoke)."""
        secret = self._require_cipher().encrypt(payload)
        async with self.store.write() as db:
            result = await db.exec(
                update(IntegrationCredentialRow)
                .where(col(IntegrationCredentialRow.scope_key) == scope_key)
                .where(col(IntegrationCredentialRow.provider) == provider)
                .where(col(IntegrationCredentialRow.updated_at) == previous_updated_at)
                .values(secret=secret, expires_at=expires_at, updated_at=time.time())
            )
        return bool(result.rowcount)

    async def delete_if_unchanged(self, scope_key: str, provider: str, *, updated_at: float) -> bool:
        """Remove dead credentials unless they were replaced meanwhile (a refresh elsewhere)."""
        async with self.store.write() as db:
            result = await db.exec(
                delete(IntegrationCredentialRow)
                .where(col(IntegrationCredentialRow.scope_key) == scope_key)
                .where(col(IntegrationCredentialRow.provider) == provider)
                .where(col(IntegrationCredentialRow.updated_at) == updated_at)
            )
        return bool(result.rowcount)

    async def delete(self, scope_key: str, provider: str) -> StoredCredential | None:
        """Remove the credentials; returns what was stored (for revoking at the provider)."""
        async with self.store.write() as db:
            row = (
                await db.exec(_credential(scope_key, provider))
            ).first()
            if row is None:
                return None
            stored = self._stored(row)
            await db.exec(delete(IntegrationCredentialRow).where(col(IntegrationCredentialRow.id) == row.id))
        return stored

    # -- flows (used states) ---------------------------------------------------------------

    async def flow_status(self, state_id: str) -> str | None:
        async with self.store.session() as db:
            row = await db.get(IntegrationFlowRow, state_id)
        return None if row is None else row.status

    async def begin_oauth(self, state: ConnectState, new_verifier: Callable[[], str]) -> tuple[str, str | None]:
        """Start (or resume) the OAuth leg of a state: ``(status, verifier)``. A pending flow
        keeps its verifier, so pressing Continue twice sends the same PKCE challenge."""
        cipher = self._require_cipher()
        async with self.store.session() as db:
            row = await db.get(IntegrationFlowRow, state.id)
        if row is None:
            verifier = new_verifier()
            try:
                async with self.store.write() as db:
                    db.add(
                        IntegrationFlowRow(
                            id=state.id,
                            provider=state.provider,
                            session_id=state.session_id,
                            status="pending",
                            code_verifier=cipher.encrypt({"v": verifier}),
                            created_at=time.time(),
                        )
                    )
                return "pending", verifier
            except IntegrityError:
                async with self.store.session() as db:
                    row = await db.get(IntegrationFlowRow, state.id)
                if row is None:
                    raise
        if row.status != "pending" or not row.code_verifier:
            return row.status, None
        return "pending", str(cipher.decrypt(row.code_verifier)["v"])

    async def claim_pending(self, state_id: str, to_status: str) -> str | None:
        """Move a pending flow to ``to_status`` atomically; returns its PKCE verifier ("" when
        it has none), or ``None`` when the flow is not pending (used, or never started)."""
        async with self.store.write() as db:
            row = await db.get(IntegrationFlowRow, state_id)
            if row is None or row.status != "pending":
                return None
            result = await db.exec(
                update(IntegrationFlowRow)
                .where(col(IntegrationFlowRow.id) == state_id)
                .where(col(IntegrationFlowRow.status) == "pending")
                .values(status=to_status)
            )
            if not result.rowcount:
                return None
            encrypted = row.code_verifier
        if not encrypted:
            return ""
        return str(self._require_cipher().decrypt(encrypted)["v"])

    async def set_status(self, state_id: str, status: str) -> None:
        values: dict[str, Any] = {"status": status, "finished_at": None}
        if status in ("connected", "declined"):
            values.update(finished_at=time.time(), code_verifier=None)
        async with self.store.write() as db:
            await db.exec(update(IntegrationFlowRow).where(col(IntegrationFlowRow.id) == state_id).values(**values))

    async def finish(self, state: ConnectState, status: str) -> bool:
        """Mark a state used with ``status`` (``connected``/``declined``) unless it already was.

        True exactly once per state: a pending OAuth flow moves on, a fresh state is inserted,
        anything else (a used state) is refused.
        """
        now = time.time()
        async with self.store.write() as db:
            result = await db.exec(
                update(IntegrationFlowRow)
                .where(col(IntegrationFlowRow.id) == state.id)
                .where(col(IntegrationFlowRow.status) == "pending")
                .values(status=status, finished_at=now, code_verifier=None)
            )
            if result.rowcount:
                return True
        try:
            async with self.store.write() as db:
                db.add(
                    IntegrationFlowRow(
                        id=state.id,
                        provider=state.provider,
                        session_id=state.session_id,
                        status=status,
                        created_at=now,
                        finished_at=now,
                    )
                )
            return True
        except IntegrityError:
            return False

    async def purge_flows(self, older_than: float) -> int:
        """Forget flows created before ``older_than`` (their states have expired anyway)."""
        async with self.store.write() as db:
            result = await db.exec(delete(IntegrationFlowRow).where(col(IntegrationFlowRow.created_at) < older_than))
        return int(result.rowcount or 0)


def _credential(scope_key: str, provider: str) -> Any:
    """The statement selecting one stored credential."""
    return (
        select(IntegrationCredentialRow)
        .where(IntegrationCredentialRow.scope_key == scope_key)
        .where(IntegrationCredentialRow.provider == provider)
    )
