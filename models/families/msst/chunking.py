"""MSST's chunked inference (`demix`, generic path): a whole track from fixed-size chunks.

The track is reflect-padded by `border = chunk - step` on both sides when it is longer
than two borders; chunks start every `step = chunk // num_overlap` samples of the padded
track until its end, each right-padded to a full chunk (reflected when more than half of
it is real audio, zeros otherwise). The model's outputs are cross-faded with a window of
linear fades of `chunk // 10` samples, and the weighted sum is divided by the summed
weights (0/0 reads as 0).

MSST decides the window's fades once per *batch*, from the last chunk in it: a batch
ending in chunk 0 drops the fade-in, else one ending in the final chunk drops the
fade-out of every chunk it holds. The plan below reproduces that rule, so the result
equals MSST's for the same `batch_size`; batch size otherwise changes only rounding.

`demix` is the reference form, one whole track at a time; `ChunkTiling` gives the engine
the same chunks and weights, so the service runs MSST models on windows of many tracks
in shared batches and still equals `demix`.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from models.engine.cuts import Cut
from models.engine.geometry import Geometry

ModelForward = Callable[[torch.Tensor], torch.Tensor]
ChunkPadding = Literal["reflect", "zeros"]


@dataclass(frozen=True)
class Chunk:
    """One chunk: where it starts in the padded track and how many real samples it has."""

    start: int
    length: int
    padding: ChunkPadding


@dataclass(frozen=True)
class ChunkBatch:
    """Chunks sent to the model together, with the fades their window keeps."""

    chunks: tuple[Chunk, ...]
    fade_in: bool
    fade_out: bool


@dataclass(frozen=True)
class ChunkPlan:
    """How MSST cuts a track of `length` samples: padding, chunks, batches, fades."""

    length: int
    chunk_size: int
    step: int
    fade_size: int
    border: int
    batches: tuple[ChunkBatch, ...]

    @property
    def padded_length(self) -> int:
        """The track's length once padded by `border` on each side."""
        return self.length + 2 * self.border

    @property
    def chunks(self) -> tuple[Chunk, ...]:
        """Every chunk, in order."""
        return tuple(chunk for batch in self.batches for chunk in batch.chunks)


