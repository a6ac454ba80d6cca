"""The segment engine: demucs's split, overlap-add and shift trick, streamed and batchable.

This computes what `demucs.apply.apply_model(model, mix, split=True, overlap=...,
shifts=...)` computes, with three differences that the service needs:

- the unit of work is a segment, not a track: `cut_track` turns a track into `Cut`s,
  `window` gives a cut's model input, and `separate_windows` runs any list of windows,
  from any number of tracks, through the model in one batch;
- the output streams: `OverlapAdd` hands back finished frames as soon as no later
  segment can touch them, so memory does not grow with track length;
- shifts are drawn from a seeded generator, so results are repeatable.

We write this ourselves because demucs's `apply_model` recurses per track and holds the
whole output, once per stem, per shift; its cutting rules (segment length, stride,
`TensorChunk.padded` context, `center_trim`, triangular transition weights) are
reproduced exactly so that results agree to float precision.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from demucs.apply import BagOfModels
from torch.nn import functional as F

PRECISIONS = ("fp32", "bf16")
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class Cut:
    """One segment of a track: which frames it delivers and which frames the model sees."""

    start: int  # first delivered frame, in track frames (negative inside a shift's lead-in)
    length: int  # delivered frames
    window_start: int  # first frame of the model input; outside the track reads as silence
    window_length: int
    shift: int  # index of the shift this cut belongs to


@dataclass(frozen=True)
class Geometry:
    """What the engine needs to know about a bag of models to cut a track."""

    samplerate: int
    audio_channels: int
    sources: tuple[str, ...]
    segment_length: int
    # The first network's `valid_length`: the input length it wants for a delivered
    # length (None: the same length). A callable, so that a geometry can also be
    # described by a process that holds no network (the service asks the Separator).
    valid_length: Callable[[int], int] | None = None

    @classmethod
    def of(cls, bag: BagOfModels) -> Geometry:
        """Read the geometry of `bag`; all its networks must cut tracks alike."""
        segments = {float(network.segment) for network in bag.models}  # type: ignore[arg-type]
        if len(segments) != 1:
            raise ValueError(f"networks of one bag must share a segment length, got {segments}")
        return cls(
            samplerate=int(bag.samplerate),
            audio_channels=int(bag.audio_channels),
            sources=tuple(bag.sources),
            segment_length=int(bag.samplerate * segments.pop()),
            valid_length=getattr(bag.models[0], "valid_length", None),
        )

    def window_length(self, length: int) -> int:
        """The input length the model wants for `length` delivered frames."""
        return int(self.valid_length(length)) if self.valid_length is not None else length


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
        # The shift trick: each shift pads the track with up to half a second of
        # silence in front, as apply_model does, drawing offsets the same way.
        rng = random.Random(seed)
        max_shift = int(0.5 * geometry.samplerate)
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

    def __init__(
        self, cuts: Sequence[Cut], geometry: Geometry, *, shifts: int = 0, power: float = 1.0
    ) -> None:
        self.base = transition_weight(geometry.segment_length, power)
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


def window(mix: torch.Tensor, cut: Cut, mean: float = 0.0, scale: float = 1.0) -> torch.Tensor:
    """The model input of `cut`: (channels, window_length), normalised by `mean` and
    `scale`, silence outside the track (padding comes after normalising, as in demucs)."""
    frames = mix.shape[-1]
    begin = max(0, cut.window_start)
    end = min(frames, cut.window_start + cut.window_length)
    piece = (mix[..., begin:end] - mean) / scale
    return F.pad(piece, (begin - cut.window_start, cut.window_start + cut.window_length - end))


def trim(output: torch.Tensor, cut: Cut) -> torch.Tensor:
    """The delivered frames of a window's output, as demucs's `center_trim`."""
    offset = (cut.window_length - cut.length) // 2
    return output[..., offset : offset + cut.length]


def resolve_device(name: str) -> torch.device:
    """`auto` is CUDA when present, else the CPU; `cuda` without a CUDA device is an error."""
    if name not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {name!r}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda was asked for but no CUDA device is available")
    return torch.device(name)


@contextmanager
def precision_context(device: torch.device, precision: str) -> Iterator[None]:
    """fp32 as is; bf16 autocasts and, on CUDA, lets matmuls and convolutions use TF32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        yield
        return
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def separate_windows(
    bag: BagOfModels,
    windows: Sequence[torch.Tensor],
    *,
    sources: Sequence[str] | None = None,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
) -> list[torch.Tensor]:
    """Run model windows (from any tracks) through `bag` in one batch per window length.

    Returns, per window, a (len(sources), channels, window_length) tensor on the CPU,
    the bag's weighted average of its networks as apply_model forms it. Networks
    whose weights are zero for every requested source are skipped.
    """
    names = tuple(bag.sources) if sources is None else tuple(sources)
    indices = [bag.sources.index(name) for name in names]
    target = torch.device(device)
    results: list[torch.Tensor | None] = [None] * len(windows)
    by_length: dict[int, list[int]] = {}
    for position, item in enumerate(windows):
        by_length.setdefault(item.shape[-1], []).append(position)
    for positions in by_length.values():
        batch = torch.stack([windows[position] for position in positions]).to(target)
        combined = _forward_bag(bag, batch, indices, target, precision).cpu()
        for row, position in enumerate(positions):
            results[position] = combined[row]
    return [result for result in results if result is not None]


