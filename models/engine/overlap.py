"""Overlap-add of weighted segment outputs, releasing frames as soon as they are final.

Memory holds only the frames that a later segment may still touch, so it does not grow
with track length.
"""

from __future__ import annotations

import torch

from models.engine.cuts import Cut


class OverlapAdd:
    """Accumulates weighted cut outputs and releases frames once they are final."""

    def __init__(self, sources: int, channels: int, frames: int) -> None:
        self.frames = frames
        self.done = 0  # frames [0, done) have been released
        self.buffer = torch.zeros(sources, channels, 0)

    def add(self, cut: Cut, weighted: torch.Tensor) -> None:
        """Add a cut's delivered output, already multiplied by its weight."""
        begin = max(cut.start, self.done)
        end = min(cut.start + cut.length, self.frames)
        if begin >= end:
            return
        self._hold(end - self.done)
        self.buffer[..., begin - self.done : end - self.done] += weighted[
            ..., begin - cut.start : end - cut.start
        ]

    def release(self, upto: int) -> torch.Tensor:
        """Hand back frames [done, upto): no cut added later may start before `upto`."""
        upto = min(max(upto, self.done), self.frames)
        count = upto - self.done
        self._hold(count)
        block = self.buffer[..., :count]
        self.buffer = self.buffer[..., count:].clone()
        self.done = upto
        return block

    def _hold(self, frames: int) -> None:
        """Grow the buffer with silence until it holds `frames` frames past `done`."""
        if frames > self.buffer.shape[-1]:
            grow = torch.zeros(*self.buffer.shape[:-1], frames - self.buffer.shape[-1])
            self.buffer = torch.cat([self.buffer, grow], dim=-1)
