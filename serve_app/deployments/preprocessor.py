"""The Preprocessor deployment: Denoise, Deecho and Dereverb (models/preprocess/steps.py) on a
whole decoded track, on the replica's device, in a worker thread so the replica keeps
answering health checks while it computes. Torch uses every core the replica may run on
unless `engine.threads` says otherwise (models/engine/threads.py)."""

from __future__ import annotations

import asyncio

import numpy as np
import numpy.typing as npt
from ray import serve

from models.engine.devices import resolve_device
from models.engine.threads import use_threads, with_threads
from models.preprocess.steps import preprocess
from serve_app.settings import EngineSettings


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=8)
class Preprocessor:
    """Cleans tracks before separation."""

    def __init__(self, engine: EngineSettings) -> None:
        self.device = resolve_device(engine.device).type
        self.threads = use_threads(engine.threads)

    async def clean(
        self, samples: npt.NDArray[np.float32], sample_rate: int, steps: tuple[str, ...]
    ) -> npt.NDArray[np.float32]:
        """The samples after the named steps, same shape."""
        return await asyncio.to_thread(
            with_threads, self.threads, preprocess, samples, sample_rate, steps, device=self.device
        )
