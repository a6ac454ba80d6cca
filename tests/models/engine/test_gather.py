"""The window gatherer: calls of member threads share forward passes, never mix models or
sources, go alone when full or after waiting, and every call of a failed pass hears why;
tracks separated on threads through it write what they write one at a time."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from models.audio.decode import decode
from models.engine.gather import WindowGatherer, gathered
from models.run import LocalModels, ModelStore, TrackJob
from models.stems.routing import load_routing
from tests.models.test_run import write_input
from tests.waiting import wait_until

LONG_S = 600.0  # a wait no test sits out: a pass that runs did so for another reason


class Recorder:
    """A forward pass that doubles each window and records what each pass held."""

    def __init__(self) -> None:
        self.passes: list[tuple[str, int, tuple[str, ...]]] = []
        self.fail = False

    def __call__(
        self, model: str, windows: Sequence[torch.Tensor], sources: Sequence[str]
    ) -> list[torch.Tensor]:
        self.passes.append((model, len(windows), tuple(sources)))
        if self.fail:
            raise RuntimeError("out of memory")
        return [window * 2 for window in windows]


def on_threads(*calls: Callable[[], object]) -> list[object]:
    """Run each call on a thread of its own; their results, in order."""
    with ThreadPoolExecutor(len(calls)) as pool:
        futures = [pool.submit(call) for call in calls]
        return [future.result(timeout=60) for future in futures]


def member_call(
    gatherer: WindowGatherer, model: str, windows: int, sources: tuple[str, ...] = ("a",)
) -> Callable[[], list[torch.Tensor]]:
    """A member thread's body: one call of `windows` windows filled with their number."""

    def call() -> list[torch.Tensor]:
        with gatherer.member():
            return gatherer.separate(
                model, [torch.full((2, 4), float(n)) for n in range(windows)], sources
            )

    return call


def test_calls_of_all_members_share_one_pass_without_waiting() -> None:
    recorder = Recorder()
    gatherer = WindowGatherer(recorder, max_windows=16, wait_s=LONG_S)
    barrier = threading.Barrier(3)

    def call(windows: int) -> list[torch.Tensor]:
        with gatherer.member():
            barrier.wait(timeout=60)  # all three are members before any calls
            return gatherer.separate("m", [torch.full((2, 4), float(windows))] * windows, ["a"])

    results = on_threads(lambda: call(1), lambda: call(2), lambda: call(3))
    # Only "every member waits" lets a pass run before LONG_S: one pass, all six windows.
    assert recorder.passes == [("m", 6, ("a",))]
    for windows, result in zip((1, 2, 3), results, strict=True):
        assert isinstance(result, list) and len(result) == windows
        assert all(torch.equal(part, torch.full((2, 4), 2.0 * windows)) for part in result)


def test_a_call_outside_any_member_runs_at_once() -> None:
    recorder = Recorder()
    gatherer = WindowGatherer(recorder, wait_s=LONG_S)
    result = gatherer.separate("m", [torch.ones(1, 3)], ["a"])
    assert torch.equal(result[0], torch.full((1, 3), 2.0))
    assert (gatherer.passes, gatherer.windows) == (1, 1)


def test_a_member_that_is_busy_is_waited_for_only_wait_s() -> None:
    recorder = Recorder()
    gatherer = WindowGatherer(recorder, wait_s=0.05)
    with gatherer.member():  # this thread is a member that never calls
        (result,) = on_threads(member_call(gatherer, "m", 1))
    assert isinstance(result, list) and len(result) == 1
    assert recorder.passes == [("m", 1, ("a",))]


def idle_member(
    gatherer: WindowGatherer, joined: threading.Barrier, leave: threading.Event
) -> Callable[[], None]:
    """A member thread's body that makes no call: it joins, then leaves when told."""

    def idle() -> None:
        with gatherer.member():
            joined.wait(timeout=60)
            leave.wait(timeout=60)

    return idle


def test_a_member_leaving_lets_the_waiting_call_go() -> None:
    recorder = Recorder()
    gatherer = WindowGatherer(recorder, wait_s=LONG_S)
    joined, leave = threading.Barrier(2), threading.Event()

    def caller() -> list[torch.Tensor]:
        with gatherer.member():
            joined.wait(timeout=60)
            return gatherer.separate("m", [torch.ones(1, 2)], ["a"])

    with ThreadPoolExecutor(2) as pool:
        pool.submit(idle_member(gatherer, joined, leave))
        call = pool.submit(caller)
        wait_until(lambda: gatherer.waiting, lambda waiting: waiting == 1, timeout_s=60)
        assert recorder.passes == []  # it waits for the idle member
        leave.set()
        assert len(call.result(timeout=60)) == 1
    assert recorder.passes == [("m", 1, ("a",))]


