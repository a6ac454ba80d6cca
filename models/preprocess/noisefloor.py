"""The power of steady background noise in each frequency bin, estimated from noisy music.

Both denoisers need it: the spectral gate as the noise profile it gates against, the Wiener
filter as the noise covariance it whitens by. Stationary noise is present in every frame
while music comes and goes, so a low quantile of a bin's power over the whole track sits
near the noise, once divided by that quantile's value for Gaussian noise (the power of a
complex Gaussian bin is exponentially distributed; the real DC and Nyquist bins are
chi-square with one degree of freedom). Sustained notes keep some bins loud all the time,
so the estimate is also capped by a minimum over a few hundred hertz (minimum statistics
after R. Martin, "Noise power spectral density estimation based on optimal smoothing and
minimum statistics", IEEE Trans. Speech and Audio Processing 9(5), 2001), taken on a
spectrum tilted by +3 dB per octave so that pink noise, whose floor falls steeply towards
the bass, is not underestimated there.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from scipy.ndimage import minimum_filter1d, uniform_filter1d
from scipy.special import ndtri

Power = npt.NDArray[np.floating]

# The minimum over many noisy estimates sits below their mean: 1.5 puts it back, measured
# on white and pink noise.
FLOOR_BIAS = 1.5
# Below this, music has no notes: the minimum across frequency starts above it.
SUBSONIC_HZ = 20.0


def noise_floor(
    power: Power,
    bins: npt.NDArray[np.int64],
    sample_rate: int,
    n_fft: int,
    quantile: float,
    floor_hz: float,
) -> npt.NDArray[np.float64]:
    """Noise power per bin from a (frames, bins) power spectrogram of one channel.

    `bins` are the STFT bin numbers of the columns (a band need not start at 0), `quantile`
    the share of quietest frames trusted, `floor_hz` the width of the minimum across
    frequency.
    """
    real_bins = (bins == 0) | (bins == n_fft // 2)
    per_bin = np.quantile(power, quantile, axis=0).astype(np.float64)
    per_bin /= quantile_of_noise(quantile, real_bins)
    width = max(3, round(floor_hz * n_fft / sample_rate))
    tilt = np.log(np.maximum(bins, 1.0))
    log_power = np.log(per_bin + 1e-30) + tilt
    # Recordings are high-passed, often with nothing below 20 Hz: the minimum must not reach
    # down there, or it takes that silence for the noise of the bass above it.
    subsonic = int(np.count_nonzero(bins < SUBSONIC_HZ * n_fft / sample_rate))
    if 0 < subsonic < bins.size:
        log_power[:subsonic] = np.inf
    log_floor = minimum_filter1d(log_power, width)
    if 0 < subsonic < bins.size:
        log_floor[:subsonic] = log_floor[subsonic]
    floor = np.exp(uniform_filter1d(log_floor, width) - tilt) * FLOOR_BIAS
    return np.asarray(np.minimum(per_bin, floor), dtype=np.float64)


def quantile_of_noise(quantile: float, real_bins: npt.NDArray[np.bool_]) -> npt.NDArray[np.float64]:
    """The `quantile` of a Gaussian noise bin's power, over its mean power."""
    return np.where(real_bins, ndtri((1 + quantile) / 2) ** 2, -math.log1p(-quantile))
