"""Synthetic music and known degradations, for tests and benchmarks.

No samples ship with the project and nothing is downloaded, so tests that judge audio
processing render their own music here: a chord progression of decaying harmonic tones,
a plucked bass line (Karplus-Strong), and a drum kit (pitched kick, noise snare,
high-passed hats), each with its own stereo position. It is deterministic for a seed.
The degradations are the textbook ones: additive white or pink noise at a set SNR, one
discrete echo, and convolution with an exponentially decaying room impulse response.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from scipy import signal

from models.audio.samples import Samples

CHORDS = ((220.0, 277.18, 329.63), (196.0, 246.94, 293.66), (174.61, 220.0, 261.63))
BASS_NOTES = (55.0, 49.0, 43.65)


def render_music(seconds: float, sample_rate: int = 44100, seed: int = 0) -> Samples:
    """A stereo (2, frames) mix of chords, bass and drums peaking at about -6 dBFS."""
    rng = np.random.default_rng(seed)
    frames = int(seconds * sample_rate)
    mix = np.zeros((2, frames))
    beat = int(0.5 * sample_rate)  # 120 bpm
    for index, start in enumerate(range(0, frames, beat)):
        bar, step = divmod(index, 4)
        chord = CHORDS[bar % len(CHORDS)]
        if step % 2 == 0:
            for frequency in chord:
                detuned = frequency * rng.uniform(0.998, 1.002)
                _place(mix, _tone(detuned, 2 * beat, sample_rate) * 0.12, start, pan=-0.4)
        _place(mix, _pluck(BASS_NOTES[bar % len(BASS_NOTES)], beat, sample_rate, rng), start, 0.1)
        if step in (0, 2):
            _place(mix, _kick(sample_rate) * 0.5, start, pan=0.0)
        else:
            _place(mix, _snare(sample_rate, rng) * 0.3, start, pan=0.1)
        for half in (0, beat // 2):
            _place(mix, _hat(sample_rate, rng) * 0.08, start + half, pan=0.5)
    mix *= 0.5 / np.abs(mix).max()
    return mix.astype(np.float32)


def _tone(frequency: float, length: int, rate: int) -> npt.NDArray[np.float64]:
    """A piano-like tone: six harmonics with faster decay for higher ones."""
    times = np.arange(length) / rate
    tone = np.zeros(length)
    for harmonic in range(1, 7):
        decay = np.exp(-times * (1.5 + 1.2 * harmonic))
        tone += np.sin(2 * np.pi * frequency * harmonic * times) * decay / harmonic
    attack = np.minimum(1.0, times / 0.005)
    return tone * attack


def _pluck(
    frequency: float, length: int, rate: int, rng: np.random.Generator
) -> npt.NDArray[np.float64]:
    """A Karplus-Strong plucked string."""
    period = int(rate / frequency)
    buffer = rng.uniform(-1, 1, period)
    out = np.empty(length)
    for index in range(length):
        out[index] = buffer[index % period]
        buffer[index % period] = (
            0.996 * 0.5 * (buffer[index % period] + buffer[(index + 1) % period])
        )
    return out * 0.4


def _kick(rate: int) -> npt.NDArray[np.float64]:
    """A pitched-down sine thump."""
    times = np.arange(int(0.3 * rate)) / rate
    frequency = 50 + 100 * np.exp(-times * 30)
    return np.sin(2 * np.pi * np.cumsum(frequency) / rate) * np.exp(-times * 12)


def _snare(rate: int, rng: np.random.Generator) -> npt.NDArray[np.float64]:
    """A noise burst with a body tone."""
    times = np.arange(int(0.2 * rate)) / rate
    body = np.sin(2 * np.pi * 190 * times) * np.exp(-times * 30)
    return (rng.normal(0, 0.5, times.size) * np.exp(-times * 25) + body) * 0.7


def _hat(rate: int, rng: np.random.Generator) -> npt.NDArray[np.float64]:
    """High-passed noise, very short."""
    noise = rng.normal(0, 1, int(0.05 * rate))
    sos = signal.butter(4, 7000, "highpass", fs=rate, output="sos")
    return signal.sosfilt(sos, noise) * np.exp(-np.arange(noise.size) / rate * 80)


def _place(
    mix: npt.NDArray[np.float64], sound: npt.NDArray[np.float64], start: int, pan: float
) -> None:
    """Add a mono sound at `start`, panned between -1 (left) and 1 (right)."""
    end = min(mix.shape[1], start + sound.size)
    gains = (np.sqrt((1 - pan) / 2), np.sqrt((1 + pan) / 2))
    for channel, gain in enumerate(gains):
        mix[channel, start:end] += gain * sound[: end - start]


def add_noise(
    clean: Samples,
    snr_db: float,
    colour: str = "white",
    seed: int = 0,
    lowest_hz: float = 0.0,
    sample_rate: int = 44100,
) -> Samples:
    """`clean` plus stationary white or pink noise at `snr_db` (over the whole track).

    Pink noise falls 3 dB per octave from the lowest frequency the track's length resolves,
    so about half of its power lies below 20 Hz in a clip of a few seconds; `lowest_hz` (with
    `sample_rate`) leaves out the noise below that frequency before the level is set.
    """
    rng = np.random.default_rng(seed)
    noise = rng.normal(0, 1, clean.shape)
    if colour not in ("white", "pink"):
        raise ValueError(f"colour must be white or pink, got {colour!r}")
    if colour == "pink" or lowest_hz > 0:
        spectrum = np.fft.rfft(noise, axis=-1)
        if colour == "pink":
            bins = np.arange(spectrum.shape[-1])
            bins[0] = 1
            spectrum /= np.sqrt(bins)
        spectrum[..., np.fft.rfftfreq(clean.shape[-1], 1 / sample_rate) < lowest_hz] = 0
        noise = np.fft.irfft(spectrum, n=clean.shape[-1], axis=-1)
    scale = np.sqrt(np.mean(clean**2) / np.mean(noise**2) / 10 ** (snr_db / 10))
    return (clean + scale * noise).astype(np.float32)


def add_echo(clean: Samples, delay_s: float, gain: float, sample_rate: int) -> Samples:
    """`clean` plus one copy of itself `delay_s` later at `gain`."""
    delay = round(delay_s * sample_rate)
    echoed = clean.astype(np.float64).copy()
    echoed[:, delay:] += gain * clean[:, :-delay]
    return echoed.astype(np.float32)


def room_impulse(
    rt60_s: float, sample_rate: int, seed: int = 0, length_s: float | None = None
) -> npt.NDArray[np.float64]:
    """A synthetic room impulse response: a direct path, then exponentially decaying
    noise (60 dB down after `rt60_s`), one independent tail per stereo channel."""
    rng = np.random.default_rng(seed)
    frames = int((length_s or 1.5 * rt60_s) * sample_rate)
    times = np.arange(frames) / sample_rate
    envelope = 10 ** (-3 * times / rt60_s)
    response = rng.normal(0, 1, (2, frames)) * envelope * 0.1
    response[:, 0] = 1.0
    return response


def reverberate(
    clean: Samples,
    response: npt.NDArray[np.float64],
    upto_s: float | None = None,
    sample_rate: int = 44100,
) -> Samples:
    """Convolve each channel with its impulse response (cut at `upto_s` if given),
    keeping the length of `clean`."""
    if upto_s is not None:
        response = response[:, : int(upto_s * sample_rate)]
    wet = [
        signal.fftconvolve(clean[channel], response[channel])[: clean.shape[1]]
        for channel in range(clean.shape[0])
    ]
    return np.stack(wet).astype(np.float32)
