"""A file in, one aligned file per stem out, through plans, cascades and derivations."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import torch

import models.run
from models.audio.decode import decode
from models.audio.encode import StemEncoder
from models.audio.samples import Samples
from models.engine.devices import resolve_precision
from models.errors import AudioError, ModelMissingError, PreprocessError, UnservedStemError
from models.run import EngineOptions, LocalModels, ModelStore, TrackJob, separate_file
from models.stems.routing import load_routing, parse_routing

# One 16-bit step: what quantising each of two stems may cost their sum.
LSB = 1.0 / 32768


def write_input(
    path: Path, *, rate: int, channels: int, layout: str, seconds: float = 2.0
) -> npt.NDArray[np.float32]:
    """Write a chord with a click track as a WAV file; return the samples written."""
    times = np.arange(int(rate * seconds)) / rate
    chord = sum(np.sin(2 * np.pi * freq * times) for freq in (220.0, 277.2, 329.6)) * 0.15
    clicks = (np.mod(times, 0.25) < 0.005) * 0.3
    samples = np.stack([chord * (1 + 0.1 * c) + clicks for c in range(channels)])
    samples = samples.astype(np.float32)
    with StemEncoder(path, "wav", sample_rate=rate, channels=channels, layout=layout) as encoder:
        encoder.write(samples)
    return decode(path).samples


def store_for(model_dir: Path) -> ModelStore:
    return ModelStore(load_routing(), model_dir=model_dir, use_hub=False)


def cascade_store(model_dir: Path, derived: Mapping[str, object] | None = None) -> ModelStore:
    """htdemucs_6s, plus a 'drum parts' model (small htdemucs) that reads its drums."""
    document: dict[str, object] = {
        "models": {
            "htdemucs_6s": {
                "family": "demucs",
                "weights": "htdemucs_6s",
                "outputs": {"drums": "drums", "vocals": "vocals"},
            },
            "drumparts": {
                "family": "demucs",
                "weights": "htdemucs",
                "input": "drums",
                "outputs": {"kick_drum": "drums", "snare_drum": "bass"},
            },
        },
        "derived": derived or {},
    }
    return ModelStore(parse_routing(document), model_dir=model_dir, use_hub=False)


@pytest.mark.parametrize(
    ("rate", "channels", "layout"),
    [(44100, 2, "stereo"), (48000, 2, "stereo"), (22050, 1, "mono"), (48000, 6, "5.1")],
)
def test_stems_are_aligned_with_the_input(
    tmp_path: Path, model_dir: Path, rate: int, channels: int, layout: str
) -> None:
    source = tmp_path / "song.wav"
    samples = write_input(source, rate=rate, channels=channels, layout=layout)
    paths = separate_file(source, ["vocals", "drums"], tmp_path / "out", store=store_for(model_dir))
    assert sorted(paths) == ["drums", "vocals"]
    for path in paths.values():
        stem = decode(path)
        assert stem.sample_rate == rate
        assert stem.samples.shape == samples.shape


@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3"])
def test_each_output_format(tmp_path: Path, model_dir: Path, fmt: str) -> None:
    source = tmp_path / "song.wav"
    samples = write_input(source, rate=44100, channels=2, layout="stereo", seconds=1.0)
    paths = separate_file(source, ["bass"], tmp_path / "out", fmt=fmt, store=store_for(model_dir))
    assert paths["bass"].suffix == f".{fmt}"
    stem = decode(paths["bass"])
    assert stem.sample_rate == 44100
    assert stem.samples.shape == samples.shape


def test_vocals_and_instrumental_sum_to_the_input(tmp_path: Path, model_dir: Path) -> None:
    source = tmp_path / "song.wav"
    samples = write_input(source, rate=48000, channels=2, layout="stereo")
    paths = separate_file(
        source, ["vocals", "instrumental"], tmp_path / "out", store=store_for(model_dir)
    )
    total = decode(paths["vocals"]).samples + decode(paths["instrumental"]).samples
    assert np.abs(total - samples).max() <= 2 * LSB
    # The stems themselves are not trivial: the model put something in the vocals.
    assert np.abs(decode(paths["vocals"]).samples).max() > 10 * LSB


def test_instrumental_alone_runs_vocals_without_writing_them(
    tmp_path: Path, model_dir: Path
) -> None:
    source = tmp_path / "song.wav"
    write_input(source, rate=44100, channels=2, layout="stereo", seconds=1.0)
    paths = separate_file(source, ["instrumental"], tmp_path / "out", store=store_for(model_dir))
    assert [path.name for path in (tmp_path / "out").iterdir()] == ["instrumental.wav"]
    assert list(paths) == ["instrumental"]


def test_a_cascade_feeds_one_pass_into_the_next(tmp_path: Path, model_dir: Path) -> None:
    store = cascade_store(model_dir)
    source = tmp_path / "song.wav"
    samples = write_input(source, rate=44100, channels=2, layout="stereo", seconds=1.0)
    fractions: list[float] = []
    paths = separate_file(
        source, ["kick_drum", "snare_drum"], tmp_path / "out", store=store,
        on_progress=fractions.append,
    )  # fmt: skip
    assert sorted(paths) == ["kick_drum", "snare_drum"]
    assert set(store.loaded) == {"htdemucs_6s", "drumparts"}
    for path in paths.values():
        assert decode(path).samples.shape == samples.shape
    assert fractions == sorted(fractions)
    assert fractions[-1] == pytest.approx(1.0)


def test_a_derivation_of_a_derivation(tmp_path: Path, model_dir: Path) -> None:
    routing = parse_routing(
        {
            "models": {
                "htdemucs_6s": {
                    "family": "demucs",
                    "weights": "htdemucs_6s",
                    "outputs": {"vocals": "vocals", "drums": "drums", "bass": "bass"},
                }
            },
            "derived": {
                "instrumental": {"from": "mixture", "minus": ["vocals"]},
                "keys": {"from": "instrumental", "minus": ["drums", "bass"]},
            },
        }
    )
    store = ModelStore(routing, model_dir=model_dir, use_hub=False)
    source = tmp_path / "song.wav"
    samples = write_input(source, rate=48000, channels=2, layout="stereo", seconds=1.0)
    stems = ["vocals", "drums", "bass", "keys"]
    paths = separate_file(source, stems, tmp_path / "out", store=store)
    total = sum(decode(paths[stem]).samples for stem in stems)
    assert np.abs(total - samples).max() <= 4 * LSB


def test_a_derivation_across_passes(
    tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Whole-track derived stems are written in blocks: make the 1 s track span several.
    monkeypatch.setattr(models.run, "WRITE_BLOCK", 10_000)
    toms = {"toms": {"from": "drums", "minus": ["kick_drum", "snare_drum"]}}
    store = cascade_store(model_dir, derived=toms)
    source = tmp_path / "song.wav"
    write_input(source, rate=44100, channels=2, layout="stereo", seconds=1.0)
    stems = ["drums", "kick_drum", "snare_drum", "toms"]
    paths = separate_file(source, stems, tmp_path / "out", store=store)
    drums = decode(paths["drums"]).samples
    parts = sum(decode(paths[stem]).samples for stem in ("kick_drum", "snare_drum", "toms"))
    assert np.abs(parts - drums).max() <= 4 * LSB
    assert np.abs(decode(paths["toms"]).samples).max() > 10 * LSB


def test_options_reach_the_engine(tmp_path: Path, model_dir: Path) -> None:
    source = tmp_path / "song.wav"
    write_input(source, rate=44100, channels=2, layout="stereo", seconds=1.0)
    plain = separate_file(source, ["bass"], tmp_path / "a", store=store_for(model_dir))
    shifted = separate_file(
        source, ["bass"], tmp_path / "b", store=store_for(model_dir),
        options=EngineOptions(shifts=1, seed=3, batch_size=2),
    )  # fmt: skip
    assert not np.array_equal(decode(plain["bass"]).samples, decode(shifted["bass"]).samples)


def test_auto_precision_separates_as_the_precision_it_resolves_to(
    tmp_path: Path, model_dir: Path
) -> None:
    source = tmp_path / "song.wav"
    write_input(source, rate=44100, channels=2, layout="stereo", seconds=1.0)
    resolved = resolve_precision("auto", torch.device("cpu"))
    other = "fp32" if resolved == "bf16" else "bf16"
    store = store_for(model_dir)
    bass = {
        precision: decode(
            separate_file(
                source, ["bass"], tmp_path / precision, store=store,
                options=EngineOptions(precision=precision),
            )["bass"]
        ).samples
        for precision in ("auto", resolved, other)
    }  # fmt: skip
    np.testing.assert_array_equal(bass["auto"], bass[resolved])
    assert not np.array_equal(bass["auto"], bass[other])


def test_unserved_stem_is_refused_before_any_work(tmp_path: Path, model_dir: Path) -> None:
    with pytest.raises(UnservedStemError, match="kick_drum"):
        separate_file(tmp_path / "absent.wav", ["kick_drum"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_failed_run_leaves_no_files(tmp_path: Path) -> None:
    source = tmp_path / "song.wav"
    write_input(source, rate=44100, channels=2, layout="stereo", seconds=0.5)
    store = ModelStore(load_routing(), model_dir=tmp_path / "empty", use_hub=False)
    with pytest.raises(ModelMissingError):
        separate_file(source, ["vocals", "bass"], tmp_path / "out", store=store)
    assert list((tmp_path / "out").iterdir()) == []


def test_mp3_of_a_shape_it_cannot_hold_is_refused_up_front(tmp_path: Path, model_dir: Path) -> None:
    source = tmp_path / "surround.wav"
    write_input(source, rate=48000, channels=6, layout="5.1", seconds=0.5)
    with pytest.raises(AudioError, match="MP3 cannot store more than 2 channels; ask for wav"):
        separate_file(source, ["bass"], tmp_path / "out", fmt="mp3", store=store_for(model_dir))
    assert not (tmp_path / "out").exists()


def test_unknown_format_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="format"):
        separate_file(tmp_path / "song.wav", None, tmp_path / "out", fmt="ogg")


def test_a_job_is_checked_and_planned_before_its_input_is_read() -> None:
    routing = load_routing()
    job = TrackJob.of(["instrumental"], routing, fmt="flac", preprocessing=["dereverb", "DENOISE"])
    assert job.plan.stems == ("instrumental",)
    assert job.steps == ("Denoise", "Dereverb")
    with pytest.raises(UnservedStemError, match="kick_drum"):
        TrackJob.of(["kick_drum"], routing)
    with pytest.raises(PreprocessError, match="unknown preprocessing step"):
        TrackJob.of(None, routing, preprocessing=["Louder"])
    with pytest.raises(ValueError, match="format must be one of"):
        TrackJob.of(None, routing, fmt="ogg")


def test_a_job_cleans_with_what_it_is_given(tmp_path: Path, model_dir: Path) -> None:
    source = tmp_path / "song.wav"
    samples = write_input(source, rate=48000, channels=2, layout="stereo", seconds=1.0)
    store = store_for(model_dir)
    calls: list[tuple[tuple[int, ...], int, tuple[str, ...]]] = []

    def clean(audio: Samples, rate: int, steps: tuple[str, ...]) -> Samples:
        calls.append((audio.shape, rate, steps))
        return np.zeros_like(audio)

    job = TrackJob.of(["instrumental"], store.routing, preprocessing=["Denoise"])
    models = LocalModels(store, torch.device("cpu"))
    separated = job.run(source, models, tmp_path / "out", clean=clean)
    assert calls == [(samples.shape, 48000, ("Denoise",))]
    # The instrumental is the cleaned mixture less the vocals: silence in, near silence out.
    assert np.abs(decode(separated.paths["instrumental"]).samples).max() < 0.5
    assert separated.duration_s == pytest.approx(1.0)
    assert separated.warnings == ()


def test_a_job_passes_on_what_it_learnt_of_its_input(tmp_path: Path, model_dir: Path) -> None:
    source = tmp_path / "song.wav"
    write_input(source, rate=44100, channels=2, layout="stereo", seconds=1.0)
    data = bytearray(source.read_bytes())
    size = data.index(b"data") + 4
    data[size : size + 4] = (4 * 44100 * 2 * 2).to_bytes(4, "little")  # the header says 4 s
    store = store_for(model_dir)
    heard: list[str] = []
    separated = TrackJob.of(["bass"], store.routing).run(
        bytes(data), LocalModels(store, torch.device("cpu")), tmp_path / "out",
        on_warning=heard.append,
    )  # fmt: skip
    assert len(heard) == 1
    assert heard[0].startswith("the input is shorter than its header declares")
    assert separated.warnings == tuple(heard)
    assert separated.duration_s == pytest.approx(1.0)
    assert decode(separated.paths["bass"]).frames == 44100
