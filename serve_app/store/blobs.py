"""The blob store: where uploaded audio and extracted stems live, behind a small interface
(`BlobStore`) so that a local folder now and an object store later are interchangeable. Keys
are relative POSIX paths such as "inputs/<task_id>/audio.mp3"; a key that could leave the
store's root is refused. Blobs appear whole or not at all: writes go to a temporary file in
the blob's own folder and are moved into place only once complete."""

from __future__ import annotations

import errno
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from pathlib import Path
from typing import Protocol

SPOOL = ".spool"


class BlobKeyError(ValueError):
    """A key that is not a plain relative path inside the store."""

    def __init__(self, key: str, reason: str) -> None:
        self.key = key
        super().__init__(f"invalid blob key {key!r}: {reason}")


class BlobMissingError(LookupError):
    """No blob is stored under a key."""

    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(f"no blob under key {key!r}: it was never written or has been deleted")


class BlobStore(Protocol):
    """What the service needs from a place to keep audio files."""

    def writer(self, key: str) -> AbstractContextManager[Path]:
        """A path to write to; the blob appears under `key` only if the block succeeds."""
        ...

    def put_file(self, key: str, source: Path) -> None:
        """Move a finished local file in under `key`."""
        ...

    def path(self, key: str) -> Path:
        """A readable local path of the blob; BlobMissingError if absent."""
        ...

    def exists(self, key: str) -> bool:
        """Whether a blob is stored under `key`."""
        ...

    def size(self, key: str) -> int:
        """The blob's size in bytes; BlobMissingError if absent."""
        ...

    def delete_prefix(self, prefix: str) -> int:
        """Delete every blob whose key starts with `prefix`; how many were deleted."""
        ...

    def spool_dir(self) -> Path:
        """A folder for uploads in progress, from which `put_file` moves cheaply."""
        ...


class LocalBlobStore:
    """Blobs as files under one root folder."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    @contextmanager
    def writer(self, key: str) -> Iterator[Path]:
        """A temporary path beside the blob, moved under `key` when the block exits cleanly;
        on an error it is removed and nothing appears."""
        target = self._locate(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        # The key's own name ends the temporary one so that writers that pick a format by
        # suffix (".mp3", ".flac") still do.
        temporary = target.with_name(f".{uuid.uuid4().hex}.{target.name}")
        try:
            yield temporary
            if not temporary.is_file():
                raise FileNotFoundError(f"nothing was written for blob key {key!r}")
            os.replace(temporary, target)
        except BaseException:
            temporary.unlink(missing_ok=True)
            self._prune(target.parent)
            raise

    def put_file(self, key: str, source: Path) -> None:
        """Move `source` in under `key`: a rename on the same filesystem, else a copy that
        appears whole, after which `source` is removed."""
        target = self._locate(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(source, target)
        except OSError as error:
            if error.errno != errno.EXDEV:
                raise
            with self.writer(key) as temporary:
                shutil.copyfile(source, temporary)
            source.unlink()

    def path(self, key: str) -> Path:
        """The blob's file; BlobMissingError if absent."""
        target = self._locate(key)
        if not target.is_file():
            raise BlobMissingError(key)
        return target

    def exists(self, key: str) -> bool:
        """Whether a blob is stored under `key`."""
        return self._locate(key).is_file()

    def size(self, key: str) -> int:
        """The blob's size in bytes; BlobMissingError if absent."""
        return self.path(key).stat().st_size

    def delete_prefix(self, prefix: str) -> int:
        """Delete every blob whose key starts with `prefix` (string prefix, as object stores
        do: "outputs/ab" covers "outputs/abc/x"); folders left empty go too."""
        if prefix.strip("/") == "":
            raise BlobKeyError(prefix, "it would delete the whole store")
        if prefix.startswith("/"):
            raise BlobKeyError(prefix, "it is absolute; keys are relative to the store")
        folder_key, _, name_start = prefix.rpartition("/")
        folder = self._locate(folder_key) if folder_key else self.root
        if name_start:
            _check_segment(prefix, name_start)
        if not folder.is_dir():
            return 0
        deleted = 0
        for entry in folder.iterdir():
            if entry.name.startswith(".") or not entry.name.startswith(name_start):
                continue
            deleted += _delete_tree(entry)
        self._prune(folder)
        return deleted

    def spool_dir(self) -> Path:
        """root/.spool, on the store's filesystem so that `put_file` is a rename."""
        spool = self.root / SPOOL
        spool.mkdir(exist_ok=True)
        return spool

    def _locate(self, key: str) -> Path:
        """The file for `key`, refusing any key that could name something outside the root."""
        if not key:
            raise BlobKeyError(key, "it is empty")
        if key.startswith("/"):
            raise BlobKeyError(key, "it is absolute; keys are relative to the store")
        for segment in key.split("/"):
            _check_segment(key, segment)
        return self.root.joinpath(*key.split("/"))

    def _prune(self, folder: Path) -> None:
        """Remove `folder` and its parents while they are empty, stopping at the root."""
        while folder != self.root and folder.is_relative_to(self.root):
            try:
                folder.rmdir()
            except OSError:
                return
            folder = folder.parent


def _check_segment(key: str, segment: str) -> None:
    if not segment:
        raise BlobKeyError(key, "it has an empty segment")
    if "\0" in segment:
        raise BlobKeyError(key, "it contains a NUL character")
    if "\\" in segment:
        raise BlobKeyError(key, "it contains a backslash; use '/' between segments")
    if segment in (".", ".."):
        raise BlobKeyError(key, f"it contains a {segment!r} segment")
    # Names starting with a dot are the store's own: temporary files and the spool.
    if segment.startswith("."):
        raise BlobKeyError(key, "a segment starts with '.', which the store reserves")


def _delete_tree(entry: Path) -> int:
    """Delete the blobs in `entry` (a file or a folder); temporary files of writers still
    at work are left alone."""
    if entry.is_symlink() or entry.is_file():
        entry.unlink()
        return 1
    deleted = 0
    for folder, subfolders, names in os.walk(entry, topdown=False):
        for name in names:
            if not name.startswith("."):
                Path(folder, name).unlink()
                deleted += 1
        for name in subfolders:
            # A folder still holding a writer's temporary file stays.
            with suppress(OSError):
                Path(folder, name).rmdir()
    with suppress(OSError):
        entry.rmdir()
    return deleted
