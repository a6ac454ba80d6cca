"""Statistics of the task database that admission and estimates read: how many tasks wait
or run (the queue bound, the eta's tasks ahead, health and metrics), and how fast recent
tasks ran (the eta's seconds of work per second of audio)."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from serve_app.store.records import Status
from serve_app.store.schema import task_table


class TaskStatistics:
    """Counts and speeds over the tasks table; reads only."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def counts(self) -> dict[Status, int]:
        """How many tasks are in each status (every status present)."""
        query = select(task_table.c.status, func.count()).group_by(task_table.c.status)
        with self._engine.connect() as conn:
            found = {Status(status): count for status, count in conn.execute(query).all()}
        return {status: found.get(status, 0) for status in Status}

    def recent_speed(self, limit: int = 20) -> float | None:
        """Seconds of work per second of audio, averaged over the last `limit` completed tasks
        of known duration; None before any."""
        query = (
            select(task_table.c.started_at, task_table.c.finished_at, task_table.c.duration_s)
            .where(
                task_table.c.status == Status.COMPLETED.value,
                task_table.c.duration_s > 0,
                task_table.c.started_at.is_not(None),
                task_table.c.finished_at.is_not(None),
            )
            .order_by(task_table.c.finished_at.desc(), task_table.c.id.desc())
            .limit(limit)
        )
        with self._engine.connect() as conn:
            rows = conn.execute(query).all()
        if not rows:
            return None
        ratios = [(end - start).total_seconds() / duration for start, end, duration in rows]
        return sum(ratios) / len(ratios)
