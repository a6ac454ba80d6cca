"""Fixtures of the store's tests: a task store on a fresh database migrated to head, once a
SQLite file and once a database of the session's PostgreSQL server (tests/pgserver.py), and a
local S3 (moto in a child process, one per session) with a fresh bucket per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import s3fs

from serve_app.store.migrate import upgrade
from serve_app.store.s3blobs import S3BlobStore
from serve_app.store.tasks import TaskStore
from tests.pgserver import PostgresServer
from tests.serve_app.store.s3server import local_s3

FAKE_AWS_ENVIRONMENT = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": "/nonexistent/aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
}


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


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A local S3 (moto, on loopback) shared by the session's tests."""
    with local_s3() as endpoint:
        yield endpoint


@pytest.fixture(scope="session")
def s3_admin(s3_endpoint: str) -> s3fs.S3FileSystem:
    """A client of the local S3 for the tests' own requests (making buckets, looking at
    what a store left), with the fake credentials given outright."""
    return s3fs.S3FileSystem(
        endpoint_url=s3_endpoint,
        key=FAKE_AWS_ENVIRONMENT["AWS_ACCESS_KEY_ID"],
        secret=FAKE_AWS_ENVIRONMENT["AWS_SECRET_ACCESS_KEY"],
        client_kwargs={"region_name": FAKE_AWS_ENVIRONMENT["AWS_DEFAULT_REGION"]},
        skip_instance_cache=True,
        use_listings_cache=False,
    )


@pytest.fixture
def s3_url(s3_admin: s3fs.S3FileSystem, monkeypatch: pytest.MonkeyPatch) -> str:
    """s3://<a fresh bucket>/blobs, with fake credentials in the environment for this test
    only and no AWS profile or config file of the machine's user in the way."""
    for name, value in FAKE_AWS_ENVIRONMENT.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    bucket = f"blobs-{uuid.uuid4().hex[:16]}"
    s3_admin.call_s3("create_bucket", Bucket=bucket)
    return f"s3://{bucket}/blobs"


@pytest.fixture
def s3_store(s3_url: str, s3_endpoint: str, tmp_path: Path) -> S3BlobStore:
    """A store in a fresh bucket, spooling uploads in the test's folder."""
    return S3BlobStore(s3_url, spool_dir=tmp_path / "spool", endpoint_url=s3_endpoint)
