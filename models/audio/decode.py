"""Audio decoding and probing.

`decode` turns an uploaded file (a path or its bytes) into a `Track` of float32 planar
samples in the file's own rate and channel layout, with PyAV. It only opens a short list of
plain audio/video containers, checks the size of the input before reading it, and enforces
the duration and decoded-size limits while decoding, so a file whose header lies about its
length is stopped at the limit with memory bounded by that limit. Every failure surfaces as
`AudioError` (or `AudioLimitError`) with a message that names the file by its basename only.
An input that decodes but not whole (shorter than its header declares, damaged packets, no
audio at its start) still gives a track, which carries the reasons in `Track.warnings`
(models/audio/integrity.py). `probe_duration` checks an upload cheaply: the length its header
declares, if any, once its first audio has decoded. The model's domain is
models/audio/domain.py.
"""

from __future__ import annotations

import io
import itertools
import math
import os
import stat
from collections.abc import Generator
from dataclasses import dataclass
from typing import BinaryIO

import av
import av.error
import numpy as np
import numpy.typing as npt
from av.audio.frame import AudioFrame
from av.audio.layout import AudioLayout
from av.audio.stream import AudioStream
from av.container import InputContainer

from models.audio.integrity import (
    Head,
    Tally,
    codec_description,
    declared_duration,
    integrity_warnings,
    read_head,
    skipped_leading_bytes,
)
from models.errors import AudioError, AudioLimitError

# Only plain containers: demuxers such as hls or concat would follow references to other
# files or URLs named inside an upload.
ALLOWED_DEMUXERS = ("wav", "flac", "mp3", "ogg", "aac", "mov", "mp4", "m4a", "matroska", "webm")

# The WAVE speaker order (also ffmpeg's native order): how a file that does not name its
# channels is to be read.
WAVE_CHANNEL_ORDER = (
    "FL", "FR", "FC", "LFE", "BL", "BR", "FLC", "FRC", "BC",
    "SL", "SR", "TC", "TFL", "TFC", "TFR", "TBL", "TBC", "TBR",
)  # fmt: skip

_BYTES_PER_SAMPLE = 4  # float32

_INPUT_NAME = "input"

# How many packets `probe_duration` decodes at most, looking for the first audio: enough
# for codecs whose first packets are all priming (AAC, Opus), few enough to stay cheap.
PROBE_PACKETS = 64


@dataclass(frozen=True)
class DecodeLimits:
    """Bounds on what `decode` accepts; the defaults suit a one-hour music upload."""

    max_duration_s: float = 3600.0
    max_decoded_bytes: int = 2 * 1024**3
    max_channels: int = 16
    min_sample_rate: int = 8000
    max_sample_rate: int = 192000
    max_input_bytes: int = 1024**3

    def __post_init__(self) -> None:
        """Refuse limits that would let nothing, or anything, through."""
        if min(self.max_duration_s, self.max_decoded_bytes, self.max_channels) <= 0:
            raise ValueError("decode limits must be positive")
        if not 0 < self.min_sample_rate <= self.max_sample_rate:
            raise ValueError("min_sample_rate must be positive and at most max_sample_rate")
        if self.max_input_bytes <= 0:
            raise ValueError("max_input_bytes must be positive")


@dataclass(frozen=True)
class Track:
    """Decoded audio: float32 samples shaped (channels, frames), C-contiguous, and what a
    user should know about the input it came from (empty when it decoded whole)."""

    samples: npt.NDArray[np.float32]
    sample_rate: int
    layout: str
    warnings: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        """Keep the invariants every consumer of a track relies on."""
        if self.samples.ndim != 2 or self.samples.dtype != np.float32:
            raise ValueError("track samples must be a float32 array shaped (channels, frames)")
        if not self.samples.flags.c_contiguous:
            raise ValueError("track samples must be C-contiguous")
        if self.sample_rate <= 0:
            raise ValueError("track sample rate must be positive")
        if AudioLayout(self.layout).nb_channels != self.channels:
            raise ValueError(f"layout {self.layout!r} does not have {self.channels} channels")

    @property
    def channels(self) -> int:
        """Number of channels."""
        return int(self.samples.shape[0])

    @property
    def frames(self) -> int:
        """Number of samples per channel."""
        return int(self.samples.shape[1])

    @property
    def duration_s(self) -> float:
        """Length in seconds."""
        return self.frames / self.sample_rate


def decode(source: str | os.PathLike[str] | bytes, limits: DecodeLimits = DecodeLimits()) -> Track:
    """Decode the first audio stream of a file, or of its bytes, within `limits`."""
    name = _input_name(source)
    with _open_input(source, limits, name) as data:
        head = read_head(data)
        try:
            with _open_container(data, name) as container:
                stream = _first_audio_stream(container, head, name)
                _check_stream_header(stream, limits, name)
                return _decode_stream(container, stream, head, limits, name)
        except (av.error.FFmpegError, ValueError) as error:
            raise AudioError(f"{name}: the audio could not be decoded") from error


