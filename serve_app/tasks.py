"""The task store: every task's state and the webhook outbox, in one SQL database that the
ingress, the pipeline replicas and the webhook dispatcher share (a SQLite file by default, in
WAL mode so several processes can write; PostgreSQL in a cluster; portable SQLAlchemy Core).
Pipeline replicas take tasks under a lease (`claim`, `renew`), so a task whose worker died is
taken again and one that keeps killing its workers is given up; every write that depends on
who holds a task is a conditional UPDATE whose row count says whether it happened, so two
processes never both win. A task's final state and its webhook delivery are written in one
transaction, so neither exists without the other."""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
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
    and_,
    case,
    create_engine,
    event,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import DatabaseError

from serve_app.records import (
    FINAL,
    Attempt,
    Delivery,
    DeliveryState,
    Status,
    TaskRecord,
    TaskSpec,
)

Payload = Callable[[TaskRecord], str]
"""Builds a webhook's JSON body from a task's final record."""

_FINAL_VALUES = [status.value for status in FINAL]
# Candidates read per look: more than one, so that a claim that loses a race moves straight
# on to the next task instead of looking again.
_CLAIM_BATCH = 8


class DeliveryMissingError(LookupError):
    """An attempt was recorded for a webhook delivery that the outbox does not hold."""

    def __init__(self, delivery_id: str) -> None:
        self.delivery_id = delivery_id
        super().__init__(f"no webhook delivery {delivery_id!r} in the outbox")


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


metadata = MetaData()

