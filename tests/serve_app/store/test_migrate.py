"""Tests of serve_app.store.migrate on SQLite and on a real PostgreSQL server: an empty
database and one at the previous schema (as the last release before migrations made it)
reach the head revision, matching the live metadata, their rows kept; a second upgrade
changes nothing; concurrent upgrades on PostgreSQL wait for each other; a store refuses a
database that is not at head; and `python -m serve_app migrate` end to end."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from serve_app.store.migrate import SchemaOutOfDateError, current, head, upgrade
from serve_app.store.schema import metadata
from serve_app.store.tasks import TaskStore
from tests.pgserver import PostgresServer
from tests.serve_app.store.taskdb import spec

REPO = Path(__file__).resolve().parents[3]
EARLY = datetime(2025, 1, 1, 12, 0)


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database: a new SQLite file, or a new database on the session's server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'tasks.db'}"
    postgres: PostgresServer = request.getfixturevalue("postgres")
    return postgres.new_database()


@contextmanager
def connected(url: str) -> Iterator[sa.Connection]:
    engine = sa.create_engine(url)
    try:
        with engine.begin() as connection:
            yield connection
    finally:
        engine.dispose()


def differences(url: str) -> list[Any]:
    """What Alembic's comparison finds between the database and the live metadata."""
    with connected(url) as connection:
        return list(compare_metadata(MigrationContext.configure(connection), metadata))


