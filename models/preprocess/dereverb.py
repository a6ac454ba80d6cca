"""Dereverb: remove late reverberation by weighted prediction error (WPE) in torch.

WPE (Nakatani, Yoshioka, Kinoshita, Miyoshi & Juang 2010, IEEE TASLP 18(7); the
multichannel form of Yoshioka & Nakatani 2012, IEEE TASLP 20(10)) models each STFT bin
of the reverberant signal as the signal to keep plus a linear prediction from frames at
least `delay` frames in the past, and subtracts that prediction. The delay is what keeps
the direct sound and the early reflections: only what lies `delay_s` or more behind can
be predicted away. Every step runs in torch (STFT, statistics, solves), batched over
frequency bins, on the CPU or CUDA.

Music breaks WPE's source model. WPE assumes the dry signal in a bin is uncorrelated
from frame to frame once its power is normalised; a sustained note is the opposite, so
plain WPE predicts notes away (measured on `synth.render_music`: about 3 dB SDR on a
dry mix, and worse than doing nothing on reverberant ones). Here the dry signal in each
bin is an AR(1) process with a coefficient that changes over time, `s(t) = r(t) s(t-1) +
e(t)`, estimated jointly over the channels from `context` frames either side. The
filter is then fitted to the innovations `e`: both sides of the regression are whitened
by the same `1 - r(t) z^-1`, which leaves the room's prediction unchanged but removes
what a held note contributes (the joint source and room model of Yoshioka, Nakatani &
Miyoshi 2009, and the prewhitening of Kinoshita et al. 2009, made local in time).
The variance normalisation uses the innovation power with a floor at `power_floor`
times its mean in the bin, so that a few near-silent frames do not decide the filter.

A reverb detector guards dry input: when the prediction would take away less than
`detect_db` of the input energy, no reverberation tail was found and the input passes
through unchanged; between `detect_db` and `detect_db + 3` dB the prediction fades in.

Defaults, measured on 10 s of `synth.render_music` through `synth.room_impulse` (target:
dry convolved with the first 50 ms of the response, wet mix scaled to peak 0.9):
2048-point frames with hop 512 (the best of 1024 to 4096 points; shorter frames cannot
follow a note's phase and eat it); delay 4 frames (46 ms; 3 and 5 were worse); 31 taps
(350 ms; 20 taps lose 1.3 dB of tail reduction at RT60 1.2 s, 40 gain nothing for
60 % more time); one iteration (re-estimating the source model from the output lost
up to 0.5 dB); context 2 frames (1 and 3 were worse); floor 0.6 (without a floor, 1 to
1.6 dB less tail reduction; 0.3 and 1.0 were worse) and a ridge of 3e-3 on the normal
equations (0.2 dB more at RT60 0.6 s than a bare 1e-6). With these the late tail falls
5.8 to 6.4 dB at RT60 0.6 s and 6.3 to 7.1 dB at 1.2 s (music and room seeds 0 and 1),
dry music passes unchanged (the detector; the filter alone keeps it at 18 dB SDR), and
plain WPE (10 taps, 3 iterations) reaches -1.5 and +2.0 dB.
The filter is estimated from at most `estimate_s` seconds of frames, taken as evenly
spread blocks, and applied to the whole track by FFT convolution along time, so the
statistics cost no more for a long track (10 s: within 0.1 dB of using all frames).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from models.audio.samples import Samples
from models.errors import AudioError, PreprocessError
from models.preprocess.common import limit_peak, step_device

ESTIMATE_BLOCK = 64  # frames per block of the estimation sample
FREQUENCY_CHUNK = 128  # bins per batch when gathering the delayed frames
DETECT_RAMP_DB = 3.0
MAX_CHANNELS = 8  # predicted jointly; more channels go in groups of this many


@dataclass(frozen=True)
class DereverbOptions:
    """Parameters of the dereverberation; the defaults are tuned for music (see module)."""

    frame_s: float = 0.046  # STFT frame, rounded to a power of two in samples; hop = frame/4
    delay_s: float = 0.05  # what lies closer than this is kept
    span_s: float = 0.35  # how far back the prediction reaches beyond the delay
    iterations: int = 1
    context: int = 2  # frames either side for the source model; 0 turns it off
    power_floor: float = 0.6  # floor of the variance normalisation, times the bin's mean
    detect_db: float = -13.0  # below this predicted-to-input energy, pass input through
    estimate_s: float = 10.0  # most seconds of frames the statistics are taken from
    regularisation: float = 3e-3  # ridge on the normal equations, times their mean diagonal

    def validate(self) -> None:
        """Raise PreprocessError naming the first option that is out of range."""
        checks = (
            ("frame_s", 0.001 <= self.frame_s <= 1.0, "between 0.001 and 1.0"),
            ("delay_s", 0.0 < self.delay_s <= 1.0, "above 0 and at most 1.0"),
            ("span_s", 0.0 < self.span_s <= 5.0, "above 0 and at most 5.0"),
            ("iterations", 1 <= self.iterations <= 10, "an integer from 1 to 10"),
            ("context", 0 <= self.context <= 100, "an integer from 0 to 100"),
            ("power_floor", 0.0 <= self.power_floor <= 100.0, "between 0 and 100"),
            ("detect_db", -100.0 <= self.detect_db <= 0.0, "between -100 and 0"),
            ("estimate_s", 1.0 <= self.estimate_s <= 3600.0, "between 1 and 3600"),
            ("regularisation", 0.0 <= self.regularisation <= 1.0, "between 0 and 1"),
        )
        for name, ok, allowed in checks:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise PreprocessError(f"dereverb option {name} must be a number, got {value!r}")
            if not (ok and math.isfinite(value)):
                raise PreprocessError(f"dereverb option {name} must be {allowed}, got {value!r}")
        for name in ("iterations", "context"):
            if not isinstance(getattr(self, name), int):
                raise PreprocessError(f"dereverb option {name} must be an integer")


@dataclass(frozen=True)
class Sizes:
    """The STFT and predictor sizes for one sample rate."""

    n_fft: int
    hop: int
    delay: int
    taps: int

    @classmethod
    def of(cls, options: DereverbOptions, sample_rate: int) -> Sizes:
        n_fft = 2 ** max(4, round(math.log2(options.frame_s * sample_rate)))
        hop = n_fft // 4
        delay = max(1, round(options.delay_s * sample_rate / hop))
        taps = max(1, math.ceil(options.span_s * sample_rate / hop))
        return cls(n_fft, hop, delay, taps)


def dereverb(
    audio: Samples,
    sample_rate: int,
    options: DereverbOptions | None = None,
    *,
    device: str = "cpu",
) -> Samples:
    """Remove late reverberation from (channels, frames) float audio; same shape out.

    Input too short to hold one prediction, silent input, and input where no
    reverberation is detected come back unchanged. The peak of the result never
    exceeds 1.0: a louder result is scaled down as a whole, never clipped.
    """
    options = options or DereverbOptions()
    options.validate()
    target = step_device(device)
    if not isinstance(sample_rate, int) or not 8000 <= sample_rate <= 384000:
        raise PreprocessError(f"sample rate must be 8000 to 384000 Hz, got {sample_rate!r}")
    if audio.ndim != 2 or audio.shape[0] < 1:
        raise AudioError("audio must be (channels, frames) with at least one channel")
    if not np.all(np.isfinite(audio)):
        raise AudioError("audio holds NaN or infinite samples")
    sizes = Sizes.of(options, sample_rate)
    result = audio.astype(np.float32, copy=True)
    if audio.shape[1] >= sizes.n_fft and np.any(audio):
        # Channels are predicted jointly in groups of at most MAX_CHANNELS: the normal
        # equations grow with the square of channels times taps.
        result = np.concatenate(
            [
                _dereverb_tensor(
                    torch.from_numpy(result[first : first + MAX_CHANNELS]).to(target),
                    sizes,
                    options,
                    sample_rate,
                )
                for first in range(0, result.shape[0], MAX_CHANNELS)
            ]
        )
    return limit_peak(result)


def _dereverb_tensor(
    audio: torch.Tensor, sizes: Sizes, options: DereverbOptions, sample_rate: int
) -> Samples:
    window = torch.hann_window(sizes.n_fft, device=audio.device)
    spectrum = torch.stft(
        audio,
        sizes.n_fft,
        sizes.hop,
        window=window,
        pad_mode="constant",
        return_complex=True,
    ).permute(1, 0, 2)  # (bins, channels, frames)
    if spectrum.shape[-1] <= sizes.delay + 1:
        return audio.cpu().numpy()
    frames = _estimation_frames(spectrum.shape[-1], sizes, options, sample_rate, audio.device)
    estimate = spectrum
    for _ in range(options.iterations):
        filters = _fit_filters(spectrum, estimate, frames, sizes, options)
        prediction = _predict(spectrum, filters, sizes)
        estimate = spectrum - prediction
    removed = float(prediction.abs().square().sum()) / float(spectrum.abs().square().sum())
    removed_db = 10 * math.log10(max(removed, 1e-30))
    weight = min(1.0, max(0.0, (removed_db - options.detect_db) / DETECT_RAMP_DB))
    if weight == 0.0:
        return audio.cpu().numpy()
    dry = spectrum - weight * prediction
    out = torch.istft(
        dry.permute(1, 0, 2),
        sizes.n_fft,
        sizes.hop,
        window=window,
        length=audio.shape[-1],
    )
    return out.cpu().numpy().astype(np.float32)


def _estimation_frames(
    count: int,
    sizes: Sizes,
    options: DereverbOptions,
    sample_rate: int,
    device: torch.device,
) -> torch.Tensor:
    """Frame indices the statistics are taken from: all, or evenly spread blocks."""
    first = sizes.delay  # earlier frames have no past to predict from
    budget = max(ESTIMATE_BLOCK, round(options.estimate_s * sample_rate / sizes.hop))
    if count - first <= budget:
        return torch.arange(first, count, device=device)
    available = (count - first) // ESTIMATE_BLOCK
    chosen = torch.linspace(0, available - 1, budget // ESTIMATE_BLOCK, device=device)
    starts = first + chosen.round().long().unique() * ESTIMATE_BLOCK
    offsets = torch.arange(ESTIMATE_BLOCK, device=device)
    return (starts[:, None] + offsets[None, :]).reshape(-1)


def _shift(x: torch.Tensor, frames: int) -> torch.Tensor:
    """`x` delayed by `frames` along the last axis, zeros shifted in."""
    return torch.nn.functional.pad(x, (frames, 0))[..., : x.shape[-1]]


def _window_sum(x: torch.Tensor, frames: torch.Tensor, half: int) -> torch.Tensor:
    """Sums of `x` over 2 * half + 1 frames centred on each of `frames` (last axis)."""
    padded = torch.nn.functional.pad(x, (half, half))
    window = frames[:, None] + torch.arange(2 * half + 1, device=frames.device)[None, :]
    return padded[..., window].sum(-1)


def _source_model(estimate: torch.Tensor, frames: torch.Tensor, context: int) -> torch.Tensor:
    """The AR(1) coefficient of the signal to keep at `frames`, per bin, shared by the
    channels: least squares over `context` frames either side."""
    if context == 0:
        return torch.zeros(
            estimate.shape[0], frames.numel(), dtype=estimate.dtype, device=estimate.device
        )
    previous = _shift(estimate, 1)
    cross = _window_sum((estimate * previous.conj()).sum(1), frames, context)
    power = _window_sum(previous.abs().square().sum(1), frames, context)
    floor = 1e-6 * power.mean(-1, keepdim=True) + torch.finfo(power.dtype).tiny
    coefficient = cross / torch.maximum(power, floor)
    # a growing AR(1) source is not a note; |r| <= 1 also keeps silent edges at bay
    magnitude = coefficient.abs()
    return torch.where(magnitude > 1.0, coefficient / magnitude.clamp_min(1.0), coefficient)


def _fit_filters(
    spectrum: torch.Tensor,
    estimate: torch.Tensor,
    frames: torch.Tensor,
    sizes: Sizes,
    options: DereverbOptions,
) -> torch.Tensor:
    """Prediction filters (bins, channels * taps, channels), channel-major, by weighted
    least squares on the innovations of the source model at `frames`."""
    bins, channels, _ = spectrum.shape
    taps, delay = sizes.taps, sizes.delay
    coefficient = _source_model(estimate, frames, options.context)
    innovation = estimate[..., frames] - coefficient[:, None] * estimate[..., frames - 1]
    power = innovation.abs().square().mean(1)
    mean = power.mean(-1, keepdim=True)
    power = torch.maximum(power, options.power_floor * mean)
    inverse = 1.0 / power.clamp_min(1e-10 * float(mean.max()) + torch.finfo(power.dtype).tiny)
    padded = torch.nn.functional.pad(spectrum, (taps + delay, 0))
    # lags[k, t] indexes frame t - delay - k of the padded spectrum, k = 0 .. taps
    lags = frames[None, :] + taps - torch.arange(taps + 1, device=frames.device)[:, None]
    identity = torch.eye(taps * channels, dtype=spectrum.dtype, device=spectrum.device)
    filters = []
    for start in range(0, bins, FREQUENCY_CHUNK):
        chunk = slice(start, min(bins, start + FREQUENCY_CHUNK))
        past = padded[chunk][:, :, lags]  # (bins, channels, taps + 1, frames)
        rho = coefficient[chunk][:, None, None, :]
        whitened = (past[:, :, :-1] - rho * past[:, :, 1:]).reshape(
            past.shape[0], -1, frames.numel()
        )
        target = (
            innovation[chunk]
            if estimate is spectrum
            else (
                spectrum[chunk][..., frames]
                - coefficient[chunk][:, None] * spectrum[chunk][..., frames - 1]
            )
        )
        weighted = whitened * inverse[chunk][:, None, :]
        covariance = weighted @ whitened.mH
        load = torch.diagonal(covariance, dim1=-2, dim2=-1).real.mean(-1)
        ridge = options.regularisation * load + torch.finfo(load.dtype).tiny
        covariance = covariance + ridge[:, None, None] * identity
        filters.append(torch.linalg.solve(covariance, weighted @ target.mH))
    return torch.cat(filters)


def _predict(spectrum: torch.Tensor, filters: torch.Tensor, sizes: Sizes) -> torch.Tensor:
    """The late reverberation the filters predict from frames `delay` and more behind:
    a convolution along time in every bin, done by FFT."""
    bins, channels, count = spectrum.shape
    lags = sizes.delay + sizes.taps
    size = 1 << (count + lags - 1).bit_length()
    # kernel[f, i, o, m] weighs input channel i at lag m for output channel o
    kernel = torch.zeros(
        bins, channels, channels, lags, dtype=spectrum.dtype, device=spectrum.device
    )
    kernel[..., sizes.delay :] = (
        filters.reshape(bins, channels, sizes.taps, channels).conj().permute(0, 1, 3, 2)
    )
    prediction = torch.empty_like(spectrum)
    for start in range(0, bins, FREQUENCY_CHUNK):
        chunk = slice(start, min(bins, start + FREQUENCY_CHUNK))
        past = torch.fft.fft(spectrum[chunk], size)
        response = torch.fft.fft(kernel[chunk], size)
        mixed = torch.einsum("fion,fin->fon", response, past)
        prediction[chunk] = torch.fft.ifft(mixed)[..., :count]
    return prediction
