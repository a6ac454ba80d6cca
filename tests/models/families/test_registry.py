"""A second family, registered in the registry, runs through the engine without demucs.

This module is itself the family's module: `FAMILY` below is what the registry finds.
Its network splits a mix into a quarter and three quarters of it, sample by sample, so
whatever the cuts, fades and padding, the overlap-added stems must be exactly those
shares of the mix; its tiling (trapezoid fades, reflect padding, no shifts, no
normalising) differs from demucs's in every field.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from models.engine.batching import SeparationModel, separate_windows
from models.engine.cuts import SegmentTiling
from models.engine.geometry import Geometry
from models.engine.track import stream_track
from models.errors import ModelMissingError
from models.families import FAMILIES, family
from models.run import LocalModels, ModelStore
from models.stems.routing import ModelEntry, parse_routing

SHARES = {"low": 0.25, "high": 0.75}
CONTEXT = 48  # extra frames the toy network sees on each side of a delivered segment


def trapezoid(frames: int) -> torch.Tensor:
    """Linear fades over a tenth of the segment at each end, never quite zero."""
    fade = frames // 10
    ramp = torch.arange(1, fade + 1, dtype=torch.float32) / (fade + 1)
    return torch.cat([ramp, torch.ones(frames - 2 * fade), ramp.flip(0)])


TOY_TILING = SegmentTiling(weight=trapezoid, padding="reflect", max_shift_s=0.0, normalise=False)


def with_context(length: int) -> int:
    return length + 2 * CONTEXT


class ToyNetwork(torch.nn.Module):
    """A fixed 1x1 convolution per source: each stem is a share of the input."""

    def __init__(self) -> None:
        super().__init__()
        self.shares = torch.nn.Parameter(torch.tensor(list(SHARES.values())))

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return batch[:, None] * self.shares[None, :, None, None]


class ToyModel:
    """The toy network as the engine's SeparationModel."""

    def __init__(self) -> None:
        self.network = ToyNetwork().eval()
        self.geometry = Geometry(
            samplerate=8000,
            audio_channels=2,
            sources=tuple(SHARES),
            segment_length=1000,
            valid_length=with_context,
            tiling=TOY_TILING,
        )

    def to(self, device: torch.device) -> None:
        self.network.to(device)

    def forward(self, batch: torch.Tensor, sources: Sequence[str]) -> torch.Tensor:
        indices = [self.geometry.sources.index(name) for name in sources]
        return self.network(batch)[:, indices]


class ToyFamily:
    """Loads the toy model when its weights name it; nothing is read from disk."""

    def load(
        self, entry: ModelEntry, *, model_dir: Path | None = None, use_hub: bool = True
    ) -> SeparationModel:
        if entry.weights != "toy":
            raise ModelMissingError(entry.weights, ["the toy family"])
        return ToyModel()


FAMILY = ToyFamily()


@pytest.fixture(autouse=True)
def registered(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setitem(FAMILIES, "toy", __name__)
    yield


def routing_of(weights: str = "toy") -> ModelStore:
    document = {
        "models": {
            "shares": {
                "family": "toy",
                "weights": weights,
                "outputs": {"bass": "low", "guitar": "high"},
            }
        }
    }
    return ModelStore(parse_routing(document), use_hub=False)


def test_the_registry_finds_the_family_and_the_routing_accepts_it() -> None:
    assert family("toy") is FAMILY
    store = routing_of()
    assert store.routing.models["shares"].family == "toy"
    assert isinstance(store.get("shares"), ToyModel)


def test_its_load_errors_reach_the_caller() -> None:
    with pytest.raises(ModelMissingError, match="absent"):
        routing_of("absent").get("shares")


def test_auto_precision_is_fp32_for_a_family_not_measured_in_bf16() -> None:
    store = routing_of()
    assert LocalModels(store, torch.device("cpu"), "auto").precision_of("shares") == "fp32"
    assert LocalModels(store, torch.device("cpu"), "bf16").precision_of("shares") == "bf16"
    with pytest.raises(ValueError, match="precision must be one of"):
        LocalModels(store, torch.device("cpu"), "fp16")


@pytest.mark.parametrize("batch_size", [1, 3])
def test_a_track_runs_through_cuts_and_overlap_add(batch_size: int) -> None:
    models = LocalModels(routing_of(), torch.device("cpu"))
    mix = torch.randn(2, 4321, generator=torch.Generator().manual_seed(0))
    blocks: list[torch.Tensor] = []
    stream_track(
        models.geometry("shares"),
        models.runner("shares"),
        mix,
        lambda _start, block: blocks.append(block),
        sources=["high", "low"],
        batch_size=batch_size,
        overlap=0.3,
    )
    stems = torch.cat(blocks, dim=-1)
    torch.testing.assert_close(stems[0], 0.75 * mix)
    torch.testing.assert_close(stems[1], 0.25 * mix)


def test_the_separator_protocol_runs_windows_and_ships_the_tiling() -> None:
    model = family("toy").load(routing_of().routing.models["shares"])
    model.to(torch.device("cpu"))
    # The Separator sends its Geometry, tiling included, to Pipelines through Ray.
    shipped = replace(model.geometry, valid_length=None)
    assert pickle.loads(pickle.dumps(shipped)) == shipped
    assert shipped.tiling == TOY_TILING
    window = torch.arange(1.0, 1 + with_context(1000)).repeat(2, 1)
    (low,) = separate_windows(model, [window], sources=["low"])
    assert low.shape == (1, 2, with_context(1000))
    torch.testing.assert_close(low[0], 0.25 * window)
