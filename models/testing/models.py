"""Random-weight models for every model a routing names, and a routing that serves them.

`write_test_models(routing_file, folder)` writes each routed model with random weights in
its family's published format under the routing's file names (demucs bags through
`families.demucs.testmodel`, MSST configs and checkpoints through
`families.msst.testmodel`), then `folder/routing.yaml`: the same routing with each
model's sha256 set to the written files' and its download addresses dropped, so that
`--routing folder/routing.yaml --model-dir folder` runs the whole routing offline.
MSST configs come from `configs` (the published copies in configs/msst/); `small`
writes each family's tiny layout with the published output names instead.

The stems of such models are noise: they are for tests and the offline demo.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from models.families import CONFIGURED_FAMILIES
from models.families.demucs.testmodel import make_test_model
from models.families.msst.testmodel import WEIGHT_FORMATS, make_msst_test_model, small_config
from models.fetching import sha256_of
from models.stems.routing import ModelEntry, load_routing

DEFAULT_CONFIGS = Path("configs") / "msst"  # the published configs, in a source checkout
WRITTEN_ROUTING = "routing.yaml"


def write_test_models(
    routing_file: str | Path,
    folder: str | Path,
    *,
    names: Sequence[str] = (),
    small: bool = False,
    configs: str | Path = DEFAULT_CONFIGS,
    seed: int = 0,
) -> Path:
    """Write random-weight models for the routing's models (`names`, or all) into
    `folder`; return the routing written beside them."""
    routing = load_routing(routing_file)
    models = routing.all_models()
    unknown = [name for name in names if name not in models]
    if unknown:
        raise ValueError(
            f"unknown model(s) {', '.join(map(repr, unknown))}; "
            f"this routing has: {', '.join(models)}"
        )
    target = Path(folder)
    target.mkdir(parents=True, exist_ok=True)
    digests: dict[str, dict[str, str]] = {}
    for number, entry in enumerate(models.values()):
        if names and entry.name not in names:
            continue
        if entry.family in CONFIGURED_FAMILIES:
            digests[entry.name] = _write_msst(entry, target, Path(configs), small, seed + number)
        else:
            make_test_model(target, entry.weights, small=small, seed=seed + number)
    document: dict[str, Any] = yaml.safe_load(Path(routing_file).read_text("utf-8"))
    for section in ("models", "preprocessing"):
        for key, fields in (document.get(section) or {}).items():
            fields.pop("source", None)
            for field in ("sha256", "config_sha256"):
                fields.pop(field, None)
                if field in digests.get(key, {}):
                    fields[field] = digests[key][field]
    written = target / WRITTEN_ROUTING
    part = written.with_name(f".{written.name}.part")
    part.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    os.replace(part, written)
    load_routing(written)  # what we wrote must load
    return written


def _write_msst(
    entry: ModelEntry, folder: Path, configs: Path, small: bool, seed: int
) -> dict[str, str]:
    """One MSST model under the routing's names; the sha256 of its two files."""
    assert entry.config is not None  # the routing requires it for MSST families
    source = configs / entry.config
    try:
        published = source.read_text("utf-8")
    except OSError as exc:
        raise ValueError(f"model {entry.name!r}: no config {entry.config} in {configs}") from exc
    text = small_config(entry.family, published, source=entry.config) if small else published
    weights = Path(entry.weights)
    fmt = weights.suffix.lstrip(".")
    if fmt not in WEIGHT_FORMATS:
        raise ValueError(f"model {entry.name!r}: weights {entry.weights} are not a checkpoint")
    written = make_msst_test_model(
        entry.family, text, folder, name=weights.stem, fmt=fmt, seed=seed
    )
    config_file = folder / entry.config
    if written.config_file != config_file:
        os.replace(written.config_file, config_file)
    return {"sha256": written.sha256, "config_sha256": sha256_of(config_file)}
