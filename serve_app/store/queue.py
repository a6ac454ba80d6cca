"""The task queue: every task's state, shared by the ingress (which creates tasks) and the
Pipeline replicas (which claim and run them) through one SQL database. Pipeline replicas take
tasks under a lease (`claim`, `renew`), so a task whose worker died is taken again and one
that keeps killing its workers is given up; every write that depends on who holds a task is a
conditional UPDATE whose row count says whether it happened, so two processes never both win.
A task's final state and its webhook delivery are written in one transaction
(serve_app/store/outbox.py), so neither exists without the other. Idempotent submissions
make one task per owner and Idempotency-Key, enforced by a unique index."""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    and_,
    case,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from serve_app.store.outbox import enqueue_delivery
from serve_app.store.records import (
    Status,
    TaskRecord,
    TaskSpec,
)
from serve_app.store.schema import (
    FINAL_VALUES,
    MAX_IDEMPOTENCY_KEY_LENGTH,
    UtcDateTime,
    read_task,
    task_row,
    task_table,
    to_record,
    utc_moment,
)

Payload = Callable[[TaskRecord], str]
"""Builds a webhook's JSON body from a task's final record."""

# Candidates read per look: more than one, so that a claim that loses a race moves straight
# on to the next task instead of looking again.
_CLAIM_BATCH = 8
# The status message of a task given up, around its number of claims.
_GAVE_UP_AFTER = "gave up after "
_ATTEMPTS = " attempts: the task stopped its worker each time"


class IdempotencyKeyError(ValueError):
    """An Idempotency-Key that is empty or too long to store."""

    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(
            f"the Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} characters long,"
            f" got {len(key)}"
        )


def check_idempotency_key(key: str) -> None:
    """Refuse an Idempotency-Key that cannot be stored (IdempotencyKeyError)."""
    if not 0 < len(key) <= MAX_IDEMPOTENCY_KEY_LENGTH:
        raise IdempotencyKeyError(key)


class IdempotencyConflictError(Exception):
    """An Idempotency-Key that already created a task from a different request."""

    def __init__(self, key: str, task_id: str) -> None:
        self.key = key
        self.task_id = task_id
        super().__init__("this Idempotency-Key was used with a different request")


