"""The batch output folder: committed tracks and their done markers, and what a killed run
leaves behind (staged stems, a half-written marker), which the next run discards."""

from __future__ import annotations

from pathlib import Path

from serve_app.batch.job import run_batch
from serve_app.batch.outputs import DONE_MARKER, STAGING, LocalOutput
from serve_app.batch.results import DONE, TrackResult
from serve_app.batch.worker import SeparationSpec


def committed(output: LocalOutput, track_id: str) -> TrackResult:
    """Stage one stem of `track_id` and commit it, as an actor does."""
    staging = output.staging(track_id)
    (staging / "vocals.wav").write_bytes(b"stem")
    row = TrackResult(
        input=f"{track_id}.wav", track_id=track_id, status=DONE, stems=("vocals.wav",)
    )
    output.commit(row, {"vocals.wav": staging / "vocals.wav"})
    output.discard(staging)
    return row


def killed_mid_track(output: LocalOutput, track_id: str) -> None:
    """What SIGKILL leaves of a track cut off mid-way: a staged stem and a done marker
    that was being written beside stems already moved in."""
    (output.staging(track_id) / "drums.wav").write_bytes(b"half a st")
    folder = output.root / track_id
    folder.mkdir(parents=True)
    (folder / "drums.wav").write_bytes(b"stem")
    (folder / f".{DONE_MARKER}.x1y2z3").write_text('{"track_id"')


def test_discard_leftovers_keeps_only_committed_tracks(tmp_path: Path) -> None:
    output = LocalOutput(tmp_path)
    row = committed(output, "kept")
    killed_mid_track(output, "cut")

    output.discard_leftovers()

    assert not (tmp_path / STAGING).exists()
    assert output.done() == {"kept": row}
    assert sorted(path.name for path in (tmp_path / "kept").iterdir()) == [
        DONE_MARKER,
        "vocals.wav",
    ]
    # The stem moved in before the kill stays until the rerun's commit replaces it.
    assert [path.name for path in (tmp_path / "cut").iterdir()] == ["drums.wav"]


def test_a_run_starts_by_discarding_a_killed_runs_leftovers(tmp_path: Path) -> None:
    output = LocalOutput(tmp_path)
    killed_mid_track(output, "cut")

    # No track to separate, so no Ray is needed: only the start and the end of a run.
    run_batch([], output, SeparationSpec())

    assert not (tmp_path / STAGING).exists()
    assert not list(tmp_path.glob(f"*/.{DONE_MARKER}.*"))
