"""One track end to end, without Ray: plan, decode, check the format, preprocess, run the
passes, derive, encode.

`TrackJob` is the one job path: `TrackJob.of` plans once, `TrackJob.run` does the rest with
what differs between callers handed in: where the models run (`PassModels`: in this process,
`LocalModels`, or behind the service's Separator deployments), how the track is cleaned by
DSP (`Clean`), where progress and warnings go, and the folder the stems are written to. A
preprocessing step the routing serves with a trained model runs on `PassModels` as a pass
does (models/preprocess/trained.py); the other steps keep their DSP. The
command line runs it through `separate_file`, with everything in this process; the service's
Pipeline runs it with its deployments.

Memory stays bounded in track length: the input is held once (plus its model-domain copy
when the rate or channels differ), stems stream from the engine through `OutputConverter`
into `StemEncoder` block by block, and only a stem that a later pass takes as its input (a
cascade) is held whole. Derived stems are computed in the output domain from the decoded
input, so `instrumental + vocals` equals the input exactly before encoding.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from models.audio.decode import DecodeLimits, Track, decode
from models.audio.domain import to_model_input
from models.audio.encode import FORMATS, OutputConverter, StemEncoder, check_supported
from models.audio.samples import Samples
from models.engine.batching import SeparationModel, separate_windows
from models.engine.devices import REQUESTED_PRECISIONS, resolve_device, resolve_precision
from models.engine.geometry import Geometry
from models.engine.track import WindowRunner, stream_track
from models.errors import AudioError
from models.families import family
from models.preprocess.catalogue import parse_steps
from models.preprocess.steps import preprocess
from models.preprocess.trained import clean_with_model
from models.stages import (
    DECODE,
    DERIVE,
    ENCODE,
    LOAD,
    MODEL,
    NO_CLOCK,
    OTHER,
    PREPROCESS,
    RESAMPLE,
    StageClock,
)
from models.stems.catalogue import MIXTURE
from models.stems.derive import Combination, expand
from models.stems.planner import Pass, Plan, make_plan
from models.stems.routing import Routing, load_routing

Progress = Callable[[float], None]
WRITE_BLOCK = 1 << 18  # frames per encoder call for whole-track derived stems


@dataclass(frozen=True)
class EngineOptions:
    """How the segment engine runs; the defaults are deterministic fp32 on the CPU.
    `device` is one of engine.DEVICES: `auto` picks CUDA when present. `precision` is one
    of engine.REQUESTED_PRECISIONS: `auto` is bf16 where the device does it natively, for
    the families in AUTO_BF16_FAMILIES."""

    batch_size: int = 1
    overlap: float = 0.25
    shifts: int = 0
    seed: int = 0
    device: str = "cpu"
    precision: str = "fp32"


@dataclass
class ModelStore:
    """Loads each routed model, stem or preprocessing, once and keeps it."""

    routing: Routing
    model_dir: Path | None = None
    use_hub: bool = True
    loaded: dict[str, SeparationModel] = field(default_factory=dict)

    def get(self, name: str) -> SeparationModel:
        """The model of routing key `name` (a stem model or a preprocessing step), loaded
        by its family on first use."""
        if name not in self.loaded:
            entry = self.routing.all_models()[name]
            self.loaded[name] = family(entry.family).load(
                entry, model_dir=self.model_dir, use_hub=self.use_hub
            )
        return self.loaded[name]


class PassModels(Protocol):
    """The models a job runs on, its passes and its trained preprocessing steps, by
    routing key: in this process (`LocalModels`) or behind the service's Separator
    deployments."""

    @property
    def routing(self) -> Routing:
        """Which model serves which stem."""
        ...

    def geometry(self, model: str) -> Geometry:
        """How routing entry `model` cuts a track."""
        ...

    def runner(self, model: str) -> WindowRunner:
        """Runs windows through routing entry `model`."""
        ...


@dataclass
class LocalModels:
    """The models of a `ModelStore`, run in this process on `device` in `precision` (one of
    engine.REQUESTED_PRECISIONS: `auto` is resolved per model, by its family);
    `clock` counts their loading as LOAD."""

    store: ModelStore
    device: torch.device
    precision: str = "fp32"
    clock: StageClock = NO_CLOCK

    def __post_init__(self) -> None:
        if self.precision not in REQUESTED_PRECISIONS:
            raise ValueError(
                f"precision must be one of {REQUESTED_PRECISIONS}, got {self.precision!r}"
            )

    @property
    def routing(self) -> Routing:
        """The store's routing."""
        return self.store.routing

    def geometry(self, model: str) -> Geometry:
        """The geometry of the loaded model."""
        return self._loaded(model).geometry

    def runner(self, model: str) -> WindowRunner:
        """`separate_windows` on the loaded model."""
        loaded = self._loaded(model)
        precision = self.precision_of(model)

        def run(windows: Sequence[torch.Tensor], sources: Sequence[str]) -> list[torch.Tensor]:
            return separate_windows(
                loaded, windows, sources=sources, device=self.device, precision=precision
            )

        return run

    def precision_of(self, model: str) -> str:
        """The precision routing entry `model` computes in here."""
        family = self.routing.all_models()[model].family
        return resolve_precision(self.precision, self.device, family=family)

    def _loaded(self, model: str) -> SeparationModel:
        if model in self.store.loaded:
            return self.store.loaded[model]
        with self.clock.stage(LOAD):
            return self.store.get(model)


