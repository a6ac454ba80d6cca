"""One track end to end, without Ray: decode, plan, run the passes, derive, encode.

`separate_file` is what the command line runs and what the service's pipeline mirrors
with Ray handles in between. Memory stays bounded in track length: the input is held
once (plus its model-domain copy when the rate or channels differ), stems stream from
the engine through `OutputConverter` into `StemEncoder` block by block, and only a stem
that a later pass takes as its input (a cascade) is held whole. Derived stems are
computed in the output domain from the decoded input, so `instrumental + vocals` equals
the input exactly before encoding.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from demucs.apply import BagOfModels

from models.audio import DecodeLimits, Track, decode, to_model_input
from models.encode import (
    FLAC_MAX_CHANNELS,
    FORMATS,
    MP3_MAX_CHANNELS,
    MP3_SAMPLE_RATES,
    OutputConverter,
    StemEncoder,
)
from models.engine import Geometry, separate_track
from models.errors import AudioError, RoutingError
from models.loading import load_model
from models.planner import Pass, Plan, make_plan
from models.routing import DerivedStem, Routing, load_routing
from models.stems import MIXTURE

Progress = Callable[[float], None]
Samples = npt.NDArray[np.float32]


@dataclass(frozen=True)
class EngineOptions:
    """How the segment engine runs; the defaults are deterministic fp32 on the CPU."""

    batch_size: int = 1
    overlap: float = 0.25
    shifts: int = 0
    seed: int = 0
    device: str = "cpu"
    precision: str = "fp32"


@dataclass
class ModelStore:
    """Loads each routed model once and keeps it."""

    routing: Routing
    model_dir: Path | None = None
    use_hub: bool = True
    loaded: dict[str, BagOfModels] = field(default_factory=dict)

    def get(self, name: str) -> BagOfModels:
        """The bag for routing entry `name`, loading it on first use."""
        if name not in self.loaded:
            entry = self.routing.models[name]
            self.loaded[name] = load_model(
                entry.weights,
                model_dir=self.model_dir,
                use_hub=self.use_hub,
                checksum=entry.checksum,
            )
        return self.loaded[name]


def separate_file(
    source: str | Path | bytes,
    stems: Sequence[str] | None,
    out_dir: str | Path,
    *,
    fmt: str = "wav",
    store: ModelStore | None = None,
    options: EngineOptions = EngineOptions(),
    limits: DecodeLimits | None = None,
    on_progress: Progress | None = None,
) -> dict[str, Path]:
    """Separate an audio file into `stems`; return the written file of each stem."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    store = store or ModelStore(load_routing())
    plan = make_plan(stems, store.routing)
    track = decode(source, limits or DecodeLimits())
    check_format(fmt, track)
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {stem: folder / f"{stem}.{fmt}" for stem in plan.stems}
    encoders: dict[str, StemEncoder] = {}
    try:
        for stem, path in paths.items():
            encoders[stem] = StemEncoder(
                path,
                fmt,
                sample_rate=track.sample_rate,
                channels=track.channels,
                layout=track.layout,
            )
        run_plan(plan, track, store, encoders, options=options, on_progress=on_progress)
    except BaseException:
        # A half-written stem is worse than none: remove every file of this run.
        for encoder in encoders.values():
            encoder.close()
        for path in paths.values():
            path.unlink(missing_ok=True)
        raise
    for encoder in encoders.values():
        encoder.close()
    return paths


def check_format(fmt: str, track: Track) -> None:
    """Refuse, before any work, an output format that cannot hold the input's shape."""
    if fmt == "mp3" and (
        track.channels > MP3_MAX_CHANNELS or track.sample_rate not in MP3_SAMPLE_RATES
    ):
        raise AudioError(
            f"mp3 cannot hold {track.channels} channels at {track.sample_rate} Hz; "
            "ask for wav or flac"
        )
    if fmt == "flac" and track.channels > FLAC_MAX_CHANNELS:
        raise AudioError(f"flac cannot hold {track.channels} channels; ask for wav")


