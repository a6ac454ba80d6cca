"""AppArgs' secrets named by environment variables: the database URL."""

from __future__ import annotations

from pathlib import Path

import pytest

from serve_app.settings import AppArgs

VARIABLE = "STEMSPLIT_TEST_DATABASE_URL"


def test_database_url_env_wins_over_database_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(VARIABLE, "postgresql+psycopg://app:s3cret@db:5432/tasks")
    args = AppArgs(database_url="sqlite:///file.db", database_url_env=VARIABLE)
    assert args.db_url() == "postgresql+psycopg://app:s3cret@db:5432/tasks"


@pytest.mark.parametrize("value", [None, ""])
def test_database_url_env_unset_or_empty_falls_back(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, value: str | None
) -> None:
    if value is None:
        monkeypatch.delenv(VARIABLE, raising=False)
    else:
        monkeypatch.setenv(VARIABLE, value)
    configured = AppArgs(database_url="sqlite:///file.db", database_url_env=VARIABLE)
    assert configured.db_url() == "sqlite:///file.db"
    default = AppArgs(data_dir=str(tmp_path), database_url_env=VARIABLE)
    assert default.db_url() == f"sqlite:///{tmp_path.resolve() / 'tasks.db'}"


def test_database_url_env_is_read_when_asked_not_when_parsed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Parsed args keep the variable's name, so a replica reads the value it starts with."""
    monkeypatch.delenv(VARIABLE, raising=False)
    args = AppArgs.model_validate({"database_url_env": VARIABLE})
    monkeypatch.setenv(VARIABLE, "postgresql+psycopg://later@db/tasks")
    assert args.db_url() == "postgresql+psycopg://later@db/tasks"
