"""Model windows from any number of tracks through a model, one batch per window length.

`SeparationModel` is all the engine asks of a loaded model, whatever its family: its
geometry, a move to a device, and a batched forward pass from windows to stems.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

from models.engine.devices import precision_context
from models.engine.geometry import Geometry


class SeparationModel(Protocol):
    """A loaded model as the engine and the Separator see it."""

    @property
    def geometry(self) -> Geometry:
        """How the model cuts a track."""
        ...

    def to(self, device: torch.device) -> None:
        """Move the weights to `device`."""
        ...

    def forward(self, batch: torch.Tensor, sources: Sequence[str]) -> torch.Tensor:
        """Stems of a batch of windows (n, channels, length) on the batch's device:
        (n, len(sources), channels, length), in float32, for the named model sources.
        Called in inference mode under the engine's precision context."""
        ...


def separate_windows(
    model: SeparationModel,
    windows: Sequence[torch.Tensor],
    *,
    sources: Sequence[str] | None = None,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
) -> list[torch.Tensor]:
    """Run model windows (from any tracks) through `model` in one batch per window length.

    Returns, per window, a (len(sources), channels, window_length) tensor on the CPU.
    """
    names = model.geometry.sources if sources is None else tuple(sources)
    target = torch.device(device)
    results: list[torch.Tensor | None] = [None] * len(windows)
    by_length: dict[int, list[int]] = {}
    for position, item in enumerate(windows):
        by_length.setdefault(item.shape[-1], []).append(position)
    for positions in by_length.values():
        batch = torch.stack([windows[position] for position in positions]).to(target)
        with torch.inference_mode(), precision_context(target, precision):
            stems = model.forward(batch, names)
        stems = stems.to("cpu", torch.float32)
        if stems.is_inference():
            # Inference tensors refuse in-place updates; callers own their results.
            stems = stems.clone()
        for row, position in enumerate(positions):
            results[position] = stems[row]
    return [result for result in results if result is not None]
