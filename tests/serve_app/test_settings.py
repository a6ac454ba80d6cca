"""AppArgs' secrets named by environment variables (the database URL) and the engine's
precision names."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from models.engine.devices import REQUESTED_PRECISIONS
from serve_app.settings import AppArgs, EngineSettings, MissingDatabaseUrlError

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


@pytest.mark.parametrize("precision", REQUESTED_PRECISIONS)
def test_the_engine_takes_every_precision_the_engine_resolves(precision: str) -> None:
    args = AppArgs.model_validate({"engine": {"precision": precision}})
    assert args.engine.precision == precision


def test_the_engine_precision_defaults_to_fp32_and_refuses_unknown_names() -> None:
    assert EngineSettings().precision == "fp32"
    with pytest.raises(ValidationError, match="'auto', 'fp32' or 'bf16'"):
        EngineSettings(precision="fp16")
