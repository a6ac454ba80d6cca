"""Denoise by a stereo Wiener filter: stationary background noise out of music.

Written here because no maintained package offers a blind multichannel Wiener filter for
music: noisereduce gates single channels, and the beamforming packages expect a known noise
segment or microphone geometry. The parts and their sources:

* Filter: the multichannel Wiener filter (MWF) in generalised-eigenvalue form. Per STFT bin
  the 2x2 covariance of the stereo pair, averaged over a few neighbouring frames and bins, is
  whitened by the noise covariance (diagonal: noise uncorrelated between the channels) and
  split into its two eigen-directions in closed form; each direction gets its own gain and
  the filter is mapped back through the whitening. S. Doclo and M. Moonen, "GSVD-based
  optimal filtering for single and multimicrophone speech enhancement", IEEE Trans. Signal
  Processing 50(9), 2002; R. Serizel et al., "Low-rank approximation based multichannel
  Wiener filter algorithms for noise reduction...", IEEE/ACM TASLP 22(4), 2014. A panned
  source is one direction, so noise in the other is removed whatever its spectrum; a lone
  channel gets the single-channel Wiener filter on a locally averaged periodogram (J. S. Lim
  and A. V. Oppenheim, Proc. IEEE 67(12), 1979).
* Gain per direction with eigenvalue mu (posterior SNR + 1): power subtraction with
  over-subtraction beta (Berouti, Schwartz and Makhoul, ICASSP 1979), then the "two-step"
  refinement: the Wiener gain on the a-priori SNR of that first estimate (C. Plapous, C. Marro
  and P. Scalart, "Improved signal-to-noise ratio estimation for speech enhancement", IEEE
  TASLP 14(6), 2006).
* Noise power: noisefloor.py per channel and bin. Below 20 Hz, where music has no notes
  but may hold a slowly drifting offset that a quantile takes for noise, a pair whose noise is
  seen to be uncorrelated uses the power its cross-spectrum does not explain (the
  uncorrelated-noise model of R. Zelinski, ICASSP 1988), averaged over about a second.
* Two resolutions: 0.28 s windows below 10 kHz, where the partials of notes must be resolved,
  a sixth of that above, where cymbals and hats are short; the bands meet in complementary
  raised-cosine weights an octave wide, so a filter that passes everything returns the input.

The stereo gain over a single-channel filter needs noise that is uncorrelated between the
channels (hiss of separate microphones, preamps or tape tracks). Noise identical in both
channels is removed only spectrally; the filter then removes less, it does not harm the music.
Channels are filtered in pairs (0, 1), (2, 3) and so on; an odd last channel alone. numpy only
(it runs on the CPU whatever the device: about 1 s for a minute of stereo on one core).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import fft
from scipy.ndimage import uniform_filter1d

from models.audio.samples import Samples
from models.preprocess.noisefloor import SUBSONIC_HZ, noise_floor, quantile_of_noise

Real = npt.NDArray[np.float32]
Complex = npt.NDArray[np.complex64]

# The long window is 1.5 times the power of two nearest 0.186 s: 12288 frames at 44.1 kHz.
LONG_WINDOW_S = 0.186
SHORT_DIVISOR = 6
CROSSOVER_HZ = 10000.0
CROSSOVER_OCTAVES = 1.0
OVER_SUBTRACTION = {"long": 3.0, "short": 1.5}
# Neighbourhoods (frames, bins) the covariances are averaged over: hats and cymbals are short
# and broadband, so the short band averages over frequency only; below 20 Hz there are no
# notes or attacks to keep sharp.
BOX = {"long": (3, 3), "short": (1, 9), "subsonic": (15, 3)}
TWO_STEP_GAMMA = 2.0
NOISE_QUANTILE = 0.05
NOISE_FLOOR_HZ = 300.0
SUBSONIC_QUANTILE = 0.3
INCOHERENT_FLOOR = 1e-3
MAX_NOISE_COHERENCE = 0.5
# STFT frames filtered at a time, and at most how many frames the noise statistics are taken
# from (spread evenly over the track; at the long window, 2048 frames are 2.4 minutes): both
# keep memory flat for long songs.
BLOCK_FRAMES = 256
MAX_NOISE_FRAMES = 2048


def wiener_denoise(samples: Samples, sample_rate: int, strength: float = 1.0) -> Samples:
    """(channels, frames) samples with stationary background noise filtered out.

    `strength` is the share of the removed part actually taken out (1: all of it). Input
    shorter than one long window, or silent, comes back unchanged. The result may peak above
    full scale; callers limit it.
    """
    n_long = 3 * 2 ** round(math.log2(LONG_WINDOW_S * sample_rate)) // 2
    audio = np.ascontiguousarray(samples, dtype=np.float32)
    if audio.shape[1] < n_long or not np.any(audio):
        return audio
    bands = (
        ("long", n_long, None, CROSSOVER_HZ),
        ("short", n_long // SHORT_DIVISOR, CROSSOVER_HZ, None),
    )
    out = np.zeros_like(audio)
    for start in range(0, audio.shape[0], 2):
        group = audio[start : start + 2]
        for band, n_fft, above, below in bands:
            weight = _band_weight(np.arange(n_fft // 2 + 1) * sample_rate / n_fft, above, below)
            if np.any(weight > 0):
                out[start : start + 2] += _filter_band(group, sample_rate, n_fft, band, weight)
    if strength < 1.0:
        out = audio + strength * (out - audio)
    return out


def _band_weight(freqs: npt.NDArray[np.float64], above: float | None, below: float | None) -> Real:
    """The share of each bin a band takes: complementary crossovers at `above` and `below`."""
    weight = np.ones(freqs.size, np.float32)
    if below is not None:
        weight = _lowpass(freqs, below)
    if above is not None:
        weight = weight - _lowpass(freqs, above)
    return weight


def _lowpass(freqs: npt.NDArray[np.float64], centre: float) -> Real:
    """1 below the crossover octave around `centre`, 0 above, raised cosine in log frequency."""
    low = centre * 2 ** (-CROSSOVER_OCTAVES / 2)
    position = (np.log2(np.maximum(freqs, 1e-9)) - math.log2(low)) / CROSSOVER_OCTAVES
    return (0.5 * (1 + np.cos(np.pi * np.clip(position, 0.0, 1.0)))).astype(np.float32)


def _filter_band(group: Samples, rate: int, n_fft: int, band: str, weight: Real) -> Samples:
    """One resolution of one channel pair: STFT, noise estimate, filter, weighted ISTFT.

    The track is filtered `BLOCK_FRAMES` STFT frames at a time (with the frames the
    neighbourhood averages reach on either side), so memory does not grow with its length.
    """
    hop = n_fft // 4
    # Only the bins the band keeps, plus the reach of the noise floor's minimum.
    reach = max(3, round(NOISE_FLOOR_HZ * n_fft / rate))
    kept = np.flatnonzero(weight > 0)
    first, stop = max(0, int(kept[0]) - reach), min(weight.size, int(kept[-1]) + 1 + reach)
    bins = first + np.arange(stop - first)
    frames = _Frames(group, n_fft, hop, first, stop)
    # Noise statistics from frames spread over the track; frames reaching into the zero
    # padding would pull the low quantile down.
    inside = np.arange(n_fft // hop, group.shape[-1] // hop + 1)
    picked = inside[:: max(2, math.ceil(inside.size / MAX_NOISE_FRAMES))]
    noise = _noise_power(frames.spectrum(picked), bins, rate, n_fft)
    subsonic = int(np.count_nonzero(bins < SUBSONIC_HZ * n_fft / rate))
    over = OVER_SUBTRACTION[band]
    reach_frames = BOX["subsonic"][0] // 2
    for start in range(0, frames.count, BLOCK_FRAMES):
        end = min(frames.count, start + BLOCK_FRAMES)
        lo, hi = max(0, start - reach_frames), min(frames.count, end + reach_frames)
        spectrum = frames.spectrum(np.arange(lo, hi))
        power = spectrum.real**2 + spectrum.imag**2
        filtered = _wiener(spectrum, power, noise, over, BOX[band])
        if subsonic:
            low = slice(0, subsonic)
            filtered[..., low] = _wiener(
                spectrum[..., low], power[..., low], noise[:, low], over, BOX["subsonic"]
            )
        frames.add(start, filtered[:, start - lo : end - lo] * weight[first:stop])
    return frames.signal()


def _noise_power(spectrum: Complex, bins: npt.NDArray[np.int64], rate: int, n_fft: int) -> Real:
    """Noise power per channel and bin (channels, bins) from a sample of STFT frames."""
    power = spectrum.real**2 + spectrum.imag**2
    noise = np.stack(
        [
            noise_floor(channel, bins, rate, n_fft, NOISE_QUANTILE, NOISE_FLOOR_HZ)
            for channel in power
        ]
    )
    subsonic = bins < SUBSONIC_HZ * n_fft / rate
    if np.any(subsonic):
        real_bins = (bins == 0) | (bins == n_fft // 2)
        low = np.quantile(power[:, :, subsonic], SUBSONIC_QUANTILE, axis=1)
        noise[:, subsonic] = low / quantile_of_noise(SUBSONIC_QUANTILE, real_bins[subsonic])
        if len(power) == 2 and _noise_coherence(spectrum[:, :, ::4]) < MAX_NOISE_COHERENCE:
            noise[:, subsonic] = _incoherent_power(spectrum[..., subsonic])
    return np.maximum(noise, 1e-12 * max(float(noise.max()), 1e-30)).astype(np.float32)


def _noise_coherence(spectrum: Complex) -> float:
    """How correlated the noise of a pair is: the median over bins of the coherence of each
    bin's quietest fifth of frames, where noise dominates (music there only raises it)."""
    power = spectrum.real**2 + spectrum.imag**2
    total = power[0] + power[1]
    quiet = total <= np.quantile(total, 0.2, axis=0)
    cross = np.abs(np.sum(spectrum[0] * spectrum[1].conj() * quiet, axis=0))
    own = np.sqrt(np.sum(power[0] * quiet, axis=0) * np.sum(power[1] * quiet, axis=0))
    return float(np.median(cross / np.maximum(own, 1e-30)))


