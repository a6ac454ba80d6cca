"""Model routing: which configured model serves which stem, loaded from YAML and validated.

The routing is data, not code (`models.yaml` beside this module by default, shipped in
the package). Its schema::

    models:                      # required, at least one entry
      <key>:                     # model key: the pass name and the Separator name
        family: demucs           # required; a family of models.families.FAMILIES
        weights: <name>          # required; what the family loads: a demucs hub name, or
                                 # a file in the model folder (MSST: <name>.ckpt)
        config: <file>           # MSST families only, required there: the YAML config
        sha256: <hex>            # optional; sha256 of the weights file (8-64 hex digits:
                                 # a prefix is enough), quoted
        config_sha256: <hex>     # optional; the same for the config file
        source:                  # optional; where `python -m models fetch` downloads
          weights: <url>         #   the weights file (http or https)
          config: <url>          #   the config file (MSST)
        licence: <text>          # optional, default "unstated": the licence as published
        quality:                 # optional: published figures, as published
          - {stem: <stem>, sdr: <dB>, measured_on: <dataset>}
        inference:               # optional, MSST families: override the config's
          batch_size: <n>        #   inference.batch_size and inference.num_overlap
          num_overlap: <n>
        input: mixture           # optional, default mixture; or a stem another model outputs
        outputs:                 # required, at least one: catalogue stem -> model source name
          <stem>: <source>
    derived:                     # optional
      <stem>:                    # a catalogue stem computed from others, not by a model
        from: <base>             # required; mixture, a model output or another derived stem
        minus: [<stem>, ...]     # required, at least one; subtracted from the base
    preprocessing:               # optional: a trained model for a preprocessing step
      <step>:                    # Denoise, Deecho or Dereverb
        <model fields>           # family, weights, config, sha256, source, licence, ...
        output: <source>         # required: the model output that is the cleaned track

Every stem is produced once: by one model or by one derivation. A model's input must
be the mixture or another model's output, never a derived stem, because derivations
run after all model passes. Cascades and derivations must not depend on themselves.
A preprocessing model serves its step instead of DSP; its key is the step name.
Anything else is refused with a RoutingError that names the model key, field and value.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from models.errors import RoutingError
from models.families import CONFIGURED_FAMILIES, FAMILIES
from models.fetching import SHA256_PIN
from models.preprocess.catalogue import STEPS
from models.stems.catalogue import ALL_STEMS, MIXTURE

# Package data, so an installed wheel finds it as a source checkout does.
DEFAULT_ROUTING_PATH: Path = Path(__file__).resolve().with_name("models.yaml")

_TOP_KEYS = frozenset({"models", "derived", "preprocessing"})
_COMMON_KEYS = frozenset(
    {"family", "weights", "config", "sha256", "config_sha256", "source", "licence"}
    | {"quality", "inference"}
)
_MODEL_KEYS = _COMMON_KEYS | {"input", "outputs"}
_STEP_KEYS = _COMMON_KEYS | {"output"}
_SOURCE_KEYS = frozenset({"weights", "config"})
_QUALITY_KEYS = frozenset({"stem", "sdr", "measured_on"})
_INFERENCE_KEYS = frozenset({"batch_size", "num_overlap"})
_DERIVED_KEYS = frozenset({"from", "minus"})
_URL = re.compile(r"https?://[^\s]+")
UNSTATED = "unstated"
# Licences that allow any use with attribution at most: `python -m models fetch` asks
# for an explicit --accept-licence for every other licence, `unstated` included.
PERMISSIVE_LICENCES = frozenset(
    {"MIT", "Apache-2.0", "BSD-2-Clause", "BSD-3-Clause", "ISC", "CC0-1.0", "CC-BY-4.0"}
    | {"Unlicense"}
)

K = TypeVar("K")
V = TypeVar("V")


class FrozenMapping(Mapping[K, V]):
    """A read-only, hashable mapping that keeps insertion order.

    Routing objects are frozen dataclasses; a plain dict field would make them
    mutable through the back door and unhashable, so they hold these instead.
    """

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[K, V]) -> None:
        self._items = dict(items)

    def __getitem__(self, key: K) -> V:
        return self._items[key]

    def __iter__(self) -> Iterator[K]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(frozenset(self._items.items()))

    def __repr__(self) -> str:
        return f"FrozenMapping({self._items!r})"


@dataclass(frozen=True)
class QualityFigure:
    """A published quality figure: SDR of one stem in dB, and what it was measured on."""

    stem: str
    sdr: float
    measured_on: str


@dataclass(frozen=True)
class ModelEntry:
    """One configured model: its weights, what it reads and which stems it writes, and
    where it comes from (download addresses, licence, published quality)."""

    name: str
    family: str
    weights: str
    sha256: str | None
    input: str
    outputs: Mapping[str, str]
    config: str | None = None
    config_sha256: str | None = None
    weights_url: str | None = None
    config_url: str | None = None
    licence: str = UNSTATED
    quality: tuple[QualityFigure, ...] = ()
    inference: Mapping[str, int] = FrozenMapping({})

    @property
    def permissive(self) -> bool:
        """Whether the weights' licence allows any use (see PERMISSIVE_LICENCES)."""
        return self.licence in PERMISSIVE_LICENCES


