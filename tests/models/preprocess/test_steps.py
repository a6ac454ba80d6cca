"""The preprocessing steps run in their fixed order, through the library and the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.audio.decode import decode
from models.audio.encode import StemEncoder
from models.cli import main
from models.preprocess.steps import preprocess
from models.run import ModelStore, separate_file
from models.stems.routing import load_routing
from models.testing.quality import sdr_db
from models.testing.synth import add_noise, render_music

RATE = 44100
LSB = 1.0 / 32768


@pytest.fixture(scope="module")
def noisy_song(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three seconds of synthetic music with white noise at 10 dB SNR, as WAV."""
    path = tmp_path_factory.mktemp("songs") / "noisy.wav"
    samples = add_noise(render_music(3.0, RATE, seed=4), 10.0, seed=4)
    with StemEncoder(path, "wav", sample_rate=RATE, channels=2, layout="stereo") as encoder:
        encoder.write(samples)
    return path


def test_preprocess_applies_each_step_once_in_order() -> None:
    audio = render_music(1.0, RATE, seed=2)
    ran: list[str] = []
    result = preprocess(audio, RATE, ["Dereverb", "Denoise"], on_step=ran.append)
    assert ran == ["Denoise", "Dereverb"]
    assert result.shape == audio.shape
    assert result.dtype == np.float32
    assert preprocess(audio, RATE, []) is audio


def test_separation_works_on_the_cleaned_input(
    noisy_song: Path, model_dir: Path, tmp_path: Path
) -> None:
    store = ModelStore(load_routing(), model_dir=model_dir, use_hub=False)
    paths = separate_file(
        noisy_song, ["vocals", "instrumental"], tmp_path / "out", store=store,
        preprocessing=["Denoise"],
    )  # fmt: skip
    original = decode(noisy_song).samples
    cleaned = preprocess(original, RATE, ["Denoise"])
    total = decode(paths["vocals"]).samples + decode(paths["instrumental"]).samples
    # The stems add up to the cleaned input, which differs from the noisy one.
    assert np.abs(total - cleaned).max() <= 2 * LSB
    assert np.abs(cleaned - original).max() > 100 * LSB


def test_cli_preprocess_writes_the_cleaned_file(noisy_song: Path, tmp_path: Path) -> None:
    out = tmp_path / "clean.flac"
    assert main(["preprocess", str(noisy_song), "--steps", "Denoise", "--out", str(out)]) == 0
    written = decode(out)
    expected = preprocess(decode(noisy_song).samples, RATE, ["Denoise"])
    assert written.samples.shape == expected.shape
    assert sdr_db(expected, written.samples) > 60  # only 16-bit rounding between them


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--steps", "Declick", "--out", "x.wav"], "unknown preprocessing step"),
        (["--steps", ",", "--out", "x.wav"], "names no step"),
        (["--steps", "Denoise", "--out", "x.ogg"], "--out must end in one of"),
    ],
)
def test_cli_preprocess_errors(
    noisy_song: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    arguments: list[str],
    message: str,
) -> None:
    arguments = [str(tmp_path / a) if a.startswith("x.") else a for a in arguments]
    assert main(["preprocess", str(noisy_song), *arguments]) == 1
    error = capsys.readouterr().err
    assert message in error
    assert error.count("\n") == 1


def test_cli_separate_refuses_an_unknown_step(
    noisy_song: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    arguments = ["separate", str(noisy_song), "--out", str(tmp_path), "--preprocess", "Loud"]
    assert main(arguments) == 1
    assert "unknown preprocessing step(s) 'Loud'" in capsys.readouterr().err
