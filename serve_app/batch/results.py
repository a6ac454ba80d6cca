"""What a batch reports: one `TrackResult` row per input track, and the run's `Summary`."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

DONE = "done"
FAILED = "failed"
SKIPPED = "skipped"


@dataclass(frozen=True)
class TrackResult:
    """One row of results.jsonl: the track, its status (done, failed or skipped: done by an
    earlier run), why it failed, its duration, the seconds spent on it, its stem files
    (names relative to its folder)."""

    input: str
    track_id: str
    status: str
    reason: str = ""
    duration_s: float = 0.0
    seconds: float = 0.0
    stems: tuple[str, ...] = ()

    def to_json(self) -> str:
        """The row as one JSON line (no newline)."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> TrackResult:
        """The row `to_json` wrote."""
        fields: dict[str, Any] = json.loads(text)
        return cls(**{**fields, "stems": tuple(fields.get("stems", ()))})


@dataclass(frozen=True)
class Summary:
    """Counts and speed of one run. Throughput is audio seconds separated per wall-clock
    second of the run; the real-time factor is the workers' seconds per audio second."""

    done: int
    failed: int
    skipped: int
    audio_s: float
    worker_s: float
    wall_s: float

    @classmethod
    def of(cls, rows: Iterable[TrackResult], wall_s: float) -> Summary:
        """The summary of this run's `rows`, which took `wall_s`."""
        rows = list(rows)
        processed = [row for row in rows if row.status == DONE]
        return cls(
            done=len(processed),
            failed=sum(row.status == FAILED for row in rows),
            skipped=sum(row.status == SKIPPED for row in rows),
            audio_s=sum(row.duration_s for row in processed),
            worker_s=sum(row.seconds for row in processed),
            wall_s=wall_s,
        )

    def line(self) -> str:
        """The one-line summary printed at the end of a run."""
        throughput = self.audio_s / self.wall_s if self.wall_s > 0 else 0.0
        rtf = self.worker_s / self.audio_s if self.audio_s > 0 else 0.0
        return (
            f"done {self.done}, failed {self.failed}, skipped {self.skipped}; "
            f"audio {self.audio_s / 3600:.3f} h ({self.audio_s:.1f} s) in {self.wall_s:.1f} s: "
            f"{throughput:.2f} audio s per s, real-time factor {rtf:.3f}"
        )
