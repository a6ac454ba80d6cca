"""Tests of synth.py's degradations: noise at the SNR asked, and band-limited pink noise."""

from __future__ import annotations

import numpy as np
import pytest

from models.testing.quality import sdr_db
from models.testing.synth import add_noise, render_music

RATE = 44100


@pytest.mark.parametrize("lowest_hz", [0.0, 20.0])
@pytest.mark.parametrize("colour", ["white", "pink"])
def test_noise_is_added_at_the_snr_asked(colour: str, lowest_hz: float) -> None:
    music = render_music(2, RATE, seed=0)
    noisy = add_noise(music, 7.5, colour, seed=1, lowest_hz=lowest_hz, sample_rate=RATE)
    assert sdr_db(music, noisy) == pytest.approx(7.5, abs=1e-3)


def share_below_20_hz(noise: np.ndarray) -> float:
    """The share of a (1, frames) signal's power below 20 Hz."""
    power = np.abs(np.fft.rfft(noise[0].astype(np.float64))) ** 2
    return float(power[np.fft.rfftfreq(noise.shape[1], 1 / RATE) < 20.0].sum() / power.sum())


def test_pink_noise_lies_largely_below_20_hz_unless_cut_there() -> None:
    # A steady offset as the signal only sets the noise's level: take it off again.
    offset = np.full((1, RATE * 4), 1e-3, dtype=np.float32)
    full = add_noise(offset, 0.0, "pink", seed=2) - offset
    cut = add_noise(offset, 0.0, "pink", seed=2, lowest_hz=20.0, sample_rate=RATE) - offset
    assert share_below_20_hz(full) > 0.4
    assert share_below_20_hz(cut) < 1e-6


def test_unknown_colour_is_refused() -> None:
    with pytest.raises(ValueError, match="white or pink"):
        add_noise(np.zeros((1, 10), dtype=np.float32), 10.0, "brown")
