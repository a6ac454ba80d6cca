"""Tests of the blob store's key interface, run alike on the local store and on S3 (moto on
loopback): whole-or-nothing writes from a stream, moving files in, reading, sizes, listing
and deleting by prefix, local paths where a store has them, and keys that try to leave the
store's root. Tests of what only a local folder has (files, folders, inodes) use the local
store alone; test_s3blobs.py has what only S3 has."""

from __future__ import annotations

import io
import os
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
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
from serve_app.store.s3blobs import S3BlobStore
from tests.serve_app.store.keysonly import KeysOnlyBlobStore

KEY = "inputs/task-1/audio.mp3"


@pytest.fixture
def local_store(tmp_path: Path) -> LocalBlobStore:
    return LocalBlobStore(tmp_path / "blobs")


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest) -> BlobStore:
    """Each backend in turn; S3's fixtures start moto only when an S3 case runs."""
    name = "local_store" if request.param == "local" else "s3_store"
    chosen: BlobStore = request.getfixturevalue(name)
    return chosen


def keys(store: BlobStore, prefix: str = "") -> list[str]:
    return [entry.key for entry in store.list_prefix(prefix)]


def content(store: BlobStore, key: str) -> bytes:
    with store.open(key) as blob:
        return blob.read()


def files_under(folder: Path) -> list[str]:
    """Every file and folder below `folder`, hidden ones included, relative and sorted."""
    return sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*"))


def test_every_store_is_a_blob_store(local_store: LocalBlobStore, s3_store: S3BlobStore) -> None:
    typed: BlobStore = local_store  # mypy checks that the classes implement the protocol
    assert typed.exists(KEY) is False
    keys_only: BlobStore = KeysOnlyBlobStore(local_store.root)  # and the tests' object store
    assert keys_only.exists(KEY) is False
    s3: BlobStore = s3_store
    assert s3.exists(KEY) is False


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


def test_put_stream_stores_what_the_stream_reads(store: BlobStore) -> None:
    store.put_stream(KEY, io.BytesIO(b"ID3 audio"))
    assert content(store, KEY) == b"ID3 audio"
    assert keys(store) == [KEY]


def test_put_stream_leaves_no_other_files(local_store: LocalBlobStore) -> None:
    local_store.put_stream(KEY, io.BytesIO(b"ID3 audio"))
    assert files_under(local_store.root) == [
        "inputs",
        "inputs/task-1",
        "inputs/task-1/audio.mp3",
    ]


def test_put_stream_replaces_an_existing_blob(store: BlobStore) -> None:
    for written in (b"first", b"second"):
        store.put_stream(KEY, io.BytesIO(written))
    assert content(store, KEY) == b"second"


def test_a_stream_that_fails_leaves_nothing(store: BlobStore) -> None:
    seen: list[bool] = []
    stream = FailingStream(b"half a file", midway=lambda: seen.append(store.exists(KEY)))
    with pytest.raises(ConnectionResetError):
        store.put_stream(KEY, stream)
    assert seen == [False]  # not visible while it is written
    assert not store.exists(KEY)
    assert keys(store) == []


def test_a_failed_local_stream_leaves_no_files(local_store: LocalBlobStore) -> None:
    with pytest.raises(ConnectionResetError):
        local_store.put_stream(KEY, FailingStream(b"half a file"))
    assert files_under(local_store.root) == []
    local_store.put_stream(KEY, io.BytesIO(b"good"))
    with pytest.raises(ConnectionResetError):
        local_store.put_stream(KEY, FailingStream(b"bad"))
    assert files_under(local_store.root) == [
        "inputs",
        "inputs/task-1",
        "inputs/task-1/audio.mp3",
    ]


def test_a_failed_stream_keeps_the_previous_blob(store: BlobStore) -> None:
    store.put_stream(KEY, io.BytesIO(b"good"))
    with pytest.raises(ConnectionResetError):
        store.put_stream(KEY, FailingStream(b"bad"))
    assert content(store, KEY) == b"good"
    assert keys(store) == [KEY]


def test_an_empty_stream_stores_an_empty_blob(store: BlobStore) -> None:
    store.put_stream(KEY, io.BytesIO(b""))
    assert store.size(KEY) == 0
    assert content(store, KEY) == b""


