"""Deecho: find discrete echoes (delayed, scaled copies of the whole signal) and remove them.

The method is cepstral echo detection (Bogert, Healy & Tukey, 1963; Childers, Skinner &
Kemerait, "The cepstrum: A guide to processing", Proc. IEEE 65(10), 1977) followed by exact
inverse filtering. An echo multiplies the spectrum by ``1 + g e^{-jwd}``; in the power
cepstrum (inverse FFT of the log power spectrum) that factor becomes an isolated series of
rahmonics, ``g`` at quefrency ``d``, ``-g^2/2`` at ``2d``, ``g^3/3`` at ``3d``..., whatever
the music underneath, because the log turns the product into a sum and the music's spectral
envelope lives at low quefrencies. So the cepstrum gives both the delay (the peak) and the
gain (its height) with no model of the music, and a peak is accepted only when its second
and third rahmonics match an echo's: pitch periods (a bass note's 20 to 70 ms) and
repeating loops (a hi-hat every 250 ms) give positive second rahmonics and are left alone.
Each accepted echo is removed exactly by the inverse filter ``y[n] = x[n] - g y[n-d]``
(stable for ``|g| < 1``), and up to ``max_echoes`` echoes are found one after another by
subtracting each accepted echo's rahmonics from the cepstrum. Chosen over autocorrelation
or adaptive filtering because it needs one FFT pair for the whole track, its gain estimate
is unbiased by the music's spectrum, and a signal with no echo passes through untouched.
Delays are whole samples; one delay and gain are shared by all channels (a room echo
reaches every microphone the same way), estimated from their summed power spectra. The FFTs
and the filter run in torch, on the GPU when asked. Known limit: a track that is one
sample-exact loop from start to end has a line spectrum, and an echo on it can be misread.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from scipy import fft as scipy_fft

from models.audio.samples import Samples
from models.errors import PreprocessError
from models.preprocess.common import limit_peak, step_device

# Longest delay searched and most echoes removed: limits on the work a caller can ask for.
MAX_DELAY_LIMIT_S = 5.0
MAX_ECHOES_LIMIT = 10
# Floor on the power spectrum, relative to its peak, so that log() stays finite.
POWER_FLOOR = 1e-12
# Rahmonic terms smaller than this are below float32 resolution of the cepstrum.
RAHMONIC_CUTOFF = 1e-7
# A rejected peak (a pitch period) is broad: skip this far either side of it.
REJECT_GUARD_S = 0.001
# Peaks examined at most, accepted or not, so the search time is bounded.
MAX_CANDIDATES = 200
# Scale from the median absolute deviation to the standard deviation of Gaussian noise.
MAD_TO_STD = 1.4826


@dataclass(frozen=True)
class DeechoOptions:
    """Settings of the echo search; every default suits a mixed song.

    min_delay_s, max_delay_s: range of echo delays searched, in seconds (20 ms to 500 ms:
        below 20 ms a reflection colours the sound rather than repeating it).
    max_echoes: at most this many echoes are removed, strongest first.
    min_gain: an echo quieter than this (linear gain, 0.1 = -20 dB) is left alone.
    max_gain: a louder peak is not taken for an echo: a reflection is weaker than the
        direct sound, and such peaks come from spectra with deep periodic nulls (a
        sample-exact loop); it also keeps the inverse filter well damped.
    min_significance: a cepstral peak must stand this many noise standard deviations
        above the cepstrum's median level to count as an echo.
    """

    min_delay_s: float = 0.02
    max_delay_s: float = 0.5
    max_echoes: int = 3
    min_gain: float = 0.1
    max_gain: float = 0.9
    min_significance: float = 8.0

    def validate(self) -> None:
        """Raise PreprocessError naming the first invalid field."""
        if not 0 < self.min_delay_s < self.max_delay_s <= MAX_DELAY_LIMIT_S:
            raise PreprocessError(
                "Deecho needs 0 < min_delay_s < max_delay_s <= "
                f"{MAX_DELAY_LIMIT_S}, got {self.min_delay_s} and {self.max_delay_s}"
            )
        if isinstance(self.max_echoes, bool) or not isinstance(self.max_echoes, int):
            raise PreprocessError(f"Deecho max_echoes must be an integer, got {self.max_echoes!r}")
        if not 1 <= self.max_echoes <= MAX_ECHOES_LIMIT:
            raise PreprocessError(
                f"Deecho max_echoes must be 1 to {MAX_ECHOES_LIMIT}, got {self.max_echoes}"
            )
        if not 0 < self.min_gain < self.max_gain < 1:
            raise PreprocessError(
                f"Deecho needs 0 < min_gain < max_gain < 1, got {self.min_gain} and {self.max_gain}"
            )
        if not 0 <= self.min_significance < float("inf"):
            raise PreprocessError(
                f"Deecho min_significance must be >= 0 and finite, got {self.min_significance}"
            )


@dataclass(frozen=True)
class Echo:
    """One detected echo: delay in frames and linear gain."""

    delay: int
    gain: float


def deecho(
    samples: Samples,
    sample_rate: int,
    options: DeechoOptions | None = None,
    *,
    device: str = "cpu",
) -> Samples:
    """Remove up to `options.max_echoes` discrete echoes from `samples` (channels, frames).

    Returns float32 audio of the same shape; input with no echo above the detection
    threshold comes back unchanged. If the result peaks above 1.0 it is scaled down as a
    whole to peak 1.0. Runs in torch on `device` ("cpu" or "cuda").
    """
    options = options or DeechoOptions()
    options.validate()
    audio = _check_samples(samples, sample_rate)
    target = step_device(device)
    tensor = torch.from_numpy(audio).to(target)
    echoes = find_echoes(tensor, sample_rate, options)
    for echo in echoes:
        tensor = _remove_echo(tensor, echo)
    return limit_peak(tensor.cpu().numpy())


def find_echoes(audio: torch.Tensor, sample_rate: int, options: DeechoOptions) -> list[Echo]:
    """Echoes found in the power cepstrum of `audio` (channels, frames), strongest first."""
    frames = audio.shape[-1]
    size = scipy_fft.next_fast_len(max(frames, 1), real=True)
    lowest = max(1, round(options.min_delay_s * sample_rate))
    # The third rahmonic at 3d must lie in the cepstrum's first half to be checked.
    highest = min(round(options.max_delay_s * sample_rate), (size - 1) // 6)
    if highest <= lowest:
        return []
    spectrum = torch.fft.rfft(audio, n=size, dim=-1)
    power = (spectrum.real**2 + spectrum.imag**2).sum(dim=0)
    loudest = float(power.max())
    if loudest == 0.0 or not np.isfinite(loudest):
        return []
    log_power = torch.log(power + POWER_FLOOR * loudest)
    cepstrum = torch.fft.irfft(log_power, n=size)[: 3 * highest + 1].double().cpu().numpy()
    search = cepstrum[lowest : highest + 1]
    noise = MAD_TO_STD * float(np.median(np.abs(search - np.median(search))))
    threshold = max(options.min_gain, options.min_significance * noise)
    candidates = np.abs(search)
    guard = max(1, round(REJECT_GUARD_S * sample_rate))
    echoes: list[Echo] = []
    for _ in range(MAX_CANDIDATES):
        offset = int(np.argmax(candidates))
        if candidates[offset] < threshold or len(echoes) == options.max_echoes:
            break
        echo = Echo(lowest + offset, float(cepstrum[lowest + offset]))
        if abs(echo.gain) <= options.max_gain and _is_echo_series(cepstrum, echo, noise):
            echoes.append(echo)
            _subtract_rahmonics(cepstrum, echo)
            candidates = np.abs(cepstrum[lowest : highest + 1]) * (candidates > 0)
        else:
            # The rejected peak's own rahmonics would pass for echoes next: skip them too.
            for multiple in range(offset + lowest, highest + 1, offset + lowest):
                start = max(0, multiple - lowest - guard)
                candidates[start : multiple - lowest + guard + 1] = 0.0
    return echoes


def _is_echo_series(cepstrum: npt.NDArray[np.float64], echo: Echo, noise: float) -> bool:
    """Whether the cepstrum at 2d and 3d holds an echo's rahmonics, ``-g^2/2`` and ``g^3/3``.

    A pitch period or a repeating loop gives a positive second rahmonic and a sample-exact
    loop a series too deep for its first peak; half the expected value, widened by three
    noise deviations, separates these from an echo.
    """
    for order in (2, 3):
        expected = -((-echo.gain) ** order) / order
        if abs(cepstrum[order * echo.delay] - expected) > abs(expected) / 2 + 3 * noise:
            return False
    return True


def _subtract_rahmonics(cepstrum: npt.NDArray[np.float64], echo: Echo) -> None:
    """Remove the cepstrum of ``1 + g z^-d``, the series ``-(-g)^k / k`` at ``k d``, in place."""
    order = 1
    while order * echo.delay < cepstrum.size:
        term = -((-echo.gain) ** order) / order
        if abs(term) < RAHMONIC_CUTOFF:
            break
        cepstrum[order * echo.delay] -= term
        order += 1


def _remove_echo(audio: torch.Tensor, echo: Echo) -> torch.Tensor:
    """Apply ``y[n] = x[n] - g y[n-d]`` to every channel.

    Cut into blocks of d frames the recursion runs across blocks, ``Y_b = X_b - g Y_{b-1}``,
    and a doubling scan solves it in log2(blocks) whole-array steps rather than a loop over
    samples; it stops once ``g^step`` falls below float32 resolution.
    """
    channels, frames = audio.shape
    delay = echo.delay
    blocks = -(-frames // delay)
    padded = torch.nn.functional.pad(audio, (0, blocks * delay - frames))
    result = padded.reshape(channels, blocks, delay)
    step = 1
    factor = -echo.gain
    while step < blocks and abs(factor) >= RAHMONIC_CUTOFF:
        shifted = torch.zeros_like(result)
        shifted[:, step:] = result[:, :-step] * factor
        result = result + shifted
        step *= 2
        factor *= factor
    return result.reshape(channels, blocks * delay)[:, :frames]


def _check_samples(samples: Samples, sample_rate: int) -> Samples:
    """Validate the input and return it as C-contiguous float32."""
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate <= 0:
        raise PreprocessError(f"sample_rate must be a positive integer, got {sample_rate!r}")
    audio = np.ascontiguousarray(samples, dtype=np.float32)
    if audio.ndim != 2 or audio.shape[0] < 1:
        raise PreprocessError(f"samples must have shape (channels, frames), got {audio.shape}")
    if not np.isfinite(audio).all():
        raise PreprocessError("samples must be finite (no NaN or infinity)")
    return audio
