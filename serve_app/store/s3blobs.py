"""A blob store in an S3 bucket (or any S3-compatible object store), for deployments whose
replicas share no disk. Keys map to objects under one bucket and key prefix, checked as the
local store checks them. Data moves in parts of `part_bytes`, never a whole object in
memory: uploads are one multipart upload completed only once the source is read to its end
(aborted on any failure, so a blob appears whole or not at all), and reads fetch ranges.
Credentials come from the environment as for any AWS client, never from the settings."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any, BinaryIO, cast
from urllib.parse import quote, urlsplit

import s3fs
from botocore.exceptions import ClientError

from serve_app.store.blobs import BlobEntry, BlobKeyError, BlobMissingError, check_key, check_prefix

PART_BYTES = 8 * 1024**2  # S3 takes parts of 5 MiB to 5 GiB; only the last may be smaller
MIN_PART_BYTES = 5 * 1024**2
DELETE_BATCH = 1000  # the most keys one DeleteObjects request takes
PRESIGN_MAX_S = 7 * 24 * 3600  # the longest a SigV4 presigned URL may last


@dataclass(frozen=True)
class S3Location:
    """A bucket and a key prefix ("" or ending in "/") that every blob key is put after."""

    bucket: str
    prefix: str

    @classmethod
    def parse(cls, url: str) -> S3Location:
        """From "s3://bucket" or "s3://bucket/prefix"; ValueError for anything else."""
        parts = urlsplit(url)
        if parts.scheme != "s3":
            raise ValueError(f"blob URL {url!r} is not s3://bucket/prefix")
        if not parts.netloc or parts.query or parts.fragment or "@" in parts.netloc:
            raise ValueError(
                f"blob URL {url!r} needs a bucket and nothing else: s3://bucket/prefix"
            )
        bucket = parts.netloc
        if not (3 <= len(bucket) <= 63) or not all(c.isalnum() or c in ".-" for c in bucket):
            raise ValueError(f"blob URL {url!r}: {bucket!r} is not a valid bucket name")
        prefix = parts.path.strip("/")
        if prefix:
            try:
                check_key(prefix)
            except BlobKeyError as error:
                raise ValueError(f"blob URL {url!r}: the prefix is refused: {error}") from error
        return cls(bucket, f"{prefix}/" if prefix else "")


class S3BlobStore:
    """Blobs as objects under `url` ("s3://bucket/prefix"); uploads spool in `spool_dir`,
    a local folder, since `local_path` is None for every blob here."""

    def __init__(
        self,
        url: str,
        *,
        spool_dir: Path,
        endpoint_url: str | None = None,
        region: str | None = None,
        part_bytes: int = PART_BYTES,
    ) -> None:
        if part_bytes < MIN_PART_BYTES:
            raise ValueError(f"part_bytes must be at least {MIN_PART_BYTES} (S3's minimum)")
        self.location = S3Location.parse(url)
        self.part_bytes = part_bytes
        self._spool = spool_dir.resolve()
        # No listing cache: other replicas write and delete, so every look asks the bucket.
        self.fs = s3fs.S3FileSystem(
            endpoint_url=endpoint_url,
            client_kwargs={"region_name": region} if region else {},
            use_listings_cache=False,
            skip_instance_cache=True,
            # SigV4 for presigned URLs too (botocore may presign with SigV2, which regions
            # opened since 2014 refuse and which has no 7-day limit).
            config_kwargs={"signature_version": "s3v4"},
        )

    def put_file(self, key: str, source: Path) -> None:
        """Upload the local file `source` under `key`, then remove it."""
        check_key(key)
        with source.open("rb") as file:
            self.put_stream(key, file)
        source.unlink()

    def put_stream(self, key: str, source: BinaryIO) -> None:
        """Upload what `source` reads, to its end, under `key`: one PutObject when it fits in
        a part, else a multipart upload that is aborted if anything fails."""
        name = self._name(key)
        part = _read_part(source, self.part_bytes)
        if len(part) < self.part_bytes:
            self._call("put_object", key, Key=name, Body=bytes(part))
            return
        upload = self._call("create_multipart_upload", key, Key=name)["UploadId"]
        try:
            parts: list[dict[str, Any]] = []
            while part:
                answer = self._call(
                    "upload_part",
                    key,
                    Key=name,
                    UploadId=upload,
                    PartNumber=len(parts) + 1,
                    Body=bytes(part),
                )
                parts.append({"PartNumber": len(parts) + 1, "ETag": answer["ETag"]})
                part = _read_part(source, self.part_bytes)
            self._call(
                "complete_multipart_upload",
                key,
                Key=name,
                UploadId=upload,
                MultipartUpload={"Parts": parts},
            )
        except BaseException:
            # The original failure is the one to report; parts an abort failed to drop are
            # for the bucket's lifecycle rule on incomplete uploads.
            with suppress(Exception):
                self._call("abort_multipart_upload", key, Key=name, UploadId=upload)
            raise

    def open(self, key: str) -> BinaryIO:
        """The object, read in ranges of `part_bytes`; BlobMissingError if absent."""
        size = self.size(key)
        opened = self.fs.open(
            f"{self.location.bucket}/{self._name(key)}",
            "rb",
            block_size=self.part_bytes,
            cache_type="readahead",
            size=size,
        )
        return cast(BinaryIO, opened)

    def exists(self, key: str) -> bool:
        """Whether an object is stored under `key` (a prefix of others is not one)."""
        try:
            self.size(key)
        except BlobMissingError:
            return False
        return True

    def size(self, key: str) -> int:
        """The object's size in bytes; BlobMissingError if absent."""
        head = self._call("head_object", key, Key=self._name(key))
        return int(head["ContentLength"])

    def list_prefix(self, prefix: str) -> Iterator[BlobEntry]:
        """Every object whose key starts with `prefix`, in key order (S3 lists in order)."""
        check_prefix(prefix)
        start = len(self.location.prefix)
        token: dict[str, str] = {}
        while True:
            page = self._call(
                "list_objects_v2", prefix, Prefix=self.location.prefix + prefix, **token
            )
            for item in page.get("Contents", []):
                modified = item["LastModified"].astimezone(UTC)
                yield BlobEntry(item["Key"][start:], int(item["Size"]), modified)
            if not page.get("IsTruncated"):
                return
            token = {"ContinuationToken": page["NextContinuationToken"]}

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object whose key starts with `prefix`; how many were deleted."""
        if prefix.strip("/") == "":
            raise BlobKeyError(prefix, "it would delete the whole store")
        keys = [entry.key for entry in self.list_prefix(prefix)]
        for first in range(0, len(keys), DELETE_BATCH):
            batch = keys[first : first + DELETE_BATCH]
            objects = [{"Key": self._name(key)} for key in batch]
            answer = self._call(
                "delete_objects", prefix, Delete={"Objects": objects, "Quiet": True}
            )
            if answer.get("Errors"):
                failed = answer["Errors"][0]
                raise OSError(f"could not delete blob {failed['Key']!r}: {failed['Message']}")
        return len(keys)

    def local_path(self, key: str) -> Path | None:
        """None: objects have no local file; BlobMissingError if absent."""
        self.size(key)
        return None

    def spool_dir(self) -> Path:
        """The local folder given for uploads in progress."""
        self._spool.mkdir(parents=True, exist_ok=True)
        return self._spool

    def presigned_url(self, key: str, expiry_s: int, *, filename: str | None = None) -> str:
        """A GET URL signed for `expiry_s` seconds (1 s to 7 days) that downloads the object
        with no credentials, as `filename` where given (S3 answers with that
        Content-Disposition). Signing is local: no request, so existence is not checked."""
        check_presign_expiry(expiry_s)
        params = {}
        if filename is not None:
            params["ResponseContentDisposition"] = content_disposition(filename)
        path = f"{self.location.bucket}/{self._name(key)}"
        return cast(str, self.fs.url(path, expires=expiry_s, **params))

    def _name(self, key: str) -> str:
        """The object key of a blob key, after checking it."""
        check_key(key)
        return self.location.prefix + key

    def _call(self, method: str, key: str, **kwargs: Any) -> dict[str, Any]:
        """One S3 request on the store's bucket; BlobMissingError where it names no object."""
        try:
            answer = self.fs.call_s3(method, Bucket=self.location.bucket, **kwargs)
        except (FileNotFoundError, ClientError) as error:
            # s3fs raises FileNotFoundError for a missing bucket too, which is no missing blob.
            if _error_code(error) in ("404", "NoSuchKey"):
                raise BlobMissingError(key) from error
            raise
        return cast(dict[str, Any], answer)


