"""Storage faults on real small filesystems (issue 6, row 6): a full disk and an immutable
database folder are recognised and worded, the task store fails cleanly while they last and
works again, on the same connections, once they are mended."""

from __future__ import annotations

import errno
import json
import sqlite3
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import psycopg
import pytest
from ray.exceptions import RayTaskError
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError, OperationalError
from starlette.requests import Request
from starlette.responses import Response

from models.errors import AudioError
from serve_app.deployments.pipeline import user_message
from serve_app.http.errors import storage_answer
from serve_app.store.faults import reconnect_after, space_short, sqlite_code, storage_fault
from serve_app.store.migrate import upgrade
from serve_app.store.records import Status
from serve_app.store.tasks import TaskStore
from tests.serve_app.smalldisk import SmallDisk, empty_write_ahead_log
from tests.serve_app.store.taskdb import spec

MiB = 1 << 20
Mount = Callable[[Path, int], SmallDisk]


def test_a_write_to_a_full_disk_is_a_disk_full_fault(small_disk: Mount, tmp_path: Path) -> None:
    disk = small_disk(tmp_path / "disk", 2 * MiB)
    disk.fill()
    with pytest.raises(OSError) as raised:
        (disk.folder / "stem.wav").write_bytes(bytes(64 * 1024))
    assert storage_fault(raised.value) == "the service's disk is full"
    message = user_message(raised.value)
    assert message is not None and "the service's disk is full" in message


@pytest.mark.parametrize(
    ("code", "fault"),
    [
        (errno.EROFS, "the service's data folder is read-only"),
        (errno.EACCES, "the service may not write to its data folder"),
        (errno.EDQUOT, "the service's disk is full"),
    ],
)
def test_other_storage_errnos_are_named(code: int, fault: str) -> None:
    assert storage_fault(OSError(code, "refused")) == fault


def query_error(sql: str) -> OperationalError:
    """The OperationalError SQLAlchemy raises for `sql` on a real SQLite database."""
    with create_engine("sqlite://").connect() as connection:
        try:
            connection.execute(text(sql))
        except OperationalError as failure:
            return failure
    raise AssertionError(f"{sql!r} did not fail")


@pytest.mark.parametrize(
    "failure",
    [
        FileNotFoundError(errno.ENOENT, "gone"),
        ConnectionResetError(errno.ECONNRESET, "reset"),
        OSError("no errno"),
        ValueError("not storage"),
        # A bug in a query is not a storage fault: it must not become "try again later".
        query_error("select nope from missing"),
        query_error("selec 1"),
    ],
)
def test_other_failures_are_not_storage_faults(failure: Exception) -> None:
    assert storage_fault(failure) is None
    assert user_message(failure) is None
    assert answer_of(failure).status_code == 500


@pytest.mark.parametrize(
    ("driver_error", "fault"),
    [
        (psycopg.errors.DiskFull("x"), "the task database's disk is full"),
        (psycopg.errors.OutOfMemory("x"), "the task database is out of resources"),
        (psycopg.errors.TooManyConnections("x"), "the task database has too many connections"),
        (psycopg.errors.ReadOnlySqlTransaction("x"), "the task database cannot be written"),
        (psycopg.errors.AdminShutdown("x"), "the task database is unavailable"),
        (psycopg.errors.CrashShutdown("x"), "the task database is unavailable"),
        (psycopg.errors.CannotConnectNow("x"), "the task database is unavailable"),
        (psycopg.errors.ConnectionFailure("x"), "the task database is unavailable"),
        (psycopg.OperationalError("connection refused"), "the task database is unavailable"),
        (psycopg.errors.LockNotAvailable("x"), "the task database is busy"),
        (psycopg.errors.UndefinedTable("x"), None),
        (psycopg.errors.UniqueViolation("x"), None),
        (psycopg.ProgrammingError("wrong number of parameters"), None),
    ],
)
def test_postgres_errors_are_told_apart_by_sqlstate(
    driver_error: psycopg.Error, fault: str | None
) -> None:
    """The words for each SQLSTATE; the real server's faults are in test_postgres.py."""
    failure = DBAPIError.instance("INSERT", {}, driver_error, psycopg.Error)
    assert storage_fault(failure) == fault


def answer_of(failure: Exception) -> Response:
    """The API's answer when a route raises `failure` (its exception handler)."""
    request = Request({"type": "http", "method": "GET", "path": "/", "headers": []})
    return storage_answer(request, failure, retry_after_s=30)


def test_our_own_errors_keep_their_message_even_from_a_remote_call() -> None:
    wrapped = RayTaskError("clean", "traceback", AudioError("not audio"))
    assert user_message(wrapped) == "not audio"


def test_space_short_compares_free_space_with_the_reserve(
    small_disk: Mount, tmp_path: Path
) -> None:
    disk = small_disk(tmp_path / "disk", 8 * MiB)
    assert space_short(disk.folder, 4 * MiB) is None
    disk.fill(leave_bytes=2 * MiB)
    note = space_short(disk.folder, 4 * MiB)
    assert note is not None and "nearly full" in note
    assert space_short(disk.folder, 0) is None
    disk.empty()
    assert space_short(disk.folder, 4 * MiB) is None
    missing = space_short(tmp_path / "no-such-folder", 0)
    assert missing is not None and "cannot read its data folder" in missing


def test_a_full_database_disk_fails_writes_cleanly_and_recovers(
    small_disk: Mount, tmp_path: Path
) -> None:
    disk = small_disk(tmp_path / "db", 2 * MiB)
    url = f"sqlite:///{disk.folder / 'tasks.db'}"
    upgrade(url)
    store = TaskStore(url)
    kept = store.tasks.create(spec())
    empty_write_ahead_log(disk.folder / "tasks.db")
    disk.fill()
    with pytest.raises(OperationalError) as raised:
        store.tasks.create(spec())
    assert sqlite_code(raised.value.orig) == 13  # SQLITE_FULL
    assert storage_fault(raised.value) == "the task database's disk is full"
    answer = answer_of(raised.value)  # as any ingress route would answer it
    assert answer.status_code == 503
    assert "the task database's disk is full" in json.loads(bytes(answer.body))["error"]
    assert store.statistics.counts()[Status.IN_QUEUE] == 1  # reads go on; nothing half-written
    disk.empty()
    store.tasks.create(spec())
    assert store.statistics.counts()[Status.IN_QUEUE] == 2
    assert store.tasks.get(kept.task_id) is not None


def test_a_database_that_could_not_be_written_works_again_once_mended(
    small_disk: Mount, tmp_path: Path
) -> None:
    disk = small_disk(tmp_path / "db", 2 * MiB)
    path = disk.folder / "tasks.db"
    upgrade(f"sqlite:///{path}")
    store = TaskStore(f"sqlite:///{path}")
    store.tasks.create(spec())
    # Another process keeps the database open, so its write-ahead log stays.
    with closing(sqlite3.connect(path)) as other:
        other.execute("SELECT count(*) FROM tasks").fetchone()
        store.close()  # the store's next connection opens while the files are immutable
        disk.freeze()
        with pytest.raises(OperationalError) as raised:
            store.tasks.create(spec())
        assert storage_fault(raised.value) == "the task database cannot be written"
        assert reconnect_after(raised.value.orig)
        disk.thaw()
        # SQLite opened that connection read-only for good; the pool must replace it.
        store.tasks.create(spec())
    assert store.statistics.counts()[Status.IN_QUEUE] == 2
