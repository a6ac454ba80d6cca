"""Calls from the Pipeline to replicas that may die before they answer.

Everything the Pipeline asks of another deployment is a pure function of its arguments: a
Separator's stems of a segment, its model's shape, the Preprocessor's cleaning of a track.
So when the replica dies mid-call (killed, out of memory, its node gone) the call is sent
again, `resends` times at most, and Serve routes it to a live replica, or holds it until a
replacement has started. Any other error is the call's own and is raised as it is.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ray.exceptions import RayActorError

logger = logging.getLogger("ray.serve")

# What a call to a replica raises when the replica died or left before answering
# (ActorDiedError and ActorUnavailableError are kinds of it).
REPLICA_GONE = RayActorError
RESENDS = 3
# A deployment handle's method call, e.g. `lambda: handle.shape.remote()`: Ray types it as a
# response or a response generator, though these calls all return a DeploymentResponse.
Call = Callable[[], Any]


def result(
    call: Call,
    what: str,
    *,
    sent: Any = None,
    resends: int = RESENDS,
) -> Any:
    """The answer to `call()`, blocking (from a worker thread, never the replica's event
    loop). `sent`: the first response, when the call went out already (segments are sent
    together so they can share a batch). `what` names the call in the log line of a resend,
    e.g. "task 1234: a Separator's segment"."""
    response = call() if sent is None else sent
    for attempt in range(resends + 1):
        try:
            return response.result()
        except REPLICA_GONE:
            if attempt == resends:
                raise
            logger.warning("%s: its replica died before answering; sent again", what)
            response = call()
    raise AssertionError("the loop above returns or raises")
