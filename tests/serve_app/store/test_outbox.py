"""Tests of the webhook outbox on a real SQLite file: deliveries queued with their tasks' final
states come due, record their attempts and are retried or settled."""

from __future__ import annotations

from datetime import UTC

import pytest

from serve_app.store.outbox import DeliveryMissingError
from serve_app.store.records import Attempt, DeliveryState
from serve_app.store.tasks import TaskStore
from tests.serve_app.store.taskdb import HOOK, T0, at, body, spec


def test_outbox_due_and_record_flow(store: TaskStore) -> None:
    first = store.tasks.create(spec(webhook_url=HOOK)).task_id
    second = store.tasks.create(spec(webhook_url=HOOK)).task_id
    assert store.tasks.fail(second, "bad audio", payload=body, now=at(1)) is not None
    assert store.tasks.fail(first, "bad audio", payload=body, now=at(2)) is not None

    assert store.outbox.due_deliveries(at(0)) == []
    due = store.outbox.due_deliveries(at(5))
    assert [delivery.task_id for delivery in due] == [second, first]  # soonest due first
    assert [delivery.task_id for delivery in store.outbox.due_deliveries(at(5), limit=1)] == [
        second
    ]

    retry = Attempt(
        number=1,
        at=at(5),
        outcome="retry",
        status_code=None,
        error="timed out after 10 s",
        seconds=10.0,
    )
    store.outbox.record_attempt(due[0].delivery_id, retry, DeliveryState.PENDING, at(35))
    assert [delivery.task_id for delivery in store.outbox.due_deliveries(at(6))] == [first]
    # The dispatcher sleeps until the first delivery not yet due comes due.
    assert store.outbox.next_attempt_after(at(0)) == at(2)
    upcoming = store.outbox.next_attempt_after(at(6))
    assert upcoming == at(35)
    assert upcoming is not None and upcoming.tzinfo is UTC
    assert store.outbox.next_attempt_after(at(35)) is None

    [waiting, again] = store.outbox.due_deliveries(at(40))
    assert waiting.task_id == first  # due since 2 s, before the retry at 35 s
    assert again.delivery_id == due[0].delivery_id
    assert again.next_attempt_at == at(35)
    assert again.attempts == (retry,)

    delivered = Attempt(
        number=2, at=at(40), outcome="delivered", status_code=200, error="", seconds=0.25
    )
    store.outbox.record_attempt(again.delivery_id, delivered, DeliveryState.DELIVERED, None)
    assert [delivery.task_id for delivery in store.outbox.due_deliveries(at(100))] == [first]
    assert store.outbox.next_attempt_after(at(6)) is None  # a delivered one is no longer waited for

    [done] = store.outbox.deliveries(second)
    assert done.state is DeliveryState.DELIVERED
    assert done.next_attempt_at == at(35)
    assert done.attempts == (retry, delivered)
    assert done.attempts[0].at.tzinfo is UTC


def test_record_attempt_for_an_unknown_delivery_is_refused(store: TaskStore) -> None:
    attempt = Attempt(
        number=1, at=T0, outcome="failed", status_code=410, error="HTTP 410", seconds=0.1
    )
    with pytest.raises(DeliveryMissingError, match="msg_nothing"):
        store.outbox.record_attempt("msg_nothing", attempt, DeliveryState.FAILED, None)