@dataclass(frozen=True)
class StepModel:
    """A trained model serving a preprocessing step: its `output` is the cleaned track."""

    step: str
    model: ModelEntry
    output: str


@dataclass(frozen=True)
class DerivedStem:
    """A stem computed as `base` minus the `minus` stems, sample by sample."""

    name: str
    base: str
    minus: tuple[str, ...]


@dataclass(frozen=True)
class Routing:
    """The validated routing: models by key and derived stems by name."""

    models: Mapping[str, ModelEntry]
    derived: Mapping[str, DerivedStem]
    preprocessing: Mapping[str, StepModel] = FrozenMapping({})

    def all_models(self) -> dict[str, ModelEntry]:
        """Every model by key: the stem models, then the preprocessing models."""
        found = dict(self.models)
        found.update({name: step.model for name, step in self.preprocessing.items()})
        return found

    def model_for(self, stem: str) -> ModelEntry | None:
        """Return the model that outputs `stem`, or None if no model does."""
        for model in self.models.values():
            if stem in model.outputs:
                return model
        return None

    def served_stems(self) -> tuple[str, ...]:
        """Return, in catalogue order, every stem a model outputs or a derivation can make."""
        served = {stem for model in self.models.values() for stem in model.outputs}
        # Derivations may build on one another, so grow the set until nothing new appears.
        grew = True
        while grew:
            grew = False
            for derived in self.derived.values():
                inputs = (derived.base, *derived.minus)
                if derived.name not in served and all(
                    name == MIXTURE or name in served for name in inputs
                ):
                    served.add(derived.name)
                    grew = True
        return tuple(stem for stem in ALL_STEMS if stem in served)


def load_routing(path: str | os.PathLike[str] | None = None) -> Routing:
    """Read and validate a routing YAML file; None means DEFAULT_ROUTING_PATH."""
    source = Path(path) if path is not None else DEFAULT_ROUTING_PATH
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as exc:
        raise RoutingError(f"cannot read routing config {str(source)!r}: {exc}") from exc
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RoutingError(f"routing config {str(source)!r} is not valid YAML: {exc}") from exc
    if not isinstance(document, Mapping):
        raise RoutingError(f"routing config {str(source)!r} must be a mapping at the top level")
    try:
        return parse_routing(document)
    except RoutingError as exc:
        raise RoutingError(f"routing config {str(source)!r}: {exc}") from exc


