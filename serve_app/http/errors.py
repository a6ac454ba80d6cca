"""Errors to HTTP answers, in one table: every refusal the API makes, and its status.

A route refuses by raising: its own refusals below (NotFound, FilesExpired, RateLimited,
Unavailable), the form's FormError (which carries its own status: 400, 408, 413 or 422),
the key check's AuthError, the task store's Idempotency-Key errors. A storage fault (the
disk full or read-only, the task database unwritable; serve_app/store/faults.py) is a 503:
with Retry-After on a POST, which stored nothing and may simply be sent again. Anything
else is a bug: 500, logged, and no internals in the answer. Every body is shaped like
MusicGPT's: `{"success": false, "error": "<what to fix>", "field": "<field>"}`.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI
from sqlalchemy.exc import DBAPIError
from starlette.requests import Request
from starlette.responses import JSONResponse

from serve_app.http.auth import AuthError
from serve_app.http.body import FormError
from serve_app.store.faults import storage_fault
from serve_app.store.queue import IdempotencyConflictError, IdempotencyKeyError

logger = logging.getLogger("ray.serve")

IDEMPOTENCY_KEY = "Idempotency-Key"


class ApiError(Exception):
    """A refusal the API words itself; STATUS gives its status. `retry_after_s`, when
    given, is sent as Retry-After: when the same request may succeed."""

    def __init__(
        self, message: str, *, field: str | None = None, retry_after_s: int | None = None
    ) -> None:
        super().__init__(message)
        self.field = field
        self.retry_after_s = retry_after_s


class NotFound(ApiError):
    """No such task or file, or one that another key owns."""


class FilesExpired(ApiError):
    """The task's files were deleted after the retention time."""


class RateLimited(ApiError):
    """The key made its limit of conversions within the window."""


class Unavailable(ApiError):
    """The service cannot take this request now: too busy, short of disk, a model the
    request needs has failed to load, or its storage fails."""


# FormError is the one refusal not listed: it carries its own status.
STATUS: dict[type[Exception], int] = {
    IdempotencyKeyError: 400,
    AuthError: 401,
    NotFound: 404,
    FilesExpired: 410,
    IdempotencyConflictError: 422,
    RateLimited: 429,
    Unavailable: 503,
}

# The field a refusal names when its exception does not carry one.
FIELD: dict[type[Exception], str] = {
    IdempotencyKeyError: IDEMPOTENCY_KEY,
    IdempotencyConflictError: IDEMPOTENCY_KEY,
}


def error(
    status: int, message: str, *, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    """An error body shaped like MusicGPT's."""
    return JSONResponse(
        {"success": False, "error": message, **extra}, status_code=status, headers=headers
    )


def answer(failure: Exception) -> JSONResponse:
    """The answer to a refusal: a FormError, or an exception the table lists."""
    if isinstance(failure, FormError):
        return error(failure.status, str(failure), field=failure.field)
    kind = next(kind for kind in type(failure).__mro__ if kind in STATUS)
    extra: dict[str, str] = {}
    headers: dict[str, str] | None = None
    if isinstance(failure, ApiError):
        if failure.field is not None:
            extra["field"] = failure.field
        if failure.retry_after_s is not None:
            headers = {"Retry-After": str(failure.retry_after_s)}
    elif kind in FIELD:
        extra["field"] = FIELD[kind]
    return error(STATUS[kind], str(failure), headers=headers, **extra)


def cannot_store(reason: str, retry_after_s: int) -> Unavailable:
    """The refusal of new work the service cannot store now (nothing was kept)."""
    return Unavailable(
        f"the service cannot store new work right now: {reason}; try again later",
        retry_after_s=retry_after_s,
    )


def storage_answer(request: Request, failure: Exception, retry_after_s: int) -> JSONResponse:
    """503 for a storage fault, saying which; 500 for any other failure. A POST creates
    work and stored none of it, so it may be sent again after `retry_after_s`."""
    reason = storage_fault(failure)
    if reason is None:
        return internal_answer(failure)
    if request.method == "POST":
        logger.warning("storage fault while creating a task: %s (%s)", reason, failure)
        return answer(cannot_store(reason, retry_after_s))
    logger.warning("storage fault in the ingress: %s (%s)", reason, failure)
    return answer(Unavailable(f"the service cannot use its storage right now: {reason}"))


def internal_answer(failure: Exception) -> JSONResponse:
    """500 for a bug: logged with its traceback, and nothing of it in the answer."""
    logger.exception("unhandled error in the ingress", exc_info=failure)
    return error(500, "internal error; it has been logged")


def install(api: FastAPI, *, retry_after_s: int) -> None:
    """Answer every failure a route of `api` raises from the table; `retry_after_s` is
    the Retry-After of a POST that met a storage fault."""

    async def refused(_request: Request, failure: Exception) -> JSONResponse:
        return answer(failure)

    async def storage_failed(request: Request, failure: Exception) -> JSONResponse:
        return storage_answer(request, failure, retry_after_s)

    async def failed(_request: Request, failure: Exception) -> JSONResponse:
        return internal_answer(failure)

    refusals: tuple[type[Exception], ...] = (FormError, *STATUS)
    for kind in refusals:
        api.add_exception_handler(kind, refused)
    # Any driver error: PostgreSQL reports a read-only database as an InternalError.
    for kind in (OSError, DBAPIError):
        api.add_exception_handler(kind, storage_failed)
    api.add_exception_handler(Exception, failed)