def plan_chunks(length: int, *, chunk_size: int, num_overlap: int, batch_size: int) -> ChunkPlan:
    """The padding, chunks and batches (with their fade flags) of MSST's demix."""
    if length < 1:
        raise ValueError(f"the track is empty ({length} samples)")
    if chunk_size < 10:
        raise ValueError(f"chunk_size must be at least 10 samples, got {chunk_size}")
    if not 1 <= num_overlap <= chunk_size:
        raise ValueError(f"num_overlap must be in 1..{chunk_size}, got {num_overlap}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    step = chunk_size // num_overlap
    overlap = chunk_size - step
    # MSST pads only tracks longer than two borders (so reflection is possible).
    border = overlap if overlap > 0 and length > 2 * overlap else 0
    padded_length = length + 2 * border
    starts = range(0, padded_length, step)
    batches = []
    for first in range(0, len(starts), batch_size):
        group = starts[first : first + batch_size]
        chunks = tuple(_chunk(start, padded_length, chunk_size) for start in group)
        last = group[-1]
        fade_in = last != 0
        fade_out = not fade_in or last + step < padded_length
        batches.append(ChunkBatch(chunks, fade_in=fade_in, fade_out=fade_out))
    return ChunkPlan(
        length=length,
        chunk_size=chunk_size,
        step=step,
        fade_size=chunk_size // 10,
        border=border,
        batches=tuple(batches),
    )


def _chunk(start: int, padded_length: int, chunk_size: int) -> Chunk:
    length = min(chunk_size, padded_length - start)
    return Chunk(start, length, "reflect" if length > chunk_size // 2 else "zeros")


def fade_window(
    chunk_size: int, fade_size: int, *, fade_in: bool = True, fade_out: bool = True
) -> torch.Tensor:
    """Ones with linear fades of `fade_size` samples from and to exactly 0 (float32)."""
    window = torch.ones(chunk_size)
    if fade_out:
        window[chunk_size - fade_size :] = torch.linspace(1, 0, fade_size)
    if fade_in:
        window[:fade_size] = torch.linspace(0, 1, fade_size)
    return window


def demix(
    model_forward: ModelForward,
    track: torch.Tensor,
    *,
    chunk_size: int,
    num_overlap: int,
    batch_size: int,
) -> torch.Tensor:
    """Separate a (channels, length) track chunk by chunk: (stems, channels, length).

    `model_forward` maps a (batch, channels, chunk_size) float32 batch to
    (batch, stems, channels, at least the chunk's real length). The sums are kept in
    float32 on the track's device.
    """
    if track.dim() != 2:
        raise ValueError(f"track must be (channels, length), got shape {tuple(track.shape)}")
    plan = plan_chunks(
        track.shape[-1], chunk_size=chunk_size, num_overlap=num_overlap, batch_size=batch_size
    )
    mix = track.to(torch.float32)
    if plan.border:
        mix = F.pad(mix, (plan.border, plan.border), mode="reflect")
    result: torch.Tensor | None = None
    weight = torch.zeros(plan.padded_length, device=mix.device)
    with torch.inference_mode():
        for batch in plan.batches:
            window = fade_window(
                chunk_size, plan.fade_size, fade_in=batch.fade_in, fade_out=batch.fade_out
            ).to(mix.device)
            inputs = torch.stack([_cut(mix, chunk, chunk_size) for chunk in batch.chunks])
            outputs = model_forward(inputs).to(device=mix.device, dtype=torch.float32)
            if result is None:
                result = mix.new_zeros((outputs.shape[1], *mix.shape))
            for output, chunk in zip(outputs, batch.chunks, strict=True):
                if output.shape[-1] < chunk.length:
                    raise ValueError(
                        f"the model returned {output.shape[-1]} samples for a chunk "
                        f"of {chunk.length}"
                    )
                end = chunk.start + chunk.length
                result[..., chunk.start : end] += (
                    output[..., : chunk.length] * window[: chunk.length]
                )
                weight[chunk.start : end] += window[: chunk.length]
    assert result is not None  # a non-empty track has at least one chunk
    separated = torch.nan_to_num(result / weight, nan=0.0)
    if plan.border:
        separated = separated[..., plan.border : -plan.border]
    return separated


def _cut(mix: torch.Tensor, chunk: Chunk, chunk_size: int) -> torch.Tensor:
    part = mix[:, chunk.start : chunk.start + chunk.length]
    missing = chunk_size - chunk.length
    if chunk.padding == "reflect":
        return F.pad(part, (0, missing), mode="reflect")
    return F.pad(part, (0, missing))


@dataclass(frozen=True)
class ChunkTiling:
    """MSST's demix as an engine tiling: the same chunks, padding and fades, so that the
    engine's overlap-add of any grouping of windows equals `demix` at `batch_size`.

    `batch_size` here is the grouping MSST's fade rule reads (the config's
    `inference.batch_size`), not how many windows the engine sends at once: the fade
    flags are fixed per chunk when the track is tiled.
    """

    num_overlap: int
    batch_size: int
    normalise: bool = False

    def tile(
        self, frames: int, geometry: Geometry, *, overlap: float, shifts: int, seed: int
    ) -> ChunkTiles:
        """The chunks of a track of `frames` frames; `overlap` is not read (MSST models
        overlap by `num_overlap`), and shifts are refused (MSST takes none)."""
        del overlap, seed
        if shifts:
            raise ValueError("MSST models take no shifts; use shifts=0")
        plan = plan_chunks(
            frames,
            chunk_size=geometry.segment_length,
            num_overlap=self.num_overlap,
            batch_size=self.batch_size,
        )
        return ChunkTiles(plan)


class ChunkTiles:
    """One track's chunks as engine cuts, in track frames (a chunk in the reflected
    border starts before frame 0), with each chunk's padding and fades kept."""

    def __init__(self, plan: ChunkPlan) -> None:
        self.plan = plan
        self.cuts: list[Cut] = []
        self._chunks: dict[int, tuple[Chunk, torch.Tensor]] = {}
        windows: dict[tuple[bool, bool], torch.Tensor] = {}
        for batch in plan.batches:
            flags = (batch.fade_in, batch.fade_out)
            if flags not in windows:
                windows[flags] = fade_window(
                    plan.chunk_size, plan.fade_size, fade_in=flags[0], fade_out=flags[1]
                )
            for chunk in batch.chunks:
                start = chunk.start - plan.border
                self.cuts.append(Cut(start, chunk.length, start, plan.chunk_size, 0))
                self._chunks[start] = (chunk, windows[flags][: chunk.length])
        self._starts = [cut.start for cut in self.cuts]

    def window(self, mix: torch.Tensor, cut: Cut, mean: float, scale: float) -> torch.Tensor:
        """The chunk as demix reads it from the reflect-padded track, right-padded."""
        chunk, _ = self._chunks[cut.start]
        frames = mix.shape[-1]
        index = torch.arange(cut.start, cut.start + chunk.length)
        # The track mirrored at both edges, as F.pad(mode="reflect") pads it by `border`.
        index = torch.where(index < 0, -index, index)
        index = torch.where(index >= frames, 2 * (frames - 1) - index, index)
        piece = (mix[..., index] - mean) / scale
        missing = self.plan.chunk_size - chunk.length
        if chunk.padding == "reflect":
            return F.pad(piece, (0, missing), mode="reflect")
        return F.pad(piece, (0, missing))

    def trim(self, output: torch.Tensor, cut: Cut) -> torch.Tensor:
        """The chunk's real samples: the model's output up to the chunk's length."""
        if output.shape[-1] < cut.length:
            raise ValueError(
                f"the model returned {output.shape[-1]} samples for a chunk of {cut.length}"
            )
        return output[..., : cut.length]

    def weight(self, cut: Cut) -> torch.Tensor:
        """The chunk's fade divided by the sum of every chunk's fade at each frame
        (0 where that sum is 0, as demix's nan_to_num)."""
        own = self._chunks[cut.start][1]
        total = torch.zeros(cut.length)
        first = bisect.bisect_left(self._starts, cut.start - self.plan.chunk_size + 1)
        last = bisect.bisect_right(self._starts, cut.start + cut.length - 1)
        for other in self.cuts[first:last]:
            fade = self._chunks[other.start][1]
            begin = max(cut.start, other.start)
            end = min(cut.start + cut.length, other.start + other.length)
            if begin < end:
                total[begin - cut.start : end - cut.start] += fade[
                    begin - other.start : end - other.start
                ]
        return torch.nan_to_num(own / total, nan=0.0)
