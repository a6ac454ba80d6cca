"""The Ingress deployment: serves the HTTP API (serve_app/http/api.py) from Ray Serve.

It builds what the routes use (the task store, the rate limiter, the blob store, the API
keys, the routing) and answers the API's questions about the application it runs in
(`ServiceState`): which deployments are down or starting (serve_app/deployments/
health.py) and whether a model a request needs has failed to load, asking that model's
Separator. It tells the Pipeline when a task was created.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from models.stems.routing import Routing
from serve_app.deployments.health import deployment_states, model_state
from serve_app.deployments.separator import ModelState, ModelStatus, separator_name
from serve_app.http.api import build_api
from serve_app.http.auth import Authenticator
from serve_app.http.bodyqueue import pace_replica
from serve_app.http.extraction import ExtractionApi
from serve_app.http.probes import Probes
from serve_app.settings import AppArgs
from serve_app.store.admission import RateLimiter
from serve_app.store.blobs import BlobStore
from serve_app.store.choose import blob_store, task_store

READY_TRUSTED_S = 30.0


# A POST is short (parse, spool, one insert): 64 at once keep the disk busy without starving
# /healthz; 256 more may wait (a few seconds of backlog). Past that Serve answers 503 at once
# instead of letting latency grow.
@serve.deployment(
    ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64, max_queued_requests=256
)
@serve.ingress()
class Ingress:
    """The public HTTP API."""

    def __init__(
        self,
        args: AppArgs,
        routing: Routing,
        pipeline: DeploymentHandle,
        separators: dict[str, DeploymentHandle],
    ) -> None:
        self.args = args
        self.pipeline = pipeline
        self.separators = separators
        self.ready_at: dict[str, float] = {}  # when each model was last seen ready
        self.routing = routing
        self.store = task_store(args)
        self.limiter = RateLimiter(self.store.engine, args.limits.conversions_per_minute)
        self.blobs: BlobStore = blob_store(args)
        self.auth = Authenticator(args.auth.all_keys(), enabled=args.auth.enabled)
        self.app_name = serve.get_replica_context().app_name
        pace_replica()  # request bodies reach this replica only as fast as it reads them

    def __serve_build_asgi_app__(self) -> FastAPI:
        """The API's app for this replica; Serve calls this once, after `__init__`."""
        extractions = ExtractionApi(
            self.args,
            routing=self.routing,
            store=self.store,
            limiter=self.limiter,
            blobs=self.blobs,
            auth=self.auth,
            state=self,
            wake=self.pipeline.wake.remote,
        )
        probes = Probes(self.store, self, self.args.data_path(), self.args.limits.min_free_bytes)
        return build_api(extractions, probes)

    async def model_failure(self, models: Iterable[str]) -> str | None:
        """Why one of these models cannot serve, if one cannot. A model still loading,
        or whose replica has not answered yet, can: the task waits for it."""
        states = await asyncio.gather(*(self._model_state(model) for model in sorted(models)))
        failed = [state.reason for state in states if state.status == ModelStatus.FAILED]
        return failed[0] if failed else None

    async def _model_state(self, model: str) -> ModelState:
        """The model's state; one seen ready is trusted for READY_TRUSTED_S, so that a busy
        Separator's queue does not delay every POST (a loaded model rarely goes away)."""
        seen = self.ready_at.get(model)
        if seen is not None and time.monotonic() - seen < READY_TRUSTED_S:
            return ModelState(model, ModelStatus.READY)
        state = await model_state(self.separators[model], model)
        if state.status == ModelStatus.READY:
            self.ready_at[model] = time.monotonic()
        return state

    async def down(self) -> dict[str, str]:
        """The deployments Serve reports unhealthy or failed, and why."""
        return (await asyncio.to_thread(deployment_states, self.app_name)).down

    async def waiting(self) -> dict[str, str]:
        """The deployments down or starting, and each running Separator whose model is not
        loaded, and why."""
        deployments = await asyncio.to_thread(deployment_states, self.app_name)
        waiting = deployments.waiting()
        asked = [m for m in self.separators if separator_name(m) in deployments.running]
        states = await asyncio.gather(
            *(model_state(self.separators[model], model) for model in asked)
        )
        for state in states:
            if state.status != ModelStatus.READY:
                waiting[separator_name(state.model)] = state.reason or state.status.value
        return waiting
