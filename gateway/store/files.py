"""What is known of stored files (the bytes are on disk: ``gateway.files.FileStore``)."""

from __future__ import annotations

from gateway.store.database import Database
from gateway.store.records import FileRecord
from gateway.store.tables import (
    FileRow,
)


class FileQueries:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(self, *, name: str, content_type: str, size: int, session_id: str | None) -> FileRecord:
        row = FileRow(name=name, content_type=content_type, size=size, session_id=session_id)
        async with self._db.write() as db:
            db.add(row)
        return FileRecord(row.id, row.name, row.content_type, row.size, row.session_id)

    async def get(self, file_id: str) -> FileRecord | None:
        async with self._db.session() as db:
            row = await db.get(FileRow, file_id)
        return None if row is None else FileRecord(row.id, row.name, row.content_type, row.size, row.session_id)
