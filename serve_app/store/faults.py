"""Storage faults: the data folder's disk full or read-only, the task database unwritable.

`storage_fault` says in a sentence why a failure happened when it is one of these, and
None otherwise; `space_short` says so before any work starts, when the data folder has
less free space than the configured reserve. The ingress answers both with 503 and
Retry-After (nothing was stored, so the caller may simply retry), the pipeline fails an
in-flight task with the sentence and takes no new task while space is short. Nothing here
retries or waits: the fault passes when space returns, and the next request or claim
succeeds. `reconnect_after` tells the database engine which SQLite errors leave a
connection unusable (SQLite opens a file it may not write read-only, for good), so that
the pool replaces it instead of failing forever after the cause is mended.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
from pathlib import Path

from sqlalchemy.exc import OperationalError

DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
READ_ONLY = frozenset({errno.EROFS})
NOT_PERMITTED = frozenset({errno.EACCES, errno.EPERM})

# SQLite's primary result codes (the low byte of an extended code).
SQLITE_PERM = 3
SQLITE_BUSY = 5
SQLITE_LOCKED = 6
SQLITE_READONLY = 8
SQLITE_IOERR = 10
SQLITE_FULL = 13
SQLITE_CANTOPEN = 14


def storage_fault(error: BaseException) -> str | None:
    """Why the service could not write, in words for its caller, when `error` means
    that its disk is full or read-only or its database cannot be written; else None."""
    if isinstance(error, OperationalError):
        return _database_fault(error)
    if isinstance(error, OSError) and error.errno is not None:
        if error.errno in DISK_FULL:
            return "the service's disk is full"
        if error.errno in READ_ONLY:
            return "the service's data folder is read-only"
        if error.errno in NOT_PERMITTED:
            return "the service may not write to its data folder"
    return None


def _database_fault(error: OperationalError) -> str | None:
    code = sqlite_code(error.orig)
    if code == SQLITE_FULL:
        return "the task database's disk is full"
    if code in (SQLITE_READONLY, SQLITE_PERM, SQLITE_CANTOPEN):
        return "the task database cannot be written"
    if code == SQLITE_IOERR:
        return "the task database had a disk error"
    if code in (SQLITE_BUSY, SQLITE_LOCKED):
        return "the task database is busy"
    if error.connection_invalidated:
        return "the task database is unavailable"
    # Anything else (a missing table, a syntax error) is a bug, not a storage fault.
    return None


def log_loop_failure(logger: logging.Logger, loop: str, error: Exception) -> None:
    """Log a failed pass of a background loop: one line for a storage fault, which
    repeats every pass until it is mended; a traceback for anything else."""
    fault = storage_fault(error)
    if fault is None:
        logger.exception("%s failed", loop, exc_info=error)
    else:
        logger.warning("%s failed: %s", loop, fault)


def sqlite_code(error: BaseException | None) -> int | None:
    """SQLite's primary result code of a driver error, or None for other errors."""
    if isinstance(error, sqlite3.Error):
        code = getattr(error, "sqlite_errorcode", None)
        return None if code is None else int(code) & 0xFF
    return None


def reconnect_after(error: BaseException | None) -> bool:
    """Whether a SQLite connection that raised `error` must be replaced: one opened while
    its file could not be written stays read-only even after the file can be again."""
    return sqlite_code(error) in (SQLITE_READONLY, SQLITE_CANTOPEN, SQLITE_IOERR)


def space_short(folder: Path, reserve_bytes: int) -> str | None:
    """Why `folder` cannot take new work, when its filesystem has less than
    `reserve_bytes` free for this user (or cannot be read at all); else None."""
    try:
        stats = os.statvfs(folder)
    except OSError as error:
        return storage_fault(error) or f"the service cannot read its data folder ({error})"
    free = stats.f_bavail * stats.f_frsize
    if free < reserve_bytes:
        return f"the service's disk is nearly full ({free // 2**20} MiB free)"
    return None
