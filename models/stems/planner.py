"""The planner: turns the stems a caller asked for into the model passes and derivations to run.

A plan is worked out before any audio is touched, so that an impossible request is
refused up front. Each model runs at most once per request however many stems it
serves; a pass delivers every stem asked of it, including stems that are only
needed as the input of a later pass (cascades) or of a derivation. Passes come in
dependency order and derivations run after all passes, also in dependency order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from models.errors import RoutingError, UnservedStemError
from models.stems.catalogue import (
    ADDING_A_MODEL,
    ALL_STEMS,
    MIXTURE,
    NO_PUBLIC_MODEL,
    parse_stems,
)
from models.stems.routing import DerivedStem, Routing

T = TypeVar("T")


@dataclass(frozen=True)
class Pass:
    """One run of one model over `input`, delivering `outputs` in catalogue order."""

    model: str
    input: str
    outputs: tuple[str, ...]


@dataclass(frozen=True)
class Plan:
    """What was asked for, and the passes and derivations that produce it."""

    stems: tuple[str, ...]
    passes: tuple[Pass, ...]
    derived: tuple[DerivedStem, ...]


def make_plan(stems: Sequence[str] | None, routing: Routing) -> Plan:
    """Plan the passes and derivations for `stems` (None or empty: the default stems)."""
    requested = parse_stems(stems)
    served = routing.served_stems()
    unserved = [stem for stem in requested if stem not in served]
    if unserved:
        raise UnservedStemError(_unserved_message(unserved, served))

    outputs: dict[str, set[str]] = {}
    derivations: set[str] = set()

    def require(stem: str) -> None:
        """Record what must run for `stem`, then what its inputs need in turn."""
        if stem == MIXTURE or stem in derivations:
            return
        derivation = routing.derived.get(stem)
        if derivation is not None:
            derivations.add(stem)
            for name in (derivation.base, *derivation.minus):
                require(name)
            return
        model = routing.model_for(stem)
        if model is None:
            raise RoutingError(f"stem {stem!r} is needed as an input but no model outputs it")
        delivered = outputs.setdefault(model.name, set())
        if stem not in delivered:
            delivered.add(stem)
            require(model.input)

    for stem in requested:
        require(stem)

    passes = [
        Pass(
            model=name,
            input=routing.models[name].input,
            outputs=tuple(stem for stem in ALL_STEMS if stem in outputs[name]),
        )
        for name in routing.models
        if name in outputs
    ]
    derived = [entry for name, entry in routing.derived.items() if name in derivations]
    return Plan(
        stems=requested,
        passes=_dependency_order(passes, lambda step: (step.input,), lambda step: step.outputs),
        derived=_dependency_order(
            derived, lambda entry: (entry.base, *entry.minus), lambda entry: (entry.name,)
        ),
    )


def _unserved_message(unserved: Sequence[str], served: Sequence[str]) -> str:
    """Name each unserved stem; for those no public checkpoint serves, say how to add one."""
    message = f"no model is configured for {', '.join(map(repr, unserved))}"
    unknown = [stem for stem in unserved if stem in NO_PUBLIC_MODEL]
    if unknown:
        message += (
            f"; no public checkpoint is known for {', '.join(map(repr, unknown))}: "
            f"to add one, {ADDING_A_MODEL}"
        )
    return f"{message}; this routing serves: {', '.join(served) or 'nothing'}"


def _dependency_order(
    steps: Iterable[T],
    inputs: Callable[[T], Iterable[str]],
    outputs: Callable[[T], Iterable[str]],
) -> tuple[T, ...]:
    """Order `steps` so each comes after the steps producing its inputs, else keeping order.

    Inputs no step here produces (the mixture, or pass outputs for derivations) are
    treated as available from the start.
    """
    pending = list(steps)
    producible = {stem for step in pending for stem in outputs(step)}
    ready: set[str] = set()
    ordered: list[T] = []
    while pending:
        step = next(
            (
                step
                for step in pending
                if all(name in ready or name not in producible for name in inputs(step))
            ),
            None,
        )
        if step is None:
            raise RoutingError("the routing has a dependency cycle; validate it with parse_routing")
        pending.remove(step)
        ordered.append(step)
        ready.update(outputs(step))
    return tuple(ordered)
