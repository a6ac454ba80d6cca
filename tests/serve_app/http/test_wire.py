"""Estimates and the conversion object."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from serve_app.http.wire import StemLinks, conversion, credits, eta_s, file_url
from serve_app.store.records import Status, TaskRecord, TaskSpec


def test_credits_scale_with_minutes() -> None:
    assert credits(90.0, 2.0) == 3.0
    assert credits(None, 2.0) == 0.0


def test_eta_grows_with_passes_and_queue() -> None:
    alone = eta_s(60.0, 1, seconds_per_audio_second=0.5, queued_ahead=0, parallel_tasks=2)
    assert alone == 30.0
    assert eta_s(60.0, 2, seconds_per_audio_second=0.5, queued_ahead=0, parallel_tasks=2) == 60.0
    assert eta_s(60.0, 1, seconds_per_audio_second=0.5, queued_ahead=4, parallel_tasks=2) == 90.0
    assert eta_s(None, 1, seconds_per_audio_second=0.5, queued_ahead=0, parallel_tasks=2) == -1


def test_conversion_object_has_musicgpt_fields_and_stem_urls() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    record = TaskRecord(
        task_id="t 1",
        conversion_id="c1",
        spec=TaskSpec(owner="alice", stems=("vocals",), output_format="flac"),
        status=Status.COMPLETED,
        status_msg="",
        progress=1.0,
        results={"vocals": "stems/t 1/vocals.flac"},
        duration_s=12.0,
        conversion_cost=0.2,
        created_at=now,
        updated_at=now,
        started_at=now,
        finished_at=now,
        claims=1,
        lease_owner=None,
        lease_until=None,
    )
    body = conversion(record, StemLinks("http://host:8000/"))
    assert body["conversion_type"] == "EXTRACTION"
    assert body["status"] == "COMPLETED"
    assert body["stems"] == {"vocals": "http://host:8000/api/public/v1/files/t%201/vocals.flac"}
    assert body["stems"]["vocals"] == file_url("http://host:8000", "t 1", "vocals.flac")
    for name in ("task_id", "conversion_id", "status_msg", "audio_url", "progress", "createdAt"):
        assert name in body
    assert body["warnings"] == []  # always present
    warned = conversion(
        replace(record, warnings=("the input ended early",)), StemLinks("http://host")
    )
    assert warned["warnings"] == ["the input ended early"]
