"""Preprocessing steps served by a trained model: the step's output is the model's cleaned
source, run as a pass is; steps without a routed model keep their DSP."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch

from models.audio.decode import decode
from models.audio.encode import StemEncoder
from models.audio.samples import Samples
from models.engine.geometry import Geometry
from models.engine.track import WindowRunner, collect_track
from models.errors import ModelMissingError
from models.run import LocalModels, ModelStore, TrackJob, separate_file, write_stems
from models.stages import StageClock
from models.stems.routing import Routing, parse_routing
from models.testing.synth import render_music
from tests.models.faketime import FakeTime
from tests.models.stepmodels import CLEANED, routing_document, write_models

RATE = 44100
LSB = 1.0 / 32768  # one 16-bit step


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny vocals and dereverb models."""
    models = tmp_path_factory.mktemp("step-models")
    write_models(models)
    return models


@pytest.fixture(scope="module")
def song(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second and a half of stereo music at 44.1 kHz: the models' own domain."""
    path = tmp_path_factory.mktemp("songs") / "song.wav"
    with StemEncoder(path, "wav", sample_rate=RATE, channels=2, layout="stereo") as encoder:
        encoder.write(render_music(1.5, RATE, seed=3))
    return path


def store(folder: Path, *, dereverb: bool = True) -> ModelStore:
    return ModelStore(parse_routing(routing_document(dereverb=dereverb)), model_dir=folder)


def vocals(path: Path) -> Samples:
    return decode(path).samples


def test_a_routed_step_is_its_models_cleaned_output(
    folder: Path, song: Path, tmp_path: Path
) -> None:
    trained = store(folder)
    served = separate_file(
        song, ["vocals"], tmp_path / "served", store=trained, preprocessing=["Dereverb"]
    )
    # The same by hand: the dereverb model's cleaned source, then the plan on it.
    track = decode(song)
    cleaned = collect_track(
        trained.get("Dereverb"), torch.from_numpy(track.samples), sources=[CLEANED]
    )[0].numpy()
    job = TrackJob.of(["vocals"], trained.routing)
    expected = write_stems(
        job.plan,
        replace(track, samples=cleaned),
        LocalModels(trained, torch.device("cpu")),
        tmp_path / "expected",
    )
    assert np.abs(vocals(served["vocals"]) - vocals(expected["vocals"])).max() <= LSB
    # ... and not what the uncleaned track gives.
    plain = separate_file(song, ["vocals"], tmp_path / "plain", store=trained)
    assert np.abs(vocals(served["vocals"]) - vocals(plain["vocals"])).max() > 100 * LSB


def test_without_a_routed_model_the_step_is_dsp(folder: Path, song: Path, tmp_path: Path) -> None:
    trained = separate_file(
        song, ["vocals"], tmp_path / "trained", store=store(folder), preprocessing=["Dereverb"]
    )
    dsp = separate_file(
        song,
        ["vocals"],
        tmp_path / "dsp",
        store=store(folder, dereverb=False),
        preprocessing=["Dereverb"],
    )
    assert np.abs(vocals(trained["vocals"]) - vocals(dsp["vocals"])).max() > 100 * LSB


def test_dsp_steps_around_a_trained_one_keep_the_order(
    folder: Path, song: Path, tmp_path: Path
) -> None:
    trained = store(folder)
    job = TrackJob.of(["vocals"], trained.routing, preprocessing=["Dereverb", "Denoise", "Deecho"])
    assert job.trained == ("Dereverb",)
    assert set(job.models) == {"tiny_vocals", "Dereverb"}
    assert TrackJob.of(["vocals"], trained.routing, preprocessing=["Denoise"]).models == (
        "tiny_vocals",
    )
    cleans: list[tuple[str, ...]] = []

    def clean(samples: Samples, rate: int, steps: tuple[str, ...]) -> Samples:
        cleans.append(steps)
        return samples * np.float32(0.5)

    progress: list[float] = []
    job.run(
        song,
        LocalModels(trained, torch.device("cpu")),
        tmp_path / "out",
        clean=clean,
        on_progress=progress.append,
    )
    # Denoise and Deecho run before Dereverb, in one call of the DSP.
    assert cleans == [("Denoise", "Deecho")]
    # The trained step is half of the work (one step, one pass), reported as it goes.
    assert progress == sorted(progress)
    assert progress[-1] == pytest.approx(1.0)
    assert any(0 < fraction <= 0.5 for fraction in progress)


def test_a_routed_step_without_weights_fails_naming_it(song: Path, tmp_path: Path) -> None:
    only_vocals = tmp_path / "models"
    write_models(only_vocals)
    (only_vocals / "tiny_dereverb.ckpt").unlink()
    empty = ModelStore(parse_routing(routing_document()), model_dir=only_vocals)
    with pytest.raises(ModelMissingError, match="model 'Dereverb'"):
        separate_file(song, ["vocals"], tmp_path / "out", store=empty, preprocessing=["Dereverb"])
    assert not (tmp_path / "out").exists()


@dataclass
class TimedModels:
    """Local models whose every runner call takes one second of a fake time source, and
    nothing else takes any."""

    inner: LocalModels
    time: FakeTime
    calls: int = 0

    @property
    def routing(self) -> Routing:
        return self.inner.routing

    def geometry(self, model: str) -> Geometry:
        return self.inner.geometry(model)

    def runner(self, model: str) -> WindowRunner:
        run = self.inner.runner(model)

        def timed(windows: Sequence[torch.Tensor], sources: Sequence[str]) -> list[torch.Tensor]:
            self.calls += 1
            self.time.advance(1.0)
            return run(windows, sources)

        return timed


def test_every_forward_counts_as_model_time_the_trained_steps_too(
    folder: Path, song: Path, tmp_path: Path
) -> None:
    trained = store(folder)
    time = FakeTime()
    models = TimedModels(LocalModels(trained, torch.device("cpu")), time)
    clock = StageClock(time)
    job = TrackJob.of(["vocals"], trained.routing, preprocessing=["Dereverb"])
    job.run(song, models, tmp_path / "stems", clock=clock, on_progress=lambda _fraction: None)
    seconds = clock.totals()
    # The passes and the trained step both ran windows; only the forwards took time.
    assert models.calls >= 2
    assert {stage: value for stage, value in seconds.items() if value} == {
        "model": float(models.calls)
    }
    stages = {"decode", "preprocess", "resample", "overlap_add", "encode", "other"}
    assert stages <= set(seconds)
