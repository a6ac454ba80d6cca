"""BS-RoFormer against MSST: published key lists, the tiny model's output, single stem."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from models.families.msst.bs_roformer import BSRoformer
from models.families.msst.roformer import RoformerConfigError
from tests.models.families.msst.reference import (
    FIXTURES,
    assert_builds_msst_keys,
    build_on_meta,
    keys_and_shapes,
    published_configs,
    read_config,
    tiny_forward,
    tiny_weights,
)

FAMILY = "bs_roformer"
TINY = read_config(FIXTURES / FAMILY / "tiny.yaml")


def _loaded(config_name: str, *, without: str | None = None) -> BSRoformer:
    model = BSRoformer.from_config(read_config(FIXTURES / FAMILY / config_name)["model"])
    model.load_state_dict(tiny_weights(FAMILY, without=without), strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def tiny() -> BSRoformer:
    return _loaded("tiny.yaml")


@pytest.fixture(scope="module")
def tiny_output(tiny: BSRoformer) -> torch.Tensor:
    audio, _ = tiny_forward(FAMILY)
    with torch.inference_mode():
        output: torch.Tensor = tiny(audio)
    return output


@pytest.mark.parametrize(
    "path", [*published_configs(FAMILY), FIXTURES / FAMILY / "tiny.yaml"], ids=lambda p: p.stem
)
def test_state_dict_keys_and_shapes_are_msst_s(path: Path) -> None:
    model = build_on_meta(lambda: BSRoformer.from_config(read_config(path)["model"]))
    assert_builds_msst_keys(path, model)


def test_sage_attention_is_ignored_with_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    path = FIXTURES / FAMILY / "published" / "config_musdb18_bs_roformer_384_8_2_485100_sage.yaml"
    section = read_config(path)["model"]
    assert section["sage_attention"] is True
    with caplog.at_level(logging.WARNING):
        sage = build_on_meta(lambda: BSRoformer.from_config(section))
    assert "sage_attention is ignored" in caplog.text
    without = {key: value for key, value in section.items() if key != "sage_attention"}
    assert keys_and_shapes(sage) == keys_and_shapes(
        build_on_meta(lambda: BSRoformer.from_config(without))
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"rotary_theta": 100}, "unknown model option 'rotary_theta'"),
        ({"skip_connection": True}, "skip_connection=True is not supported"),
        ({"linear_transformer_depth": 1}, "linear_transformer_depth=1 is not supported"),
        ({"freqs_per_bands": (2, 2)}, "freqs_per_bands sum to 4, not the 257 bins"),
        ({"zero_dc": False}, "zero_dc=False is not supported"),
    ],
)
def test_a_network_it_cannot_build_is_refused(change: dict[str, object], message: str) -> None:
    with pytest.raises(RoformerConfigError, match=message):
        BSRoformer.from_config({**TINY["model"], **change})


def test_the_tiny_model_computes_msst_s_output(tiny_output: torch.Tensor) -> None:
    _, expected = tiny_forward(FAMILY)
    np.testing.assert_allclose(tiny_output.numpy(), expected, rtol=0, atol=1e-5)


def test_a_batch_of_one_equals_the_batch(tiny: BSRoformer, tiny_output: torch.Tensor) -> None:
    audio, _ = tiny_forward(FAMILY)
    with torch.inference_mode():
        single = tiny(audio[1:])
    torch.testing.assert_close(single, tiny_output[1:], rtol=0, atol=1e-6)


def test_any_length_comes_back_at_that_length(tiny: BSRoformer) -> None:
    audio, _ = tiny_forward(FAMILY)
    with torch.inference_mode():
        output = tiny(audio[:1, :, :5000])
    assert output.shape == (1, 2, 2, 5000)


def test_a_single_stem_model_keeps_the_stem_axis(tiny_output: torch.Tensor) -> None:
    config = read_config(FIXTURES / FAMILY / "tiny_single_stem.yaml")
    assert config["training"]["target_instrument"] == "vocals"
    single = _loaded("tiny_single_stem.yaml", without="mask_estimators.1.")
    audio, _ = tiny_forward(FAMILY)
    with torch.inference_mode():
        output = single(audio)
    assert output.shape == (2, 1, 2, audio.shape[-1])
    torch.testing.assert_close(output[:, 0], tiny_output[:, 0], rtol=0, atol=1e-6)
