"""Mel-Band RoFormer against MSST: band layout, key lists, the tiny model's output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.families.msst.mel_band_roformer import MelBandRoformer, mel_bands
from models.families.msst.roformer import RoformerConfigError
from tests.models.families.msst.reference import (
    FIXTURES,
    assert_builds_msst_keys,
    build_on_meta,
    key_list,
    published_configs,
    read_config,
    tiny_forward,
    tiny_weights,
)

FAMILY = "mel_band_roformer"
TINY = read_config(FIXTURES / FAMILY / "tiny.yaml")
CONFIGS = [*published_configs(FAMILY), FIXTURES / FAMILY / "tiny.yaml"]


def _loaded(config_name: str, *, without: str | None = None, **change: object) -> MelBandRoformer:
    section = read_config(FIXTURES / FAMILY / config_name)["model"]
    model = MelBandRoformer.from_config({**section, **change})
    model.load_state_dict(tiny_weights(FAMILY, without=without), strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def tiny() -> MelBandRoformer:
    return _loaded("tiny.yaml")


@pytest.fixture(scope="module")
def tiny_output(tiny: MelBandRoformer) -> torch.Tensor:
    audio, _ = tiny_forward(FAMILY)
    with torch.inference_mode():
        output: torch.Tensor = tiny(audio)
    return output


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_the_bands_are_librosa_s_mel_filters(path: Path) -> None:
    section = read_config(path)["model"]
    layout = key_list(path)["mel_band_layout"]
    covered = mel_bands(
        sample_rate=section["sample_rate"],
        n_fft=section["stft_n_fft"],
        num_bands=section["num_bands"],
    )
    bands = []
    for band in covered:
        bins = np.flatnonzero(band)
        contiguous = bool(bins[-1] - bins[0] + 1 == len(bins))
        bands.append([int(bins[0]), int(bins[-1]), len(bins), contiguous])
    assert bands == layout["bands"]
    assert covered.sum(axis=0).tolist() == layout["num_bands_per_freq"]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_state_dict_keys_and_shapes_are_msst_s(path: Path) -> None:
    model = build_on_meta(lambda: MelBandRoformer.from_config(read_config(path)["model"]))
    assert_builds_msst_keys(path, model)


def test_the_rows_gathered_are_msst_s_freq_indices(tiny: MelBandRoformer) -> None:
    layout = key_list(FIXTURES / FAMILY / "tiny.yaml")["mel_band_layout"]
    head = layout["freq_indices_head"]
    assert len(tiny.rows) == layout["freq_indices_len"]
    assert tiny.rows[: len(head)].tolist() == head


def test_an_unknown_option_is_refused() -> None:
    with pytest.raises(RoformerConfigError, match="unknown model option 'mel_scale'"):
        MelBandRoformer.from_config({**TINY["model"], "mel_scale": "htk"})


def test_the_tiny_model_computes_msst_s_output(tiny_output: torch.Tensor) -> None:
    _, expected = tiny_forward(FAMILY)
    np.testing.assert_allclose(tiny_output.numpy(), expected, rtol=0, atol=1e-5)


def test_a_batch_of_one_equals_the_batch(tiny: MelBandRoformer, tiny_output: torch.Tensor) -> None:
    audio, _ = tiny_forward(FAMILY)
    with torch.inference_mode():
        single = tiny(audio[1:])
    torch.testing.assert_close(single, tiny_output[1:], rtol=0, atol=1e-6)


def test_the_output_holds_whole_hops_unless_asked_for_the_input_length(
    tiny: MelBandRoformer,
) -> None:
    audio, _ = tiny_forward(FAMILY)
    hop = TINY["model"]["stft_hop_length"]
    short = audio[:1, :, : 39 * hop + 8]
    matched = _loaded("tiny.yaml", match_input_audio_length=True)
    with torch.inference_mode():
        assert tiny(short).shape == (1, 2, 2, 39 * hop)
        assert matched(short).shape == (1, 2, 2, 39 * hop + 8)


def test_a_single_stem_model_drops_the_stem_axis(tiny_output: torch.Tensor) -> None:
    config = read_config(FIXTURES / FAMILY / "tiny_single_stem.yaml")
    assert config["training"]["target_instrument"] == "vocals"
    single = _loaded("tiny_single_stem.yaml", without="mask_estimators.1.")
    audio, _ = tiny_forward(FAMILY)
    with torch.inference_mode():
        output = single(audio)
    assert output.shape == (2, 2, audio.shape[-1])
    torch.testing.assert_close(output, tiny_output[:, 0], rtol=0, atol=1e-6)
