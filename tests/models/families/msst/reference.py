"""Reading the reference fixtures copied from MSST (configs, key lists, weights) in tests."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models.families.msst.config import safe_load_yaml
from models.families.msst.mdx23c import MDX23C

FIXTURES = Path(__file__).parent / "fixtures"


def read_config(path: Path) -> dict[str, Any]:
    """An MSST YAML config as plain dicts, lists and tuples, read as the service reads it."""
    config: dict[str, Any] = safe_load_yaml(path.read_text(encoding="utf-8"), source=path.name)
    return config


def published_configs(family: str) -> list[Path]:
    """The published MSST configs of a family, by name."""
    return sorted((FIXTURES / family / "published").glob("*.yaml"))


def key_list(path: Path) -> dict[str, Any]:
    """The `*.keys.json` beside an MSST config."""
    loaded: dict[str, Any] = json.loads(path.with_suffix(".keys.json").read_text())
    return loaded


def keys_and_shapes(model: nn.Module) -> list[tuple[str, list[int]]]:
    """The state dict of a module as (key, shape) pairs, in order."""
    return [(key, list(value.shape)) for key, value in model.state_dict().items()]


def assert_builds_msst_keys(path: Path, model: nn.Module) -> None:
    """`model`, built from the config at `path`, has the state-dict keys, shapes and
    parameter count MSST's code builds from it (its `*.keys.json`). Aliased tensors
    (the RoFormers' rotary `freqs`) count once."""
    expected = key_list(path)
    assert keys_and_shapes(model) == [(key, shape) for key, shape, *_ in expected["state_dict"]]
    assert sum(p.numel() for p in model.parameters()) == expected["parameter_count"]


def build_on_meta(build: Callable[[], nn.Module]) -> nn.Module:
    """A module built without allocating its weights."""
    with torch.device("meta"):
        return build()


def tiny_weights(family: str, *, without: str | None = None) -> dict[str, torch.Tensor]:
    """The tiny model's state dict, less the keys starting with `without`."""
    with np.load(FIXTURES / family / "tiny_model.npz") as archive:
        return {
            key: torch.from_numpy(archive[key])
            for key in archive.files
            if without is None or not key.startswith(without)
        }


def tiny_forward(family: str) -> tuple[torch.Tensor, np.ndarray]:
    """The tiny model's input batch and MSST's output for it."""
    with np.load(FIXTURES / family / "tiny_forward.npz") as archive:
        return torch.from_numpy(archive["input"]), archive["output"]


def tiny_network() -> MDX23C:
    """The tiny MDX23C fixture network with MSST's weights loaded strictly, in eval mode."""
    network = MDX23C.from_msst(read_config(FIXTURES / "mdx23c" / "tiny.yaml"))
    weights = np.load(FIXTURES / "mdx23c" / "tiny_model.npz")
    network.load_state_dict({k: torch.from_numpy(weights[k]) for k in weights.files}, strict=True)
    return network.eval()
