"""Model routing: which configured model serves which stem, loaded from YAML and validated.

The routing is data, not code (`models.yaml` beside this module by default, shipped in
the package). Its schema::

    models:                      # required, at least one entry
      <key>:                     # model key: the pass name and, later, the Separator name
        family: demucs           # required; a family of models.families.FAMILIES
        weights: <name>          # required; what the family loads, e.g. a demucs hub name
        checksum: <hex>          # optional; sha256 (or a prefix of it) of the weights file
        input: mixture           # optional, default mixture; or a stem another model outputs
        outputs:                 # required, at least one: catalogue stem -> model source name
          <stem>: <source>
    derived:                     # optional
      <stem>:                    # a catalogue stem computed from others, not by a model
        from: <base>             # required; mixture, a model output or another derived stem
        minus: [<stem>, ...]     # required, at least one; subtracted from the base

Every stem is produced once: by one model or by one derivation. A model's input must
be the mixture or another model's output, never a derived stem, because derivations
run after all model passes. Cascades and derivations must not depend on themselves.
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
from models.families import FAMILIES
from models.stems.catalogue import ALL_STEMS, MIXTURE

# Package data, so an installed wheel finds it as a source checkout does.
DEFAULT_ROUTING_PATH: Path = Path(__file__).resolve().with_name("models.yaml")

_TOP_KEYS = frozenset({"models", "derived"})
_MODEL_KEYS = frozenset({"family", "weights", "checksum", "input", "outputs"})
_REQUIRED_MODEL_KEYS = ("family", "weights", "outputs")
_DERIVED_KEYS = frozenset({"from", "minus"})
_HEX = re.compile(r"[0-9a-fA-F]{1,64}")

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
class ModelEntry:
    """One configured model: its weights, what it reads and which stems it writes."""

    name: str
    family: str
    weights: str
    checksum: str | None
    input: str
    outputs: Mapping[str, str]


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

    models = {key: _parse_model(key, entry) for key, entry in models_doc.items()}
    derived = {name: _parse_derived(name, entry) for name, entry in derived_doc.items()}
    producers = _check_single_producer(models, derived)
    _check_model_inputs(models, producers)
    _check_derived_inputs(derived, producers)
    return Routing(models=FrozenMapping(models), derived=FrozenMapping(derived))


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
    if not isinstance(entry, Mapping):
        raise RoutingError(f"{where}: expected a mapping of fields, got {entry!r}")
    unknown = sorted(str(field) for field in entry if field not in _MODEL_KEYS)
    if unknown:
        raise RoutingError(f"{where}: unknown field(s) {', '.join(map(repr, unknown))}")
    missing = [field for field in _REQUIRED_MODEL_KEYS if entry.get(field) is None]
    if missing:
        raise RoutingError(f"{where}: missing field(s) {', '.join(map(repr, missing))}")

    family = _text(f"{where} field 'family'", entry["family"])
    if family not in FAMILIES:
        raise RoutingError(
            f"{where} field 'family': unknown family {family!r}; "
            f"known: {', '.join(sorted(FAMILIES))}"
        )
    source = entry.get("input", MIXTURE)
    model_input = MIXTURE if source == MIXTURE else _check_stem(f"{where} field 'input'", source)
    return ModelEntry(
        name=name,
        family=family,
        weights=_text(f"{where} field 'weights'", entry["weights"]),
        checksum=_parse_checksum(where, entry.get("checksum")),
        input=model_input,
        outputs=FrozenMapping(_parse_outputs(where, entry["outputs"])),
    )


def _parse_checksum(where: str, value: object) -> str | None:
    """Return the checksum as lowercase hex, or None when it is absent."""
    if value is None:
        return None
    # YAML reads an all-digit checksum as a number, so insist on a quoted string.
    if not isinstance(value, str) or not _HEX.fullmatch(value):
        raise RoutingError(
            f"{where} field 'checksum': {value!r} is not a quoted hex string of 1-64 digits"
        )
    return value.lower()


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
