"""SCNet against MSST: published key lists, the tiny model's output, and its demix runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.families.msst.chunking import demix
from models.families.msst.config import MsstConfigError, parse_config
from models.families.msst.networks import build_network
from models.families.msst.scnet import Band, SCNet, SCNetConfigError, band_edges
from tests.models.families.msst.reference import (
    FIXTURES,
    assert_builds_msst_keys,
    build_on_meta,
    published_configs,
    read_config,
    tiny_forward,
    tiny_weights,
)

FAMILY = "scnet"
TINY = read_config(FIXTURES / FAMILY / "tiny.yaml")
DEMIX = np.load(FIXTURES / FAMILY / "tiny_demix.npz")


@pytest.fixture(scope="module")
def tiny() -> SCNet:
    model = SCNet.from_config(TINY["model"])
    model.load_state_dict(tiny_weights(FAMILY), strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def tiny_output(tiny: SCNet) -> torch.Tensor:
    audio, _ = tiny_forward(FAMILY)
    with torch.inference_mode():
        output: torch.Tensor = tiny(audio)
    return output


@pytest.mark.parametrize(
    "path", [*published_configs(FAMILY), FIXTURES / FAMILY / "tiny.yaml"], ids=lambda p: p.stem
)
def test_state_dict_keys_and_shapes_are_msst_s(path: Path) -> None:
    model = build_on_meta(lambda: SCNet.from_config(read_config(path)["model"]))
    assert_builds_msst_keys(path, model)


def test_the_tiny_model_computes_msst_s_output(tiny_output: torch.Tensor) -> None:
    _, expected = tiny_forward(FAMILY)
    assert tiny_output.shape == expected.shape
    np.testing.assert_allclose(tiny_output.numpy(), expected, rtol=0, atol=1e-5)


def test_a_batch_of_one_equals_the_batch(tiny: SCNet, tiny_output: torch.Tensor) -> None:
    audio, _ = tiny_forward(FAMILY)
    with torch.inference_mode():
        single = tiny(audio[1:])
    torch.testing.assert_close(single, tiny_output[1:], rtol=0, atol=1e-6)


def test_a_part_of_a_hop_comes_back_at_that_length(tiny: SCNet) -> None:
    # The fixture's chunk is 125 whole hops of 128; 5000 samples end inside a hop.
    audio, _ = tiny_forward(FAMILY)
    with torch.inference_mode():
        output = tiny(audio[:1, :, :5000])
    assert output.shape == (1, 2, 2, 5000)
    assert torch.isfinite(output).all()


@pytest.mark.parametrize("run", [str(r) for r in DEMIX["run_names"]])
def test_demix_equals_msst(tiny: SCNet, run: str) -> None:
    track = torch.from_numpy(DEMIX[str(DEMIX[f"{run}__input"])])
    settings = {
        key: int(DEMIX[f"{run}__{key}"]) for key in ("chunk_size", "num_overlap", "batch_size")
    }
    output = demix(tiny, track, **settings).numpy()
    np.testing.assert_allclose(output, DEMIX[f"{run}__output"], rtol=0, atol=1e-5)


def test_bands_split_the_bins_as_msst_does() -> None:
    # The published small config at nfft 4096: 2049 bins.
    bands = [Band(0.175, 1, 3), Band(0.392, 4, 4), Band(0.433, 16, 16)]
    assert band_edges(2049, bands) == [(0, 359), (359, 1162), (1162, 2049)]
    assert bands[1].padding(803) == (0, 1)
    assert bands[2].padding(887) == (4, 5)
    assert bands[0].padding(359) == (1, 1)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"num_heads": 4}, r"unknown model options \['num_heads'\]"),
        ({"num_dplayer": 3}, "num_dplayer must be even"),
        ({"dims": [2, 8]}, r"dims\[0\] must be 2 \* audio_channels = 4"),
        ({"dims": [4]}, "dims needs at least two entries"),
        ({"band_SR": [0.5, 0.5]}, "band_SR needs 3 entries"),
        ({"conv_depths": [1, 1, 1, 1]}, "conv_depths needs 3 entries"),
        ({"conv_kernel": 4}, "conv_kernel must be odd"),
    ],
)
def test_a_network_it_cannot_build_is_refused(change: dict[str, object], message: str) -> None:
    with pytest.raises(SCNetConfigError, match=message):
        SCNet.from_config({**TINY["model"], **change})


def test_the_model_and_audio_channels_must_agree() -> None:
    text = (FIXTURES / FAMILY / "tiny.yaml").read_text(encoding="utf-8")
    mono = text.replace("  num_channels: 2\n", "  num_channels: 1\n", 1)
    config = parse_config(mono, model_type=FAMILY, source="mono.yaml")
    with pytest.raises(MsstConfigError, match=r"mono\.yaml: model\.audio_channels is 2"):
        build_network(config)
