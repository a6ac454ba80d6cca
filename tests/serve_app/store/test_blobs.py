"""Tests of the blob store's key interface on the local store: whole-or-nothing writes from a
stream, moving files in, reading, sizes, listing and deleting by prefix, local paths where a
store has them, and keys that try to leave the store's root."""

from __future__ import annotations

import io
import os
import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from serve_app.store.blobs import (
    BlobEntry,
    BlobKeyError,
    BlobMissingError,
    BlobStore,
    LocalBlobStore,
    local_file,
)
from tests.serve_app.store.keysonly import KeysOnlyBlobStore

KEY = "inputs/task-1/audio.mp3"


@pytest.fixture
def store(tmp_path: Path) -> LocalBlobStore:
    return LocalBlobStore(tmp_path / "blobs")


def files_under(folder: Path) -> list[str]:
    """Every file and folder below `folder`, hidden ones included, relative and sorted."""
    return sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*"))


def test_the_local_store_is_a_blob_store(store: LocalBlobStore) -> None:
    typed: BlobStore = store  # mypy checks that the class implements the protocol
    assert typed.exists(KEY) is False
    keys_only: BlobStore = KeysOnlyBlobStore(store.root)  # and so does the tests' object store
    assert keys_only.exists(KEY) is False


class FailingStream(io.BytesIO):
    """A stream that yields `first` and then fails, as a dropped connection does; `midway`
    runs once the first block is read."""

    def __init__(self, first: bytes, midway: Callable[[], None] = lambda: None) -> None:
        super().__init__(first)
        self.midway = midway
        self.served = False

    def read(self, size: int | None = -1) -> bytes:
        if self.served:
            self.midway()
            raise ConnectionResetError("the upload stopped")
        self.served = True
        return super().read(size)


def test_put_stream_stores_what_the_stream_reads(store: LocalBlobStore) -> None:
    store.put_stream(KEY, io.BytesIO(b"ID3 audio"))
    with store.open(KEY) as blob:
        assert blob.read() == b"ID3 audio"
    assert files_under(store.root) == ["inputs", "inputs/task-1", "inputs/task-1/audio.mp3"]


def test_put_stream_replaces_an_existing_blob(store: LocalBlobStore) -> None:
    for content in (b"first", b"second"):
        store.put_stream(KEY, io.BytesIO(content))
    assert store.local_path(KEY).read_bytes() == b"second"


def test_a_stream_that_fails_leaves_nothing(store: LocalBlobStore) -> None:
    seen: list[bool] = []
    stream = FailingStream(b"half a file", midway=lambda: seen.append(store.exists(KEY)))
    with pytest.raises(ConnectionResetError):
        store.put_stream(KEY, stream)
    assert seen == [False]  # not visible while it is written
    assert not store.exists(KEY)
    assert files_under(store.root) == []


def test_a_failed_stream_keeps_the_previous_blob(store: LocalBlobStore) -> None:
    store.put_stream(KEY, io.BytesIO(b"good"))
    with pytest.raises(ConnectionResetError):
        store.put_stream(KEY, FailingStream(b"bad"))
    assert store.local_path(KEY).read_bytes() == b"good"
    assert files_under(store.root) == ["inputs", "inputs/task-1", "inputs/task-1/audio.mp3"]


def test_an_empty_stream_stores_an_empty_blob(store: LocalBlobStore) -> None:
    store.put_stream(KEY, io.BytesIO(b""))
    assert store.size(KEY) == 0


def test_put_file_moves_a_spooled_upload_in(store: LocalBlobStore) -> None:
    upload = store.spool_dir() / "upload-1"
    upload.write_bytes(b"uploaded audio")
    before = os.stat(upload).st_ino
    store.put_file(KEY, upload)
    assert not upload.exists()
    assert store.local_path(KEY).read_bytes() == b"uploaded audio"
    assert os.stat(store.local_path(KEY)).st_ino == before  # renamed, not copied