Clean = Callable[[Samples, int, tuple[str, ...]], Samples]
"""DSP preprocessing: (samples, sample_rate, steps) to the cleaned samples, same shape; in
this process (`preprocess`) or on the service's Preprocessor deployment."""


@dataclass(frozen=True)
class Separated:
    """What a job wrote, and what its caller reports about the input."""

    paths: dict[str, Path]
    duration_s: float
    warnings: tuple[str, ...]


@dataclass(frozen=True)
class TrackJob:
    """One track's work, checked and planned once before any of it runs: the plan of its
    stems, the output format, the preprocessing steps in the order they run, and which of
    them a trained model serves (the others run as DSP)."""

    plan: Plan
    fmt: str = "wav"
    steps: tuple[str, ...] = ()
    trained: tuple[str, ...] = ()

    @property
    def models(self) -> tuple[str, ...]:
        """The routing keys of every model the job runs: its passes' and its trained
        steps', each once."""
        return tuple(dict.fromkeys([*(step.model for step in self.plan.passes), *self.trained]))

    @classmethod
    def of(
        cls,
        stems: Sequence[str] | None,
        routing: Routing,
        *,
        fmt: str = "wav",
        preprocessing: Sequence[str] | None = None,
    ) -> TrackJob:
        """The job for `stems` (None: the defaults) of `routing`; refuses an unknown
        format, stem or step before any input is read."""
        if fmt not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
        steps = parse_steps(preprocessing)
        trained = tuple(step for step in steps if step in routing.preprocessing)
        return cls(make_plan(stems, routing), fmt, steps, trained)

    def run(
        self,
        source: str | Path | bytes,
        models: PassModels,
        out_dir: str | Path,
        *,
        limits: DecodeLimits | None = None,
        clean: Clean = preprocess,
        options: EngineOptions = EngineOptions(),
        on_progress: Progress | None = None,
        on_warning: Callable[[str], None] | None = None,
        clock: StageClock = NO_CLOCK,
    ) -> Separated:
        """Decode `source` within `limits`, check that the format can hold it, clean it
        (trained steps on `models`, the others with `clean`), and write each stem of the
        plan to `out_dir/<stem>.<fmt>` with `models`. Progress counts each trained step
        and each pass alike. `on_warning` hears each warning about the input
        (models/audio/integrity.py), such as it being shorter than its header declares.
        `clock` hears where the time goes (models/stages.py)."""
        with clock.stage(DECODE):
            track = decode(source, limits or DecodeLimits())
        if on_warning is not None:
            for warning in track.warnings:
                on_warning(warning)
        check_format(self.fmt, track)
        units = len(self.trained) + len(self.plan.passes)
        progress = None if on_progress is None else clock.timed(OTHER, on_progress)

        def report(done: int, fraction: float) -> None:
            if progress is not None:
                progress((done + fraction) / units)

        for steps in self._stages():
            with clock.stage(PREPROCESS):
                if steps[0] in self.trained:
                    runner = clock.timed(MODEL, models.runner(steps[0]))
                    samples = self._trained_step(track, steps[0], models, runner, options, report)
                else:
                    samples = clean(track.samples, track.sample_rate, steps)
            # Rebinding `track` lets the uncleaned samples go before the next stage.
            track = replace(track, samples=samples)
        paths = write_stems(
            self.plan,
            track,
            models,
            out_dir,
            fmt=self.fmt,
            options=options,
            on_progress=lambda fraction: report(
                len(self.trained), fraction * len(self.plan.passes)
            ),
            clock=clock,
        )
        return Separated(paths, track.duration_s, track.warnings)

    def _trained_step(
        self,
        track: Track,
        step: str,
        models: PassModels,
        runner: WindowRunner,
        options: EngineOptions,
        report: Callable[[int, float], None],
    ) -> Samples:
        """The track's samples after `step` on its trained model, run by `runner`;
        `report(n, fraction)` hears how far the n-th trained step is."""
        number = self.trained.index(step)

        def step_progress(done: int, total: int) -> None:
            report(number, done / total)

        return clean_with_model(
            track,
            models.geometry(step),
            runner,
            models.routing.preprocessing[step].output,
            batch_size=options.batch_size,
            overlap=options.overlap,
            shifts=options.shifts,
            seed=options.seed,
            on_progress=step_progress,
        )

    def _stages(self) -> list[tuple[str, ...]]:
        """The steps in their order, grouped: each trained step alone, consecutive DSP
        steps together (one `clean` call)."""
        stages: list[tuple[str, ...]] = []
        for step in self.steps:
            if step not in self.trained and stages and stages[-1][0] not in self.trained:
                stages[-1] = (*stages[-1], step)
            else:
                stages.append((step,))
        return stages