def _incoherent_power(spectrum: Complex) -> Real:
    """Per channel, the power of a pair that its cross-spectrum over the track does not
    explain: the noise, if the noise is uncorrelated and the rest fully correlated."""
    p0 = np.mean(spectrum[0].real ** 2 + spectrum[0].imag ** 2, axis=0, dtype=np.float64)
    p1 = np.mean(spectrum[1].real ** 2 + spectrum[1].imag ** 2, axis=0, dtype=np.float64)
    cross = np.abs(np.mean(spectrum[0] * spectrum[1].conj(), axis=0, dtype=np.complex128))
    share = np.sqrt(p0 / np.maximum(p1, 1e-30))
    incoherent = np.stack([p0 - cross * share, p1 - cross / np.maximum(share, 1e-30)])
    return np.maximum(incoherent, INCOHERENT_FLOOR * np.stack([p0, p1])).astype(np.float32)


def _wiener(
    spectrum: Complex, power: Real, noise: Real, over: float, box: tuple[int, int]
) -> Complex:
    """The filtered spectrum of one or two channels."""
    if len(spectrum) == 1:
        return spectrum * _gain(_box(power[0], *box) / noise[0], over)
    return _wiener_pair(spectrum, power, noise, over, box)


def _gain(mu: Real, over: float) -> Real:
    """Two-step gain: power subtraction with over-subtraction, then Wiener on its SNR."""
    first = np.maximum(1 - over / np.maximum(mu, 1e-12), 0)
    prior = first * first * mu / TWO_STEP_GAMMA
    return prior / (prior + 1)


