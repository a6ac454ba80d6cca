"""The webhook outbox: deliveries of tasks' final states and their attempts. A delivery is
queued (`enqueue_delivery`) in the same transaction that writes its task's final state
(serve_app/store/queue.py), so neither exists without the other; the webhook dispatcher
then takes due deliveries and records each attempt here. Implements `records.Outbox`."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.engine import Connection, Engine

from serve_app.store.records import Attempt, Delivery, DeliveryState, TaskRecord
from serve_app.store.schema import (
    as_utc,
    attempt_row,
    attempt_table,
    delivery_row,
    delivery_table,
    with_attempts,
)


class DeliveryMissingError(LookupError):
    """An attempt was recorded for a webhook delivery that the outbox does not hold."""

    def __init__(self, delivery_id: str) -> None:
        self.delivery_id = delivery_id
        super().__init__(f"no webhook delivery {delivery_id!r} in the outbox")


def enqueue_delivery(conn: Connection, record: TaskRecord, payload: str, now: datetime) -> None:
    """Queue the delivery of a task's final state, due at `now`, in the caller's transaction."""
    conn.execute(insert(delivery_table).values(**delivery_row(record, payload, now)))


class WebhookOutbox:
    """Webhook deliveries and their attempts, in the task database."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

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
            return with_attempts(conn, conn.execute(query).all())

    def next_attempt_after(self, moment: datetime) -> datetime | None:
        """When the first PENDING delivery not yet due at `moment` comes due; None if none."""
        query = select(func.min(delivery_table.c.next_attempt_at)).where(
            delivery_table.c.state == DeliveryState.PENDING.value,
            delivery_table.c.next_attempt_at > as_utc(moment),
        )
        with self._engine.connect() as conn:
            found = conn.execute(query).scalar_one_or_none()
        return None if found is None else as_utc(found)

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
                insert(attempt_table).values(delivery_id=delivery_id, **attempt_row(attempt))
            )

    def deliveries(self, task_id: str) -> list[Delivery]:
        """Every webhook delivery of a task, with its attempts, in the order they were made."""
        query = select(delivery_table).where(delivery_table.c.task_id == task_id)
        with self._engine.connect() as conn:
            return with_attempts(conn, conn.execute(query.order_by(delivery_table.c.id)).all())
