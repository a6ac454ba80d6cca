"""Tests of serve_app.http.errors: the one table from refusals to statuses and bodies."""

from __future__ import annotations

import json

import pytest
from starlette.responses import JSONResponse

from serve_app.http.auth import AuthError
from serve_app.http.errors import (
    STATUS,
    FilesExpired,
    NotFound,
    RateLimited,
    Unavailable,
    answer,
)
from serve_app.http.form import FormError
from serve_app.store.queue import IdempotencyConflictError, IdempotencyKeyError


def body(response: JSONResponse) -> dict[str, object]:
    return dict(json.loads(bytes(response.body)))


@pytest.mark.parametrize(
    ("failure", "status", "field"),
    [
        (IdempotencyKeyError(""), 400, "Idempotency-Key"),
        (AuthError(), 401, None),
        (NotFound("no such task"), 404, None),
        (FilesExpired("deleted"), 410, None),
        (IdempotencyConflictError("k", "t"), 422, "Idempotency-Key"),
        (RateLimited("too many", retry_after_s=3), 429, None),
        (Unavailable("busy", retry_after_s=3), 503, None),
    ],
)
def test_each_refusal_has_its_status_and_a_musicgpt_body(
    failure: Exception, status: int, field: str | None
) -> None:
    response = answer(failure)
    assert response.status_code == status == STATUS[type(failure)]
    expected: dict[str, object] = {"success": False, "error": str(failure)}
    if field is not None:
        expected["field"] = field
    assert body(response) == expected


def test_retry_after_is_sent_only_when_a_retry_may_succeed() -> None:
    assert answer(Unavailable("busy", retry_after_s=7)).headers["Retry-After"] == "7"
    assert "Retry-After" not in answer(Unavailable("storage")).headers


def test_a_form_error_keeps_its_own_status_and_always_names_its_field() -> None:
    too_big = answer(FormError("too large", status=413))
    assert too_big.status_code == 413
    assert body(too_big) == {"success": False, "error": "too large", "field": None}
    assert body(answer(FormError("bad", field="stems")))["field"] == "stems"
