"""The Ray Data stage that separates tracks: a callable class whose actors each load the
routed models once and run every track they are handed through `TrackJob`, the same job
path as `python -m models separate`, writing the stems straight to the output folder.

An actor runs up to `tracks` calls at once on threads (Ray Data's
`max_concurrent_calls_per_actor`), one track each; their segments meet in one
`WindowGatherer`, so a forward pass holds windows of every track the actor holds, as the
service's Separator batches across tasks, while the other threads decode and encode.

A track that cannot be separated (not audio, too long, anything that raises) becomes a
`failed` row with its reason, never an exception that would abort the dataset.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from models.audio.decode import DecodeLimits
from models.engine.devices import resolve_device
from models.engine.gather import gathered
from models.engine.threads import available_cores
from models.preprocess.steps import preprocess
from models.run import EngineOptions, LocalModels, ModelStore, TrackJob
from models.stems.routing import DEFAULT_ROUTING_PATH, Routing, load_routing
from serve_app.batch.outputs import open_output
from serve_app.batch.results import DONE, FAILED, TrackResult
from serve_app.batch.sources import local_copy
from serve_app.outbound.fetch import FetchLimits
from serve_app.outbound.netguard import OutboundPolicy
from serve_app.settings import AppArgs

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SeparationSpec:
    """What every track of a batch gets: stems (None: the defaults), format,
    preprocessing steps, the routing and where its weights are, the decode limits, how
    the engine runs, and the service's download limits and outbound policy for inputs
    that are `s3://` objects or `http(s)://` URLs."""

    stems: tuple[str, ...] | None = None
    fmt: str = "wav"
    preprocessing: tuple[str, ...] = ()
    routing: Path = DEFAULT_ROUTING_PATH
    model_dir: Path | None = None
    use_hub: bool = True
    limits: DecodeLimits = field(default_factory=DecodeLimits)
    options: EngineOptions = field(default_factory=lambda: EngineOptions(device="auto"))
    fetch: FetchLimits = field(default_factory=lambda: AppArgs().fetch)
    outbound: OutboundPolicy = field(default_factory=lambda: AppArgs().outbound)

    def job(self, routing: Routing | None = None) -> TrackJob:
        """The planned job on `routing` (default: the spec's file, read now); refuses an
        unknown stem, step or format."""
        routing = load_routing(self.routing) if routing is None else routing
        return TrackJob.of(self.stems, routing, fmt=self.fmt, preprocessing=self.preprocessing)


class TrackSeparator:
    """Separates the tracks of each batch into `output`; one instance per Ray actor, called
    from up to `tracks` threads at once."""

    def __init__(self, spec: SeparationSpec, output: str, tracks: int = 1) -> None:
        self.spec = spec
        self.output = open_output(output)
        store = ModelStore(
            load_routing(spec.routing), model_dir=spec.model_dir, use_hub=spec.use_hub
        )
        self.job = spec.job(store.routing)
        device = resolve_device(spec.options.device)
        # Ray sets OMP_NUM_THREADS to the actor's CPU share; the forward pass may use
        # every core the actor's process may run on, as the Separator's does.
        self.models = gathered(
            LocalModels(store, device, spec.options.precision),
            max_windows=spec.options.batch_size * tracks,
            threads=available_cores() if device.type == "cpu" else None,
        )
        self.clean = functools.partial(preprocess, device=device.type)
        for name in self.job.models:
            store.get(name)  # load now, once per actor, not inside the first track

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Separate each (source, track_id) of the batch; one JSON result row each."""
        with self.models.member():
            rows = [
                self.separate(str(source), str(track_id))
                for source, track_id in zip(batch["source"], batch["track_id"], strict=True)
            ]
        return {"row": np.array([row.to_json() for row in rows], dtype=object)}

    def separate(self, source: str, track_id: str) -> TrackResult:
        """Separate one track into its folder of the output and mark it done, or say why
        it failed."""
        started = time.monotonic()
        staging = self.output.staging(track_id)
        try:
            with local_copy(source, fetch=self.spec.fetch, policy=self.spec.outbound) as audio:
                separated = self.job.run(
                    audio,
                    self.models,
                    staging,
                    limits=self.spec.limits,
                    clean=self.clean,
                    options=self.spec.options,
                )
            row = TrackResult(
                input=source,
                track_id=track_id,
                status=DONE,
                duration_s=separated.duration_s,
                seconds=time.monotonic() - started,
                stems=tuple(path.name for path in separated.paths.values()),
            )
            self.output.commit(row, {path.name: path for path in separated.paths.values()})
            return row
        except Exception as exc:  # one bad track must not end the batch
            logger.warning("track %s (%s) failed: %s", track_id, source, exc)
            return TrackResult(
                input=source,
                track_id=track_id,
                status=FAILED,
                reason=f"{type(exc).__name__}: {exc}",
                seconds=time.monotonic() - started,
            )
        finally:
            self.output.discard(staging)
