"""Tests of the local blob store: whole-or-nothing writes, moving files in, lookups, deleting by
prefix, and keys that try to leave the store's root."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from serve_app.store.blobs import BlobKeyError, BlobMissingError, BlobStore, LocalBlobStore

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


def test_writer_publishes_the_blob_when_the_block_succeeds(store: LocalBlobStore) -> None:
    with store.writer(KEY) as temporary:
        assert temporary.parent == store.root / "inputs" / "task-1"
        assert temporary.suffix == ".mp3"  # encoders that go by suffix still work
        temporary.write_bytes(b"ID3 audio")
        assert not store.exists(KEY)  # not visible until the block ends
    assert store.path(KEY).read_bytes() == b"ID3 audio"
    assert files_under(store.root) == ["inputs", "inputs/task-1", "inputs/task-1/audio.mp3"]


def test_writer_replaces_an_existing_blob(store: LocalBlobStore) -> None:
    for content in (b"first", b"second"):
        with store.writer(KEY) as temporary:
            temporary.write_bytes(content)
    assert store.path(KEY).read_bytes() == b"second"


def test_an_error_in_the_writer_leaves_nothing(store: LocalBlobStore) -> None:
    with pytest.raises(RuntimeError, match="encoder crashed"), store.writer(KEY) as temporary:
        temporary.write_bytes(b"half a file")
        raise RuntimeError("encoder crashed")
    assert not store.exists(KEY)
    assert files_under(store.root) == []


def test_an_error_keeps_the_previous_blob(store: LocalBlobStore) -> None:
    with store.writer(KEY) as temporary:
        temporary.write_bytes(b"good")
    with pytest.raises(RuntimeError), store.writer(KEY) as temporary:
        temporary.write_bytes(b"bad")
        raise RuntimeError("encoder crashed")
    assert store.path(KEY).read_bytes() == b"good"
    assert files_under(store.root) == ["inputs", "inputs/task-1", "inputs/task-1/audio.mp3"]


def test_a_writer_that_writes_nothing_fails(store: LocalBlobStore) -> None:
    with pytest.raises(FileNotFoundError, match="nothing was written"), store.writer(KEY):
        pass
    assert files_under(store.root) == []


def test_put_file_moves_a_spooled_upload_in(store: LocalBlobStore) -> None:
    upload = store.spool_dir() / "upload-1"
    upload.write_bytes(b"uploaded audio")
    before = os.stat(upload).st_ino
    store.put_file(KEY, upload)
    assert not upload.exists()
    assert store.path(KEY).read_bytes() == b"uploaded audio"
    assert os.stat(store.path(KEY)).st_ino == before  # renamed, not copied


def test_put_file_copies_across_filesystems(store: LocalBlobStore) -> None:
    other = Path("/dev/shm")
    if not other.is_dir() or os.stat(other).st_dev == os.stat(store.root).st_dev:
        pytest.skip("needs a folder on another filesystem")
    source = other / f"stemsplit-test-{os.getpid()}.mp3"
    source.write_bytes(b"audio from elsewhere")
    try:
        store.put_file(KEY, source)
        assert store.path(KEY).read_bytes() == b"audio from elsewhere"
        assert not source.exists()
        assert files_under(store.root) == ["inputs", "inputs/task-1", "inputs/task-1/audio.mp3"]
    finally:
        source.unlink(missing_ok=True)


def test_put_file_of_a_missing_source_fails(store: LocalBlobStore, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        store.put_file(KEY, tmp_path / "nothing")
    assert not store.exists(KEY)


def test_path_exists_and_size(store: LocalBlobStore) -> None:
    assert not store.exists(KEY)
    with pytest.raises(BlobMissingError, match=re.escape(KEY)) as missing:
        store.path(KEY)
    assert missing.value.key == KEY
    with pytest.raises(BlobMissingError):
        store.size(KEY)
    with store.writer(KEY) as temporary:
        temporary.write_bytes(b"x" * 1234)
    assert store.exists(KEY)
    assert store.size(KEY) == 1234
    assert store.path(KEY) == store.root / "inputs" / "task-1" / "audio.mp3"
    assert not store.exists("inputs/task-1")  # a folder is not a blob
    with pytest.raises(BlobMissingError):
        store.path("inputs/task-1")


def put(store: LocalBlobStore, key: str) -> None:
    with store.writer(key) as temporary:
        temporary.write_bytes(key.encode())


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
    with store.writer("outputs/t1/vocals.wav") as temporary:
        temporary.write_bytes(b"being written")
        assert store.delete_prefix("outputs/") == 0
        assert temporary.read_bytes() == b"being written"
    assert upload.read_bytes() == b"arriving"
    assert store.exists("outputs/t1/vocals.wav")


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
        store.writer(key).__enter__()
    for lookup in (store.path, store.exists, store.size):
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
