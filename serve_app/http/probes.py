"""Liveness and readiness as `/healthz` and `/readyz` answer them.

The API asks the application it runs in how its deployments stand through `ServiceState`,
which the Ingress deployment answers from Serve (serve_app/deployments/health.py); the task
database and the data folder's free space it checks itself. Reasons are one line each and
never a traceback: an unauthenticated probe reads them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from starlette.responses import JSONResponse

from serve_app.store.faults import space_short
from serve_app.store.tasks import TaskStore

logger = logging.getLogger("ray.serve")


class ServiceState(Protocol):
    """How the deployments behind the API stand, in one line per deployment."""

    async def model_failure(self, models: Iterable[str]) -> str | None:
        """Why one of these models cannot serve, if one cannot: it failed to load. A model
        still loading, or whose replica has not answered yet, can: a task waits for it."""
        ...

    async def down(self) -> dict[str, str]:
        """The deployments that are unhealthy or failed, and why."""
        ...

    async def waiting(self) -> dict[str, str]:
        """What readiness waits for: deployments down or starting, models not loaded."""
        ...


class Probes:
    """Answers `/healthz` and `/readyz`."""

    def __init__(
        self, store: TaskStore, state: ServiceState, data_path: Path, min_free_bytes: int
    ) -> None:
        self.store = store
        self.state = state
        self.data_path = data_path
        self.min_free_bytes = min_free_bytes

    def space_short(self) -> str | None:
        """Why the data folder cannot take new work (below its free-space reserve)."""
        return space_short(self.data_path, self.min_free_bytes)

    async def healthz(self) -> JSONResponse:
        """Liveness: the database and every deployment of this application are up (200),
        else 503 naming what is down, in one line each. A data folder below its free-space
        reserve is reported under `warnings` (the service still serves status and files)."""
        tasks, down = await self._database()
        down.update(await self.state.down())
        warnings = {}
        short = await asyncio.to_thread(self.space_short)
        if short is not None:
            warnings["storage"] = short
        if down:
            return JSONResponse(
                {"status": "unhealthy", "down": down, "warnings": warnings}, status_code=503
            )
        return JSONResponse({"status": "ok", "tasks": tasks, "warnings": warnings})

    async def readyz(self) -> JSONResponse:
        """Readiness: 200 once the database answers, every deployment has a running
        replica (or is scaled to zero) and every running Separator has loaded its model;
        else 503 naming what is not ready and why, one line each."""
        _, waiting = await self._database()
        waiting.update(await self.state.waiting())
        if waiting:
            return JSONResponse({"status": "not ready", "waiting": waiting}, status_code=503)
        return JSONResponse({"status": "ready"})

    async def _database(self) -> tuple[dict[str, int], dict[str, str]]:
        """Tasks by status, and {"database": why} when the task database does not answer."""
        try:
            counts = await asyncio.to_thread(self.store.statistics.counts)
        except Exception as failure:
            logger.exception("health check: the task database does not answer")
            return {}, {"database": f"does not answer ({type(failure).__name__})"}
        return {status.value: count for status, count in counts.items()}, {}
