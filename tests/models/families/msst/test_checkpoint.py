"""Loading MSST checkpoints: every format and wrapping, checksums, casts, and strict loads.

The tests write their own checkpoints from a small module with a rotary-style aliased
parameter, plus one real case: the MDX23C fixture's tiny weights saved as MSST saves a
checkpoint and read back.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file, save_model
from torch import Tensor, nn

from models.errors import ModelLoadError, ModelMissingError
from models.families.msst.checkpoint import (
    CheckpointFormatError,
    ChecksumMismatchError,
    StateDictMismatchError,
    load_into,
    load_weights,
    sha256_of,
)

FIXTURES = Path(__file__).parent / "fixtures"


class Attention(nn.Module):
    """Holds a shared, frozen `freqs` parameter the way a RoFormer layer does."""

    def __init__(self, freqs: nn.Parameter) -> None:
        super().__init__()
        self.to_qkv = nn.Linear(8, 24, bias=False)
        self.freqs = freqs


class Little(nn.Module):
    """A small network whose state dict has parameters, a buffer and aliased keys."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        freqs = nn.Parameter(torch.arange(4, dtype=torch.float32), requires_grad=False)
        self.conv = nn.Conv1d(2, width, 3)
        self.norm = nn.InstanceNorm1d(width, affine=True)
        self.layers = nn.ModuleList([Attention(freqs), Attention(freqs)])
        self.register_buffer("scale", torch.ones(width))


def random_state(seed: int = 0) -> dict[str, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        key: torch.randn(value.shape, generator=generator)
        for key, value in Little().state_dict().items()
    }


def save_torch(state: dict[str, Tensor], path: Path) -> None:
    torch.save(state, path)


Writer = Callable[[dict[str, Tensor], Path], None]

WRAPPINGS: dict[str, Callable[[dict[str, Tensor]], object]] = {
    "bare": lambda state: state,
    "state_dict": lambda state: {"state_dict": state, "epoch": 3},
    # what MSST's save_weights writes
    "model_state_dict": lambda state: {
        "epoch": 7,
        "optimizer_name": "Adam",
        "optimizer_state_dict": {"state": {}, "param_groups": [{"lr": 1e-5, "params": [0, 1]}]},
        "scheduler_state_dict": None,
        "best_metric": 11.5,
        "all_metrics": {"sdr": [10.0, 11.5]},
        "all_losses": [0.5, 0.25],
        "model_state_dict": state,
    },
    "state": lambda state: {"state": state},
}


@pytest.mark.parametrize("suffix", [".ckpt", ".pth"])
@pytest.mark.parametrize("wrapping", sorted(WRAPPINGS))
def test_pickled_checkpoints_load_bare_or_wrapped(
    tmp_path: Path, suffix: str, wrapping: str
) -> None:
    state = random_state()
    path = tmp_path / f"model{suffix}"
    torch.save(WRAPPINGS[wrapping](state), path)
    loaded = load_weights(path, model_name="little")
    assert list(loaded) == list(state)
    for key, value in state.items():
        assert torch.equal(loaded[key], value)


def test_safetensors_load(tmp_path: Path) -> None:
    state = {key: value.clone() for key, value in random_state().items()}
    path = tmp_path / "model.safetensors"
    save_file(state, path)
    loaded = load_weights(path, model_name="little")
    assert loaded.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(loaded[key], value)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("suffix", [".ckpt", ".safetensors"])
def test_half_precision_files_come_back_fp32(
    tmp_path: Path, dtype: torch.dtype, suffix: str
) -> None:
    half = {key: value.to(dtype).clone() for key, value in random_state().items()}
    half["step"] = torch.tensor(5, dtype=torch.int64)
    path = tmp_path / f"half{suffix}"
    if suffix == ".safetensors":
        save_file(half, path)
    else:
        torch.save(half, path)
    loaded = load_weights(path, model_name="little")
    assert loaded["step"].dtype == torch.int64
    for key, value in half.items():
        if value.is_floating_point():
            assert loaded[key].dtype == torch.float32
            assert torch.equal(loaded[key], value.float())


def test_checksum_is_verified_before_loading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "model.ckpt"
    torch.save(random_state(), path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert sha256_of(path) == digest
    assert load_weights(path, model_name="little", expected_sha256=digest.upper()).keys()

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a file that failed its checksum was parsed")

    monkeypatch.setattr(torch, "load", refuse)
    wrong = "0" * 64
    with pytest.raises(ChecksumMismatchError) as caught:
        load_weights(path, model_name="little", expected_sha256=wrong)
    error = caught.value
    assert isinstance(error, ModelLoadError)
    assert (error.model, error.file, error.expected, error.actual) == (
        "little",
        "model.ckpt",
        wrong,
        digest,
    )
    assert str(tmp_path) not in str(error)


def test_checksum_of_a_file_larger_than_a_block(tmp_path: Path) -> None:
    path = tmp_path / "big.bin"
    content = np.random.default_rng(0).bytes((1 << 20) * 2 + 123)
    path.write_bytes(content)
    assert sha256_of(path) == hashlib.sha256(content).hexdigest()


def test_malformed_configured_checksum_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.ckpt"
    torch.save(random_state(), path)
    with pytest.raises(ModelLoadError, match="not 8-64 hex digits"):
        load_weights(path, model_name="little", expected_sha256="abc123")


def test_a_checksum_prefix_is_verified(tmp_path: Path) -> None:
    path = tmp_path / "model.ckpt"
    torch.save(random_state(), path)
    digest = sha256_of(path)
    assert set(load_weights(path, model_name="little", expected_sha256=digest[:8].upper()))
    wrong = f"{(int(digest[:8], 16) ^ 1):08x}"
    with pytest.raises(ChecksumMismatchError):
        load_weights(path, model_name="little", expected_sha256=wrong)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelMissingError, match="'little'"):
        load_weights(tmp_path / "absent.ckpt", model_name="little")


