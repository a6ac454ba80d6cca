"""Retention: deletes the files of tasks that finished long ago (the uploaded input and the
stems), uploads that no task came to use, and what a crashed process left behind (a partial
upload in the spool, a Pipeline worker's folder), so that the data folder does not grow
forever.

Why this order: a sweep first marks a task's files expired in the ledger (`expire_files`), then
deletes them, then records them deleted (`mark_files_deleted`). Marking first means no task is
ever served while its files go: the ingress must treat `files_expired_at` as "files gone" and
list or serve none. Deleting first would let a reader find an unmarked task whose files are
missing. Marking alone is not enough, though: a sweep that stopped between marking and deleting
(a crash, a failing disk) would leave files the next `expire_files` never returns again. So the
deletion is recorded apart from the mark, and each sweep first finishes the tasks left marked
but not deleted (`files_awaiting_deletion`). Hence, after any sweep that returns, every
expired task has no files, and no task lost its files while still served. Deleting is
idempotent, so a sweep run twice, or two sweeps at once, do no harm. A download that looked
the task up just before the mark may still be cut short; the window is that request's.

Each upload is assumed to belong to one task, as the ingress stores every upload in a folder
of its own; where uploads, stems and work folders live is serve_app/store/layout.py's to say.
Blobs are reached only through the `BlobStore` interface, so any backend can be swept. A
Pipeline worker computes a task in its own local work folder and deletes it when done; only a
worker that died skips that."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from serve_app.store.blobs import BlobStore
from serve_app.store.layout import INPUTS, stems_prefix, upload_prefix, work_folder_owner
from serve_app.store.ledger import FileLedger
from serve_app.store.queue import TaskQueue
from serve_app.store.records import TaskRecord
from serve_app.store.schema import utc_moment


@dataclass(frozen=True)
class _Upload:
    """One upload's folder under inputs/ and the blob keys in it."""

    prefix: str
    keys: tuple[str, ...]


def sweep(
    ledger: FileLedger,
    blobs: BlobStore,
    *,
    older_than_s: float,
    now: datetime | None = None,
    batch: int = 1000,
) -> int:
    """Delete the input and stems of every task final for more than `older_than_s` seconds,
    `batch` tasks at a time; how many tasks lost their files in this sweep."""
    _check_batch(batch)
    moment = utc_moment(now)
    cutoff = moment - _age(older_than_s)
    swept = 0
    # Tasks marked by a sweep that stopped part way come first, so that none stays behind.
    while left := ledger.files_awaiting_deletion(limit=batch):
        swept += _delete_files(ledger, blobs, left, moment)
    while expired := ledger.expire_files(cutoff, limit=batch, now=moment):
        swept += _delete_files(ledger, blobs, expired, moment)
    return swept


def sweep_orphan_inputs(
    ledger: FileLedger,
    blobs: BlobStore,
    *,
    older_than_s: float,
    now: datetime | None = None,
    batch: int = 1000,
) -> int:
    """Delete uploads under inputs/ that no task names and whose files are all older than
    `older_than_s` seconds: an upload whose task creation failed, or a repeated idempotent
    request's upload; and uploads left in the spool unwritten for as long, by a request whose
    Ingress replica died while it read the body. How many uploads were deleted.

    `older_than_s` must exceed the time between storing an upload and creating its task,
    which is seconds.
    """
    _check_batch(batch)
    cutoff = utc_moment(now) - _age(older_than_s)
    uploads = _old_uploads(blobs, cutoff)
    swept = 0
    for start in range(0, len(uploads), batch):
        chunk = uploads[start : start + batch]
        in_use = ledger.input_keys_in_use([key for upload in chunk for key in upload.keys])
        for upload in chunk:
            if in_use.isdisjoint(upload.keys):
                blobs.delete_prefix(upload.prefix)
                swept += 1
    return swept + _sweep_spool(blobs, cutoff)


def sweep_work_folders(tasks: TaskQueue, work_dir: Path) -> int:
    """Delete the work folders of workers that no longer hold their task: left by a Pipeline
    replica that died at work, whose task then ran again elsewhere or ended. A folder whose
    worker holds its task is in use and stays. How many were deleted."""
    if not work_dir.is_dir():
        return 0
    deleted = 0
    for folder in work_dir.iterdir():
        owner = work_folder_owner(folder.name)
        if owner is None or not folder.is_dir():
            continue
        task_id, worker = owner
        record = tasks.get(task_id)
        if record is None or record.lease_owner != worker:
            shutil.rmtree(folder, ignore_errors=True)
            deleted += 1
    return deleted


def _sweep_spool(blobs: BlobStore, cutoff: datetime) -> int:
    """Delete the spool's uploads last written before `cutoff`; how many."""
    deleted = 0
    for entry in blobs.spool_dir().iterdir():
        try:
            if entry.is_file() and entry.stat().st_mtime < cutoff.timestamp():
                entry.unlink()
                deleted += 1
        except FileNotFoundError:  # its request finished and removed it meanwhile
            continue
    return deleted


def _delete_files(
    ledger: FileLedger, blobs: BlobStore, records: Sequence[TaskRecord], now: datetime
) -> int:
    for record in records:
        if record.spec.input_key is not None:
            blobs.delete_prefix(record.spec.input_key)
        blobs.delete_prefix(stems_prefix(record.task_id))
    return ledger.mark_files_deleted([record.task_id for record in records], now=now)


def _old_uploads(blobs: BlobStore, cutoff: datetime) -> list[_Upload]:
    """Upload folders whose blobs were all last written before `cutoff`."""
    newest: dict[str, datetime] = {}
    keys: dict[str, list[str]] = {}
    for blob in blobs.list_prefix(f"{INPUTS}/"):
        prefix = upload_prefix(blob.key)
        if prefix is None:  # a blob loose in inputs/, in no upload's folder
            continue
        newest[prefix] = max(newest.get(prefix, blob.modified), blob.modified)
        keys.setdefault(prefix, []).append(blob.key)
    return [
        _Upload(prefix=prefix, keys=tuple(keys[prefix]))
        for prefix in sorted(keys)
        if newest[prefix] < cutoff
    ]


def _age(older_than_s: float) -> timedelta:
    if not older_than_s > 0:
        raise ValueError(f"older_than_s must be a positive number of seconds, got {older_than_s}")
    return timedelta(seconds=older_than_s)


def _check_batch(batch: int) -> None:
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
