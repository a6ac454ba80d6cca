"""One batch run: list the input, skip the tracks already done, separate the rest on a Ray
Data actor pool, and write one row per track to results.jsonl as the rows arrive.

Only the tracks' paths and ids travel through the dataset; decoding, separation and
encoding happen inside the actors (a song's float stems are far too big for the object
store). The pool autoscales between `Workers.min_size` and `max_size` and starts at
`min_size` actors (`initial_size`), so a GPU pool has its first actors before Ray's
autoscaler is asked for more (Ray's GPU actor pools may otherwise not scale up from zero
on an autoscaling cluster). Each actor separates `Workers.tracks` tracks at once and asks
for `Workers.gpus` GPUs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import ray
import ray.data

from serve_app.batch.inputs import InputTrack
from serve_app.batch.outputs import BatchOutput
from serve_app.batch.results import SKIPPED, Summary, TrackResult
from serve_app.batch.worker import SeparationSpec, TrackSeparator


@dataclass(frozen=True)
class Workers:
    """The actor pool: its bounds, the tracks each actor separates at once, and the GPUs
    each actor asks Ray for (0: it runs on the CPU; a fraction shares a GPU)."""

    min_size: int = 1
    max_size: int = 2
    tracks: int = 1
    gpus: float = 0.0

    def __post_init__(self) -> None:
        """Refuse an empty or inverted pool, no tracks, negative GPUs."""
        if not 1 <= self.min_size <= self.max_size:
            raise ValueError(
                f"workers must be 1 <= MIN <= MAX, got {self.min_size}:{self.max_size}"
            )
        if self.tracks < 1:
            raise ValueError(f"tracks per worker must be at least 1, got {self.tracks}")
        if self.gpus < 0:
            raise ValueError(f"GPUs per worker must not be negative, got {self.gpus:g}")

    @classmethod
    def parse(cls, text: str) -> Workers:
        """`MIN:MAX`, or `N` for a fixed pool of N."""
        low, _, high = text.partition(":")
        try:
            return cls(int(low), int(high or low))
        except ValueError as exc:
            raise ValueError(f"workers must be MIN:MAX or N, got {text!r}: {exc}") from None


def run_batch(
    tracks: Sequence[InputTrack],
    output: BatchOutput,
    spec: SeparationSpec,
    *,
    workers: Workers = Workers(),
    limit: int | None = None,
    on_row: Callable[[TrackResult], None] | None = None,
) -> Summary:
    """Separate every one of `tracks` not yet done in `output` (at most `limit` of them)
    on Ray; return the run's summary. Ray is started only when there is a track to
    separate (see `connected`)."""
    started = time.monotonic()
    done = output.done()
    todo = [track for track in tracks if track.track_id not in done]
    if limit is not None:
        todo = todo[:limit]
    rows: list[TrackResult] = []
    output.discard_leftovers()  # a killed run's staged stems, before any actor writes
    with output.open_results() as results:

        def record(row: TrackResult) -> None:
            rows.append(row)
            results.write(row.to_json() + "\n")
            results.flush()
            if on_row is not None:
                on_row(row)

        for track in tracks:
            if track.track_id in done:
                marker = done[track.track_id]
                record(
                    TrackResult(
                        input=track.source,
                        track_id=track.track_id,
                        status=SKIPPED,
                        duration_s=marker.duration_s,
                        stems=marker.stems,
                    )
                )
        if todo:
            with connected():
                for row in _separate(todo, output, spec, workers):
                    record(row)
    output.tidy()
    return Summary.of(rows, time.monotonic() - started)


@contextmanager
def connected() -> Iterator[None]:
    """Ray for the block: the one this process is connected to, or else a Ray of its own
    ("local", rather than joining the latest one started on this machine), or the cluster
    RAY_ADDRESS names, shut down after the block."""
    if ray.is_initialized():
        yield
        return
    ray.init(address=os.environ.get("RAY_ADDRESS") or "local")
    try:
        yield
    finally:
        ray.shutdown()


def _separate(
    tracks: list[InputTrack], output: BatchOutput, spec: SeparationSpec, workers: Workers
) -> Iterator[TrackResult]:
    """The result rows of separating `tracks` on an actor pool, as they finish."""
    if not tracks:
        return
    dataset = ray.data.from_items(
        [{"source": track.source, "track_id": track.track_id} for track in tracks],
        override_num_blocks=len(tracks),
    ).map_batches(
        TrackSeparator,
        fn_constructor_args=(spec, output.location, workers.tracks),
        batch_size=1,
        num_gpus=workers.gpus or None,
        compute=ray.data.ActorPoolStrategy(
            min_size=workers.min_size,
            max_size=workers.max_size,
            initial_size=workers.min_size,
            # Each actor runs `tracks` calls at once on threads and is sent no more, so
            # a track waits in the pool's queue, not behind a busy actor. One track at
            # a time runs in the actor's main thread, where torch computes fastest.
            max_concurrent_calls_per_actor=workers.tracks,
            max_tasks_in_flight_per_actor=workers.tracks,
            enable_true_multi_threading=workers.tracks > 1,
        ),
    )
    for row in dataset.iter_rows():
        yield TrackResult.from_json(str(row["row"]))
