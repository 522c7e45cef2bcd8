"""The people behind platform identities: one chatgate user per person, found or made from a
platform user (Telegram, Slack, a web visitor)."""

from __future__ import annotations

from sqlalchemy import Connection, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from gateway.inbound import PlatformUser
from gateway.store.database import Database
from gateway.store.statements import (
    SELECT_USER,
)
from gateway.store.tables import (
    IdentityRow,
    UserRow,
)
from gateway.types import UserInfo


class UserQueries:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def resolve(self, platform_user: PlatformUser) -> UserInfo:
        """The stable chatgate user behind a platform identity, made on first sight."""
        async with self._db.session() as db:
            found = await self._user_for(db, platform_user)
        if found is not None:
            return await self._refresh(found, platform_user)
        try:
            async with self._db.write() as db:
                user = UserRow(email=platform_user.email, org_id=platform_user.org_id, name=platform_user.name)
                db.add(user)
                await db.flush()
                db.add(IdentityRow(platform=platform_user.platform, platform_user_id=platform_user.id, user_id=user.id))
            return UserInfo(user.id, user.email, user.org_id)
        except IntegrityError:  # another request made the same identity meanwhile
            async with self._db.session() as db:
                found = await self._user_for(db, platform_user)
            assert found is not None
            return UserInfo(found.id, found.email, found.org_id)

    async def find(self, platform_user: PlatformUser) -> UserInfo | None:
        """The chatgate user behind a platform identity if there is one; nothing is made."""
        async with self._db.session() as db:
            found = await self._user_for(db, platform_user)
        return None if found is None else UserInfo(found.id, found.email, found.org_id)

    async def _user_for(self, db: AsyncSession, platform_user: PlatformUser) -> UserRow | None:
        statement = (
            select(UserRow)
            .join(IdentityRow, col(IdentityRow.user_id) == col(UserRow.id))
            .where(IdentityRow.platform == platform_user.platform)
            .where(IdentityRow.platform_user_id == platform_user.id)
        )
        return (await db.exec(statement)).first()

    async def _refresh(self, row: UserRow, platform_user: PlatformUser) -> UserInfo:
        """Keep email/org current when the platform vouches for new values."""
        email = platform_user.email or row.email
        org_id = platform_user.org_id or row.org_id
        if (email, org_id) != (row.email, row.org_id):
            async with self._db.write() as db:
                await db.exec(update(UserRow).where(col(UserRow.id) == row.id).values(email=email, org_id=org_id))
        return UserInfo(row.id, email, org_id)

    async def get(self, user_id: str) -> UserInfo | None:
        def work(conn: Connection) -> UserInfo | None:
            row = conn.execute(SELECT_USER, {"user_id": user_id}).mappings().first()
            return None if row is None else UserInfo(row["id"], row["email"], row["org_id"])

        return await self._db.run_read(work)
