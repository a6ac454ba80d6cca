"""Fixtures of the store's tests: a task store on a fresh database migrated to head, once a
SQLite file and once a database of the session's PostgreSQL server (tests/pgserver.py), and a
blob store in a fresh bucket of the session's local S3 (tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from serve_app.store.migrate import upgrade
from serve_app.store.s3blobs import S3BlobStore
from serve_app.store.tasks import TaskStore
from tests.pgserver import PostgresServer


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A fresh SQLite file at the head revision, for the tests about SQLite itself."""
    database = f"sqlite:///{tmp_path / 'tasks.db'}"
    upgrade(database)
    return database


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh task database at the head revision: a SQLite file, then a PostgreSQL one."""
    if request.param == "sqlite":
        database = f"sqlite:///{tmp_path / 'tasks.db'}"
    else:
        server: PostgresServer = request.getfixturevalue("postgres")
        database = server.new_database()
    upgrade(database)
    return database


@pytest.fixture
def store(url: str) -> Iterator[TaskStore]:
    opened = TaskStore(url)
    yield opened
    opened.close()


@pytest.fixture
def s3_store(s3_url: str, s3_endpoint: str, tmp_path: Path) -> S3BlobStore:
    """A store in a fresh bucket, spooling uploads in the test's folder."""
    return S3BlobStore(s3_url, spool_dir=tmp_path / "spool", endpoint_url=s3_endpoint)
