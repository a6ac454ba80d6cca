"""Tests of the task store as a whole on a real database (SQLite and PostgreSQL): its parts
share one database that another store sees, with the indexes its queries need, and a SQLite
file is in WAL mode (a database made before the newer columns is upgraded by the migrations:
test_migrate.py)."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

from sqlalchemy import inspect

from serve_app.store.tasks import TaskStore
from tests.serve_app.store.taskdb import spec


def test_get_and_get_by_conversion_find_the_task_from_another_store(
    store: TaskStore, url: str
) -> None:
    record = store.tasks.create(spec())
    other = TaskStore(url)
    try:
        assert other.tasks.get(record.task_id) == record
        assert other.tasks.get_by_conversion(record.conversion_id) == record
        assert other.tasks.get(record.conversion_id) is None
        assert other.tasks.get_by_conversion(record.task_id) is None
    finally:
        other.close()


def test_sqlite_file_is_in_wal_mode(sqlite_url: str, tmp_path: Path) -> None:
    TaskStore(sqlite_url).close()
    with closing(sqlite3.connect(tmp_path / "tasks.db")) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_claim_outbox_idempotency_and_retention_queries_have_indexes(store: TaskStore) -> None:
    found = inspect(store.engine)
    delivery_indexes = {index["name"] for index in found.get_indexes("webhook_deliveries")}
    assert "ix_webhook_deliveries_due" in delivery_indexes
    indexes = found.get_indexes("tasks")
    unique = {index["name"]: bool(index["unique"]) for index in indexes}
    columns = {index["name"]: index["column_names"] for index in indexes}
    assert columns["ix_tasks_claim"] == ["status", "lease_until"]
    assert columns["ux_tasks_idempotency_key"] == ["owner", "idempotency_key"]
    assert unique["ux_tasks_idempotency_key"]
    assert columns["ix_tasks_files_expiry"] == ["files_expired_at", "finished_at"]
    assert columns["ix_tasks_files_deletion"] == ["files_deleted_at", "files_expired_at"]
    assert columns["ix_tasks_input_key"] == ["input_key"]
