"""The Separator deployment: one per model of the routing config, holding its model once
per replica and running segments (model windows) from every task in flight together.

Pipelines send single segments; `@serve.batch` gathers those that arrive within the wait
time into one forward pass (`models.engine.batching.separate_windows`), so tasks share the
accelerator. Batch size and wait time come from `user_config` and change at runtime
through `reconfigure`. The forward pass runs in a worker thread so the replica keeps
answering health checks and queueing segments while the model computes.

The model loads in the background, so the replica answers `state()` at once: loading,
ready, or failed with a one-line reason a user can act on (the full error, with the
places looked in, goes to the log). A model that failed to load is tried again every
`engine.model_retry_s`, so weights put in place later are picked up without a redeploy;
meanwhile calls that need the model raise ModelUnavailableError at once instead of
waiting for a replica that will never serve them. A failed model does not fail the
health check: the replica is alive, and restarting it would not bring the weights.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

import torch
from ray import serve

from models.engine.batching import SeparationModel, separate_windows
from models.engine.devices import resolve_device, resolve_precision
from models.engine.geometry import Geometry
from models.engine.threads import use_threads, with_threads
from models.errors import ModelMissingError, ModelUnavailableError
from models.families import family
from models.stems.routing import ModelEntry
from serve_app.deployments import metrics
from serve_app.deployments.payload import SamplesPayload, from_payload, to_payload
from serve_app.settings import EngineSettings

logger = logging.getLogger("ray.serve")

DEFAULT_BATCH_SIZE = 8
DEFAULT_WAIT_S = 0.05


def separator_name(model: str) -> str:
    """The deployment name of a model's Separator, as config files name it."""
    return f"Separator_{model}"


@dataclass(frozen=True)
class SegmentJob:
    """One model window of one task, for the named model sources."""

    window: SamplesPayload  # (channels, window_length), normalised as the engine does
    sources: tuple[str, ...]
    task_id: str


class ModelStatus(StrEnum):
    """Where a Separator's model stands."""

    LOADING = "loading"  # its first load has not ended yet
    READY = "ready"
    FAILED = "failed"  # the last load failed; it is tried again every model_retry_s
    STARTING = "starting"  # no replica has answered yet (said by callers, never a replica)


@dataclass(frozen=True)
class ModelState:
    """A model's status and, unless ready, why it cannot serve, in one line for users."""

    model: str
    status: ModelStatus
    reason: str | None = None


