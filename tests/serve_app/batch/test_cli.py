"""The batch command's options and the errors it refuses before starting Ray (so these
run in the test process, which never starts a Ray of the command's own)."""

from __future__ import annotations

from pathlib import Path

import pytest
import ray

from models.engine.devices import REQUESTED_PRECISIONS
from serve_app.batch.cli import build_parser, main
from serve_app.batch.inputs import track_id
from serve_app.batch.job import Workers
from serve_app.batch.outputs import RESULTS, LocalOutput
from serve_app.batch.results import DONE, SKIPPED, TrackResult
from serve_app.settings import AppArgs


def test_defaults_are_the_services_limits_and_a_small_pool() -> None:
    args = build_parser().parse_args(["in", "out"])
    assert args.max_duration_s == AppArgs().decode.max_duration_s
    assert args.workers == Workers(1, 2)
    assert (args.tracks_per_worker, args.gpus_per_worker, args.batch_size) == (1, 0.0, 1)
    assert args.limit is None
    assert args.format == "wav"
    assert args.precision == "fp32"


@pytest.mark.parametrize("precision", REQUESTED_PRECISIONS)
def test_every_precision_is_accepted(precision: str) -> None:
    assert build_parser().parse_args(["in", "out", "--precision", precision]).precision == precision


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--stems", "vox"], "unknown stem 'vox'"),
        (["--preprocess", "Polish"], "Polish"),
        (["--limit", "-1"], "--limit must be at least 0"),
        (["--tracks-per-worker", "0"], "tracks per worker must be at least 1, got 0"),
        (["--gpus-per-worker", "-0.5"], "GPUs per worker must not be negative, got -0.5"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
    ],
)
def test_bad_options_end_with_one_line_and_status_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    assert main([str(tmp_path), str(tmp_path / "out"), *extra]) == 1
    error = capsys.readouterr().err
    assert error.startswith("error: ") and message in error
    assert not (tmp_path / "out").exists()


def test_a_missing_input_ends_with_status_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([str(tmp_path / "nothing"), str(tmp_path / "out")]) == 1
    assert "input not found" in capsys.readouterr().err


def test_bad_workers_are_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["in", "out", "--workers", "3:1"])
    assert exited.value.code == 2
    assert "--workers" in capsys.readouterr().err


def test_a_rerun_with_every_track_done_starts_no_ray(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    songs = tmp_path / "songs"
    songs.mkdir()
    output = LocalOutput(tmp_path / "stems")
    for name in ("a.wav", "b.wav"):
        (songs / name).write_bytes(b"already separated")
        row = TrackResult(str(songs / name), track_id(name), DONE, duration_s=2.0)
        output.commit(row, {})

    def no_ray(*args: object, **kwargs: object) -> None:
        raise AssertionError("Ray was started with nothing to separate")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", no_ray)
    assert main([str(songs), str(output.root)]) == 0
    assert capsys.readouterr().out.startswith("done 0, failed 0, skipped 2;")
    rows = (output.root / RESULTS).read_text().splitlines()
    assert [TrackResult.from_json(line).status for line in rows] == [SKIPPED, SKIPPED]
