"""Tests of serve_app.store.admission: per-key rate windows in a real task database (SQLite
and PostgreSQL), taken from threads and from separate processes at once."""

from __future__ import annotations

import multiprocessing
import threading
from typing import Any

import pytest

from serve_app.store.admission import RateLimiter, Refusal, Slot
from serve_app.store.tasks import TaskStore
from tests.serve_app.store.taskdb import at


def limiter(store: TaskStore, per_window: int) -> RateLimiter:
    return RateLimiter(store.engine, per_window=per_window, window_s=60)


def test_a_key_gets_its_limit_then_a_refusal_until_the_oldest_leaves(store: TaskStore) -> None:
    limits = limiter(store, 3)
    slots = [limits.take("alice", now=at(seconds)) for seconds in (0, 10, 20)]
    assert all(isinstance(slot, Slot) for slot in slots)
    refused = limits.take("alice", now=at(25))
    assert refused == Refusal(retry_after_s=35)  # the admission at 0 leaves at 60
    assert isinstance(limits.take("bob", now=at(25)), Slot)  # another key is not limited
    assert limits.take("alice", now=at(59.5)) == Refusal(retry_after_s=1)
    assert isinstance(limits.take("alice", now=at(60.5)), Slot)
    assert isinstance(limits.take("alice", now=at(61)), Refusal)


def test_a_released_slot_is_free_again_and_release_is_idempotent(store: TaskStore) -> None:
    limits = limiter(store, 2)
    first = limits.take("alice", now=at(0))
    second = limits.take("alice", now=at(1))
    assert isinstance(first, Slot) and isinstance(second, Slot)
    assert isinstance(limits.take("alice", now=at(2)), Refusal)
    limits.release(first)
    limits.release(first)  # twice: nothing more is freed
    assert isinstance(limits.take("alice", now=at(4)), Slot)
    assert isinstance(limits.take("alice", now=at(5)), Refusal)
    limits.release(Slot(owner="nobody", slot_id="x"))  # a key without a row


def test_limits_are_checked() -> None:
    engine: Any = None
    with pytest.raises(ValueError, match="per_window"):
        RateLimiter(engine, per_window=0)
    with pytest.raises(ValueError, match="window_s"):
        RateLimiter(engine, per_window=1, window_s=0)


def test_concurrent_threads_never_pass_the_limit(store: TaskStore) -> None:
    limits = limiter(store, 5)
    start = threading.Barrier(20)
    outcomes: list[Slot | Refusal] = []
    lock = threading.Lock()

    def race() -> None:
        start.wait()
        outcome = limits.take("alice")
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=race) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(isinstance(outcome, Slot) for outcome in outcomes) == 5
    assert all(1 <= o.retry_after_s <= 60 for o in outcomes if isinstance(o, Refusal))


def take_in_process(url: str, owner: str, tries: int, start: Any, results: Any) -> None:
    """A separate process with its own engine, as another replica would be."""
    store = TaskStore(url)
    try:
        limits = limiter(store, 7)
        start.wait()
        results.put(sum(isinstance(limits.take(owner), Slot) for _ in range(tries)))
    finally:
        store.close()


def test_concurrent_processes_never_pass_the_limit_even_for_a_new_key(
    store: TaskStore, url: str
) -> None:
    """Four processes race for the key's first slots, so they also race to create its
    row: exactly the limit is admitted."""
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(4)
    results = context.Queue()
    racers = [
        context.Process(target=take_in_process, args=(url, "carol", 6, start, results))
        for _ in range(4)
    ]
    for racer in racers:
        racer.start()
    admitted = [results.get(timeout=120) for _ in racers]
    for racer in racers:
        racer.join(timeout=60)
        assert racer.exitcode == 0
    assert sum(admitted) == 7
