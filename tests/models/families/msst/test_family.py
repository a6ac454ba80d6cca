"""The MSST family through the engine: loading from a model folder, and the engine's
tiling of MSST models equal to MSST's own `demix` on the reference fixtures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.engine.track import collect_track
from models.errors import ModelLoadError, ModelMissingError
from models.families import family
from models.families.msst.checkpoint import ChecksumMismatchError
from models.families.msst.chunking import ChunkTiling
from models.families.msst.config import read_config
from models.families.msst.family import MsstModel
from models.fetching import sha256_of
from models.stems.routing import FrozenMapping, ModelEntry
from tests.models.families.msst.reference import FIXTURES, tiny_weights

FAMILIES = ("mdx23c", "bs_roformer", "mel_band_roformer", "scnet")
ENGINE_BATCHES = (1, 2, 7)  # how many windows the engine sends at once


def write_tiny(
    folder: Path, model_type: str, *, config: str = "tiny.yaml", without: str | None = None
) -> tuple[str, str]:
    """The tiny fixture model as MSST publishes one: YAML config and .ckpt state dict."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{model_type}.yaml").write_bytes((FIXTURES / model_type / config).read_bytes())
    torch.save(tiny_weights(model_type, without=without), folder / f"{model_type}.ckpt")
    return f"{model_type}.yaml", f"{model_type}.ckpt"


def entry(model_type: str, **fields: object) -> ModelEntry:
    values: dict[str, object] = {
        "name": f"tiny_{model_type}",
        "family": model_type,
        "weights": f"{model_type}.ckpt",
        "sha256": None,
        "input": "mixture",
        "outputs": FrozenMapping({"vocals": "vocals"}),
        "config": f"{model_type}.yaml",
    }
    values.update(fields)
    return ModelEntry(**values)  # type: ignore[arg-type]


def demix_runs(model_type: str) -> list[str]:
    with np.load(FIXTURES / model_type / "tiny_demix.npz") as archive:
        return [str(name) for name in archive["run_names"]]


CASES = [(model_type, run) for model_type in FAMILIES for run in demix_runs(model_type)]


@pytest.mark.parametrize(("model_type", "run"), CASES)
def test_engine_equals_msst_demix(tmp_path: Path, model_type: str, run: str) -> None:
    write_tiny(tmp_path, model_type)
    archive = np.load(FIXTURES / model_type / "tiny_demix.npz")
    overrides = {
        "num_overlap": int(archive[f"{run}__num_overlap"]),
        "batch_size": int(archive[f"{run}__batch_size"]),
    }
    model = family(model_type).load(
        entry(model_type, inference=FrozenMapping(overrides)), model_dir=tmp_path
    )
    assert isinstance(model, MsstModel)
    assert model.geometry.segment_length == int(archive[f"{run}__chunk_size"])
    assert model.geometry.sources == tuple(str(name) for name in archive["instruments"])
    track = torch.from_numpy(archive[str(archive[f"{run}__input"])])
    expected = archive[f"{run}__output"]
    outputs = [collect_track(model, track, batch_size=batch).numpy() for batch in ENGINE_BATCHES]
    for output in outputs:
        assert output.shape == expected.shape
        np.testing.assert_allclose(output, expected, atol=1e-5, rtol=0)
    # However the engine groups windows, the result is the same.
    np.testing.assert_allclose(outputs[0], outputs[-1], atol=1e-6, rtol=0)


@pytest.mark.parametrize("model_type", ["bs_roformer", "mel_band_roformer"])
def test_single_stem_roformer_gives_the_vocals_of_the_two_stem_one(
    tmp_path: Path, model_type: str
) -> None:
    write_tiny(tmp_path, model_type, config="tiny_single_stem.yaml", without="mask_estimators.1.")
    model = family(model_type).load(
        entry(model_type, inference=FrozenMapping({"num_overlap": 2, "batch_size": 1})),
        model_dir=tmp_path,
    )
    assert model.geometry.sources == ("vocals",)
    archive = np.load(FIXTURES / model_type / "tiny_demix.npz")
    track = torch.from_numpy(archive["track"])
    output = collect_track(model, track, batch_size=3).numpy()
    np.testing.assert_allclose(output[0], archive["long_o2_b1__output"][0], atol=1e-5, rtol=0)


def test_config_defaults_come_from_the_yaml(tmp_path: Path) -> None:
    write_tiny(tmp_path, "mdx23c")
    model = family("mdx23c").load(entry("mdx23c"), model_dir=tmp_path)
    config = read_config(tmp_path / "mdx23c.yaml", model_type="mdx23c")
    assert model.geometry.tiling == ChunkTiling(config.num_overlap, config.batch_size)
    overridden = family("mdx23c").load(
        entry("mdx23c", inference=FrozenMapping({"batch_size": 5})), model_dir=tmp_path
    )
    assert overridden.geometry.tiling == ChunkTiling(config.num_overlap, 5)


def test_missing_files_name_the_fetch_command(tmp_path: Path) -> None:
    with pytest.raises(ModelMissingError, match=r"python -m models fetch tiny_mdx23c") as caught:
        family("mdx23c").load(entry("mdx23c"), model_dir=tmp_path)
    assert str(tmp_path / "mdx23c.yaml") in caught.value.looked
    with pytest.raises(ModelMissingError, match="none is configured"):
        family("mdx23c").load(entry("mdx23c"), model_dir=None)


def test_checksums_are_verified(tmp_path: Path) -> None:
    config, weights = write_tiny(tmp_path, "mdx23c")
    good = sha256_of(tmp_path / weights)
    loaded = family("mdx23c").load(
        entry("mdx23c", sha256=good, config_sha256=sha256_of(tmp_path / config)[:8]),
        model_dir=tmp_path,
    )
    assert loaded.geometry.samplerate == 44100
    with pytest.raises(ChecksumMismatchError, match=r"mdx23c\.ckpt"):
        family("mdx23c").load(entry("mdx23c", sha256="0" * 64), model_dir=tmp_path)
    with pytest.raises(ModelLoadError, match=r"checksum mismatch for mdx23c\.yaml"):
        family("mdx23c").load(entry("mdx23c", config_sha256="0" * 8), model_dir=tmp_path)


def test_msst_models_take_no_shifts(tmp_path: Path) -> None:
    write_tiny(tmp_path, "mdx23c")
    model = family("mdx23c").load(entry("mdx23c"), model_dir=tmp_path)
    with pytest.raises(ValueError, match="take no shifts"):
        collect_track(model, torch.zeros(2, 20000), shifts=1)
