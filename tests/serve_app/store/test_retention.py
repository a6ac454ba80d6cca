"""Tests of retention on a real task store (SQLite and PostgreSQL) and, through the blob
store's key interface, a local store, one without local paths, and S3 (moto): old finished
tasks lose their input and stems and are marked, recent and unfinished ones keep everything,
other blobs stay, a sweep that stopped part way is finished by the next, and old uploads no
task uses are removed.

S3 sets an object's LastModified itself, so checks that need blobs written in the past (an
old orphan beside a young one) run on the local stores only; on S3 an orphan's age is
measured from its LastModified instead."""

from __future__ import annotations

import io
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from serve_app.store.blobs import LocalBlobStore
from serve_app.store.layout import stem_key, work_folder_name
from serve_app.store.records import Status, TaskRecord, TaskSpec
from serve_app.store.retention import sweep, sweep_orphan_inputs, sweep_work_folders
from serve_app.store.s3blobs import S3BlobStore
from serve_app.store.tasks import TaskStore
from tests.serve_app.store.keysonly import KeysOnlyBlobStore

Blobs = LocalBlobStore | KeysOnlyBlobStore | S3BlobStore

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
HOUR = 3600.0
LATER = T0 + timedelta(hours=3)  # when the sweeps run
OTHER_BLOBS = ("reports/daily.csv", "stems-archive/readme.txt", "inputs/loose.mp3")


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@pytest.fixture(params=["local", "keys-only", "s3"])
def blobs(request: pytest.FixtureRequest, tmp_path: Path) -> Blobs:
    if request.param == "s3":
        s3_store: S3BlobStore = request.getfixturevalue("s3_store")
        return s3_store
    if request.param == "keys-only":
        return KeysOnlyBlobStore(tmp_path / "blobs")
    return LocalBlobStore(tmp_path / "blobs")


LOCAL_ONLY = pytest.mark.parametrize("blobs", ["local", "keys-only"], indirect=True)


def put(blobs: Blobs, key: str, *, written: datetime = T0) -> None:
    """Store a blob, dated `written` on a local store (S3 dates its objects itself)."""
    blobs.put_stream(key, io.BytesIO(key.encode()))
    if not isinstance(blobs, S3BlobStore):
        stamp = written.timestamp()
        os.utime(blobs.root / key, (stamp, stamp))


def submit(store: TaskStore, blobs: Blobs, name: str) -> TaskRecord:
    """A task with its uploaded input in the blob store."""
    input_key = f"inputs/{name}/audio.mp3"
    put(blobs, input_key)
    return store.tasks.create(
        TaskSpec(owner="local", stems=("vocals", "drums"), input_key=input_key)
    )


def complete(store: TaskStore, blobs: Blobs, record: TaskRecord, *, finished: datetime) -> None:
    """Claim and complete the task, writing its stems as the pipeline does."""
    taken = store.tasks.claim("w", 60, now=finished)
    assert taken is not None and taken.task_id == record.task_id
    results = {stem: stem_key(record.task_id, stem, "wav") for stem in record.spec.stems}
    for key in results.values():
        put(blobs, key, written=finished)
    done = store.tasks.complete(
        record.task_id, "w", results, duration_s=1, conversion_cost=0, now=finished
    )
    assert done is not None


def blob_keys(blobs: Blobs) -> set[str]:
    """What the store holds, seen in its folder or bucket rather than through the interface."""
    if isinstance(blobs, S3BlobStore):
        root = f"{blobs.location.bucket}/{blobs.location.prefix}"
        return {path.removeprefix(root) for path in blobs.fs.find(root)}
    return {
        path.relative_to(blobs.root).as_posix()
        for path in blobs.root.rglob("*")
        if path.is_file() and not path.name.startswith(".")
    }


def task_blobs(record: TaskRecord) -> set[str]:
    stems = {stem_key(record.task_id, stem, "wav") for stem in record.spec.stems}
    return stems | {record.spec.input_key or ""}


