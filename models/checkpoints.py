"""Fetching a routing's checkpoints into a model folder: `python -m models fetch`.

For each chosen model, `fetch_models` reports its family, licence and published quality,
refuses it when its licence is neither permissive nor accepted by name, and otherwise makes
the model folder hold its files: an MSST model's config and weights, or a demucs weights
file that has a download address. Each file comes through `fetch_file` (resumable,
verified against the routing's sha256 or prefix when one is pinned, renamed into place
only then), so a file already there that passes its checksum is not fetched again and a
rerun is safe. Demucs models named by their hub name come from the hub on first use.
"""

from __future__ import annotations

import enum
import shlex
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from models.errors import SeparationError
from models.families import CONFIGURED_FAMILIES, family
from models.fetching import (
    DEFAULT_MAX_BYTES,
    DEFAULT_TIMEOUT_S,
    FetchError,
    FetchOutcome,
    FetchResult,
    fetch_file,
    sha256_of,
)
from models.stems.routing import ModelEntry, Routing

# The single-file weights demucs loads from a model folder (models/families/demucs/loading.py).
DEMUCS_FILE_SUFFIXES = (".th", ".safetensors")

Log = Callable[[str], object]


class UnknownModelError(SeparationError):
    """A model name the routing does not have; the message lists the known ones."""


class CheckpointError(SeparationError):
    """A model's files cannot be made ready from what the routing says: one is missing or
    fails its checksum and has no URL, or a URL has no file to fill. The message names the
    model and the routing field to change."""


class ModelState(enum.Enum):
    """Where one model stands after `fetch_models`."""

    READY = "ready"  # every file in the model folder, verified where a sha256 is pinned
    ON_HUB = "on the hub"  # a demucs hub name: demucs downloads it on first use
    REFUSED = "refused"  # its licence was not accepted; nothing was fetched
    FAILED = "failed"  # a file could not be fetched or did not verify


@dataclass(frozen=True)
class ModelFetch:
    """What `fetch_models` did for one model: its state, its files, and why it failed."""

    name: str
    state: ModelState
    files: tuple[FetchResult, ...] = ()
    problem: str = ""

    @property
    def ok(self) -> bool:
        """Whether the model can be loaded as it stands (READY or ON_HUB)."""
        return self.state in (ModelState.READY, ModelState.ON_HUB)


class _ModelFile(NamedTuple):
    """One file of a model as the routing describes it."""

    role: str  # "config" or "weights": also the key under `source:`
    name: str  # the file name in the model folder
    url: str | None
    sha256: str | None
    sha256_field: str  # the routing field that pins it


