"""Tests of the task store as a whole on a real SQLite file: its parts share one database that
another process's store sees, in WAL mode with the indexes its queries need, and a database
made before the newer columns is upgraded."""

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


NEWER_COLUMNS = (
    "idempotency_key",
    "request_fingerprint",
    "files_expired_at",
    "files_deleted_at",
    "warnings",
)


def test_a_database_made_before_the_newer_columns_is_upgraded(url: str, tmp_path: Path) -> None:
    old_store = TaskStore(url)
    task_id = old_store.tasks.create(spec()).task_id
    old_store.close()
    with closing(sqlite3.connect(tmp_path / "tasks.db")) as conn:
        newer_indexes = [
            name
            for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")
            if name.startswith(("ux_tasks_idempotency", "ix_tasks_files", "ix_tasks_owner"))
        ]
        for name in newer_indexes:
            conn.execute(f"DROP INDEX {name}")
        for column in NEWER_COLUMNS:
            conn.execute(f"ALTER TABLE tasks DROP COLUMN {column}")
        conn.commit()

    store = TaskStore(url)
    try:
        kept = store.tasks.get(task_id)
        assert kept is not None and kept.files_expired_at is None
        assert kept.warnings == ()
        first, _ = store.tasks.create_once(spec(), "key-1", "fp")
        assert store.tasks.create_once(spec(), "key-1", "fp") == (first, False)
    finally:
        store.close()
    with closing(sqlite3.connect(tmp_path / "tasks.db")) as conn:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(tasks)")}
        indexes = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
    assert set(NEWER_COLUMNS) <= columns
    assert set(newer_indexes) <= indexes
    assert "ux_tasks_idempotency_key" in newer_indexes