def parse_routing(document: Mapping[str, Any]) -> Routing:
    """Validate a routing document (as loaded from YAML) and build the Routing."""
    unknown = sorted(str(key) for key in document if key not in _TOP_KEYS)
    if unknown:
        raise RoutingError(
            f"unknown top-level key(s) {', '.join(map(repr, unknown))}; "
            f"expected: {', '.join(sorted(_TOP_KEYS))}"
        )
    models_doc = document.get("models")
    if not isinstance(models_doc, Mapping) or not models_doc:
        raise RoutingError("'models' must be a non-empty mapping of model key -> model entry")
    derived_doc = document.get("derived") or {}
    if not isinstance(derived_doc, Mapping):
        raise RoutingError("'derived' must be a mapping of stem -> derivation")
    steps_doc = document.get("preprocessing") or {}
    if not isinstance(steps_doc, Mapping):
        raise RoutingError("'preprocessing' must be a mapping of step -> model entry")

    models = {key: _parse_model(key, entry) for key, entry in models_doc.items()}
    derived = {name: _parse_derived(name, entry) for name, entry in derived_doc.items()}
    steps = {name: _parse_step(name, entry) for name, entry in steps_doc.items()}
    clash = sorted(set(steps) & set(models))
    if clash:
        raise RoutingError(f"model key(s) {', '.join(map(repr, clash))} name a preprocessing step")
    producers = _check_single_producer(models, derived)
    _check_model_inputs(models, producers)
    _check_derived_inputs(derived, producers)
    return Routing(
        models=FrozenMapping(models),
        derived=FrozenMapping(derived),
        preprocessing=FrozenMapping(steps),
    )


def _check_stem(where: str, value: object) -> str:
    """Return `value` if it is a catalogue stem, else raise naming where it appeared."""
    if not isinstance(value, str) or value not in ALL_STEMS:
        raise RoutingError(f"{where}: {value!r} is not a catalogue stem")
    return value


def _text(where: str, value: object) -> str:
    """Return `value` if it is a non-empty string, else raise naming where it appeared."""
    if not isinstance(value, str) or not value:
        raise RoutingError(f"{where}: expected a non-empty string, got {value!r}")
    return value


def _parse_model(key: object, entry: object) -> ModelEntry:
    """Check one `models` entry's fields on their own and build its ModelEntry."""
    name = _text("model key", key)
    where = f"model {name!r}"
    fields = _fields(where, entry, _MODEL_KEYS, ("family", "weights", "outputs"))
    source = fields.get("input", MIXTURE)
    model_input = MIXTURE if source == MIXTURE else _check_stem(f"{where} field 'input'", source)
    return _entry(name, where, fields, model_input, _parse_outputs(where, fields["outputs"]))


def _parse_step(key: object, entry: object) -> StepModel:
    """Check one `preprocessing` entry and build its StepModel (model key = step name)."""
    if key not in STEPS:
        raise RoutingError(
            f"preprocessing: {key!r} is not a preprocessing step; steps: {', '.join(STEPS)}"
        )
    name = str(key)
    where = f"preprocessing step {name!r}"
    fields = _fields(where, entry, _STEP_KEYS, ("family", "weights", "output"))
    output = _text(f"{where} field 'output'", fields["output"])
    return StepModel(step=name, model=_entry(name, where, fields, MIXTURE, {}), output=output)


def _fields(
    where: str, entry: object, allowed: frozenset[str], required: tuple[str, ...]
) -> Mapping[str, Any]:
    """`entry` as a mapping, refusing unknown and missing fields."""
    if not isinstance(entry, Mapping):
        raise RoutingError(f"{where}: expected a mapping of fields, got {entry!r}")
    unknown = sorted(str(field) for field in entry if field not in allowed)
    if unknown:
        raise RoutingError(f"{where}: unknown field(s) {', '.join(map(repr, unknown))}")
    missing = [field for field in required if entry.get(field) is None]
    if missing:
        raise RoutingError(f"{where}: missing field(s) {', '.join(map(repr, missing))}")
    return entry


