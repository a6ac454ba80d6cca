"""The command line: separate, make-test-model, --help and one-line errors."""

from __future__ import annotations

import argparse
import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import numpy as np
import pytest
import torch

from models.audio.decode import decode
from models.audio.encode import StemEncoder
from models.cli import build_parser, main
from models.engine.devices import REQUESTED_PRECISIONS
from models.stages import STAGES


@pytest.fixture
def song(tmp_path: Path) -> Path:
    """One second of stereo noise at 48 kHz, as FLAC."""
    path = tmp_path / "song.flac"
    samples = np.random.default_rng(0).normal(0, 0.1, size=(2, 48000)).astype(np.float32)
    with StemEncoder(path, "flac", sample_rate=48000, channels=2, layout="stereo") as encoder:
        encoder.write(samples)
    return path


def test_separate_writes_one_file_per_stem(
    song: Path, model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "stems"
    status = main(
        ["separate", str(song), "--stems", "vocals,drums", "--out", str(out),
         "--format", "mp3", "--model-dir", str(model_dir), "--no-hub"]
    )  # fmt: skip
    assert status == 0
    assert sorted(path.name for path in out.iterdir()) == ["drums.mp3", "vocals.mp3"]
    assert capsys.readouterr().out.split() == [str(out / "vocals.mp3"), str(out / "drums.mp3")]
    assert decode(out / "vocals.mp3").samples.shape == (2, 48000)


def test_default_stems(song: Path, model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "stems"
    assert main(["separate", str(song), "--out", str(out), "--model-dir", str(model_dir)]) == 0
    names = sorted(path.stem for path in out.iterdir())
    assert names == ["bass", "drums", "guitar", "piano"]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--stems", "vocals,nope"], "unknown stem 'nope'"),
        (["--stems", "kick_drum"], "no model is configured for 'kick_drum'"),
        (["--max-duration", "0.5"], "longer than the limit of 0.5 seconds"),
        (["--device", "cuda"], "CUDA"),
    ],
)
def test_errors_are_one_line(
    song: Path,
    model_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    arguments: list[str],
    message: str,
) -> None:
    if "cuda" in arguments and torch.cuda.is_available():
        arguments = ["--stems", "nope"]
        message = "unknown stem"
    base = ["separate", str(song), "--out", str(tmp_path / "o"), "--model-dir", str(model_dir)]
    assert main(base + arguments) == 1
    error = capsys.readouterr().err
    assert error.startswith("error: ")
    assert message in error
    assert error.count("\n") == 1


def test_missing_input_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["separate", str(tmp_path / "absent.wav"), "--out", str(tmp_path)]) == 1
    assert "input file not found" in capsys.readouterr().err


