"""Cutting a track into segments, each segment's model window and cross-fade weight.

`Cut` is the engine's unit of work, whatever the tiling. `SegmentTiling` is the tiling of
demucs's `apply_model` (segment length, stride, `TensorChunk.padded` context,
`center_trim`), reproduced exactly so that results agree with it to float precision; the
cross-fade weight, the padding beyond the track and the shift range are its fields, so a
family that tiles the same way with another fade only sets those.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from models.engine.geometry import Geometry

PADDINGS = ("zeros", "reflect")


@dataclass(frozen=True)
class Cut:
    """One segment of a track: which frames it delivers and which frames the model sees."""

    start: int  # first delivered frame, in track frames (negative inside a shift's lead-in)
    length: int  # delivered frames
    window_start: int  # first frame of the model input; outside the track reads as silence
    window_length: int
    shift: int  # index of the shift this cut belongs to


@dataclass(frozen=True)
class SegmentTiling:
    """Tiling by a fraction of overlap between fixed segments, as demucs's apply_model."""

    # The cross-fade weight over one segment of n frames (demucs: triangular).
    weight: Callable[[int], torch.Tensor]
    # What a window reads beyond the track: "zeros" (silence) or "reflect" (the
    # track mirrored at its edge, as far as the window's own frames reach).
    padding: str
    # The shift trick: each shift puts up to this many seconds of silence in front;
    # 0 for a family whose inference takes no shifts.
    max_shift_s: float
    # Normalise the mix by the mean and spread of its channel mean before the model
    # and scale the stems back after.
    normalise: bool

    def __post_init__(self) -> None:
        if self.padding not in PADDINGS:
            raise ValueError(f"padding must be one of {PADDINGS}, got {self.padding!r}")
        if self.max_shift_s < 0:
            raise ValueError(f"max_shift_s must not be negative, got {self.max_shift_s}")

    def tile(
        self, frames: int, geometry: Geometry, *, overlap: float, shifts: int, seed: int
    ) -> SegmentTiles:
        """The cuts of a track, every shift merged, with their weights."""
        cuts = cut_track(frames, geometry, overlap=overlap, shifts=shifts, seed=seed)
        return SegmentTiles(cuts, CutWeights(cuts, geometry, shifts=shifts), self.padding)


class SegmentTiles:
    """A track's cuts under a `SegmentTiling`."""

    def __init__(self, cuts: list[Cut], weights: CutWeights, padding: str) -> None:
        self.cuts = cuts
        self.weights = weights
        self.padding = padding

    def window(self, mix: torch.Tensor, cut: Cut, mean: float, scale: float) -> torch.Tensor:
        """The model input of `cut` (see `window`)."""
        return window(mix, cut, mean, scale, padding=self.padding)

    def trim(self, output: torch.Tensor, cut: Cut) -> torch.Tensor:
        """The delivered frames of the output (see `trim`)."""
        return trim(output, cut)

    def weight(self, cut: Cut) -> torch.Tensor:
        """The normalised cross-fade weight of `cut`."""
        return self.weights(cut)


def _segment_tiling(geometry: Geometry) -> SegmentTiling:
    """The geometry's tiling, which the segment rules here must be."""
    if not isinstance(geometry.tiling, SegmentTiling):
        raise TypeError(f"segment cuts need a SegmentTiling, got {type(geometry.tiling).__name__}")
    return geometry.tiling


def transition_weight(segment_length: int, power: float = 1.0) -> torch.Tensor:
    """Demucs's triangular cross-fade weight over one segment."""
    half = segment_length // 2
    weight = torch.cat(
        [torch.arange(1, half + 1), torch.arange(segment_length - half, 0, -1)]
    ).float()
    return (weight / weight.max()) ** power


