"""One track through the segment engine: cut, run windows, overlap-add, stream blocks out.

This computes what `demucs.apply.apply_model(model, mix, split=True, overlap=...,
shifts=...)` computes, with three differences that the service needs:

- the unit of work is a segment, not a track: the model's tiling turns a track into
  `Cut`s and gives each cut's model input and weight, and `separate_windows` runs any
  list of windows, from any number of tracks, through the model in one batch;
- the output streams: `OverlapAdd` hands back finished frames as soon as no later
  segment can touch them, so memory does not grow with track length;
- shifts are drawn from a seeded generator, so results are repeatable.

We write this ourselves because demucs's `apply_model` recurses per track and holds the
whole output, once per stem, per shift. The model is any family's `SeparationModel`;
what differs between families' inference (cross-fades, padding, shifts, normalising)
comes from its geometry's `Tiling`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from models.engine.batching import SeparationModel, separate_windows
from models.engine.geometry import Geometry
from models.engine.overlap import OverlapAdd
from models.stages import MODEL, NO_CLOCK, OVERLAP_ADD, StageClock

BlockSink = Callable[[int, torch.Tensor], None]
# Runs model windows for the named sources; returns one (sources, channels, length)
# tensor per window. `separate_windows` on a local model, or a remote Separator.
WindowRunner = Callable[[Sequence[torch.Tensor], Sequence[str]], list[torch.Tensor]]


def separate_track(
    model: SeparationModel,
    mix: torch.Tensor,
    on_block: BlockSink,
    *,
    sources: Sequence[str] | None = None,
    batch_size: int = 1,
    overlap: float = 0.25,
    shifts: int = 0,
    seed: int = 0,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    on_progress: Callable[[int, int], None] | None = None,
) -> None:
    """Separate one track (channels, frames) in the model's domain with a local model;
    see `stream_track`."""

    def run(windows: Sequence[torch.Tensor], names: Sequence[str]) -> list[torch.Tensor]:
        return separate_windows(model, windows, sources=names, device=device, precision=precision)

    stream_track(
        model.geometry,
        run,
        mix,
        on_block,
        sources=sources,
        batch_size=batch_size,
        overlap=overlap,
        shifts=shifts,
        seed=seed,
        on_progress=on_progress,
    )


def stream_track(
    geometry: Geometry,
    run: WindowRunner,
    mix: torch.Tensor,
    on_block: BlockSink,
    *,
    sources: Sequence[str] | None = None,
    batch_size: int = 1,
    overlap: float = 0.25,
    shifts: int = 0,
    seed: int = 0,
    on_progress: Callable[[int, int], None] | None = None,
    clock: StageClock = NO_CLOCK,
) -> None:
    """Separate one track (channels, frames) in the model's domain, `batch_size` windows
    at a time through `run`.

    When the tiling says so, the mix is normalised as demucs's separator does and the
    stems are scaled back.
    Calls `on_block(start, block)` with consecutive blocks of shape
    (len(sources), channels, n) that together cover the track exactly once.
    `clock` counts the calls of `run` as MODEL and the rest as OVERLAP_ADD, but for the
    stages that `on_block` and `on_progress` open themselves.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    names = tuple(geometry.sources) if sources is None else tuple(sources)
    frames = mix.shape[-1]
    run = clock.timed(MODEL, run)
    with clock.stage(OVERLAP_ADD):
        tiling = geometry.tiling
        tiles = tiling.tile(frames, geometry, overlap=overlap, shifts=shifts, seed=seed)
        cuts = tiles.cuts
        mean, scale = normalisation(mix) if tiling.normalise else (0.0, 1.0)
        accumulator = OverlapAdd(len(names), mix.shape[0], frames)
        for first in range(0, len(cuts), batch_size):
            batch = cuts[first : first + batch_size]
            windows = [tiles.window(mix, cut, mean, scale) for cut in batch]
            outputs = run(windows, names)
            for cut, output in zip(batch, outputs, strict=True):
                accumulator.add(cut, tiles.trim(output, cut) * tiles.weight(cut))
            following = first + batch_size
            upto = cuts[following].start if following < len(cuts) else frames
            if upto > accumulator.done:
                start = accumulator.done
                on_block(start, accumulator.release(upto) * scale + mean)
            if on_progress is not None:
                on_progress(min(following, len(cuts)), len(cuts))


def collect_track(
    model: SeparationModel,
    mix: torch.Tensor,
    *,
    sources: Sequence[str] | None = None,
    batch_size: int = 1,
    overlap: float = 0.25,
    shifts: int = 0,
    seed: int = 0,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
) -> torch.Tensor:
    """Separate a track into one (sources, channels, frames) tensor; for tests and short
    inputs, where holding the whole output is fine."""
    blocks: list[torch.Tensor] = []
    separate_track(
        model,
        mix,
        lambda _start, block: blocks.append(block),
        sources=sources,
        batch_size=batch_size,
        overlap=overlap,
        shifts=shifts,
        seed=seed,
        device=device,
        precision=precision,
    )
    return torch.cat(blocks, dim=-1)


def normalisation(mix: torch.Tensor) -> tuple[float, float]:
    """Mean and scale of a mix as demucs's separator computes them (on the channel mean)."""
    reference = mix.mean(0)
    mean = float(reference.mean())
    spread = float(reference.std()) if reference.numel() > 1 else 0.0
    return mean, spread + 1e-8
