"""Liveness and readiness of the application, for `/healthz` and `/readyz`.

Liveness asks whether the service's processes are up: the task database answers and Serve
reports no deployment unhealthy or failed. Readiness asks whether it can do its work now:
also every deployment has a running replica (or is scaled to zero on purpose) and every
running Separator has its model loaded. Reasons are one line each, in our words: Serve's
own messages carry tracebacks and server paths, which an unauthenticated probe must not
see (they stay in Serve's logs).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from serve_app.deployments.replicas import REPLICA_GONE
from serve_app.deployments.separator import ModelState, ModelStatus

# How long a probe or a POST waits for a Separator to say how its model stands.
STATE_TIMEOUT_S = 2.0

DOWN_REASONS = {
    "UNHEALTHY": "unhealthy: its replicas fail their health checks (see the Serve logs)",
    "DEPLOY_FAILED": "failed: its replicas could not start (see the Serve logs)",
}


@dataclass(frozen=True)
class Deployments:
    """The application's deployments as Serve reports them, in our words."""

    down: dict[str, str]  # unhealthy or failed: what liveness reports
    starting: dict[str, str]  # no replica running yet, and not down
    running: frozenset[str]  # those with a running replica

    def waiting(self) -> dict[str, str]:
        """What readiness waits for: the deployments down or still starting."""
        return {**self.down, **self.starting}


def deployment_states(app_name: str) -> Deployments:
    """Serve's status of the application's deployments. One still updating is not down:
    Serve also says so while replicas wait for a node or start slowly, and a rolling
    update must not fail a liveness probe. A healthy deployment without replicas is
    scaled to zero and starts on demand: it is not starting either."""
    application = serve.status().applications.get(app_name)
    if application is None:
        return Deployments({"application": "not found in Serve's status"}, {}, frozenset())
    down: dict[str, str] = {}
    starting: dict[str, str] = {}
    running: set[str] = set()
    for name, overview in application.deployments.items():
        status = _name(overview.status)
        if status in DOWN_REASONS:
            down[name] = DOWN_REASONS[status]
        if _running_replicas(overview) > 0:
            running.add(name)
        elif status not in DOWN_REASONS and status != "HEALTHY":
            starting[name] = "starting: no replica is running yet"
    return Deployments(down, starting, frozenset(running))


async def model_state(
    handle: DeploymentHandle, model: str, timeout_s: float = STATE_TIMEOUT_S
) -> ModelState:
    """What the model's Separator says of it; STARTING when no replica answers in time, or
    the one asked died before answering (callers ask again)."""

    async def ask() -> ModelState:
        state: ModelState = await handle.state.remote()
        return state

    try:
        return await asyncio.wait_for(ask(), timeout_s)
    except (TimeoutError, REPLICA_GONE):
        return ModelState(
            model, ModelStatus.STARTING, f"model {model!r}: no Separator replica has answered yet"
        )


def _running_replicas(overview: Any) -> int:
    return sum(
        count for state, count in overview.replica_states.items() if _name(state) == "RUNNING"
    )


def _name(status: Any) -> str:
    """A Serve status or replica state as its name (Serve gives enums or plain strings)."""
    return str(getattr(status, "value", status))
