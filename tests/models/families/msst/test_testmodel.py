"""Random-weight MSST test models: written as published, read back through the real path.

Each tiny fixture config becomes a `<name>.yaml` and a checkpoint that the service's own
readers (`read_config`, `load_weights` with the sha256, a strict `load_into`) accept,
and the loaded network runs. Published configs are far too big to materialise here;
`build_network` builds them on the meta device and their keys must be MSST's.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.families.msst.checkpoint import load_into, load_weights
from models.families.msst.config import MsstConfigError, parse_config, read_config
from models.families.msst.networks import build_network
from models.families.msst.testmodel import MsstTestModel, make_msst_test_model
from tests.models.families.msst.reference import (
    FIXTURES,
    build_on_meta,
    key_list,
    keys_and_shapes,
    published_configs,
)

FAMILIES = ("bs_roformer", "mel_band_roformer", "mdx23c", "scnet")
PUBLISHED = [(family, path) for family in FAMILIES for path in published_configs(family)]


def tiny_config(family: str) -> Path:
    return FIXTURES / family / "tiny.yaml"


def read_back(family: str, model: MsstTestModel) -> tuple[torch.nn.Module, int, int]:
    """The network loaded from a written model, its chunk size and its stem count."""
    config = read_config(model.config_file, model_type=family)
    weights = load_weights(model.weights_file, model_name=family, expected_sha256=model.sha256)
    network = build_network(config)
    load_into(network, weights, model_name=family, path=model.weights_file)
    return network.eval(), config.chunk_size, len(config.output_names)


def weights_of(model: MsstTestModel) -> dict[str, torch.Tensor]:
    return load_weights(model.weights_file, model_name="test", expected_sha256=model.sha256)


@pytest.mark.parametrize("fmt", ["ckpt", "safetensors"])
@pytest.mark.parametrize("family", FAMILIES)
def test_written_model_loads_strictly_and_runs(family: str, fmt: str, tmp_path: Path) -> None:
    model = make_msst_test_model(family, tiny_config(family), tmp_path, name="tiny", fmt=fmt)
    assert model.config_file == tmp_path / "tiny.yaml"
    assert model.weights_file == tmp_path / f"tiny.{fmt}"
    assert model.config_file.read_bytes() == tiny_config(family).read_bytes()
    network, chunk_size, stems = read_back(family, model)
    audio = 0.25 * torch.randn(2, 2, chunk_size, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        output = network(audio)
    assert output.shape == (2, stems, 2, chunk_size)
    assert torch.isfinite(output).all()


def test_ckpt_is_a_bare_state_dict_of_every_key(tmp_path: Path) -> None:
    model = make_msst_test_model("bs_roformer", tiny_config("bs_roformer"), tmp_path, name="m")
    content = torch.load(model.weights_file, map_location="cpu", weights_only=True)
    expected = key_list(tiny_config("bs_roformer"))["state_dict"]
    assert [(key, list(value.shape)) for key, value in content.items()] == [
        (key, shape) for key, shape, *_ in expected
    ]
    assert all(value.dtype == torch.float32 for value in content.values())


def test_config_text_is_written_byte_for_byte(tmp_path: Path) -> None:
    text = tiny_config("mdx23c").read_text(encoding="utf-8") + "# été\n\n"
    model = make_msst_test_model("mdx23c", text, tmp_path, name="drumsep")
    assert model.config_file.read_bytes() == text.encode("utf-8")


@pytest.mark.parametrize("family", FAMILIES)
def test_seed_alone_decides_the_weights(family: str, tmp_path: Path) -> None:
    config = tiny_config(family)
    first = weights_of(make_msst_test_model(family, config, tmp_path / "a", name="m", seed=7))
    torch.manual_seed(12345)  # the caller's RNG state must not matter
    again = weights_of(make_msst_test_model(family, config, tmp_path / "b", name="m", seed=7))
    other = weights_of(make_msst_test_model(family, config, tmp_path / "c", name="m", seed=8))
    assert first.keys() == again.keys() == other.keys()
    assert all(torch.equal(first[key], again[key]) for key in first)
    trainable = [key for key in first if not key.endswith("rotary_embed.freqs")]
    assert all(not torch.equal(first[key], other[key]) for key in trainable)


def test_same_seed_writes_the_same_file(tmp_path: Path) -> None:
    config = tiny_config("mdx23c")
    first = make_msst_test_model("mdx23c", config, tmp_path / "a", name="m", fmt="safetensors")
    again = make_msst_test_model("mdx23c", config, tmp_path / "b", name="m", fmt="safetensors")
    assert first.sha256 == again.sha256


def test_writing_leaves_the_callers_rng_alone(tmp_path: Path) -> None:
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    make_msst_test_model("mdx23c", tiny_config("mdx23c"), tmp_path, name="m")
    assert torch.equal(torch.rand(4), expected)


def test_norm_gains_are_not_their_initial_value(tmp_path: Path) -> None:
    model = make_msst_test_model("bs_roformer", tiny_config("bs_roformer"), tmp_path, name="m")
    gains = [value for key, value in weights_of(model).items() if key.endswith("gamma")]
    assert gains and all(not torch.equal(gain, torch.ones_like(gain)) for gain in gains)


def test_another_format_replaces_the_old_weights(tmp_path: Path) -> None:
    config = tiny_config("mdx23c")
    make_msst_test_model("mdx23c", config, tmp_path, name="m", fmt="ckpt")
    model = make_msst_test_model("mdx23c", config, tmp_path, name="m", fmt="safetensors")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["m.safetensors", "m.yaml"]
    assert model.weights_file.suffix == ".safetensors"


@pytest.mark.parametrize("name", ["", ".", "..", "sub/model", "../model"])
def test_name_must_be_a_plain_file_name(name: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="plain file name"):
        make_msst_test_model("mdx23c", tiny_config("mdx23c"), tmp_path, name=name)


def test_unknown_format_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown weights format"):
        make_msst_test_model("mdx23c", tiny_config("mdx23c"), tmp_path, name="m", fmt="onnx")
    assert not any(tmp_path.iterdir())


def test_config_of_another_family_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(MsstConfigError, match=r"tiny\.yaml: cannot build a mdx23c network"):
        make_msst_test_model("mdx23c", tiny_config("bs_roformer"), tmp_path, name="tiny")
    assert not any(tmp_path.iterdir())


def test_unknown_model_type_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(MsstConfigError, match="unknown MSST model type"):
        make_msst_test_model("htdemucs", tiny_config("mdx23c"), tmp_path, name="m")


@pytest.mark.parametrize(
    ("family", "config"), PUBLISHED, ids=[f"{f}-{p.stem}" for f, p in PUBLISHED]
)
def test_published_config_builds_msst_s_keys(family: str, config: Path) -> None:
    parsed = parse_config(config.read_text(encoding="utf-8"), model_type=family)
    network = build_on_meta(lambda: build_network(parsed))
    expected = [(key, shape) for key, shape, *_ in key_list(config)["state_dict"]]
    assert keys_and_shapes(network) == expected
