"""What the engine knows of a model to cut a track: its rate, channels, sources and
segment (`Geometry`), and how its family's published inference tiles windows (`Tiling`).

A family describes its models with these; the engine reads nothing else of a model, so a
family whose inference cuts, fades or pads windows differently plugs in its own `Tiling`
without engine changes. The demucs rules are `models.engine.cuts.SegmentTiling`; MSST's
chunked inference is `models.families.msst.chunking.ChunkTiling`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import torch

if TYPE_CHECKING:
    from models.engine.cuts import Cut


class Tiles(Protocol):
    """One track's cuts under a tiling, and how each cut's window is read and weighted."""

    @property
    def cuts(self) -> Sequence[Cut]:
        """Every cut, ordered by start."""
        ...

    def window(self, mix: torch.Tensor, cut: Cut, mean: float, scale: float) -> torch.Tensor:
        """The model input of `cut` from the (channels, frames) mix, normalised by `mean`
        and `scale`: (channels, cut.window_length)."""
        ...

    def trim(self, output: torch.Tensor, cut: Cut) -> torch.Tensor:
        """The delivered frames (..., cut.length) of the model's output for `cut`."""
        ...

    def weight(self, cut: Cut) -> torch.Tensor:
        """The cut's cross-fade weight over its delivered frames, already divided by the
        weight sum of every cut at each frame: overlap-adding needs no final division."""
        ...


class Tiling(Protocol):
    """How a family's published inference tiles a track; picklable, so a Separator can
    describe its model to the Pipeline."""

    @property
    def normalise(self) -> bool:
        """Whether the mix is normalised by the mean and spread of its channel mean before
        the model, and the stems scaled back after."""
        ...

    def tile(
        self, frames: int, geometry: Geometry, *, overlap: float, shifts: int, seed: int
    ) -> Tiles:
        """The cuts of a track of `frames` frames. `overlap` and `shifts` are the engine
        options; a tiling that has its own overlap or takes no shifts says so here."""
        ...


@dataclass(frozen=True)
class Geometry:
    """What the engine needs to know about a model to cut a track."""

    samplerate: int
    audio_channels: int
    sources: tuple[str, ...]
    segment_length: int
    # The input length the model wants for a delivered length (None: the same
    # length). A callable, so that a geometry can also be described by a process
    # that holds no network (the service asks the Separator).
    valid_length: Callable[[int], int] | None = None
    tiling: Tiling = field(kw_only=True)

    def window_length(self, length: int) -> int:
        """The input length the model wants for `length` delivered frames."""
        return int(self.valid_length(length)) if self.valid_length is not None else length
