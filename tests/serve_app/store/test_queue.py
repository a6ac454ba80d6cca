"""Tests of the task queue on a real SQLite file: task life cycle, leases, racing claimers in
threads and processes, giving up on tasks that kill their workers, final states written with
their webhooks, and idempotent creation (also racing)."""

from __future__ import annotations

import json
import multiprocessing
import re
import threading
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from serve_app.store.queue import IdempotencyConflictError, IdempotencyKeyError
from serve_app.store.records import DeliveryState, Status
from serve_app.store.tasks import TaskStore
from tests.serve_app.store.taskdb import HOOK, T0, at, body, broken_body, claimed, spec


def test_create_stores_a_queued_task_with_distinct_uuids(store: TaskStore) -> None:
    before = datetime.now(UTC)
    record = store.tasks.create(spec(webhook_url=HOOK))
    assert record.status is Status.IN_QUEUE
    assert record.progress == 0.0
    assert record.status_msg == ""
    assert record.results == {}
    assert record.claims == 0
    assert record.lease_owner is None and record.lease_until is None
    assert record.started_at is None and record.finished_at is None
    assert record.task_id != record.conversion_id
    assert uuid.UUID(record.task_id).version == 4
    assert uuid.UUID(record.conversion_id).version == 4
    assert record.spec == spec(webhook_url=HOOK)
    assert record.duration_s == 12.5
    assert before <= record.created_at <= datetime.now(UTC)


def test_timestamps_come_back_aware_utc(store: TaskStore) -> None:
    record = store.tasks.create(spec())
    assert record.created_at.tzinfo is UTC
    paris = timezone(timedelta(hours=2))
    taken = claimed(store, "w1", now=datetime(2025, 1, 1, 14, 0, tzinfo=paris), lease_s=30)
    assert taken.started_at == T0
    assert taken.started_at is not None and taken.started_at.tzinfo is UTC
    assert taken.lease_until == at(30)
    assert taken.lease_until is not None and taken.lease_until.tzinfo is UTC


def test_naive_times_are_refused(store: TaskStore) -> None:
    store.tasks.create(spec())
    with pytest.raises(ValueError, match="no time zone"):
        store.tasks.claim("w1", 60, now=datetime(2025, 1, 1, 12, 0))
    with pytest.raises(ValueError, match="no time zone"):
        store.outbox.due_deliveries(datetime(2025, 1, 1, 12, 0))


def test_claim_takes_the_oldest_waiting_task_first(store: TaskStore) -> None:
    created = [store.tasks.create(spec()).task_id for _ in range(3)]
    taken = [claimed(store, f"w{i}", lease_s=45) for i in range(3)]
    assert [record.task_id for record in taken] == created
    first = taken[0]
    assert first.status is Status.PROCESSING
    assert first.lease_owner == "w0"
    assert first.lease_until == at(45)
    assert first.started_at == T0
    assert first.claims == 1
    assert store.tasks.claim("w9", 45, now=T0) is None


def test_claim_refuses_a_lease_that_is_not_positive(store: TaskStore) -> None:
    with pytest.raises(ValueError, match="lease_s"):
        store.tasks.claim("w1", 0)


def test_an_expired_lease_passes_to_another_worker_and_the_first_loses_it(
    store: TaskStore,
) -> None:
    task_id = store.tasks.create(spec(webhook_url=HOOK)).task_id
    claimed(store, "w1", lease_s=10)
    assert store.tasks.claim("w2", 10, now=at(10)) is None  # not expired until strictly after

    second = claimed(store, "w2", now=at(11), lease_s=10)
    assert second.task_id == task_id
    assert second.claims == 2
    assert second.started_at == T0  # the first start is kept

    assert not store.tasks.renew(task_id, "w1", 10, now=at(12))
    assert not store.tasks.set_progress(task_id, "w1", 0.5)
    assert (
        store.tasks.complete(task_id, "w1", {"vocals": "k"}, duration_s=1, conversion_cost=1)
        is None
    )
    assert store.tasks.fail(task_id, "w1 gave up", worker="w1", payload=body) is None
    after = store.tasks.get(task_id)
    assert after is not None
    assert (after.status, after.lease_owner, after.progress) == (Status.PROCESSING, "w2", 0.0)
    assert store.outbox.deliveries(task_id) == []

    assert store.tasks.renew(task_id, "w2", 10, now=at(12))
    assert store.tasks.set_progress(task_id, "w2", 0.5)
    final = store.tasks.complete(task_id, "w2", {"vocals": "k"}, duration_s=1, conversion_cost=1)
    assert final is not None and final.status is Status.COMPLETED


