"""Objective measures of audio processing, used by tests and benchmarks.

Plain signal-to-distortion ratio (no scale invariance: a step that only turns the level
down is not rewarded), signal-to-noise ratio of an estimate, and the level of a signal
at one lag of its autocorrelation (for echoes) or in a tail (for reverberation).

Separation quality is scored as SiSEC18 and the MUSDB18 literature score it with museval
(BSS-eval v4, `bss_eval_images` mode): SDR over one-second windows, windows where any
reference or estimate is silent left out, the median over windows per track. It lives here,
beside the plain SDR it generalises, because tests and benchmarks/quality.py share it.
museval fits a 512-tap time-invariant distortion filter per source, but in images mode it
only splits the error among ISR, SIR and SAR: the SDR's error is the estimate minus the
reference, whatever the filter (checked against museval's own code to 1e-15 dB), so it is
computed directly. fast-bss-eval is not used: it scores `bss_eval_sources`, whose SDR
forgives any 512-tap filtering of the reference and differs from museval's.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

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


SISEC_WINDOW_S = 1.0
"""SiSEC18's window and hop for framewise scores (museval's `win` and `hop`), in seconds."""


def framewise_sdr(
    references: npt.NDArray[np.floating], estimates: npt.NDArray[np.floating], window: int
) -> npt.NDArray[np.float64]:
    """SDR in dB of each estimate against its reference, one column per window.

    Both arrays are shaped (sources, channels, frames); the estimates are cut or
    zero-padded to the references' length. Windows of `window` frames follow each other
    without overlap, a trailing partial window is dropped, and a signal shorter than one
    window is scored whole. A window in which any reference or any estimate is silent is
    NaN for every source. The result is shaped (sources, windows); a perfect window is inf.
    """
    if references.ndim != 3 or estimates.shape[:2] != references.shape[:2]:
        raise ValueError(
            "references and estimates must be shaped (sources, channels, frames) alike, "
            f"got {references.shape} and {estimates.shape}"
        )
    if window <= 0:
        raise ValueError(f"window must be positive, got {window}")
    frames = references.shape[-1]
    estimates = _fit_length(estimates, frames)
    count = (frames - window) // window + 1 if window < frames else 1
    scores = np.full((references.shape[0], count), np.nan)
    for index in range(count):
        span = slice(index * window, min((index + 1) * window, frames))
        reference = references[..., span].astype(np.float64)
        estimate = estimates[..., span].astype(np.float64)
        if _any_silent(reference) or _any_silent(estimate):
            continue
        signal = np.sum(reference**2, axis=(1, 2))
        error = np.sum((estimate - reference) ** 2, axis=(1, 2))
        with np.errstate(divide="ignore"):
            scores[:, index] = 10 * np.log10(signal / error)
    return scores


def track_sdr(
    references: npt.NDArray[np.floating],
    estimates: npt.NDArray[np.floating],
    sample_rate: int,
) -> npt.NDArray[np.float64]:
    """Each source's SDR on one track as SiSEC18 reports it: the median over the scored
    one-second windows of `framewise_sdr` (NaN for a source with none scored)."""
    scores = framewise_sdr(references, estimates, round(SISEC_WINDOW_S * sample_rate))
    return np.array([nan_median(row) for row in scores])


def nan_median(values: npt.ArrayLike) -> float:
    """The median of the values that are not NaN; NaN when there are none."""
    kept = np.asarray(values, dtype=np.float64)
    kept = kept[~np.isnan(kept)]
    return float(np.median(kept)) if kept.size else float("nan")


def _fit_length(signals: npt.NDArray[np.floating], frames: int) -> npt.NDArray[np.floating]:
    """`signals` cut, or zero-padded at the end, to `frames` along the last axis."""
    if signals.shape[-1] >= frames:
        return signals[..., :frames]
    padding = [(0, 0)] * (signals.ndim - 1) + [(0, frames - signals.shape[-1])]
    return np.pad(signals, padding)


def _any_silent(signals: npt.NDArray[np.float64]) -> bool:
    """Whether any source's channel sum is zero throughout: museval's test, kept as it is
    (a stereo source whose channels cancel exactly counts as silent there too)."""
    return bool(np.any(np.all(np.sum(signals, axis=1) == 0, axis=-1)))
