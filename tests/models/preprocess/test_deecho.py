"""Deecho removes discrete echoes from synthetic music and leaves echo-free music alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.errors import PreprocessError
from models.preprocess.deecho import DeechoOptions, deecho
from models.testing.quality import echo_level_db, sdr_db
from models.testing.synth import Samples, add_echo, render_music

RATE = 44100
SECONDS = 8.0
ECHOES = [(0.08, 0.3), (0.15, 0.6), (0.27, 0.45), (0.4, 0.6), (0.4, 0.3), (0.08, 0.6)]


@pytest.fixture(scope="module")
def music() -> dict[int, Samples]:
    """Clean clips by seed, rendered once for the whole file."""
    return {seed: render_music(SECONDS, RATE, seed) for seed in (0, 1, 2, 3)}


def _frames(delay_s: float) -> int:
    return round(delay_s * RATE)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize(("delay_s", "gain"), ECHOES)
def test_echo_level_falls_by_10_db(
    music: dict[int, Samples], seed: int, delay_s: float, gain: float
) -> None:
    clean = music[seed]
    echoed = add_echo(clean, delay_s, gain, RATE)
    before = echo_level_db(echoed, _frames(delay_s), clean)
    after = echo_level_db(deecho(echoed, RATE), _frames(delay_s), clean)
    assert before - after >= 10


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize(("delay_s", "gain"), ECHOES)
def test_sdr_improves_by_6_db(
    music: dict[int, Samples], seed: int, delay_s: float, gain: float
) -> None:
    clean = music[seed]
    echoed = add_echo(clean, delay_s, gain, RATE)
    assert sdr_db(clean, deecho(echoed, RATE)) - sdr_db(clean, echoed) >= 6


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_clean_music_passes_through(music: dict[int, Samples], seed: int) -> None:
    clean = music[seed]
    assert sdr_db(clean, deecho(clean, RATE)) >= 20


@pytest.mark.parametrize("period_s", [0.25, 0.5])
def test_sample_exact_loop_is_not_an_echo(music: dict[int, Samples], period_s: float) -> None:
    # A loop repeats at its period like an echo would; its rahmonics give it away.
    bar = music[0][:, : _frames(period_s)]
    loop = np.tile(bar, (1, round(SECONDS / period_s)))
    assert sdr_db(loop, deecho(loop, RATE)) >= 20


def test_two_echoes_are_both_removed(music: dict[int, Samples]) -> None:
    clean = music[2]
    echoed = add_echo(add_echo(clean, 0.11, 0.4, RATE), 0.23, 0.3, RATE)
    cleaned = deecho(echoed, RATE)
    for delay_s in (0.11, 0.23):
        drop = echo_level_db(echoed, _frames(delay_s), clean) - echo_level_db(
            cleaned, _frames(delay_s), clean
        )
        assert drop >= 10
    assert sdr_db(clean, cleaned) - sdr_db(clean, echoed) >= 6


def test_inverted_echo_is_removed(music: dict[int, Samples]) -> None:
    clean = music[3]
    echoed = add_echo(clean, 0.12, -0.4, RATE)
    assert sdr_db(clean, deecho(echoed, RATE)) - sdr_db(clean, echoed) >= 6


def test_max_echoes_limits_removal(music: dict[int, Samples]) -> None:
    clean = music[2]
    echoed = add_echo(add_echo(clean, 0.11, 0.4, RATE), 0.23, 0.3, RATE)
    cleaned = deecho(echoed, RATE, DeechoOptions(max_echoes=1))
    # The stronger echo goes, the weaker one stays.
    assert echo_level_db(cleaned, _frames(0.11), clean) < -20
    assert echo_level_db(cleaned, _frames(0.23), clean) > -12


def test_echo_outside_delay_range_is_left(music: dict[int, Samples]) -> None:
    clean = music[0]
    echoed = add_echo(clean, 0.3, 0.5, RATE)
    options = DeechoOptions(min_delay_s=0.02, max_delay_s=0.2)
    assert np.array_equal(deecho(echoed, RATE, options), echoed)


@pytest.mark.parametrize("channels", [1, 2, 3])
def test_keeps_shape_and_type(music: dict[int, Samples], channels: int) -> None:
    source = music[1][np.arange(channels) % 2]
    echoed = add_echo(source, 0.2, 0.5, RATE)
    cleaned = deecho(echoed, RATE)
    assert cleaned.shape == echoed.shape
    assert cleaned.dtype == np.float32
    assert cleaned.flags.c_contiguous
    assert np.isfinite(cleaned).all()
    assert sdr_db(source, cleaned) - sdr_db(source, echoed) >= 6


@pytest.mark.parametrize("rate", [16000, 48000])
def test_other_sample_rates(rate: int) -> None:
    clean = render_music(6.0, rate, seed=4)
    echoed = add_echo(clean, 0.2, 0.5, rate)
    assert sdr_db(clean, deecho(echoed, rate)) - sdr_db(clean, echoed) >= 6
    assert sdr_db(clean, deecho(clean, rate)) >= 20


def test_silence_stays_silent() -> None:
    silence = np.zeros((2, RATE), dtype=np.float32)
    assert np.array_equal(deecho(silence, RATE), silence)


@pytest.mark.parametrize("frames", [1, 2, 100, 4000])
def test_short_input_is_unchanged(music: dict[int, Samples], frames: int) -> None:
    short = np.ascontiguousarray(music[0][:, :frames])
    assert np.array_equal(deecho(short, RATE), short)


def test_deterministic(music: dict[int, Samples]) -> None:
    echoed = add_echo(music[0], 0.15, 0.5, RATE)
    assert np.array_equal(deecho(echoed, RATE), deecho(echoed, RATE))


def test_peak_never_above_full_scale(music: dict[int, Samples]) -> None:
    loud = add_echo(music[0] * 3.0, 0.15, 0.5, RATE)
    cleaned = deecho(loud, RATE)
    assert np.abs(cleaned).max() <= 1.0
    # Scaled as a whole: still the dry signal up to level.
    level = np.abs(music[0]).max() / np.abs(cleaned).max()
    assert sdr_db(music[0], cleaned * level) > 20


@pytest.mark.parametrize(
    "options",
    [
        DeechoOptions(min_delay_s=0.0),
        DeechoOptions(min_delay_s=0.3, max_delay_s=0.2),
        DeechoOptions(max_delay_s=60.0),
        DeechoOptions(max_echoes=0),
        DeechoOptions(max_echoes=100),
        DeechoOptions(max_echoes=1.5),  # type: ignore[arg-type]
        DeechoOptions(min_gain=0.0),
        DeechoOptions(min_gain=0.5, max_gain=0.4),
        DeechoOptions(max_gain=1.0),
        DeechoOptions(min_significance=-1.0),
        DeechoOptions(min_significance=float("nan")),
    ],
)
def test_invalid_options_raise(options: DeechoOptions) -> None:
    with pytest.raises(PreprocessError):
        deecho(np.zeros((2, 100), dtype=np.float32), RATE, options)


@pytest.mark.parametrize(
    ("samples", "rate"),
    [
        (np.zeros(100, dtype=np.float32), RATE),
        (np.zeros((0, 100), dtype=np.float32), RATE),
        (np.full((1, 100), np.nan, dtype=np.float32), RATE),
        (np.zeros((1, 100), dtype=np.float32), 0),
    ],
)
def test_invalid_input_raises(samples: Samples, rate: int) -> None:
    with pytest.raises(PreprocessError):
        deecho(samples, rate)


def test_unknown_device_raises() -> None:
    with pytest.raises(PreprocessError):
        deecho(np.zeros((1, 100), dtype=np.float32), RATE, device="tpu")


def test_cuda_matches_cpu_or_is_refused_without_a_gpu(music: dict[int, Samples]) -> None:
    clean = music[0]
    echoed = add_echo(clean, 0.27, 0.45, RATE)
    if not torch.cuda.is_available():
        with pytest.raises(PreprocessError, match="CUDA"):
            deecho(echoed, RATE, device="cuda")
        return
    on_gpu = deecho(echoed, RATE, device="cuda")
    assert sdr_db(deecho(echoed, RATE), on_gpu) > 60
    assert sdr_db(clean, on_gpu) - sdr_db(clean, echoed) >= 6
