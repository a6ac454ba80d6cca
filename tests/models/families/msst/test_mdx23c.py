"""MDX23C against MSST's own TFC_TDF_net: state-dict keys and shapes, strict load, forward."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models.engine.devices import precision_context
from models.families.msst.mdx23c import MDX23C, MDX23CConfig
from tests.models.families.msst.reference import read_config, tiny_network

FIXTURES = Path(__file__).parent / "fixtures" / "mdx23c"
PUBLISHED = sorted((FIXTURES / "published").glob("*.yaml"))


def key_shapes(path: Path) -> list[tuple[str, tuple[int, ...]]]:
    """The state-dict keys and shapes a keys.json records, in state_dict order."""
    entries = json.loads(path.read_text())["state_dict"]
    return [(key, tuple(shape)) for key, shape, *_ in entries]


def test_tiny_keys_and_shapes_are_msst_s() -> None:
    network = MDX23C.from_msst(read_config(FIXTURES / "tiny.yaml"))
    ours = [(k, tuple(v.shape)) for k, v in network.state_dict().items()]
    assert ours == key_shapes(FIXTURES / "tiny.keys.json")


@pytest.mark.parametrize("config", PUBLISHED, ids=lambda p: p.stem)
def test_published_keys_and_shapes_are_msst_s(config: Path) -> None:
    with torch.device("meta"):
        network = MDX23C.from_msst(read_config(config))
    ours = [(k, tuple(v.shape)) for k, v in network.state_dict().items()]
    assert ours == key_shapes(config.with_suffix(".keys.json"))
    recorded = json.loads(config.with_suffix(".keys.json").read_text())["parameter_count"]
    assert sum(p.numel() for p in network.parameters()) == recorded


def test_forward_equals_msst() -> None:
    network = tiny_network()
    forward = np.load(FIXTURES / "tiny_forward.npz")
    assert tuple(network.stems) == tuple(forward["instruments"])
    with torch.inference_mode():
        output = network(torch.from_numpy(forward["input"])).numpy()
    np.testing.assert_allclose(output, forward["output"], rtol=0, atol=1e-5)


def test_bf16_autocast_runs_and_stays_near_fp32() -> None:
    """The ISTFT takes the network's bf16 output (torch.complex refuses bf16)."""
    network = tiny_network()
    forward = np.load(FIXTURES / "tiny_forward.npz")
    audio = torch.from_numpy(forward["input"])
    with torch.inference_mode(), precision_context(torch.device("cpu"), "bf16"):
        output = network(audio)
    assert output.dtype == torch.float32
    assert not np.array_equal(output.numpy(), forward["output"])
    reference = forward["output"]
    np.testing.assert_allclose(
        output.numpy(), reference, rtol=0, atol=0.1 * np.abs(reference).max()
    )


def test_target_instrument_makes_one_stem() -> None:
    config = read_config(FIXTURES / "tiny.yaml")
    config["training"]["target_instrument"] = "vocals"
    network = MDX23C.from_msst(config)
    assert network.stems == ("vocals",)
    with torch.inference_mode():
        output = network.eval()(torch.zeros(1, 2, network.config.chunk_size))
    assert output.shape == (1, 1, 2, network.config.chunk_size)


def test_a_chunk_the_u_net_cannot_halve_is_refused() -> None:
    config = read_config(FIXTURES / "tiny.yaml")
    config["audio"]["chunk_size"] = 16384  # 65 frames, not a multiple of 2**3
    with pytest.raises(ValueError, match="frames"):
        MDX23CConfig.from_msst(config)
