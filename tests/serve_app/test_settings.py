"""AppArgs' secrets named by environment variables: the database URL."""

from __future__ import annotations

from pathlib import Path

import pytest

from serve_app.settings import AppArgs, MissingDatabaseUrlError

VARIABLE = "STEMSPLIT_TEST_DATABASE_URL"


def test_database_url_env_wins_over_database_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(VARIABLE, "postgresql+psycopg://app:s3cret@db:5432/tasks")
    args = AppArgs(database_url="sqlite:///file.db", database_url_env=VARIABLE)
    assert args.db_url() == "postgresql+psycopg://app:s3cret@db:5432/tasks"


@pytest.mark.parametrize("value", [None, ""])
def test_database_url_env_unset_or_empty_falls_back_to_database_url(
    monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    set_or_unset(monkeypatch, value)
    configured = AppArgs(database_url="sqlite:///file.db", database_url_env=VARIABLE)
    assert configured.db_url() == "sqlite:///file.db"


@pytest.mark.parametrize("value", [None, ""])
def test_database_url_env_unset_or_empty_with_nothing_to_fall_back_on_is_an_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, value: str | None
) -> None:
    """Not a SQLite file of the replica's own, which no other replica would see."""
    set_or_unset(monkeypatch, value)
    args = AppArgs(data_dir=str(tmp_path), database_url_env=VARIABLE)
    with pytest.raises(MissingDatabaseUrlError, match=f"{VARIABLE}, which is unset or empty"):
        args.db_url()
    assert not (tmp_path / "tasks.db").exists()


def test_without_database_settings_the_url_is_a_sqlite_file_in_the_data_folder(
    tmp_path: Path,
) -> None:
    assert (
        AppArgs(data_dir=str(tmp_path)).db_url() == f"sqlite:///{tmp_path.resolve() / 'tasks.db'}"
    )


def set_or_unset(monkeypatch: pytest.MonkeyPatch, value: str | None) -> None:
    if value is None:
        monkeypatch.delenv(VARIABLE, raising=False)
    else:
        monkeypatch.setenv(VARIABLE, value)


def test_database_url_env_is_read_when_asked_not_when_parsed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Parsed args keep the variable's name, so a replica reads the value it starts with."""
    monkeypatch.delenv(VARIABLE, raising=False)
    args = AppArgs.model_validate({"database_url_env": VARIABLE})
    monkeypatch.setenv(VARIABLE, "postgresql+psycopg://later@db/tasks")
    assert args.db_url() == "postgresql+psycopg://later@db/tasks"
