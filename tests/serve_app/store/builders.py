"""What the store tests build their rows from: a task's spec and the instants of a test's
clock, counted in seconds from one fixed moment."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from serve_app.store.records import TaskSpec

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


def spec(*, webhook_url: str | None = None, owner: str = "local") -> TaskSpec:
    """A task for two stems of a 12.5 s input, cleaned with Denoise, written as FLAC."""
    return TaskSpec(
        owner=owner,
        stems=("vocals", "drums"),
        preprocessing=("Denoise",),
        output_format="flac",
        input_key="inputs/x/audio.mp3",
        webhook_url=webhook_url,
        duration_s=12.5,
        eta_s=30.0,
        credit_estimate=1.5,
    )


def at(seconds: float) -> datetime:
    """The instant `seconds` after T0."""
    return T0 + timedelta(seconds=seconds)
