"""A page of rows and the total it belongs to, read in one statement.

Two statements (the page, then ``count(*)``) each read their own snapshot: in SQLite's autocommit
mode and under PostgreSQL's READ COMMITTED alike, a row committed between them is counted but not
listed (a transcript that says "4 messages" and shows 3). The total as a scalar subquery of the
page's own statement is read in the same snapshot as the rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, func
from sqlmodel import SQLModel, select
from sqlmodel.ext.asyncio.session import AsyncSession

Row = TypeVar("Row", bound=SQLModel)


async def page_and_total(
    db: AsyncSession,
    entity: type[Row],
    conditions: Sequence[ColumnElement[bool]],
    order_by: Any,
    *,
    offset: int,
    limit: int,
) -> tuple[list[Row], int]:
    """The rows of ``entity`` that meet ``conditions``, ordered, from ``offset`` and at most
    ``limit`` of them, and how many meet them in all: consistent with each other.

    A page past the end has no row to carry the total; it is then counted on its own."""
    count = select(func.count()).select_from(entity).where(*conditions)
    # correlate(None): the subquery reads the same table as the page, and SQLAlchemy would
    # otherwise correlate it to the outer row (counting 1 per row).
    total = count.correlate(None).scalar_subquery()
    statement = select(entity, total).where(*conditions).order_by(order_by).offset(offset).limit(limit)
    found = (await db.exec(statement)).all()
    if found:
        return [row[0] for row in found], int(found[0][1])
    return [], int((await db.exec(count)).one())
