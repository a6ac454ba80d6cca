"""PostgreSQL-only tests of the task store, on databases of their own on the session's server
(tests/pgserver.py): eight concurrent claimers take 500 tasks exactly once each and never wait
on a row another transaction holds (FOR UPDATE SKIP LOCKED), and the server's storage faults
(a full tablespace, a read-only database, a role out of connections, a backend terminated
mid-call, a server that does not answer, a server stopped and started again) are worded like
SQLite's, answered 503, and pass once mended, on the same store."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import psycopg
import pytest
from fastapi import FastAPI
from pydantic import ValidationError
from sqlalchemy import select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from starlette.testclient import TestClient

from serve_app.http.errors import install
from serve_app.settings import AppArgs
from serve_app.store.choose import task_store
from serve_app.store.faults import postgres_state, reconnect_after, storage_fault
from serve_app.store.migrate import upgrade
from serve_app.store.records import Status
from serve_app.store.schema import task_table
from serve_app.store.tasks import TaskStore
from tests.pgserver import HOST, SERVER_USER, PostgresServer, local_postgres
from tests.serve_app.smalldisk import SmallDisk
from tests.serve_app.store.taskdb import spec
from tests.waiting import wait_until

MiB = 1 << 20
CLAIMERS = 8
TASKS = 500
LOCK_TIMEOUT = "1s"
"""The claimers' lock_timeout: a claim that waits on a row lock this long fails the test."""


@pytest.fixture
def pg_url(postgres: PostgresServer) -> Iterator[str]:
    """A fresh database at the head revision, dropped after the test with what it holds."""
    url = postgres.new_database()
    upgrade(url)
    yield url
    postgres.psql(f'DROP DATABASE "{database_of(url)}" WITH (FORCE)')


def database_of(url: str) -> str:
    name = make_url(url).database
    assert name is not None
    return name


def with_session_settings(url: str, **settings: str) -> str:
    """`url` whose sessions start with these server settings (libpq's `options`)."""
    options = " ".join(f"-c {name}={value}" for name, value in settings.items())
    return make_url(url).update_query_dict({"options": options}).render_as_string(False)


def answer_body(failure: Exception) -> tuple[int, str]:
    """The status and error of the API's answer when a POST route raises `failure`,
    through the exception handlers every ingress installs."""
    api = FastAPI()
    install(api, retry_after_s=30)

    @api.post("/Extraction")
    def fail() -> None:
        raise failure

    with TestClient(api, raise_server_exceptions=False) as client:
        answer = client.post("/Extraction")
    return answer.status_code, str(answer.json().get("error", ""))


def assert_fault(failure: DBAPIError, state: str | None, sentence: str) -> None:
    assert postgres_state(failure.orig) == state
    assert storage_fault(failure) == sentence
    status, error = answer_body(failure)
    assert status == 503 and sentence in error


