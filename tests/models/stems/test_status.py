"""Tests of models.stems.status: the status of every catalogue stem under a routing."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pytest

from models.stems.catalogue import ADDING_A_MODEL, ALL_STEMS, NO_PUBLIC_MODEL, STEM_GROUPS
from models.stems.routing import QualityFigure, Routing, load_routing, parse_routing
from models.stems.status import COMMUNITY_ROUTING, DERIVED, Status, StemStatus, stem_statuses

HT = "htdemucs_6s"
ROUTING_FILE = "/srv/routing.yaml"
KARAOKE_FILES = ("karaoke.yaml", "karaoke.ckpt")


@pytest.fixture(scope="module")
def routing() -> Routing:
    """htdemucs_6s, an MSST karaoke model cascaded on its vocals, and back_vocal derived
    from both."""
    document: dict[str, Any] = {
        "models": {
            HT: {
                "family": "demucs",
                "weights": HT,
                "licence": "MIT",
                "outputs": {s: s for s in ("drums", "bass", "vocals", "guitar", "piano")},
            },
            "karaoke": {
                "family": "mel_band_roformer",
                "config": KARAOKE_FILES[0],
                "weights": KARAOKE_FILES[1],
                "licence": "GPL-3.0",
                "quality": [
                    {"stem": "lead_vocal", "sdr": 10.2, "measured_on": "aufr33 karaoke set"},
                    {"stem": "back_vocal", "sdr": 6.5, "measured_on": "aufr33 karaoke set"},
                ],
                "input": "vocals",
                "outputs": {"lead_vocal": "karaoke"},
            },
        },
        "derived": {
            "back_vocal": {"from": "vocals", "minus": ["lead_vocal"]},
            "instrumental": {"from": "mixture", "minus": ["vocals"]},
        },
    }
    return parse_routing(document)


def by_stem(statuses: list[StemStatus]) -> dict[str, StemStatus]:
    return {status.stem: status for status in statuses}


def test_one_status_per_catalogue_stem_in_order(routing: Routing, tmp_path: Path) -> None:
    statuses = stem_statuses(routing, model_dir=tmp_path, routing_file=ROUTING_FILE)
    assert [status.stem for status in statuses] == list(ALL_STEMS)
    for status in statuses:
        assert status.stem in STEM_GROUPS[status.group]


def test_cascade_lists_its_path_and_every_licence_on_it(routing: Routing, tmp_path: Path) -> None:
    for name in KARAOKE_FILES:
        (tmp_path / name).touch()
    lead = by_stem(stem_statuses(routing, model_dir=tmp_path, routing_file=ROUTING_FILE))[
        "lead_vocal"
    ]
    assert lead.status == Status.SERVED
    assert lead.produced_by == "karaoke"
    assert lead.formula is None
    assert lead.path == (f"{HT}: vocals", "karaoke: lead_vocal")
    assert dict(lead.licences) == {HT: "MIT", "karaoke": "GPL-3.0"}
    assert lead.quality == QualityFigure("lead_vocal", 10.2, "aufr33 karaoke set")
    assert (lead.missing_files, lead.fetch, lead.note) == ((), (), None)


def test_derived_stem_shows_its_formula_and_the_passes_it_needs(
    routing: Routing, tmp_path: Path
) -> None:
    for name in KARAOKE_FILES:
        (tmp_path / name).touch()
    statuses = by_stem(stem_statuses(routing, model_dir=tmp_path, routing_file=ROUTING_FILE))
    back = statuses["back_vocal"]
    assert back.status == Status.SERVED
    assert (back.produced_by, back.formula) == (DERIVED, "vocals - lead_vocal")
    assert back.path == (
        f"{HT}: vocals",
        "karaoke: lead_vocal",
        "back_vocal = vocals - lead_vocal",
    )
    assert dict(back.licences) == {HT: "MIT", "karaoke": "GPL-3.0"}
    # The karaoke model publishes a figure for the stem its output is subtracted into.
    assert back.quality == QualityFigure("back_vocal", 6.5, "aufr33 karaoke set")
    instrumental = statuses["instrumental"]
    assert instrumental.path == (f"{HT}: vocals", "instrumental = mixture - vocals")
    assert dict(instrumental.licences) == {HT: "MIT"}
    assert instrumental.quality is None


def test_msst_files_missing_then_present(routing: Routing, tmp_path: Path) -> None:
    (tmp_path / KARAOKE_FILES[0]).touch()
    statuses = by_stem(stem_statuses(routing, model_dir=tmp_path, routing_file=ROUTING_FILE))
    command = (
        f"python -m models fetch --routing {ROUTING_FILE} "
        f"--model-dir {shlex.quote(str(tmp_path))} karaoke"
    )
    for stem in ("lead_vocal", "back_vocal"):
        status = statuses[stem]
        assert status.status == Status.WEIGHTS_MISSING, stem
        assert status.missing_files == (KARAOKE_FILES[1],)
        assert status.fetch == (command,)
        assert status.note is not None and "'karaoke'" in status.note
    # Stems of demucs alone do not wait on the karaoke model's files.
    assert statuses["vocals"].status == Status.SERVED
    assert statuses["instrumental"].status == Status.SERVED

    (tmp_path / KARAOKE_FILES[1]).touch()
    statuses = by_stem(stem_statuses(routing, model_dir=tmp_path, routing_file=ROUTING_FILE))
    assert statuses["lead_vocal"].status == Status.SERVED
    assert statuses["back_vocal"].status == Status.SERVED


def test_no_model_folder_means_every_msst_file_is_missing(routing: Routing) -> None:
    lead = by_stem(stem_statuses(routing, model_dir=None, routing_file=ROUTING_FILE))["lead_vocal"]
    assert lead.status == Status.WEIGHTS_MISSING
    assert lead.missing_files == KARAOKE_FILES
    assert lead.note is not None and "no model folder" in lead.note


def test_unserved_stems_say_where_a_model_is(routing: Routing, tmp_path: Path) -> None:
    statuses = by_stem(stem_statuses(routing, model_dir=tmp_path, routing_file=ROUTING_FILE))
    kick = statuses["kick_drum"]
    assert kick.status == Status.NO_MODEL_CONFIGURED
    assert kick.note is not None and COMMUNITY_ROUTING in kick.note
    assert (kick.produced_by, kick.path, dict(kick.licences)) == (None, (), {})
    strings = statuses["strings"]
    assert strings.status == Status.NO_PUBLIC_MODEL
    assert strings.note is not None and ADDING_A_MODEL in strings.note


def test_default_routing_statuses_of_all_23() -> None:
    statuses = stem_statuses(load_routing(), model_dir=None, routing_file=ROUTING_FILE)
    served = {"vocals", "guitar", "drums", "piano", "bass", "instrumental"}
    expected = {
        stem: Status.SERVED
        if stem in served
        else Status.NO_PUBLIC_MODEL
        if stem in NO_PUBLIC_MODEL
        else Status.NO_MODEL_CONFIGURED
        for stem in ALL_STEMS
    }
    assert {status.stem: status.status for status in statuses} == expected
    assert len(statuses) == 23
    assert sum(s.status == Status.NO_MODEL_CONFIGURED for s in statuses) == 10
    # demucs fetches from its hub, so no model folder is needed for its stems.
    assert all(not status.missing_files for status in statuses)


def test_as_json_has_every_key_for_every_status(routing: Routing) -> None:
    statuses = stem_statuses(routing, model_dir=None, routing_file=ROUTING_FILE)
    keys = {frozenset(status.as_json()) for status in statuses}
    assert len(keys) == 1
    lead = by_stem(statuses)["lead_vocal"].as_json()
    assert lead["status"] == "weights_missing"
    assert lead["quality"] == {"sdr": 10.2, "measured_on": "aufr33 karaoke set"}
    assert lead["licences"] == {HT: "MIT", "karaoke": "GPL-3.0"}
    assert lead["path"] == [f"{HT}: vocals", "karaoke: lead_vocal"]
