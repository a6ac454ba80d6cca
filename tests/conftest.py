"""Shared fixtures: a folder of tiny random-weight models in demucs's formats and a throwaway
PostgreSQL server and a local S3 (moto), each once per session, and a fresh bucket per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import s3fs

from models.families.demucs.testmodel import make_test_model
from tests.pgserver import PostgresMissingError, PostgresServer, local_postgres, postgres_bin_dir
from tests.s3server import FAKE_AWS_ENVIRONMENT, local_s3

SMALL_MODELS = ("htdemucs_6s", "htdemucs_ft", "hdemucs_mmi", "htdemucs")


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model folder holding small random-weight copies of the released bags."""
    folder = tmp_path_factory.mktemp("models")
    for name in SMALL_MODELS:
        make_test_model(folder, name, small=True)
    return folder


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL server on loopback for the session (tests/pgserver.py). Its
    programs come with Debian's `postgresql` package, which `make test` installs: missing,
    they fail the run under CI and skip the PostgreSQL tests elsewhere, saying why."""
    try:
        postgres_bin_dir()
    except PostgresMissingError as missing:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(str(missing))
    with local_postgres() as server:
        yield server


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
