"""Storage faults: the data folder's disk full or read-only, the task database unwritable.

`storage_fault` says in a sentence why a failure happened when it is one of these, and
None otherwise; `space_short` says so before any work starts, when the data folder has
less free space than the configured reserve. The ingress answers both with 503 and
Retry-After (nothing was stored, so the caller may simply retry), the pipeline fails an
in-flight task with the sentence and takes no new task while space is short. Nothing here
retries or waits: the fault passes when space returns, and the next request or claim
succeeds. `reconnect_after` tells the database engine which errors leave a connection
unusable (SQLite opens a file it may not write read-only, for good; a PostgreSQL session
keeps the read-only default it started with; a terminated backend is gone), so that the
pool replaces it instead of failing forever after the cause is mended. PostgreSQL's errors
are told apart by their SQLSTATE, SQLite's by their result code.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
from pathlib import Path

from sqlalchemy.exc import DBAPIError, OperationalError

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

# PostgreSQL's SQLSTATEs (Appendix A of its manual); a class is the first two characters.
PG_DISK_FULL = "53100"
PG_TOO_MANY_CONNECTIONS = "53300"
PG_INSUFFICIENT_RESOURCES = "53"
PG_READ_ONLY_TRANSACTION = "25006"
PG_CONNECTION_EXCEPTION = "08"
PG_SERVER_GONE = frozenset({"57P01", "57P02", "57P03"})  # admin/crash shutdown, starting up
PG_BUSY = frozenset({"55P03", "40P01"})  # lock_not_available (lock_timeout), deadlock
# The server's words (in its default English) for refusing a connection with 53300.
_NO_CONNECTION_SLOTS = ("too many connections", "remaining connection slots are reserved")


def storage_fault(error: BaseException) -> str | None:
    """Why the service could not write, in words for its caller, when `error` means
    that its disk is full or read-only or its database cannot be written; else None."""
    if isinstance(error, DBAPIError):
        return _database_fault(error)
    if isinstance(error, OSError) and error.errno is not None:
        if error.errno in DISK_FULL:
            return "the service's disk is full"
        if error.errno in READ_ONLY:
            return "the service's data folder is read-only"
        if error.errno in NOT_PERMITTED:
            return "the service may not write to its data folder"
    return None


def _database_fault(error: DBAPIError) -> str | None:
    if is_postgres_error(error.orig):
        return _postgres_fault(error)
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


def _postgres_fault(error: DBAPIError) -> str | None:
    state = postgres_state(error.orig)
    if state == PG_DISK_FULL:
        return "the task database's disk is full"
    if state == PG_TOO_MANY_CONNECTIONS or _refused_for_connections(error, state):
        return "the task database has too many connections"
    if state is not None and state.startswith(PG_INSUFFICIENT_RESOURCES):
        return "the task database is out of resources"
    if state == PG_READ_ONLY_TRANSACTION:
        return "the task database cannot be written"
    if state in PG_BUSY:
        return "the task database is busy"
    # The driver's own failures to reach the server (refused, reset, timed out) carry no
    # SQLSTATE.
    unreached = isinstance(error, OperationalError) and state is None
    if error.connection_invalidated or unreached or _server_gone(state):
        return "the task database is unavailable"
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


def is_postgres_error(error: BaseException | None) -> bool:
    """Whether `error` comes from psycopg, PostgreSQL's driver (every psycopg error has a
    `sqlstate`, None for the driver's own)."""
    return type(error).__module__.startswith("psycopg") and hasattr(error, "sqlstate")


def postgres_state(error: BaseException | None) -> str | None:
    """The SQLSTATE of a psycopg error, or None (another driver's, or the driver's own)."""
    state = getattr(error, "sqlstate", None) if is_postgres_error(error) else None
    return state if isinstance(state, str) else None


def _refused_for_connections(error: DBAPIError, state: str | None) -> bool:
    # libpq keeps no SQLSTATE for a connection the server refused, only its message.
    message = str(error.orig)
    return state is None and any(words in message for words in _NO_CONNECTION_SLOTS)


def _server_gone(state: str | None) -> bool:
    return state is not None and (
        state.startswith(PG_CONNECTION_EXCEPTION) or state in PG_SERVER_GONE
    )


def reconnect_after(error: BaseException | None) -> bool:
    """Whether a connection that raised `error` must be replaced. A SQLite connection opened
    while its file could not be written stays read-only even after the file can be again; a
    PostgreSQL session keeps the read-only default of its start, and one whose server went
    away or refused it is of no further use."""
    if is_postgres_error(error):
        state = postgres_state(error)
        return state == PG_READ_ONLY_TRANSACTION or _server_gone(state)
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