def probe_duration(
    source: str | os.PathLike[str] | bytes, *, name: str | None = None
) -> float | None:
    """The duration in seconds that a file's header declares, or None when it declares
    none (a recording streamed as it was made, raw AAC, an MP3 without a VBR tag).

    Decodes only up to the first audio (at most PROBE_PACKETS packets), so it is cheap; a
    header can lie, which `decode` catches. Raises AudioError saying why when the file is
    not audio this service can decode: not a recognised container, no audio stream, a codec
    without a decoder here, or nothing decodable at its start. `name` replaces the file's
    basename in messages.
    """
    name = name or _input_name(source)
    with _open_input(source, DecodeLimits(), name) as data:
        head = read_head(data)
        try:
            with _open_container(data, name) as container:
                stream = _first_audio_stream(container, head, name)
                tally = Tally()
                frames = _decoded_frames(container, stream, tally, max_packets=PROBE_PACKETS)
                if next(frames, None) is None:
                    raise AudioError(
                        f"{name}: no audio could be decoded at its start "
                        "(empty, damaged, or not audio)"
                    )
                frames.close()
                return declared_duration(container, stream, head, tally.first_packet_pos)
        except (av.error.FFmpegError, ValueError) as error:
            raise AudioError(f"{name}: the audio could not be read") from error


def _input_name(source: str | os.PathLike[str] | bytes) -> str:
    """How messages name the input: the basename of a path, never its directories."""
    if isinstance(source, bytes):
        return _INPUT_NAME
    return os.path.basename(os.fspath(source)) or _INPUT_NAME


def _open_input(
    source: str | os.PathLike[str] | bytes, limits: DecodeLimits, name: str
) -> BinaryIO:
    """A readable binary stream over the input, once its size is within the limit.

    A path is opened as a plain file rather than handed to FFmpeg, so that it is never
    read as a URL or protocol specification.
    """
    if isinstance(source, bytes):
        _check_input_size(len(source), limits, name)
        return io.BytesIO(source)
    try:
        data = open(source, "rb")  # noqa: SIM115 - the caller closes it
    except (OSError, ValueError) as error:  # ValueError: a NUL byte in the path
        raise AudioError(f"{name}: the file cannot be read") from error
    try:
        status = os.fstat(data.fileno())
        if not stat.S_ISREG(status.st_mode):
            raise AudioError(f"{name}: not a regular file")
        _check_input_size(status.st_size, limits, name)
    except BaseException:
        data.close()
        raise
    return data


def _check_input_size(size: int, limits: DecodeLimits, name: str) -> None:
    """Refuse empty input and input beyond `max_input_bytes`."""
    if size == 0:
        raise AudioError(f"{name}: the input is empty")
    if size > limits.max_input_bytes:
        raise AudioLimitError(
            f"{name}: the input is larger than the limit of {limits.max_input_bytes} bytes"
        )


def _open_container(data: BinaryIO, name: str) -> InputContainer:
    """Open `data` with one of the allowed demuxers."""
    try:
        return av.open(
            data,
            mode="r",
            container_options={"format_whitelist": ",".join(ALLOWED_DEMUXERS)},
            metadata_errors="replace",
        )
    except (av.error.FFmpegError, ValueError) as error:
        raise AudioError(
            f"{name}: not a recognised audio file (unknown format, truncated or corrupt)"
        ) from error


def _first_audio_stream(container: InputContainer, head: Head, name: str) -> AudioStream:
    """The first audio stream of the container, if this build can decode it."""
    if not container.streams.audio:
        raise AudioError(f"{name}: no audio stream found")
    stream = container.streams.audio[0]
    # PyAV gives a stream no codec context when FFmpeg has no decoder for its codec.
    if stream.codec_context is None:
        raise AudioError(
            f"{name}: the audio codec ({codec_description(container, head)}) "
            "is not one this service can decode"
        )
    return stream


def _check_stream_header(stream: AudioStream, limits: DecodeLimits, name: str) -> None:
    """Refuse a stream whose header already breaks a limit, before decoding any of it."""
    if stream.codec_context.sample_rate <= 0:
        raise AudioError(f"{name}: the audio stream has no sample rate")
    _check_rate(stream.codec_context.sample_rate, limits, name)
    _check_channels(stream.codec_context.channels, limits, name)


def _check_rate(rate: int, limits: DecodeLimits, name: str) -> None:
    """Refuse a sample rate outside the limits."""
    if not limits.min_sample_rate <= rate <= limits.max_sample_rate:
        raise AudioLimitError(
            f"{name}: the sample rate of {rate} Hz is outside the supported range "
            f"{limits.min_sample_rate}-{limits.max_sample_rate} Hz"
        )


