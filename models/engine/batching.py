"""Model windows from any number of tracks through a model, one batch per window length."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from demucs.apply import BagOfModels

from models.engine.devices import precision_context


def separate_windows(
    bag: BagOfModels,
    windows: Sequence[torch.Tensor],
    *,
    sources: Sequence[str] | None = None,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
) -> list[torch.Tensor]:
    """Run model windows (from any tracks) through `bag` in one batch per window length.

    Returns, per window, a (len(sources), channels, window_length) tensor on the CPU,
    the bag's weighted average of its networks as apply_model forms it. Networks
    whose weights are zero for every requested source are skipped.
    """
    names = tuple(bag.sources) if sources is None else tuple(sources)
    indices = [bag.sources.index(name) for name in names]
    target = torch.device(device)
    results: list[torch.Tensor | None] = [None] * len(windows)
    by_length: dict[int, list[int]] = {}
    for position, item in enumerate(windows):
        by_length.setdefault(item.shape[-1], []).append(position)
    for positions in by_length.values():
        batch = torch.stack([windows[position] for position in positions]).to(target)
        combined = _forward_bag(bag, batch, indices, target, precision).cpu()
        for row, position in enumerate(positions):
            results[position] = combined[row]
    return [result for result in results if result is not None]


def _forward_bag(
    bag: BagOfModels,
    batch: torch.Tensor,
    indices: Sequence[int],
    device: torch.device,
    precision: str,
) -> torch.Tensor:
    """Weighted sum of the bag's networks on one batch, for the source `indices`."""
    combined: torch.Tensor | None = None
    totals = torch.zeros(len(indices))
    for network, network_weights in zip(bag.models, bag.weights, strict=True):
        weights = torch.tensor([float(network_weights[index]) for index in indices])
        totals += weights
        if not bool(weights.any()):
            continue
        with torch.inference_mode(), precision_context(device, precision):
            output = network.to(device)(batch)
        output = output[:, list(indices)].float() * weights.to(device)[None, :, None, None]
        combined = output if combined is None else combined + output
    if combined is None:
        raise ValueError("every network of the bag has zero weight for the requested sources")
    return combined / totals.to(device)[None, :, None, None]
