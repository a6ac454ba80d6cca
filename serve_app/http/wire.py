"""The conversion object of MusicGPT's API, as `byId` answers it and webhooks send it,
with the webhook deliveries byId reports, and the estimates (`eta`, `credit_estimate`)
given when a task is created.

Estimates: credits = `credits_per_minute` x the audio's duration in minutes, to two
decimals (at submission from the duration the file's header declares; the final
`conversion_cost` from the decoded duration). The eta is the duration x seconds of work
per audio second x model passes in the plan, times (1 + tasks queued ahead / tasks the
pipeline runs at once). Seconds of work per audio second come from this deployment's
last finished tasks (`TaskStatistics.recent_speed`), or from the configured prior until it
has finished any. Without a duration (an `audio_url` not yet fetched) the eta is -1 and
the credit estimate 0.

Stem URLs point at the API's file endpoint, or, where presigning is configured, are S3 GET
URLs signed when the object is rendered, so each byId read gets a fresh expiry; a webhook's
are signed when its body is built, at the task's completion.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from serve_app.store.blobs import BlobStore
from serve_app.store.layout import stem_file
from serve_app.store.records import Delivery, TaskRecord


def file_url(public_url: str, task_id: str, name: str) -> str:
    """Where a client downloads a task's file."""
    return f"{public_url.rstrip('/')}/api/public/v1/files/{quote(task_id)}/{quote(name)}"


@dataclass(frozen=True)
class StemLinks:
    """Where clients download stems: the API's file endpoint under `public_url`, or, with
    `presign_expiry_s` set, URLs that `blobs` signs for that long where it can."""

    public_url: str
    blobs: BlobStore | None = None
    presign_expiry_s: int | None = None

    def url(self, record: TaskRecord, stem: str) -> str:
        """The URL of one of the task's stems; the API's once retention deleted the files,
        which answers 410 with the reason where a signed URL would meet a bare 404."""
        name = stem_file(stem, record.spec.output_format)
        if (
            self.blobs is not None
            and self.presign_expiry_s is not None
            and record.files_expired_at is None
        ):
            signed = self.blobs.presigned_url(
                record.results[stem], self.presign_expiry_s, filename=name
            )
            if signed is not None:
                return signed
        return file_url(self.public_url, record.task_id, name)


def conversion(record: TaskRecord, links: StemLinks) -> dict[str, Any]:
    """The MusicGPT conversion object of a task."""
    stems = {stem: links.url(record, stem) for stem in record.results}
    return {
        "task_id": record.task_id,
        "conversion_id": record.conversion_id,
        "conversion_type": "EXTRACTION",
        "status": record.status.value,
        "status_msg": record.status_msg,
        "warnings": list(record.warnings),
        "stems": stems,
        "requested_stems": list(record.spec.stems),
        "preprocessing_options": list(record.spec.preprocessing),
        "output_format": record.spec.output_format,
        "audio_url": record.spec.audio_url or "",
        "progress": round(record.progress, 4),
        "duration_s": record.duration_s,
        "conversion_cost": record.conversion_cost,
        "createdAt": record.created_at.isoformat(),
        "updatedAt": record.updated_at.isoformat(),
    }


def webhook_report(delivery: Delivery) -> dict[str, Any]:
    """A webhook delivery and its attempts, as byId shows them (never the payload)."""
    return {
        "webhook_id": delivery.delivery_id,
        "state": delivery.state.value,
        "attempts": [
            {
                "at": attempt.at.isoformat(),
                "outcome": attempt.outcome,
                "status_code": attempt.status_code,
                "error": attempt.error,
            }
            for attempt in delivery.attempts
        ],
    }


def credits(duration_s: float | None, credits_per_minute: float) -> float:
    """What a task of this duration costs."""
    if duration_s is None:
        return 0.0
    return round(credits_per_minute * duration_s / 60.0, 2)


def eta_s(
    duration_s: float | None,
    passes: int,
    *,
    seconds_per_audio_second: float,
    queued_ahead: int,
    parallel_tasks: int,
) -> float:
    """Seconds until a task of this duration is likely done; -1 when unknown."""
    if duration_s is None:
        return -1.0
    one = duration_s * seconds_per_audio_second * max(passes, 1)
    return round(one * (1 + queued_ahead / max(parallel_tasks, 1)), 1)
