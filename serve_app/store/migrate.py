"""Schema migrations of the task database with Alembic: bring a database to the head
revision (`python -m serve_app migrate` and the Kubernetes Job run `upgrade`), say which
revision it is at, and refuse to serve from one that is behind (`check_at_head`, which
every TaskStore runs: replicas never create or alter tables). The revisions ship inside
the package (serve_app/store/migrations), so a wheel install migrates with no alembic.ini.
On PostgreSQL an advisory lock serialises concurrent upgrades."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import func, inspect, select
from sqlalchemy.engine import Connection, Engine

from serve_app.store.schema import make_engine

MIGRATIONS = Path(__file__).with_name("migrations")
UPGRADE_LOCK = 0x5354454D53504C54
"""The PostgreSQL advisory lock key held while upgrading ("STEMSPLT" in ASCII)."""
MIGRATE_COMMAND = "python -m serve_app migrate"


class SchemaOutOfDateError(RuntimeError):
    """The task database is not at the revision this version of the code needs."""

    def __init__(self, found: str | None, needed: str, *, has_tables: bool) -> None:
        if found is not None:
            where = f"is at revision {found}"
        elif has_tables:
            where = "has tables but no schema revision (made by an earlier release)"
        else:
            where = "has no tables"
        super().__init__(
            f"the task database {where}; this version needs {needed}: run `{MIGRATE_COMMAND}`"
        )
        self.found = found
        self.needed = needed


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's configuration for the packaged revisions, run on `connection`."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def head() -> str:
    """The revision this version of the code needs."""
    revision = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert revision is not None, f"no revisions under {MIGRATIONS}"
    return revision


def revision_of(connection: Connection) -> str | None:
    """The revision the database is at; None when it has none."""
    return MigrationContext.configure(connection).get_current_revision()


def current(url: str) -> str | None:
    """The revision the database at `url` is at; None when it has none."""
    engine = make_engine(url, busy_timeout_s=30.0)
    try:
        with engine.connect() as connection:
            return revision_of(connection)
    finally:
        engine.dispose()


def upgrade(url: str, *, busy_timeout_s: float = 30.0) -> str:
    """Bring the database at `url` to the head revision and return it. A database made
    before migrations (its tables, no revision) is adopted; at head, nothing changes."""
    engine = make_engine(url, busy_timeout_s=busy_timeout_s)
    try:
        with engine.connect() as connection, _upgrading_alone(connection):
            command.upgrade(alembic_config(connection), "head")
            connection.commit()
            revision = revision_of(connection)
    finally:
        engine.dispose()
    assert revision is not None
    return revision


def check_at_head(engine: Engine) -> None:
    """Raise SchemaOutOfDateError unless the database is at the head revision."""
    needed = head()
    with engine.connect() as connection:
        found = revision_of(connection)
        if found == needed:
            return
        has_tables = bool(inspect(connection).get_table_names())
    raise SchemaOutOfDateError(found, needed, has_tables=has_tables)


@contextmanager
def _upgrading_alone(connection: Connection) -> Iterator[None]:
    """Hold PostgreSQL's session advisory lock while upgrading, so that a second upgrade
    waits and then finds the database at head. SQLite serialises writers itself."""
    if connection.dialect.name != "postgresql":
        yield
        return
    connection.execute(select(func.pg_advisory_lock(UPGRADE_LOCK)))
    connection.commit()
    try:
        yield
    finally:
        connection.rollback()
        connection.execute(select(func.pg_advisory_unlock(UPGRADE_LOCK)))
        connection.commit()
