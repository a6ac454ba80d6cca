"""A blob store that, like an object store, keeps no file a caller may read by path: it
stores through a local one but answers `local_path` with None, so that what is tested
against it must get by with keys alone."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from serve_app.store.blobs import BlobEntry, LocalBlobStore


class KeysOnlyBlobStore:
    """A `BlobStore` without local paths, over a local store at `root`."""

    def __init__(self, root: Path) -> None:
        self.local = LocalBlobStore(root)
        self.root = self.local.root

    def put_file(self, key: str, source: Path) -> None:
        self.local.put_file(key, source)

    def put_stream(self, key: str, source: BinaryIO) -> None:
        self.local.put_stream(key, source)

    def open(self, key: str) -> BinaryIO:
        return self.local.open(key)

    def exists(self, key: str) -> bool:
        return self.local.exists(key)

    def size(self, key: str) -> int:
        return self.local.size(key)

    def list_prefix(self, prefix: str) -> Iterator[BlobEntry]:
        return self.local.list_prefix(prefix)

    def delete_prefix(self, prefix: str) -> int:
        return self.local.delete_prefix(prefix)

    def local_path(self, key: str) -> Path | None:
        self.local.size(key)  # BlobMissingError if absent, as from any store
        return None

    def spool_dir(self) -> Path:
        return self.local.spool_dir()

    def presigned_url(self, key: str, expiry_s: int, *, filename: str | None = None) -> str | None:
        return self.local.presigned_url(key, expiry_s, filename=filename)
