"""Random-weight stand-ins for released demucs models, written in demucs's own formats.

`make_test_model(folder, like="htdemucs_6s")` writes a bag with the released
architecture (the same network class, constructor arguments, signatures, bag
weights and segment as the released checkpoints) and random weights, so that
`load_model("htdemucs_6s", model_dir=folder)` goes through the real loading path
with nothing downloaded. `small=True` keeps the class, sources, sample rate and
segment (so segmenting behaves exactly as with the real model) but shrinks widths
and depths so that a forward pass takes milliseconds; tests use it.

The stems of such a model are noise: it is for testing plumbing, speed and memory,
never for listening. The constructor arguments of the released networks are those
of demucs's training configuration for each release (`conf/config.yaml` and the
`mmi` grid); the bag files come from demucs's own `remote/` folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch
import yaml
from demucs.apply import BagOfModels
from demucs.hdemucs import HDemucs
from demucs.htdemucs import HTDemucs
from demucs.pretrained import REMOTE_ROOT
from demucs.states import save_with_checksum
from safetensors.torch import save_file

FOUR_SOURCES = ("drums", "bass", "other", "vocals")
SIX_SOURCES = (*FOUR_SOURCES, "guitar", "piano")
HTDEMUCS_RELEASE: dict[str, Any] = {
    "dconv_mode": 3,
    "bottom_channels": 512,
    "t_layers": 5,
    "segment": Fraction(39, 5),
}
HTDEMUCS_SMALL: dict[str, Any] = {
    "channels": 4,
    "depth": 4,
    "dconv_mode": 1,
    "dconv_comp": 2,
    "bottom_channels": 0,
    "t_layers": 1,
    "t_heads": 1,
    "t_hidden_scale": 1.0,
    "segment": Fraction(39, 5),
}
HDEMUCS_RELEASE: dict[str, Any] = {"segment": 44}
HDEMUCS_SMALL: dict[str, Any] = {"channels": 4, "dconv_comp": 2, "segment": 44}


@dataclass(frozen=True)
class Recipe:
    """How to build the networks of one released bag."""

    network: type[HTDemucs] | type[HDemucs]
    sources: tuple[str, ...]
    release: dict[str, Any]
    small: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)


RECIPES: dict[str, Recipe] = {
    "htdemucs": Recipe(HTDemucs, FOUR_SOURCES, HTDEMUCS_RELEASE, HTDEMUCS_SMALL),
    "htdemucs_ft": Recipe(HTDemucs, FOUR_SOURCES, HTDEMUCS_RELEASE, HTDEMUCS_SMALL),
    "htdemucs_6s": Recipe(HTDemucs, SIX_SOURCES, HTDEMUCS_RELEASE, HTDEMUCS_SMALL),
    "hdemucs_mmi": Recipe(HDemucs, FOUR_SOURCES, HDEMUCS_RELEASE, HDEMUCS_SMALL),
}
LAYOUTS = ("th", "safetensors")


def make_test_model(
    folder: str | Path,
    like: str = "htdemucs_6s",
    *,
    small: bool = False,
    layout: str = "th",
    seed: int = 0,
) -> Path:
    """Write a random-weight copy of the released bag `like` into `folder`; return the yaml."""
    if like not in RECIPES:
        raise ValueError(f"unknown model {like!r}; known: {', '.join(RECIPES)}")
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; known: {', '.join(LAYOUTS)}")
    recipe = RECIPES[like]
    bag_text = (REMOTE_ROOT / f"{like}.yaml").read_text()
    signatures = [str(sig) for sig in yaml.safe_load(bag_text)["models"]]
    target = Path(folder)
    target.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    kwargs = dict(recipe.small if small else recipe.release)
    kwargs["sources"] = list(recipe.sources)
    for sig in signatures:
        for stale in [*target.glob(f"{sig}.*"), *target.glob(f"{sig}-*.th")]:
            stale.unlink()
        network = recipe.network(**kwargs)
        if layout == "th":
            _save_package(network, kwargs, target / f"{sig}.th")
        else:
            _save_safetensors(network, kwargs, target / f"{sig}.safetensors")
    bag_file = target / f"{like}.yaml"
    bag_file.write_text(bag_text)
    return bag_file


def _save_package(network: torch.nn.Module, kwargs: dict[str, Any], path: Path) -> None:
    """Save as demucs's `.th` package, named `SIG-CHECKSUM.th` as releases are."""
    state = {key: value.half() for key, value in network.state_dict().items()}
    package = {"klass": type(network), "args": (), "kwargs": kwargs, "state": state}
    save_with_checksum(package, path)


def _save_safetensors(network: torch.nn.Module, kwargs: dict[str, Any], path: Path) -> None:
    """Save in the hub export layout: tensors plus class and arguments as json metadata."""
    state = {key: value.half().contiguous() for key, value in network.state_dict().items()}
    klass = type(network)
    metadata = {
        "klass": f"{klass.__module__}.{klass.__name__}",
        "args": json.dumps([]),
        "kwargs": json.dumps(kwargs, default=_encode_fraction),
    }
    save_file(state, str(path), metadata=metadata)


def _encode_fraction(value: object) -> dict[str, Any]:
    """JSON form of a Fraction as demucs's hub loader decodes it."""
    if isinstance(value, Fraction):
        return {"_type": "fraction", "numerator": value.numerator, "denominator": value.denominator}
    raise TypeError(f"cannot encode {type(value).__name__}")


def parameter_count(bag: BagOfModels) -> int:
    """Number of parameters in all networks of a bag."""
    return sum(param.numel() for param in bag.parameters())