def cut_track(
    frames: int,
    geometry: Geometry,
    *,
    overlap: float = 0.25,
    shifts: int = 0,
    seed: int = 0,
) -> list[Cut]:
    """Cut a track of `frames` frames into segments, ordered by start, every shift merged."""
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if frames <= 0:
        raise ValueError("cannot cut an empty track")
    if shifts == 0:
        origins = [0]
    else:
        # The shift trick: each shift pads the track with up to max_shift_s of
        # silence in front, as apply_model does, drawing offsets the same way.
        max_shift = int(_segment_tiling(geometry).max_shift_s * geometry.samplerate)
        if max_shift == 0:
            raise ValueError("this model takes no shifts; use shifts=0")
        rng = random.Random(seed)
        origins = [rng.randint(0, max_shift) - max_shift for _ in range(shifts)]
    stride = int((1 - overlap) * geometry.segment_length)
    cuts = []
    for shift, origin in enumerate(origins):
        for start in range(origin, frames, stride):
            length = min(geometry.segment_length, frames - start)
            if start + length <= 0:
                continue
            window_length = geometry.window_length(length)
            window_start = start - (window_length - length) // 2
            cuts.append(Cut(start, length, window_start, window_length, shift))
    cuts.sort(key=lambda cut: (cut.start, cut.shift))
    return cuts


class CutWeights:
    """Each cut's cross-fade weight divided by the weight sum of its shift at every frame
    and by the number of shifts, so that overlap-adding needs no final division.
    Computed per cut on demand, so memory does not grow with the number of cuts."""

    def __init__(self, cuts: Sequence[Cut], geometry: Geometry, *, shifts: int = 0) -> None:
        self.base = _segment_tiling(geometry).weight(geometry.segment_length)
        self.scale = 1.0 / max(shifts, 1)
        self.by_shift: dict[int, list[Cut]] = {}
        for cut in cuts:
            self.by_shift.setdefault(cut.shift, []).append(cut)
        self.starts = {
            shift: [cut.start for cut in group] for shift, group in self.by_shift.items()
        }

    def __call__(self, cut: Cut) -> torch.Tensor:
        """The normalised weight of `cut`, shape (cut.length,)."""
        group = self.by_shift[cut.shift]
        starts = self.starts[cut.shift]
        reach = self.base.shape[0]
        first = bisect.bisect_left(starts, cut.start - reach)
        last = bisect.bisect_right(starts, cut.start + cut.length)
        total = torch.zeros(cut.length)
        for other in group[first:last]:
            begin = max(cut.start, other.start)
            end = min(cut.start + cut.length, other.start + other.length)
            if begin < end:
                total[begin - cut.start : end - cut.start] += self.base[
                    begin - other.start : end - other.start
                ]
        return self.base[: cut.length] / total * self.scale


def window(
    mix: torch.Tensor,
    cut: Cut,
    mean: float = 0.0,
    scale: float = 1.0,
    *,
    padding: str = "zeros",
) -> torch.Tensor:
    """The model input of `cut`: (channels, window_length), normalised by `mean` and
    `scale`, padded outside the track after normalising, as in demucs. `reflect`
    mirrors the track as far as the window's own frames reach, then pads with zeros."""
    frames = mix.shape[-1]
    begin = max(0, cut.window_start)
    end = min(frames, cut.window_start + cut.window_length)
    piece = (mix[..., begin:end] - mean) / scale
    before, after = begin - cut.window_start, cut.window_start + cut.window_length - end
    if padding == "reflect" and (before or after):
        reach = piece.shape[-1] - 1
        mirrored = (min(before, reach), min(after, reach))
        piece = F.pad(piece, mirrored, mode="reflect")
        before, after = before - mirrored[0], after - mirrored[1]
    return F.pad(piece, (before, after))


def trim(output: torch.Tensor, cut: Cut) -> torch.Tensor:
    """The delivered frames of a window's output, as demucs's `center_trim`."""
    offset = (cut.window_length - cut.length) // 2
    return output[..., offset : offset + cut.length]