def test_renew_extends_only_the_holders_lease(store: TaskStore) -> None:
    task_id = store.tasks.create(spec()).task_id
    claimed(store, "w1", lease_s=10)
    assert store.tasks.renew(task_id, "w1", 60, now=at(5))
    renewed = store.tasks.get(task_id)
    assert renewed is not None and renewed.lease_until == at(65)
    assert store.tasks.claim("w2", 10, now=at(30)) is None  # the renewed lease still holds
    assert not store.tasks.renew(task_id, "w2", 60, now=at(5))
    assert not store.tasks.renew("no-such-task", "w1", 60, now=at(5))


def test_set_progress_clamps_and_never_goes_back(store: TaskStore) -> None:
    task_id = store.tasks.create(spec()).task_id
    claimed(store, "w1")

    def progress() -> float:
        record = store.tasks.get(task_id)
        assert record is not None
        return record.progress

    assert store.tasks.set_progress(task_id, "w1", -0.5)
    assert progress() == 0.0
    assert store.tasks.set_progress(task_id, "w1", 0.4)
    assert progress() == 0.4
    assert store.tasks.set_progress(task_id, "w1", 0.2)  # still the holder, progress kept
    assert progress() == 0.4
    assert store.tasks.set_progress(task_id, "w1", 7.0)
    assert progress() == 1.0
    with pytest.raises(ValueError, match="NaN"):
        store.tasks.set_progress(task_id, "w1", float("nan"))


def test_set_progress_needs_a_claimed_task(store: TaskStore) -> None:
    task_id = store.tasks.create(spec()).task_id
    assert not store.tasks.set_progress(task_id, "w1", 0.5)


def test_complete_finishes_the_task_and_enqueues_its_webhook(store: TaskStore) -> None:
    task_id = store.tasks.create(spec(webhook_url=HOOK)).task_id
    claimed(store, "w1")
    results = {"vocals": "outputs/a/vocals.flac", "drums": "outputs/a/drums.flac"}
    final = store.tasks.complete(
        task_id, "w1", results, duration_s=12.0, conversion_cost=2.0, payload=body, now=at(30)
    )
    assert final is not None
    assert final.status is Status.COMPLETED
    assert final.progress == 1.0
    assert final.results == results
    assert (final.duration_s, final.conversion_cost) == (12.0, 2.0)
    assert final.finished_at == at(30)
    assert final.lease_owner is None and final.lease_until is None
    assert store.tasks.get(task_id) == final

    [delivery] = store.outbox.deliveries(task_id)
    assert re.fullmatch(r"msg_[0-9a-f]{32}", delivery.delivery_id)
    assert delivery.url == HOOK
    assert delivery.state is DeliveryState.PENDING
    assert delivery.next_attempt_at == at(30)
    assert delivery.attempts == ()
    # The body is built from the final record, inside the same transaction.
    assert json.loads(delivery.payload) == {"task_id": task_id, "status": "COMPLETED"}


def test_complete_keeps_the_inputs_warnings_and_says_them_in_the_status(
    store: TaskStore,
) -> None:
    warnings = ("the input is shorter than its header declares", "2 damaged packets were left out")
    task_id = store.tasks.create(spec(webhook_url=HOOK)).task_id
    claimed(store, "w1")

    final = store.tasks.complete(
        task_id, "w1", {}, duration_s=1.0, conversion_cost=0.0, warnings=warnings, payload=body
    )

    assert final is not None and store.tasks.get(task_id) == final
    assert final.warnings == warnings
    assert final.status_msg == "; ".join(warnings)


