"""The task store's SQL schema and how records map to its rows: the tables (tasks, webhook
deliveries and their attempts, per-key rate windows), the engine setup that lets several
processes share a SQLite file and bounds a server's connection pool, and the conversions
between rows and `records` dataclasses. Portable SQLAlchemy Core: SQLite by default,
PostgreSQL in a cluster. The tables are created and changed only by the Alembic revisions in
`migrations` (serve_app/store/migrate.py): a change here needs a new revision there."""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Column,
    ColumnElement,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Row,
    String,
    Table,
    Text,
    TypeDecorator,
    create_engine,
    event,
    select,
)
from sqlalchemy.engine import Connection, Engine, ExceptionContext, make_url

from serve_app.store.faults import reconnect_after
from serve_app.store.records import (
    FINAL,
    Attempt,
    Delivery,
    DeliveryState,
    Status,
    TaskRecord,
    TaskSpec,
)

MAX_IDEMPOTENCY_KEY_LENGTH = 255
FINAL_VALUES = [status.value for status in FINAL]
"""The `status` column's values of a final task."""


class UtcDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes, stored as naive UTC so that every backend compares them alike."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else as_utc(value).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def as_utc(moment: datetime) -> datetime:
    """`moment` in UTC; a naive datetime is refused because its zone is a guess."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{moment.isoformat()} has no time zone: pass an aware UTC datetime")
    return moment.astimezone(UTC)


def utc_moment(now: datetime | None) -> datetime:
    """`now` in UTC, or the current time when None."""
    return datetime.now(UTC) if now is None else as_utc(now)


metadata = MetaData()

task_table = Table(
    "tasks",
    metadata,
    # The integer key orders tasks by creation, which claim relies on.
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("task_id", String(36), nullable=False, unique=True),
    Column("conversion_id", String(36), nullable=False, unique=True),
    Column("owner", Text, nullable=False),
    Column("stems", Text, nullable=False),
    Column("preprocessing", Text, nullable=False),
    Column("output_format", String(16), nullable=False),
    Column("audio_url", Text),
    Column("input_key", Text),
    Column("webhook_url", Text),
    Column("submitted_duration_s", Float),
    Column("eta_s", Float, nullable=False),
    Column("credit_estimate", Float, nullable=False),
    Column("status", String(16), nullable=False),
    Column("status_msg", Text, nullable=False),
    Column("progress", Float, nullable=False),
    Column("results", Text, nullable=False),
    Column("duration_s", Float),
    Column("conversion_cost", Float),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Column("started_at", UtcDateTime),
    Column("finished_at", UtcDateTime),
    Column("claims", Integer, nullable=False),
    Column("lease_owner", Text),
    Column("lease_until", UtcDateTime),
    # Columns from here on were added later (the baseline revision adds them to a database
    # made before them).
    # A key sits only on the task created with it, so the task's created_at is the key's age.
    Column("idempotency_key", String(MAX_IDEMPOTENCY_KEY_LENGTH)),
    Column("request_fingerprint", Text),
    Column("files_expired_at", UtcDateTime),
    Column("files_deleted_at", UtcDateTime),
    # A JSON list of what a user should know about the input (models/audio/integrity.py).
    Column("warnings", Text),
    Index("ix_tasks_claim", "status", "lease_until"),
    Index("ix_tasks_finished", "status", "finished_at"),
    # A unique index rather than a table constraint: SQLite can add an index to an old table,
    # and NULL keys (tasks created without one) never collide.
    Index("ux_tasks_idempotency_key", "owner", "idempotency_key", unique=True),
    Index("ix_tasks_input_key", "input_key"),
    Index("ix_tasks_files_expiry", "files_expired_at", "finished_at"),
    Index("ix_tasks_files_deletion", "files_deleted_at", "files_expired_at"),
)

delivery_table = Table(
    "webhook_deliveries",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("delivery_id", String(64), nullable=False, unique=True),
    Column("task_id", String(36), ForeignKey("tasks.task_id"), nullable=False),
    Column("url", Text, nullable=False),
    Column("payload", Text, nullable=False),
    Column("state", String(16), nullable=False),
    Column("next_attempt_at", UtcDateTime, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Index("ix_webhook_deliveries_due", "state", "next_attempt_at"),
    Index("ix_webhook_deliveries_task", "task_id"),
)

attempt_table = Table(
    "webhook_attempts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("delivery_id", String(64), ForeignKey("webhook_deliveries.delivery_id"), nullable=False),
    Column("number", Integer, nullable=False),
    Column("at", UtcDateTime, nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("status_code", Integer),
    Column("error", Text, nullable=False),
    Column("seconds", Float, nullable=False),
    Index("ix_webhook_attempts_delivery", "delivery_id", "number"),
)


# One row per API key: the moments of its admissions within the rate window, as a JSON list
# of [epoch seconds, slot id]. Taking a slot updates the row, so the row's lock serialises
# the requests of one key (serve_app/store/admission.py).
rate_window_table = Table(
    "rate_windows",
    metadata,
    Column("owner", String(255), primary_key=True),
    Column("admitted", Text, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
)


def make_engine(
    url: str,
    *,
    busy_timeout_s: float,
    pool_size: int = 5,
    connect_timeout_s: float = 10.0,
) -> Engine:
    """An engine for `url`, whose connections are replaced when a failure leaves them
    unusable (`reconnect_after`). SQLite files are put in WAL mode so that processes share
    them. A server database gets at most `pool_size` connections kept open plus as many
    more at peak, each checked before use (the server may have closed it meanwhile); a try
    to connect gives up after `connect_timeout_s` when the server does not answer."""
    if pool_size < 1:
        raise ValueError(f"pool_size must be at least 1, got {pool_size}")
    if not connect_timeout_s > 0:
        raise ValueError(f"connect_timeout_s must be a positive number, got {connect_timeout_s}")
    if make_url(url).get_backend_name() == "sqlite":
        engine = create_engine(url, connect_args={"check_same_thread": False})
        event.listen(engine, "connect", _sqlite_tuning(busy_timeout_s))
    else:
        engine = create_engine(
            url,
            pool_pre_ping=True,
            pool_size=pool_size,
            max_overflow=pool_size,
            # libpq counts whole seconds.
            connect_args={"connect_timeout": max(1, math.ceil(connect_timeout_s))},
        )

    def replace_broken(context: ExceptionContext) -> None:
        # Treated as a lost connection, the pool discards it and opens a new one.
        if reconnect_after(context.original_exception):
            context.is_disconnect = True

    event.listen(engine, "handle_error", replace_broken)
    return engine


def _sqlite_tuning(busy_timeout_s: float) -> Callable[[Any, Any], None]:
    timeout_ms = round(busy_timeout_s * 1000)

    def tune(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            # The busy timeout first: switching to WAL itself waits for other writers.
            cursor.execute(f"PRAGMA busy_timeout = {timeout_ms}")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    return tune


def task_row(task_id: str, spec: TaskSpec, now: datetime) -> dict[str, Any]:
    """The row of a new, waiting task."""
    return {
        "task_id": task_id,
        "conversion_id": str(uuid.uuid4()),
        "owner": spec.owner,
        "stems": json.dumps(list(spec.stems)),
        "preprocessing": json.dumps(list(spec.preprocessing)),
        "output_format": spec.output_format,
        "audio_url": spec.audio_url,
        "input_key": spec.input_key,
        "webhook_url": spec.webhook_url,
        "submitted_duration_s": spec.duration_s,
        "eta_s": spec.eta_s,
        "credit_estimate": spec.credit_estimate,
        "status": Status.IN_QUEUE.value,
        "status_msg": "",
        "progress": 0.0,
        "results": "{}",
        "duration_s": spec.duration_s,
        "created_at": now,
        "updated_at": now,
        "claims": 0,
    }


def read_task(conn: Connection, where: ColumnElement[bool]) -> TaskRecord:
    """The one task matching `where`."""
    return to_record(conn.execute(select(task_table).where(where)).one())


def to_record(row: Row[Any]) -> TaskRecord:
    """A task row as a record."""
    spec = TaskSpec(
        owner=row.owner,
        stems=tuple(json.loads(row.stems)),
        preprocessing=tuple(json.loads(row.preprocessing)),
        output_format=row.output_format,
        audio_url=row.audio_url,
        input_key=row.input_key,
        webhook_url=row.webhook_url,
        duration_s=row.submitted_duration_s,
        eta_s=row.eta_s,
        credit_estimate=row.credit_estimate,
    )
    return TaskRecord(
        task_id=row.task_id,
        conversion_id=row.conversion_id,
        spec=spec,
        status=Status(row.status),
        status_msg=row.status_msg,
        progress=row.progress,
        results=json.loads(row.results),
        duration_s=row.duration_s,
        conversion_cost=row.conversion_cost,
        created_at=row.created_at,
        updated_at=row.updated_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        claims=row.claims,
        lease_owner=row.lease_owner,
        lease_until=row.lease_until,
        files_expired_at=row.files_expired_at,
        files_deleted_at=row.files_deleted_at,
        warnings=tuple(json.loads(row.warnings or "[]")),
    )


def delivery_row(record: TaskRecord, payload: str, now: datetime) -> dict[str, Any]:
    """The row of a new webhook delivery of a task's final state, due at once."""
    return {
        "delivery_id": "msg_" + uuid.uuid4().hex,
        "task_id": record.task_id,
        "url": record.spec.webhook_url,
        "payload": payload,
        "state": DeliveryState.PENDING.value,
        "next_attempt_at": now,
        "created_at": now,
    }


