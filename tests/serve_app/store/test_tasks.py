"""Tests of the task store as a whole on a real SQLite file: its parts share one database that
another process's store sees, in WAL mode with the indexes its queries need (a database made
before the newer columns is upgraded by the migrations: test_migrate.py)."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

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


def test_sqlite_file_is_in_wal_mode_with_claim_and_outbox_indexes(
    store: TaskStore, tmp_path: Path
) -> None:
    with closing(sqlite3.connect(tmp_path / "tasks.db")) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        indexes = {
            (table, name)
            for table, name in conn.execute("SELECT tbl_name, name FROM sqlite_master")
        }
    assert ("tasks", "ix_tasks_claim") in indexes
    assert ("webhook_deliveries", "ix_webhook_deliveries_due") in indexes


def test_idempotency_and_retention_queries_have_indexes(store: TaskStore, tmp_path: Path) -> None:
    with closing(sqlite3.connect(tmp_path / "tasks.db")) as conn:
        unique = {
            name: bool(flag) for _, name, flag, *_ in conn.execute("PRAGMA index_list(tasks)")
        }
        columns = {
            name: [row[2] for row in conn.execute(f"PRAGMA index_info({name})")] for name in unique
        }
    assert columns["ux_tasks_idempotency_key"] == ["owner", "idempotency_key"]
    assert unique["ux_tasks_idempotency_key"]
    assert columns["ix_tasks_files_expiry"] == ["files_expired_at", "finished_at"]
    assert columns["ix_tasks_files_deletion"] == ["files_deleted_at", "files_expired_at"]
    assert columns["ix_tasks_input_key"] == ["input_key"]