class TaskQueue:
    """Tasks, their leases and their final states, in the tasks table; safe to share
    between processes. Methods are synchronous and thread-safe; call them from a thread in
    async code."""

    def __init__(self, engine: Engine, *, max_claims: int = 3, key_ttl_s: float = 86400.0) -> None:
        if max_claims < 1:
            raise ValueError(f"max_claims must be at least 1, got {max_claims}")
        if not key_ttl_s > 0:
            raise ValueError(f"key_ttl_s must be a positive number of seconds, got {key_ttl_s}")
        self._engine = engine
        self._max_claims = max_claims
        self._key_ttl = timedelta(seconds=key_ttl_s)

    def create(
        self,
        spec: TaskSpec,
        *,
        idempotency_key: str | None = None,
        fingerprint: str | None = None,
        now: datetime | None = None,
    ) -> TaskRecord:
        """Store a new task, IN_QUEUE, with fresh task and conversion ids.

        With an `idempotency_key`, as `create_once`, without saying whether the task is new.
        """
        if idempotency_key is not None:
            return self.create_once(spec, idempotency_key, fingerprint, now=now)[0]
        moment = utc_moment(now)
        task_id = str(uuid.uuid4())
        with self._engine.begin() as conn:
            conn.execute(insert(task_table).values(**task_row(task_id, spec, moment)))
            return read_task(conn, task_table.c.task_id == task_id)

    def create_once(
        self,
        spec: TaskSpec,
        idempotency_key: str,
        fingerprint: str | None,
        *,
        now: datetime | None = None,
    ) -> tuple[TaskRecord, bool]:
        """The task `spec.owner` created with this key, and False; or a new one, and True.

        `fingerprint` identifies the request (a hash of what it asked for): the key's task is
        returned only for the same fingerprint, else IdempotencyConflictError. A key older
        than `key_ttl_s` counts as unused: it moves to a new task and the old task stays.
        Concurrent calls with one key, from any processes, create exactly one task.
        """
        check_idempotency_key(idempotency_key)
        moment = utc_moment(now)
        task_id = str(uuid.uuid4())
        holder = and_(
            task_table.c.owner == spec.owner, task_table.c.idempotency_key == idempotency_key
        )
        row = {
            **task_row(task_id, spec, moment),
            "idempotency_key": idempotency_key,
            "request_fingerprint": fingerprint,
        }
        try:
            with self._engine.begin() as conn:
                # Written first so that the transaction holds the write lock from the start.
                conn.execute(
                    update(task_table)
                    .where(holder, task_table.c.created_at < moment - self._key_ttl)
                    .values(idempotency_key=None, request_fingerprint=None)
                )
                conn.execute(insert(task_table).values(**row))
                return read_task(conn, task_table.c.task_id == task_id), True
        except IntegrityError:
            existing = self._find_keyed(holder)
            if existing is None:
                raise
        record, stored_fingerprint = existing
        if stored_fingerprint != fingerprint:
            raise IdempotencyConflictError(idempotency_key, record.task_id)
        return record, False

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
        moment = utc_moment(now)
        if self._engine.dialect.name == "postgresql":
            return self._claim_skipping_locked(worker, lease_s, moment, payload)
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
        moment = utc_moment(now)
        values = {"lease_until": moment + timedelta(seconds=lease_s), "updated_at": moment}
        return self._update_held(task_id, worker, values)

    def release(self, task_id: str, worker: str) -> bool:
        """Hand a task back to the queue (a replica shutting down gracefully), if `worker`
        holds it: IN_QUEUE, no lease, progress 0, and the claim not counted against
        max_claims, since the task did not stop its worker."""
        values = {
            "status": Status.IN_QUEUE.value,
            "lease_owner": None,
            "lease_until": None,
            "progress": 0.0,
            "claims": task_table.c.claims - 1,
            "updated_at": utc_moment(None),
        }
        return self._update_held(task_id, worker, values)

    def set_progress(self, task_id: str, worker: str, progress: float) -> bool:
        """Record progress (clamped to [0, 1], never backwards) if `worker` holds the task."""
        if math.isnan(progress):
            raise ValueError("progress must be a number between 0 and 1, got NaN")
        value = min(max(progress, 0.0), 1.0)
        forward = case((task_table.c.progress < value, value), else_=task_table.c.progress)
        return self._update_held(
            task_id, worker, {"progress": forward, "updated_at": utc_moment(None)}
        )

    def set_note(self, task_id: str, worker: str, message: str) -> bool:
        """Set the `status_msg` of a task `worker` holds: what it waits for, or "" once it
        waits no more."""
        return self._update_held(
            task_id, worker, {"status_msg": message, "updated_at": utc_moment(None)}
        )

    def complete(
        self,
        task_id: str,
        worker: str,
        results: dict[str, str],
        *,
        duration_s: float,
        conversion_cost: float,
        warnings: Sequence[str] = (),
        payload: Payload | None = None,
        now: datetime | None = None,
    ) -> TaskRecord | None:
        """Mark the task COMPLETED with its stem files, if `worker` holds it; None otherwise.

        `warnings` about the input are kept, and joined into the status message. With a
        webhook_url and `payload`, the delivery is enqueued in the same transaction; if
        `payload` raises, nothing is written and the error propagates.
        """
        moment = utc_moment(now)
        values = {
            "status": Status.COMPLETED.value,
            "status_msg": "; ".join(warnings),
            "warnings": json.dumps(list(warnings)),
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
        moment = utc_moment(now)
        values = {"status": Status.FAILED.value, "status_msg": message, **_final_values(moment)}
        guard: ColumnElement[bool] = task_table.c.status.not_in(FINAL_VALUES)
        if worker is not None:
            guard = and_(guard, _held_by(worker))
        return self._finish(task_table.c.task_id == task_id, guard, values, moment, payload)

    def _find(self, where: ColumnElement[bool]) -> TaskRecord | None:
        with self._engine.connect() as conn:
            row = conn.execute(select(task_table).where(where)).one_or_none()
        return None if row is None else to_record(row)

    def _find_keyed(self, holder: ColumnElement[bool]) -> tuple[TaskRecord, str | None] | None:
        with self._engine.connect() as conn:
            row = conn.execute(select(task_table).where(holder)).one_or_none()
        return None if row is None else (to_record(row), row.request_fingerprint)

    def _claim_candidates(self, now: datetime) -> list[tuple[int, int]]:
        query = (
            select(task_table.c.id, task_table.c.claims)
            .where(_claimable(now))
            .order_by(task_table.c.id)
            .limit(_CLAIM_BATCH)
        )
        with self._engine.connect() as conn:
            return [(key, claims) for key, claims in conn.execute(query).all()]

    def _claim_skipping_locked(
        self, worker: str, lease_s: float, now: datetime, payload: Payload | None
    ) -> TaskRecord | None:
        """`claim` on PostgreSQL: each statement picks its tasks with FOR UPDATE SKIP LOCKED,
        so a claimer passes over the rows another transaction holds instead of waiting for
        it, and picking and writing are one statement, so no other claimer comes between."""
        exhausted = task_table.c.claims >= self._max_claims
        with self._engine.begin() as conn:
            while True:
                doomed = conn.execute(
                    update(task_table)
                    .where(task_table.c.id.in_(_oldest_unlocked(now, exhausted, _CLAIM_BATCH)))
                    .values(
                        status=Status.FAILED.value,
                        status_msg=func.concat(_GAVE_UP_AFTER, task_table.c.claims, _ATTEMPTS),
                        **_final_values(now),
                    )
                    .returning(*task_table.c)
                ).all()
                for row in doomed:
                    record = to_record(row)
                    if record.spec.webhook_url is not None and payload is not None:
                        enqueue_delivery(conn, record, payload(record), now)
                if len(doomed) < _CLAIM_BATCH:
                    break
            oldest = _oldest_unlocked(now, ~exhausted, 1).scalar_subquery()
            taken = conn.execute(
                update(task_table)
                .where(task_table.c.id == oldest, _claimable(now))
                .values(_take_values(worker, lease_s, now))
                .returning(*task_table.c)
            ).one_or_none()
            return None if taken is None else to_record(taken)

    def _take(self, key: int, worker: str, lease_s: float, now: datetime) -> TaskRecord | None:
        values = _take_values(worker, lease_s, now)
        with self._engine.begin() as conn:
            taken = conn.execute(
                update(task_table).where(task_table.c.id == key, _claimable(now)).values(values)
            )
            # Another worker took the task between our look and our update.
            if taken.rowcount != 1:
                return None
            return read_task(conn, task_table.c.id == key)

    def _give_up(self, key: int, claims: int, now: datetime, payload: Payload | None) -> None:
        message = f"{_GAVE_UP_AFTER}{claims}{_ATTEMPTS}"
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
            record = read_task(conn, target)
            if record.spec.webhook_url is not None and payload is not None:
                enqueue_delivery(conn, record, payload(record), now)
            return record

    def _update_held(self, task_id: str, worker: str, values: dict[str, Any]) -> bool:
        statement = update(task_table).where(task_table.c.task_id == task_id, _held_by(worker))
        with self._engine.begin() as conn:
            return bool(conn.execute(statement.values(values)).rowcount == 1)


def _check_lease(lease_s: float) -> None:
    if not lease_s > 0:
        raise ValueError(f"lease_s must be a positive number of seconds, got {lease_s}")


def _claimable(now: datetime) -> ColumnElement[bool]:
    expired = and_(task_table.c.status == Status.PROCESSING.value, task_table.c.lease_until < now)
    return or_(task_table.c.status == Status.IN_QUEUE.value, expired)


def _oldest_unlocked(now: datetime, which: ColumnElement[bool], limit: int) -> Select[Any]:
    """The ids of the oldest claimable tasks matching `which` that no other transaction has
    locked, locked for this one."""
    return (
        select(task_table.c.id)
        .where(_claimable(now), which)
        .order_by(task_table.c.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )


def _take_values(worker: str, lease_s: float, now: datetime) -> dict[str, Any]:
    return {
        "status": Status.PROCESSING.value,
        "lease_owner": worker,
        "lease_until": now + timedelta(seconds=lease_s),
        "claims": task_table.c.claims + 1,
        "started_at": func.coalesce(task_table.c.started_at, literal(now, UtcDateTime())),
        "updated_at": now,
    }


def _held_by(worker: str) -> ColumnElement[bool]:
    return and_(task_table.c.status == Status.PROCESSING.value, task_table.c.lease_owner == worker)


def _final_values(now: datetime) -> dict[str, Any]:
    return {"finished_at": now, "updated_at": now, "lease_owner": None, "lease_until": None}
