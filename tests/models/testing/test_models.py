"""Random-weight models for a whole routing: files under the routing's names, a routing
with their checksums, and every model loading through its family's real path."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.cli import main
from models.families import family
from models.fetching import sha256_of
from models.stems.routing import load_routing
from models.testing.models import write_test_models

ROOT = Path(__file__).resolve().parents[3]
COMMUNITY = ROOT / "configs" / "routing" / "community.yaml"
CONFIGS = ROOT / "configs" / "msst"


def test_every_community_model_is_written_and_loads(tmp_path: Path) -> None:
    written = write_test_models(COMMUNITY, tmp_path, small=True, configs=CONFIGS)
    assert written == tmp_path / "routing.yaml"
    routing = load_routing(written)
    published = load_routing(COMMUNITY)
    assert set(routing.all_models()) == set(published.all_models())
    for name, entry in routing.all_models().items():
        assert entry.weights_url is None  # nothing to download for test models
        if entry.config is not None:
            assert entry.sha256 == sha256_of(tmp_path / entry.weights)
            assert entry.config_sha256 == sha256_of(tmp_path / entry.config)
        geometry = family(entry.family).load(entry, model_dir=tmp_path, use_hub=False).geometry
        # The small model outputs what the published one does, under the same names.
        if name in routing.preprocessing:
            assert routing.preprocessing[name].output in geometry.sources
        else:
            assert set(entry.outputs.values()) <= set(geometry.sources)


def test_named_models_only(tmp_path: Path) -> None:
    write_test_models(COMMUNITY, tmp_path, names=["drumsep"], small=True, configs=CONFIGS)
    assert sorted(path.suffix for path in tmp_path.iterdir()) == [".ckpt", ".yaml", ".yaml"]
    with pytest.raises(ValueError, match=r"unknown model.*'nope'"):
        write_test_models(COMMUNITY, tmp_path, names=["nope"], configs=CONFIGS)


def test_a_missing_published_config_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'karaoke': no config bs_roformer_karaoke"):
        write_test_models(COMMUNITY, tmp_path, names=["karaoke"], configs=tmp_path / "none")


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(
        [
            "make-test-model",
            str(tmp_path),
            "--routing",
            str(COMMUNITY),
            "--configs",
            str(CONFIGS),
            "--model",
            "Dereverb",
            "--small",
        ]
    )
    assert status == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "routing.yaml")
    assert (tmp_path / "dereverb_mel_band_roformer_anvuew_sdr_19.1729.ckpt").is_file()
    assert main(["make-test-model", str(tmp_path), "--model", "Dereverb"]) == 1
