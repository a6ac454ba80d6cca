"""Tests of models.audio.encode: streaming conversion back to the input's domain, and the stem
encoders, checked by decoding what they write."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from av.audio.layout import AudioLayout

from models.audio.decode import decode
from models.audio.domain import SIDE_GAIN
from models.audio.encode import FORMATS, OutputConverter, StemEncoder

MP3_FRAME = 1152


def noise(channels: int, frames: int, seed: int, level: float = 0.3) -> npt.NDArray[np.float32]:
    """Seeded Gaussian noise shaped (channels, frames)."""
    return (level * np.random.default_rng(seed).standard_normal((channels, frames))).astype(
        np.float32
    )


def sine(hz: float, rate: int, frames: int, amplitude: float = 0.5) -> npt.NDArray[np.float32]:
    """A stereo sine shaped (2, frames)."""
    wave = amplitude * np.sin(2 * np.pi * hz * np.arange(frames) / rate)
    return np.array([wave, wave], dtype=np.float32)


def irregular_sizes(total: int, seed: int) -> list[int]:
    """Block sizes from 1 to 2000 frames (some empty) that add up to `total`."""
    rng = np.random.default_rng(seed)
    sizes: list[int] = []
    while sum(sizes) < total:
        sizes.append(min(int(rng.integers(0, 2000)), total - sum(sizes)))
    return sizes


def convert(
    converter: OutputConverter, stems: npt.NDArray[np.float32], sizes: list[int]
) -> list[npt.NDArray[np.float32]]:
    """Push `stems` through `converter` in blocks of `sizes`, then finish."""
    outputs = []
    start = 0
    for size in sizes:
        outputs.append(converter.push(stems[:, start : start + size]))
        start += size
    outputs.append(converter.finish())
    return outputs


def converter(
    out_rate: int = 44100, layout: str = "stereo", total_frames: int = 44100
) -> OutputConverter:
    """A converter from the 44.1 kHz stereo model domain."""
    return OutputConverter(
        model_rate=44100,
        out_rate=out_rate,
        out_channels=AudioLayout(layout).nb_channels,
        out_layout=layout,
        total_frames=total_frames,
    )


def test_same_rate_stereo_passes_blocks_through_exactly() -> None:
    stems = noise(2, 10000, seed=1)

    outputs = convert(converter(total_frames=10000), stems, irregular_sizes(10000, seed=2))

    np.testing.assert_array_equal(np.concatenate(outputs, axis=1), stems)


def test_output_is_trimmed_to_total_frames_as_it_goes() -> None:
    stems = noise(2, 5000, seed=3)
    conv = converter(total_frames=3000)

    emitted = [conv.push(stems[:, :2000]).shape[1], conv.push(stems[:, 2000:]).shape[1]]

    assert emitted == [2000, 1000]
    assert conv.finish().shape == (2, 0)


def test_finish_pads_a_short_stem_with_silence() -> None:
    conv = converter(total_frames=3000)

    first = conv.push(noise(2, 1000, seed=4))
    tail = conv.finish()

    assert first.shape[1] + tail.shape[1] == 3000
    np.testing.assert_array_equal(tail, 0.0)


def test_model_rate_to_48k_emits_exactly_total_frames_and_keeps_pitch() -> None:
    frames = 44100 + 77
    total = round(frames * 48000 / 44100)
    stems = sine(1000.0, 44100, frames)

    outputs = convert(converter(48000, total_frames=total), stems, irregular_sizes(frames, 5))
    audio = np.concatenate(outputs, axis=1)

    assert audio.shape == (2, total)
    spectrum = np.abs(np.fft.rfft(audio[0] * np.hanning(total)))
    assert np.fft.rfftfreq(total, 1 / 48000)[np.argmax(spectrum)] == pytest.approx(1000, abs=2)
    # Resampling keeps the level once past the filter's start-up.
    assert np.abs(audio[:, 1000:-1000]).max() == pytest.approx(0.5, abs=0.01)


def test_mono_output_is_the_mean_of_the_stereo_stem() -> None:
    stems = noise(2, 4000, seed=6)

    outputs = convert(converter(layout="mono", total_frames=4000), stems, [1500, 2500])
    audio = np.concatenate(outputs, axis=1)

    assert audio.shape == (1, 4000)
    np.testing.assert_allclose(audio[0], stems.mean(axis=0), atol=1e-7)


def test_surround_output_puts_each_side_back_where_it_was_folded_from() -> None:
    stems = noise(2, 4000, seed=7)
    left, right = stems
    names = [channel.name for channel in AudioLayout("5.1").channels]

    outputs = convert(converter(layout="5.1", total_frames=4000), stems, [999, 3001])
    audio = dict(zip(names, np.concatenate(outputs, axis=1), strict=True))

    np.testing.assert_allclose(audio["FL"], left, atol=1e-6)
    np.testing.assert_allclose(audio["FR"], right, atol=1e-6)
    np.testing.assert_allclose(audio["FC"], SIDE_GAIN * (left + right), atol=1e-6)
    np.testing.assert_allclose(audio["BL"], SIDE_GAIN * left, atol=1e-6)
    np.testing.assert_allclose(audio["BR"], SIDE_GAIN * right, atol=1e-6)
    np.testing.assert_array_equal(audio["LFE"], 0.0)


@pytest.mark.parametrize(("out_rate", "layout"), [(48000, "stereo"), (32000, "5.1")])
def test_converters_in_lockstep_agree_in_size_and_are_linear(out_rate: int, layout: str) -> None:
    frames = 20000
    total = round(frames * out_rate / 44100)
    sizes = irregular_sizes(frames, seed=8)
    a, b = noise(2, frames, seed=9), noise(2, frames, seed=10)

    out_a = convert(converter(out_rate, layout, total), a, sizes)
    out_b = convert(converter(out_rate, layout, total), b, sizes)
    out_sum = convert(converter(out_rate, layout, total), a + b, sizes)

    assert [o.shape for o in out_a] == [o.shape for o in out_b] == [o.shape for o in out_sum]
    assert sum(o.shape[1] for o in out_a) == total
    for part_a, part_b, part_sum in zip(out_a, out_b, out_sum, strict=True):
        np.testing.assert_allclose(part_a + part_b, part_sum, atol=1e-5)


def test_converter_refuses_blocks_that_are_not_model_stereo() -> None:
    with pytest.raises(ValueError, match=r"shaped \(2, n\)"):
        converter().push(noise(1, 100, seed=11))


def test_converter_refuses_a_layout_of_another_channel_count() -> None:
    with pytest.raises(ValueError, match="does not have 6 channels"):
        OutputConverter(
            model_rate=44100, out_rate=44100, out_channels=6, out_layout="stereo", total_frames=1
        )


def write_stem(
    path: Path, fmt: str, audio: npt.NDArray[np.float32], rate: int, layout: str
) -> None:
    """Encode `audio` in irregular blocks."""
    with StemEncoder(
        path, fmt, sample_rate=rate, channels=audio.shape[0], layout=layout
    ) as encoder:
        start = 0
        for size in irregular_sizes(audio.shape[1], seed=12):
            encoder.write(audio[:, start : start + size])
            start += size


@pytest.mark.parametrize(("rate", "layout"), [(44100, "stereo"), (48000, "mono"), (96000, "5.1")])
@pytest.mark.parametrize("fmt", ["wav", "flac"])
def test_lossless_stems_round_trip_exactly(
    tmp_path: Path, fmt: str, rate: int, layout: str
) -> None:
    # Quiet enough never to clip: clipping has tests of its own.
    audio = noise(AudioLayout(layout).nb_channels, 12345, seed=13, level=0.1)
    path = tmp_path / f"stem.{fmt}"

    write_stem(path, fmt, audio, rate, layout)
    track = decode(path)

    assert (track.sample_rate, track.layout, track.frames) == (rate, layout, 12345)
    # 16-bit rounding is the only change: at most half a step.
    np.testing.assert_allclose(track.samples, audio, atol=0.5 / 32768 + 1e-7)


@pytest.mark.parametrize(("rate", "layout"), [(44100, "stereo"), (22050, "mono")])
def test_mp3_stems_round_trip_to_the_frames_written(tmp_path: Path, rate: int, layout: str) -> None:
    channels = AudioLayout(layout).nb_channels
    audio = sine(440.0, rate, 12345)[:channels]
    path = tmp_path / "stem.mp3"

    write_stem(path, "mp3", audio, rate, layout)
    track = decode(path)

    assert (track.sample_rate, track.layout, track.frames) == (rate, layout, 12345)
    # Encoder delay is removed, so the decoded stem lines up with what was written.
    correlation = np.corrcoef(track.samples[0], audio[0])[0, 1]
    assert correlation > 0.99


@pytest.mark.parametrize("excess", [1, 46])
def test_mp3_end_padding_limit_adds_at_most_46_samples(tmp_path: Path, excess: int) -> None:
    # Known FFmpeg limit: one frame of end padding at most, see the module docstring.
    frames = 3 * MP3_FRAME + excess
    path = tmp_path / "edge.mp3"

    write_stem(path, "mp3", sine(440.0, 44100, frames), 44100, "stereo")

    assert decode(path).frames == frames + 47 - excess


@pytest.mark.parametrize("fmt", ["wav", "flac"])
def test_lossless_stems_clip_instead_of_wrapping(tmp_path: Path, fmt: str) -> None:
    audio = np.array([[1.5, -1.5, 1.0, -1.0, 0.25] * 200], dtype=np.float32)
    path = tmp_path / f"loud.{fmt}"

    write_stem(path, fmt, audio, 44100, "mono")
    decoded = decode(path).samples[0, :5]

    np.testing.assert_array_equal(decoded, [32767 / 32768, -1.0, 32767 / 32768, -1.0, 0.25])


def test_mp3_stems_clip_instead_of_wrapping(tmp_path: Path) -> None:
    loud = sine(440.0, 44100, 44100, amplitude=1.5)
    path = tmp_path / "loud.mp3"

    write_stem(path, "mp3", loud, 44100, "stereo")
    decoded = decode(path).samples

    assert np.abs(decoded).max() < 1.2
    assert np.corrcoef(decoded[0], loud[0])[0, 1] > 0.95


def test_wav_is_written_while_blocks_arrive(tmp_path: Path) -> None:
    path = tmp_path / "streamed.wav"
    with StemEncoder(path, "wav", sample_rate=44100, channels=2, layout="stereo") as encoder:
        for _ in range(10):
            encoder.write(noise(2, 44100, seed=14))
        # Ten seconds of 16-bit stereo are 1.7 MB; most of it must already be on disk.
        assert path.stat().st_size > 1_000_000


@pytest.mark.parametrize(
    ("fmt", "rate", "layout", "words"),
    [
        ("ogg", 44100, "stereo", "unknown format"),
        ("mp3", 96000, "stereo", "96000 Hz"),
        ("mp3", 48000, "5.1", "more than 2 channels"),
        ("wav", 44100, "5.1", "does not have 2 channels"),
    ],
)
def test_encoder_refuses_what_the_format_cannot_store(
    tmp_path: Path, fmt: str, rate: int, layout: str, words: str
) -> None:
    channels = 2 if words.startswith("does not") else AudioLayout(layout).nb_channels

    with pytest.raises(ValueError, match=words):
        StemEncoder(tmp_path / "x", fmt, sample_rate=rate, channels=channels, layout=layout)


def test_every_advertised_format_is_writable(tmp_path: Path) -> None:
    for fmt in FORMATS:
        path = tmp_path / f"tiny.{fmt}"
        write_stem(path, fmt, sine(440.0, 44100, 4410), 44100, "stereo")
        assert decode(path).channels == 2