def test_not_audio(tmp_path: Path, model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = tmp_path / "notes.mp3"
    text.write_text("these are not the droids\n" * 100)
    status = main(
        ["separate", str(text), "--out", str(tmp_path / "o"), "--model-dir", str(model_dir)]
    )
    assert status == 1
    assert capsys.readouterr().err.startswith("error: ")


@pytest.mark.parametrize("command", ["separate", "preprocess", "make-test-model"])
def test_help_documents_every_option(command: str) -> None:
    shown = subprocess.run(
        [sys.executable, "-m", "models", command, "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    commands = next(
        action
        for action in build_parser()._actions
        if isinstance(action, argparse._SubParsersAction)
    )
    for action in commands.choices[command]._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help, f"{action.dest} has no help text"
        names = action.option_strings or [action.dest]
        assert any(name in shown for name in names), f"{names} missing from --help"


@pytest.mark.parametrize("precision", REQUESTED_PRECISIONS)
def test_separate_accepts_every_precision(precision: str) -> None:
    arguments = ["separate", "song.wav", "--out", "stems", "--precision", precision]
    assert build_parser().parse_args(arguments).precision == precision


def test_separate_refuses_an_unknown_precision(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["separate", "song.wav", "--out", "o", "--precision", "fp16"])
    assert "invalid choice: 'fp16'" in capsys.readouterr().err


def test_make_test_model_then_separate_with_it(tmp_path: Path, song: Path) -> None:
    folder = tmp_path / "weights"
    assert main(["make-test-model", str(folder), "--like", "htdemucs_6s", "--small"]) == 0
    assert (folder / "htdemucs_6s.yaml").is_file()
    out = tmp_path / "stems"
    status = main(["separate", str(song), "--stems", "piano", "--out", str(out),
                   "--model-dir", str(folder), "--no-hub"])  # fmt: skip
    assert status == 0
    assert (out / "piano.wav").is_file()


def test_progress_bar_shows_on_a_terminal(tmp_path: Path, song: Path, model_dir: Path) -> None:
    # stderr is a real pseudo-terminal here, as in an interactive shell.
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    command = [sys.executable, "-m", "models", "separate", str(song), "--stems", "bass",
               "--out", str(tmp_path / "o"), "--model-dir", str(model_dir), "--no-hub"]  # fmt: skip
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=terminal) as process:
        os.close(terminal)
        shown = b""
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # the terminal closes when the process exits
                break
            if not chunk:
                break
            shown += chunk
        assert process.wait() == 0
    os.close(controller)
    assert b"100%|" in shown


def test_no_progress_bar_when_not_a_terminal(
    tmp_path: Path, song: Path, model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    arguments = ["separate", str(song), "--stems", "bass", "--out", str(tmp_path / "o"),
                 "--model-dir", str(model_dir), "--no-hub"]  # fmt: skip
    assert main(arguments) == 0
    assert capsys.readouterr().err == ""


def test_missing_weights_name_the_folder_and_the_hub(tmp_path: Path, song: Path) -> None:
    # A real `python -m models` process, offline: the hub is asked and says no at once.
    environment = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    result = subprocess.run(
        [sys.executable, "-m", "models", "separate", str(song), "--stems", "vocals",
         "--out", str(tmp_path / "o"), "--model-dir", str(tmp_path)],
        capture_output=True, text=True, env=environment, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert "'htdemucs_6s' not found" in result.stderr
    assert str(tmp_path / "htdemucs_6s.yaml") in result.stderr
    assert "Hugging Face hub adefossez/HTDemucs-6s" in result.stderr


@pytest.fixture
def cut_song(song: Path, tmp_path: Path) -> Path:
    """The song's FLAC cut to its first third: STREAMINFO still declares one second."""
    path = tmp_path / "cut.flac"
    path.write_bytes(song.read_bytes()[: song.stat().st_size // 3])
    return path


@pytest.mark.parametrize("command", ["separate", "preprocess"])
def test_a_truncated_input_is_processed_with_a_warning_on_stderr(
    cut_song: Path,
    model_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    command: str,
) -> None:
    if command == "separate":
        arguments = ["--stems", "drums", "--out", str(tmp_path / "o")]
        arguments += ["--model-dir", str(model_dir), "--no-hub"]
    else:
        arguments = ["--steps", "Denoise", "--out", str(tmp_path / "clean.wav")]

    assert main([command, str(cut_song), *arguments]) == 0

    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("warning: the input is shorter than its header declares: ")
    assert lines[0].endswith(" of the 1.0 s declared; the stems cover the decoded part")


def test_separate_timings_name_every_stage(
    song: Path, model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(
        ["separate", str(song), "--stems", "vocals,instrumental", "--out", str(tmp_path / "o"),
         "--preprocess", "Denoise", "--model-dir", str(model_dir), "--no-hub", "--timings"]
    )  # fmt: skip
    assert status == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("timings")]
    assert len(lines) == 1, lines
    total, stages = re.fullmatch(r"timings: ([0-9.]+) s: (.*)", lines[0]).groups()  # type: ignore[union-attr]
    seconds, shares = {}, {}
    for part in stages.split(", "):
        name, value, share = re.fullmatch(r"(\w+) ([0-9.]+) s \(([0-9.]+) %\)", part).groups()  # type: ignore[union-attr]
        seconds[name], shares[name] = float(value), float(share) / 100
    # The input is at 48 kHz, the model at 44.1 kHz: resampling is a stage of its own.
    assert set(seconds) == set(STAGES) - {"fetch", "store"}  # those two are the service's
    assert seconds["model"] > 0  # the others may round to 0.000 on so short an input
    assert sum(shares.values()) == pytest.approx(1.0, abs=0.01)
    assert sum(seconds.values()) == pytest.approx(float(total), abs=0.01)