def fetch_models(
    routing: Routing,
    names: Sequence[str],
    model_dir: Path,
    *,
    accept: Collection[str] = (),
    hub: bool = False,
    progress: bool = True,
    log: Log = print,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> list[ModelFetch]:
    """Fetch the files of the models `names` (keys of `routing.all_models()`) into
    `model_dir`, accepting the non-permissive licences in `accept`, and say what happens
    through `log`. One model's refusal or failure does not stop the others; every name is
    checked before anything is fetched. `hub` loads demucs hub models once, so that
    demucs caches them now rather than on first use."""
    known = routing.all_models()
    unknown = [name for name in names if name not in known]
    if unknown:
        raise UnknownModelError(
            f"unknown model(s) {', '.join(map(repr, unknown))}; the routing has: {', '.join(known)}"
        )
    fetcher = _Fetcher(
        model_dir, progress=progress, log=log, timeout_s=timeout_s, max_bytes=max_bytes
    )
    return [fetcher.fetch(known[name], accept=accept, hub=hub) for name in dict.fromkeys(names)]


@dataclass(frozen=True)
class _Fetcher:
    """Fetches one model at a time into `model_dir` with the same limits and log."""

    model_dir: Path
    progress: bool
    log: Log
    timeout_s: float
    max_bytes: int

    def fetch(self, entry: ModelEntry, *, accept: Collection[str], hub: bool) -> ModelFetch:
        """Report `entry`, then fetch its files unless its licence is neither permissive
        nor in `accept`."""
        self.log(f"{entry.name}: {entry.family} model, licence {entry.licence}")
        for figure in entry.quality:
            self.log(f"  quality: {figure.stem} {figure.sdr:g} dB SDR on {figure.measured_on}")
        if not entry.quality:
            self.log("  quality: none published")
        if not (entry.permissive or entry.licence in accept):
            problem = (
                f"licence {entry.licence!r} is not permissive, so nothing was fetched; "
                f"accept it with --accept-licence {shlex.quote(entry.licence)}"
            )
            self.log(f"  refused: {problem}")
            return ModelFetch(entry.name, ModelState.REFUSED, problem=problem)
        if _hub_name(entry):
            return self._hub_model(entry, hub=hub)
        fetched: list[FetchResult] = []
        try:
            for model_file in _files_of(entry):
                fetched.append(self._ensure(entry, model_file))
        except (FetchError, CheckpointError) as exc:
            self.log(f"  error: {exc}")
            return ModelFetch(entry.name, ModelState.FAILED, tuple(fetched), str(exc))
        return ModelFetch(entry.name, ModelState.READY, tuple(fetched))

    def _hub_model(self, entry: ModelEntry, *, hub: bool) -> ModelFetch:
        """A demucs model named by its hub name: demucs downloads and caches it."""
        if entry.weights_url is not None:
            problem = (
                f"model {entry.name!r}: weights {entry.weights!r} is a hub name, so its "
                "source weights URL has no file to fill; name the file in 'weights' "
                f"(ending in {' or '.join(DEMUCS_FILE_SUFFIXES)})"
            )
            self.log(f"  error: {problem}")
            return ModelFetch(entry.name, ModelState.FAILED, problem=problem)
        if not hub:
            self.log(
                f"  on the hub: demucs fetches {entry.weights} on first use (--hub fetches it now)"
            )
            return ModelFetch(entry.name, ModelState.ON_HUB)
        try:
            family(entry.family).load(entry, model_dir=None, use_hub=True)
        except SeparationError as exc:
            self.log(f"  error: {exc}")
            return ModelFetch(entry.name, ModelState.FAILED, problem=str(exc))
        self.log(f"  on the hub: {entry.weights} is in demucs's hub cache")
        return ModelFetch(entry.name, ModelState.ON_HUB)

    def _ensure(self, entry: ModelEntry, model_file: _ModelFile) -> FetchResult:
        """Make the model folder hold `model_file`, verified where it is pinned."""
        dest = self.model_dir / model_file.name
        if model_file.url is None:
            result = _present_without_source(entry, model_file, dest)
        else:
            result = fetch_file(
                model_file.url,
                dest,
                sha256=model_file.sha256,
                progress=self.progress,
                timeout_s=self.timeout_s,
                max_bytes=self.max_bytes,
            )
        self.log(f"  {model_file.role} {model_file.name}: {_describe(model_file, result)}")
        return result


def _hub_name(entry: ModelEntry) -> bool:
    """Whether `entry` names a demucs model on the hub rather than a file in the folder."""
    return entry.family not in CONFIGURED_FAMILIES and not entry.weights.endswith(
        DEMUCS_FILE_SUFFIXES
    )


def _files_of(entry: ModelEntry) -> list[_ModelFile]:
    """The files `entry` needs in the model folder: config first for MSST, then weights."""
    files = []
    if entry.config is not None:
        config_pin = (entry.config_sha256, "config_sha256")
        files.append(_ModelFile("config", entry.config, entry.config_url, *config_pin))
    files.append(_ModelFile("weights", entry.weights, entry.weights_url, entry.sha256, "sha256"))
    return files


def _present_without_source(entry: ModelEntry, model_file: _ModelFile, dest: Path) -> FetchResult:
    """The file already in the folder, for a model with no URL to fetch it from."""
    add = f"add 'source: {{{model_file.role}: <url>}}' to model {entry.name!r} in the routing"
    if not dest.is_file():
        raise CheckpointError(
            f"model {entry.name!r}: {model_file.role} file {dest} is missing and the routing "
            f"has no URL for it; {add}"
        )
    actual = sha256_of(dest)
    if model_file.sha256 is not None and not actual.startswith(model_file.sha256):
        raise CheckpointError(
            f"model {entry.name!r}: {dest} has sha256 {actual}, not the pinned "
            f"{model_file.sha256}, and the routing has no URL to fetch it again; {add}"
        )
    return FetchResult(dest, actual, dest.stat().st_size, FetchOutcome.PRESENT, 0)


def _describe(model_file: _ModelFile, result: FetchResult) -> str:
    """One line on what happened to a file and whether its checksum was verified."""
    if result.outcome is FetchOutcome.PRESENT:
        done = "already there"
    elif result.outcome is FetchOutcome.RESUMED:
        done = f"resumed, {result.received} more bytes ({result.size} in all)"
    else:
        done = f"downloaded, {result.size} bytes"
    if model_file.sha256 is not None:
        return f"{done}, sha256 verified ({model_file.sha256})"
    return (
        f"{done}, not verified: no sha256 pinned; its sha256 is {result.sha256} "
        f"(pin it with {model_file.sha256_field}: '{result.sha256}')"
    )
