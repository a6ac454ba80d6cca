"""Tests of the file-retention ledger on a real SQLite file: expiry marks, deletion marks, and
which uploads tasks name."""

from __future__ import annotations

from serve_app.store.records import Status, TaskSpec
from serve_app.store.tasks import TaskStore
from tests.serve_app.store.taskdb import at, claimed, spec


def test_expire_files_marks_final_tasks_finished_before_and_returns_them(
    store: TaskStore,
) -> None:
    old = store.tasks.create(spec()).task_id
    recent = store.tasks.create(spec()).task_id
    store.tasks.fail(old, "bad audio", now=at(0))
    store.tasks.fail(recent, "bad audio", now=at(100))
    waiting = store.tasks.create(spec()).task_id
    processing = claimed(store, "w1", now=at(0)).task_id  # since long ago, yet not final

    [expired] = store.files.expire_files(at(50), now=at(200))
    assert expired.task_id == old
    assert expired.files_expired_at == at(200)
    assert expired.files_deleted_at is None
    assert store.tasks.get(old) == expired
    assert store.files.expire_files(at(50), now=at(300)) == []  # already expired: not again

    assert [r.task_id for r in store.files.expire_files(at(10_000), now=at(400))] == [recent]
    for task_id in (waiting, processing):
        untouched = store.tasks.get(task_id)
        assert untouched is not None and untouched.files_expired_at is None
    assert store.statistics.counts()[Status.PROCESSING] == 1


def test_expire_files_takes_the_oldest_first_up_to_limit(store: TaskStore) -> None:
    ids = [store.tasks.create(spec()).task_id for _ in range(3)]
    for seconds, task_id in zip([30, 10, 20], ids, strict=True):
        store.tasks.fail(task_id, "bad audio", now=at(seconds))
    first = store.files.expire_files(at(100), limit=2, now=at(100))
    assert [record.task_id for record in first] == [ids[1], ids[2]]
    assert [record.task_id for record in store.files.expire_files(at(100), now=at(100))] == [ids[0]]


def test_files_awaiting_deletion_until_marked_deleted(store: TaskStore) -> None:
    ids = [store.tasks.create(spec()).task_id for _ in range(2)]
    for task_id in ids:
        store.tasks.fail(task_id, "bad audio", now=at(0))
    assert store.files.files_awaiting_deletion() == []
    assert store.files.mark_files_deleted(ids) == 0  # files not expired yet: nothing to record

    store.files.expire_files(at(10), now=at(10))
    assert [record.task_id for record in store.files.files_awaiting_deletion()] == ids
    assert [record.task_id for record in store.files.files_awaiting_deletion(limit=1)] == ids[:1]

    assert store.files.mark_files_deleted(ids[:1], now=at(20)) == 1
    assert store.files.mark_files_deleted(ids[:1], now=at(30)) == 0  # the first time is kept
    [left] = store.files.files_awaiting_deletion()
    assert left.task_id == ids[1]
    done = store.tasks.get(ids[0])
    assert done is not None
    assert (done.files_expired_at, done.files_deleted_at) == (at(10), at(20))


def test_input_keys_in_use_names_the_keys_tasks_hold(store: TaskStore) -> None:
    store.tasks.create(spec())  # holds inputs/x/audio.mp3
    store.tasks.create(
        TaskSpec(owner="local", stems=("vocals",), audio_url="https://example.test/a")
    )
    asked = ["inputs/x/audio.mp3", "inputs/y/audio.mp3", "inputs/x/"]
    assert store.files.input_keys_in_use(asked) == {"inputs/x/audio.mp3"}
    assert store.files.input_keys_in_use([]) == set()
