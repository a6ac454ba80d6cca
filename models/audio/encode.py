"""Streaming conversion of stems back to the input's domain, and the stem file encoders.
`OutputConverter` turns stereo blocks at the model rate into the input's layout (mono: the
mean; more channels: the transpose of `models.audio.domain.stereo_downmix_matrix`, an explicit
matrix rather than libswresample's upmix, so each side lands in the channels that were folded
into it, front left/right at unity) and rate (a streaming soxr resampler), exactly
`total_frames` long. `StemEncoder` writes 16-bit WAV, 16-bit FLAC or 320 kbps CBR MP3
(libmp3lame; below 32 kHz the highest bitrate that MPEG version allows) block by block.
Samples are clipped to [-1, 1] before conversion, never rescaled and never wrapped around,
so stems keep their level and still sum to the mixture wherever the mixture did not clip.
WAV and FLAC decode to exactly the frames written; MP3 does too, except that when the frame
count modulo the MP3 frame length (1152, or 576 below 32 kHz) is 1 to 46, FFmpeg's muxer
cannot record that much end padding and decoders return 47 minus that remainder extra
trailing samples of near silence.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from types import TracebackType

import av
import numpy as np
import numpy.typing as npt
import soxr
from av.audio.frame import AudioFrame
from av.audio.layout import AudioLayout
from av.audio.stream import AudioStream

from models.audio.domain import RESAMPLE_QUALITY, stereo_downmix_matrix

FORMATS = ("wav", "flac", "mp3")

MODEL_CHANNELS = 2

MP3_BIT_RATE = 320_000

MP3_SAMPLE_RATES = frozenset({8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000})

MP3_MAX_CHANNELS = 2

FLAC_MAX_CHANNELS = 8

# FFmpeg's float <-> s16 convention: decoders divide by 32768, so scaling by 32768 (and
# saturating the one value that overflows, +1.0) makes decoded 16-bit files exact.
_INT16_SCALE = 32768.0


class OutputConverter:
    """Streams stem blocks from the model's domain back to the input's domain."""

    def __init__(
        self,
        *,
        model_rate: int,
        out_rate: int,
        out_channels: int,
        out_layout: str,
        total_frames: int,
    ) -> None:
        if model_rate <= 0 or out_rate <= 0:
            raise ValueError("sample rates must be positive")
        if total_frames < 0:
            raise ValueError("total_frames must not be negative")
        _check_layout(out_layout, out_channels)
        self._out_channels = out_channels
        self._total_frames = total_frames
        self._emitted = 0
        self._finished = False
        # Mono is folded before resampling, so that only one channel is resampled.
        self._resampled_channels = 1 if out_channels == 1 else MODEL_CHANNELS
        self._upmix = (
            np.ascontiguousarray(stereo_downmix_matrix(out_layout).T)
            if out_channels > MODEL_CHANNELS
            else None
        )
        self._resampler = (
            soxr.ResampleStream(
                model_rate,
                out_rate,
                self._resampled_channels,
                dtype="float32",
                quality=RESAMPLE_QUALITY,
            )
            if model_rate != out_rate
            else None
        )

    def push(self, block: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Convert the next block (2, n) at the model rate; returns (out_channels, m)."""
        if self._finished:
            raise RuntimeError("push after finish")
        if block.ndim != 2 or block.shape[0] != MODEL_CHANNELS:
            raise ValueError(f"a block must be shaped ({MODEL_CHANNELS}, n), not {block.shape}")
        folded = self._fold(np.asarray(block, dtype=np.float32))
        if self._resampler is not None:
            folded = self._resample(folded, last=False)
        return self._emit(folded)

    def finish(self) -> npt.NDArray[np.float32]:
        """Flush the resampler; pads or trims so the total emitted is exactly `total_frames`."""
        if self._finished:
            raise RuntimeError("finish called twice")
        self._finished = True
        tail = np.zeros((self._resampled_channels, 0), dtype=np.float32)
        if self._resampler is not None:
            tail = self._resample(tail, last=True)
        flushed = self._emit(tail)
        missing = self._total_frames - self._emitted
        self._emitted = self._total_frames
        padding = np.zeros((self._out_channels, missing), dtype=np.float32)
        return np.concatenate([flushed, padding], axis=1)

    def _fold(self, block: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """The block with the channels that get resampled: its mean for a mono output."""
        if self._resampled_channels == 1:
            return block.mean(axis=0, keepdims=True, dtype=np.float32)
        return block

    def _resample(self, block: npt.NDArray[np.float32], *, last: bool) -> npt.NDArray[np.float32]:
        """Feed the streaming resampler; returns what it has ready, (channels, m)."""
        assert self._resampler is not None
        # soxr streams take (frames, channels).
        resampled = self._resampler.resample_chunk(np.ascontiguousarray(block.T), last=last)
        return np.ascontiguousarray(resampled.T, dtype=np.float32)

    def _emit(self, block: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Trim to what is left of `total_frames`, then map to the output channels."""
        kept = block[:, : self._total_frames - self._emitted]
        self._emitted += kept.shape[1]
        if self._upmix is not None:
            return self._upmix @ kept
        return np.ascontiguousarray(kept)


@dataclass(frozen=True)
class _Codec:
    """How one output format is written."""

    muxer: str
    encoder: str
    sample_format: str


_CODECS = {
    "wav": _Codec(muxer="wav", encoder="pcm_s16le", sample_format="s16"),
    "flac": _Codec(muxer="flac", encoder="flac", sample_format="s16"),
    "mp3": _Codec(muxer="mp3", encoder="libmp3lame", sample_format="fltp"),
}

# RF64 once a WAV passes 4 GiB, which a plain RIFF header cannot describe.
_MUXER_OPTIONS = {"wav": {"rf64": "auto"}}


class StemEncoder:
    """Writes one stem to a file incrementally."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        fmt: str,
        *,
        sample_rate: int,
        channels: int,
        layout: str,
    ) -> None:
        if fmt not in _CODECS:
            raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
        _check_layout(layout, channels)
        check_supported(fmt, sample_rate, channels)
        self._codec = _CODECS[fmt]
        self._sample_rate = sample_rate
        self._channels = channels
        self._layout = layout
        self._written = 0
        self._closed = False
        self._container = av.open(
            os.fspath(path),
            mode="w",
            format=self._codec.muxer,
            container_options=_MUXER_OPTIONS.get(fmt),
        )
        try:
            self._stream = self._add_stream()
        except BaseException:
            self._container.close()
            raise

    def write(self, block: npt.NDArray[np.float32]) -> None:
        """Encode a block (channels, n) in the output domain; samples beyond ±1 are clipped."""
        if self._closed:
            raise RuntimeError("write after close")
        if block.ndim != 2 or block.shape[0] != self._channels:
            raise ValueError(f"a block must be shaped ({self._channels}, n), not {block.shape}")
        if block.shape[1] == 0:
            return
        frame = self._frame(np.clip(block, -1.0, 1.0).astype(np.float32, copy=False))
        frame.pts = self._written
        self._written += frame.samples
        for packet in self._stream.encode(frame):
            self._container.mux(packet)

    def close(self) -> None:
        """Flush the encoder and close the file; closing twice is harmless."""
        if self._closed:
            return
        self._closed = True
        try:
            for packet in self._stream.encode(None):
                self._container.mux(packet)
        finally:
            self._container.close()

    def __enter__(self) -> StemEncoder:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _add_stream(self) -> AudioStream:
        """The output audio stream, configured for the format."""
        stream = self._container.add_stream(
            self._codec.encoder, rate=self._sample_rate, layout=self._layout
        )
        assert isinstance(stream, AudioStream)
        stream.format = self._codec.sample_format
        stream.time_base = Fraction(1, self._sample_rate)
        if self._codec.encoder == "libmp3lame":
            stream.bit_rate = MP3_BIT_RATE
        return stream

    def _frame(self, clipped: npt.NDArray[np.float32]) -> AudioFrame:
        """An audio frame in the encoder's sample format for a clipped block."""
        if self._codec.sample_format == "fltp":
            samples = np.ascontiguousarray(clipped)
        else:
            pcm = np.minimum(np.rint(clipped * _INT16_SCALE), _INT16_SCALE - 1).astype(np.int16)
            # Packed s16 is one plane of interleaved samples.
            samples = np.ascontiguousarray(pcm.T).reshape(1, -1)
        frame = AudioFrame.from_ndarray(
            samples, format=self._codec.sample_format, layout=self._layout
        )
        frame.sample_rate = self._sample_rate
        frame.time_base = Fraction(1, self._sample_rate)
        return frame


def _check_layout(layout: str, channels: int) -> None:
    """Refuse a layout that does not have `channels` channels."""
    if channels < 1:
        raise ValueError("there must be at least one channel")
    if AudioLayout(layout).nb_channels != channels:
        raise ValueError(f"layout {layout!r} does not have {channels} channels")


def check_supported(fmt: str, sample_rate: int, channels: int) -> None:
    """Refuse rates and channel counts the format cannot store."""
    if sample_rate <= 0:
        raise ValueError("the sample rate must be positive")
    if fmt == "mp3" and sample_rate not in MP3_SAMPLE_RATES:
        raise ValueError(f"MP3 cannot store {sample_rate} Hz audio")
    if fmt == "mp3" and channels > MP3_MAX_CHANNELS:
        raise ValueError(f"MP3 cannot store more than {MP3_MAX_CHANNELS} channels")
    if fmt == "flac" and channels > FLAC_MAX_CHANNELS:
        raise ValueError(f"FLAC cannot store more than {FLAC_MAX_CHANNELS} channels")
