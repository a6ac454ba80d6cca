"""The cells of benchmarks/gpu.py: one setting's figures, the run's time budget and what
it predicts, which settings to compile, the table, and issue 17's GPU targets.

Plain bookkeeping without torch, apart from the measuring in benchmarks/gpu.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

DEFAULT_BUDGET_S = 480.0
# What the budget sets aside for torch.compile's first pass at a batch size and precision.
COMPILE_ALLOWANCE_S = 90.0


@dataclass
class Cell:
    """One measured (or skipped) setting of the grid."""

    tracks: int
    batch_size: int
    precision: str
    compiled: bool
    status: str = "pending"  # done, skipped or failed
    wall_s: float | None = None
    audio_s: float | None = None
    realtime: float | None = None  # audio seconds per wall second
    vs_apply_model: float | None = None  # throughput over apply_model's
    tflops: float | None = None
    peak_fraction: float | None = None
    passes: int | None = None
    windows_per_pass: float | None = None
    sdr_vs_fp32_db: float | None = None  # first track, worst stem
    error: str | None = None


class Budget:
    """The run's time budget: what is left, and whether a predicted cell still fits."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self.clock = clock
        self.start = clock()

    def elapsed(self) -> float:
        """Seconds since the run began."""
        return self.clock() - self.start

    def allows(self, predicted_s: float) -> bool:
        """Whether a step predicted to take `predicted_s` ends inside the budget."""
        return self.elapsed() + predicted_s <= self.seconds


def predicted_s(cell: Cell, earlier: Sequence[Cell], audio_s: float, apply_rate: float) -> float:
    """Seconds `cell` should take: its audio over the slowest throughput among the earlier
    finished cells of its precision and compilation with the most tracks (throughput grows
    with tracks), or over apply_model's throughput before any."""
    alike = [
        other
        for other in earlier
        if other.realtime is not None
        and (other.precision, other.compiled) == (cell.precision, cell.compiled)
    ]
    most = max((other.tracks for other in alike if other.tracks <= cell.tracks), default=None)
    rates = [other.realtime for other in alike if other.tracks == most and other.realtime]
    return audio_s / min(rates, default=apply_rate)


def compiled_cells(eager: Sequence[Cell], tracks: Sequence[int]) -> list[Cell]:
    """The compiled settings worth their compile time: per precision and track count, the
    batch size that was fastest uncompiled; 16 tracks (issue 17's target) first."""
    order = sorted(tracks, key=lambda count: count != 16)
    chosen: list[Cell] = []
    for precision in dict.fromkeys(cell.precision for cell in eager):
        for count in order:
            best = fastest([c for c in eager if (c.precision, c.tracks) == (precision, count)])
            if best is not None:
                chosen.append(Cell(count, best.batch_size, precision, compiled=True))
    return chosen


def fastest(cells: Sequence[Cell]) -> Cell | None:
    """The finished cell with the highest throughput, if any."""
    done = [cell for cell in cells if cell.status == "done" and cell.realtime is not None]
    return max(done, key=lambda cell: cell.realtime or 0.0, default=None)


def figure(value: float | None, digits: int) -> str:
    """A table figure to `digits` decimals, or `-` where there is none."""
    return "-" if value is None else f"{value:.{digits}f}"


def table(cells: Sequence[Cell]) -> str:
    """The grid as aligned text."""
    header = "tracks batch precision compiled status    wall_s  x_realtime  vs_apply  TFLOP/s"
    lines = [header + "  win/pass  SDR_dB"]
    for cell in cells:
        lines.append(
            f"{cell.tracks:>6} {cell.batch_size:>5} {cell.precision:>9} "
            f"{'yes' if cell.compiled else 'no':>8} {cell.status:<8} "
            f"{figure(cell.wall_s, 2):>7} {figure(cell.realtime, 1):>11} "
            f"{figure(cell.vs_apply_model, 2):>9} {figure(cell.tflops, 1):>8} "
            f"{figure(cell.windows_per_pass, 1):>9} {figure(cell.sdr_vs_fp32_db, 1):>7}"
        )
    return "\n".join(lines)


def targets(cells: Sequence[Cell], long: dict[str, Any] | None) -> dict[str, Any]:
    """Issue 17's GPU targets against the figures: 16 concurrent tracks at least 8 times
    apply_model's throughput and 1,000 times real time; one long track at least twice as
    fast as apply_model. None where the run has no figure for it."""
    sixteen = fastest([cell for cell in cells if cell.tracks == 16])
    speedups = [
        figures["speedup"]
        for figures in (long or {}).values()
        if isinstance(figures, dict) and "speedup" in figures
    ]
    return {
        "sixteen_tracks_vs_apply_model": None if sixteen is None else sixteen.vs_apply_model,
        "sixteen_tracks_realtime": None if sixteen is None else sixteen.realtime,
        "long_track_speedup": max(speedups, default=None),
        "wanted": {
            "sixteen_tracks_vs_apply_model": 8,
            "sixteen_tracks_realtime": 1000,
            "long_track_speedup": 2,
        },
    }