def test_eight_claimers_take_each_of_500_tasks_once_passing_locked_rows(pg_url: str) -> None:
    """A ninth connection holds the oldest task's row lock throughout. With plain FOR UPDATE
    every claimer would queue behind it and fail at its lock_timeout; skipping locked rows,
    they share the other 499 and none ever waits on a lock."""
    store = TaskStore(pg_url)
    created = [store.tasks.create(spec()).task_id for _ in range(TASKS)]
    claimer_url = with_session_settings(pg_url, lock_timeout=LOCK_TIMEOUT)
    start = threading.Barrier(CLAIMERS)
    runs: dict[str, list[str]] = {}
    failures: list[BaseException] = []

    def claim_all(worker: str) -> None:
        claimer = TaskStore(claimer_url)
        try:
            start.wait()
            taken: list[str] = []
            while (record := claimer.tasks.claim(worker, 600)) is not None:
                taken.append(record.task_id)
            runs[worker] = taken
        except BaseException as failure:  # reported by the test below, not lost in a thread
            failures.append(failure)
        finally:
            claimer.close()

    try:
        with store.engine.connect() as holder:
            held = holder.execute(
                select(task_table.c.task_id).order_by(task_table.c.id).limit(1).with_for_update()
            ).scalar_one()
            threads = [threading.Thread(target=claim_all, args=(f"c{i}",)) for i in range(CLAIMERS)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            holder.rollback()
        assert failures == []
        assert len(runs) == CLAIMERS and all(runs.values())  # every claimer took some
        every = [task_id for run in runs.values() for task_id in run]
        assert sorted(every) == sorted(set(created) - {held})
        for run in runs.values():
            # Each claimer took its tasks oldest first.
            assert run == sorted(run, key=created.index)
        last = store.tasks.claim("late", 600)  # the lock is gone: the held task is claimable
        assert last is not None and last.task_id == held
        assert store.statistics.counts()[Status.PROCESSING] == TASKS
        assert all(record.claims == 1 for record in map(store.tasks.get, created) if record)
    finally:
        store.close()


def test_the_pool_is_bounded_and_its_limits_checked(pg_url: str) -> None:
    store = TaskStore(pg_url, pool_size=3)
    try:
        assert store.engine.pool.size() == 3  # type: ignore[attr-defined]
    finally:
        store.close()
    with pytest.raises(ValueError, match="pool_size"):
        TaskStore(pg_url, pool_size=0)
    with pytest.raises(ValueError, match="connect_timeout_s"):
        TaskStore(pg_url, connect_timeout_s=0)


def test_a_server_that_does_not_answer_is_unavailable_after_the_connect_timeout() -> None:
    """A listener that never speaks: connecting gives up after the timeout, not never."""
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as silent:
        silent.bind((HOST, 0))
        silent.listen()
        port = silent.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(OperationalError) as raised:
            TaskStore(f"postgresql+psycopg://nobody@{HOST}:{port}/tasks", connect_timeout_s=2)
        assert time.monotonic() - started < 8
    assert storage_fault(raised.value) == "the task database is unavailable"


@pytest.fixture
def small_tablespace(
    postgres: PostgresServer, small_disk: Callable[[Path, int], SmallDisk]
) -> Iterator[tuple[str, SmallDisk]]:
    """A tablespace on a 1 MiB tmpfs in the server's folder, dropped after the test (whose
    database must be dropped first: `pg_url` is set up after this, so torn down before)."""
    disk = small_disk(postgres.folder / f"space-{uuid.uuid4().hex[:8]}", MiB)
    if os.geteuid() == 0:
        shutil.chown(disk.folder, user=SERVER_USER)
    name = f"small_{uuid.uuid4().hex[:8]}"
    postgres.psql(f"CREATE TABLESPACE {name} LOCATION '{disk.folder}'")
    yield name, disk
    disk.empty()
    postgres.psql(f"DROP TABLESPACE {name}")


def test_a_full_tablespace_fails_writes_as_disk_full_and_recovers(
    small_tablespace: tuple[str, SmallDisk], pg_url: str
) -> None:
    tablespace, disk = small_tablespace
    store = TaskStore(pg_url)
    try:
        kept = store.tasks.create(spec())
        with store.engine.begin() as conn:
            conn.execute(text(f"ALTER TABLE tasks SET TABLESPACE {tablespace}"))
        disk.fill()
        failure: DBAPIError | None = None
        for _ in range(100):  # the table's last page still takes a few rows
            try:
                store.tasks.create(spec())
            except DBAPIError as error:
                failure = error
                break
        assert failure is not None, "the tablespace never filled up"
        assert_fault(failure, "53100", "the task database's disk is full")
        written = store.statistics.counts()[Status.IN_QUEUE]  # reads go on
        disk.empty()
        store.tasks.create(spec())
        assert store.statistics.counts()[Status.IN_QUEUE] == written + 1
        assert store.tasks.get(kept.task_id) == kept
    finally:
        store.close()


def test_a_read_only_database_fails_writes_and_works_again_once_mended(
    postgres: PostgresServer, pg_url: str
) -> None:
    database = database_of(pg_url)
    store = TaskStore(pg_url)
    try:
        store.tasks.create(spec())
        postgres.psql(f'ALTER DATABASE "{database}" SET default_transaction_read_only = on')
        store.close()  # the store's next session starts read-only
        with pytest.raises(DBAPIError) as raised:
            store.tasks.create(spec())
        assert_fault(raised.value, "25006", "the task database cannot be written")
        assert reconnect_after(raised.value.orig)
        postgres.psql(f'ALTER DATABASE "{database}" RESET default_transaction_read_only')
        # The read-only session was replaced: the same store writes again.
        store.tasks.create(spec())
        assert store.statistics.counts()[Status.IN_QUEUE] == 2
    finally:
        store.close()


def test_a_role_out_of_connections_is_told_so_and_served_once_one_is_free(
    postgres: PostgresServer, pg_url: str
) -> None:
    role = f"limited_{uuid.uuid4().hex[:8]}"
    database = database_of(pg_url)
    postgres.psql(f"CREATE ROLE {role} LOGIN CONNECTION LIMIT 1")
    try:
        for objects in ("TABLES", "SEQUENCES"):
            postgres.psql(f"GRANT ALL ON ALL {objects} IN SCHEMA public TO {role}", database)
        limited = make_url(pg_url).set(username=role).render_as_string(False)
        store = TaskStore(limited)
        try:
            store.close()  # the role's one connection goes to someone else
            with psycopg.connect(host=HOST, port=postgres.port, user=role, dbname=database):
                with pytest.raises(OperationalError) as raised:
                    store.tasks.create(spec())
                assert_fault(raised.value, None, "the task database has too many connections")
            store.tasks.create(spec())
            assert store.statistics.counts()[Status.IN_QUEUE] == 1
        finally:
            store.close()
    finally:
        for objects in ("TABLES", "SEQUENCES"):
            postgres.psql(f"REVOKE ALL ON ALL {objects} IN SCHEMA public FROM {role}", database)
        postgres.psql(f"DROP ROLE {role}")


def test_a_backend_terminated_mid_call_is_unavailable_and_the_next_call_works(
    postgres: PostgresServer, pg_url: str
) -> None:
    """The store's write waits on a table lock; its backend is terminated meanwhile."""
    database = database_of(pg_url)
    store = TaskStore(pg_url)
    failures: list[BaseException] = []

    def write() -> None:
        try:
            store.tasks.create(spec())
        except BaseException as failure:  # examined below, not lost in a thread
            failures.append(failure)

    try:
        store.tasks.create(spec())
        with store.engine.connect() as holder:
            holder.execute(text("LOCK TABLE tasks IN ACCESS EXCLUSIVE MODE"))
            writer = threading.Thread(target=write)
            writer.start()
            waiting = (
                "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                f" AND datname = '{database}'"
            )
            pid = wait_until(lambda: postgres.psql(waiting), timeout_s=30)
            postgres.psql(f"SELECT pg_terminate_backend({pid})")
            writer.join()
            holder.rollback()
        [failure] = failures
        assert isinstance(failure, DBAPIError)
        assert storage_fault(failure) == "the task database is unavailable"
        store.tasks.create(spec())
        # Idle pooled connections killed too: the ping before use replaces them unseen.
        postgres.psql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            f" WHERE datname = '{database}' AND pid <> pg_backend_pid()"
        )
        assert store.statistics.counts()[Status.IN_QUEUE] == 2
    finally:
        store.close()


