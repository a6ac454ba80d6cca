"""Tests of models.denoise: the noise it removes from synthetic music, what it leaves alone,
and the contract every preprocessing step keeps (shape, silence, short input, peak, options)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.denoise import DenoiseOptions, denoise
from models.errors import PreprocessError
from models.quality import sdr_db, snr_improvement_db
from models.synth import add_noise, render_music

RATE = 44100


@pytest.fixture(scope="module")
def music() -> np.ndarray:
    """Eight seconds of clean stereo music."""
    return render_music(8, RATE, seed=0)


# The bar of issue 3 (6 dB), not lowered. Spectral gating reaches 5.0, 3.7, 5.1 and 4.0 dB
# here (white 5, white 10, pink 5, pink 10); masks computed from the true clean signal
# would reach 7 to 9 dB, but no blind single-channel estimator tried gets past about 4 dB at
# 10 dB SNR (issue 3's notes). Strict: the day a method passes, these tests fail until the
# mark is removed.
@pytest.mark.xfail(strict=True, reason="issue 3: spectral gating stays below the 6 dB bar")
@pytest.mark.parametrize("snr_db", [5.0, 10.0])
@pytest.mark.parametrize("colour", ["white", "pink"])
def test_removes_stationary_noise(music: np.ndarray, colour: str, snr_db: float) -> None:
    noisy = add_noise(music, snr_db, colour, seed=1)
    assert snr_improvement_db(music, noisy, denoise(noisy, RATE)) >= 6.0


@pytest.mark.parametrize(
    ("colour", "snr_db", "measured"),
    [("white", 5.0, 4.7), ("white", 10.0, 3.5), ("pink", 5.0, 4.8), ("pink", 10.0, 3.8)],
)
def test_improves_snr_as_far_as_measured(
    music: np.ndarray, colour: str, snr_db: float, measured: float
) -> None:
    # What the method does reach (issue 3's note), held so that it cannot silently regress.
    noisy = add_noise(music, snr_db, colour, seed=1)
    assert snr_improvement_db(music, noisy, denoise(noisy, RATE)) >= measured


def test_clean_music_passes_nearly_unchanged(music: np.ndarray) -> None:
    assert sdr_db(music, denoise(music, RATE)) >= 20.0


@pytest.mark.parametrize("mode", ["stationary", "nonstationary"])
@pytest.mark.parametrize("channels", [1, 2, 6])
def test_keeps_shape_dtype_and_layout(music: np.ndarray, channels: int, mode: str) -> None:
    rows = [music[index % 2] for index in range(channels)]
    noisy = add_noise(np.stack(rows)[:, : RATE * 2], 10.0, seed=2)
    result = denoise(noisy, RATE, DenoiseOptions(mode=mode))
    assert result.shape == noisy.shape
    assert result.dtype == np.float32
    assert result.flags.c_contiguous
    assert np.all(np.isfinite(result))


@pytest.mark.parametrize("rate", [8000, 22050, 192000])
def test_other_rates(rate: int) -> None:
    # render_music's hi-hats need a rate above 14 kHz; a plain tone serves at 8 kHz.
    times = np.arange(rate) / rate
    tone = np.stack([0.3 * np.sin(2 * np.pi * 440 * times)] * 2).astype(np.float32)
    noisy = add_noise(tone, 10.0, seed=2)
    assert denoise(noisy, rate).shape == noisy.shape


def test_silence_in_silence_out() -> None:
    silence = np.zeros((2, RATE), dtype=np.float32)
    assert np.array_equal(denoise(silence, RATE), silence)


@pytest.mark.parametrize("frames", [1, 100])
def test_input_shorter_than_a_window_is_unchanged(frames: int) -> None:
    short = np.random.default_rng(0).uniform(-0.5, 0.5, (2, frames)).astype(np.float32)
    assert np.array_equal(denoise(short, RATE), short)


def test_deterministic(music: np.ndarray) -> None:
    noisy = add_noise(music[:, : RATE * 3], 5.0, seed=3)
    assert np.array_equal(denoise(noisy, RATE), denoise(noisy, RATE))


def test_peak_never_above_full_scale(music: np.ndarray) -> None:
    noisy = add_noise(music[:, : RATE * 3], 5.0, seed=4)
    loud = (noisy / np.abs(noisy).max() * 0.999).astype(np.float32)
    assert np.abs(denoise(loud, RATE)).max() <= 1.0


def test_strength_zero_leaves_the_input(music: np.ndarray) -> None:
    noisy = add_noise(music[:, : RATE * 2], 5.0, seed=5)
    assert sdr_db(noisy, denoise(noisy, RATE, DenoiseOptions(strength=0.0))) >= 40.0


@pytest.mark.parametrize(
    "options",
    [
        {"mode": "spectral"},
        {"strength": 1.5},
        {"strength": -0.1},
        {"threshold_std": -1.0},
        {"window_s": 0.0},
        {"noise_quantile": 0.9},
        {"noise_floor_hz": 0.0},
        {"time_mask_smooth_ms": -5.0},
        {"time_constant_s": 0.0},
        {"strength": float("nan")},
    ],
)
def test_invalid_options_raise(options: dict[str, object]) -> None:
    with pytest.raises(PreprocessError):
        DenoiseOptions(**options)  # type: ignore[arg-type]


def test_invalid_input_raises() -> None:
    with pytest.raises(PreprocessError):
        denoise(np.zeros(10, dtype=np.float32), RATE)


def test_unknown_or_missing_device_is_refused() -> None:
    quiet = np.zeros((2, 100), dtype=np.float32)
    with pytest.raises(PreprocessError, match="device must be one of"):
        denoise(quiet, RATE, device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(PreprocessError, match="no CUDA device"):
            denoise(quiet, RATE, device="cuda")
