"""One batch run: list the input, skip the tracks already done, separate the rest on a Ray
Data actor pool, and write one row per track to results.jsonl as the rows arrive.

Only the tracks' paths and ids travel through the dataset; decoding, separation and
encoding happen inside the actors (a song's float stems are far too big for the object
store). The pool autoscales between `Workers.min_size` and `max_size` and starts at
`min_size` actors (`initial_size`), so a GPU pool has its first actors before Ray's
autoscaler is asked for more.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import ray
import ray.data

from serve_app.batch.inputs import InputTrack
from serve_app.batch.outputs import BatchOutput
from serve_app.batch.results import SKIPPED, Summary, TrackResult
from serve_app.batch.worker import SeparationSpec, TrackSeparator


@dataclass(frozen=True)
class Workers:
    """The actor pool's bounds."""

    min_size: int = 1
    max_size: int = 2

    def __post_init__(self) -> None:
        """Refuse an empty or inverted pool."""
        if not 1 <= self.min_size <= self.max_size:
            raise ValueError(
                f"workers must be 1 <= MIN <= MAX, got {self.min_size}:{self.max_size}"
            )

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
    """Separate every one of `tracks` not yet done in `output` (at most `limit` of them),
    on the Ray cluster this process is connected to; return the run's summary."""
    started = time.monotonic()
    done = output.done()
    todo = [track for track in tracks if track.track_id not in done]
    if limit is not None:
        todo = todo[:limit]
    rows: list[TrackResult] = []
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
        for row in _separate(todo, output, spec, workers):
            record(row)
    output.tidy()
    return Summary.of(rows, time.monotonic() - started)


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
        fn_constructor_args=(spec, output.location),
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(
            min_size=workers.min_size,
            max_size=workers.max_size,
            initial_size=workers.min_size,
        ),
    )
    for row in dataset.iter_rows():
        yield TrackResult.from_json(str(row["row"]))
