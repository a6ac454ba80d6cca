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
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from serve_app.replicas import REPLICA_GONE
from serve_app.separator import ModelState, ModelStatus

# How long a probe or a POST waits for a Separator to say how its model stands.
STATE_TIMEOUT_S = 2.0

DOWN_REASONS = {
    "UNHEALTHY": "unhealthy: its replicas fail their health checks (see the Serve logs)",
    "DEPLOY_FAILED": "failed: its replicas could not start (see the Serve logs)",
}


def deployments_down(app_name: str) -> dict[str, str]:
    """Deployments of the application that Serve reports unhealthy or failed. One still
    updating is not down: Serve also says so while replicas wait for a node or start
    slowly, and a rolling update must not fail a liveness probe."""
    deployments = _deployments(app_name)
    if deployments is None:
        return {"application": "not found in Serve's status"}
    return {
        name: DOWN_REASONS[_name(overview.status)]
        for name, overview in deployments.items()
        if _name(overview.status) in DOWN_REASONS
    }


def deployments_waiting(app_name: str) -> tuple[dict[str, str], set[str]]:
    """Deployments that cannot take work yet, with the reason, and the names of those
    with a running replica. A healthy deployment without replicas is scaled to zero and
    starts on demand: it is not waited for."""
    deployments = _deployments(app_name)
    if deployments is None:
        return {"application": "not found in Serve's status"}, set()
    waiting: dict[str, str] = {}
    running: set[str] = set()
    for name, overview in deployments.items():
        status = _name(overview.status)
        if _running_replicas(overview) > 0:
            running.add(name)
        elif status in DOWN_REASONS:
            waiting[name] = DOWN_REASONS[status]
        elif status != "HEALTHY":
            waiting[name] = "starting: no replica is running yet"
    return waiting, running


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


def _deployments(app_name: str) -> dict[str, Any] | None:
    application = serve.status().applications.get(app_name)
    return None if application is None else dict(application.deployments)


def _running_replicas(overview: Any) -> int:
    return sum(
        count for state, count in overview.replica_states.items() if _name(state) == "RUNNING"
    )


def _name(status: Any) -> str:
    """A Serve status or replica state as its name (Serve gives enums or plain strings)."""
    return str(getattr(status, "value", status))
