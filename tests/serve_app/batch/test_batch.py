"""The batch command end to end on a local Ray, run as a subprocess (the test process may
hold a Ray of its own): 12 rendered songs, a file that is not audio and one past the
duration limit; the stems equal `python -m models separate`'s. The first run is frozen
mid-track after some tracks are done and its process group killed with SIGKILL; every Ray
process it started, workers included, must end with it. A run limited to 2 tracks, then a
full one, finish the job without doing any track twice and without the killed run's
leftovers (the full one with three tracks per actor, their segments gathered); a last run
redoes only the failed tracks."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import psutil
import pytest

from models.audio.decode import decode
from models.cli import main as models_main
from serve_app.batch.inputs import track_id
from serve_app.batch.outputs import DONE_MARKER, RESULTS, STAGING
from serve_app.batch.results import DONE, FAILED, SKIPPED, TrackResult
from tests.serve_app.service import write_song
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[3]
SONGS = 12
MAX_DURATION_S = 2.5
LSB = 1 / 32768
KILL_AFTER = 3  # done markers written before the first run is killed
RUN_TIMEOUT_S = 120


def batch_command(
    songs: Path, output: Path, model_dir: Path, *extra: str
) -> tuple[list[str], dict[str, str]]:
    """The batch command line on one local actor, and its environment (a Ray of its own)."""
    environment = {name: value for name, value in os.environ.items() if name != "RAY_ADDRESS"}
    environment["PYTHONPATH"] = str(ROOT)
    command = [
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
    ]
    return command, environment


def run_batch(songs: Path, output: Path, model_dir: Path, *extra: str) -> list[TrackResult]:
    """Run the batch command to completion; return its results.jsonl rows."""
    command, environment = batch_command(songs, output, model_dir, *extra)
    finished = subprocess.run(
        command,
        env=environment,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    assert finished.returncode == 0, finished.stderr[-4000:]
    assert finished.stdout.strip().splitlines()[-1].startswith("done "), finished.stdout
    lines = (output / RESULTS).read_text().splitlines()
    return [TrackResult.from_json(line) for line in lines]


def kill_mid_track(songs: Path, output: Path, model_dir: Path, log: Path) -> set[str]:
    """Start the batch command in a process group of its own, freeze its process tree
    (SIGSTOP) at a moment when at least KILL_AFTER tracks are done and another is being
    separated, and SIGKILL the group; return the ids of the tracks cut off. Every process
    the run started (raylet, GCS, workers) must be gone afterwards."""
    command, environment = batch_command(songs, output, model_dir)
    with log.open("w") as sink:
        run = subprocess.Popen(
            command, env=environment, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
    leader = psutil.Process(run.pid)
    frozen: list[psutil.Process] = []

    def frozen_mid_track() -> set[str]:
        assert run.poll() is None, f"the run ended before it was killed: {log.read_text()}"
        if len(markers(output)) < KILL_AFTER:
            return set()
        frozen[:] = freeze(leader)  # no file changes while we look
        staged = {folder.name.rpartition(".")[0] for folder in (output / STAGING).glob("*")}
        cut = staged - set(markers(output))
        if not cut:  # between two tracks: let it go on
            thaw(frozen)
        return cut

    try:
        try:
            cut = wait_until(
                frozen_mid_track,
                timeout_s=RUN_TIMEOUT_S,
                every_s=0.05,
                failure="the run never had a track in flight after the first ones were done",
            )
            assert any(process.name() == "raylet" for process in frozen), frozen
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(run.pid, signal.SIGKILL)
            run.wait(timeout=RUN_TIMEOUT_S)
        # Ray's workers are outside the group, and stopped: they end because Ray kills a
        # worker whose raylet dies (SIGKILL ends a stopped process too).
        wait_until(
            lambda: [process for process in frozen if alive(process)],
            lambda left: not left,
            timeout_s=30,
            failure="processes of the killed run outlived it",
        )
    finally:  # whatever failed, leave no stopped process behind
        for process in frozen:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
    return cut


def freeze(leader: psutil.Process) -> list[psutil.Process]:
    """SIGSTOP `leader` and every process under it (Ray's workers are in process groups of
    their own) and wait until all have stopped, since a signal lands only after the system
    call in progress (a rename, say); return them."""

    def stop_the_rest() -> list[psutil.Process]:
        running = []
        for process in [leader, *leader.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                if alive(process) and process.status() != psutil.STATUS_STOPPED:
                    process.send_signal(signal.SIGSTOP)
                    running.append(process)
        return running

    wait_until(
        stop_the_rest,
        lambda running: not running,
        timeout_s=10,
        every_s=0.01,
        failure="the run's processes did not stop",
    )
    return [leader, *leader.children(recursive=True)]


def thaw(processes: list[psutil.Process]) -> None:
    """SIGCONT each of `processes` still there."""
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(signal.SIGCONT)


def alive(process: psutil.Process) -> bool:
    """Whether `process` still runs (a zombie waiting to be reaped has ended)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def markers(output: Path) -> dict[str, tuple[int, str]]:
    """Each done marker's modification time and contents, by track id."""
    return {
        marker.parent.name: (marker.stat().st_mtime_ns, marker.read_text())
        for marker in output.glob(f"*/{DONE_MARKER}")
    }