def separate_file(
    source: str | Path | bytes,
    stems: Sequence[str] | None,
    out_dir: str | Path,
    *,
    fmt: str = "wav",
    store: ModelStore | None = None,
    options: EngineOptions = EngineOptions(),
    limits: DecodeLimits | None = None,
    preprocessing: Sequence[str] | None = None,
    on_progress: Progress | None = None,
    on_warning: Callable[[str], None] | None = None,
    clock: StageClock = NO_CLOCK,
) -> dict[str, Path]:
    """Separate an audio file into `stems`, after the named preprocessing steps, with
    every model in this process; return the written file of each stem. See
    `TrackJob.run` for `on_warning` and `clock`; loading the models counts as LOAD."""
    store = store or ModelStore(load_routing())
    job = TrackJob.of(stems, store.routing, fmt=fmt, preprocessing=preprocessing)
    device = resolve_device(options.device)
    separated = job.run(
        source,
        LocalModels(store, device, options.precision, clock),
        out_dir,
        limits=limits,
        clean=functools.partial(preprocess, device=device.type),
        options=options,
        on_progress=on_progress,
        on_warning=on_warning,
        clock=clock,
    )
    return separated.paths


def write_stems(
    plan: Plan,
    track: Track,
    models: PassModels,
    out_dir: str | Path,
    *,
    fmt: str = "wav",
    options: EngineOptions = EngineOptions(),
    on_progress: Progress | None = None,
    clock: StageClock = NO_CLOCK,
) -> dict[str, Path]:
    """Run `plan` on a decoded (and cleaned) track and write each stem to
    `out_dir/<stem>.<fmt>`; on any failure no file of this run is left. `clock` hears
    where the time goes (models/stages.py)."""
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {stem: folder / f"{stem}.{fmt}" for stem in plan.stems}
    encoders: dict[str, StemEncoder] = {}
    try:
        with clock.stage(ENCODE):
            for stem, path in paths.items():
                encoders[stem] = StemEncoder(
                    path,
                    fmt,
                    sample_rate=track.sample_rate,
                    channels=track.channels,
                    layout=track.layout,
                )
        run_plan(
            plan, track, models, encoders, options=options, on_progress=on_progress, clock=clock
        )
    except BaseException:
        # A half-written stem is worse than none: remove every file of this run.
        for encoder in encoders.values():
            encoder.close()
        for path in paths.values():
            path.unlink(missing_ok=True)
        raise
    with clock.stage(ENCODE):
        for encoder in encoders.values():
            encoder.close()
    return paths


def check_format(fmt: str, track: Track) -> None:
    """Refuse, before any work, an output format that cannot hold the input's shape."""
    try:
        check_supported(fmt, track.sample_rate, track.channels)
    except ValueError as exc:
        raise AudioError(f"{exc}; ask for wav, which holds any input") from exc