def _check_channels(channels: int, limits: DecodeLimits, name: str) -> None:
    """Refuse more channels than the limit."""
    if channels > limits.max_channels:
        raise AudioLimitError(
            f"{name}: {channels} channels is more than the limit of {limits.max_channels}"
        )


def _decode_stream(
    container: InputContainer, stream: AudioStream, head: Head, limits: DecodeLimits, name: str
) -> Track:
    """Decode `stream` to float32 planar samples, stopping as soon as a limit is passed;
    the track carries warnings when the input did not decode whole."""
    tally = Tally()
    frames = _decoded_frames(container, stream, tally)
    first = next(frames, None)
    if first is None:
        raise AudioError(f"{name}: the audio is empty (nothing could be decoded)")
    max_frames, limit_message = _frame_limit(first, limits, name)
    # Format conversion only: rate and layout stay those of the source.
    to_float = av.AudioResampler(format="fltp")
    chunks: list[npt.NDArray[np.float32]] = []
    decoded = 0
    for frame in itertools.chain([first], frames):
        _check_same_format(first, frame, name)
        decoded += frame.samples
        if decoded > max_frames:
            raise AudioLimitError(limit_message)
        chunks.extend(_planar_float(to_float.resample(frame)))
    chunks.extend(_planar_float(to_float.resample(None)))
    samples = np.concatenate(chunks, axis=1)
    warnings = integrity_warnings(
        samples.shape[1] / first.sample_rate,
        declared_duration(container, stream, head, tally.first_packet_pos),
        tally,
        skipped_leading_bytes(container, head, tally),
    )
    return Track(
        samples=samples,
        sample_rate=first.sample_rate,
        layout=_layout_name(first.layout),
        warnings=warnings,
    )


def _frame_limit(first: AudioFrame, limits: DecodeLimits, name: str) -> tuple[int, str]:
    """Most frames the stream may decode to, and the message for passing that number.

    Rate and channels are checked again on the decoded frame: some codecs (HE-AAC)
    decode to a different rate or channel count than their container announces.
    """
    if first.sample_rate <= 0:
        raise AudioError(f"{name}: the audio stream has no sample rate")
    channels = first.layout.nb_channels
    _check_rate(first.sample_rate, limits, name)
    _check_channels(channels, limits, name)
    duration_frames = math.floor(limits.max_duration_s * first.sample_rate)
    size_frames = limits.max_decoded_bytes // (_BYTES_PER_SAMPLE * channels)
    if duration_frames <= size_frames:
        return duration_frames, (
            f"{name}: the audio is longer than the limit of {limits.max_duration_s:g} seconds"
        )
    return size_frames, (
        f"{name}: the decoded audio is larger than the limit of {limits.max_decoded_bytes} bytes"
    )


def _decoded_frames(
    container: InputContainer,
    stream: AudioStream,
    tally: Tally,
    *,
    max_packets: int | None = None,
) -> Generator[AudioFrame, None, None]:
    """Frames of `stream`, skipping packets that fail to decode, until the data ends (or
    `max_packets` packets with data have been read).

    Like the ffmpeg command line, a corrupt packet is skipped and a demuxing error ends the
    stream, so truncated audio yields what could be decoded; `tally` counts both.
    """
    try:
        for packet in container.demux(stream):
            if max_packets is not None and tally.packets >= max_packets:
                return
            try:
                frames = packet.decode()
            except av.error.InvalidDataError:
                if packet.size:
                    tally.packet(packet.pos, failed=True)
                continue
            if packet.size:  # not the empty packet that flushes the decoder at the end
                tally.packet(packet.pos, failed=False)
            yield from (frame for frame in frames if frame.samples > 0)
    except av.error.InvalidDataError:
        tally.stopped_by_error = True
    except av.error.EOFError:
        return


def _check_same_format(first: AudioFrame, frame: AudioFrame, name: str) -> None:
    """Refuse a stream whose rate or channel count changes mid-stream."""
    if frame.sample_rate != first.sample_rate:
        raise AudioError(f"{name}: the sample rate changes in the middle of the audio")
    if frame.layout.nb_channels != first.layout.nb_channels:
        raise AudioError(f"{name}: the channel count changes in the middle of the audio")


def _planar_float(frames: list[AudioFrame]) -> list[npt.NDArray[np.float32]]:
    """The (channels, samples) float32 arrays of frames already converted to 'fltp'."""
    return [np.asarray(frame.to_ndarray(), dtype=np.float32) for frame in frames]


def _layout_name(layout: AudioLayout) -> str:
    """The layout's name, reading channels the file does not name in WAVE speaker order."""
    if all(channel.name != "NONE" for channel in layout.channels):
        return layout.name
    count = layout.nb_channels
    if count == 1:
        return "mono"
    if count <= len(WAVE_CHANNEL_ORDER):
        return AudioLayout("+".join(WAVE_CHANNEL_ORDER[:count])).name
    return layout.name
