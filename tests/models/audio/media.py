"""Audio and video files built with PyAV for the decoding and upload tests: tones whose
channels each have their own frequency, canonical WAVs whose header may lie, a video
stream beside the audio, and files whose header declares no length."""

from __future__ import annotations

import struct
from pathlib import Path

import av
import numpy as np
import numpy.typing as npt
from av.audio.frame import AudioFrame
from av.audio.stream import AudioStream
from av.container import OutputContainer
from av.video.frame import VideoFrame
from av.video.stream import VideoStream

# Each channel gets its own frequency, so channel order and content can both be checked.
CHANNEL_HZ = (1000.0, 1500.0, 2000.0, 2500.0, 3000.0, 3500.0)

VIDEO_RATE = 10


def tone(rate: int, frames: int, channels: int, amplitude: float = 0.5) -> npt.NDArray[np.float32]:
    """Sines at CHANNEL_HZ, one per channel, shaped (channels, frames)."""
    t = np.arange(frames) / rate
    rows = [amplitude * np.sin(2 * np.pi * CHANNEL_HZ[c] * t) for c in range(channels)]
    return np.array(rows, dtype=np.float32)


def peak_hz(signal: npt.NDArray[np.float32], rate: int) -> float:
    """Frequency of the strongest spectral peak of a 1-D signal."""
    spectrum = np.abs(np.fft.rfft(signal * np.hanning(signal.size)))
    return float(np.fft.rfftfreq(signal.size, 1 / rate)[np.argmax(spectrum)])


def write_audio(
    path: Path,
    samples: npt.NDArray[np.float32],
    *,
    rate: int,
    layout: str,
    muxer: str,
    codec: str,
    video_codec: str | None = None,
    options: dict[str, str] | None = None,
    muxer_options: dict[str, str] | None = None,
) -> None:
    """Encode float samples (and optionally a tiny black video) into `path` with PyAV."""
    with av.open(str(path), mode="w", format=muxer, options=muxer_options or {}) as container:
        # Every stream must exist before the first packet is muxed.
        video = add_video(container, video_codec) if video_codec is not None else None
        stream = container.add_stream(codec, rate=rate, layout=layout, options=options)
        assert isinstance(stream, AudioStream)
        for start in range(0, samples.shape[1], 1000):
            block = np.ascontiguousarray(samples[:, start : start + 1000])
            frame = AudioFrame.from_ndarray(block, format="fltp", layout=layout)
            frame.sample_rate = rate
            frame.pts = start
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
        if video is not None:
            write_video(container, video, seconds=samples.shape[1] / rate)


def add_video(container: OutputContainer, codec: str) -> VideoStream:
    """A 16x16 video stream."""
    stream = container.add_stream(codec, rate=VIDEO_RATE)
    assert isinstance(stream, VideoStream)
    stream.width = 16
    stream.height = 16
    stream.pix_fmt = "yuv420p"
    return stream


def write_video(container: OutputContainer, stream: VideoStream, seconds: float) -> None:
    """`seconds` of black frames on `stream`."""
    for index in range(round(seconds * VIDEO_RATE)):
        frame = VideoFrame.from_ndarray(np.zeros((16, 16, 3), dtype=np.uint8), format="rgb24")
        frame.pts = index
        container.mux(stream.encode(frame))
    container.mux(stream.encode(None))


def wav_bytes(samples: npt.NDArray[np.float32], rate: int, data_size: int | None = None) -> bytes:
    """A canonical 44-byte-header PCM WAV; `data_size` overrides the size the header claims."""
    channels = samples.shape[0]
    pcm = (np.clip(samples, -1, 1).T * 32767).astype("<i2").tobytes()
    claimed = len(pcm) if data_size is None else data_size
    header = (
        b"RIFF"
        + struct.pack("<I", (36 + claimed) & 0xFFFFFFFF)
        + b"WAVE"
        + b"fmt "
        + struct.pack("<IHHIIHH", 16, 1, channels, rate, rate * channels * 2, channels * 2, 16)
        + b"data"
        + struct.pack("<I", claimed)
    )
    return header + pcm


def flac_without_total_samples(path: Path, samples: npt.NDArray[np.float32], rate: int) -> bytes:
    """A FLAC whose STREAMINFO says 0 total samples (unknown), as a streaming encoder
    writes it."""
    write_audio(path, samples, rate=rate, layout="stereo", muxer="flac", codec="flac")
    data = bytearray(path.read_bytes())
    # STREAMINFO follows "fLaC" and a 4-byte block header; its bytes 10-17 pack the sample
    # rate (20 bits), channels (3), bits per sample (5) and total samples (36).
    start = 8 + 10
    packed = int.from_bytes(data[start : start + 8], "big") >> 36 << 36
    data[start : start + 8] = packed.to_bytes(8, "big")
    return bytes(data)


def write_unknown_length(kind: str, path: Path, seconds: float) -> bytes:
    """`seconds` of stereo tones in a file whose header declares no length."""
    rate = 48000 if kind == "webm-recording" else 44100
    samples = tone(rate, round(rate * seconds), 2)
    if kind == "flac-streamed":
        return flac_without_total_samples(path, samples, rate)
    muxer, codec, muxer_options = {
        # Matroska's live mode writes no Duration element, as MediaRecorder does.
        "webm-recording": ("webm", "libopus", {"live": "1"}),
        "adts-aac": ("adts", "aac", {}),
        "mp3-without-xing": ("mp3", "libmp3lame", {"write_xing": "0"}),
    }[kind]
    write_audio(
        path,
        samples,
        rate=rate,
        layout="stereo",
        muxer=muxer,
        codec=codec,
        muxer_options=muxer_options,
    )
    return path.read_bytes()


UNKNOWN_LENGTH = ("flac-streamed", "webm-recording", "adts-aac", "mp3-without-xing")
