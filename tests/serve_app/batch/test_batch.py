"""The batch command end to end on a local Ray, run as a subprocess (the test process may
hold a Ray of its own): 12 rendered songs, a file that is not audio and one past the
duration limit; the stems equal `python -m models separate`'s; a run limited to 5 tracks,
then a full rerun that does only the rest, then one that redoes only the failed tracks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from models.audio.decode import decode
from models.cli import main as models_main
from serve_app.batch.inputs import track_id
from serve_app.batch.outputs import DONE_MARKER, RESULTS, STAGING
from serve_app.batch.results import DONE, FAILED, SKIPPED, TrackResult
from tests.serve_app.service import write_song

ROOT = Path(__file__).resolve().parents[3]
SONGS = 12
MAX_DURATION_S = 2.5
LSB = 1 / 32768


def run_batch(songs: Path, output: Path, model_dir: Path, *extra: str) -> list[TrackResult]:
    """Run the batch command to completion; return its results.jsonl rows."""
    environment = {name: value for name, value in os.environ.items() if name != "RAY_ADDRESS"}
    environment["PYTHONPATH"] = str(ROOT)
    finished = subprocess.run(
        [
            sys.executable,
            "-m",
            "serve_app.batch",
            str(songs),
            str(output),
            "--model-dir",
            str(model_dir),
            "--no-hub",
            "--workers",
            "1:1",
            "--max-duration-s",
            str(MAX_DURATION_S),
            *extra,
        ],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert finished.returncode == 0, finished.stderr[-4000:]
    assert finished.stdout.strip().splitlines()[-1].startswith("done "), finished.stdout
    lines = (output / RESULTS).read_text().splitlines()
    return [TrackResult.from_json(line) for line in lines]


def markers(output: Path) -> dict[str, tuple[int, str]]:
    """Each done marker's modification time and contents, by track id."""
    return {
        marker.parent.name: (marker.stat().st_mtime_ns, marker.read_text())
        for marker in output.glob(f"*/{DONE_MARKER}")
    }


def by_status(rows: list[TrackResult], status: str) -> set[str]:
    return {row.track_id for row in rows if row.status == status}


@pytest.fixture(scope="module")
def songs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 short songs, one file that is not audio, one song past the duration limit."""
    folder = tmp_path_factory.mktemp("songs")
    for number in range(SONGS):
        write_song(folder / f"song-{number:02}.wav", 1.0 + 0.5 * (number % 3), seed=number)
    (folder / "not-audio.txt").write_text("liner notes, not audio\n")
    write_song(folder / "too-long.wav", MAX_DURATION_S + 0.5, seed=99)
    return folder


@pytest.mark.slow
def test_batch_separates_resumes_and_retries_only_failures(
    songs: Path, model_dir: Path, tmp_path: Path
) -> None:
    output = tmp_path / "stems"
    ids = {track_id(f"song-{number:02}.wav") for number in range(SONGS)}
    bad = {track_id("not-audio.txt"), track_id("too-long.wav")}

    first = run_batch(songs, output, model_dir, "--limit", "5")
    assert len(first) == 5
    assert not by_status(first, SKIPPED)
    after_first = markers(output)
    assert set(after_first) == by_status(first, DONE)

    second = run_batch(songs, output, model_dir)
    assert len(second) == SONGS + 2
    assert by_status(second, SKIPPED) == by_status(first, DONE)
    processed = {row.track_id for row in second if row.status != SKIPPED}
    assert processed == (ids | bad) - by_status(first, DONE)
    assert by_status(second, DONE) | by_status(first, DONE) == ids
    failed = {row.track_id: row.reason for row in second if row.status == FAILED}
    assert set(failed) == bad
    assert "not a recognised audio file" in failed[track_id("not-audio.txt")]
    assert "longer than the limit" in failed[track_id("too-long.wav")]
    after_second = markers(output)
    # Nothing done in the first run was done again.
    assert {key: after_second[key] for key in after_first} == after_first
    assert set(after_second) == ids

    third = run_batch(songs, output, model_dir)
    assert by_status(third, SKIPPED) == ids
    assert by_status(third, FAILED) == bad  # failed tracks are retried, and fail again
    assert markers(output) == after_second
    assert not (output / STAGING).exists()

    for number in range(SONGS):
        song = songs / f"song-{number:02}.wav"
        folder = output / track_id(song.name)
        row = TrackResult.from_json((folder / DONE_MARKER).read_text())
        assert row.status == DONE
        assert row.duration_s == pytest.approx(1.0 + 0.5 * (number % 3), abs=1e-3)
        reference = tmp_path / "reference" / song.stem
        assert (
            models_main(
                [
                    "separate",
                    str(song),
                    "--out",
                    str(reference),
                    "--model-dir",
                    str(model_dir),
                    "--no-hub",
                ]
            )
            == 0
        )
        assert sorted(row.stems) == sorted(path.name for path in reference.iterdir())
        for stem in row.stems:
            ours = decode(folder / stem).samples
            theirs = decode(reference / stem).samples
            assert ours.shape == theirs.shape
            np.testing.assert_allclose(ours, theirs, rtol=0, atol=LSB * 1.01)
