"""Where a track's time goes: wall seconds per stage of the job path.

A `StageClock` adds up wall seconds per stage name. Stages nest exclusively per thread:
inside `with clock.stage(OVERLAP_ADD):`, a `with clock.stage(MODEL):` pauses the outer
stage, so each second counts for the innermost stage only and the stages of one thread
add up to its wall time. Threads keep their own nesting and share the totals. Code that
is not measured takes `NO_CLOCK`, which does nothing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

FETCH = "fetch"  # the input downloaded, or the upload opened
LOAD = "load"  # models loaded (in this process only)
DECODE = "decode"
PREPROCESS = "preprocess"  # cleaning before separation (its model forward counts as MODEL)
RESAMPLE = "resample"  # to the model's rate and channels and back
MODEL = "model"  # the forward pass, or the wait for a Separator's answer
OVERLAP_ADD = "overlap_add"  # cutting windows and adding their outputs back together
DERIVE = "derive"  # derived stems (such as mixture - vocals) and cascade inputs
ENCODE = "encode"  # stem files written
STORE = "store"  # stem files put in the blob store
OTHER = "other"  # the rest: planning, progress writes, waiting for models
STAGES = (
    FETCH,
    LOAD,
    DECODE,
    PREPROCESS,
    RESAMPLE,
    MODEL,
    OVERLAP_ADD,
    DERIVE,
    ENCODE,
    STORE,
    OTHER,
)

P = ParamSpec("P")
R = TypeVar("R")


@dataclass
class _Running:
    """A stage open on a thread, and since when its time counts."""

    name: str
    since: float


class StageClock:
    """Wall seconds per stage, thread-safe, with exclusive nesting per thread; `now` is
    the time source (a fake one in tests)."""

    def __init__(self, now: Callable[[], float] = time.perf_counter) -> None:
        self._now = now
        self._lock = threading.Lock()
        self._seconds: dict[str, float] = {}
        self._local = threading.local()

    def stage(self, name: str) -> AbstractContextManager[None]:
        """A block whose time counts for `name`, pausing the stage it is nested in."""
        return _Stage(self, name)

    def timed(self, name: str, function: Callable[P, R]) -> Callable[P, R]:
        """`function`, its calls counted for stage `name`."""

        def call(*args: P.args, **kwargs: P.kwargs) -> R:
            with self.stage(name):
                return function(*args, **kwargs)

        return call

    def add(self, seconds: Mapping[str, float]) -> None:
        """Add seconds per stage measured elsewhere (another clock's `totals()`)."""
        with self._lock:
            for name, value in seconds.items():
                self._seconds[name] = self._seconds.get(name, 0.0) + value

    def totals(self) -> dict[str, float]:
        """Seconds per stage so far, stages still open counted up to their last pause."""
        with self._lock:
            return dict(self._seconds)

    def _enter(self, name: str) -> None:
        stack = self._stack()
        now = self._now()
        if stack:
            self._bank(stack[-1].name, now - stack[-1].since)
        stack.append(_Running(name, now))

    def _leave(self) -> None:
        stack = self._stack()
        now = self._now()
        running = stack.pop()
        self._bank(running.name, now - running.since)
        if stack:
            stack[-1].since = now

    def _stack(self) -> list[_Running]:
        """This thread's open stages, innermost last."""
        stack: list[_Running] = self._local.__dict__.setdefault("stack", [])
        return stack

    def _bank(self, name: str, seconds: float) -> None:
        with self._lock:
            self._seconds[name] = self._seconds.get(name, 0.0) + seconds


class _Stage:
    """One `with clock.stage(name):` block."""

    def __init__(self, clock: StageClock, name: str) -> None:
        self.clock = clock
        self.name = name

    def __enter__(self) -> None:
        self.clock._enter(self.name)

    def __exit__(self, *_exc: object) -> None:
        self.clock._leave()


_NOTHING: AbstractContextManager[None] = nullcontext()


class _NoClock(StageClock):
    """Measures nothing, at the cost of a call."""

    def stage(self, name: str) -> AbstractContextManager[None]:
        """A block that counts nothing."""
        return _NOTHING

    def timed(self, name: str, function: Callable[P, R]) -> Callable[P, R]:
        """`function` itself."""
        return function

    def add(self, seconds: Mapping[str, float]) -> None:
        """Nothing is kept."""


NO_CLOCK: StageClock = _NoClock()


def shares(seconds: Mapping[str, float]) -> dict[str, float]:
    """Each stage's fraction of the seconds of all stages (empty when none passed)."""
    total = sum(seconds.values())
    if total <= 0:
        return {}
    return {name: value / total for name, value in seconds.items()}


def describe(seconds: Mapping[str, float]) -> str:
    """The total and each stage's seconds and share, largest first, on one line, e.g.
    `4.000 s: model 3.200 s (80.0 %), decode 0.400 s (10.0 %), ...`."""
    fractions = shares(seconds)
    ordered = sorted(seconds.items(), key=lambda item: -item[1])
    stages = ", ".join(
        f"{name} {value:.3f} s ({100 * fractions.get(name, 0.0):.1f} %)" for name, value in ordered
    )
    return f"{sum(seconds.values()):.3f} s: {stages}"