def _wiener_pair(
    spectrum: Complex, power: Real, noise: Real, over: float, box: tuple[int, int]
) -> Complex:
    """The GEVD multichannel Wiener filter of a pair with diagonal noise covariance, per bin.

    With the whitened covariance R = [[a, c], [c*, b]], eigenvalues mu1 >= mu2 and gains g1,
    g2, the filter is W = g2 I + (g1 - g2) P with P = (R - mu2 I) / (mu1 - mu2).
    """
    scale = 1 / noise
    a = _box(power[0], *box) * scale[0]
    b = _box(power[1], *box) * scale[1]
    c = _box(spectrum[0] * spectrum[1].conj(), *box) * np.sqrt(scale[0] * scale[1])
    half = (a - b) / 2
    mean = (a + b) / 2
    spread = np.hypot(half, np.abs(c))
    g1 = _gain(mean + spread, over)
    g2 = _gain(mean - spread, over)
    k = (g1 - g2) / (2 * spread + 1e-12)
    ratio = np.sqrt(noise[0] / noise[1])  # undoes the whitening of the cross terms
    out = np.empty_like(spectrum)
    out[0] = spectrum[0] * ((spread + half) * k + g2) + c * k * ratio * spectrum[1]
    out[1] = spectrum[1] * ((spread - half) * k + g2) + (c * k / ratio).conj() * spectrum[0]
    return out


