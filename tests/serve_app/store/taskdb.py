"""What the task store's tests create tasks with: a fixed moment, specs, webhook bodies,
and claiming a task that must be there."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from serve_app.store.records import TaskRecord, TaskSpec
from serve_app.store.tasks import TaskStore

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
HOOK = "https://example.test/hook"


def spec(*, webhook_url: str | None = None, owner: str = "local") -> TaskSpec:
    return TaskSpec(
        owner=owner,
        stems=("vocals", "drums"),
        preprocessing=("Denoise",),
        output_format="flac",
        input_key="inputs/x/audio.mp3",
        webhook_url=webhook_url,
        duration_s=12.5,
        eta_s=30.0,
        credit_estimate=1.5,
    )


def body(record: TaskRecord) -> str:
    """A webhook body that shows which record it was built from."""
    return json.dumps({"task_id": record.task_id, "status": record.status.value})


def broken_body(record: TaskRecord) -> str:
    raise RuntimeError("payload builder broke")


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def claimed(
    store: TaskStore, worker: str, *, now: datetime = T0, lease_s: float = 60
) -> TaskRecord:
    record = store.tasks.claim(worker, lease_s, now=now)
    assert record is not None
    return record