def test_unknown_suffix(tmp_path: Path) -> None:
    path = tmp_path / "model.bin"
    torch.save(random_state(), path)
    with pytest.raises(CheckpointFormatError, match=r"model\.bin is not a checkpoint"):
        load_weights(path, model_name="little")


@pytest.mark.parametrize("suffix", [".ckpt", ".safetensors"])
def test_corrupt_file_names_model_and_file_only(tmp_path: Path, suffix: str) -> None:
    folder = tmp_path / "secret_folder"
    folder.mkdir()
    path = folder / f"broken{suffix}"
    path.write_bytes(b"not a checkpoint at all" * 10)
    with pytest.raises(CheckpointFormatError, match="model 'little': cannot read broken") as caught:
        load_weights(path, model_name="little")
    assert "secret_folder" not in str(caught.value)


class Payload:
    """Stands for arbitrary code in a pickle."""


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    with path.open("wb") as stream:
        pickle.dump({"weight": Payload()}, stream)
    with pytest.raises(CheckpointFormatError, match=r"cannot read evil\.pth"):
        load_weights(path, model_name="little")


def test_no_state_dict_inside(tmp_path: Path) -> None:
    path = tmp_path / "odd.ckpt"
    torch.save({"weights": random_state(), "epoch": 1}, path)
    with pytest.raises(
        CheckpointFormatError, match=r"holds no state dict.*top-level keys: weights"
    ):
        load_weights(path, model_name="little")


def test_prefixes_are_kept(tmp_path: Path) -> None:
    # MSST saves the unwrapped network's state dict; a `module.` key is a different network.
    path = tmp_path / "dp.ckpt"
    torch.save({f"module.{key}": value for key, value in random_state().items()}, path)
    state = load_weights(path, model_name="little")
    with pytest.raises(StateDictMismatchError) as caught:
        load_into(Little(), state, model_name="little", path=path)
    assert "module.conv.weight" in caught.value.unexpected
    assert "conv.weight" in caught.value.missing


def test_strict_load_accepts_every_alias_key(tmp_path: Path) -> None:
    state = random_state()
    state["layers.1.freqs"] = state["layers.0.freqs"]
    network = Little()
    load_into(network, state, model_name="little", path=tmp_path / "m.ckpt")
    freqs = network.get_parameter("layers.1.freqs")
    assert freqs is network.get_parameter("layers.0.freqs")
    assert torch.equal(freqs, state["layers.0.freqs"])
    assert torch.equal(network.conv.weight, state["conv.weight"])
    assert torch.equal(network.get_buffer("scale"), state["scale"])


def test_alias_keys_dropped_by_safetensors_are_filled(tmp_path: Path) -> None:
    source = Little()
    with torch.no_grad():
        source.get_parameter("layers.0.freqs").mul_(3)
    path = tmp_path / "model.safetensors"
    save_model(source, str(path))
    state = load_weights(path, model_name="little")
    assert len([key for key in state if key.endswith("freqs")]) == 1
    network = Little()
    load_into(network, state, model_name="little", path=path)
    assert torch.equal(
        network.get_parameter("layers.1.freqs"), source.get_parameter("layers.0.freqs")
    )


def test_mismatch_names_model_file_and_what_did_not_fit(tmp_path: Path) -> None:
    state = random_state()
    del state["conv.bias"]
    state["conv.weight"] = torch.zeros(8, 2, 5)
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(StateDictMismatchError) as caught:
        load_into(Little(), state, model_name="little", path=tmp_path / "sub" / "model.ckpt")
    error = caught.value
    assert isinstance(error, ModelLoadError)
    assert error.missing == ["conv.bias"]
    assert error.unexpected == ["extra.weight"]
    assert error.mismatched == [("conv.weight", (8, 2, 5), (8, 2, 3))]
    message = str(error)
    assert message.startswith("model 'little': model.ckpt does not fit")
    assert "1 missing keys (conv.bias)" in message
    assert "1 unexpected keys (extra.weight)" in message
    assert "conv.weight: [8, 2, 5] in the file, [8, 2, 3] expected" in message
    assert str(tmp_path) not in message


def test_long_mismatch_lists_show_the_first_few_and_a_count(tmp_path: Path) -> None:
    network = nn.Sequential(*[nn.Linear(2, 2) for _ in range(10)])
    with pytest.raises(StateDictMismatchError) as caught:
        load_into(network, {"other": torch.zeros(1)}, model_name="seq", path="seq.pth")
    message = str(caught.value)
    assert "20 missing keys (0.weight, 0.bias, 1.weight, 1.bias, 2.weight, and 15 more)" in message
    assert len(caught.value.missing) == 20


def test_mdx23c_fixture_weights_round_trip_through_a_checkpoint(tmp_path: Path) -> None:
    keys = json.loads((FIXTURES / "mdx23c" / "tiny.keys.json").read_text())["state_dict"]
    with np.load(FIXTURES / "mdx23c" / "tiny_model.npz") as weights:
        state = {key: torch.from_numpy(weights[key]) for key in weights.files}
    path = tmp_path / "tiny_mdx23c.ckpt"
    torch.save(state, path)
    loaded = load_weights(path, model_name="mdx23c_tiny", expected_sha256=sha256_of(path))
    assert list(loaded) == [key for key, *_ in keys]
    assert [list(value.shape) for value in loaded.values()] == [shape for _, shape, *_ in keys]
    assert all(value.dtype == torch.float32 for value in loaded.values())
    for key, value in state.items():
        assert torch.equal(loaded[key], value)