def _entry(
    name: str,
    where: str,
    fields: Mapping[str, Any],
    model_input: str,
    outputs: Mapping[str, str],
) -> ModelEntry:
    """The fields a stem model and a preprocessing model share, checked."""
    family = _text(f"{where} field 'family'", fields["family"])
    if family not in FAMILIES:
        raise RoutingError(
            f"{where} field 'family': unknown family {family!r}; "
            f"known: {', '.join(sorted(FAMILIES))}"
        )
    configured = family in CONFIGURED_FAMILIES
    config = fields.get("config")
    if configured and config is None:
        raise RoutingError(f"{where}: a {family} model needs field 'config' (its YAML file)")
    if not configured and (config is not None or fields.get("inference") is not None):
        field = "config" if config is not None else "inference"
        raise RoutingError(f"{where} field {field!r}: a {family} model takes none")
    urls = _parse_source(where, fields.get("source"))
    licence = fields.get("licence", UNSTATED)
    return ModelEntry(
        name=name,
        family=family,
        weights=_file_or_name(f"{where} field 'weights'", fields["weights"], configured),
        sha256=_parse_sha256(f"{where} field 'sha256'", fields.get("sha256")),
        input=model_input,
        outputs=FrozenMapping(outputs),
        config=None if config is None else _file_or_name(f"{where} field 'config'", config, True),
        config_sha256=_parse_sha256(f"{where} field 'config_sha256'", fields.get("config_sha256")),
        weights_url=urls.get("weights"),
        config_url=urls.get("config"),
        licence=_text(f"{where} field 'licence'", licence),
        quality=_parse_quality(where, fields.get("quality")),
        inference=FrozenMapping(_parse_inference(where, fields.get("inference"))),
    )


def _file_or_name(where: str, value: object, plain_file: bool) -> str:
    """A weights or config name; a plain file name (no folders) for files in model_dir."""
    text = _text(where, value)
    if plain_file and (text in (".", "..") or Path(text).name != text):
        raise RoutingError(f"{where}: {text!r} must be a plain file name in the model folder")
    return text


def _parse_sha256(where: str, value: object) -> str | None:
    """Return the checksum as lowercase hex, or None when it is absent."""
    if value is None:
        return None
    # YAML reads an all-digit checksum as a number, so insist on a quoted string.
    if not isinstance(value, str) or not SHA256_PIN.fullmatch(value):
        raise RoutingError(f"{where}: {value!r} is not a quoted hex string of 8-64 digits")
    return value.lower()


def _parse_source(where: str, value: object) -> dict[str, str]:
    """The download addresses of a model's files."""
    if value is None:
        return {}
    fields = _fields(f"{where} field 'source'", value, _SOURCE_KEYS, ())
    urls = {}
    for name, url in fields.items():
        if not isinstance(url, str) or not _URL.fullmatch(url):
            raise RoutingError(f"{where} field 'source' {name!r}: {url!r} is not an http(s) URL")
        urls[str(name)] = url
    return urls


def _parse_quality(where: str, value: object) -> tuple[QualityFigure, ...]:
    """Published figures: a list of {stem, sdr, measured_on}."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise RoutingError(f"{where} field 'quality': expected a list, got {value!r}")
    figures = []
    for item in value:
        fields = _fields(f"{where} field 'quality'", item, _QUALITY_KEYS, tuple(_QUALITY_KEYS))
        sdr = fields["sdr"]
        if isinstance(sdr, bool) or not isinstance(sdr, int | float):
            raise RoutingError(f"{where} field 'quality': sdr {sdr!r} is not a number")
        figures.append(
            QualityFigure(
                stem=_text(f"{where} field 'quality' stem", fields["stem"]),
                sdr=float(sdr),
                measured_on=_text(f"{where} field 'quality' measured_on", fields["measured_on"]),
            )
        )
    return tuple(figures)


def _parse_inference(where: str, value: object) -> dict[str, int]:
    """Overrides of an MSST config's inference section: positive integers."""
    if value is None:
        return {}
    fields = _fields(f"{where} field 'inference'", value, _INFERENCE_KEYS, ())
    for name, number in fields.items():
        if isinstance(number, bool) or not isinstance(number, int) or number < 1:
            raise RoutingError(
                f"{where} field 'inference' {name!r}: {number!r} is not a positive integer"
            )
    return {str(name): int(number) for name, number in fields.items()}


def _parse_outputs(where: str, value: object) -> dict[str, str]:
    """Check a model's `outputs` mapping: catalogue stems to model source names."""
    field = f"{where} field 'outputs'"
    if not isinstance(value, Mapping) or not value:
        raise RoutingError(f"{field}: expected a non-empty mapping of stem -> source")
    return {
        _check_stem(field, stem): _text(f"{field} stem {stem!r}", source)
        for stem, source in value.items()
    }


