"""What the engine knows of a model to cut a track: its rate, channels, sources and
segment (`Geometry`), and how its family's published inference tiles windows (`Tiling`).

A family describes its models with these; the engine reads nothing else of a model, so a
family whose inference fades or pads windows differently plugs in without engine changes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

PADDINGS = ("zeros", "reflect")


@dataclass(frozen=True)
class Tiling:
    """How windows are cut and cross-faded, as a family's own inference does it."""

    # The cross-fade weight over one segment of n frames (demucs: triangular).
    weight: Callable[[int], torch.Tensor]
    # What a window reads beyond the track: "zeros" (silence) or "reflect" (the
    # track mirrored at its edge, as far as the window's own frames reach).
    padding: str
    # The shift trick: each shift puts up to this many seconds of silence in front;
    # 0 for a family whose inference takes no shifts.
    max_shift_s: float
    # Normalise the mix by the mean and spread of its channel mean before the model
    # and scale the stems back after.
    normalise: bool

    def __post_init__(self) -> None:
        if self.padding not in PADDINGS:
            raise ValueError(f"padding must be one of {PADDINGS}, got {self.padding!r}")
        if self.max_shift_s < 0:
            raise ValueError(f"max_shift_s must not be negative, got {self.max_shift_s}")


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
