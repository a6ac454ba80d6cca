"""The Separator deployment: one per model of the routing config, holding its model once
per replica and running segments (model windows) from every task in flight together.

Pipelines send single segments; `@serve.batch` gathers those that arrive within the wait
time into one forward pass (`models.engine.separate_windows`), so tasks share the
accelerator. Batch size and wait time come from `user_config` and change at runtime
through `reconfigure`. The forward pass runs in a worker thread so the replica keeps
answering health checks and queueing segments while the model computes.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from ray import serve

from models.engine import Geometry, resolve_device, separate_windows
from models.errors import SeparationError
from models.loading import load_model
from models.routing import load_routing
from models.threads import use_threads
from serve_app import metrics
from serve_app.settings import AppArgs

logger = logging.getLogger("ray.serve")

DEFAULT_BATCH_SIZE = 8
DEFAULT_WAIT_S = 0.05


@dataclass(frozen=True)
class SegmentJob:
    """One model window of one task, for the named model sources."""

    window: torch.Tensor  # (channels, window_length), normalised as the engine does
    sources: tuple[str, ...]
    task_id: str


@dataclass(frozen=True)
class ModelShape:
    """What a pipeline needs to cut a track for this model (a Geometry without the network)."""

    samplerate: int
    audio_channels: int
    sources: tuple[str, ...]
    segment_length: int


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=256)
class Separator:
    """Runs segments through one routed model, batched across tasks."""

    def __init__(self, model: str, args: AppArgs) -> None:
        entry = load_routing(Path(args.routing)).models[model]
        self.model = model
        self.device = resolve_device(args.engine.device)
        self.precision = args.engine.precision
        self.threads = use_threads(args.engine.threads)
        self.batches = 0
        self.sizes: Counter[int] = Counter()
        self.tasks_per_batch: Counter[int] = Counter()
        try:
            self.bag = load_model(
                entry.weights,
                model_dir=Path(args.model_dir) if args.model_dir else None,
                use_hub=args.use_hub,
                checksum=entry.checksum,
            )
        except SeparationError as failure:
            # Stay up to say why: the health check fails with this message, which
            # Serve shows in its status (it retries, then marks the deployment failed)
            # and /healthz reports, naming this deployment.
            self.failure: str | None = f"model {model!r} is not available: {failure}"
            logger.error("separator %s: %s", model, self.failure)
            return
        self.failure = None
        self.bag.to(self.device)
        self.geometry = Geometry.of(self.bag)
        logger.info("separator %s loaded on %s, %d torch threads", model, self.device, self.threads)

    def check_health(self) -> None:
        """Unhealthy while the model is not loaded."""
        if self.failure is not None:
            raise RuntimeError(self.failure)

    def reconfigure(self, config: dict[str, Any]) -> None:
        """Apply `user_config`: `max_batch_size` and `batch_wait_timeout_s`."""
        unknown = set(config) - {"max_batch_size", "batch_wait_timeout_s"}
        if unknown:
            raise ValueError(f"unknown Separator user_config keys: {sorted(unknown)}")
        # serve.batch adds these setters to the method; its type stubs do not say so.
        batched: Any = self.run_batch
        batched.set_max_batch_size(int(config.get("max_batch_size", DEFAULT_BATCH_SIZE)))
        batched.set_batch_wait_timeout_s(float(config.get("batch_wait_timeout_s", DEFAULT_WAIT_S)))

    def shape(self) -> ModelShape:
        """The model's geometry, for cutting tracks."""
        return ModelShape(
            samplerate=self.geometry.samplerate,
            audio_channels=self.geometry.audio_channels,
            sources=self.geometry.sources,
            segment_length=self.geometry.segment_length,
        )

    def valid_length(self, length: int) -> int:
        """The window length the model wants for `length` delivered frames."""
        return self.geometry.window_length(length)

    async def separate(self, job: SegmentJob) -> torch.Tensor:
        """The (sources, channels, window_length) output of one segment."""
        return await self.run_batch(job)

    @serve.batch(max_batch_size=DEFAULT_BATCH_SIZE, batch_wait_timeout_s=DEFAULT_WAIT_S)
    async def run_batch(self, jobs: list[SegmentJob]) -> list[torch.Tensor]:
        """One forward pass per distinct source list over the gathered segments."""
        tasks = len({job.task_id for job in jobs})
        self.batches += 1
        self.sizes[len(jobs)] += 1
        self.tasks_per_batch[tasks] += 1
        metrics.batch_size().observe(len(jobs), tags={"model": self.model})
        metrics.batch_tasks().observe(tasks, tags={"model": self.model})
        results: list[torch.Tensor | None] = [None] * len(jobs)
        groups: dict[tuple[str, ...], list[int]] = {}
        for position, job in enumerate(jobs):
            groups.setdefault(job.sources, []).append(position)
        for sources, positions in groups.items():
            outputs = await asyncio.to_thread(
                separate_windows,
                self.bag,
                [jobs[position].window for position in positions],
                sources=sources,
                device=self.device,
                precision=self.precision,
            )
            for position, output in zip(positions, outputs, strict=True):
                results[position] = output
        return [result for result in results if result is not None]

    def batch_stats(self) -> dict[str, Any]:
        """Counts of batch sizes and of distinct tasks per batch since the replica started."""
        return {
            "batches": self.batches,
            "sizes": dict(self.sizes),
            "tasks_per_batch": dict(self.tasks_per_batch),
        }
