"""Tests of models.audio.decode: decoding every accepted format, the limits, the errors, and
probing. Every fixture file is built here with PyAV."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import pytest
from av.audio.layout import AudioLayout

from models.audio.decode import PROBE_PACKETS, DecodeLimits, Track, decode, probe_duration
from models.audio.integrity import SHORTFALL_TOLERANCE_S, WAV_HEAD_BYTES
from models.errors import AudioError, AudioLimitError
from tests.models.audio.media import (
    CHANNEL_HZ,
    UNKNOWN_LENGTH,
    add_video,
    peak_hz,
    tone,
    wav_bytes,
    write_audio,
    write_unknown_length,
    write_video,
)


def make_wav(path: Path, rate: int, layout: str, seconds: float = 1.0) -> Path:
    """A PCM WAV of tones written with PyAV."""
    channels = AudioLayout(layout).nb_channels
    samples = tone(rate, round(rate * seconds), channels)
    write_audio(path, samples, rate=rate, layout=layout, muxer="wav", codec="pcm_s16le")
    return path


@dataclass(frozen=True)
class Case:
    """One accepted input format and how closely it must decode."""

    suffix: str
    muxer: str
    codec: str
    rate: int
    layout: str
    frame_tolerance: int
    video_codec: str | None = None
    options: dict[str, str] | None = None


CASES = {
    "wav": Case("wav", "wav", "pcm_s16le", 44100, "stereo", 0),
    "flac": Case("flac", "flac", "flac", 44100, "mono", 0),
    "mp3": Case("mp3", "mp3", "libmp3lame", 44100, "stereo", 1152),
    "vorbis": Case("ogg", "ogg", "vorbis", 44100, "stereo", 1024, None, {"strict": "-2"}),
    "opus": Case("opus", "ogg", "libopus", 48000, "mono", 960),
    "m4a": Case("m4a", "ipod", "aac", 44100, "stereo", 2048),
    "mp4+video": Case("mp4", "mp4", "aac", 48000, "stereo", 2048, "mpeg4"),
    "webm+video": Case("webm", "webm", "libopus", 48000, "stereo", 960, "libvpx"),
    "mov+video": Case("mov", "mov", "aac", 44100, "mono", 2048, "libx264"),
}


@pytest.mark.parametrize("from_bytes", [False, True], ids=["path", "bytes"])
@pytest.mark.parametrize("name", list(CASES))
def test_each_format_decodes_to_its_rate_channels_length_and_content(
    tmp_path: Path, name: str, from_bytes: bool
) -> None:
    case = CASES[name]
    channels = AudioLayout(case.layout).nb_channels
    frames = case.rate  # one second
    path = tmp_path / f"fixture.{case.suffix}"
    write_audio(
        path,
        tone(case.rate, frames, channels),
        rate=case.rate,
        layout=case.layout,
        muxer=case.muxer,
        codec=case.codec,
        video_codec=case.video_codec,
        options=case.options,
    )

    track = decode(path.read_bytes() if from_bytes else path)

    # A complete file is never reported as damaged: encoder delay, padding and priming
    # are not a shortfall.
    assert track.warnings == ()
    assert probe_duration(path) == pytest.approx(1.0, abs=0.05)
    assert track.sample_rate == case.rate
    assert track.channels == channels
    assert track.layout == case.layout
    assert abs(track.frames - frames) <= case.frame_tolerance
    assert track.samples.dtype == np.float32
    assert track.samples.flags.c_contiguous
    for channel in range(channels):
        assert peak_hz(track.samples[channel], case.rate) == pytest.approx(
            CHANNEL_HZ[channel], abs=2
        )
        assert np.abs(track.samples[channel]).max() == pytest.approx(0.5, abs=0.3)


def test_lossless_decoding_is_sample_exact(tmp_path: Path) -> None:
    source = tone(44100, 4410, 2)
    path = tmp_path / "exact.flac"
    write_audio(path, source, rate=44100, layout="stereo", muxer="flac", codec="flac")

    track = decode(path)

    assert np.abs(track.samples - source).max() <= 1 / 32768


def test_unnamed_wav_channels_are_read_in_wave_order() -> None:
    # A plain (non-extensible) WAV names no channels; the WAVE convention orders them.
    track = decode(wav_bytes(tone(8000, 800, 6), 8000))

    assert track.layout == "5.1"
    assert track.channels == 6


def test_duration_limit_stops_decoding(tmp_path: Path) -> None:
    path = make_wav(tmp_path / "one-second.wav", 8000, "mono")

    with pytest.raises(AudioLimitError, match=r"longer than the limit of 0\.5 seconds"):
        decode(path, DecodeLimits(max_duration_s=0.5))
    assert decode(path, DecodeLimits(max_duration_s=1.0)).frames == 8000


def test_decoded_bytes_limit_counts_float32_of_all_channels(tmp_path: Path) -> None:
    path = make_wav(tmp_path / "stereo.wav", 8000, "stereo")
    exact = 8000 * 2 * 4

    with pytest.raises(AudioLimitError, match="larger than the limit"):
        decode(path, DecodeLimits(max_decoded_bytes=exact - 1))
    assert decode(path, DecodeLimits(max_decoded_bytes=exact)).frames == 8000


def test_channel_limit(tmp_path: Path) -> None:
    path = make_wav(tmp_path / "surround.wav", 8000, "5.1", seconds=0.5)

    with pytest.raises(AudioLimitError, match="6 channels"):
        decode(path, DecodeLimits(max_channels=2))


@pytest.mark.parametrize(
    ("rate", "limits"),
    [(8000, DecodeLimits(min_sample_rate=16000)), (48000, DecodeLimits(max_sample_rate=44100))],
    ids=["too-low", "too-high"],
)
def test_sample_rate_limits(tmp_path: Path, rate: int, limits: DecodeLimits) -> None:
    path = make_wav(tmp_path / "rate.wav", rate, "mono", seconds=0.5)

    with pytest.raises(AudioLimitError, match=f"sample rate of {rate} Hz"):
        decode(path, limits)


def test_input_size_limit_is_checked_for_paths_and_bytes(tmp_path: Path) -> None:
    path = make_wav(tmp_path / "size.wav", 8000, "mono", seconds=0.5)
    size = path.stat().st_size
    limits = DecodeLimits(max_input_bytes=size - 1)

    with pytest.raises(AudioLimitError, match="input is larger than the limit"):
        decode(path, limits)
    with pytest.raises(AudioLimitError, match="input is larger than the limit"):
        decode(path.read_bytes(), limits)
    assert decode(path, DecodeLimits(max_input_bytes=size)).frames == 4000


@pytest.mark.parametrize("claimed", [0, 0x7FFFFFFF, 0xFFFFFFF0], ids=["zero", "2GiB", "4GiB"])
def test_lying_wav_header_cannot_pass_the_duration_limit(claimed: int) -> None:
    # Ten seconds of data behind a header that claims nothing or gigabytes.
    data = wav_bytes(tone(8000, 80000, 1), 8000, data_size=claimed)

    with pytest.raises(AudioLimitError, match="longer than the limit"):
        decode(data, DecodeLimits(max_duration_s=2.0))


def test_wav_header_claiming_less_data_decodes_only_what_it_claims() -> None:
    data = wav_bytes(tone(8000, 80000, 1), 8000, data_size=200)

    track = decode(data, DecodeLimits(max_duration_s=2.0))

    assert track.frames == 100


def test_empty_input_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty.mp3"
    empty.write_bytes(b"")

    with pytest.raises(AudioError, match="empty"):
        decode(b"")
    with pytest.raises(AudioError, match="empty"):
        decode(empty)


def test_random_bytes_are_not_audio() -> None:
    noise = np.random.default_rng(7).bytes(20000)

    with pytest.raises(AudioError, match="not a recognised audio file"):
        decode(noise)


def test_text_file_is_not_audio(tmp_path: Path) -> None:
    # The .txt extension alone would make FFmpeg pick its tty (ANSI art) demuxer.
    text = tmp_path / "notes.txt"
    text.write_text("these are not the droids you are looking for\n" * 50)

    with pytest.raises(AudioError, match="not a recognised audio file"):
        decode(text)


def test_truncated_wav_header_is_refused() -> None:
    data = wav_bytes(tone(8000, 800, 1), 8000)

    with pytest.raises(AudioError, match="not a recognised audio file"):
        decode(data[:20])


def test_wav_header_without_data_is_empty() -> None:
    data = wav_bytes(tone(8000, 800, 1), 8000)

    with pytest.raises(AudioError, match="audio is empty"):
        decode(data[:44])


def test_truncated_mp3(tmp_path: Path) -> None:
    path = tmp_path / "cut.mp3"
    write_audio(
        path, tone(44100, 44100, 2), rate=44100, layout="stereo", muxer="mp3", codec="libmp3lame"
    )
    data = path.read_bytes()

    with pytest.raises(AudioError, match="not a recognised audio file"):
        decode(data[:100])
    # The first half decodes to what it holds, and says it is short of what the LAME
    # header (a Xing frame) declares.
    half = decode(data[: len(data) // 2])
    assert 0 < half.frames < 44100
    assert half.warnings == (shortfall(half.duration_s, 1.0),)


def test_video_without_audio_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "silent-film.mp4"
    with av.open(str(path), mode="w", format="mp4") as container:
        write_video(container, add_video(container, "mpeg4"), seconds=1.0)

    with pytest.raises(AudioError, match="no audio stream found"):
        decode(path)
    with pytest.raises(AudioError, match="no audio stream found"):
        probe_duration(path)


def test_rate_change_mid_stream_is_refused(tmp_path: Path) -> None:
    parts = []
    for rate in (44100, 48000):
        path = tmp_path / f"{rate}.mp3"
        write_audio(
            path, tone(rate, rate, 2), rate=rate, layout="stereo", muxer="mp3", codec="libmp3lame"
        )
        parts.append(path.read_bytes())

    with pytest.raises(AudioError, match="sample rate changes"):
        decode(b"".join(parts))


def test_messages_name_the_file_but_not_its_directories(tmp_path: Path) -> None:
    path = tmp_path / "secret-dir" / "song.wav"
    path.parent.mkdir()
    path.write_bytes(b"RIFF but not really")

    with pytest.raises(AudioError) as caught:
        decode(path)

    assert "song.wav" in str(caught.value)
    assert "secret-dir" not in str(caught.value)


def test_missing_file_is_an_audio_error(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match=r"missing\.wav: the file cannot be read"):
        decode(tmp_path / "missing.wav")


def test_track_refuses_a_layout_of_another_channel_count() -> None:
    with pytest.raises(ValueError, match="does not have 2 channels"):
        Track(samples=np.zeros((2, 10), dtype=np.float32), sample_rate=44100, layout="5.1")


@pytest.mark.parametrize(
    "limits",
    [
        {"max_duration_s": 0.0},
        {"max_decoded_bytes": 0},
        {"max_channels": 0},
        {"max_input_bytes": 0},
        {"min_sample_rate": 48000, "max_sample_rate": 44100},
    ],
)
def test_limits_that_let_nothing_through_are_refused(limits: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        DecodeLimits(**limits)  # type: ignore[arg-type]


def test_probe_duration_gives_the_length_and_refuses_non_audio(tmp_path: Path) -> None:
    rate = 22050
    path = tmp_path / "tone.flac"
    write_audio(
        path, tone(rate, rate * 3, 2), rate=rate, layout="stereo", muxer="flac", codec="flac"
    )
    assert probe_duration(path) == pytest.approx(3.0, abs=0.05)
    with pytest.raises(AudioError):
        probe_duration(b"not audio at all" * 100)


def test_probe_names_the_input_as_told() -> None:
    with pytest.raises(AudioError, match=r"^audio_file: not a recognised audio file"):
        probe_duration(b"not audio at all" * 100, name="audio_file")


def test_a_codec_without_a_decoder_is_named(tmp_path: Path) -> None:
    # A WAV whose format tag no decoder of this build knows.
    data = bytearray(wav_bytes(tone(8000, 800, 1), 8000))
    data[20:22] = struct.pack("<H", 0x1234)

    for probe_or_decode in (probe_duration, decode):
        with pytest.raises(AudioError, match=r"audio codec \(WAVE format tag 0x1234\) is not one"):
            probe_or_decode(bytes(data))


def test_probe_refuses_a_file_whose_start_does_not_decode() -> None:
    header_only = wav_bytes(tone(8000, 800, 1), 8000)[:44]

    with pytest.raises(AudioError, match="no audio could be decoded at its start"):
        probe_duration(header_only)


# Inputs whose header declares no length: what streaming encoders and browsers write.


@pytest.mark.parametrize("kind", UNKNOWN_LENGTH)
def test_audio_without_a_declared_length_is_probed_as_unknown_and_decodes_whole(
    tmp_path: Path, kind: str
) -> None:
    data = write_unknown_length(kind, tmp_path / "input", seconds=3.0)

    assert probe_duration(data) is None
    track = decode(data)
    assert track.duration_s == pytest.approx(3.0, abs=0.06)
    assert track.warnings == ()


# Truncated and damaged inputs: the track holds what decoded, the warnings say what is
# missing.


def shortfall(decoded_s: float, declared_s: float) -> str:
    """The warning for a track shorter than its header declares."""
    return (
        f"the input is shorter than its header declares: {decoded_s:.1f} s of audio decoded "
        f"of the {declared_s:.1f} s declared; the stems cover the decoded part"
    )


def test_wav_holding_less_than_its_header_declares_warns() -> None:
    # The header says 12 s, the data holds 1 s.
    data = wav_bytes(tone(8000, 8000, 1), 8000, data_size=12 * 8000 * 2)

    assert probe_duration(data) == 12.0
    track = decode(data)
    assert track.frames == 8000
    assert track.warnings == (shortfall(1.0, 12.0),)


def with_junk_before_data(wav: bytes, junk: int) -> bytes:
    """`wav` (a canonical 44-byte header) with a JUNK chunk of `junk` bytes before its data."""
    riff_size = struct.unpack_from("<I", wav, 4)[0] + 8 + junk
    return (
        wav[:4]
        + struct.pack("<I", riff_size)
        + wav[8:36]
        + b"JUNK"
        + struct.pack("<I", junk)
        + bytes(junk)
        + wav[36:]
    )


def test_a_wav_data_chunk_is_read_only_within_the_head() -> None:
    # Header says 12 s, the data holds 1 s. Within the first WAV_HEAD_BYTES the data chunk
    # is found and the shortfall told; further in, the length counts as undeclared.
    wav = wav_bytes(tone(8000, 8000, 1), 8000, data_size=12 * 8000 * 2)

    near = decode(with_junk_before_data(wav, 4096))
    far = decode(with_junk_before_data(wav, WAV_HEAD_BYTES))

    assert near.frames == far.frames == 8000
    assert near.warnings == (shortfall(1.0, 12.0),)
    assert far.warnings == ()


def test_a_shortfall_within_the_tolerance_is_no_warning() -> None:
    rate = 8000
    whole = wav_bytes(tone(rate, rate, 1), rate)
    margin = rate // 100  # 10 ms either side of the tolerance
    kept = round(rate * (1.0 - SHORTFALL_TOLERANCE_S))

    assert decode(whole[: 44 + 2 * (kept + margin)]).warnings == ()
    short = decode(whole[: 44 + 2 * (kept - margin)])
    assert short.warnings == (shortfall(short.duration_s, 1.0),)


def test_flac_cut_short_warns(tmp_path: Path) -> None:
    path = tmp_path / "whole.flac"
    write_audio(
        path, tone(44100, 3 * 44100, 2), rate=44100, layout="stereo", muxer="flac", codec="flac"
    )
    data = path.read_bytes()

    track = decode(data[: len(data) // 3])

    assert 0 < track.duration_s < 1.5
    # The last, cut-off frame fails to decode: that is the truncation, not told twice.
    assert track.warnings == (shortfall(track.duration_s, 3.0),)


def test_ogg_cut_short_decodes_without_a_warning(tmp_path: Path) -> None:
    # Ogg declares no length: FFmpeg reads the last granule position of the file as it is,
    # so a cut Ogg file looks whole. This pins what integrity.py documents.
    path = tmp_path / "whole.ogg"
    write_audio(
        path, tone(48000, 3 * 48000, 2), rate=48000, layout="stereo", muxer="ogg", codec="libopus"
    )
    data = path.read_bytes()

    track = decode(data[: len(data) // 2])

    assert 0.5 < track.duration_s < 2.5
    assert track.warnings == ()


def twelve_second_mp3(tmp_path: Path) -> bytes:
    """A LAME MP3 of 12 s of stereo tone, with its Xing/Info header."""
    path = tmp_path / "song.mp3"
    write_audio(
        path,
        tone(44100, 12 * 44100, 2),
        rate=44100,
        layout="stereo",
        muxer="mp3",
        codec="libmp3lame",
    )
    return path.read_bytes()


def test_mp3_cut_to_a_twelfth_warns(tmp_path: Path) -> None:
    data = twelve_second_mp3(tmp_path)

    track = decode(data[: len(data) // 12])

    assert track.duration_s == pytest.approx(1.0, abs=0.1)
    assert track.warnings == (shortfall(track.duration_s, 12.0),)


@pytest.mark.parametrize(("muxer", "codec"), [("mp3", "libmp3lame"), ("adts", "aac")])
def test_input_missing_its_first_10_kb_warns(tmp_path: Path, muxer: str, codec: str) -> None:
    path = tmp_path / f"song.{muxer}"
    write_audio(
        path, tone(44100, 12 * 44100, 2), rate=44100, layout="stereo", muxer=muxer, codec=codec
    )
    data = path.read_bytes()[10 * 1024 :]

    assert probe_duration(data) is None
    track = decode(data)

    assert 10.0 < track.duration_s < 12.0
    assert len(track.warnings) == 1
    assert track.warnings[0].startswith("the input does not begin with audio: ")
    assert track.warnings[0].endswith(
        " bytes before its first frame were skipped; the beginning of the file may be missing"
    )


def test_input_cut_in_the_middle_of_a_packet_warns_without_a_declared_length(
    tmp_path: Path,
) -> None:
    data = write_unknown_length("adts-aac", tmp_path / "song.aac", seconds=3.0)

    track = decode(data[: len(data) // 2])

    assert track.warnings == (
        "the input ends in the middle of a packet, so it looks truncated; "
        f"the stems cover the {track.duration_s:.1f} s decoded",
    )


def test_damaged_packets_are_counted(tmp_path: Path) -> None:
    data = bytearray(twelve_second_mp3(tmp_path))
    middle = len(data) // 2
    data[middle : middle + 3000] = bytes(3000)  # zeros in place of about seven frames

    track = decode(bytes(data))

    damaged, short = track.warnings
    assert damaged.endswith(" left out: the input could not be decoded there")
    assert short == shortfall(track.duration_s, 12.0)


def zero_adts_payloads(data: bytes, frames: int) -> bytes:
    """ADTS AAC with the payloads of its first `frames` frames zeroed, headers kept: each
    such packet fails to decode."""
    damaged = bytearray(data)
    position = 0
    for _ in range(frames):
        header = damaged[position : position + 7]
        length = ((header[3] & 0x03) << 11) | (header[4] << 3) | (header[5] >> 5)
        damaged[position + 7 : position + length] = bytes(length - 7)
        position += length
    return bytes(damaged)


def test_probe_looks_for_audio_in_at_most_probe_packets(tmp_path: Path) -> None:
    data = write_unknown_length("adts-aac", tmp_path / "song.aac", seconds=3.0)

    assert probe_duration(zero_adts_payloads(data, PROBE_PACKETS - 1)) is None
    with pytest.raises(AudioError, match="no audio could be decoded at its start"):
        probe_duration(zero_adts_payloads(data, PROBE_PACKETS))
    # Decoding goes on past them, and counts them.
    track = decode(zero_adts_payloads(data, PROBE_PACKETS))
    assert track.warnings == (
        f"{PROBE_PACKETS} damaged packets were left out: the input could not be decoded there",
    )