def _parse_derived(name: object, entry: object) -> DerivedStem:
    """Check one `derived` entry's fields on their own and build its DerivedStem."""
    stem = _check_stem("derived", name)
    where = f"derived stem {stem!r}"
    if not isinstance(entry, Mapping):
        raise RoutingError(f"{where}: expected a mapping with 'from' and 'minus', got {entry!r}")
    unknown = sorted(str(field) for field in entry if field not in _DERIVED_KEYS)
    if unknown:
        raise RoutingError(f"{where}: unknown field(s) {', '.join(map(repr, unknown))}")
    base = entry.get("from")
    if base != MIXTURE:
        base = _check_stem(f"{where} field 'from'", base)
    minus = entry.get("minus")
    if not isinstance(minus, list) or not minus:
        raise RoutingError(f"{where} field 'minus': expected a non-empty list, got {minus!r}")
    for part in minus:
        if part != MIXTURE:
            _check_stem(f"{where} field 'minus'", part)
    if base in minus or len(set(minus)) != len(minus):
        raise RoutingError(f"{where} field 'minus': {minus!r} repeats a stem or the base {base!r}")
    return DerivedStem(name=stem, base=base, minus=tuple(minus))


def _check_single_producer(
    models: Mapping[str, ModelEntry], derived: Mapping[str, DerivedStem]
) -> dict[str, str]:
    """Map each produced stem to the model key or derivation producing it; refuse repeats."""
    producers: dict[str, str] = {}
    for model in models.values():
        for stem in model.outputs:
            if stem in producers:
                raise RoutingError(
                    f"stem {stem!r} is output by both {producers[stem]} and model {model.name!r}"
                )
            producers[stem] = f"model {model.name!r}"
    for stem in derived:
        if stem in producers:
            raise RoutingError(f"derived stem {stem!r} is already output by {producers[stem]}")
        producers[stem] = "a derivation"
    return producers


def _check_model_inputs(models: Mapping[str, ModelEntry], producers: Mapping[str, str]) -> None:
    """Require every model input to be the mixture or a model output, without cycles."""
    producer_of = {stem: model for model in models.values() for stem in model.outputs}
    for model in models.values():
        if model.input != MIXTURE and model.input not in producer_of:
            why = "a derived stem" if model.input in producers else "output by no model"
            raise RoutingError(
                f"model {model.name!r} field 'input': {model.input!r} is {why}; "
                f"use {MIXTURE!r} or a stem another model outputs"
            )
    for model in models.values():
        # Each stem has one producer, so following inputs upstream is a single chain.
        chain = [model.name]
        current = model
        while current.input != MIXTURE:
            current = producer_of[current.input]
            if current.name in chain:
                cycle = " -> ".join(repr(name) for name in [*chain, current.name])
                raise RoutingError(f"model {model.name!r}: cascade cycle {cycle}")
            chain.append(current.name)


def _check_derived_inputs(derived: Mapping[str, DerivedStem], producers: Mapping[str, str]) -> None:
    """Require every derivation input to be produced somewhere, without cycles."""
    for stem in derived.values():
        for field, name in (("from", stem.base), *(("minus", part) for part in stem.minus)):
            if name != MIXTURE and name not in producers:
                raise RoutingError(
                    f"derived stem {stem.name!r} field {field!r}: {name!r} is produced by "
                    "no model or derivation"
                )

    def visit(name: str, path: tuple[str, ...]) -> None:
        """Walk the derivations `name` depends on, refusing any that come back to `path`."""
        if name in path:
            cycle = " -> ".join(repr(step) for step in [*path, name])
            raise RoutingError(f"derived stem {path[0]!r}: derivation cycle {cycle}")
        entry = derived.get(name)
        if entry is not None:
            for dependency in (entry.base, *entry.minus):
                visit(dependency, (*path, name))

    for name in derived:
        visit(name, ())
