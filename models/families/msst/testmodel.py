"""Random-weight MSST models, written as MSST publishes them: a YAML config and a checkpoint.

`make_msst_test_model("bs_roformer", config, folder, name="model_bs_roformer_ep_317_sdr_12.9755")`
writes `<name>.yaml`, the config byte for byte as given, and `<name>.ckpt`, `torch.save` of
the bare state dict of the network that config builds, so that the real loading path
(`config.read_config`, `checkpoint.load_weights`, a strict `checkpoint.load_into`) runs
with nothing downloaded. `fmt="safetensors"` writes the converted form instead, in which
aliased tensors (the RoFormers' shared rotary `freqs`) are stored once.

The weights depend on `seed` alone: torch's default initialisation under that seed, then
every trainable floating-point parameter shifted by a little seeded noise, so that norm
gains and biases are not their initial 1 and 0 and a loader that skipped them would show.
The stems of such a model are noise: it is for testing plumbing, speed and memory.

`small_config` turns a published config into a tiny one of the same family with the same
output names (the family's tiny layout in `tiny/`, the reference fixtures' scaled-down
configs), for fast tests of routings that name published models.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch
import yaml
from safetensors.torch import save_model
from torch import nn

from models.families.msst.config import MsstConfig, parse_config, safe_load_yaml
from models.families.msst.networks import build_network
from models.fetching import sha256_of

WEIGHT_FORMATS = ("ckpt", "pth", "safetensors")
WEIGHT_NOISE = 0.05  # standard deviation of the shift added to each trainable parameter
TINY_CONFIGS = Path(__file__).resolve().with_name("tiny")  # <model_type>.yaml, package data


class MsstTestModel(NamedTuple):
    """The files of one written test model and the sha256 of its weights."""

    config_file: Path
    weights_file: Path
    sha256: str


def make_msst_test_model(
    model_type: str,
    config: str | Path,
    folder: str | Path,
    *,
    name: str,
    seed: int = 0,
    fmt: str = "ckpt",
) -> MsstTestModel:
    """Write a random-weight `model_type` model with `config` into `folder` as `name`.

    `config` is the YAML text itself or, as a Path, the file holding it. A checkpoint of
    `name` in another format is removed, so the folder holds one set of weights per name.
    """
    if fmt not in WEIGHT_FORMATS:
        raise ValueError(f"unknown weights format {fmt!r}; known: {', '.join(WEIGHT_FORMATS)}")
    if not name or name in (".", "..") or Path(name).name != name:
        raise ValueError(f"a model name is a plain file name, not {name!r}")
    config_bytes = config.read_bytes() if isinstance(config, Path) else config.encode("utf-8")
    config_file_name = f"{name}.yaml"
    parsed = parse_config(
        config_bytes.decode("utf-8"), model_type=model_type, source=config_file_name
    )
    network = random_network(parsed, seed=seed)
    target = Path(folder)
    target.mkdir(parents=True, exist_ok=True)
    config_file = target / config_file_name
    _write_atomically(config_file, lambda part: part.write_bytes(config_bytes))
    for other in WEIGHT_FORMATS:
        if other != fmt:
            (target / f"{name}.{other}").unlink(missing_ok=True)
    weights_file = target / f"{name}.{fmt}"
    if fmt == "safetensors":
        _write_atomically(weights_file, lambda part: save_model(network, str(part)))
    else:
        _write_atomically(weights_file, lambda part: torch.save(network.state_dict(), part))
    return MsstTestModel(config_file, weights_file, sha256_of(weights_file))


def random_network(config: MsstConfig, *, seed: int = 0) -> nn.Module:
    """The network `config` describes with weights drawn from `seed` alone, in eval mode."""
    # A private RNG state: the caller's torch seed is neither used nor advanced.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        network = build_network(config)
    noise = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for parameter in network.parameters():
            if parameter.requires_grad and parameter.is_floating_point():
                parameter.add_(WEIGHT_NOISE * torch.randn(parameter.shape, generator=noise))
    return network.eval()


def _write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """Run `write` on a partial file beside `path`, then move it into place."""
    part = path.with_name(f".{path.name}.part")
    try:
        write(part)
        os.replace(part, path)
    finally:
        part.unlink(missing_ok=True)


def small_config(model_type: str, published: str, *, source: str = "<config>") -> str:
    """A tiny config of `model_type` that outputs what the `published` config outputs.

    The network section is the family's tiny layout; the stem names (`instruments`,
    `target_instrument`) and the number of outputs follow the published config.
    """
    wanted = parse_config(published, model_type=model_type, source=source)
    tiny_file = TINY_CONFIGS / f"{model_type}.yaml"
    document: dict[str, Any] = safe_load_yaml(tiny_file.read_text("utf-8"), source=tiny_file.name)
    document["training"]["instruments"] = list(wanted.instruments)
    document["training"]["target_instrument"] = wanted.target_instrument
    outputs = len(wanted.output_names)
    if model_type in ("bs_roformer", "mel_band_roformer"):
        document["model"]["num_stems"] = outputs
    elif model_type == "scnet":
        document["model"]["sources"] = list(wanted.instruments)
    # yaml.Dumper writes tuples as !!python/tuple, which the config reader accepts.
    text: str = yaml.dump(document, Dumper=yaml.Dumper, sort_keys=False)
    return text