def attempt_row(attempt: Attempt) -> dict[str, Any]:
    """The row of a delivery attempt, less its delivery id."""
    return {
        "number": attempt.number,
        "at": as_utc(attempt.at),
        "outcome": attempt.outcome,
        "status_code": attempt.status_code,
        "error": attempt.error,
        "seconds": attempt.seconds,
    }


def with_attempts(conn: Connection, rows: Sequence[Row[Any]]) -> list[Delivery]:
    """Delivery rows as records, each with its attempts in the order they were made."""
    if not rows:
        return []
    by_delivery: dict[str, list[Attempt]] = {row.delivery_id: [] for row in rows}
    query = (
        select(attempt_table)
        .where(attempt_table.c.delivery_id.in_(list(by_delivery)))
        .order_by(attempt_table.c.number, attempt_table.c.id)
    )
    for row in conn.execute(query).all():
        by_delivery[row.delivery_id].append(
            Attempt(
                number=row.number,
                at=row.at,
                outcome=row.outcome,
                status_code=row.status_code,
                error=row.error,
                seconds=row.seconds,
            )
        )
    return [
        Delivery(
            delivery_id=row.delivery_id,
            task_id=row.task_id,
            url=row.url,
            payload=row.payload,
            state=DeliveryState(row.state),
            next_attempt_at=row.next_attempt_at,
            attempts=tuple(by_delivery[row.delivery_id]),
        )
        for row in rows
    ]
