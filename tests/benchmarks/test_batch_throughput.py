"""Tests of benchmarks/batch_throughput.py without running either command: its options,
and how it compares the stem files the two runs wrote."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import batch_throughput
from serve_app.batch.inputs import track_id
from serve_app.batch.outputs import DONE_MARKER
from tests.benchmarks.helptext import help_text


def test_help_names_the_options(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    shown = help_text(batch_throughput.main, monkeypatch, capsys)
    for option in ("--tracks", "--seconds", "--workers", "--order", "--model-dir", "--small"):
        assert option in shown


def write_stems(folder: Path, *names: str) -> None:
    folder.mkdir(parents=True)
    for name in names:
        (folder / name).write_bytes(b"")


def test_stem_mismatches_ignore_the_done_marker_and_name_the_differences(
    tmp_path: Path,
) -> None:
    songs = [tmp_path / "songs" / "a.wav", tmp_path / "songs" / "b.wav"]
    baseline, batch = tmp_path / "baseline", tmp_path / "batch"
    for song in songs:
        write_stems(baseline / song.stem, "bass.wav", "drums.wav")
    write_stems(batch / track_id("a.wav"), "drums.wav", "bass.wav", DONE_MARKER)
    write_stems(batch / track_id("b.wav"), "drums.wav", DONE_MARKER)

    assert batch_throughput.stem_mismatches(songs, baseline, batch) == [
        "b.wav: batch ['drums.wav'], models separate ['bass.wav', 'drums.wav']"
    ]
