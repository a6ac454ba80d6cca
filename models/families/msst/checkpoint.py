"""Loading MSST checkpoints: verified, unwrapped, fp32 state dicts and a strict load.

MSST checkpoints are torch state dicts, published as `.ckpt` or `.pth` (torch.save) and
sometimes converted to `.safetensors`. Training saves either the bare state dict or a
full checkpoint with the weights under `model_state_dict` (always the unwrapped
network's, `model.module.state_dict()` under DataParallel, so keys never carry a
`module.` prefix); MSST's own loader also unwraps `state` and `state_dict`, and so do
we, in its order. Pickles are read with `weights_only=True`, so a checkpoint can hold
tensors and plain containers but never code. Half-precision files are cast to fp32.

`load_into` is a strict load whose error names the model, the file (never its folder)
and what did not match. RoFormers register one rotary `freqs` tensor under every
attention layer; a checkpoint holds all those keys (torch.save) or, when written by
`safetensors.torch.save_model`, only one of each group: the missing aliases are filled
from the present one, since they are the same tensor.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file as load_safetensors
from torch import Tensor, nn

from models.errors import ModelLoadError, ModelMissingError
from models.fetching import SHA256_PIN, sha256_of

WEIGHT_SUFFIXES = (".ckpt", ".pth", ".safetensors")
WRAPPER_KEYS = ("state", "state_dict", "model_state_dict")  # unwrapped in this order, as MSST
HALF_DTYPES = (torch.float16, torch.bfloat16)
SHOWN_KEYS = 5  # how many keys of each kind an error lists


class ChecksumMismatchError(ModelLoadError):
    """A weights file whose sha256 is not the configured one."""

    def __init__(self, model: str, file: str, expected: str, actual: str) -> None:
        self.model = model
        self.file = file
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"model {model!r}: checksum mismatch for {file}: expected sha256 {expected}, "
            f"got {actual}"
        )


class CheckpointFormatError(ModelLoadError):
    """A weights file that is not a readable checkpoint holding a state dict."""


class StateDictMismatchError(ModelLoadError):
    """A state dict whose keys or shapes do not fit the network built from the config."""

    def __init__(
        self,
        model: str,
        file: str,
        *,
        missing: list[str],
        unexpected: list[str],
        mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]],
    ) -> None:
        self.model = model
        self.file = file
        self.missing = missing
        self.unexpected = unexpected
        self.mismatched = mismatched  # (key, shape in the file, shape the network expects)
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys ({_first(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys ({_first(unexpected)})")
        if mismatched:
            shapes = [
                f"{key}: {list(got)} in the file, {list(want)} expected"
                for key, got, want in mismatched
            ]
            parts.append(f"{len(mismatched)} shape mismatches ({_first(shapes)})")
        super().__init__(
            f"model {model!r}: {file} does not fit the network built from its config: "
            + "; ".join(parts)
        )


def _first(items: list[str]) -> str:
    shown = ", ".join(items[:SHOWN_KEYS])
    rest = len(items) - SHOWN_KEYS
    return f"{shown}, and {rest} more" if rest > 0 else shown


def load_weights(
    path: str | Path, *, model_name: str, expected_sha256: str | None = None
) -> dict[str, Tensor]:
    """The state dict in checkpoint `path`, on the CPU, half-precision tensors cast to fp32.

    When `expected_sha256` is given the file is verified before anything parses it.
    """
    path = Path(path)
    if path.suffix not in WEIGHT_SUFFIXES:
        raise CheckpointFormatError(
            f"model {model_name!r}: {path.name} is not a checkpoint "
            f"(expected one of {', '.join(WEIGHT_SUFFIXES)})"
        )
    if not path.is_file():
        raise ModelMissingError(model_name, [str(path)])
    if expected_sha256 is not None:
        verify_sha256(path, expected_sha256, model_name)
    try:
        if path.suffix == ".safetensors":
            content: Any = load_safetensors(path, device="cpu")
        else:
            content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        # torch.load, pickle and safetensors each raise their own types for a bad file.
        raise CheckpointFormatError(
            f"model {model_name!r}: cannot read {path.name}: {type(exc).__name__}: {exc}"
        ) from exc
    state = _unwrap(content, model_name, path.name)
    return {
        key: value.float() if value.dtype in HALF_DTYPES else value for key, value in state.items()
    }


def verify_sha256(path: Path, expected: str, model_name: str) -> None:
    """Raise ChecksumMismatchError unless `path` has the pinned sha256 (see SHA256_PIN)."""
    if not SHA256_PIN.fullmatch(expected):
        raise ModelLoadError(
            f"model {model_name!r}: the configured sha256 of {path.name} is not 8-64 hex digits"
        )
    actual = sha256_of(path)
    if not actual.startswith(expected.lower()):
        raise ChecksumMismatchError(model_name, path.name, expected.lower(), actual)


def _unwrap(content: Any, model_name: str, file: str) -> dict[str, Tensor]:
    """The state dict inside `content`: itself, or under MSST's wrapper keys."""
    for key in (None, *WRAPPER_KEYS):
        if key is not None and isinstance(content, dict) and isinstance(content.get(key), dict):
            content = content[key]
        if _is_state_dict(content):
            return dict(content)
    found = (
        f"top-level keys: {', '.join(map(str, list(content)[:SHOWN_KEYS]))}"
        if isinstance(content, dict)
        else f"a {type(content).__name__}"
    )
    wrappers = ", ".join(WRAPPER_KEYS)
    raise CheckpointFormatError(
        f"model {model_name!r}: {file} holds no state dict, bare or under {wrappers} ({found})"
    )


def _is_state_dict(content: Any) -> bool:
    return (
        isinstance(content, dict)
        and bool(content)
        and all(
            isinstance(key, str) and isinstance(value, Tensor) for key, value in content.items()
        )
    )


def load_into(
    network: nn.Module, state: Mapping[str, Tensor], *, model_name: str, path: str | Path
) -> None:
    """Load `state` into `network` strictly; StateDictMismatchError names what did not fit."""
    file = Path(path).name
    expected = network.state_dict(keep_vars=True)
    state = _with_aliases(expected, state)
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    mismatched = [
        (key, tuple(state[key].shape), tuple(want.shape))
        for key, want in expected.items()
        if key in state and state[key].shape != want.shape
    ]
    if missing or unexpected or mismatched:
        raise StateDictMismatchError(
            model_name, file, missing=missing, unexpected=unexpected, mismatched=mismatched
        )
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelLoadError(f"model {model_name!r}: cannot load {file}: {exc}") from exc


def _with_aliases(expected: Mapping[str, Tensor], state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """`state` plus every key the network holds as an alias of a tensor `state` has."""
    groups: dict[int, list[str]] = {}
    for key, tensor in expected.items():
        groups.setdefault(id(tensor), []).append(key)
    filled = dict(state)
    for keys in groups.values():
        present = [key for key in keys if key in state]
        if present:
            for key in keys:
                filled.setdefault(key, state[present[0]])
    return filled