def test_put_file_moves_a_spooled_upload_in(store: BlobStore) -> None:
    upload = store.spool_dir() / "upload-1"
    upload.write_bytes(b"uploaded audio")
    store.put_file(KEY, upload)
    assert not upload.exists()
    assert content(store, KEY) == b"uploaded audio"


def test_put_file_renames_on_the_same_filesystem(local_store: LocalBlobStore) -> None:
    upload = local_store.spool_dir() / "upload-1"
    upload.write_bytes(b"uploaded audio")
    before = os.stat(upload).st_ino
    local_store.put_file(KEY, upload)
    assert os.stat(local_store.local_path(KEY)).st_ino == before  # renamed, not copied


def test_put_file_copies_across_filesystems(local_store: LocalBlobStore) -> None:
    store = local_store
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


def test_put_file_of_a_missing_source_fails(store: BlobStore, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        store.put_file(KEY, tmp_path / "nothing")
    assert not store.exists(KEY)


def test_exists_size_open_and_local_path(store: BlobStore) -> None:
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
    assert content(store, KEY) == b"x" * 1234
    assert not store.exists("inputs/task-1")  # a folder (or key prefix) is not a blob
    for lookup in lookups:
        with pytest.raises(BlobMissingError):
            lookup("inputs/task-1")


def test_local_path_is_the_blobs_file(local_store: LocalBlobStore) -> None:
    local_store.put_stream(KEY, io.BytesIO(b"audio"))
    assert local_store.local_path(KEY) == local_store.root / "inputs" / "task-1" / "audio.mp3"


def put(store: BlobStore, key: str) -> None:
    store.put_stream(key, io.BytesIO(key.encode()))


def test_local_file_is_the_stores_own_or_a_copy(store: BlobStore, tmp_path: Path) -> None:
    put(store, KEY)
    work = tmp_path / "work"
    work.mkdir()
    copy = local_file(store, KEY, work)
    assert copy == (store.local_path(KEY) or work / "audio.mp3")
    assert copy.read_bytes() == KEY.encode()
    with pytest.raises(BlobMissingError):
        local_file(store, "inputs/task-2/audio.mp3", work)


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


def test_list_prefix_names_blobs_in_key_order_with_sizes(store: BlobStore) -> None:
    # S3 stamps whole seconds; the listing must say when the blob was written, in UTC.
    before = datetime.now(UTC).replace(microsecond=0)
    for key in ("outputs/t2/vocals.wav", "outputs/t1/x/bass.wav", "outputs/t1/drums.wav"):
        put(store, key)
    put(store, "outputs/t10/vocals.wav")
    put(store, "inputs/u1/audio.mp3")
    after = datetime.now(UTC)
    listed = list(store.list_prefix("outputs/t"))
    assert [entry.key for entry in listed] == [
        "outputs/t1/drums.wav",
        "outputs/t1/x/bass.wav",
        "outputs/t10/vocals.wav",
        "outputs/t2/vocals.wav",
    ]
    assert [entry.size for entry in listed] == [len(entry.key) for entry in listed]
    for entry in listed:
        assert entry.modified.utcoffset() == timedelta(0)
        assert before <= entry.modified <= after
    assert keys(store, "outputs/t1/") == ["outputs/t1/drums.wav", "outputs/t1/x/bass.wav"]
    assert keys(store, "outputs/t1/drums.wav") == ["outputs/t1/drums.wav"]
    assert len(keys(store)) == 5
    assert keys(store, "missing/") == []


def test_list_prefix_says_when_a_local_blob_was_written(local_store: LocalBlobStore) -> None:
    put(local_store, "outputs/t2/vocals.wav")
    stamp = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
    os.utime(local_store.local_path("outputs/t2/vocals.wav"), (stamp.timestamp(),) * 2)
    listed = list(local_store.list_prefix("outputs/"))
    assert listed == [BlobEntry("outputs/t2/vocals.wav", len(b"outputs/t2/vocals.wav"), stamp)]


def test_list_prefix_skips_the_spool_and_writers_at_work(store: BlobStore) -> None:
    (store.spool_dir() / "upload-1").write_bytes(b"arriving")
    put(store, "outputs/t1/drums.wav")
    listed: list[list[str]] = []

    def look() -> None:
        listed.append(keys(store))

    with pytest.raises(ConnectionResetError):
        store.put_stream("outputs/t1/vocals.wav", FailingStream(b"being written", midway=look))
    assert listed == [["outputs/t1/drums.wav"]]


def test_delete_prefix_removes_a_tasks_blobs(store: BlobStore) -> None:
    for key in ("outputs/t1/vocals.wav", "outputs/t1/drums.wav", "outputs/t1/x/bass.wav"):
        put(store, key)
    put(store, "outputs/t2/vocals.wav")
    put(store, "outputs/t10/vocals.wav")
    assert store.delete_prefix("outputs/t1/") == 3
    assert keys(store) == ["outputs/t10/vocals.wav", "outputs/t2/vocals.wav"]
    assert store.delete_prefix("outputs/t1/") == 0


def test_delete_prefix_removes_emptied_folders(local_store: LocalBlobStore) -> None:
    for key in ("outputs/t1/vocals.wav", "outputs/t1/x/bass.wav", "outputs/t2/vocals.wav"):
        put(local_store, key)
    assert local_store.delete_prefix("outputs/t1/") == 2
    assert files_under(local_store.root) == ["outputs", "outputs/t2", "outputs/t2/vocals.wav"]
    assert local_store.delete_prefix("outputs/t2/voc") == 1
    assert files_under(local_store.root) == []


def test_delete_prefix_matches_like_an_object_store(store: BlobStore) -> None:
    put(store, "outputs/t1/vocals.wav")
    put(store, "outputs/t10/vocals.wav")
    put(store, "outputs/t2/vocals.wav")
    assert store.delete_prefix("outputs/t1") == 2  # t1 and t10, as a string prefix
    assert keys(store) == ["outputs/t2/vocals.wav"]
    assert store.delete_prefix("outputs/t2/voc") == 1
    assert keys(store) == []


def test_delete_prefix_spares_the_spool_and_writers_at_work(store: BlobStore) -> None:
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
    assert content(store, "outputs/t1/vocals.wav") == b"being written"


def test_spool_dir_is_a_local_folder(store: BlobStore) -> None:
    spool = store.spool_dir()
    assert spool.is_absolute()
    assert spool.is_dir()
    assert store.spool_dir() == spool


def test_spool_dir_is_inside_the_root(local_store: LocalBlobStore) -> None:
    spool = local_store.spool_dir()
    assert spool == local_store.root / ".spool"
    assert os.stat(spool).st_dev == os.stat(local_store.root).st_dev


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
def test_keys_that_could_escape_are_refused(store: BlobStore, key: str, tmp_path: Path) -> None:
    source = tmp_path / "source.mp3"
    source.write_bytes(b"audio")
    with pytest.raises(ValueError, match="invalid blob key"):
        store.put_file(key, source)
    with pytest.raises(BlobKeyError):
        store.put_stream(key, io.BytesIO(b"audio"))
    for lookup in (store.local_path, store.exists, store.size, store.open):
        with pytest.raises(BlobKeyError):
            lookup(key)
    assert source.exists()
    assert keys(store) == []


def test_refused_keys_leave_no_local_files(local_store: LocalBlobStore) -> None:
    source = local_store.root.parent / "source.mp3"
    source.write_bytes(b"audio")
    for key in BAD_KEYS:
        with pytest.raises(BlobKeyError):
            local_store.put_file(key, source)
        with pytest.raises(BlobKeyError):
            local_store.put_stream(key, io.BytesIO(b"audio"))
    assert files_under(local_store.root.parent) == ["blobs", "source.mp3"]


@pytest.mark.parametrize("prefix", ["", "/", "/etc", "../", "inputs/../..", "a\\b", "x/.spool"])
def test_prefixes_that_could_escape_are_refused(store: BlobStore, prefix: str) -> None:
    put(store, KEY)
    with pytest.raises(BlobKeyError):
        store.delete_prefix(prefix)
    assert store.exists(KEY)
    if prefix:  # "" lists the whole store, which is fine to read
        with pytest.raises(BlobKeyError):
            list(store.list_prefix(prefix))