def fresh(store: TaskStore, record: TaskRecord) -> TaskRecord:
    found = store.tasks.get(record.task_id)
    assert found is not None
    return found


@pytest.fixture
def tasks(store: TaskStore, blobs: Blobs) -> dict[str, TaskRecord]:
    """Tasks of every kind a sweep at LATER with a one-hour retention meets, and other blobs."""
    made = {name: submit(store, blobs, name) for name in ("old_done", "old_failed", "recent")}
    made["processing"] = submit(store, blobs, "processing")
    made["queued"] = submit(store, blobs, "queued")
    complete(store, blobs, made["old_done"], finished=at(0))
    # A failed task may leave stems written before it failed.
    taken = store.tasks.claim("w", 60, now=at(60))
    assert taken is not None and taken.task_id == made["old_failed"].task_id
    put(blobs, stem_key(taken.task_id, "vocals", "wav"))
    assert store.tasks.fail(taken.task_id, "decoder error", now=at(60)) is not None
    complete(store, blobs, made["recent"], finished=LATER - timedelta(minutes=30))
    taken = store.tasks.claim("w", 60, now=at(0))  # claimed long ago, still at work
    assert taken is not None and taken.task_id == made["processing"].task_id
    for key in OTHER_BLOBS:
        put(blobs, key)
    return made


def test_sweep_deletes_old_finished_tasks_files_and_marks_them(
    store: TaskStore, blobs: Blobs, tasks: dict[str, TaskRecord]
) -> None:
    before = blob_keys(blobs)
    assert sweep(store.files, blobs, older_than_s=HOUR, now=LATER) == 2

    gone = task_blobs(tasks["old_done"]) | {
        tasks["old_failed"].spec.input_key or "",
        stem_key(tasks["old_failed"].task_id, "vocals", "wav"),
    }
    assert gone <= before
    assert blob_keys(blobs) == before - gone
    for name in ("old_done", "old_failed"):
        swept = fresh(store, tasks[name])
        assert (swept.files_expired_at, swept.files_deleted_at) == (LATER, LATER)
        if not isinstance(blobs, S3BlobStore):
            assert not (blobs.root / "stems" / swept.task_id).exists()  # no empty folder left
    for name in ("recent", "queued", "processing"):
        kept = fresh(store, tasks[name])
        assert (kept.files_expired_at, kept.files_deleted_at) == (None, None)
        assert {kept.spec.input_key} <= blob_keys(blobs)
    assert task_blobs(tasks["recent"]) <= blob_keys(blobs)
    assert fresh(store, tasks["processing"]).status is Status.PROCESSING
    assert set(OTHER_BLOBS) <= blob_keys(blobs)


def test_sweeping_again_changes_nothing(
    store: TaskStore, blobs: Blobs, tasks: dict[str, TaskRecord]
) -> None:
    assert sweep(store.files, blobs, older_than_s=HOUR, now=LATER) == 2
    after_first = blob_keys(blobs)
    records = {name: fresh(store, record) for name, record in tasks.items()}
    assert sweep(store.files, blobs, older_than_s=HOUR, now=LATER + timedelta(minutes=1)) == 0
    assert blob_keys(blobs) == after_first
    assert {name: fresh(store, record) for name, record in tasks.items()} == records


def test_a_later_sweep_reaches_tasks_once_they_are_old_enough(
    store: TaskStore, blobs: Blobs, tasks: dict[str, TaskRecord]
) -> None:
    sweep(store.files, blobs, older_than_s=HOUR, now=LATER)
    assert sweep(store.files, blobs, older_than_s=HOUR, now=LATER + timedelta(hours=1)) == 1
    assert not task_blobs(tasks["recent"]) & blob_keys(blobs)
    assert fresh(store, tasks["recent"]).files_deleted_at == LATER + timedelta(hours=1)