def test_a_full_batch_goes_without_waiting_and_passes_hold_at_most_max_windows() -> None:
    recorder = Recorder()
    gatherer = WindowGatherer(recorder, max_windows=2, wait_s=LONG_S)
    joined, leave = threading.Barrier(2), threading.Event()

    def caller() -> list[torch.Tensor]:
        with gatherer.member():
            joined.wait(timeout=60)
            try:
                return gatherer.separate("m", [torch.ones(1, 2)] * 3, ["a"])
            finally:
                leave.set()

    results = on_threads(idle_member(gatherer, joined, leave), caller)
    # A call larger than max_windows is full by itself and goes alone, whole, while the
    # other member is still idle.
    assert isinstance(results[1], list) and len(results[1]) == 3
    assert recorder.passes == [("m", 3, ("a",))]


def test_models_and_sources_are_never_mixed_in_a_pass() -> None:
    recorder = Recorder()
    gatherer = WindowGatherer(recorder, max_windows=16, wait_s=LONG_S)
    barrier = threading.Barrier(4)

    def call(model: str, sources: tuple[str, ...]) -> list[torch.Tensor]:
        with gatherer.member():
            barrier.wait(timeout=60)
            return gatherer.separate(model, [torch.ones(1, 2)], sources)

    on_threads(
        lambda: call("m", ("a",)),
        lambda: call("m", ("b",)),
        lambda: call("n", ("a",)),
        lambda: call("m", ("a",)),
    )
    assert sorted(recorder.passes) == [("m", 1, ("b",)), ("m", 2, ("a",)), ("n", 1, ("a",))]


def test_every_call_of_a_failed_pass_hears_why_and_the_gathering_goes_on() -> None:
    recorder = Recorder()
    recorder.fail = True
    gatherer = WindowGatherer(recorder, max_windows=16, wait_s=LONG_S)
    barrier = threading.Barrier(2)

    def call() -> str:
        with gatherer.member():
            barrier.wait(timeout=60)
            try:
                gatherer.separate("m", [torch.ones(1, 2)], ["a"])
            except RuntimeError as exc:
                return str(exc)
            return "no error"

    assert on_threads(call, call) == ["out of memory", "out of memory"]
    assert recorder.passes == [("m", 2, ("a",))]
    recorder.fail = False
    assert len(gatherer.separate("m", [torch.ones(1, 2)], ["a"])) == 1


def test_bounds_are_checked() -> None:
    with pytest.raises(ValueError, match="max_windows"):
        WindowGatherer(Recorder(), max_windows=0)
    with pytest.raises(ValueError, match="wait_s"):
        WindowGatherer(Recorder(), wait_s=-1)


def test_tracks_on_threads_write_what_they_write_alone(tmp_path: Path, model_dir: Path) -> None:
    store = ModelStore(load_routing(), model_dir=model_dir, use_hub=False)
    job = TrackJob.of(["vocals", "drums"], store.routing)
    local = LocalModels(store, torch.device("cpu"))
    sources = []
    for number, rate in enumerate((44100, 48000)):
        path = tmp_path / f"song-{number}.wav"
        write_input(path, rate=rate, channels=2, layout="stereo", seconds=1.0 + 0.5 * number)
        sources.append(path)
        job.run(path, local, tmp_path / "alone" / path.stem)
    models = gathered(local, max_windows=8, wait_s=LONG_S, threads=1)

    def separate(path: Path) -> Callable[[], object]:
        def run() -> object:
            with models.member():
                assert torch.get_num_threads() == 1  # the member's thread computes on 1
                return job.run(path, models, tmp_path / "together" / path.stem)

        return run

    on_threads(*(separate(path) for path in sources))
    # Windows of different tracks shared passes.
    assert models.gatherer.passes < models.gatherer.windows
    for path in sources:
        for stem in ("vocals.wav", "drums.wav"):
            alone = decode(tmp_path / "alone" / path.stem / stem).samples
            together = decode(tmp_path / "together" / path.stem / stem).samples
            np.testing.assert_allclose(together, alone, rtol=0, atol=1.01 / 32768)
