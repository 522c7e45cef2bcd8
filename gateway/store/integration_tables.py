"""The integrations' tables: stored credentials (encrypted) and connect flows (used states).

Imported by ``gateway.store`` so the schema exists before the first query.
"""

from __future__ import annotations

from sqlalchemy import Column, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from gateway.ids import new_id


class IntegrationCredentialRow(SQLModel, table=True):
    """One connected account. ``secret`` is a Fernet token: the tokens or fields as JSON."""

    __tablename__ = "integration_credentials"
    __table_args__ = (UniqueConstraint("scope_key", "provider", name="uq_integration_credentials_scope"),)

    id: str = Field(default_factory=new_id, primary_key=True, max_length=64)
    provider: str = Field(max_length=64)
    scope_key: str = Field(index=True, max_length=255)
    """The user id, or the owner id (``org:<id>``) for an owner-scoped provider."""
    connected_by: str = Field(max_length=64)
    """The chatgate user who connected it."""
    secret: str = Field(sa_column=Column(Text, nullable=False))
    expires_at: int = 0
    """When the access token expires (unix seconds; 0: never or unknown). Kept in the clear so
    listings and refresh decisions need no key."""
    created_at: float = 0.0
    updated_at: float = 0.0


class IntegrationFlowRow(SQLModel, table=True):
    """A connect link that was acted on. Its id is the state id, so a state is used once.

    ``status``: ``pending`` (sent to the provider, waiting for the callback), ``exchanging``
    (the callback is trading the code), then ``connected`` or ``declined``.
    """

    __tablename__ = "integration_flows"

    id: str = Field(primary_key=True, max_length=64)
    provider: str = Field(max_length=64)
    session_id: str = Field(max_length=64)
    status: str = Field(max_length=16)
    code_verifier: str | None = Field(default=None, sa_column=Column(Text))
    """The PKCE verifier, encrypted like credentials."""
    created_at: float = Field(default=0.0, index=True)
    finished_at: float | None = None
