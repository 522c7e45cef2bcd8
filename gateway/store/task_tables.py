"""Tables and queries of background work: tasks, task-card watchers, scheduler ticks.

Every query opens its own short transaction (as ``Store`` does), and every state change of a
task is a conditional ``UPDATE ... WHERE status = <expected>``, so two worker processes that
race for the same row cannot both win it.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import JSON, Column, DateTime, Index, Text, delete, func, or_, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Field, SQLModel, col, select

from gateway.ids import new_id
from gateway.store.tables import LeaseRow, SessionRow, utcnow
from gateway.store.transactions import Transactions

CLAIMABLE = ("pending", "scheduled", "retry")
"""Statuses a worker may start: new, due later, or waiting for its next attempt."""
FINISHED = ("completed", "failed", "cancelled", "timeout")
OPEN = ("pending", "scheduled", "retry", "running")


def _when(**kwargs: Any) -> Any:
    """A timezone-aware timestamp column (asyncpg refuses aware values for naive columns)."""
    return Field(sa_column=Column(DateTime(timezone=True), **kwargs))


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands timestamps back without a zone; every timestamp we store is UTC."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class TaskRow(SQLModel, table=True):  # type: ignore[no-redef]  # mypy: the field ``kwargs`` below
    __tablename__ = "tasks"
    __table_args__ = (Index("ix_tasks_status_run_at", "status", "run_at"),)

    id: str = Field(default_factory=new_id, primary_key=True, max_length=64)
    name: str = Field(index=True, max_length=255)
    display_name: str = ""
    session_id: str | None = Field(default=None, index=True, max_length=64)
    kwargs: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    status: str = Field(default="pending", max_length=16)
    """``pending`` | ``scheduled`` | ``running`` | ``retry`` -> ``completed`` | ``failed`` |
    ``timeout`` | ``cancelled``."""
    attempts: int = 0
    max_attempts: int = 1
    timeout: float = 0.0
    lock_key: str | None = Field(default=None, max_length=255)
    recurrence_seconds: float | None = None
    worker: str | None = Field(default=None, max_length=128)
    result: Any = Field(default=None, sa_column=Column(JSON))
    error: str | None = Field(default=None, sa_column=Column(Text))
    run_at: datetime = Field(default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False))
    created_at: datetime = Field(default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False))
    started_at: datetime | None = _when(nullable=True)
    completed_at: datetime | None = _when(nullable=True)
    updated_at: datetime = Field(default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False))


class TaskWatchRow(SQLModel, table=True):
    """A session showing a task's live card (``session.show_task``)."""

    __tablename__ = "task_watchers"

    task_id: str = Field(primary_key=True, max_length=64)
    session_id: str = Field(primary_key=True, max_length=64)
    message: str | None = None


class ScheduleRunRow(SQLModel, table=True):
    """One scheduler tick that ran: the fence that makes a tick run once across processes."""

    __tablename__ = "schedule_runs"

    job_id: str = Field(primary_key=True, max_length=255)
    run_time: datetime = Field(sa_column=Column(DateTime(timezone=True), primary_key=True))
    holder: str = Field(max_length=128)
    created_at: datetime = Field(default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False))