@pytest.mark.parametrize(
    ("webhook_url", "payload"), [(None, body), (HOOK, None)], ids=["no-url", "no-payload"]
)
def test_complete_enqueues_nothing_without_url_and_payload(
    store: TaskStore, webhook_url: str | None, payload: Any
) -> None:
    task_id = store.tasks.create(spec(webhook_url=webhook_url)).task_id
    claimed(store, "w1")
    final = store.tasks.complete(
        task_id, "w1", {}, duration_s=1, conversion_cost=0, payload=payload
    )
    assert final is not None and final.status is Status.COMPLETED
    assert store.outbox.deliveries(task_id) == []


def test_a_payload_that_raises_leaves_the_task_unchanged(store: TaskStore) -> None:
    task_id = store.tasks.create(spec(webhook_url=HOOK)).task_id
    held = claimed(store, "w1")
    with pytest.raises(RuntimeError, match="payload builder broke"):
        store.tasks.complete(
            task_id, "w1", {"vocals": "k"}, duration_s=1, conversion_cost=1, payload=broken_body
        )
    with pytest.raises(RuntimeError, match="payload builder broke"):
        store.tasks.fail(task_id, "boom", payload=broken_body)
    assert store.tasks.get(task_id) == held
    assert store.outbox.deliveries(task_id) == []


def test_fail_by_the_ingress_needs_no_lease(store: TaskStore) -> None:
    task_id = store.tasks.create(spec(webhook_url=HOOK)).task_id
    failed = store.tasks.fail(task_id, "could not fetch audio_url", payload=body, now=at(5))
    assert failed is not None
    assert failed.status is Status.FAILED
    assert failed.status_msg == "could not fetch audio_url"
    assert failed.finished_at == at(5)
    [delivery] = store.outbox.deliveries(task_id)
    assert json.loads(delivery.payload)["status"] == "FAILED"


def test_fail_by_a_worker_needs_its_lease(store: TaskStore) -> None:
    task_id = store.tasks.create(spec()).task_id
    assert store.tasks.fail(task_id, "not mine", worker="w1") is None
    claimed(store, "w1")
    assert store.tasks.fail(task_id, "not mine", worker="w2") is None
    failed = store.tasks.fail(task_id, "decoder error", worker="w1")
    assert failed is not None and failed.status is Status.FAILED
    assert failed.lease_owner is None


def test_fail_never_touches_a_final_task(store: TaskStore) -> None:
    task_id = store.tasks.create(spec(webhook_url=HOOK)).task_id
    claimed(store, "w1")
    done = store.tasks.complete(task_id, "w1", {}, duration_s=1, conversion_cost=0, payload=body)
    assert store.tasks.fail(task_id, "too late", payload=body) is None
    assert store.tasks.get(task_id) == done
    assert len(store.outbox.deliveries(task_id)) == 1
    assert store.tasks.fail("no-such-task", "missing") is None


def test_a_task_that_keeps_killing_workers_is_given_up(url: str) -> None:
    store = TaskStore(url, max_claims=2)
    try:
        doomed = store.tasks.create(spec(webhook_url=HOOK)).task_id
        waiting = store.tasks.create(spec()).task_id
        assert claimed(store, "w1", lease_s=10).task_id == doomed
        assert claimed(store, "w2", now=at(11), lease_s=10).task_id == doomed

        # The doomed task is older, but it has had its chances: the claim moves on.
        next_task = store.tasks.claim("w3", 10, now=at(22), payload=body)
        assert next_task is not None and next_task.task_id == waiting

        given_up = store.tasks.get(doomed)
        assert given_up is not None
        assert given_up.status is Status.FAILED
        assert given_up.status_msg.startswith("gave up after 2 attempts")
        assert given_up.finished_at == at(22)
        assert given_up.lease_owner is None
        [delivery] = store.outbox.deliveries(doomed)
        assert json.loads(delivery.payload) == {"task_id": doomed, "status": "FAILED"}
    finally:
        store.close()


def test_max_claims_must_allow_one_claim(url: str) -> None:
    with pytest.raises(ValueError, match="max_claims"):
        TaskStore(url, max_claims=0)


