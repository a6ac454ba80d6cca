"""Reading MSST configs: the tuple-only safe loader and the typed view, against the fixtures.

The expected values come from the fixtures' own records: each published config's
`config_summary` in its keys.json (what MSST's code read from it) and, for the tiny
configs, the README's statements about them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from models.errors import ModelLoadError
from models.families.msst.config import (
    MsstConfigError,
    parse_config,
    read_config,
    safe_load_yaml,
)

FIXTURES = Path(__file__).parent / "fixtures"
FAMILIES = ("bs_roformer", "mel_band_roformer", "mdx23c", "scnet")
# (family, the config's path under the family's fixture folder)
PUBLISHED = sorted(
    (family, f"published/{path.name}")
    for family in FAMILIES
    for path in (FIXTURES / family / "published").glob("*.yaml")
)
TINY = sorted(
    (family, path.name) for family in FAMILIES for path in (FIXTURES / family).glob("tiny*.yaml")
)


def test_every_family_has_its_fixtures() -> None:
    assert {family for family, _ in PUBLISHED} == set(FAMILIES)
    assert len(PUBLISHED) == 10
    assert len(TINY) == 6  # tiny.yaml for all four, tiny_single_stem.yaml for the roformers


@pytest.mark.parametrize(("family", "config_path"), PUBLISHED)
def test_published_config_reads_as_msst_read_it(family: str, config_path: str) -> None:
    path = FIXTURES / family / config_path
    summary = json.loads(path.with_suffix(".keys.json").read_text())["config_summary"]
    config = read_config(path, model_type=family)
    assert config.model_type == family
    assert config.source == path.name
    assert config.chunk_size == summary["chunk_size"]
    assert config.num_overlap == summary["num_overlap"]
    assert config.batch_size == summary["inference_batch_size"]
    assert config.sample_rate == summary["sample_rate"]
    assert config.channels == summary["num_channels"]
    assert config.instruments == tuple(summary["instruments"])
    assert config.target_instrument == summary["target_instrument"]
    assert config.output_names == tuple(summary["demix_outputs"])
    assert config.inference_chunk_size is None


@pytest.mark.parametrize(("family", "config_path"), PUBLISHED + TINY)
def test_roformer_tuples_are_tuples_and_sum_to_the_bins(family: str, config_path: str) -> None:
    model = read_config(FIXTURES / family / config_path, model_type=family).model
    if family == "mdx23c":
        assert isinstance(model["scale"], list)
        assert model["scale"] == [2, 2]
        return
    if family == "scnet":
        # SCNet's lists are plain YAML lists; its band shares cover all the bins.
        assert isinstance(model["band_SR"], list)
        assert sum(model["band_SR"]) == pytest.approx(1.0)
        return
    windows = model["multi_stft_resolutions_window_sizes"]
    assert isinstance(windows, tuple)
    assert all(isinstance(size, int) for size in windows)
    if family == "bs_roformer":
        bands = model["freqs_per_bands"]
        assert isinstance(bands, tuple)
        assert sum(bands) == model["stft_n_fft"] // 2 + 1


def test_tiny_configs_say_what_the_readme_says() -> None:
    for family in ("bs_roformer", "mel_band_roformer"):
        tiny = read_config(FIXTURES / family / "tiny.yaml", model_type=family)
        assert (tiny.chunk_size, tiny.num_overlap, tiny.batch_size) == (16384, 2, 1)
        assert tiny.output_names == ("vocals", "other")
        assert tiny.model["num_stems"] == 2
        single = read_config(FIXTURES / family / "tiny_single_stem.yaml", model_type=family)
        assert single.instruments == ("vocals", "other")
        assert single.target_instrument == "vocals"
        assert single.output_names == ("vocals",)
        assert single.model["num_stems"] == 1
    mdx = read_config(FIXTURES / "mdx23c" / "tiny.yaml", model_type="mdx23c")
    assert (mdx.chunk_size, mdx.num_overlap, mdx.batch_size) == (16128, 4, 1)
    assert mdx.output_names == ("vocals", "drums", "other")
    assert mdx.audio["n_fft"] == 1024
    assert mdx.audio["hop_length"] == 256
    assert mdx.audio["dim_f"] == 256
    scnet = read_config(FIXTURES / "scnet" / "tiny.yaml", model_type="scnet")
    assert (scnet.chunk_size, scnet.num_overlap, scnet.batch_size) == (16000, 4, 1)
    assert scnet.output_names == tuple(scnet.model["sources"]) == ("vocals", "other")
    assert scnet.channels == scnet.model["audio_channels"] == 2


def test_loader_gives_fullloaders_values_without_its_powers() -> None:
    text = (FIXTURES / "bs_roformer" / "tiny.yaml").read_text()
    assert safe_load_yaml(text, source="tiny.yaml") == yaml.load(text, Loader=yaml.FullLoader)


def test_plain_safe_load_is_untouched() -> None:
    # The extra constructor lives on our subclass only.
    with pytest.raises(yaml.constructor.ConstructorError):
        yaml.safe_load("a: !!python/tuple [1, 2]")


@pytest.mark.parametrize(
    "value",
    [
        "!!python/object/apply:os.system ['echo pwned']",
        "!!python/object/new:os.system ['echo pwned']",
        "!!python/name:os.system",
        "!!python/module:os",
        "!!python/object:collections.OrderedDict {}",
        "!!python/list [1, 2]",
        "!!python/tuple {a: 1}",
        "!!python/tuple [1, !!python/name:os.system]",
    ],
)
def test_python_tags_are_refused_naming_the_file(tmp_path: Path, value: str) -> None:
    text = (FIXTURES / "mdx23c" / "tiny.yaml").read_text()
    path = tmp_path / "evil.yaml"
    path.write_text(text.replace("act: gelu", f"act: {value}"))
    with pytest.raises(MsstConfigError, match=r"evil\.yaml is not a safe MSST config") as caught:
        read_config(path, model_type="mdx23c")
    assert isinstance(caught.value, ModelLoadError)


def test_inference_chunk_size_is_preferred() -> None:
    text = (FIXTURES / "mdx23c" / "tiny.yaml").read_text()
    config = parse_config(
        text.replace("  num_overlap: 4", "  num_overlap: 4\n  chunk_size: 8064"),
        model_type="mdx23c",
    )
    assert config.audio_chunk_size == 16128
    assert config.inference_chunk_size == 8064
    assert config.chunk_size == 8064


def test_sample_rate_defaults_to_44100() -> None:
    text = (FIXTURES / "mdx23c" / "tiny.yaml").read_text()
    config = parse_config(text.replace("  sample_rate: 44100\n", ""), model_type="mdx23c")
    assert config.sample_rate == 44100


@pytest.mark.parametrize(
    ("old", "new", "complaint"),
    [
        ("  num_overlap: 4\n", "", "inference.num_overlap"),
        ("  batch_size: 1\n", "  batch_size: 0\n", "inference.batch_size"),
        ("  chunk_size: 16128\n", "  chunk_size: true\n", "audio.chunk_size"),
        ("  target_instrument: null\n", "  target_instrument: [vocals]\n", "target_instrument"),
        ("  instruments:\n", "  instruments: []\n  old_instruments:\n", "training.instruments"),
        ("inference:\n", "inference: 3\nold_inference:\n", "'inference' section"),
    ],
)
def test_bad_values_name_the_file_and_the_key(old: str, new: str, complaint: str) -> None:
    text = (FIXTURES / "mdx23c" / "tiny.yaml").read_text()
    assert old in text
    with pytest.raises(MsstConfigError, match=r"mine\.yaml") as caught:
        parse_config(text.replace(old, new, 1), model_type="mdx23c", source="mine.yaml")
    assert complaint in str(caught.value)


def test_unknown_model_type_is_refused() -> None:
    text = (FIXTURES / "mdx23c" / "tiny.yaml").read_text()
    with pytest.raises(MsstConfigError, match="unknown MSST model type 'htdemucs'"):
        parse_config(text, model_type="htdemucs")


def test_not_a_mapping_is_refused() -> None:
    with pytest.raises(MsstConfigError, match="mapping of sections"):
        parse_config("- 1\n- 2\n", model_type="mdx23c")


def test_unreadable_and_oversized_files_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(MsstConfigError, match=r"cannot read MSST config absent\.yaml"):
        read_config(tmp_path / "absent.yaml", model_type="mdx23c")
    big = tmp_path / "big.yaml"
    big.write_text("a: " + "x" * 2000)
    with pytest.raises(MsstConfigError, match=r"big\.yaml is 2003 bytes, over the 1000 limit"):
        read_config(big, model_type="mdx23c", max_bytes=1000)
