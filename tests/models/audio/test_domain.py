"""Tests of models.audio.domain: folding a track into the model's channels and rate."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from av.audio.layout import AudioLayout

from models.audio.decode import Track
from models.audio.domain import SIDE_GAIN, stereo_downmix_matrix, to_model_input
from tests.models.audio.media import peak_hz, tone


def track_of(samples: npt.NDArray[np.float32], rate: int, layout: str) -> Track:
    """A track around `samples`."""
    return Track(samples=np.ascontiguousarray(samples), sample_rate=rate, layout=layout)


def test_mono_is_duplicated_for_the_model() -> None:
    mono = track_of(tone(44100, 1000, 1), 44100, "mono")

    model_input = to_model_input(mono)

    assert model_input.shape == (2, 1000)
    np.testing.assert_array_equal(model_input[0], mono.samples[0])
    np.testing.assert_array_equal(model_input[1], mono.samples[0])


def test_stereo_at_the_model_rate_is_not_copied() -> None:
    stereo = track_of(tone(44100, 1000, 2), 44100, "stereo")

    model_input = to_model_input(stereo)

    assert np.shares_memory(model_input, stereo.samples)
    assert model_input.shape == (2, 1000)


def test_surround_is_folded_to_stereo_with_the_itu_matrix() -> None:
    surround = track_of(tone(44100, 1000, 6), 44100, "5.1")
    fl, fr, fc, _lfe, bl, br = surround.samples

    model_input = to_model_input(surround)

    assert model_input.shape == (2, 1000)
    np.testing.assert_allclose(model_input[0], fl + SIDE_GAIN * (fc + bl), atol=1e-6)
    np.testing.assert_allclose(model_input[1], fr + SIDE_GAIN * (fc + br), atol=1e-6)


def test_downmix_matrix_drops_lfe_and_keeps_stereo_as_identity() -> None:
    surround = stereo_downmix_matrix("7.1")
    lfe = [c.name for c in AudioLayout("7.1").channels].index("LFE")

    assert surround.shape == (2, 8)
    np.testing.assert_array_equal(surround[:, lfe], [0.0, 0.0])
    np.testing.assert_array_equal(stereo_downmix_matrix("stereo"), np.eye(2))


def test_mono_model_gets_the_mean_of_stereo() -> None:
    stereo = track_of(tone(44100, 1000, 2), 44100, "stereo")

    model_input = to_model_input(stereo, channels=1)

    np.testing.assert_allclose(model_input[0], stereo.samples.mean(axis=0), atol=1e-7)


def test_resampling_to_the_model_rate_keeps_length_and_pitch() -> None:
    frames = 48000 + 123
    track = track_of(tone(48000, frames, 2), 48000, "stereo")

    model_input = to_model_input(track, sample_rate=44100)

    assert model_input.dtype == np.float32
    assert model_input.flags.c_contiguous
    assert abs(model_input.shape[1] - round(frames * 44100 / 48000)) <= 1
    assert peak_hz(model_input[0], 44100) == pytest.approx(1000, abs=2)
    assert peak_hz(model_input[1], 44100) == pytest.approx(1500, abs=2)


def test_model_channels_other_than_mono_or_stereo_are_refused() -> None:
    stereo = track_of(tone(44100, 10, 2), 44100, "stereo")

    with pytest.raises(ValueError, match="mono or stereo"):
        to_model_input(stereo, channels=3)
