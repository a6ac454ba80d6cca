"""The service's Prometheus metrics, through Ray Serve's metrics API (`ray.serve.metrics`),
which Ray exports on each node's metrics port. Each process creates its metrics once,
on first use, because they can only exist inside a running Ray worker."""

from __future__ import annotations

from functools import cache

from ray.serve.metrics import Counter, Gauge, Histogram

BATCH_BOUNDARIES = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]
SECONDS_BOUNDARIES = [1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 3600.0]


@cache
def tasks_finished() -> Counter:
    """Tasks that reached a status, by status."""
    return Counter("stemsplit_tasks", description="Tasks by status reached.", tag_keys=("status",))


@cache
def task_seconds() -> Histogram:
    """Wall-clock seconds from claim to a final state."""
    return Histogram(
        "stemsplit_task_seconds",
        description="Seconds a pipeline replica spent on a task.",
        boundaries=SECONDS_BOUNDARIES,
    )


@cache
def audio_seconds() -> Counter:
    """Seconds of input audio separated."""
    return Counter("stemsplit_audio_seconds", description="Seconds of audio separated.")


@cache
def batch_size() -> Histogram:
    """Segments per Separator forward pass."""
    return Histogram(
        "stemsplit_segment_batch_size",
        description="Segments per Separator batch.",
        boundaries=BATCH_BOUNDARIES,
        tag_keys=("model",),
    )


@cache
def batch_tasks() -> Histogram:
    """Distinct tasks per Separator forward pass."""
    return Histogram(
        "stemsplit_batch_tasks",
        description="Distinct tasks whose segments shared a Separator batch.",
        boundaries=BATCH_BOUNDARIES,
        tag_keys=("model",),
    )


@cache
def queue_length() -> Gauge:
    """Tasks waiting to be claimed."""
    return Gauge("stemsplit_queue_length", description="Tasks IN_QUEUE.")


@cache
def webhook_attempts() -> Counter:
    """Webhook attempts, by outcome (delivered, retry, failed)."""
    return Counter(
        "stemsplit_webhook_attempts",
        description="Webhook delivery attempts by outcome.",
        tag_keys=("outcome",),
    )
