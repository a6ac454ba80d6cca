"""Overlap-add releases only frames that no later segment can touch."""

from __future__ import annotations

import torch

from models.engine.cuts import Cut
from models.engine.overlap import OverlapAdd


def test_overlap_add_releases_only_final_frames() -> None:
    accumulator = OverlapAdd(sources=1, channels=1, frames=10)
    accumulator.add(Cut(0, 6, 0, 6, 0), torch.ones(1, 1, 6))
    accumulator.add(Cut(4, 6, 4, 6, 0), torch.ones(1, 1, 6))
    assert accumulator.release(4).flatten().tolist() == [1.0] * 4
    assert accumulator.release(10).flatten().tolist() == [2.0, 2.0, 1.0, 1.0, 1.0, 1.0]