def test_put_file_copies_across_filesystems(store: LocalBlobStore) -> None:
    other = Path("/dev/shm")
    if not other.is_dir() or os.stat(other).st_dev == os.stat(store.root).st_dev:
        pytest.skip("needs a folder on another filesystem")
    source = other / f"stemsplit-test-{os.getpid()}.mp3"
    source.write_bytes(b"audio from elsewhere")
    try:
        store.put_file(KEY, source)
        assert store.local_path(KEY).read_bytes() == b"audio from elsewhere"
        assert not source.exists()
        assert files_under(store.root) == ["inputs", "inputs/task-1", "inputs/task-1/audio.mp3"]
    finally:
        source.unlink(missing_ok=True)


def test_put_file_of_a_missing_source_fails(store: LocalBlobStore, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        store.put_file(KEY, tmp_path / "nothing")
    assert not store.exists(KEY)


def test_exists_size_open_and_local_path(store: LocalBlobStore) -> None:
    assert not store.exists(KEY)
    lookups: list[Callable[[str], object]] = [store.local_path, store.size, store.open]
    with pytest.raises(BlobMissingError, match=re.escape(KEY)) as missing:
        store.local_path(KEY)
    assert missing.value.key == KEY
    for lookup in lookups:
        with pytest.raises(BlobMissingError):
            lookup(KEY)
    store.put_stream(KEY, io.BytesIO(b"x" * 1234))
    assert store.exists(KEY)
    assert store.size(KEY) == 1234
    with store.open(KEY) as blob:
        assert blob.read() == b"x" * 1234
    assert store.local_path(KEY) == store.root / "inputs" / "task-1" / "audio.mp3"
    assert not store.exists("inputs/task-1")  # a folder is not a blob
    for lookup in lookups:
        with pytest.raises(BlobMissingError):
            lookup("inputs/task-1")


def put(store: BlobStore, key: str) -> None:
    store.put_stream(key, io.BytesIO(key.encode()))


def test_local_file_is_the_stores_own_where_it_keeps_one(
    store: LocalBlobStore, tmp_path: Path
) -> None:
    put(store, KEY)
    work = tmp_path / "work"
    work.mkdir()
    assert local_file(store, KEY, work) == store.local_path(KEY)
    assert list(work.iterdir()) == []


def test_local_file_copies_from_a_store_without_paths(tmp_path: Path) -> None:
    store = KeysOnlyBlobStore(tmp_path / "blobs")
    put(store, KEY)
    assert store.local_path(KEY) is None
    work = tmp_path / "work"
    work.mkdir()
    copy = local_file(store, KEY, work)
    assert copy == work / "audio.mp3"
    assert copy.read_bytes() == KEY.encode()
    with pytest.raises(BlobMissingError):
        local_file(store, "inputs/task-2/audio.mp3", work)


def test_list_prefix_names_blobs_in_key_order_with_sizes(store: LocalBlobStore) -> None:
    for key in ("outputs/t2/vocals.wav", "outputs/t1/x/bass.wav", "outputs/t1/drums.wav"):
        put(store, key)
    put(store, "outputs/t10/vocals.wav")
    put(store, "inputs/u1/audio.mp3")
    stamp = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
    os.utime(store.local_path("outputs/t2/vocals.wav"), (stamp.timestamp(),) * 2)
    listed = list(store.list_prefix("outputs/t"))
    assert [entry.key for entry in listed] == [
        "outputs/t1/drums.wav",
        "outputs/t1/x/bass.wav",
        "outputs/t10/vocals.wav",
        "outputs/t2/vocals.wav",
    ]
    assert listed[-1] == BlobEntry("outputs/t2/vocals.wav", len(b"outputs/t2/vocals.wav"), stamp)
    assert [entry.key for entry in store.list_prefix("outputs/t1/")] == [
        "outputs/t1/drums.wav",
        "outputs/t1/x/bass.wav",
    ]
    assert [entry.key for entry in store.list_prefix("outputs/t1/drums.wav")] == [
        "outputs/t1/drums.wav"
    ]
    assert len(list(store.list_prefix(""))) == 5
    assert list(store.list_prefix("missing/")) == []


def test_list_prefix_skips_the_spool_and_writers_at_work(store: LocalBlobStore) -> None:
    (store.spool_dir() / "upload-1").write_bytes(b"arriving")
    put(store, "outputs/t1/drums.wav")
    listed: list[list[str]] = []

    def look() -> None:
        listed.append([entry.key for entry in store.list_prefix("")])

    with pytest.raises(ConnectionResetError):
        store.put_stream("outputs/t1/vocals.wav", FailingStream(b"being written", midway=look))
    assert listed == [["outputs/t1/drums.wav"]]


def test_delete_prefix_removes_a_tasks_blobs_and_its_folders(store: LocalBlobStore) -> None:
    for key in ("outputs/t1/vocals.wav", "outputs/t1/drums.wav", "outputs/t1/x/bass.wav"):
        put(store, key)
    put(store, "outputs/t2/vocals.wav")
    put(store, "outputs/t10/vocals.wav")
    assert store.delete_prefix("outputs/t1/") == 3
    assert files_under(store.root) == [
        "outputs",
        "outputs/t10",
        "outputs/t10/vocals.wav",
        "outputs/t2",
        "outputs/t2/vocals.wav",
    ]
    assert store.delete_prefix("outputs/t1/") == 0


def test_delete_prefix_matches_like_an_object_store(store: LocalBlobStore) -> None:
    put(store, "outputs/t1/vocals.wav")
    put(store, "outputs/t10/vocals.wav")
    put(store, "outputs/t2/vocals.wav")
    assert store.delete_prefix("outputs/t1") == 2  # t1 and t10, as a string prefix
    assert files_under(store.root) == ["outputs", "outputs/t2", "outputs/t2/vocals.wav"]
    assert store.delete_prefix("outputs/t2/voc") == 1
    assert files_under(store.root) == []


def test_delete_prefix_spares_the_spool_and_writers_at_work(store: LocalBlobStore) -> None:
    upload = store.spool_dir() / "upload-1"
    upload.write_bytes(b"arriving")
    deleted: list[int] = []

    class Arriving(io.BytesIO):
        def read(self, size: int | None = -1) -> bytes:
            deleted.append(store.delete_prefix("outputs/"))  # while the writer is at work
            return super().read(size)

    store.put_stream("outputs/t1/vocals.wav", Arriving(b"being written"))
    assert deleted[0] == 0
    assert upload.read_bytes() == b"arriving"
    assert store.local_path("outputs/t1/vocals.wav").read_bytes() == b"being written"


def test_spool_dir_is_inside_the_root(store: LocalBlobStore) -> None:
    spool = store.spool_dir()
    assert spool == store.root / ".spool"
    assert spool.is_dir()
    assert os.stat(spool).st_dev == os.stat(store.root).st_dev


BAD_KEYS = [
    "",
    "/etc/passwd",
    "../outside.mp3",
    "inputs/../../outside.mp3",
    "inputs/./audio.mp3",
    "inputs//audio.mp3",
    "inputs/",
    "inputs\\..\\..\\outside.mp3",
    "inputs/audio\0.mp3",
    ".spool/upload-1",
    "inputs/.hidden",
]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_keys_that_could_escape_are_refused(store: LocalBlobStore, key: str) -> None:
    source = store.root.parent / "source.mp3"
    source.write_bytes(b"audio")
    with pytest.raises(ValueError, match="invalid blob key"):
        store.put_file(key, source)
    with pytest.raises(BlobKeyError):
        store.put_stream(key, io.BytesIO(b"audio"))
    for lookup in (store.local_path, store.exists, store.size, store.open):
        with pytest.raises(BlobKeyError):
            lookup(key)
    assert source.exists()
    assert files_under(store.root.parent) == ["blobs", "source.mp3"]


@pytest.mark.parametrize("prefix", ["", "/", "/etc", "../", "inputs/../..", "a\\b", "x/.spool"])
def test_prefixes_that_could_escape_are_refused(store: LocalBlobStore, prefix: str) -> None:
    put(store, KEY)
    with pytest.raises(BlobKeyError):
        store.delete_prefix(prefix)
    assert store.exists(KEY)
    if prefix:  # "" lists the whole store, which is fine to read
        with pytest.raises(BlobKeyError):
            list(store.list_prefix(prefix))
