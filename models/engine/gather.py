"""Windows of several tracks in one forward pass, for a process that separates several
tracks at once on threads (a batch job's actor): the threaded counterpart of the service's
Separator deployment, which batches across tasks with Ray Serve's `@serve.batch`.

Each track's thread runs its job as usual, on `GatheredModels`; a runner call joins the
gathering and waits until the calls waiting for the same model and sources hold
`max_windows` windows, or every member thread is waiting, or the oldest call has waited
`wait_s`. Then one of the waiting threads runs the gathered windows in one
`separate_windows` call and hands each call its part; one forward pass runs at a time.
A thread that is decoding or encoding is a member that is not waiting, so the others wait
for it at most `wait_s`.

Written here because `@serve.batch` needs a Serve deployment and an event loop, and
neither torch nor the standard library gathers calls from threads into batches.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from models.engine.geometry import Geometry
from models.engine.track import WindowRunner
from models.stems.routing import Routing

if TYPE_CHECKING:  # models.run imports the engine; the engine must not import it back
    from models.run import PassModels

RunWindows = Callable[[str, Sequence[torch.Tensor], Sequence[str]], list[torch.Tensor]]
"""(model, windows, sources) to one result per window: the forward pass gathered calls share."""

DEFAULT_WAIT_S = 0.05  # as the Separator deployment's batch_wait_timeout_s


@dataclass
class _Call:
    """One runner call waiting in the gathering."""

    key: tuple[str, tuple[str, ...]]
    windows: list[torch.Tensor]
    since: float
    result: list[torch.Tensor] | None = None
    error: BaseException | None = None

    @property
    def answered(self) -> bool:
        return self.result is not None or self.error is not None


@dataclass
class WindowGatherer:
    """Gathers the runner calls of member threads into shared forward passes of `run`."""

    run: RunWindows
    max_windows: int = 8
    wait_s: float = DEFAULT_WAIT_S
    clock: Callable[[], float] = time.monotonic
    _condition: threading.Condition = field(default_factory=threading.Condition)
    _pending: list[_Call] = field(default_factory=list)
    _members: int = 0
    _running: bool = False
    passes: int = 0
    windows: int = 0

    def __post_init__(self) -> None:
        """Refuse bounds that would gather nothing."""
        if self.max_windows < 1 or self.wait_s < 0:
            raise ValueError("max_windows must be at least 1 and wait_s not negative")

    @property
    def waiting(self) -> int:
        """How many calls wait for a pass now."""
        with self._condition:
            return len(self._pending)

    @contextmanager
    def member(self) -> Iterator[None]:
        """Count the calling thread as one whose calls the gathering waits for."""
        with self._condition:
            self._members += 1
        try:
            yield
        finally:
            with self._condition:
                self._members -= 1
                self._condition.notify_all()  # those left may all be waiting now

    def separate(
        self, model: str, windows: Sequence[torch.Tensor], sources: Sequence[str]
    ) -> list[torch.Tensor]:
        """`run(model, windows, sources)`, possibly in one pass with other threads' calls."""
        call = _Call((model, tuple(sources)), list(windows), self.clock())
        with self._condition:
            self._pending.append(call)
            self._condition.notify_all()
            while not call.answered:
                batch = None if self._running else self._ready()
                if batch is not None:
                    self._run(batch)
                else:
                    self._condition.wait(None if self._running else self._patience())
        if call.error is not None:
            raise call.error
        assert call.result is not None
        return call.result

    def _ready(self) -> list[_Call] | None:
        """The calls to run now, if the oldest call's group may go."""
        if not self._pending:
            return None
        oldest = self._pending[0]
        batch: list[_Call] = []
        size = 0
        for call in self._pending:
            if call.key == oldest.key and (
                not batch or size + len(call.windows) <= self.max_windows
            ):
                batch.append(call)
                size += len(call.windows)
        full = size >= self.max_windows or len(batch) < sum(
            call.key == oldest.key for call in self._pending
        )
        everyone = len(self._pending) >= self._members
        if full or everyone or self._patience() <= 0:
            return batch
        return None

    def _patience(self) -> float:
        """Seconds the oldest waiting call may still wait for company."""
        return max(0.0, self._pending[0].since + self.wait_s - self.clock())

    def _run(self, batch: list[_Call]) -> None:
        """Run `batch` outside the lock (held on entry and on return); answer its calls."""
        for call in batch:
            self._pending.remove(call)
        self._running = True
        self._condition.release()
        try:
            model, sources = batch[0].key
            windows = [window for call in batch for window in call.windows]
            results = self.run(model, windows, sources)
            start = 0
            for call in batch:
                call.result = results[start : start + len(call.windows)]
                start += len(call.windows)
        except BaseException as exc:  # every call of the pass hears why it failed
            for call in batch:
                call.error = exc
        finally:
            self._condition.acquire()
            self._running = False
            self.passes += 1
            self.windows += sum(len(call.windows) for call in batch)
            self._condition.notify_all()


@dataclass
class GatheredModels:
    """`PassModels` whose runners gather through `gatherer`; the routing and each model's
    geometry are those of `models`."""

    models: PassModels
    gatherer: WindowGatherer
    threads: int | None = None

    @contextmanager
    def member(self) -> Iterator[None]:
        """The calling thread as a member of the gathering, its torch computing on
        `threads` threads (None: unchanged) for its decoding, overlap-add and passes."""
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        with self.gatherer.member():
            yield

    @property
    def routing(self) -> Routing:
        """The routing of `models`."""
        return self.models.routing

    def geometry(self, model: str) -> Geometry:
        """How `model` cuts a track."""
        return self.models.geometry(model)

    def runner(self, model: str) -> WindowRunner:
        """Runs windows through `model` in the gathering."""

        def run(windows: Sequence[torch.Tensor], sources: Sequence[str]) -> list[torch.Tensor]:
            return self.gatherer.separate(model, windows, sources)

        return run


def gathered(
    models: PassModels,
    *,
    max_windows: int = 8,
    wait_s: float = DEFAULT_WAIT_S,
    threads: int | None = None,
) -> GatheredModels:
    """`models` behind a gatherer of its own, whose forward passes are `models`' runners,
    computing on `threads` torch threads (None: torch's setting) in whichever member
    thread runs the pass (see models/engine/threads.py)."""

    def run(
        model: str, windows: Sequence[torch.Tensor], sources: Sequence[str]
    ) -> list[torch.Tensor]:
        if threads is not None and torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        return models.runner(model)(windows, sources)

    gatherer = WindowGatherer(run, max_windows=max_windows, wait_s=wait_s)
    return GatheredModels(models, gatherer, threads)
