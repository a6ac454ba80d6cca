"""`python -m serve_app migrate [CONFIG.yaml]`: bring the task database that a Serve
config's application uses to the schema this version needs. The database URL comes from
the application's `args` through the app's own settings (AppArgs.db_url(), so
`database_url_env` is honoured); with no config, the embedded defaults that
configs/local.yaml also uses (a SQLite file under ./data).
Exit status 0 when the database is at head, 2 for a bad config or an unreachable database."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from serve_app.settings import AppArgs, MissingDatabaseUrlError
from serve_app.store.migrate import current, upgrade

APP_IMPORT_PATH = "serve_app.app:build_app"
BAD_INPUT = 2


class ConfigError(ValueError):
    """The Serve config cannot be read or holds no valid stemsplit application."""


def app_args(config_path: Path) -> AppArgs:
    """The settings of the stemsplit application in a Serve config file."""
    try:
        config = yaml.safe_load(config_path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"cannot read {config_path}: {error}") from error
    applications: list[dict[str, Any]] = (
        config.get("applications", []) if isinstance(config, dict) else []
    )
    ours = [app for app in applications if app.get("import_path") == APP_IMPORT_PATH]
    if len(ours) != 1:
        raise ConfigError(
            f"{config_path} has {len(ours)} applications importing {APP_IMPORT_PATH}: need one"
        )
    try:
        return AppArgs.model_validate(ours[0].get("args") or {})
    except ValidationError as error:
        raise ConfigError(f"{config_path}: invalid args: {error}") from error


def migrate(config_path: Path | None) -> str:
    """Upgrade the config's database (or the default one) and say from which revision to
    which."""
    args = AppArgs() if config_path is None else app_args(config_path)
    try:
        url = args.db_url()
    except MissingDatabaseUrlError as error:
        raise ConfigError(str(error)) from error
    if make_url(url).get_backend_name() == "sqlite":
        args.data_path().mkdir(parents=True, exist_ok=True)
    before = current(url)
    after = upgrade(url)
    return f"task database: {before or 'no revision'} -> {after}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serve_app")
    commands = parser.add_subparsers(dest="command", required=True)
    migrating = commands.add_parser(
        "migrate", help="bring the task database to the schema this version needs"
    )
    migrating.add_argument(
        "config",
        nargs="?",
        type=Path,
        help="a Serve config with the stemsplit application (default: the embedded "
        "defaults, a SQLite file under ./data)",
    )
    options = parser.parse_args(argv)
    try:
        print(migrate(options.config))
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return BAD_INPUT
    except (ArgumentError, SQLAlchemyError) as error:
        print(f"error: the task database cannot be migrated: {error}", file=sys.stderr)
        return BAD_INPUT
    return 0


if __name__ == "__main__":
    sys.exit(main())
