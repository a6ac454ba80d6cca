"""Loading demucs bags from model folders in both of demucs's layouts, and its errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from demucs.htdemucs import HTDemucs
from demucs.pretrained import REMOTE_ROOT, get_model

from models.errors import ModelLoadError, ModelMissingError
from models.families.demucs.loading import load_model, verify_checksum
from models.families.demucs.testmodel import make_test_model, parameter_count


def test_test_model_uses_released_signatures_and_bag_file(tmp_path: Path) -> None:
    bag_file = make_test_model(tmp_path, "htdemucs_ft", small=True)
    assert bag_file.read_text() == (REMOTE_ROOT / "htdemucs_ft.yaml").read_text()
    signatures = yaml.safe_load(bag_file.read_text())["models"]
    for sig in signatures:
        (weights,) = tmp_path.glob(f"{sig}-*.th")
        verify_checksum(weights, weights.stem.split("-")[1])


def test_demucs_itself_loads_a_test_model(tmp_path: Path) -> None:
    make_test_model(tmp_path, "htdemucs_6s", small=True)
    bag = get_model("htdemucs_6s", repo=tmp_path)
    assert list(bag.sources) == ["drums", "bass", "other", "vocals", "guitar", "piano"]


def test_released_architecture_has_the_released_size(tmp_path: Path) -> None:
    make_test_model(tmp_path, "htdemucs")
    bag = load_model("htdemucs", model_dir=tmp_path, use_hub=False)
    (network,) = bag.models
    assert isinstance(network, HTDemucs)
    # The released htdemucs checkpoint holds 41,984,456 parameters (84 MB in half floats).
    assert parameter_count(bag) == 41_984_456
    assert float(network.segment) == pytest.approx(7.8)


@pytest.mark.parametrize("layout", ["th", "safetensors"])
def test_loads_both_layouts(tmp_path: Path, layout: str) -> None:
    make_test_model(tmp_path, "hdemucs_mmi", small=True, layout=layout)
    bag = load_model("hdemucs_mmi", model_dir=tmp_path, use_hub=False)
    assert bag.models[0].segment == 44  # the bag file's segment is applied
    assert not bag.training


def test_loads_from_a_snapshot_subfolder(tmp_path: Path) -> None:
    make_test_model(tmp_path / "htdemucs_6s", "htdemucs_6s", small=True, layout="safetensors")
    bag = load_model("htdemucs_6s", model_dir=tmp_path, use_hub=False)
    assert len(bag.sources) == 6


def test_loads_a_single_weights_file_with_checksum(tmp_path: Path) -> None:
    make_test_model(tmp_path, "htdemucs", small=True)
    (weights,) = tmp_path.glob("*.th")
    single = tmp_path / "mine.th"
    shutil.copy(weights, single)
    checksum = weights.stem.split("-")[1]
    bag = load_model("mine.th", model_dir=tmp_path, checksum=checksum)
    assert list(bag.sources) == ["drums", "bass", "other", "vocals"]
    with pytest.raises(ModelLoadError, match="checksum mismatch"):
        load_model("mine.th", model_dir=tmp_path, checksum="00000000")


def test_missing_model_names_every_place_looked(tmp_path: Path) -> None:
    with pytest.raises(ModelMissingError) as caught:
        load_model("htdemucs_6s", model_dir=tmp_path, use_hub=False)
    message = str(caught.value)
    assert "htdemucs_6s" in message
    assert str(tmp_path / "htdemucs_6s.yaml") in message
    assert str(tmp_path / "htdemucs_6s" / "htdemucs_6s.yaml") in message


def test_missing_folder_is_an_error_not_an_exit(tmp_path: Path) -> None:
    absent = tmp_path / "nowhere"
    with pytest.raises(ModelMissingError, match="not a directory"):
        load_model("htdemucs", model_dir=absent, use_hub=False)


def test_nothing_to_look_at_is_still_a_clear_error() -> None:
    with pytest.raises(ModelMissingError, match="looked in: nowhere"):
        load_model("htdemucs", use_hub=False)


def test_missing_network_is_named(tmp_path: Path) -> None:
    make_test_model(tmp_path, "htdemucs_ft", small=True)
    next(tmp_path.glob("d12395a8-*.th")).unlink()
    with pytest.raises(ModelMissingError, match="network d12395a8 is missing"):
        load_model("htdemucs_ft", model_dir=tmp_path, use_hub=False)


def test_corrupt_weights_fail_their_checksum(tmp_path: Path) -> None:
    make_test_model(tmp_path, "htdemucs", small=True)
    weights = next(tmp_path.glob("*.th"))
    weights.write_bytes(weights.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(ModelLoadError, match="checksum mismatch"):
        load_model("htdemucs", model_dir=tmp_path, use_hub=False)


def test_unreadable_weights_are_a_load_error(tmp_path: Path) -> None:
    make_test_model(tmp_path, "htdemucs", small=True, layout="safetensors")
    weights = next(tmp_path.glob("*.safetensors"))
    weights.write_bytes(b"not a safetensors file")
    with pytest.raises(ModelLoadError, match="cannot load"):
        load_model("htdemucs", model_dir=tmp_path, use_hub=False)


def test_two_files_for_one_network_are_refused(tmp_path: Path) -> None:
    make_test_model(tmp_path, "htdemucs", small=True)
    weights = next(tmp_path.glob("*.th"))
    shutil.copy(weights, tmp_path / "955717e8.th")
    with pytest.raises(ModelLoadError, match="several weight files"):
        load_model("htdemucs", model_dir=tmp_path, use_hub=False)


def test_bad_bag_file_is_a_load_error(tmp_path: Path) -> None:
    (tmp_path / "htdemucs.yaml").write_text("just: text\n")
    with pytest.raises(ModelLoadError, match="not a demucs bag"):
        load_model("htdemucs", model_dir=tmp_path, use_hub=False)


def test_unknown_test_model_and_layout(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown model"):
        make_test_model(tmp_path, "nope")
    with pytest.raises(ValueError, match="unknown layout"):
        make_test_model(tmp_path, "htdemucs", layout="onnx")
