"""MSST-format models (MDX23C, BS-RoFormer, Mel-Band RoFormer) as the engine's models.

A routed MSST model is two files in the model folder: its YAML config (`entry.config`)
and its checkpoint (`entry.weights`); the routing's family is MSST's model type. The
network is built from the config, the checkpoint loaded into it strictly, and the model
tiles tracks as MSST's `demix` does (`ChunkTiling`), with the config's
`inference.num_overlap` and `inference.batch_size` unless the routing overrides them.
MSST models are not on any hub we load from: `python -m models fetch` downloads them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from models.engine.geometry import Geometry
from models.errors import ModelLoadError, ModelMissingError
from models.families.msst.checkpoint import load_into, load_weights, verify_sha256
from models.families.msst.chunking import ChunkTiling
from models.families.msst.config import MsstConfig, read_config
from models.families.msst.networks import build_network
from models.stems.routing import ModelEntry


def geometry_of(config: MsstConfig, *, num_overlap: int, batch_size: int) -> Geometry:
    """How a model of `config` cuts a track: one chunk per window, demix's fades."""
    return Geometry(
        samplerate=config.sample_rate,
        audio_channels=config.channels,
        sources=config.output_names,
        segment_length=config.chunk_size,
        tiling=ChunkTiling(num_overlap=num_overlap, batch_size=batch_size),
    )


class MsstModel:
    """A loaded MSST network, seen through the engine's model protocol."""

    def __init__(self, network: nn.Module, config: MsstConfig, geometry: Geometry) -> None:
        self.network = network.eval()
        self.config = config
        self._geometry = geometry

    @property
    def geometry(self) -> Geometry:
        """How the model cuts a track."""
        return self._geometry

    def to(self, device: torch.device) -> None:
        """Move the network to `device`."""
        self.network.to(device)

    def forward(self, batch: torch.Tensor, sources: Sequence[str]) -> torch.Tensor:
        """The named stems of a batch of chunks: (n, len(sources), channels, chunk)."""
        names = self._geometry.sources
        indices = [names.index(name) for name in sources]
        output = self.network(batch)
        if output.dim() == 3:
            # Single-stem Mel-Band RoFormers return (n, channels, length).
            output = output.unsqueeze(1)
        return output[:, indices].float()


class MsstFamily:
    """Loads MSST models from the model folder; the model type is the routing's family."""

    def load(
        self, entry: ModelEntry, *, model_dir: Path | None = None, use_hub: bool = True
    ) -> MsstModel:
        """The model `entry` names, from its config and checkpoint in `model_dir`."""
        del use_hub  # MSST checkpoints come from `python -m models fetch`, not a hub
        if entry.config is None:
            raise ModelLoadError(f"model {entry.name!r}: an MSST model needs a config file")
        if model_dir is None:
            raise ModelMissingError(
                entry.name, [], "MSST models load from a model folder; none is configured"
            )
        folder = Path(model_dir)
        config_file, weights_file = folder / entry.config, folder / entry.weights
        missing = [str(path) for path in (config_file, weights_file) if not path.is_file()]
        if missing:
            raise ModelMissingError(
                entry.name, missing, f"fetch it: python -m models fetch {entry.name}"
            )
        if entry.config_sha256 is not None:
            verify_sha256(config_file, entry.config_sha256, entry.name)
        config = read_config(config_file, model_type=entry.family)
        network = build_network(config)
        state = load_weights(weights_file, model_name=entry.name, expected_sha256=entry.sha256)
        load_into(network, state, model_name=entry.name, path=weights_file)
        geometry = geometry_of(
            config,
            num_overlap=entry.inference.get("num_overlap", config.num_overlap),
            batch_size=entry.inference.get("batch_size", config.batch_size),
        )
        return MsstModel(network, config, geometry)


FAMILY = MsstFamily()
