"""Cutting tracks into segments, model windows and their padding, without any model."""

from __future__ import annotations

import pytest
import torch

from models.engine.cuts import Cut, SegmentTiling, cut_track, transition_weight, trim, window
from models.engine.geometry import Geometry

TILING = SegmentTiling(weight=transition_weight, padding="zeros", max_shift_s=0.0, normalise=False)
GEOMETRY = Geometry(
    samplerate=100, audio_channels=1, sources=("only",), segment_length=10, tiling=TILING
)


def test_window_reads_silence_outside_the_track() -> None:
    mix = torch.arange(1, 11, dtype=torch.float32).repeat(2, 1)
    cut = Cut(start=8, length=2, window_start=6, window_length=6, shift=0)
    assert window(mix, cut)[0].tolist() == [7.0, 8.0, 9.0, 10.0, 0.0, 0.0]
    assert trim(torch.arange(6.0), cut).tolist() == [2.0, 3.0]


def test_reflect_padding_mirrors_the_track_then_reads_silence() -> None:
    mix = torch.arange(1, 5, dtype=torch.float32)[None]
    inside = Cut(start=2, length=2, window_start=1, window_length=5, shift=0)
    assert window(mix, inside, padding="reflect")[0].tolist() == [2.0, 3.0, 4.0, 3.0, 2.0]
    beyond = Cut(start=0, length=4, window_start=-5, window_length=10, shift=0)
    mirrored = window(mix, beyond, padding="reflect")[0].tolist()
    assert mirrored == [0.0, 0.0, 4.0, 3.0, 2.0, 1.0, 2.0, 3.0, 4.0, 3.0]


def test_cuts_cover_the_track_with_the_given_overlap() -> None:
    cuts = cut_track(25, GEOMETRY, overlap=0.5)
    assert [(cut.start, cut.length) for cut in cuts] == [
        (0, 10),
        (5, 10),
        (10, 10),
        (15, 10),
        (20, 5),
    ]
    assert all(cut.window_start == cut.start for cut in cuts)


def test_empty_track_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        cut_track(0, GEOMETRY)


def test_shifts_are_refused_where_the_tiling_takes_none() -> None:
    with pytest.raises(ValueError, match="no shifts"):
        cut_track(100, GEOMETRY, shifts=2)


def test_unknown_padding_is_refused() -> None:
    with pytest.raises(ValueError, match="padding"):
        SegmentTiling(weight=transition_weight, padding="edge", max_shift_s=0.0, normalise=False)
