"""The separation model's domain: a decoded track folded into the model's channel count and
converted to its sample rate.

`to_model_input` duplicates mono, folds more than two channels with the explicit ITU-R BS.775
style matrix of `stereo_downmix_matrix` (front left/right at unity, every other left or right
channel at -3 dB into its side, centre channels at -3 dB into both, LFE dropped; no
normalisation), and converts the rate with soxr at `RESAMPLE_QUALITY`, which the stem
encoders' way back (models/audio/encode.py) uses too.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import soxr
from av.audio.layout import AudioChannel, AudioLayout

from models.audio.decode import Track

RESAMPLE_QUALITY = "VHQ"

# ITU-R BS.775 gain for channels folded into a side they do not sit on (-3 dB).
SIDE_GAIN = 1.0 / math.sqrt(2.0)


def to_model_input(
    track: Track, sample_rate: int = 44100, channels: int = 2
) -> npt.NDArray[np.float32]:
    """Float32 (channels, n) at `sample_rate`; the track's own samples when nothing changes.

    Mono is duplicated; more than two channels fold into stereo through
    `stereo_downmix_matrix` (an explicit ITU-R BS.775 style matrix, not libswresample's);
    a mono model gets the mean of that stereo. The rate is converted with soxr.
    """
    if channels not in (1, 2):
        raise ValueError(f"models take mono or stereo input, not {channels} channels")
    samples = _fold_channels(track, channels)
    if track.sample_rate == sample_rate:
        return samples
    return _resample(samples, track.sample_rate, sample_rate)


def stereo_downmix_matrix(layout: str) -> npt.NDArray[np.float32]:
    """Gains shaped (2, channels) that fold `layout` into stereo, ITU-R BS.775 style.

    Front left/right pass at unity; any other channel on one side goes to that side at
    -3 dB; centre channels go to both sides at -3 dB; LFE is dropped. The matrix is not
    normalised, so loud multichannel mixes may exceed full scale in float. For stereo this
    is the identity; its transpose is the upmix that puts a stereo stem back into the
    channels it was folded from.
    """
    gains = [_stereo_gains(channel) for channel in AudioLayout(layout).channels]
    return np.ascontiguousarray(np.array(gains, dtype=np.float32).T)


def _stereo_gains(channel: AudioChannel) -> tuple[float, float]:
    """(left, right) gain of one channel in the stereo fold."""
    if channel.name == "FL":
        return (1.0, 0.0)
    if channel.name == "FR":
        return (0.0, 1.0)
    if "low frequency" in channel.description:
        return (0.0, 0.0)
    if "left" in channel.description:
        return (SIDE_GAIN, 0.0)
    if "right" in channel.description:
        return (0.0, SIDE_GAIN)
    # Centre channels, and channels of unknown position, belong to both sides.
    return (SIDE_GAIN, SIDE_GAIN)


def _fold_channels(track: Track, channels: int) -> npt.NDArray[np.float32]:
    """The track's samples with `channels` (1 or 2) channels at the track's rate."""
    if track.channels == channels:
        return track.samples
    if track.channels == 1:
        return np.repeat(track.samples, channels, axis=0)
    if track.channels == 2:
        stereo = track.samples
    else:
        stereo = stereo_downmix_matrix(track.layout) @ track.samples
    if channels == 1:
        return stereo.mean(axis=0, keepdims=True, dtype=np.float32)
    return stereo


def _resample(
    samples: npt.NDArray[np.float32], in_rate: int, out_rate: int
) -> npt.NDArray[np.float32]:
    """Samples (channels, frames) converted from `in_rate` to `out_rate` with soxr."""
    # soxr takes (frames, channels); the transposed view avoids a copy of the input.
    resampled = soxr.resample(samples.T, in_rate, out_rate, quality=RESAMPLE_QUALITY)
    return np.ascontiguousarray(resampled.T, dtype=np.float32)
