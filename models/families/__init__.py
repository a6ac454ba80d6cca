"""Model families: one package per kind of network, behind one small protocol.

A family loads a routed model (`ModelEntry`: weights from a model folder or the hub,
checksum checked) into a `SeparationModel` (models/engine/batching.py): its geometry
and tiling, and a batched forward pass from windows to stems. The engine, the job path
and the Separator know only that protocol.

`FAMILIES` is the registry: family name -> the module holding that family's `FAMILY`.
It names modules rather than holding families so that this package stays torch-free:
the routing validates family names against it, and the HTTP edge reads the routing.
A new family is a new package here plus one line in `FAMILIES`; families never
import each other. MSST's network types are families of one package (`msst`): they share
its config, checkpoint and chunked-inference code, and its `FAMILY` reads the type from
the routing entry.
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from models.engine.batching import SeparationModel
    from models.stems.routing import ModelEntry

_MSST = "models.families.msst.family"
FAMILIES: dict[str, str] = {
    "demucs": "models.families.demucs.family",
    # MSST's model types: one package, one network module each (models/families/msst/).
    "mdx23c": _MSST,
    "bs_roformer": _MSST,
    "mel_band_roformer": _MSST,
    "scnet": _MSST,
}
# Families whose models are a weights file plus a config file that builds the network.
CONFIGURED_FAMILIES: frozenset[str] = frozenset(
    {"mdx23c", "bs_roformer", "mel_band_roformer", "scnet"}
)


class Family(Protocol):
    """One kind of model: how to load it for the engine."""

    def load(
        self, entry: ModelEntry, *, model_dir: Path | None = None, use_hub: bool = True
    ) -> SeparationModel:
        """Load the model `entry` names, in eval mode on the CPU: from `model_dir`
        first, then the hub when `use_hub`. Raises ModelMissingError when neither has
        it and ModelLoadError when its files are damaged or fail their checksum."""
        ...


def family(name: str) -> Family:
    """The family registered as `name`."""
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r}; known: {', '.join(sorted(FAMILIES))}")
    found: Family = import_module(FAMILIES[name]).FAMILY
    return found
