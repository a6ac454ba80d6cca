"""The demucs family: a demucs `BagOfModels` as the engine's `SeparationModel`.

A bag is one or more networks with a weight matrix over sources; its forward pass is
the weighted average of its networks, as `demucs.apply.apply_model` forms it, and
networks whose weights are zero for every requested source are skipped. Windows are
cut and cross-faded as demucs does (`TILING`), so the engine agrees with
`apply_model` to float precision.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from demucs.apply import BagOfModels

from models.engine.cuts import SegmentTiling, transition_weight
from models.engine.geometry import Geometry
from models.families.demucs.loading import load_model
from models.stems.routing import ModelEntry

# Triangular cross-fades, silence beyond the track, shifts of up to half a second,
# the mix normalised on its channel mean: demucs's apply_model and separator.
TILING = SegmentTiling(weight=transition_weight, padding="zeros", max_shift_s=0.5, normalise=True)


def geometry_of(bag: BagOfModels) -> Geometry:
    """Read the geometry of `bag`; all its networks must cut tracks alike."""
    segments = {float(network.segment) for network in bag.models}  # type: ignore[arg-type]
    if len(segments) != 1:
        raise ValueError(f"networks of one bag must share a segment length, got {segments}")
    return Geometry(
        samplerate=int(bag.samplerate),
        audio_channels=int(bag.audio_channels),
        sources=tuple(bag.sources),
        segment_length=int(bag.samplerate * segments.pop()),
        valid_length=getattr(bag.models[0], "valid_length", None),
        tiling=TILING,
    )


class DemucsModel:
    """A loaded bag, seen through the engine's model protocol."""

    def __init__(self, bag: BagOfModels) -> None:
        self.bag = bag
        self._geometry = geometry_of(bag)

    @property
    def geometry(self) -> Geometry:
        """How the bag cuts a track."""
        return self._geometry

    def to(self, device: torch.device) -> None:
        """Move every network to `device`."""
        self.bag.to(device)

    def forward(self, batch: torch.Tensor, sources: Sequence[str]) -> torch.Tensor:
        """Weighted sum of the bag's networks on one batch, for the named sources."""
        indices = [self.bag.sources.index(name) for name in sources]
        device = batch.device
        combined: torch.Tensor | None = None
        totals = torch.zeros(len(indices))
        for network, network_weights in zip(self.bag.models, self.bag.weights, strict=True):
            weights = torch.tensor([float(network_weights[index]) for index in indices])
            totals += weights
            if not bool(weights.any()):
                continue
            output = network.to(device)(batch)
            output = output[:, indices].float() * weights.to(device)[None, :, None, None]
            combined = output if combined is None else combined + output
        if combined is None:
            raise ValueError("every network of the bag has zero weight for the requested sources")
        return combined / totals.to(device)[None, :, None, None]


class DemucsFamily:
    """Loads demucs bags by name from a model folder or the hub (see loading.py)."""

    def load(
        self, entry: ModelEntry, *, model_dir: Path | None = None, use_hub: bool = True
    ) -> DemucsModel:
        """The bag `entry` names, as a `DemucsModel`."""
        bag = load_model(entry.weights, model_dir=model_dir, use_hub=use_hub, checksum=entry.sha256)
        return DemucsModel(bag)


FAMILY = DemucsFamily()
