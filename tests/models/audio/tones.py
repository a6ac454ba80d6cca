"""Test tones: one sine per channel at its own frequency, and the frequency a signal peaks at,
so that channel order and content can both be checked after decoding or conversion."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

# Each channel gets its own frequency, so channel order and content can both be checked.
CHANNEL_HZ = (1000.0, 1500.0, 2000.0, 2500.0, 3000.0, 3500.0)


def tone(rate: int, frames: int, channels: int, amplitude: float = 0.5) -> npt.NDArray[np.float32]:
    """Sines at CHANNEL_HZ, one per channel, shaped (channels, frames)."""
    t = np.arange(frames) / rate
    rows = [amplitude * np.sin(2 * np.pi * CHANNEL_HZ[c] * t) for c in range(channels)]
    return np.array(rows, dtype=np.float32)


def peak_hz(signal: npt.NDArray[np.float32], rate: int) -> float:
    """Frequency of the strongest spectral peak of a 1-D signal."""
    spectrum = np.abs(np.fft.rfft(signal * np.hanning(signal.size)))
    return float(np.fft.rfftfreq(signal.size, 1 / rate)[np.argmax(spectrum)])
