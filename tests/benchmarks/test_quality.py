"""SiSEC18's SDR (models/testing/quality.py), as the quality harness scores it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.testing.quality import framewise_sdr, track_sdr
from models.testing.synth import add_noise, render_music

RATE = 44100


def test_a_perfect_estimate_scores_very_high() -> None:
    reference = render_music(3.0)[None]
    assert track_sdr(reference, reference.copy(), RATE)[0] > 60


@pytest.mark.parametrize("snr_db", [0.0, 10.0, 20.0])
def test_known_noise_scores_its_snr(snr_db: float) -> None:
    reference = render_music(6.0, seed=1)
    estimate = add_noise(reference, snr_db, seed=2)
    assert track_sdr(reference[None], estimate[None], RATE)[0] == pytest.approx(snr_db, abs=0.5)


def test_a_delay_counts_as_error_as_in_museval() -> None:
    # A one-sample delay of white noise leaves an error twice the signal's energy: -3 dB.
    # bss_eval_sources (fast-bss-eval) would let its distortion filter undo the delay.
    reference = np.random.default_rng(0).normal(0, 0.1, (1, 2, 3 * RATE))
    estimate = np.roll(reference, 1, axis=-1)
    assert track_sdr(reference, estimate, RATE)[0] == pytest.approx(-3.01, abs=0.05)


def test_windows_where_any_reference_or_estimate_is_silent_are_left_out() -> None:
    rng = np.random.default_rng(3)
    window = 1000
    references = rng.normal(0, 1, (2, 2, 5 * window))
    estimates = references + 0.1 * rng.normal(0, 1, references.shape)  # 20 dB
    references[1, :, window : 2 * window] = 0  # source 1's reference is silent in window 1
    estimates[0, :, 3 * window : 4 * window] = 0  # source 0's estimate is silent in window 3
    scores = framewise_sdr(references, estimates, window)
    assert scores.shape == (2, 5)
    # Silence in one source leaves the window out for every source, as museval does.
    assert np.isnan(scores[:, [1, 3]]).all()
    kept = scores[:, [0, 2, 4]]
    assert np.all(np.abs(kept - 20) < 1)
    assert track_sdr(references, estimates, window) == pytest.approx(np.median(kept, axis=1))


def test_a_source_with_no_scored_window_has_no_figure() -> None:
    references = np.ones((2, 1, 100))
    references[1] = 0
    assert np.isnan(track_sdr(references, references + 0.5, 50)).all()


def test_windows_follow_museval_framing() -> None:
    rng = np.random.default_rng(4)
    references = rng.normal(0, 1, (1, 2, 3600))
    estimates = references + 0.1 * rng.normal(0, 1, references.shape)
    assert framewise_sdr(references, estimates, 1000).shape == (1, 3)  # partial tail dropped
    whole = framewise_sdr(references[..., :500], estimates[..., :500], 1000)
    error = estimates[..., :500] - references[..., :500]
    expected = 10 * np.log10(np.sum(references[..., :500] ** 2) / np.sum(error**2))
    assert whole == pytest.approx(np.array([[expected]]))


def test_a_short_estimate_is_padded_with_silence() -> None:
    references = np.ones((1, 1, 2000))
    short = framewise_sdr(references, np.ones((1, 1, 1500)), 1000)
    # Window 1 holds 500 correct frames and 500 missing ones: an error of half its energy.
    assert short[0, 0] == math.inf
    assert short[0, 1] == pytest.approx(10 * np.log10(2))


def test_mismatched_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="shaped"):
        framewise_sdr(np.ones((2, 2, 10)), np.ones((1, 2, 10)), 5)
