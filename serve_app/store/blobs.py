"""The blob store: where uploaded audio and extracted stems live, behind a small interface
(`BlobStore`) that speaks keys only, so that a local folder now and an object store later
are interchangeable. Keys are relative POSIX paths such as "inputs/<upload>/audio.mp3"
(serve_app/store/layout.py says which); a key that could leave the store's root is refused.
A caller sees a local path only where it asks for one (`local_path`, `spool_dir`). Blobs
appear whole or not at all: a local write goes to a temporary file in the blob's own folder
and is moved into place only once complete."""

from __future__ import annotations

import errno
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, Protocol

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


@dataclass(frozen=True)
class BlobEntry:
    """One stored blob, as a listing names it."""

    key: str
    size: int
    modified: datetime  # when it was last written, in UTC


class BlobStore(Protocol):
    """What the service needs from a place to keep audio files."""

    def put_file(self, key: str, source: Path) -> None:
        """Move a finished local file in under `key`; `source` is gone afterwards."""
        ...

    def put_stream(self, key: str, source: BinaryIO) -> None:
        """Store what `source` reads, to its end, under `key`; nothing appears if it fails."""
        ...

    def open(self, key: str) -> BinaryIO:
        """The blob, open for reading; BlobMissingError if absent."""
        ...

    def exists(self, key: str) -> bool:
        """Whether a blob is stored under `key`."""
        ...

    def size(self, key: str) -> int:
        """The blob's size in bytes; BlobMissingError if absent."""
        ...

    def list_prefix(self, prefix: str) -> Iterator[BlobEntry]:
        """Every blob whose key starts with `prefix` (a string prefix), in key order."""
        ...

    def delete_prefix(self, prefix: str) -> int:
        """Delete every blob whose key starts with `prefix`; how many were deleted."""
        ...

    def local_path(self, key: str) -> Path | None:
        """A readable local file of the blob where the backend keeps one, else None;
        BlobMissingError if absent."""
        ...

    def spool_dir(self) -> Path:
        """A local folder for uploads in progress, from which `put_file` moves cheaply."""
        ...

    def presigned_url(self, key: str, expiry_s: int, *, filename: str | None = None) -> str | None:
        """A URL that downloads the blob without credentials for `expiry_s` seconds, saved
        as `filename` where given; None where the backend has no such URLs (clients then
        download through the API)."""
        ...