def previous_schema() -> sa.MetaData:
    """A frozen copy of an early release's tables, as its `create_tables` made them: the
    tasks table before the idempotency, retention and warnings columns and their indexes,
    the webhook tables, and no rate windows."""
    early = sa.MetaData()
    sa.Table(
        "tasks",
        early,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("task_id", sa.String(36), nullable=False, unique=True),
        sa.Column("conversion_id", sa.String(36), nullable=False, unique=True),
        sa.Column("owner", sa.Text, nullable=False),
        sa.Column("stems", sa.Text, nullable=False),
        sa.Column("preprocessing", sa.Text, nullable=False),
        sa.Column("output_format", sa.String(16), nullable=False),
        sa.Column("audio_url", sa.Text),
        sa.Column("input_key", sa.Text),
        sa.Column("webhook_url", sa.Text),
        sa.Column("submitted_duration_s", sa.Float),
        sa.Column("eta_s", sa.Float, nullable=False),
        sa.Column("credit_estimate", sa.Float, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("status_msg", sa.Text, nullable=False),
        sa.Column("progress", sa.Float, nullable=False),
        sa.Column("results", sa.Text, nullable=False),
        sa.Column("duration_s", sa.Float),
        sa.Column("conversion_cost", sa.Float),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
        sa.Column("started_at", sa.DateTime),
        sa.Column("finished_at", sa.DateTime),
        sa.Column("claims", sa.Integer, nullable=False),
        sa.Column("lease_owner", sa.Text),
        sa.Column("lease_until", sa.DateTime),
        sa.Index("ix_tasks_claim", "status", "lease_until"),
        sa.Index("ix_tasks_finished", "status", "finished_at"),
    )
    sa.Table(
        "webhook_deliveries",
        early,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("delivery_id", sa.String(64), nullable=False, unique=True),
        sa.Column("task_id", sa.String(36), sa.ForeignKey("tasks.task_id"), nullable=False),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Index("ix_webhook_deliveries_due", "state", "next_attempt_at"),
        sa.Index("ix_webhook_deliveries_task", "task_id"),
    )
    sa.Table(
        "webhook_attempts",
        early,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "delivery_id",
            sa.String(64),
            sa.ForeignKey("webhook_deliveries.delivery_id"),
            nullable=False,
        ),
        sa.Column("number", sa.Integer, nullable=False),
        sa.Column("at", sa.DateTime, nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("status_code", sa.Integer),
        sa.Column("error", sa.Text, nullable=False),
        sa.Column("seconds", sa.Float, nullable=False),
        sa.Index("ix_webhook_attempts_delivery", "delivery_id", "number"),
    )
    return early


def at_previous_schema(url: str) -> None:
    """Make the early release's tables and one finished task with a webhook delivery."""
    early = previous_schema()
    with connected(url) as connection:
        early.create_all(connection)
        connection.execute(
            early.tables["tasks"].insert(),
            {
                "task_id": "task-1",
                "conversion_id": "conversion-1",
                "owner": "local",
                "stems": '["vocals"]',
                "preprocessing": "[]",
                "output_format": "wav",
                "input_key": "inputs/task-1/audio.wav",
                "eta_s": 10.0,
                "credit_estimate": 1.0,
                "status": "COMPLETED",
                "status_msg": "",
                "progress": 1.0,
                "results": '{"vocals": "stems/task-1/vocals.wav"}',
                "created_at": EARLY,
                "updated_at": EARLY,
                "finished_at": EARLY,
                "claims": 1,
            },
        )
        connection.execute(
            early.tables["webhook_deliveries"].insert(),
            {
                "delivery_id": "msg_1",
                "task_id": "task-1",
                "url": "https://example.test/hook",
                "payload": "{}",
                "state": "DELIVERED",
                "next_attempt_at": EARLY,
                "created_at": EARLY,
            },
        )


def test_an_empty_database_is_migrated_to_the_metadata(empty_url: str) -> None:
    assert current(empty_url) is None
    assert upgrade(empty_url) == head()
    assert current(empty_url) == head()
    assert differences(empty_url) == []
    store = TaskStore(empty_url)
    try:
        record = store.tasks.create(spec())
        assert store.tasks.get(record.task_id) == record
    finally:
        store.close()


def test_a_database_at_the_previous_schema_is_adopted_with_its_rows(empty_url: str) -> None:
    at_previous_schema(empty_url)
    assert differences(empty_url) != []
    assert upgrade(empty_url) == head()
    assert differences(empty_url) == []
    store = TaskStore(empty_url)
    try:
        kept = store.tasks.get("task-1")
        assert kept is not None
        assert kept.results == {"vocals": "stems/task-1/vocals.wav"}
        assert kept.files_expired_at is None and kept.warnings == ()
        assert [delivery.delivery_id for delivery in store.outbox.deliveries("task-1")] == ["msg_1"]
        first, _ = store.tasks.create_once(spec(), "key-1", "fp")
        assert store.tasks.create_once(spec(), "key-1", "fp") == (first, False)
    finally:
        store.close()


def schema_of(connection: sa.Connection) -> dict[str, Any]:
    """Every table's columns (name, type, nullable) and indexes, as the database has them."""
    found = sa.inspect(connection)
    return {
        table: (
            [
                (column["name"], str(column["type"]), column["nullable"])
                for column in found.get_columns(table)
            ],
            sorted(str(index) for index in found.get_indexes(table)),
        )
        for table in found.get_table_names()
    }


def test_a_second_upgrade_changes_nothing(empty_url: str) -> None:
    at_previous_schema(empty_url)
    upgrade(empty_url)
    with connected(empty_url) as connection:
        before = schema_of(connection)
    assert upgrade(empty_url) == head()
    with connected(empty_url) as connection:
        assert schema_of(connection) == before
        versions = connection.execute(sa.text("SELECT version_num FROM alembic_version"))
        assert versions.scalars().all() == [head()]
        assert connection.execute(sa.text("SELECT count(*) FROM tasks")).scalar() == 1


def test_concurrent_upgrades_on_postgresql_wait_for_each_other(postgres: PostgresServer) -> None:
    url = postgres.new_database()
    with ThreadPoolExecutor(max_workers=4) as pool:
        revisions = list(pool.map(upgrade, [url] * 4))
    assert revisions == [head()] * 4
    assert differences(url) == []


def test_a_store_refuses_a_database_that_is_not_at_head(empty_url: str) -> None:
    with pytest.raises(SchemaOutOfDateError) as empty:
        TaskStore(empty_url)
    assert str(empty.value) == (
        f"the task database has no tables; this version needs {head()}: "
        "run `python -m serve_app migrate`"
    )
    at_previous_schema(empty_url)
    with pytest.raises(SchemaOutOfDateError, match="made by an earlier release") as earlier:
        TaskStore(empty_url)
    assert earlier.value.found is None and earlier.value.needed == head()
    with connected(empty_url) as connection:
        connection.execute(sa.text("CREATE TABLE alembic_version (version_num VARCHAR(32))"))
        connection.execute(sa.text("INSERT INTO alembic_version VALUES ('0000')"))
    with pytest.raises(SchemaOutOfDateError, match="is at revision 0000; this version needs"):
        TaskStore(empty_url)


def migrate(config: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m serve_app migrate CONFIG` in a child process."""
    environment = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "serve_app", "migrate", str(config)],
        capture_output=True,
        text=True,
        env=environment,
        cwd=config.parent,
        timeout=120,
    )


def serve_config(path: Path, args: dict[str, Any]) -> Path:
    """A Serve config file holding the stemsplit application with these args."""
    application = {"name": "stemsplit", "import_path": "serve_app.app:build_app", "args": args}
    path.write_text(yaml.safe_dump({"applications": [application]}))
    return path


def test_the_cli_migrates_a_sqlite_file_once(tmp_path: Path) -> None:
    config = serve_config(tmp_path / "app.yaml", {"data_dir": "data"})
    first = migrate(config)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == f"task database: no revision -> {head()}"
    assert current(f"sqlite:///{tmp_path / 'data' / 'tasks.db'}") == head()
    again = migrate(config)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == f"task database: {head()} -> {head()}"


def test_the_cli_migrates_postgresql_from_the_configured_variable(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    url = postgres.new_database()
    config = serve_config(tmp_path / "app.yaml", {"database_url_env": "TASKS_DB_URL"})
    done = migrate(config, {"TASKS_DB_URL": url})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"task database: no revision -> {head()}"
    assert differences(url) == []


def test_the_cli_exits_2_on_a_bad_config_or_an_unreachable_database(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    unknown = serve_config(tmp_path / "unknown.yaml", {"no_such_setting": 1})
    refused = migrate(unknown)
    assert refused.returncode == 2
    assert "invalid args" in refused.stderr and "no_such_setting" in refused.stderr
    missing = migrate(tmp_path / "missing.yaml")
    assert missing.returncode == 2 and "cannot read" in missing.stderr
    nowhere = postgres.url("no_such_database")
    unreachable = serve_config(tmp_path / "nowhere.yaml", {"database_url": nowhere})
    failed = migrate(unreachable)
    assert failed.returncode == 2
    assert "the task database cannot be migrated" in failed.stderr
    assert "no_such_database" in failed.stderr
    unset = serve_config(tmp_path / "unset.yaml", {"database_url_env": "TASKS_DB_URL"})
    empty = migrate(unset, {"TASKS_DB_URL": ""})
    assert empty.returncode == 2
    assert "TASKS_DB_URL, which is unset or empty" in empty.stderr
    assert not (tmp_path / "data").exists()
