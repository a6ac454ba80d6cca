"""Tests of the model routing: the default config, cascades, and every validation error."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from models.errors import RoutingError
from models.stems.catalogue import MIXTURE
from models.stems.routing import (
    DEFAULT_ROUTING_PATH,
    DerivedStem,
    Routing,
    load_routing,
    parse_routing,
)


def base_document() -> dict[str, Any]:
    """A valid routing with a drum-parts cascade and a derived instrumental."""
    return {
        "models": {
            "htdemucs_6s": {
                "family": "demucs",
                "weights": "htdemucs_6s",
                "outputs": {"drums": "drums", "bass": "bass", "vocals": "vocals"},
            },
            "drumparts": {
                "family": "demucs",
                "weights": "drumparts.th",
                "sha256": "ABCdef0123",
                "input": "drums",
                "outputs": {"kick_drum": "kick", "snare_drum": "snare"},
            },
        },
        "derived": {"instrumental": {"from": "mixture", "minus": ["vocals"]}},
    }


def test_default_path_is_package_data() -> None:
    assert DEFAULT_ROUTING_PATH.is_file()
    assert DEFAULT_ROUTING_PATH.parts[-3:] == ("models", "stems", "models.yaml")


def test_default_routing_serves_the_six_design_stems() -> None:
    routing = load_routing()
    assert set(routing.served_stems()) == {
        "drums",
        "bass",
        "vocals",
        "guitar",
        "piano",
        "instrumental",
    }
    # Catalogue order, not config order.
    assert routing.served_stems() == ("vocals", "guitar", "drums", "piano", "bass", "instrumental")


def test_default_routing_entries() -> None:
    routing = load_routing(DEFAULT_ROUTING_PATH)
    model = routing.models["htdemucs_6s"]
    assert model.family == "demucs"
    assert model.weights == "htdemucs_6s"
    assert model.sha256 is None
    assert model.input == MIXTURE
    assert dict(model.outputs) == {s: s for s in ("drums", "bass", "vocals", "guitar", "piano")}
    assert routing.derived["instrumental"] == DerivedStem("instrumental", MIXTURE, ("vocals",))
    assert routing.model_for("piano") is model
    assert routing.model_for("instrumental") is None
    assert routing.model_for("kick_drum") is None


def test_cascade_routing_parses() -> None:
    routing = parse_routing(base_document())
    drumparts = routing.models["drumparts"]
    assert drumparts.name == "drumparts"
    assert drumparts.input == "drums"
    assert drumparts.sha256 == "abcdef0123"
    assert routing.models["htdemucs_6s"].input == MIXTURE
    assert routing.model_for("snare_drum") is drumparts
    assert routing.served_stems() == (
        "vocals",
        "drums",
        "kick_drum",
        "snare_drum",
        "bass",
        "instrumental",
    )


def test_routing_is_frozen_and_hashable() -> None:
    routing = parse_routing(base_document())
    assert hash(routing) == hash(parse_routing(base_document()))
    with pytest.raises(TypeError):
        routing.models["drumparts"].outputs["toms"] = "toms"  # type: ignore[index]


def test_derivation_may_build_on_another_derivation() -> None:
    document = base_document()
    document["derived"]["keys"] = {"from": "instrumental", "minus": ["drums", "bass"]}
    routing = parse_routing(document)
    assert "keys" in routing.served_stems()


def test_served_stems_leaves_out_derivations_whose_inputs_are_missing() -> None:
    # Built directly, so no validation stands between us and a dangling derivation.
    routing = Routing(
        models=parse_routing(base_document()).models,
        derived={"keys": DerivedStem("keys", MIXTURE, ("piano",))},
    )
    assert "keys" not in routing.served_stems()


def change(document: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    """Return a copy of `document` with the entry at `path` set to `value` (None deletes it)."""
    changed = copy.deepcopy(document)
    target = changed
    for key in path[:-1]:
        target = target[key]
    if value is None:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return changed


HT = ("models", "htdemucs_6s")
DP = ("models", "drumparts")
INSTR = ("derived", "instrumental")

INVALID = [
    pytest.param(("plugins",), {}, r"unknown top-level key\(s\) 'plugins'", id="top-level-key"),
    pytest.param(("models",), None, r"'models' must be a non-empty mapping", id="no-models"),
    pytest.param(("models",), {}, r"'models' must be a non-empty mapping", id="empty-models"),
    pytest.param(("derived",), ["x"], r"'derived' must be a mapping", id="derived-list"),
    pytest.param((*HT, "family"), None, r"'htdemucs_6s': missing .*'family'", id="no-family"),
    pytest.param((*HT, "weights"), None, r"'htdemucs_6s': missing .*'weights'", id="no-weights"),
    pytest.param((*HT, "outputs"), None, r"'htdemucs_6s': missing .*'outputs'", id="no-outputs"),
    pytest.param((*HT, "segment"), 7, r"'htdemucs_6s': unknown field.*'segment'", id="model-field"),
    pytest.param(HT, "demucs", r"'htdemucs_6s': expected a mapping", id="model-not-mapping"),
    pytest.param((*HT, "family"), "mdx", r"'htdemucs_6s' field 'family'.*'mdx'", id="family"),
    pytest.param((*HT, "weights"), "", r"'htdemucs_6s' field 'weights'", id="empty-weights"),
    pytest.param((*HT, "outputs"), {}, r"'htdemucs_6s' field 'outputs'", id="empty-outputs"),
    pytest.param(
        (*HT, "outputs", "cowbell"),
        "cowbell",
        r"'htdemucs_6s' field 'outputs': 'cowbell' is not a catalogue stem",
        id="output-not-stem",
    ),
    pytest.param(
        (*HT, "outputs", "other"),
        "other",
        r"'other' is not a catalogue stem",
        id="output-source-name-as-stem",
    ),
    pytest.param(
        (*HT, "outputs", "guitar"), 3, r"'htdemucs_6s' field 'outputs' stem 'guitar'", id="source"
    ),
    pytest.param(
        (*DP, "outputs", "drums"),
        "drums",
        r"stem 'drums' is output by both model 'htdemucs_6s' and model 'drumparts'",
        id="two-models-one-stem",
    ),
    pytest.param(
        (*HT, "outputs", "instrumental"),
        "no_vocals",
        r"derived stem 'instrumental' is already output by model 'htdemucs_6s'",
        id="derived-is-model-output",
    ),
    pytest.param(
        (*DP, "input"),
        "piano",
        r"'drumparts' field 'input': 'piano' is output by no model",
        id="input-unserved",
    ),
    pytest.param(
        (*DP, "input"), "cowbell", r"'drumparts' field 'input'.*'cowbell'", id="input-not-stem"
    ),
    pytest.param(
        (*DP, "input"),
        "instrumental",
        r"'drumparts' field 'input': 'instrumental' is a derived stem",
        id="input-derived",
    ),
    pytest.param(
        (*HT, "input"), "kick_drum", r"cascade cycle 'htdemucs_6s' -> 'drumparts'", id="cycle"
    ),
    pytest.param((*DP, "input"), "snare_drum", r"cascade cycle 'drumparts'", id="self-cycle"),
    pytest.param((*DP, "sha256"), "xyz", r"'drumparts' field 'sha256': 'xyz'", id="sha256"),
    pytest.param((*DP, "sha256"), 12345678, r"'drumparts' field 'sha256': 1234", id="sha256-int"),
    pytest.param((*DP, "sha256"), "a" * 65, r"'drumparts' field 'sha256'", id="sha256-long"),
    pytest.param((*DP, "sha256"), "abc", r"'drumparts' field 'sha256'", id="sha256-short"),
    pytest.param((*DP, "config"), "x.yaml", r"'drumparts' field 'config'.*takes none", id="config"),
    pytest.param((*DP, "source"), {"weights": "ftp://x"}, r"is not an http", id="source-url"),
    pytest.param((*DP, "source"), {"model": "https://x"}, r"unknown field.*'model'", id="source"),
    pytest.param((*DP, "licence"), "", r"'drumparts' field 'licence'", id="licence"),
    pytest.param((*DP, "quality"), {"sdr": 1}, r"field 'quality': expected a list", id="quality"),
    pytest.param(
        (*DP, "quality"),
        [{"stem": "kick_drum", "sdr": "high", "measured_on": "x"}],
        r"sdr 'high' is not a number",
        id="quality-sdr",
    ),
    pytest.param(
        (*DP, "quality"), [{"stem": "kick_drum"}], r"missing field.*'sdr'", id="quality-fields"
    ),
    pytest.param(("derived", "cowbell"), {}, r"'cowbell' is not a catalogue stem", id="derived"),
    pytest.param(INSTR, ["vocals"], r"'instrumental': expected a mapping", id="derived-shape"),
    pytest.param((*INSTR, "to"), "x", r"'instrumental': unknown field.*'to'", id="derived-field"),
    pytest.param(
        (*INSTR, "from"),
        "piano",
        r"'instrumental' field 'from': 'piano' is produced by no model",
        id="base-unserved",
    ),
    pytest.param((*INSTR, "from"), "song", r"'instrumental' field 'from'.*'song'", id="base"),
    pytest.param((*INSTR, "from"), None, r"'instrumental' field 'from'", id="no-base"),
    pytest.param((*INSTR, "minus"), None, r"'instrumental' field 'minus'", id="no-minus"),
    pytest.param((*INSTR, "minus"), [], r"'instrumental' field 'minus'", id="empty-minus"),
    pytest.param((*INSTR, "minus"), "vocals", r"'instrumental' field 'minus'", id="minus-string"),
    pytest.param(
        (*INSTR, "minus"),
        ["guitar"],
        r"'instrumental' field 'minus': 'guitar' is produced by no model",
        id="minus-unserved",
    ),
    pytest.param((*INSTR, "minus"), ["cowbell"], r"'cowbell' is not a catalogue", id="minus"),
    pytest.param((*INSTR, "minus"), ["vocals", "vocals"], r"repeats", id="minus-repeat"),
    pytest.param((*INSTR, "minus"), ["mixture"], r"repeats a stem or the base", id="minus-base"),
    pytest.param(
        (*INSTR, "minus"), ["instrumental"], r"derivation cycle 'instrumental'", id="derived-self"
    ),
]


@pytest.mark.parametrize(("path", "value", "message"), INVALID)
def test_invalid_routing_is_refused(path: tuple[str, ...], value: Any, message: str) -> None:
    with pytest.raises(RoutingError, match=message):
        parse_routing(change(base_document(), path, value))


def test_derivation_cycle_is_refused() -> None:
    document = base_document()
    document["derived"]["keys"] = {"from": "instrumental", "minus": ["bass"]}
    document["derived"]["instrumental"]["minus"] = ["vocals", "keys"]
    with pytest.raises(RoutingError, match="derivation cycle 'instrumental' -> 'keys' -> 'instr"):
        parse_routing(document)


def test_non_string_model_key_is_refused() -> None:
    document = base_document()
    document["models"][7] = document["models"].pop("drumparts")
    with pytest.raises(RoutingError, match="model key: expected a non-empty string, got 7"):
        parse_routing(document)


def test_base_document_is_valid() -> None:
    # Guards the table above: each case must fail because of its one change.
    parse_routing(base_document())


def test_bad_yaml_file_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "models.yaml"
    config.write_text("models:\n  htdemucs_6s: {family: demucs\n", encoding="utf-8")
    with pytest.raises(RoutingError, match="is not valid YAML"):
        load_routing(config)


def test_yaml_that_is_not_a_mapping_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "models.yaml"
    config.write_text("- htdemucs_6s\n", encoding="utf-8")
    with pytest.raises(RoutingError, match="must be a mapping at the top level"):
        load_routing(str(config))


def test_invalid_file_error_names_the_file(tmp_path: Path) -> None:
    config = tmp_path / "models.yaml"
    config.write_text("models:\n  m: {family: onnx, weights: w, outputs: {bass: bass}}\n")
    with pytest.raises(RoutingError, match=r"models\.yaml.*model 'm' field 'family'.*'onnx'"):
        load_routing(config)


def test_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RoutingError, match="cannot read routing config"):
        load_routing(tmp_path / "absent.yaml")


def test_valid_file_loads(tmp_path: Path) -> None:
    config = tmp_path / "models.yaml"
    config.write_text(
        "models:\n"
        "  m:\n"
        "    family: demucs\n"
        "    weights: m.th\n"
        "    sha256: '01234567'\n"
        "    outputs: {bass: bass}\n",
        encoding="utf-8",
    )
    routing = load_routing(config)
    assert routing.models["m"].sha256 == "01234567"
    assert routing.served_stems() == ("bass",)
    assert dict(routing.derived) == {}


def msst_document() -> dict[str, Any]:
    """The base routing plus an MSST karaoke cascade and a trained Dereverb step."""
    document = base_document()
    document["models"]["karaoke"] = {
        "family": "mel_band_roformer",
        "weights": "karaoke.ckpt",
        "config": "karaoke.yaml",
        "sha256": "a" * 64,
        "config_sha256": "b" * 8,
        "source": {"weights": "https://example.test/k.ckpt", "config": "http://e.test/k.yaml"},
        "licence": "CC-BY-NC-4.0",
        "quality": [{"stem": "lead_vocal", "sdr": 10.2, "measured_on": "a test set"}],
        "inference": {"batch_size": 2, "num_overlap": 4},
        "input": "vocals",
        "outputs": {"lead_vocal": "karaoke"},
    }
    document["derived"]["back_vocal"] = {"from": "vocals", "minus": ["lead_vocal"]}
    document["preprocessing"] = {
        "Dereverb": {
            "family": "bs_roformer",
            "weights": "dereverb.ckpt",
            "config": "dereverb.yaml",
            "licence": "MIT",
            "output": "noreverb",
        }
    }
    return document


def test_msst_entries_keep_their_provenance() -> None:
    routing = parse_routing(msst_document())
    karaoke = routing.models["karaoke"]
    assert (karaoke.family, karaoke.weights, karaoke.config) == (
        "mel_band_roformer",
        "karaoke.ckpt",
        "karaoke.yaml",
    )
    assert (karaoke.sha256, karaoke.config_sha256) == ("a" * 64, "b" * 8)
    assert karaoke.weights_url == "https://example.test/k.ckpt"
    assert karaoke.config_url == "http://e.test/k.yaml"
    assert karaoke.licence == "CC-BY-NC-4.0" and not karaoke.permissive
    assert karaoke.quality[0].sdr == pytest.approx(10.2)
    assert dict(karaoke.inference) == {"batch_size": 2, "num_overlap": 4}
    assert routing.models["htdemucs_6s"].licence == "unstated"
    assert {"lead_vocal", "back_vocal"} <= set(routing.served_stems())


def test_preprocessing_models_are_keyed_by_step() -> None:
    routing = parse_routing(msst_document())
    step = routing.preprocessing["Dereverb"]
    assert (step.step, step.output, step.model.name) == ("Dereverb", "noreverb", "Dereverb")
    assert step.model.permissive
    assert set(routing.all_models()) == {"htdemucs_6s", "drumparts", "karaoke", "Dereverb"}


KA = ("models", "karaoke")
DR = ("preprocessing", "Dereverb")


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        pytest.param(
            (*KA, "config"), None, r"'karaoke': a mel_band_roformer model needs", id="cfg"
        ),
        pytest.param((*KA, "config"), "../k.yaml", r"plain file name", id="cfg-path"),
        pytest.param((*KA, "weights"), "a/k.ckpt", r"plain file name", id="weights-path"),
        pytest.param((*KA, "inference"), {"batch_size": 0}, r"not a positive", id="inference"),
        pytest.param((*KA, "inference"), {"chunk": 2}, r"unknown field.*'chunk'", id="inf-key"),
        pytest.param((*DR, "output"), None, r"missing field.*'output'", id="step-output"),
        pytest.param((*DR, "outputs"), {"vocals": "x"}, r"unknown field.*'outputs'", id="step-f"),
        pytest.param(("preprocessing", "Declip"), {}, r"'Declip' is not a preprocessing", id="st"),
        pytest.param(("models", "Dereverb"), {}, r"expected a mapping|missing", id="clash"),
    ],
)
def test_invalid_msst_routing_is_refused(path: tuple[str, ...], value: Any, message: str) -> None:
    document = msst_document()
    target = document
    for key in path[:-1]:
        target = target[key]
    if value is None:
        target.pop(path[-1], None)
    else:
        target[path[-1]] = value
    with pytest.raises(RoutingError, match=message):
        parse_routing(document)


def test_a_model_key_may_not_name_a_step() -> None:
    document = msst_document()
    document["models"]["Dereverb"] = copy.deepcopy(document["models"]["drumparts"])
    document["models"]["Dereverb"]["outputs"] = {"toms": "toms"}
    with pytest.raises(RoutingError, match=r"model key\(s\) 'Dereverb' name a preprocessing step"):
        parse_routing(document)