class TaskQueries:
    """The SQL of the task service, the scheduler and broadcasts."""

    def __init__(self, store: Transactions) -> None:
        self.store = store

    # -- tasks ---------------------------------------------------------------------------

    async def add(self, row: TaskRow) -> TaskRow:
        async with self.store.write() as db:
            db.add(row)
        return row

    async def get(self, task_id: str) -> TaskRow | None:
        async with self.store.session() as db:
            return await db.get(TaskRow, task_id)

    async def find(
        self,
        *,
        name: str | None = None,
        status: str | Iterable[str] | None = None,
        session_id: str | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[TaskRow]:
        """Newest first."""
        statement = self._matching(select(TaskRow), name, status, session_id)
        statement = statement.order_by(col(TaskRow.id).desc()).offset(offset)
        if limit is not None:
            statement = statement.limit(limit)
        async with self.store.session() as db:
            return list((await db.exec(statement)).all())

    async def count(
        self, *, name: str | None = None, status: str | Iterable[str] | None = None, session_id: str | None = None
    ) -> int:
        statement = self._matching(select(func.count()).select_from(TaskRow), name, status, session_id)
        async with self.store.session() as db:
            return int((await db.exec(statement)).one())

    @staticmethod
    def _matching(statement: Any, name: str | None, status: str | Iterable[str] | None, session_id: str | None) -> Any:
        if name is not None:
            statement = statement.where(TaskRow.name == name)
        if status is not None:
            statuses = [status] if isinstance(status, str) else list(status)
            statement = statement.where(col(TaskRow.status).in_(statuses))
        if session_id is not None:
            statement = statement.where(TaskRow.session_id == session_id)
        return statement

    async def due(self, names: Iterable[str], now: datetime, limit: int) -> list[TaskRow]:
        """Claimable tasks of ``names`` whose time has come, oldest due first; those whose lock
        a running task holds are left out, so a queue behind one busy lock cannot fill the
        batch and hold up tasks with other keys."""
        busy_locks = (
            select(TaskRow.lock_key).where(TaskRow.status == "running").where(col(TaskRow.lock_key).is_not(None))
        )
        statement = (
            select(TaskRow)
            .where(col(TaskRow.status).in_(CLAIMABLE))
            .where(col(TaskRow.name).in_(list(names)))
            .where(col(TaskRow.run_at) <= now)
            .where(or_(col(TaskRow.lock_key).is_(None), col(TaskRow.lock_key).not_in(busy_locks)))
            .order_by(col(TaskRow.run_at), col(TaskRow.id))
            .limit(limit)
        )
        async with self.store.session() as db:
            return list((await db.exec(statement)).all())

    async def next_due(self, names: Iterable[str]) -> datetime | None:
        statement = (
            select(func.min(TaskRow.run_at))
            .where(col(TaskRow.status).in_(CLAIMABLE))
            .where(col(TaskRow.name).in_(list(names)))
        )
        async with self.store.session() as db:
            return as_utc((await db.exec(statement)).one())

    async def claim(self, task_id: str, expected_status: str, worker: str) -> TaskRow | None:
        """Start one attempt; the updated row for exactly one worker, None for the others."""
        now = utcnow()
        async with self.store.write() as db:
            result = await db.exec(
                update(TaskRow)
                .where(col(TaskRow.id) == task_id)
                .where(col(TaskRow.status) == expected_status)
                .values(
                    status="running",
                    worker=worker,
                    attempts=TaskRow.attempts + 1,
                    started_at=func.coalesce(TaskRow.started_at, now),
                    updated_at=now,
                )
            )
        if not result.rowcount:
            return None
        return await self.get(task_id)

    async def transition(
        self, task_id: str, expected: Iterable[str], *, follow_up: TaskRow | None = None, **values: Any
    ) -> bool:
        """Set ``values`` if the task is still in one of the ``expected`` statuses; ``follow_up``
        (a recurring task's next run) is added in the same transaction, so a crash can never leave
        a recurring task finished with no next run queued."""
        values["updated_at"] = utcnow()
        if values.get("status") in FINISHED:
            values.setdefault("completed_at", values["updated_at"])
        async with self.store.write() as db:
            result = await db.exec(
                update(TaskRow)
                .where(col(TaskRow.id) == task_id)
                .where(col(TaskRow.status).in_(list(expected)))
                .values(**values)
            )
            if result.rowcount and follow_up is not None:
                db.add(follow_up)
        return bool(result.rowcount)

    async def extend_timeout(self, task_id: str, timeout: float) -> None:
        async with self.store.write() as db:
            await db.exec(update(TaskRow).where(col(TaskRow.id) == task_id).values(timeout=timeout))

    async def running(self, worker: str | None = None) -> list[TaskRow]:
        statement = select(TaskRow).where(TaskRow.status == "running")
        if worker is not None:
            statement = statement.where(TaskRow.worker == worker)
        async with self.store.session() as db:
            return list((await db.exec(statement)).all())

    async def live_holders(self, lease_names: Iterable[str]) -> set[str]:
        """Which of ``lease_names`` are held now (unexpired)."""
        names = list(lease_names)
        if not names:
            return set()
        async with self.store.session() as db:
            rows = (await db.exec(select(LeaseRow).where(col(LeaseRow.name).in_(names)))).all()
        now = utcnow()
        return {r.name for r in rows if (as_utc(r.expires_at) or now) > now}

    # -- task cards ----------------------------------------------------------------------

    async def watch(self, task_id: str, session_id: str, message: str | None) -> None:
        async with self.store.write() as db:
            row = await db.get(TaskWatchRow, (task_id, session_id))
            if row is None:
                db.add(TaskWatchRow(task_id=task_id, session_id=session_id, message=message))
            elif message is not None and row.message != message:
                row.message = message
                db.add(row)

    async def watchers(self, task_id: str) -> list[TaskWatchRow]:
        async with self.store.session() as db:
            return list((await db.exec(select(TaskWatchRow).where(TaskWatchRow.task_id == task_id))).all())

    # -- scheduler ticks -----------------------------------------------------------------

    async def claim_tick(self, job_id: str, run_time: datetime, holder: str) -> bool:
        """Record that ``job_id`` runs for ``run_time``; False if some process already did."""
        try:
            async with self.store.write() as db:
                db.add(ScheduleRunRow(job_id=job_id, run_time=run_time.astimezone(UTC), holder=holder))
        except IntegrityError:
            return False
        return True

    async def has_run(self, job_id: str) -> bool:
        async with self.store.session() as db:
            found = (await db.exec(select(ScheduleRunRow.job_id).where(ScheduleRunRow.job_id == job_id))).first()
        return found is not None

    async def forget_ticks(self, job_id: str, older_than: timedelta) -> None:
        cutoff = utcnow() - older_than
        async with self.store.write() as db:
            await db.exec(
                delete(ScheduleRunRow)
                .where(col(ScheduleRunRow.job_id) == job_id)
                .where(col(ScheduleRunRow.run_time) < cutoff)
            )

    # -- broadcast audiences -------------------------------------------------------------

    async def session_ids(self, channel_type: str | None = None) -> list[str]:
        """Every session id (of one channel type), oldest first."""
        statement = select(SessionRow.id)
        if channel_type is not None:
            statement = statement.where(SessionRow.channel_type == channel_type)
        async with self.store.session() as db:
            return list((await db.exec(statement.order_by(col(SessionRow.id)))).all())
