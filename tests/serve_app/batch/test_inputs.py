"""Track ids, input listing, the output folder's done markers and the pool's bounds: the
parts of a batch that run without Ray."""

from __future__ import annotations

from pathlib import Path

import pytest

from serve_app.batch.inputs import list_inputs, track_id
from serve_app.batch.job import Workers
from serve_app.batch.outputs import DONE_MARKER, LocalOutput
from serve_app.batch.results import DONE, FAILED, SKIPPED, Summary, TrackResult


def test_track_ids_are_stable_readable_and_distinct() -> None:
    assert track_id("Album 1/Song One.mp3") == track_id("Album 1/Song One.mp3")
    assert track_id("Album 1/Song One.mp3").startswith("album-1-song-one-mp3-")
    # Paths that slug alike still differ by their hash.
    assert track_id("a b.wav") != track_id("a-b.wav")
    assert track_id("???").startswith("track-")
    assert len(track_id("x" * 500)) <= 60 + 13


def test_a_folder_lists_every_regular_file_recursively_but_the_output(tmp_path: Path) -> None:
    (tmp_path / "in" / "disc 2").mkdir(parents=True)
    (tmp_path / "in" / "b.wav").write_bytes(b"b")
    (tmp_path / "in" / "disc 2" / "a.flac").write_bytes(b"a")
    (tmp_path / "in" / "out").mkdir()
    (tmp_path / "in" / "out" / "stem.wav").write_bytes(b"s")
    tracks = list_inputs(tmp_path / "in", exclude=tmp_path / "in" / "out")
    assert [track.source for track in tracks] == [
        str(tmp_path / "in" / "b.wav"),
        str(tmp_path / "in" / "disc 2" / "a.flac"),
    ]
    assert tracks[1].track_id == track_id("disc 2/a.flac")


def test_a_manifest_lists_its_lines_once_relative_to_its_folder(tmp_path: Path) -> None:
    manifest = tmp_path / "list.txt"
    manifest.write_text("# catalogue\nsongs/a.wav\n\n/abs/b.mp3\nsongs/a.wav\n")
    tracks = list_inputs(manifest)
    assert [track.source for track in tracks] == [str(tmp_path / "songs/a.wav"), "/abs/b.mp3"]
    assert [track.track_id for track in tracks] == [track_id("songs/a.wav"), track_id("/abs/b.mp3")]


def test_a_missing_input_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="input not found"):
        list_inputs(tmp_path / "nothing")


def test_commit_moves_the_stems_then_writes_the_marker(tmp_path: Path) -> None:
    output = LocalOutput(tmp_path)
    staging = output.staging("t-1")
    (staging / "vocals.wav").write_bytes(b"v")
    row = TrackResult("in.wav", "t-1", DONE, duration_s=2.0, seconds=1.0, stems=("vocals.wav",))
    assert output.done() == {}
    output.commit(row, {"vocals.wav": staging / "vocals.wav"})
    output.discard(staging)
    assert (tmp_path / "t-1" / "vocals.wav").read_bytes() == b"v"
    assert sorted(path.name for path in (tmp_path / "t-1").iterdir()) == [
        DONE_MARKER,
        "vocals.wav",
    ]
    assert output.done() == {"t-1": row}
    assert not staging.exists()


def test_workers_parse_and_refuse_bad_bounds() -> None:
    assert Workers.parse("2:8") == Workers(2, 8)
    assert Workers.parse("3") == Workers(3, 3)
    for text in ("0:2", "4:2", "a:b", ""):
        with pytest.raises(ValueError, match="workers must be"):
            Workers.parse(text)


def test_summary_counts_rows_and_speed() -> None:
    rows = [
        TrackResult("a", "a", DONE, duration_s=10.0, seconds=2.0),
        TrackResult("b", "b", DONE, duration_s=30.0, seconds=6.0),
        TrackResult("c", "c", FAILED, reason="AudioError: no"),
        TrackResult("d", "d", SKIPPED, duration_s=5.0),
    ]
    summary = Summary.of(rows, wall_s=4.0)
    assert (summary.done, summary.failed, summary.skipped) == (2, 1, 1)
    assert "10.00 audio s per s" in summary.line()
    assert "real-time factor 0.200" in summary.line()
