"""The Separator deployment on its own, in the test session's Ray: segments of several
tasks share batches, the batch size follows `user_config`, and results equal a direct
engine call."""

from __future__ import annotations

from pathlib import Path

import torch
from ray import serve

from models.engine.batching import separate_windows
from models.engine.geometry import Geometry
from models.engine.threads import available_cores
from models.run import ModelStore
from models.stems.routing import load_routing
from serve_app.app import deployment
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
            handle.separate.remote(SegmentJob(window, ("vocals", "drums"), f"task{n % 3}"))
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
        torch.testing.assert_close(output, reference)