def test_a_sweep_finishes_tasks_marked_by_one_that_stopped(
    store: TaskStore, blobs: Blobs, tasks: dict[str, TaskRecord]
) -> None:
    # What a sweep that died right after marking leaves behind: marked, files still there.
    marked = store.files.expire_files(LATER - timedelta(hours=1), now=LATER)
    assert {record.task_id for record in marked} == {
        tasks["old_done"].task_id,
        tasks["old_failed"].task_id,
    }
    assert task_blobs(tasks["old_done"]) <= blob_keys(blobs)

    assert sweep(store.files, blobs, older_than_s=HOUR, now=LATER + timedelta(minutes=5)) == 2
    assert not task_blobs(tasks["old_done"]) & blob_keys(blobs)
    assert store.files.files_awaiting_deletion() == []
    swept = fresh(store, tasks["old_done"])
    assert swept.files_expired_at == LATER  # the first mark is kept
    assert swept.files_deleted_at == LATER + timedelta(minutes=5)


def test_a_small_batch_still_sweeps_every_old_task(
    store: TaskStore, blobs: Blobs, tasks: dict[str, TaskRecord]
) -> None:
    assert sweep(store.files, blobs, older_than_s=HOUR, now=LATER, batch=1) == 2
    assert store.files.files_awaiting_deletion() == []
    assert not task_blobs(tasks["old_done"]) & blob_keys(blobs)


