"""Loading demucs models by name, from a local model folder or the Hugging Face hub.

A name is what demucs 4.1 calls a model (`htdemucs`, `htdemucs_ft`, `htdemucs_6s`,
`hdemucs_mmi`, ...): a bag of one or more networks with a weight matrix. We look in
two places, in this order, and name both in the error when neither has it:

1. the configured model folder, in either of the layouts demucs itself reads:
   the local-repository layout (`NAME.yaml` beside `SIG.th` or `SIG-CHECKSUM.th`
   files, what `demucs --repo DIR` takes) or the hub export layout (`NAME.yaml` beside
   `SIG.safetensors` files), directly in the folder or in a `NAME/` sub-folder (what a
   snapshot download of the hub repository leaves);
2. the Hugging Face hub through demucs's own `get_hf_model` (cached by huggingface_hub).

A weights entry may also name one file inside the folder (`my_model.th` or
`my_model.safetensors`), checked against a sha256 prefix when one is configured.
Demucs's own loader calls `sys.exit` on a missing folder, so every path is checked
here before demucs sees it. Every model comes back as a `BagOfModels`, so callers
treat single networks and bags alike.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from demucs.apply import BagOfModels, Model
from demucs.hf import get_hf_model, hf_repo_name, load_safetensors_model
from demucs.states import load_model as load_demucs_package

from models.errors import ModelLoadError, ModelMissingError
from models.fetching import sha256_of

WEIGHT_SUFFIXES = (".th", ".safetensors")


def load_model(
    weights: str,
    *,
    model_dir: str | Path | None = None,
    use_hub: bool = True,
    checksum: str | None = None,
) -> BagOfModels:
    """Load `weights` (a demucs model name or a file in `model_dir`) as an eval-mode bag."""
    looked: list[str] = []
    bag: BagOfModels | None = None
    if model_dir is not None:
        bag = _load_from_folder(weights, Path(model_dir), checksum, looked)
    if bag is None and use_hub and not weights.endswith(WEIGHT_SUFFIXES):
        bag = _load_from_hub(weights, looked)
    if bag is None:
        raise ModelMissingError(weights, looked)
    bag.eval()
    return bag


def _load_from_folder(
    weights: str, folder: Path, checksum: str | None, looked: list[str]
) -> BagOfModels | None:
    """Find `weights` in `folder` in any supported layout; None if it is not there."""
    if not folder.is_dir():
        looked.append(f"model folder {folder} (not a directory)")
        return None
    if weights.endswith(WEIGHT_SUFFIXES):
        path = folder / weights
        looked.append(str(path))
        if not path.is_file():
            return None
        if checksum:
            verify_checksum(path, checksum)
        return BagOfModels([_load_network(path)])
    for root in (folder, folder / weights):
        bag_file = root / f"{weights}.yaml"
        looked.append(str(bag_file))
        if bag_file.is_file():
            return _load_bag(bag_file)
    return None


def _load_bag(bag_file: Path) -> BagOfModels:
    """Load the bag described by a demucs bag yaml from the networks beside it."""
    try:
        bag = yaml.safe_load(bag_file.read_text())
        signatures = [str(sig) for sig in bag["models"]]
    except (yaml.YAMLError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"{bag_file} is not a demucs bag description: {exc}") from exc
    networks = [_load_network(_find_network(bag_file, sig)) for sig in signatures]
    try:
        return BagOfModels(networks, bag.get("weights"), bag.get("segment"))
    except AssertionError as exc:
        raise ModelLoadError(f"{bag_file}: networks or weights do not fit together") from exc


def _find_network(bag_file: Path, sig: str) -> Path:
    """The weights file of network `sig` next to `bag_file`, checksum-verified if named so."""
    folder = bag_file.parent
    candidates = [folder / f"{sig}.th", folder / f"{sig}.safetensors"]
    candidates += sorted(folder.glob(f"{sig}-*.th"))
    found = [path for path in candidates if path.is_file()]
    if not found:
        looked = [str(path) for path in candidates[:2]] + [str(folder / f"{sig}-*.th")]
        raise ModelMissingError(bag_file.stem, looked, reason=f"network {sig} is missing")
    if len(found) > 1:
        names = ", ".join(path.name for path in found)
        raise ModelLoadError(f"several weight files for network {sig} in {folder}: {names}")
    path = found[0]
    if "-" in path.stem:
        verify_checksum(path, path.stem.rsplit("-", 1)[1])
    return path


def _load_network(path: Path) -> Model:
    """Load one demucs network from a `.th` package or a hub `.safetensors` export."""
    try:
        if path.suffix == ".safetensors":
            network: Model = load_safetensors_model(path)
        else:
            network = load_demucs_package(path)
    except Exception as exc:
        # torch.load, pickle and safetensors each raise their own types for a bad file.
        raise ModelLoadError(f"cannot load network weights from {path}: {exc}") from exc
    return network


def _load_from_hub(name: str, looked: list[str]) -> BagOfModels | None:
    """Load a named bag from the Hugging Face hub; None when it cannot be had."""
    namespace, _, short = name.rpartition("/")
    repo = f"{namespace or 'adefossez'}/{hf_repo_name(short)}"
    try:
        bag = get_hf_model(name)
    except Exception as exc:
        # huggingface_hub raises many unrelated types for "offline", "no such repo"
        # and "no such file"; all of them mean the same to a caller: not here.
        looked.append(f"Hugging Face hub {repo} ({type(exc).__name__})")
        return None
    looked.append(f"Hugging Face hub {repo}")
    return bag


def verify_checksum(path: Path, expected: str) -> None:
    """Raise ModelLoadError unless the sha256 of `path` starts with `expected`."""
    actual = sha256_of(path)[: len(expected)]
    if actual != expected.lower():
        raise ModelLoadError(f"checksum mismatch for {path}: expected {expected}, got {actual}")
