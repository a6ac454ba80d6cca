"""The Separator deployment on its own, in the test session's Ray: segments of several
tasks share batches, the batch size follows `user_config`, results equal a direct engine
call, and segments cross the handle as float32 numpy arrays, bit-identical end to end."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from ray import serve
from ray.serve.handle import DeploymentHandle

from models.engine.batching import separate_windows
from models.engine.geometry import Geometry
from models.engine.threads import available_cores, with_threads
from models.run import ModelStore
from models.stems.routing import load_routing
from serve_app.app import deployment
from serve_app.deployments.payload import from_payload, to_payload
from serve_app.deployments.pipeline import RemoteModels
from serve_app.deployments.separator import SegmentJob, Separator
from serve_app.settings import EngineSettings
from tests.serve_app.service import Service


def test_batches_follow_user_config_and_match_the_engine(service: Service, model_dir: Path) -> None:
    entry = load_routing().models["htdemucs_6s"]
    bound = (
        deployment(Separator)
        .options(
            name="SeparatorUnderTest",
            user_config={"max_batch_size": 3, "batch_wait_timeout_s": 1.0},
        )
        .bind(entry, EngineSettings(), model_dir=str(model_dir), use_hub=False)
    )
    handle = serve.run(bound, name="separator-under-test", route_prefix=None)
    try:
        shape: Geometry = handle.shape.remote().result()
        length = handle.valid_length.remote(shape.segment_length).result()
        generator = torch.Generator().manual_seed(0)
        windows = [torch.randn(2, length, generator=generator) for _ in range(6)]
        responses = [
            handle.separate.remote(
                SegmentJob(to_payload(window), ("vocals", "drums"), f"task{n % 3}")
            )
            for n, window in enumerate(windows)
        ]
        outputs = [response.result() for response in responses]
        stats = handle.batch_stats.remote().result()
    finally:
        serve.delete("separator-under-test")
    # Ray starts this half-CPU actor with OMP_NUM_THREADS=1; torch still uses every core.
    assert stats["torch_threads"] == available_cores()
    assert max(stats["sizes"]) <= 3
    assert sum(size * count for size, count in stats["sizes"].items()) == 6
    assert stats["windows"] == 6
    assert stats["forward_s"] > 0
    assert max(stats["tasks_per_batch"]) > 1
    model = ModelStore(load_routing(), model_dir=model_dir, use_hub=False).get("htdemucs_6s")
    expected = separate_windows(model, windows, sources=("vocals", "drums"))
    for output, reference in zip(outputs, expected, strict=True):
        torch.testing.assert_close(from_payload(output), reference)


@pytest.fixture
def one_at_a_time(service: Service, model_dir: Path) -> Iterator[DeploymentHandle]:
    """A Separator of htdemucs_6s that runs every segment in a batch of its own."""
    entry = load_routing().models["htdemucs_6s"]
    bound = (
        deployment(Separator)
        .options(name="SeparatorOneAtATime", user_config={"max_batch_size": 1})
        .bind(entry, EngineSettings(), model_dir=str(model_dir), use_hub=False)
    )
    handle = serve.run(bound, name="separator-one-at-a-time", route_prefix=None)
    try:
        yield handle
    finally:
        serve.delete("separator-one-at-a-time")


def test_segments_cross_as_arrays_and_come_back_bit_identical(
    one_at_a_time: DeploymentHandle, model_dir: Path
) -> None:
    handle = one_at_a_time
    models = RemoteModels(load_routing(), {"htdemucs_6s": handle}, "task0")
    shape = models.geometry("htdemucs_6s")
    length = shape.window_length(shape.segment_length)
    generator = torch.Generator().manual_seed(1)
    windows = [torch.randn(2, length, generator=generator) for _ in range(2)]
    sources = ("vocals", "drums", "guitar")
    # What crosses the handle: float32 arrays, read back as views of the object store.
    reply = handle.separate.remote(SegmentJob(to_payload(windows[0]), sources, "task0")).result()
    assert isinstance(reply, np.ndarray) and reply.dtype == np.float32
    assert reply.shape == (len(sources), 2, length)
    assert not reply.flags.writeable
    outputs = models.runner("htdemucs_6s")(windows, sources)
    model = ModelStore(load_routing(), model_dir=model_dir, use_hub=False).get("htdemucs_6s")
    for window, output in zip(windows, outputs, strict=True):
        # The same batch of one on as many threads as the replica's: the same arithmetic.
        (expected,) = with_threads(
            available_cores(), separate_windows, model, [window], sources=sources
        )
        assert torch.equal(output, expected)
    assert np.array_equal(reply, outputs[0].numpy())