def claim_all(url: str, worker: str, start: Any) -> list[str]:
    """Claim tasks until none is left; the ids claimed, in order."""
    store = TaskStore(url)
    try:
        start.wait()
        taken: list[str] = []
        while (record := store.tasks.claim(worker, 600)) is not None:
            taken.append(record.task_id)
        return taken
    finally:
        store.close()


def claim_all_in_process(url: str, worker: str, start: Any, results: Any) -> None:
    results.put((worker, claim_all(url, worker, start)))


def assert_each_claimed_once(store: TaskStore, created: list[str], runs: list[list[str]]) -> None:
    every = [task_id for run in runs for task_id in run]
    assert sorted(every) == sorted(created)
    for task_id in created:
        record = store.tasks.get(task_id)
        assert record is not None and record.claims == 1


def test_two_threads_claim_each_task_exactly_once(store: TaskStore, url: str) -> None:
    created = [store.tasks.create(spec()).task_id for _ in range(40)]
    start = threading.Barrier(2)
    runs: dict[str, list[str]] = {}

    def run(worker: str) -> None:
        runs[worker] = claim_all(url, worker, start)

    threads = [threading.Thread(target=run, args=(f"t{i}",)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert set(runs) == {"t0", "t1"}
    assert_each_claimed_once(store, created, list(runs.values()))


def test_two_processes_claim_each_task_exactly_once(store: TaskStore, url: str) -> None:
    created = [store.tasks.create(spec()).task_id for _ in range(60)]
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(2)
    results = context.Queue()
    workers = [
        context.Process(target=claim_all_in_process, args=(url, f"p{i}", start, results))
        for i in range(2)
    ]
    for worker in workers:
        worker.start()
    runs = dict(results.get(timeout=60) for _ in workers)
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    assert set(runs) == {"p0", "p1"}
    assert_each_claimed_once(store, created, list(runs.values()))


def test_create_once_returns_the_keys_task_for_the_same_request(store: TaskStore) -> None:
    first, created = store.tasks.create_once(spec(), "key-1", "fp-1")
    assert created
    again, created_again = store.tasks.create_once(spec(), "key-1", "fp-1")
    assert not created_again
    assert again == first
    assert store.tasks.create(spec(), idempotency_key="key-1", fingerprint="fp-1") == first
    assert store.statistics.counts()[Status.IN_QUEUE] == 1


def test_create_once_refuses_the_key_for_a_different_request(store: TaskStore) -> None:
    first, _ = store.tasks.create_once(spec(), "key-1", "fp-1")
    with pytest.raises(
        IdempotencyConflictError, match="Idempotency-Key was used with a different request"
    ) as conflict:
        store.tasks.create_once(spec(), "key-1", "fp-2")
    assert conflict.value.task_id == first.task_id
    with pytest.raises(IdempotencyConflictError):
        store.tasks.create_once(spec(), "key-1", None)
    assert store.statistics.counts()[Status.IN_QUEUE] == 1
    assert store.tasks.get(first.task_id) == first


def test_keys_are_scoped_per_owner(store: TaskStore) -> None:
    mine, _ = store.tasks.create_once(spec(owner="a"), "shared-key", "fp-a")
    theirs, created = store.tasks.create_once(spec(owner="b"), "shared-key", "fp-b")
    assert created
    assert theirs.task_id != mine.task_id
    assert theirs.spec.owner == "b"
    assert store.tasks.create_once(spec(owner="a"), "shared-key", "fp-a") == (mine, False)


def test_tasks_without_a_key_never_collide(store: TaskStore) -> None:
    first = store.tasks.create(spec())
    second = store.tasks.create(spec())
    assert first.task_id != second.task_id
    keyed, _ = store.tasks.create_once(spec(), "key-1", "fp")
    assert keyed.task_id not in {first.task_id, second.task_id}


@pytest.mark.parametrize("key", ["", "k" * 256])
def test_keys_must_be_1_to_255_characters(store: TaskStore, key: str) -> None:
    with pytest.raises(IdempotencyKeyError, match="1 to 255 characters") as refused:
        store.tasks.create_once(spec(), key, "fp")
    assert isinstance(refused.value, ValueError)
    assert store.statistics.counts()[Status.IN_QUEUE] == 0


def test_a_255_character_key_is_stored(store: TaskStore) -> None:
    key = "k" * 255
    first, _ = store.tasks.create_once(spec(), key, "fp")
    assert store.tasks.create_once(spec(), key, "fp") == (first, False)


def test_a_key_past_its_ttl_moves_to_a_new_task(url: str) -> None:
    store = TaskStore(url, key_ttl_s=60)
    try:
        old, _ = store.tasks.create_once(spec(), "key-1", "fp-old", now=at(0))
        assert store.tasks.create_once(spec(), "key-1", "fp-old", now=at(59)) == (old, False)
        with pytest.raises(IdempotencyConflictError):
            store.tasks.create_once(spec(), "key-1", "fp-new", now=at(59))

        new, created = store.tasks.create_once(spec(), "key-1", "fp-new", now=at(61))
        assert created
        assert new.task_id != old.task_id
        assert store.tasks.get(old.task_id) == old  # the old task stays, without the key
        assert store.tasks.create_once(spec(), "key-1", "fp-new", now=at(62)) == (new, False)
        with pytest.raises(IdempotencyConflictError):
            store.tasks.create_once(spec(), "key-1", "fp-old", now=at(62))
    finally:
        store.close()


def test_key_ttl_must_be_positive(url: str) -> None:
    with pytest.raises(ValueError, match="key_ttl_s"):
        TaskStore(url, key_ttl_s=0)


def create_with_key(url: str, owner: str, start: Any) -> tuple[str, bool]:
    """Create a task with one shared key once every racer is ready."""
    store = TaskStore(url)
    try:
        start.wait()
        record, created = store.tasks.create_once(spec(owner=owner), "racing-key", "fp")
        return record.task_id, created
    finally:
        store.close()


def create_with_key_in_process(url: str, owner: str, start: Any, results: Any) -> None:
    results.put(create_with_key(url, owner, start))


def assert_one_task_created(store: TaskStore, outcomes: list[tuple[str, bool]]) -> None:
    assert len({task_id for task_id, _ in outcomes}) == 1
    assert sum(created for _, created in outcomes) == 1
    assert store.statistics.counts()[Status.IN_QUEUE] == 1


def test_eight_threads_with_one_key_create_one_task(store: TaskStore) -> None:
    start = threading.Barrier(8)
    outcomes: list[tuple[str, bool]] = []

    def run() -> None:
        start.wait()
        record, created = store.tasks.create_once(spec(), "racing-key", "fp")
        outcomes.append((record.task_id, created))

    threads = [threading.Thread(target=run) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(outcomes) == 8
    assert_one_task_created(store, outcomes)


def test_two_processes_with_one_key_create_one_task(store: TaskStore, url: str) -> None:
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(2)
    results = context.Queue()
    racers = [
        context.Process(target=create_with_key_in_process, args=(url, "local", start, results))
        for _ in range(2)
    ]
    for racer in racers:
        racer.start()
    outcomes = [results.get(timeout=60) for _ in racers]
    for racer in racers:
        racer.join(timeout=60)
        assert racer.exitcode == 0
    assert_one_task_created(store, outcomes)


def test_release_hands_a_task_back_without_counting_the_claim(store: TaskStore) -> None:
    created = store.tasks.create(spec())
    claimed = store.tasks.claim("w1", 30.0)
    assert claimed is not None and claimed.claims == 1
    assert store.tasks.set_progress(created.task_id, "w1", 0.5)
    assert not store.tasks.release(created.task_id, "w2")  # only the holder may
    assert store.tasks.release(created.task_id, "w1")
    back = store.tasks.get(created.task_id)
    assert back is not None
    assert back.status == Status.IN_QUEUE
    assert (back.lease_owner, back.lease_until, back.progress, back.claims) == (None, None, 0.0, 0)
    again = store.tasks.claim("w2", 30.0)  # at once: no lease to wait for
    assert again is not None and again.task_id == created.task_id and again.claims == 1
    assert not store.tasks.renew(created.task_id, "w1", 30.0)
