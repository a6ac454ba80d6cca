"""The file-retention ledger: which finished tasks' files have expired and which are known
to be deleted, and which uploads tasks still name. serve_app/store/retention.py marks a
task's files expired here before deleting them and records the deletion after, so that no
task is served while its files go and none is left marked but undeleted."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

from sqlalchemy import ColumnElement, and_, select, update
from sqlalchemy.engine import Engine

from serve_app.store.records import TaskRecord
from serve_app.store.schema import FINAL_VALUES, as_utc, task_table, to_record, utc_moment


class FileLedger:
    """The expiry and deletion marks of tasks' files, in the tasks table."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def expire_files(
        self, before: datetime, *, limit: int = 1000, now: datetime | None = None
    ) -> list[TaskRecord]:
        """Mark the files of at most `limit` final tasks finished before `before` expired (at
        `now`), oldest first, and return those tasks as marked.

        Only tasks this call marked are returned, so concurrent callers share the work.
        """
        moment = utc_moment(now)
        candidates = self._expiry_candidates(as_utc(before), limit)
        if not candidates:
            return []
        marked: list[int] = []
        with self._engine.begin() as conn:
            for key in candidates:
                statement = (
                    update(task_table)
                    .where(task_table.c.id == key, _expirable(as_utc(before)))
                    .values(files_expired_at=moment)
                )
                if conn.execute(statement).rowcount == 1:
                    marked.append(key)
            query = select(task_table).where(task_table.c.id.in_(marked))
            by_key = {row.id: to_record(row) for row in conn.execute(query).all()}
        return [by_key[key] for key in marked]

    def files_awaiting_deletion(self, *, limit: int = 1000) -> list[TaskRecord]:
        """Tasks whose files expired but are not yet known to be deleted, oldest first: left
        by a sweep that stopped part way, or being deleted by one now."""
        query = (
            select(task_table)
            .where(
                task_table.c.files_deleted_at.is_(None), task_table.c.files_expired_at.isnot(None)
            )
            .order_by(task_table.c.files_expired_at, task_table.c.id)
            .limit(limit)
        )
        with self._engine.connect() as conn:
            return [to_record(row) for row in conn.execute(query).all()]

    def mark_files_deleted(self, task_ids: Collection[str], *, now: datetime | None = None) -> int:
        """Record that these tasks' expired files are deleted; how many were newly marked."""
        if not task_ids:
            return 0
        statement = (
            update(task_table)
            .where(
                task_table.c.task_id.in_(list(task_ids)),
                task_table.c.files_expired_at.isnot(None),
                task_table.c.files_deleted_at.is_(None),
            )
            .values(files_deleted_at=utc_moment(now))
        )
        with self._engine.begin() as conn:
            return int(conn.execute(statement).rowcount)

    def input_keys_in_use(self, input_keys: Collection[str]) -> set[str]:
        """Which of these blob keys some task names as its input (expired tasks included)."""
        if not input_keys:
            return set()
        query = select(task_table.c.input_key).where(task_table.c.input_key.in_(list(input_keys)))
        with self._engine.connect() as conn:
            return set(conn.execute(query).scalars().all())

    def _expiry_candidates(self, before: datetime, limit: int) -> list[int]:
        query = (
            select(task_table.c.id)
            .where(_expirable(before))
            .order_by(task_table.c.finished_at, task_table.c.id)
            .limit(limit)
        )
        with self._engine.connect() as conn:
            return list(conn.execute(query).scalars().all())


def _expirable(before: datetime) -> ColumnElement[bool]:
    """Final tasks that finished before `before` and whose files are still served."""
    return and_(
        task_table.c.files_expired_at.is_(None),
        task_table.c.finished_at < before,
        task_table.c.status.in_(FINAL_VALUES),
    )
