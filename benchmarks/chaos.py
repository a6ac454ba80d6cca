"""Chaos for the soak: kill a random process of a running application every interval.

The kinds are the application's Ray actors: the replicas of its Serve deployments
(`ingress`, `pipeline`, `preprocessor`, `separator`: any `Separator_<model>`) and its webhook
dispatcher (`dispatcher`, the detached actor `<app>-webhooks`). A kill is `ray.kill`, as
abrupt as a crash: Serve replaces a killed replica, Ray restarts the dispatcher. Kinds are
taken in a random order, each once per round, so that even a short run hits every kind; the
replica within a kind is random too. Needs a connection to the application's Ray cluster.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from dataclasses import dataclass

import ray

KINDS = ("separator", "pipeline", "preprocessor", "ingress", "dispatcher")
REPLICA_PREFIX = "SERVE_REPLICA::"  # Serve's replica actor names: PREFIX + app#deployment#id


@dataclass(frozen=True)
class Victim:
    """A live actor of the application that chaos may kill."""

    kind: str
    name: str
    namespace: str


@dataclass(frozen=True)
class Kill:
    """One kill: when (seconds since the run began), what kind, which actor; `missed` when
    no actor of the kind was alive to kill (e.g. its replacement was still starting)."""

    at: float
    kind: str
    actor: str | None

    @property
    def missed(self) -> bool:
        """No actor of the kind was there to kill."""
        return self.actor is None


def kind_of(app: str, actor_name: str) -> str | None:
    """The chaos kind of a named actor of `app`, or None when it is not one of them."""
    if actor_name == f"{app}-webhooks":
        return "dispatcher"
    if not actor_name.startswith(REPLICA_PREFIX):
        return None
    parts = actor_name.removeprefix(REPLICA_PREFIX).split("#")
    if len(parts) != 3 or parts[0] != app:
        return None
    deployment = parts[1]
    if deployment.startswith("Separator_"):
        return "separator"
    return deployment.lower() if deployment.lower() in KINDS else None


def victims(app: str, kinds: Sequence[str]) -> list[Victim]:
    """The live actors of `app` of the given kinds, in the connected Ray cluster."""
    found = []
    for actor in ray.util.list_named_actors(all_namespaces=True):
        if not isinstance(actor, dict):
            continue
        kind = kind_of(app, actor["name"])
        if kind is not None and kind in kinds:
            found.append(Victim(kind, actor["name"], actor["namespace"]))
    return found


def kill_one(app: str, kind: str, rng: random.Random) -> str | None:
    """Kill a random live actor of `kind`; its name, or None when none was alive."""
    candidates = victims(app, (kind,))
    rng.shuffle(candidates)
    for victim in candidates:
        try:
            handle = ray.get_actor(victim.name, namespace=victim.namespace)
        except ValueError:  # it died between the listing and now
            continue
        # Serve replaces a replica itself; the dispatcher is restarted by Ray (max_restarts).
        ray.kill(handle, no_restart=kind != "dispatcher")
        return victim.name
    return None


def kind_order(kinds: Sequence[str], rng: random.Random) -> list[str]:
    """One round: every kind once, in a random order."""
    order = list(kinds)
    rng.shuffle(order)
    return order


async def chaos(
    app: str,
    kinds: Sequence[str],
    every_s: float,
    stop: asyncio.Event,
    *,
    started: float,
    seed: int,
) -> list[Kill]:
    """Kill an actor every `every_s` seconds until `stop` is set; the kills made. `started`
    is the run's start on the loop's clock, for the kills' times."""
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown or not kinds:
        raise ValueError(f"chaos kinds must be some of {', '.join(KINDS)}; got {unknown or kinds}")
    if every_s <= 0:
        raise ValueError(f"the chaos interval must be positive, got {every_s}")
    loop = asyncio.get_running_loop()
    rng = random.Random(seed)
    kills: list[Kill] = []
    order: list[str] = []
    while True:
        try:
            await asyncio.wait_for(stop.wait(), every_s)
            return kills
        except TimeoutError:
            pass  # the interval passed: time for the next kill
        if not order:
            order = kind_order(kinds, rng)
        kind = order.pop()
        actor = await asyncio.to_thread(kill_one, app, kind, rng)
        kills.append(Kill(loop.time() - started, kind, actor))
