"""Shared fixtures: a folder of tiny random-weight models in demucs's formats and a throwaway
PostgreSQL server, each once per session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from models.families.demucs.testmodel import make_test_model
from tests.pgserver import PostgresMissingError, PostgresServer, local_postgres, postgres_bin_dir

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
