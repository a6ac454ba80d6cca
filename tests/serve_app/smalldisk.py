"""Small real filesystems for the storage-fault tests: a tmpfs of a few MiB mounted on a
folder, filled to the last byte or made immutable on demand, and mended again. Mounting
needs root, which the tests have in CI; elsewhere they are skipped with that reason."""

from __future__ import annotations

import errno
import os
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import pytest

FILLER = ".filler"


class SmallDisk:
    """A tmpfs of `size_bytes` mounted on `folder`."""

    def __init__(self, folder: Path, size_bytes: int) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(folder)],
            check=True,
            capture_output=True,
        )
        self.frozen: list[Path] = []

    def free_bytes(self) -> int:
        """Free space, as a writer sees it."""
        stats = os.statvfs(self.folder)
        return stats.f_bavail * stats.f_frsize

    def fill(self, *, leave_bytes: int = 0) -> None:
        """Write a filler file until only `leave_bytes` are free (0: until a write fails
        with ENOSPC)."""
        with (self.folder / FILLER).open("ab", buffering=0) as filler:
            for block in (1 << 20, 1 << 12):
                while self.free_bytes() - block >= leave_bytes:
                    try:
                        filler.write(bytes(block))
                    except OSError as error:
                        assert error.errno == errno.ENOSPC, error
                        break
        assert self.free_bytes() <= max(leave_bytes, 0) + (1 << 12)

    def empty(self) -> None:
        """Give the filler's space back."""
        (self.folder / FILLER).unlink(missing_ok=True)

    def freeze(self) -> None:
        """Make the folder and every file in it immutable: nothing may open them for
        writing, not even root (a running process's open files still write)."""
        self.frozen = [*self.folder.iterdir(), self.folder]
        subprocess.run(["chattr", "+i", *map(str, self.frozen)], check=True)

    def thaw(self) -> None:
        """Undo `freeze`."""
        if self.frozen:
            subprocess.run(["chattr", "-i", *map(str, self.frozen)], check=True)
            self.frozen = []

    def unmount(self) -> None:
        """Mend and unmount (lazily: a process may still hold a file open)."""
        self.thaw()
        subprocess.run(["umount", "-l", str(self.folder)], check=True)


def empty_write_ahead_log(database: Path) -> None:
    """Checkpoint a SQLite database's write-ahead log and cut it to nothing, so that its
    next write needs new space (a log that already has room would take it)."""
    with closing(sqlite3.connect(database)) as connection:
        busy, _, _ = connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    assert busy == 0, "a reader or writer kept the checkpoint from finishing"


def mount_small_disk(folder: Path, size_bytes: int) -> SmallDisk:
    """A SmallDisk; the test is skipped where mounting is not allowed, except in CI."""
    try:
        return SmallDisk(folder, size_bytes)
    except (subprocess.CalledProcessError, FileNotFoundError) as error:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"mounting a tmpfs needs root (mount said: {error})")


@pytest.fixture
def small_disk() -> Iterator[Callable[[Path, int], SmallDisk]]:
    """Mounts small disks for one test and unmounts them after it."""
    mounted: list[SmallDisk] = []

    def mount(folder: Path, size_bytes: int) -> SmallDisk:
        mounted.append(mount_small_disk(folder, size_bytes))
        return mounted[-1]

    yield mount
    for disk in mounted:
        disk.unmount()
