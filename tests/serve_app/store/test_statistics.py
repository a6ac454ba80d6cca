"""Tests of the task statistics on a real SQLite file: counts by status and the recent speed."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from serve_app.store.records import Status
from serve_app.store.tasks import TaskStore
from tests.serve_app.store.taskdb import at, claimed, spec


def test_counts_cover_every_status(store: TaskStore) -> None:
    assert store.statistics.counts() == dict.fromkeys(Status, 0)
    ids = [store.tasks.create(spec()).task_id for _ in range(4)]
    claimed(store, "w1")
    claimed(store, "w2")
    store.tasks.complete(ids[0], "w1", {}, duration_s=1, conversion_cost=0)
    store.tasks.fail(ids[3], "bad audio")
    assert store.statistics.counts() == dict.fromkeys(Status, 1)


def finish(store: TaskStore, *, work_s: float, duration_s: float, start: datetime) -> None:
    """Create, claim and complete a task that took `work_s` for `duration_s` of audio."""
    task_id = store.tasks.create(spec()).task_id
    record = claimed(store, "w", now=start)
    assert record.task_id == task_id
    end = start + timedelta(seconds=work_s)
    assert store.tasks.complete(task_id, "w", {}, duration_s=duration_s, conversion_cost=0, now=end)


def test_recent_speed_averages_the_latest_completed_tasks(store: TaskStore) -> None:
    assert store.statistics.recent_speed() is None
    finish(store, work_s=100, duration_s=10, start=at(0))  # 10 s per second, oldest
    finish(store, work_s=10, duration_s=20, start=at(200))  # 0.5
    finish(store, work_s=30, duration_s=20, start=at(300))  # 1.5
    finish(store, work_s=5, duration_s=0, start=at(400))  # unknown duration: ignored
    store.tasks.fail(store.tasks.create(spec()).task_id, "bad audio")
    assert store.statistics.recent_speed() == pytest.approx((10 + 0.5 + 1.5) / 3)
    assert store.statistics.recent_speed(limit=2) == pytest.approx((0.5 + 1.5) / 2)