def test_a_server_stopped_mid_task_and_restarted_loses_nothing() -> None:
    """A server of its own, stopped (a fast shutdown) while a worker holds a task: the
    worker's next write fails as unavailable, answered 503; once the server is back the
    same store goes on, and the task and its progress are all there."""
    with local_postgres() as server:
        url = server.new_database()
        upgrade(url)
        store = TaskStore(url)
        try:
            task = store.tasks.create(spec())
            held = store.tasks.claim("worker-1", 60)
            assert held is not None and held.task_id == task.task_id
            assert store.tasks.set_progress(task.task_id, "worker-1", 0.25)
            server.stop()
            with pytest.raises(DBAPIError) as stopped:
                store.tasks.set_progress(task.task_id, "worker-1", 0.5)
            assert_fault(stopped.value, None, "the task database is unavailable")
            server.start()
            assert store.tasks.set_progress(task.task_id, "worker-1", 0.5)
            done = store.tasks.complete(
                task.task_id,
                "worker-1",
                {"vocals": "stems/vocals.wav"},
                duration_s=12.5,
                conversion_cost=1.0,
            )
            assert done is not None and done.status == Status.COMPLETED
            record = store.tasks.get(task.task_id)
            assert record is not None and record.status == Status.COMPLETED
            assert record.results == {"vocals": "stems/vocals.wav"} and record.claims == 1
        finally:
            store.close()


def test_the_settings_size_the_pool_of_every_store_a_deployment_opens(pg_url: str) -> None:
    args = AppArgs.model_validate(
        {"database_url": pg_url, "database": {"pool_size": 2, "connect_timeout_s": 3}}
    )
    store = task_store(args)
    try:
        assert store.engine.pool.size() == 2  # type: ignore[attr-defined]
    finally:
        store.close()
    for bad in ({"pool_size": 0}, {"connect_timeout_s": 0}):
        with pytest.raises(ValidationError, match=next(iter(bad))):
            AppArgs.model_validate({"database": bad})