def test_files_go_only_after_their_task_is_marked(
    store: TaskStore,
    blobs: Blobs,
    tasks: dict[str, TaskRecord],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Each deletion notes which tasks the store had marked expired when it came.
    deletions: list[tuple[str, set[str]]] = []
    delete = blobs.delete_prefix

    def watched_delete(prefix: str) -> int:
        marked = {record.task_id for record in store.files.files_awaiting_deletion()}
        deletions.append((prefix, marked))
        return delete(prefix)

    monkeypatch.setattr(blobs, "delete_prefix", watched_delete)
    assert sweep(store.files, blobs, older_than_s=HOUR, now=LATER) == 2
    owners: dict[str, str] = {}
    for name in ("old_done", "old_failed"):
        record = tasks[name]
        assert record.spec.input_key is not None
        owners[record.spec.input_key] = record.task_id
        owners[f"stems/{record.task_id}/"] = record.task_id
    assert sorted(prefix for prefix, _ in deletions) == sorted(owners)
    for prefix, marked in deletions:
        assert owners[prefix] in marked


@pytest.mark.parametrize("older_than_s", [0.0, -5.0])
def test_sweep_refuses_a_retention_that_is_not_positive(
    store: TaskStore, blobs: Blobs, older_than_s: float
) -> None:
    with pytest.raises(ValueError, match="older_than_s"):
        sweep(store.files, blobs, older_than_s=older_than_s)
    with pytest.raises(ValueError, match="older_than_s"):
        sweep_orphan_inputs(store.files, blobs, older_than_s=older_than_s)


def test_sweep_refuses_an_empty_batch(store: TaskStore, blobs: Blobs) -> None:
    with pytest.raises(ValueError, match="batch"):
        sweep(store.files, blobs, older_than_s=HOUR, batch=0)


@LOCAL_ONLY
def test_orphan_inputs_old_and_unused_are_deleted(
    store: TaskStore, blobs: Blobs, tasks: dict[str, TaskRecord]
) -> None:
    put(blobs, "inputs/orphan/audio.wav", written=at(0))
    put(blobs, "inputs/young-orphan/audio.wav", written=LATER - timedelta(minutes=10))
    before = blob_keys(blobs)
    assert not isinstance(blobs, S3BlobStore)  # LOCAL_ONLY

    assert sweep_orphan_inputs(store.files, blobs, older_than_s=HOUR, now=LATER) == 1
    assert blob_keys(blobs) == before - {"inputs/orphan/audio.wav"}
    assert not (blobs.root / "inputs" / "orphan").exists()
    # Inputs that tasks name stay, however old, finished or not, and so do loose blobs.
    assert {record.spec.input_key for record in tasks.values()} <= blob_keys(blobs)
    assert "inputs/loose.mp3" in blob_keys(blobs)

    assert sweep_orphan_inputs(store.files, blobs, older_than_s=HOUR, now=LATER) == 0
    later_still = LATER + timedelta(hours=2)
    assert sweep_orphan_inputs(store.files, blobs, older_than_s=HOUR, now=later_still) == 1


def test_an_orphan_upload_goes_once_older_than_the_age_by_its_store_time(
    store: TaskStore, blobs: Blobs
) -> None:
    put(blobs, "inputs/orphan/audio.wav")
    used = submit(store, blobs, "used")
    (orphan,) = blobs.list_prefix("inputs/orphan/")
    just_young = orphan.modified + timedelta(seconds=HOUR - 1)
    assert sweep_orphan_inputs(store.files, blobs, older_than_s=HOUR, now=just_young) == 0
    just_old = orphan.modified + timedelta(seconds=HOUR + 1)
    assert sweep_orphan_inputs(store.files, blobs, older_than_s=HOUR, now=just_old) == 1
    assert blob_keys(blobs) == {used.spec.input_key}


def test_orphan_sweep_works_in_batches_and_on_an_empty_store(
    store: TaskStore, blobs: Blobs
) -> None:
    later = datetime.now(UTC) + timedelta(hours=2)  # past every blob's date, S3's included
    assert sweep_orphan_inputs(store.files, blobs, older_than_s=HOUR, now=later) == 0
    for number in range(5):
        put(blobs, f"inputs/orphan-{number}/audio.wav")
    used = submit(store, blobs, "used")
    assert sweep_orphan_inputs(store.files, blobs, older_than_s=HOUR, now=later, batch=2) == 5
    assert blob_keys(blobs) == {used.spec.input_key}


def test_uploads_left_in_the_spool_go_once_unwritten_for_the_age(
    store: TaskStore, blobs: Blobs
) -> None:
    # What a request whose Ingress replica died mid-upload leaves: a partial spooled body.
    spool = blobs.spool_dir()
    stale, writing = spool / "upload-stale", spool / "upload-writing"
    for path, written in ((stale, at(0)), (writing, LATER - timedelta(minutes=10))):
        path.write_bytes(b"part of a body")
        os.utime(path, (written.timestamp(), written.timestamp()))
    assert sweep_orphan_inputs(store.files, blobs, older_than_s=HOUR, now=LATER) == 1
    assert sorted(spool.iterdir()) == [writing]


def test_work_folders_of_workers_that_no_longer_hold_their_task_go(
    store: TaskStore, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    spec = TaskSpec(owner="local", stems=("drums",))
    running, retaken, done = (store.tasks.create(spec) for _ in range(3))
    claims = [
        store.tasks.claim("live", 600, now=at(0)),  # `running`, held by `live` throughout
        store.tasks.claim(
            "dead", 60, now=at(0)
        ),  # `retaken`: its worker died, so the lease ran out
        store.tasks.claim("heir", 60, now=at(120)),  # and `heir` took it
        store.tasks.claim("w", 60, now=at(120)),  # `done`, completed by `w`
    ]
    assert [claim and claim.task_id for claim in claims] == [
        running.task_id,
        retaken.task_id,
        retaken.task_id,
        done.task_id,
    ]
    assert store.tasks.complete(done.task_id, "w", {}, duration_s=1, conversion_cost=0) is not None
    folders = {
        name: work / work_folder_name(task_id, worker)
        for name, task_id, worker in (
            ("running", running.task_id, "live"),
            ("dead", retaken.task_id, "dead"),
            ("heir", retaken.task_id, "heir"),
            ("done", done.task_id, "w"),
        )
    }
    for folder in folders.values():
        (folder / "stems").mkdir(parents=True)
        (folder / "stems" / "drums.wav").write_bytes(b"RIFF")
    (work / "notes").mkdir()  # not a work folder: left alone
    assert sweep_work_folders(store.tasks, work) == 2
    assert sorted(path.name for path in work.iterdir()) == sorted(
        [folders["running"].name, folders["heir"].name, "notes"]
    )
    assert sweep_work_folders(store.tasks, tmp_path / "nothing-here") == 0