def check_presign_expiry(expiry_s: int) -> None:
    """Refuse (ValueError) an expiry S3 does not sign: under 1 s or over 7 days."""
    if not 1 <= expiry_s <= PRESIGN_MAX_S:
        raise ValueError(
            f"a presigned URL lasts 1 to {PRESIGN_MAX_S} s (7 days, S3's limit), not {expiry_s}"
        )


def content_disposition(filename: str) -> str:
    """An attachment named `filename`, as Starlette's FileResponse writes it: the plain form
    for a name that needs no escaping, else RFC 5987's."""
    escaped = quote(filename)
    if escaped == filename:
        return f'attachment; filename="{filename}"'
    return f"attachment; filename*=utf-8''{escaped}"


def _error_code(error: BaseException) -> str | None:
    """S3's error code behind `error` (s3fs keeps botocore's error as the cause)."""
    cause: BaseException | None = error
    while cause is not None and not isinstance(cause, ClientError):
        cause = cause.__cause__
    if cause is None:
        return None
    return cast(str | None, cause.response.get("Error", {}).get("Code"))


def _read_part(source: BinaryIO, size: int) -> bytearray:
    """Up to `size` bytes from `source`, fewer only at its end (streams may return less)."""
    part = bytearray()
    while len(part) < size:
        block = source.read(min(size - len(part), 1024**2))
        if not block:
            break
        part += block
    return part