task_table = Table(
    "tasks",
    metadata,
    # The integer key orders tasks by creation, which claim and queue_ahead rely on.
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
    Index("ix_tasks_claim", "status", "lease_until"),
    Index("ix_tasks_finished", "status", "finished_at"),
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


class TaskStore:
    """Tasks and their webhook outbox in one SQL database, shared safely between processes.

    Implements `records.Outbox` for the webhook dispatcher. Methods are synchronous and
    thread-safe; call them from a thread in async code.
    """

    def __init__(self, url: str, *, max_claims: int = 3, busy_timeout_s: float = 30.0) -> None:
        if max_claims < 1:
            raise ValueError(f"max_claims must be at least 1, got {max_claims}")
        self._max_claims = max_claims
        self._engine = _make_engine(url, busy_timeout_s=busy_timeout_s)
        _create_tables(self._engine)

    def close(self) -> None:
        """Close every pooled connection."""
        self._engine.dispose()

    def create(self, spec: TaskSpec) -> TaskRecord:
        """Store a new task, IN_QUEUE, with fresh task and conversion ids."""
        now = _moment(None)
        task_id = str(uuid.uuid4())
        with self._engine.begin() as conn:
            conn.execute(insert(task_table).values(**_new_task(task_id, spec, now)))
            return _read_task(conn, task_table.c.task_id == task_id)

    def get(self, task_id: str) -> TaskRecord | None:
        """The task with this id, if any."""
        return self._find(task_table.c.task_id == task_id)

    def get_by_conversion(self, conversion_id: str) -> TaskRecord | None:
        """The task with this conversion id, if any."""
        return self._find(task_table.c.conversion_id == conversion_id)

    def claim(
        self,
        worker: str,
        lease_s: float,
        *,
        now: datetime | None = None,
        payload: Payload | None = None,
    ) -> TaskRecord | None:
        """Take the oldest task waiting or whose lease expired, for `lease_s` seconds.

        A candidate already claimed `max_claims` times is failed instead (its webhook built
        by `payload`), and the claim moves on. None when nothing is waiting.
        """
        _check_lease(lease_s)
        moment = _moment(now)
        while candidates := self._claim_candidates(moment):
            for key, claims in candidates:
                if claims >= self._max_claims:
                    self._give_up(key, claims, moment, payload)
                    continue
                record = self._take(key, worker, lease_s, moment)
                if record is not None:
                    return record
        return None

    def renew(
        self, task_id: str, worker: str, lease_s: float, *, now: datetime | None = None
    ) -> bool:
        """Extend the lease to `now + lease_s` if `worker` still holds the task."""
        _check_lease(lease_s)
        moment = _moment(now)
        values = {"lease_until": moment + timedelta(seconds=lease_s), "updated_at": moment}
        return self._update_held(task_id, worker, values)

    def set_progress(self, task_id: str, worker: str, progress: float) -> bool:
        """Record progress (clamped to [0, 1], never backwards) if `worker` holds the task."""
        if math.isnan(progress):
            raise ValueError("progress must be a number between 0 and 1, got NaN")
        value = min(max(progress, 0.0), 1.0)
        forward = case((task_table.c.progress < value, value), else_=task_table.c.progress)
        return self._update_held(
            task_id, worker, {"progress": forward, "updated_at": _moment(None)}
        )

    def complete(
        self,
        task_id: str,
        worker: str,
        results: dict[str, str],
        *,
        duration_s: float,
        conversion_cost: float,
        payload: Payload | None = None,
        now: datetime | None = None,
    ) -> TaskRecord | None:
        """Mark the task COMPLETED with its stem files, if `worker` holds it; None otherwise.

        With a webhook_url and `payload`, the delivery is enqueued in the same transaction; if
        `payload` raises, nothing is written and the error propagates.
        """
        moment = _moment(now)
        values = {
            "status": Status.COMPLETED.value,
            "progress": 1.0,
            "results": json.dumps(results),
            "duration_s": duration_s,
            "conversion_cost": conversion_cost,
            **_final_values(moment),
        }
        return self._finish(
            task_table.c.task_id == task_id, _held_by(worker), values, moment, payload
        )

    def fail(
        self,
        task_id: str,
        message: str,
        *,
        worker: str | None = None,
        payload: Payload | None = None,
        now: datetime | None = None,
    ) -> TaskRecord | None:
        """Mark a task that is not final FAILED; with `worker`, only if it holds the task.

        None when the task is missing, already final, or held by someone else. Webhooks as in
        `complete`.
        """
        moment = _moment(now)
        values = {"status": Status.FAILED.value, "status_msg": message, **_final_values(moment)}
        guard: ColumnElement[bool] = task_table.c.status.not_in(_FINAL_VALUES)
        if worker is not None:
            guard = and_(guard, _held_by(worker))
        return self._finish(task_table.c.task_id == task_id, guard, values, moment, payload)

    def counts(self) -> dict[Status, int]:
        """How many tasks are in each status (every status present)."""
        query = select(task_table.c.status, func.count()).group_by(task_table.c.status)
        with self._engine.connect() as conn:
            found = {Status(status): count for status, count in conn.execute(query).all()}
        return {status: found.get(status, 0) for status in Status}

    def recent_speed(self, limit: int = 20) -> float | None:
        """Seconds of work per second of audio, averaged over the last `limit` completed tasks
        of known duration; None before any."""
        query = (
            select(task_table.c.started_at, task_table.c.finished_at, task_table.c.duration_s)
            .where(
                task_table.c.status == Status.COMPLETED.value,
                task_table.c.duration_s > 0,
                task_table.c.started_at.is_not(None),
                task_table.c.finished_at.is_not(None),
            )
            .order_by(task_table.c.finished_at.desc(), task_table.c.id.desc())
            .limit(limit)
        )
        with self._engine.connect() as conn:
            rows = conn.execute(query).all()
        if not rows:
            return None
        ratios = [(end - start).total_seconds() / duration for start, end, duration in rows]
        return sum(ratios) / len(ratios)

    def queue_ahead(self, task_id: str) -> int:
        """How many tasks created before this one are not final yet (0 for an unknown task)."""
        position = select(task_table.c.id).where(task_table.c.task_id == task_id).scalar_subquery()
        query = (
            select(func.count())
            .select_from(task_table)
            .where(task_table.c.id < position, task_table.c.status.not_in(_FINAL_VALUES))
        )
        with self._engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def expired_tasks(self, before: datetime, *, limit: int = 1000) -> list[TaskRecord]:
        """Final tasks that finished before `before`, oldest first, at most `limit`."""
        query = (
            select(task_table)
            .where(
                task_table.c.status.in_(_FINAL_VALUES), task_table.c.finished_at < as_utc(before)
            )
            .order_by(task_table.c.finished_at, task_table.c.id)
            .limit(limit)
        )
        with self._engine.connect() as conn:
            return [_to_record(row) for row in conn.execute(query).all()]

    def due_deliveries(self, now: datetime, limit: int = 100) -> list[Delivery]:
        """PENDING deliveries whose next attempt is due at `now`, soonest due first."""
        query = (
            select(delivery_table)
            .where(
                delivery_table.c.state == DeliveryState.PENDING.value,
                delivery_table.c.next_attempt_at <= as_utc(now),
            )
            .order_by(delivery_table.c.next_attempt_at, delivery_table.c.id)
            .limit(limit)
        )
        with self._engine.connect() as conn:
            return _with_attempts(conn, conn.execute(query).all())

    def record_attempt(
        self,
        delivery_id: str,
        attempt: Attempt,
        state: DeliveryState,
        next_attempt_at: datetime | None,
    ) -> None:
        """Store an attempt and the delivery's new state (and next attempt time, if given)."""
        values: dict[str, Any] = {"state": state.value}
        if next_attempt_at is not None:
            values["next_attempt_at"] = as_utc(next_attempt_at)
        with self._engine.begin() as conn:
            changed = conn.execute(
                update(delivery_table)
                .where(delivery_table.c.delivery_id == delivery_id)
                .values(values)
            )
            if changed.rowcount != 1:
                raise DeliveryMissingError(delivery_id)
            conn.execute(
                insert(attempt_table).values(delivery_id=delivery_id, **_attempt_row(attempt))
            )

    def deliveries(self, task_id: str) -> list[Delivery]:
        """Every webhook delivery of a task, with its attempts, in the order they were made."""
        query = select(delivery_table).where(delivery_table.c.task_id == task_id)
        with self._engine.connect() as conn:
            return _with_attempts(conn, conn.execute(query.order_by(delivery_table.c.id)).all())

    def _find(self, where: ColumnElement[bool]) -> TaskRecord | None:
        with self._engine.connect() as conn:
            row = conn.execute(select(task_table).where(where)).one_or_none()
        return None if row is None else _to_record(row)

    def _claim_candidates(self, now: datetime) -> list[tuple[int, int]]:
        query = (
            select(task_table.c.id, task_table.c.claims)
            .where(_claimable(now))
            .order_by(task_table.c.id)
            .limit(_CLAIM_BATCH)
        )
        with self._engine.connect() as conn:
            return [(key, claims) for key, claims in conn.execute(query).all()]

    def _take(self, key: int, worker: str, lease_s: float, now: datetime) -> TaskRecord | None:
        values = {
            "status": Status.PROCESSING.value,
            "lease_owner": worker,
            "lease_until": now + timedelta(seconds=lease_s),
            "claims": task_table.c.claims + 1,
            "started_at": func.coalesce(task_table.c.started_at, literal(now, UtcDateTime())),
            "updated_at": now,
        }
        with self._engine.begin() as conn:
            taken = conn.execute(
                update(task_table).where(task_table.c.id == key, _claimable(now)).values(values)
            )
            # Another worker took the task between our look and our update.
            if taken.rowcount != 1:
                return None
            return _read_task(conn, task_table.c.id == key)

    def _give_up(self, key: int, claims: int, now: datetime, payload: Payload | None) -> None:
        message = f"gave up after {claims} attempts: the task stopped its worker each time"
        values = {"status": Status.FAILED.value, "status_msg": message, **_final_values(now)}
        guard = and_(_claimable(now), task_table.c.claims >= self._max_claims)
        self._finish(task_table.c.id == key, guard, values, now, payload)

    def _finish(
        self,
        target: ColumnElement[bool],
        guard: ColumnElement[bool],
        values: dict[str, Any],
        now: datetime,
        payload: Payload | None,
    ) -> TaskRecord | None:
        """Write a final state where `guard` holds, and its webhook delivery, in one go."""
        with self._engine.begin() as conn:
            if conn.execute(update(task_table).where(target, guard).values(values)).rowcount != 1:
                return None
            record = _read_task(conn, target)
            if record.spec.webhook_url is not None and payload is not None:
                conn.execute(insert(delivery_table).values(**_new_delivery(record, payload, now)))
            return record

    def _update_held(self, task_id: str, worker: str, values: dict[str, Any]) -> bool:
        statement = update(task_table).where(task_table.c.task_id == task_id, _held_by(worker))
        with self._engine.begin() as conn:
            return bool(conn.execute(statement.values(values)).rowcount == 1)


def _make_engine(url: str, *, busy_timeout_s: float) -> Engine:
    if make_url(url).get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    engine = create_engine(url, connect_args={"check_same_thread": False})
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

    event.listen(engine, "connect", tune)
    return engine


def _create_tables(engine: Engine) -> None:
    try:
        metadata.create_all(engine)
    except DatabaseError:
        # Replicas start together: another process may have created a table between our
        # check and our CREATE. A second pass sees it; a real problem fails again.
        metadata.create_all(engine)


def _moment(now: datetime | None) -> datetime:
    return datetime.now(UTC) if now is None else as_utc(now)


def _check_lease(lease_s: float) -> None:
    if not lease_s > 0:
        raise ValueError(f"lease_s must be a positive number of seconds, got {lease_s}")


def _claimable(now: datetime) -> ColumnElement[bool]:
    expired = and_(task_table.c.status == Status.PROCESSING.value, task_table.c.lease_until < now)
    return or_(task_table.c.status == Status.IN_QUEUE.value, expired)


def _held_by(worker: str) -> ColumnElement[bool]:
    return and_(task_table.c.status == Status.PROCESSING.value, task_table.c.lease_owner == worker)


def _final_values(now: datetime) -> dict[str, Any]:
    return {"finished_at": now, "updated_at": now, "lease_owner": None, "lease_until": None}


def _new_task(task_id: str, spec: TaskSpec, now: datetime) -> dict[str, Any]:
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


def _read_task(conn: Connection, where: ColumnElement[bool]) -> TaskRecord:
    return _to_record(conn.execute(select(task_table).where(where)).one())


def _to_record(row: Row[Any]) -> TaskRecord:
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
    )


def _new_delivery(record: TaskRecord, payload: Payload, now: datetime) -> dict[str, Any]:
    return {
        "delivery_id": "msg_" + uuid.uuid4().hex,
        "task_id": record.task_id,
        "url": record.spec.webhook_url,
        "payload": payload(record),
        "state": DeliveryState.PENDING.value,
        "next_attempt_at": now,
        "created_at": now,
    }


def _attempt_row(attempt: Attempt) -> dict[str, Any]:
    return {
        "number": attempt.number,
        "at": as_utc(attempt.at),
        "outcome": attempt.outcome,
        "status_code": attempt.status_code,
        "error": attempt.error,
        "seconds": attempt.seconds,
    }


def _with_attempts(conn: Connection, rows: Sequence[Row[Any]]) -> list[Delivery]:
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