def run_plan(
    plan: Plan,
    track: Track,
    models: PassModels,
    encoders: Mapping[str, StemEncoder],
    *,
    options: EngineOptions = EngineOptions(),
    on_progress: Progress | None = None,
    clock: StageClock = NO_CLOCK,
) -> None:
    """Run every pass of `plan` on `track`, writing requested stems to `encoders`.

    A derived stem whose model stems all come from one pass is computed beside them,
    block by block; one that draws on several passes is summed into a whole-track
    array as the passes go and written at the end. `clock` hears where the time goes.
    """
    cascade_inputs = {step.input for step in plan.passes if step.input != MIXTURE}
    pass_of = {stem: number for number, step in enumerate(plan.passes) for stem in step.outputs}
    routing = models.routing
    combinations = [expand(stem, routing.derived) for stem in plan.stems if stem in routing.derived]
    streamed: dict[int, list[Combination]] = {}
    summed: dict[str, tuple[Combination, Samples]] = {}
    for combination in combinations:
        passes = {pass_of[stem] for stem in combination.stems()}
        if len(passes) == 1:
            streamed.setdefault(passes.pop(), []).append(combination)
        else:
            share = sum(coefficient for stem, coefficient in combination.terms if stem == MIXTURE)
            summed[combination.name] = (combination, (share * track.samples).astype(np.float32))
    held: dict[str, torch.Tensor] = {}
    # Passes on the mixture share its conversion to their (rate, channels).
    mixtures: dict[tuple[int, int], torch.Tensor] = {}
    for number, step in enumerate(plan.passes):
        geometry = models.geometry(step.model)
        if step.input == MIXTURE:
            domain = (geometry.samplerate, geometry.audio_channels)
            if domain not in mixtures:
                with clock.stage(RESAMPLE):
                    mixtures[domain] = torch.from_numpy(to_model_input(track, *domain))
            mix = mixtures[domain]
        else:
            mix = held[step.input]
        writer = _PassWriter(
            step,
            track,
            geometry,
            encoders,
            streamed.get(number, []),
            summed,
            cascade_inputs,
            clock,
        )

        def report(done: int, total: int, number: int = number) -> None:
            if on_progress is not None:
                on_progress((number + done / total) / len(plan.passes))

        entry = routing.models[step.model]
        stream_track(
            geometry,
            models.runner(step.model),
            mix,
            writer.write,
            sources=[entry.outputs[stem] for stem in step.outputs],
            batch_size=options.batch_size,
            overlap=options.overlap,
            shifts=options.shifts,
            seed=options.seed,
            on_progress=report,
            clock=clock,
        )
        writer.finish()
        held.update(writer.held())
    with clock.stage(ENCODE):
        for name, (_combination, samples) in summed.items():
            for start in range(0, track.frames, WRITE_BLOCK):
                encoders[name].write(samples[:, start : start + WRITE_BLOCK])


class _PassWriter:
    """Takes one pass's blocks: converts stems to the output domain, computes derived
    stems beside them, encodes what was asked for, and holds stems for later passes."""

    def __init__(
        self,
        step: Pass,
        track: Track,
        geometry: Geometry,
        encoders: Mapping[str, StemEncoder],
        streamed: Sequence[Combination],
        summed: Mapping[str, tuple[Combination, Samples]],
        cascade_inputs: set[str],
        clock: StageClock = NO_CLOCK,
    ) -> None:
        self.step = step
        self.clock = clock
        self.track = track
        self.encoders = encoders
        self.streamed = streamed
        self.summed = summed
        self.position = 0  # output-domain frames written so far
        wanted = set(encoders)
        for combination in [*streamed, *(entry[0] for entry in summed.values())]:
            wanted.update(combination.stems())
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
                with self.clock.stage(DERIVE):
                    self.blocks[stem].append(block[index].clone())
            if stem in self.converters:
                with self.clock.stage(RESAMPLE):
                    converted[stem] = self.converters[stem].push(block[index].numpy())
        self._emit(converted)

    def finish(self) -> None:
        """Flush the converters so every stem has exactly the input's length."""
        with self.clock.stage(RESAMPLE):
            flushed = {stem: converter.finish() for stem, converter in self.converters.items()}
        self._emit(flushed)

    def held(self) -> dict[str, torch.Tensor]:
        """Whole model-domain stems that later passes take as input."""
        with self.clock.stage(DERIVE):
            return {stem: torch.cat(blocks, dim=-1) for stem, blocks in self.blocks.items()}

    def _emit(self, converted: dict[str, Samples]) -> None:
        if not converted:
            return
        frames = {piece.shape[-1] for piece in converted.values()}
        if len(frames) != 1:
            raise RuntimeError(f"stems of one pass fell out of step: {sorted(frames)}")
        count = frames.pop()
        span = slice(self.position, self.position + count)
        mixture = self.track.samples[:, span]
        with self.clock.stage(DERIVE):
            for combination in self.streamed:
                converted[combination.name] = combination.apply(converted, mixture)
            for combination, samples in self.summed.values():
                for stem, coefficient in combination.terms:
                    if stem in converted and stem != MIXTURE:
                        samples[:, span] += coefficient * converted[stem]
        with self.clock.stage(ENCODE):
            for stem, piece in converted.items():
                if stem in self.encoders:
                    self.encoders[stem].write(piece)
        self.position += count