def run_plan(
    plan: Plan,
    track: Track,
    store: ModelStore,
    encoders: Mapping[str, StemEncoder],
    *,
    options: EngineOptions = EngineOptions(),
    on_progress: Progress | None = None,
) -> None:
    """Run every pass of `plan` on `track`, writing requested stems to `encoders`."""
    cascade_inputs = {step.input for step in plan.passes if step.input != MIXTURE}
    held: dict[str, torch.Tensor] = {}
    for number, step in enumerate(plan.passes):
        bag = store.get(step.model)
        geometry = Geometry.of(bag)
        if step.input == MIXTURE:
            mix = torch.from_numpy(
                to_model_input(track, geometry.samplerate, geometry.audio_channels)
            )
        else:
            mix = held.pop(step.input)
        derived = _derivations_in(step, plan)
        writer = _PassWriter(step, track, geometry, encoders, derived, cascade_inputs)

        def report(done: int, total: int, number: int = number) -> None:
            if on_progress is not None:
                on_progress((number + done / total) / len(plan.passes))

        entry = store.routing.models[step.model]
        sources = [entry.outputs[stem] for stem in step.outputs]
        separate_track(
            bag,
            mix,
            writer.write,
            sources=sources,
            batch_size=options.batch_size,
            overlap=options.overlap,
            shifts=options.shifts,
            seed=options.seed,
            device=options.device,
            precision=options.precision,
            on_progress=report,
        )
        writer.finish()
        held.update(writer.held())


def _derivations_in(step: Pass, plan: Plan) -> list[DerivedStem]:
    """The derivations this pass completes; each must draw on this pass alone."""
    ready = []
    for derivation in plan.derived:
        sources = set(derivation.minus)
        if sources <= set(step.outputs):
            if derivation.base != MIXTURE:
                raise RoutingError(
                    f"derived stem {derivation.name!r}: only the mixture can be a base for now"
                )
            ready.append(derivation)
        elif sources & set(step.outputs):
            raise RoutingError(
                f"derived stem {derivation.name!r} subtracts stems of several model passes"
            )
    return ready


class _PassWriter:
    """Takes one pass's blocks: converts requested stems to the output domain and encodes
    them, computes derivations beside them, and holds stems that feed later passes."""

    def __init__(
        self,
        step: Pass,
        track: Track,
        geometry: Geometry,
        encoders: Mapping[str, StemEncoder],
        derived: Sequence[DerivedStem],
        cascade_inputs: set[str],
    ) -> None:
        self.step = step
        self.track = track
        self.encoders = encoders
        self.derived = derived
        self.cascade_inputs = cascade_inputs
        self.position = 0  # output-domain frames written so far
        wanted = set(encoders)
        for derivation in derived:
            wanted.update(derivation.minus)
        self.converters = {
            stem: OutputConverter(
                model_rate=geometry.samplerate,
                out_rate=track.sample_rate,
                out_channels=track.channels,
                out_layout=track.layout,
                total_frames=track.frames,
            )
            for stem in step.outputs
            if stem in wanted
        }
        self.blocks: dict[str, list[torch.Tensor]] = {
            stem: [] for stem in step.outputs if stem in cascade_inputs
        }

    def write(self, _start: int, block: torch.Tensor) -> None:
        """Take one engine block (stems, channels, frames) of this pass."""
        converted = {}
        for index, stem in enumerate(self.step.outputs):
            if stem in self.blocks:
                self.blocks[stem].append(block[index].clone())
            if stem in self.converters:
                converted[stem] = self.converters[stem].push(block[index].numpy())
        self._emit(converted)

    def finish(self) -> None:
        """Flush the converters so every stem has exactly the input's length."""
        self._emit({stem: converter.finish() for stem, converter in self.converters.items()})

    def held(self) -> dict[str, torch.Tensor]:
        """Whole model-domain stems that later passes take as input."""
        return {stem: torch.cat(blocks, dim=-1) for stem, blocks in self.blocks.items()}

    def _emit(self, converted: dict[str, Samples]) -> None:
        if not converted:
            return
        frames = {piece.shape[-1] for piece in converted.values()}
        if len(frames) != 1:
            raise RuntimeError(f"stems of one pass fell out of step: {sorted(frames)}")
        count = frames.pop()
        span = slice(self.position, self.position + count)
        for derivation in self.derived:
            residual = self.track.samples[:, span].copy()
            for stem in derivation.minus:
                residual -= converted[stem]
            converted[derivation.name] = residual
        for stem, piece in converted.items():
            if stem in self.encoders:
                self.encoders[stem].write(piece)
        self.position += count