class LocalBlobStore:
    """Blobs as files under one root folder; a key's segments are its folders and name."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)

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
            with self._writing(key) as temporary:
                shutil.copyfile(source, temporary)
            source.unlink()

    def put_stream(self, key: str, source: BinaryIO) -> None:
        """Copy `source` to its end into a temporary file, then move it in under `key`."""
        with self._writing(key) as temporary, temporary.open("wb") as sink:
            shutil.copyfileobj(source, sink)

    def open(self, key: str) -> BinaryIO:
        """The blob's file, open for reading; BlobMissingError if absent."""
        try:
            return self._file(key).open("rb")
        except FileNotFoundError as error:  # deleted between the look and the open
            raise BlobMissingError(key) from error

    def exists(self, key: str) -> bool:
        """Whether a blob is stored under `key`."""
        return self._locate(key).is_file()

    def size(self, key: str) -> int:
        """The blob's size in bytes; BlobMissingError if absent."""
        return self._file(key).stat().st_size

    def list_prefix(self, prefix: str) -> Iterator[BlobEntry]:
        """Every blob whose key starts with `prefix`, in key order; the store's own files
        (the spool, writers' temporary files) are not blobs and are never listed."""
        _, entries = self._prefix_entries(prefix)
        files = {
            path.relative_to(self.root).as_posix(): path
            for entry in entries
            for path in _files_in(entry)
        }
        for key in sorted(files):
            try:
                stat = files[key].stat()
            except FileNotFoundError:  # deleted since the look
                continue
            yield BlobEntry(key, stat.st_size, datetime.fromtimestamp(stat.st_mtime, UTC))

    def delete_prefix(self, prefix: str) -> int:
        """Delete every blob whose key starts with `prefix` (string prefix, as object stores
        do: "outputs/ab" covers "outputs/abc/x"); folders left empty go too."""
        if prefix.strip("/") == "":
            raise BlobKeyError(prefix, "it would delete the whole store")
        folder, entries = self._prefix_entries(prefix)
        deleted = sum(_delete_tree(entry) for entry in entries)
        self._prune(folder)
        return deleted

    def local_path(self, key: str) -> Path:
        """The blob's file; BlobMissingError if absent."""
        return self._file(key)

    def spool_dir(self) -> Path:
        """root/.spool, on the store's filesystem so that `put_file` is a rename."""
        spool = self.root / SPOOL
        spool.mkdir(exist_ok=True)
        return spool

    def presigned_url(self, key: str, expiry_s: int, *, filename: str | None = None) -> str | None:
        """None: a folder has no URLs of its own; files are served by the API."""
        check_key(key)
        return None

    @contextmanager
    def _writing(self, key: str) -> Iterator[Path]:
        """A temporary path beside the blob, moved under `key` when the block exits cleanly;
        on an error it is removed and nothing appears."""
        target = self._locate(key)
        target.parent.mkdir(parents=True, exist_ok=True)
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

    def _file(self, key: str) -> Path:
        """The blob's file; BlobMissingError if absent."""
        target = self._locate(key)
        if not target.is_file():
            raise BlobMissingError(key)
        return target

    def _prefix_entries(self, prefix: str) -> tuple[Path, list[Path]]:
        """The folder a prefix ends in and its entries (files or folders) whose names
        start as the prefix's last segment does; none of the store's own."""
        folder_key, name_start = check_prefix(prefix)
        folder = self.root.joinpath(*folder_key.split("/")) if folder_key else self.root
        if not folder.is_dir():
            return folder, []
        entries = [
            entry
            for entry in folder.iterdir()
            if not entry.name.startswith(".") and entry.name.startswith(name_start)
        ]
        return folder, entries

    def _locate(self, key: str) -> Path:
        """The file for `key`, refusing any key that could name something outside the root."""
        check_key(key)
        return self.root.joinpath(*key.split("/"))

    def _prune(self, folder: Path) -> None:
        """Remove `folder` and its parents while they are empty, stopping at the root."""
        while folder != self.root and folder.is_relative_to(self.root):
            try:
                folder.rmdir()
            except OSError:
                return
            folder = folder.parent


def check_key(key: str) -> None:
    """Refuse (BlobKeyError) a key that is not a plain relative path of allowed segments;
    every backend checks keys alike, so a key valid in one store is valid in all."""
    if not key:
        raise BlobKeyError(key, "it is empty")
    if key.startswith("/"):
        raise BlobKeyError(key, "it is absolute; keys are relative to the store")
    for segment in key.split("/"):
        _check_segment(key, segment)


def check_prefix(prefix: str) -> tuple[str, str]:
    """Refuse (BlobKeyError) a prefix whose complete segments are not a valid key; the
    prefix split into those segments ("" for none) and the start of the last one."""
    if prefix.startswith("/"):
        raise BlobKeyError(prefix, "it is absolute; keys are relative to the store")
    folder_key, _, name_start = prefix.rpartition("/")
    if folder_key:
        check_key(folder_key)
    if name_start:
        _check_segment(prefix, name_start)
    return folder_key, name_start


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


def _files_in(entry: Path) -> list[Path]:
    """The blobs in `entry` (a file or a folder); writers' temporary files left out."""
    if entry.is_symlink() or entry.is_file():
        return [entry]
    return [
        Path(folder, name)
        for folder, _, names in os.walk(entry)
        for name in names
        if not name.startswith(".")
    ]


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


def local_file(blobs: BlobStore, key: str, folder: Path) -> Path:
    """A local file of the blob for tools that read files (the decoder): the store's own
    where it keeps one, else a copy in `folder` named as the key ends. BlobMissingError if
    absent."""
    path = blobs.local_path(key)
    if path is not None:
        return path
    copy = folder / key.rpartition("/")[2]
    with blobs.open(key) as blob, copy.open("wb") as sink:
        shutil.copyfileobj(blob, sink)
    return copy