def unavailable_reason(model: str, failure: Exception, *, use_hub: bool) -> str:
    """Why `model` cannot serve and what to do, in one line without server paths."""
    prefix = f"model {model!r} is not available"
    if isinstance(failure, ModelMissingError):
        where = "in the model folder" + (" or on the Hugging Face hub" if use_hub else "")
        return (
            f"{prefix}: its weights were not found {where}. For a demo, `make test-model` "
            f"writes a random-weight {model}; for real weights, put {model}.yaml and its "
            "network files in the folder the `model_dir` setting names (see the README, "
            "Model weights)"
        )
    return (
        f"{prefix}: its weights could not be loaded ({type(failure).__name__}: a damaged file "
        "or a checksum mismatch); the service's log names the file"
    )


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=256)
class Separator:
    """Runs segments through one routed model, batched across tasks."""

    def __init__(
        self, entry: ModelEntry, engine: EngineSettings, *, model_dir: str | None, use_hub: bool
    ) -> None:
        self.model = entry.name
        self.entry = entry
        self.engine = engine
        self.model_dir = Path(model_dir) if model_dir else None
        self.use_hub = use_hub
        self.device = resolve_device(engine.device)
        self.precision = resolve_precision(engine.precision, self.device, family=entry.family)
        self.threads = use_threads(engine.threads)
        self.batches = 0
        self.windows = 0
        self.forward_s = 0.0  # wall seconds in separate_windows, this replica's model time
        self.sizes: Counter[int] = Counter()
        self.tasks_per_batch: Counter[int] = Counter()
        self.loaded: SeparationModel | None = None
        self.geometry: Geometry | None = None
        self.failure: str | None = None
        self.attempted = asyncio.Event()  # set once the first load has ended, either way
        self.loader = asyncio.get_running_loop().create_task(self._load_until_loaded())

    async def _load_until_loaded(self) -> None:
        while True:
            try:
                loaded = await asyncio.to_thread(self._load)
            except Exception as failure:
                self.failure = unavailable_reason(self.model, failure, use_hub=self.use_hub)
                logger.error(
                    "separator %s: %s; trying again in %g s",
                    self.model,
                    failure,
                    self.engine.model_retry_s,
                )
            else:
                self.loaded, self.geometry, self.failure = loaded, loaded.geometry, None
                self.attempted.set()
                logger.info(
                    "separator %s loaded on %s, %d torch threads",
                    self.model,
                    self.device,
                    self.threads,
                )
                return
            self.attempted.set()
            await asyncio.sleep(self.engine.model_retry_s)

    def _load(self) -> SeparationModel:
        loaded = family(self.entry.family).load(
            self.entry,
            model_dir=self.model_dir,
            use_hub=self.use_hub,
        )
        loaded.to(self.device)
        return loaded

    async def _loaded(self) -> tuple[SeparationModel, Geometry]:
        """The model, once its first load has ended; ModelUnavailableError if it failed."""
        await self.attempted.wait()
        if self.loaded is None or self.geometry is None:
            raise ModelUnavailableError(self.failure or f"model {self.model!r} is not available")
        return self.loaded, self.geometry

    def check_health(self) -> None:
        """Unhealthy only if the loader stopped without a model (a bug, not missing weights)."""
        if self.loader.done() and self.loaded is None:
            raise RuntimeError(f"the loader of model {self.model!r} stopped")

    async def state(self) -> ModelState:
        """Whether the model is loading, ready, or failed, and why."""
        if self.loaded is not None:
            return ModelState(self.model, ModelStatus.READY)
        if not self.attempted.is_set():
            return ModelState(self.model, ModelStatus.LOADING, f"model {self.model!r} is loading")
        return ModelState(self.model, ModelStatus.FAILED, self.failure)

    def reconfigure(self, config: dict[str, Any]) -> None:
        """Apply `user_config`: `max_batch_size` and `batch_wait_timeout_s`."""
        unknown = set(config) - {"max_batch_size", "batch_wait_timeout_s"}
        if unknown:
            raise ValueError(f"unknown Separator user_config keys: {sorted(unknown)}")
        # serve.batch adds these setters to the method; its type stubs do not say so.
        batched: Any = self.run_batch
        batched.set_max_batch_size(int(config.get("max_batch_size", DEFAULT_BATCH_SIZE)))
        batched.set_batch_wait_timeout_s(float(config.get("batch_wait_timeout_s", DEFAULT_WAIT_S)))

    async def shape(self) -> Geometry:
        """The model's geometry, for cutting tracks, without its `valid_length` (a method
        of the network, which stays here: ask `valid_length` for it)."""
        _, geometry = await self._loaded()
        return replace(geometry, valid_length=None)

    async def valid_length(self, length: int) -> int:
        """The window length the model wants for `length` delivered frames."""
        _, geometry = await self._loaded()
        return geometry.window_length(length)

    async def separate(self, job: SegmentJob) -> SamplesPayload:
        """The (sources, channels, window_length) output of one segment."""
        await self._loaded()
        return await self.run_batch(job)

    @serve.batch(max_batch_size=DEFAULT_BATCH_SIZE, batch_wait_timeout_s=DEFAULT_WAIT_S)
    async def run_batch(self, jobs: list[SegmentJob]) -> list[SamplesPayload]:
        """One forward pass per distinct source list over the gathered segments."""
        loaded, _ = await self._loaded()
        tasks = len({job.task_id for job in jobs})
        self.batches += 1
        self.windows += len(jobs)
        self.sizes[len(jobs)] += 1
        self.tasks_per_batch[tasks] += 1
        metrics.batch_size().observe(len(jobs), tags={"model": self.model})
        metrics.batch_tasks().observe(tasks, tags={"model": self.model})
        results: list[SamplesPayload | None] = [None] * len(jobs)
        groups: dict[tuple[str, ...], list[int]] = {}
        for position, job in enumerate(jobs):
            groups.setdefault(job.sources, []).append(position)
        for sources, positions in groups.items():
            started = time.perf_counter()
            outputs = await asyncio.to_thread(
                with_threads,
                self.threads,
                separate_windows,
                loaded,
                [from_payload(jobs[position].window) for position in positions],
                sources=sources,
                device=self.device,
                precision=self.precision,
            )
            self.forward_s += time.perf_counter() - started
            for position, output in zip(positions, outputs, strict=True):
                results[position] = to_payload(output)
        return [result for result in results if result is not None]

    def batch_stats(self) -> dict[str, Any]:
        """Counts of batch sizes and of distinct tasks per batch since the replica started,
        the windows run and the wall seconds of their forward passes (`forward_s`), and the
        threads torch computes on in this replica."""
        return {
            "torch_threads": torch.get_num_threads(),
            "batches": self.batches,
            "windows": self.windows,
            "forward_s": self.forward_s,
            "sizes": dict(self.sizes),
            "tasks_per_batch": dict(self.tasks_per_batch),
        }