def _box(values: npt.NDArray[Any], frames: int, bins: int) -> npt.NDArray[Any]:
    """Mean over `frames` x `bins` (odd sizes) around each (frame, bin), edges repeated."""
    is_complex = np.iscomplexobj(values)
    out = values.view(np.float32).reshape(*values.shape, 2) if is_complex else values
    if frames > 1:
        out = uniform_filter1d(out, frames, axis=0, mode="nearest")
    if bins > 1:
        out = uniform_filter1d(out, bins, axis=1, mode="nearest")
    return np.ascontiguousarray(out).view(np.complex64)[..., 0] if is_complex else out


class _Frames:
    """A channel group's periodic-Hann STFT at one resolution, computed a few frames at a
    time, and the overlap-add of the filtered frames back into a signal.

    Written here rather than taken from scipy.signal.ShortTimeFFT because that inverts a
    whole spectrogram at once, which for a long song at 12288-point windows takes gigabytes.
    """

    def __init__(self, audio: Samples, n_fft: int, hop: int, first: int, stop: int) -> None:
        self.n_fft, self.hop, self.first, self.stop = n_fft, hop, first, stop
        self.length = audio.shape[-1]
        # A window of zeros before the track, and a window and a hop after it.
        padded = np.pad(audio, ((0, 0), (n_fft, n_fft + hop)))
        self.count = (padded.shape[-1] - n_fft) // hop + 1
        self.windows = np.lib.stride_tricks.sliding_window_view(padded, n_fft, axis=-1)
        self.window = np.hanning(n_fft + 1)[:-1].astype(np.float32)
        self.out = np.zeros((audio.shape[0], (self.count + n_fft // hop) * hop + n_fft), np.float32)

    def spectrum(self, frames: npt.NDArray[np.int64]) -> Complex:
        """(channels, frames, bins) of the given frame numbers, bins first to stop."""
        spectra = fft.rfft(self.windows[:, frames * self.hop] * self.window, axis=-1, workers=1)
        return np.ascontiguousarray(spectra[..., self.first : self.stop], dtype=np.complex64)

    def add(self, start: int, spectrum: Complex) -> None:
        """Overlap-add the filtered frames `start`, `start + 1`, ... into the signal."""
        full = np.zeros((*spectrum.shape[:2], self.n_fft // 2 + 1), np.complex64)
        full[..., self.first : self.stop] = spectrum
        frames = fft.irfft(full, n=self.n_fft, axis=-1, workers=1) * self.window
        channels, count, _ = frames.shape
        step = self.n_fft // self.hop
        # Every `step`-th frame tiles the signal without overlap: add each such run at once.
        for offset in range(min(step, count)):
            run = frames[:, offset::step]
            begin = (start + offset) * self.hop
            self.out[:, begin : begin + run.shape[1] * self.n_fft] += run.reshape(channels, -1)

    def signal(self) -> Samples:
        """The overlap-added signal, at the track's length."""
        # Periodic Hann analysis and synthesis at a quarter-window hop sum to a constant.
        scale = np.sum(self.window**2) / self.hop
        signal = self.out[:, self.n_fft : self.n_fft + self.length] / scale
        return np.asarray(signal, dtype=np.float32)