def _forward_bag(
    bag: BagOfModels,
    batch: torch.Tensor,
    indices: Sequence[int],
    device: torch.device,
    precision: str,
) -> torch.Tensor:
    """Weighted sum of the bag's networks on one batch, for the source `indices`."""
    combined: torch.Tensor | None = None
    totals = torch.zeros(len(indices))
    for network, network_weights in zip(bag.models, bag.weights, strict=True):
        weights = torch.tensor([float(network_weights[index]) for index in indices])
        totals += weights
        if not bool(weights.any()):
            continue
        with torch.inference_mode(), precision_context(device, precision):
            output = network.to(device)(batch)
        output = output[:, list(indices)].float() * weights.to(device)[None, :, None, None]
        combined = output if combined is None else combined + output
    if combined is None:
        raise ValueError("every network of the bag has zero weight for the requested sources")
    return combined / totals.to(device)[None, :, None, None]


class OverlapAdd:
    """Accumulates weighted cut outputs and releases frames once they are final."""

    def __init__(self, sources: int, channels: int, frames: int) -> None:
        self.frames = frames
        self.done = 0  # frames [0, done) have been released
        self.buffer = torch.zeros(sources, channels, 0)

    def add(self, cut: Cut, weighted: torch.Tensor) -> None:
        """Add a cut's delivered output, already multiplied by its weight."""
        begin = max(cut.start, self.done)
        end = min(cut.start + cut.length, self.frames)
        if begin >= end:
            return
        needed = end - self.done
        if needed > self.buffer.shape[-1]:
            grow = torch.zeros(*self.buffer.shape[:-1], needed - self.buffer.shape[-1])
            self.buffer = torch.cat([self.buffer, grow], dim=-1)
        self.buffer[..., begin - self.done : end - self.done] += weighted[
            ..., begin - cut.start : end - cut.start
        ]

    def release(self, upto: int) -> torch.Tensor:
        """Hand back frames [done, upto): no cut added later may start before `upto`."""
        upto = min(max(upto, self.done), self.frames)
        count = upto - self.done
        if count > self.buffer.shape[-1]:
            grow = torch.zeros(*self.buffer.shape[:-1], count - self.buffer.shape[-1])
            self.buffer = torch.cat([self.buffer, grow], dim=-1)
        block = self.buffer[..., :count]
        self.buffer = self.buffer[..., count:].clone()
        self.done = upto
        return block


BlockSink = Callable[[int, torch.Tensor], None]
# Runs model windows for the named sources; returns one (sources, channels, length)
# tensor per window. `separate_windows` on a local bag, or a remote Separator.
WindowRunner = Callable[[Sequence[torch.Tensor], Sequence[str]], list[torch.Tensor]]


def separate_track(
    bag: BagOfModels,
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
    """Separate one track (channels, frames) in the model's domain with a local bag;
    see `stream_track`."""

    def run(windows: Sequence[torch.Tensor], names: Sequence[str]) -> list[torch.Tensor]:
        return separate_windows(bag, windows, sources=names, device=device, precision=precision)

    stream_track(
        Geometry.of(bag),
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
) -> None:
    """Separate one track (channels, frames) in the model's domain, `batch_size` windows
    at a time through `run`.

    The mix is normalised as demucs's separator does and the stems are scaled back.
    Calls `on_block(start, block)` with consecutive blocks of shape
    (len(sources), channels, n) that together cover the track exactly once.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    names = tuple(geometry.sources) if sources is None else tuple(sources)
    frames = mix.shape[-1]
    cuts = cut_track(frames, geometry, overlap=overlap, shifts=shifts, seed=seed)
    weight_of = CutWeights(cuts, geometry, shifts=shifts)
    mean, scale = normalisation(mix)
    accumulator = OverlapAdd(len(names), mix.shape[0], frames)
    for first in range(0, len(cuts), batch_size):
        batch = cuts[first : first + batch_size]
        outputs = run([window(mix, cut, mean, scale) for cut in batch], names)
        for cut, output in zip(batch, outputs, strict=True):
            accumulator.add(cut, trim(output, cut) * weight_of(cut))
        following = first + batch_size
        upto = cuts[following].start if following < len(cuts) else frames
        if upto > accumulator.done:
            start = accumulator.done
            on_block(start, accumulator.release(upto) * scale + mean)
        if on_progress is not None:
            on_progress(min(following, len(cuts)), len(cuts))


def collect_track(
    bag: BagOfModels,
    mix: torch.Tensor,
    *,
    sources: Sequence[str] | None = None,
    batch_size: int = 1,
    overlap: float = 0.25,
    shifts: int = 0,
    seed: int = 0,
) -> torch.Tensor:
    """Separate a track into one (sources, channels, frames) tensor; for tests and short
    inputs, where holding the whole output is fine."""
    blocks: list[torch.Tensor] = []
    separate_track(
        bag,
        mix,
        lambda _start, block: blocks.append(block),
        sources=sources,
        batch_size=batch_size,
        overlap=overlap,
        shifts=shifts,
        seed=seed,
    )
    return torch.cat(blocks, dim=-1)


def normalisation(mix: torch.Tensor) -> tuple[float, float]:
    """Mean and scale of a mix as demucs's separator computes them (on the channel mean)."""
    reference = mix.mean(0)
    mean = float(reference.mean())
    spread = float(reference.std()) if reference.numel() > 1 else 0.0
    return mean, spread + 1e-8
