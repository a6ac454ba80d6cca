"""Tests of what only the S3 blob store has, on moto: uploads of several parts that appear
whole or not at all and leave no parts behind, the URL's key prefix that keeps stores in one
bucket apart, which URLs it takes, and memory that stays bounded for a large blob."""

from __future__ import annotations

import hashlib
import io
import tracemalloc
from pathlib import Path
from typing import BinaryIO

import pytest
import s3fs

from serve_app.store.blobs import BlobMissingError
from serve_app.store.s3blobs import MIN_PART_BYTES, S3BlobStore, S3Location

KEY = "outputs/task-1/vocals.wav"
MiB = 1024**2


class Generated(io.RawIOBase):
    """`size` bytes made block by block as they are read (never held whole), then EOF;
    `fail_after` bytes in, it fails as a dropped connection does."""

    def __init__(self, size: int, fail_after: int | None = None) -> None:
        self.size = size
        self.fail_after = fail_after
        self.position = 0
        self.digest = hashlib.sha256()

    def stream(self) -> BinaryIO:
        """As `put_stream` takes it."""
        return io.BufferedReader(self)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self.fail_after is not None and self.position >= self.fail_after:
            raise ConnectionResetError("the upload stopped")
        count = min(len(buffer), self.size - self.position, 256 * 1024)
        block = self.position.to_bytes(8, "little") * (count // 8 + 1)
        buffer[:count] = block[:count]
        self.digest.update(block[:count])
        self.position += count
        return count


def uploads_left(admin: s3fs.S3FileSystem, store: S3BlobStore) -> list[object]:
    answer = admin.call_s3("list_multipart_uploads", Bucket=store.location.bucket)
    return list(answer.get("Uploads", []))


def small_parts(s3_url: str, s3_endpoint: str, tmp_path: Path) -> S3BlobStore:
    return S3BlobStore(
        s3_url, spool_dir=tmp_path / "spool", endpoint_url=s3_endpoint, part_bytes=MIN_PART_BYTES
    )


def test_a_blob_of_several_parts_reads_back_whole(
    s3_url: str, s3_endpoint: str, tmp_path: Path, s3_admin: s3fs.S3FileSystem
) -> None:
    store = small_parts(s3_url, s3_endpoint, tmp_path)
    source = Generated(2 * MIN_PART_BYTES + 12345)  # three parts, the last a short one
    store.put_stream(KEY, source.stream())
    assert store.size(KEY) == source.size
    read = hashlib.sha256()
    with store.open(KEY) as blob:
        while block := blob.read(MiB):
            read.update(block)
    assert read.digest() == source.digest.digest()
    assert uploads_left(s3_admin, store) == []


def test_a_multipart_upload_that_fails_leaves_nothing(
    s3_url: str, s3_endpoint: str, tmp_path: Path, s3_admin: s3fs.S3FileSystem
) -> None:
    store = small_parts(s3_url, s3_endpoint, tmp_path)
    store.put_stream(KEY, io.BytesIO(b"the previous stem"))
    failing = Generated(4 * MIN_PART_BYTES, fail_after=2 * MIN_PART_BYTES + 1)
    with pytest.raises(ConnectionResetError):  # after two parts are uploaded
        store.put_stream(KEY, failing.stream())
    with store.open(KEY) as blob:
        assert blob.read() == b"the previous stem"
    assert uploads_left(s3_admin, store) == []
    failing = Generated(9 * MiB, fail_after=6 * MiB)  # in the second part
    with pytest.raises(ConnectionResetError):
        store.put_stream("outputs/task-2/vocals.wav", failing.stream())
    assert not store.exists("outputs/task-2/vocals.wav")
    assert uploads_left(s3_admin, store) == []


def test_the_urls_prefix_keeps_stores_in_one_bucket_apart(
    s3_url: str, s3_endpoint: str, tmp_path: Path, s3_admin: s3fs.S3FileSystem
) -> None:
    bucket = s3_url.removeprefix("s3://").partition("/")[0]
    one = S3BlobStore(f"s3://{bucket}/one/", spool_dir=tmp_path, endpoint_url=s3_endpoint)
    two = S3BlobStore(f"s3://{bucket}/two", spool_dir=tmp_path, endpoint_url=s3_endpoint)
    whole = S3BlobStore(f"s3://{bucket}", spool_dir=tmp_path, endpoint_url=s3_endpoint)
    one.put_stream(KEY, io.BytesIO(b"one"))
    assert not two.exists(KEY)
    assert [entry.key for entry in two.list_prefix("")] == []
    assert two.delete_prefix("outputs/") == 0
    assert [entry.key for entry in whole.list_prefix("")] == [f"one/{KEY}"]
    assert s3_admin.cat_file(f"{bucket}/one/{KEY}") == b"one"
    with pytest.raises(BlobMissingError):
        whole.size(KEY)


def test_a_missing_bucket_is_no_missing_blob(s3_url: str, s3_endpoint: str, tmp_path: Path) -> None:
    store = S3BlobStore("s3://no-such-bucket/x", spool_dir=tmp_path, endpoint_url=s3_endpoint)
    with pytest.raises(FileNotFoundError, match="bucket does not exist"):
        list(store.list_prefix(""))
    with pytest.raises(FileNotFoundError, match="bucket does not exist"):
        store.put_stream(KEY, io.BytesIO(b"audio"))


@pytest.mark.parametrize(
    ("url", "bucket", "prefix"),
    [
        ("s3://stems", "stems", ""),
        ("s3://stems/", "stems", ""),
        ("s3://my.stems-1/prod/blobs", "my.stems-1", "prod/blobs/"),
        ("s3://stems/prod/", "stems", "prod/"),
    ],
)
def test_s3_urls_name_a_bucket_and_a_prefix(url: str, bucket: str, prefix: str) -> None:
    assert S3Location.parse(url) == S3Location(bucket, prefix)


@pytest.mark.parametrize(
    "url",
    [
        "stems/prefix",
        "/data/blobs",
        "https://stems.example/prefix",
        "s3://",
        "s3:///prefix",
        "s3://ab",
        "s3://Stems_Bucket/x",
        "s3://user@stems/x",
        "s3://stems/x?versionId=1",
        "s3://stems/../x",
        "s3://stems/a//b",
        "s3://stems/.spool",
    ],
)
def test_other_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match="blob URL"):
        S3Location.parse(url)


def test_a_large_blob_moves_in_bounded_memory(s3_store: S3BlobStore) -> None:
    size = 200 * MiB  # peaks are about 40 MB with 8 MiB parts
    source = Generated(size)
    tracemalloc.start()
    try:
        s3_store.put_stream(KEY, source.stream())
        _, put_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        read = hashlib.sha256()
        with s3_store.open(KEY) as blob:
            while block := blob.read(MiB):
                read.update(block)
        _, read_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert read.digest() == source.digest.digest()
    assert s3_store.size(KEY) == size
    assert put_peak < 64 * MiB, put_peak
    assert read_peak < 64 * MiB, read_peak