def by_status(rows: list[TrackResult], status: str) -> set[str]:
    return {row.track_id for row in rows if row.status == status}


def processed(rows: list[TrackResult]) -> set[str]:
    """The tracks a run separated (or tried to), not those it skipped."""
    return {row.track_id for row in rows if row.status != SKIPPED}


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
def test_batch_killed_mid_track_resumes_without_redoing_work(
    songs: Path, model_dir: Path, tmp_path: Path
) -> None:
    output = tmp_path / "stems"
    ids = {track_id(f"song-{number:02}.wav") for number in range(SONGS)}
    bad = {track_id("not-audio.txt"), track_id("too-long.wav")}

    cut = kill_mid_track(songs, output, model_dir, tmp_path / "killed.log")
    after_kill = markers(output)
    assert KILL_AFTER <= len(after_kill) < SONGS  # killed with tracks still to do
    assert cut and cut <= ids - set(after_kill)
    assert cut <= {folder.name.rpartition(".")[0] for folder in (output / STAGING).iterdir()}

    second = run_batch(songs, output, model_dir, "--limit", "2")
    assert by_status(second, SKIPPED) == set(after_kill)
    limited = processed(second)
    assert len(limited) == 2 and not limited & set(after_kill)
    assert not (output / STAGING).exists()  # the killed run's staged stems are gone
    after_second = markers(output)
    assert set(after_second) == set(after_kill) | by_status(second, DONE)

    third = run_batch(songs, output, model_dir, "--tracks-per-worker", "3")
    assert len(third) == SONGS + 2
    assert by_status(third, SKIPPED) == set(after_second)
    assert processed(third) == (ids | bad) - set(after_second)
    assert by_status(third, DONE) | set(after_second) == ids
    failed = {row.track_id: row.reason for row in third if row.status == FAILED}
    assert set(failed) == bad
    assert "not a recognised audio file" in failed[track_id("not-audio.txt")]
    assert "longer than the limit" in failed[track_id("too-long.wav")]
    after_third = markers(output)
    # Nothing done in an earlier run was done again.
    assert {key: after_third[key] for key in after_second} == after_second
    assert set(after_third) == ids
    for track in cut:  # done now, and nothing of the killed attempt is left beside it
        row = TrackResult.from_json((output / track / DONE_MARKER).read_text())
        assert sorted(path.name for path in (output / track).iterdir()) == sorted(
            [*row.stems, DONE_MARKER]
        )
    assert not (output / STAGING).exists()

    fourth = run_batch(songs, output, model_dir)
    assert by_status(fourth, SKIPPED) == ids
    assert by_status(fourth, FAILED) == bad  # failed tracks are retried, and fail again
    assert markers(output) == after_third
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
