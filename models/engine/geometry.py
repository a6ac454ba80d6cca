"""What the engine knows of a model to cut a track: its rate, channels, sources and segment."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from demucs.apply import BagOfModels


@dataclass(frozen=True)
class Geometry:
    """What the engine needs to know about a bag of models to cut a track."""

    samplerate: int
    audio_channels: int
    sources: tuple[str, ...]
    segment_length: int
    # The first network's `valid_length`: the input length it wants for a delivered
    # length (None: the same length). A callable, so that a geometry can also be
    # described by a process that holds no network (the service asks the Separator).
    valid_length: Callable[[int], int] | None = None

    @classmethod
    def of(cls, bag: BagOfModels) -> Geometry:
        """Read the geometry of `bag`; all its networks must cut tracks alike."""
        segments = {float(network.segment) for network in bag.models}  # type: ignore[arg-type]
        if len(segments) != 1:
            raise ValueError(f"networks of one bag must share a segment length, got {segments}")
        return cls(
            samplerate=int(bag.samplerate),
            audio_channels=int(bag.audio_channels),
            sources=tuple(bag.sources),
            segment_length=int(bag.samplerate * segments.pop()),
            valid_length=getattr(bag.models[0], "valid_length", None),
        )

    def window_length(self, length: int) -> int:
        """The input length the model wants for `length` delivered frames."""
        return int(self.valid_length(length)) if self.valid_length is not None else length
