"""What a routing makes of each catalogue stem: served, waiting for files, or not served.

`stem_statuses` reports one `StemStatus` per catalogue stem, in catalogue order, for the
`GET /stems` route and operators. A served stem says what produces it and the path of
model passes and derivations from the mixture, with the licence of every model on that
path and the published quality figure for the stem, if the routing records one. A
served stem whose MSST model lacks its config or weights in the model folder is
`weights_missing`, with the command that fetches them; demucs models count as present,
since demucs fetches from its hub on first use. A stem this routing does not serve is
`no_model_configured` when a public checkpoint serves it (the community routing routes
it), else `no_public_model`, with how to add one. Torch-free: only files are looked at.
"""

from __future__ import annotations

import enum
import os
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.families import CONFIGURED_FAMILIES
from models.stems.catalogue import ADDING_A_MODEL, ALL_STEMS, MIXTURE, NO_PUBLIC_MODEL, STEM_GROUPS
from models.stems.routing import FrozenMapping, ModelEntry, QualityFigure, Routing

COMMUNITY_ROUTING = "configs/routing/community.yaml"
DERIVED = "derived"
_GROUP_OF: dict[str, str] = {stem: group for group, stems in STEM_GROUPS.items() for stem in stems}


class Status(enum.StrEnum):
    """Whether a stem can be produced here, and if not, why not."""

    SERVED = "served"
    WEIGHTS_MISSING = "weights_missing"
    NO_MODEL_CONFIGURED = "no_model_configured"
    NO_PUBLIC_MODEL = "no_public_model"


@dataclass(frozen=True)
class StemStatus:
    """One catalogue stem under one routing and model folder.

    `produced_by` is the model key that outputs the stem, or DERIVED with `formula`
    (e.g. "vocals - lead_vocal"). `path` lists every step from the mixture in run order:
    "<model>: <stem>" for a model pass and "<stem> = <formula>" for a derivation.
    `licences` maps each model on the path to its licence. `missing_files` and `fetch`
    (one command per model lacking files) are set for WEIGHTS_MISSING; `note` says in a
    sentence what an operator can do for every status but SERVED.
    """

    stem: str
    group: str
    status: Status
    produced_by: str | None = None
    formula: str | None = None
    path: tuple[str, ...] = ()
    licences: Mapping[str, str] = field(default_factory=lambda: FrozenMapping({}))
    quality: QualityFigure | None = None
    missing_files: tuple[str, ...] = ()
    fetch: tuple[str, ...] = ()
    note: str | None = None

    def as_json(self) -> dict[str, Any]:
        """The status as a JSON object; every key is always present."""
        return {
            "stem": self.stem,
            "group": self.group,
            "status": self.status.value,
            "produced_by": self.produced_by,
            "formula": self.formula,
            "path": list(self.path),
            "licences": dict(self.licences),
            "quality": None
            if self.quality is None
            else {"sdr": self.quality.sdr, "measured_on": self.quality.measured_on},
            "missing_files": list(self.missing_files),
            "fetch": list(self.fetch),
            "note": self.note,
        }


def stem_statuses(
    routing: Routing,
    *,
    model_dir: str | os.PathLike[str] | None,
    routing_file: str | os.PathLike[str],
) -> list[StemStatus]:
    """One StemStatus per catalogue stem, in catalogue order. `model_dir` is where MSST
    models' files must be (None: no folder, so they are all missing); `routing_file` is
    the file `routing` was read from, for the fetch commands."""
    served = routing.served_stems()
    return [
        _served(stem, routing, model_dir, routing_file) if stem in served else _unserved(stem)
        for stem in ALL_STEMS
    ]


def _unserved(stem: str) -> StemStatus:
    """A stem this routing does not produce."""
    group = _GROUP_OF[stem]
    if stem in NO_PUBLIC_MODEL:
        return StemStatus(
            stem,
            group,
            Status.NO_PUBLIC_MODEL,
            note=f"no public checkpoint is known for {stem!r}; to add one, {ADDING_A_MODEL}",
        )
    return StemStatus(
        stem,
        group,
        Status.NO_MODEL_CONFIGURED,
        note=f"no model is configured for {stem!r} here; {COMMUNITY_ROUTING} routes it",
    )


def _served(
    stem: str,
    routing: Routing,
    model_dir: str | os.PathLike[str] | None,
    routing_file: str | os.PathLike[str],
) -> StemStatus:
    """A stem this routing produces: its path, and whether its models' files are here."""
    steps: dict[str, None] = {}  # an ordered set
    models: dict[str, ModelEntry] = {}
    _walk(stem, routing, steps, models)
    derivation = routing.derived.get(stem)
    producer = routing.model_for(stem)
    missing = {name: _missing_files(model, model_dir) for name, model in models.items()}
    missing = {name: files for name, files in missing.items() if files}
    folder = "<model_dir>" if model_dir is None else str(model_dir)
    where = "no model folder is configured" if model_dir is None else f"not in {folder}"
    return StemStatus(
        stem=stem,
        group=_GROUP_OF[stem],
        status=Status.WEIGHTS_MISSING if missing else Status.SERVED,
        produced_by=DERIVED if producer is None else producer.name,
        formula=None if derivation is None else _formula(derivation.base, derivation.minus),
        path=tuple(steps),
        licences=FrozenMapping({name: model.licence for name, model in models.items()}),
        quality=_figure(stem, [producer] if producer is not None else list(models.values())),
        missing_files=tuple(file for files in missing.values() for file in files),
        fetch=tuple(
            f"python -m models fetch --routing {shlex.quote(str(routing_file))} "
            f"--model-dir {shlex.quote(folder)} {shlex.quote(name)}"
            for name in missing
        ),
        note=f"files of {', '.join(map(repr, missing))} are missing ({where}); "
        "fetch them with the commands in 'fetch'"
        if missing
        else None,
    )


def _walk(
    stem: str, routing: Routing, steps: dict[str, None], models: dict[str, ModelEntry]
) -> None:
    """Add the steps producing `stem` to `steps` after those producing their inputs, and
    the models among them to `models`. The routing is validated, so every served stem
    has a producer and nothing is cyclic."""
    if stem == MIXTURE:
        return
    derivation = routing.derived.get(stem)
    if derivation is not None:
        for name in (derivation.base, *derivation.minus):
            _walk(name, routing, steps, models)
        steps[f"{stem} = {_formula(derivation.base, derivation.minus)}"] = None
        return
    model = routing.model_for(stem)
    if model is None:
        raise ValueError(f"stem {stem!r} has no producer in this routing")
    _walk(model.input, routing, steps, models)
    models[model.name] = model
    steps[f"{model.name}: {stem}"] = None


def _formula(base: str, minus: tuple[str, ...]) -> str:
    """A derivation written out: "mixture - vocals"."""
    return " - ".join((base, *minus))


def _missing_files(model: ModelEntry, model_dir: str | os.PathLike[str] | None) -> tuple[str, ...]:
    """The files an MSST model needs that are not in `model_dir`; none for demucs models."""
    if model.family not in CONFIGURED_FAMILIES:
        return ()
    files = tuple(name for name in (model.config, model.weights) if name is not None)
    if model_dir is None:
        return files
    return tuple(name for name in files if not (Path(model_dir) / name).is_file())


def _figure(stem: str, models: list[ModelEntry]) -> QualityFigure | None:
    """The first figure published for `stem` by one of `models`."""
    return next((fig for model in models for fig in model.quality if fig.stem == stem), None)
