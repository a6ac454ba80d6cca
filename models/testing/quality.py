"""Objective measures of audio processing, used by tests and benchmarks.

Plain signal-to-distortion ratio (no scale invariance: a step that only turns the level
down is not rewarded), signal-to-noise ratio of an estimate, and the level of a signal
at one lag of its autocorrelation (for echoes) or in a tail (for reverberation).
"""

from __future__ import annotations

import numpy as np

from models.audio.samples import Samples


def sdr_db(reference: Samples, estimate: Samples) -> float:
    """Signal-to-distortion ratio of `estimate` against `reference`, in dB."""
    reference64 = reference.astype(np.float64)
    error = estimate.astype(np.float64) - reference64
    return float(10 * np.log10(np.sum(reference64**2) / max(np.sum(error**2), 1e-20)))


def snr_improvement_db(clean: Samples, noisy: Samples, cleaned: Samples) -> float:
    """How much closer to `clean` the `cleaned` signal is than `noisy`, in dB."""
    return sdr_db(clean, cleaned) - sdr_db(clean, noisy)


def echo_level_db(audio: Samples, delay: int, dry: Samples) -> float:
    """Level, relative to the dry signal, of a copy of `dry` delayed by `delay` frames
    in `audio`: the least-squares gain of that copy in the residual, in dB."""
    residual = (audio.astype(np.float64) - dry)[:, delay:]
    shifted = dry[:, :-delay].astype(np.float64)
    gain = np.sum(residual * shifted) / np.sum(shifted**2)
    return float(20 * np.log10(max(abs(gain), 1e-10)))


def energy_db(audio: Samples) -> float:
    """Total energy in dB."""
    return float(10 * np.log10(max(np.sum(audio.astype(np.float64) ** 2), 1e-20)))
