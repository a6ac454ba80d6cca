"""Tests of the planner: passes per model, derivations, cascades and refused requests."""

from __future__ import annotations

import pytest

from models.errors import RoutingError, UnknownStemError, UnservedStemError
from models.stems.catalogue import ADDING_A_MODEL, ALL_STEMS, DEFAULT_STEMS, MIXTURE
from models.stems.planner import Pass, make_plan
from models.stems.routing import DerivedStem, ModelEntry, Routing, load_routing, parse_routing

HT = "htdemucs_6s"


@pytest.fixture(scope="module")
def default_routing() -> Routing:
    """The routing shipped in models/stems/models.yaml."""
    return load_routing()


@pytest.fixture(scope="module")
def cascade_routing() -> Routing:
    """htdemucs_6s plus a drum-parts model on its drums and a derivation on drum parts.

    The drum-parts model is listed first so that config order alone cannot pass the
    ordering tests.
    """
    return parse_routing(
        {
            "models": {
                "drumparts": {
                    "family": "demucs",
                    "weights": "drumparts",
                    "input": "drums",
                    "outputs": {"kick_drum": "kick", "snare_drum": "snare"},
                },
                HT: {
                    "family": "demucs",
                    "weights": HT,
                    "outputs": {s: s for s in ("drums", "bass", "vocals", "guitar", "piano")},
                },
            },
            "derived": {
                "toms": {"from": "drums", "minus": ["kick_drum", "snare_drum"]},
                "instrumental": {"from": "mixture", "minus": ["vocals"]},
            },
        }
    )


def test_one_pass_serves_many_stems(default_routing: Routing) -> None:
    plan = make_plan(["vocals", "drums", "bass", "guitar", "piano", "vocals"], default_routing)
    assert plan.stems == ("vocals", "drums", "bass", "guitar", "piano")
    assert plan.passes == (Pass(HT, MIXTURE, ("vocals", "guitar", "drums", "piano", "bass")),)
    assert plan.derived == ()


@pytest.mark.parametrize("stems", [None, []])
def test_default_stems(stems: list[str] | None, default_routing: Routing) -> None:
    plan = make_plan(stems, default_routing)
    assert plan.stems == DEFAULT_STEMS
    assert plan.passes == (Pass(HT, MIXTURE, ("guitar", "drums", "piano", "bass")),)
    assert plan.derived == ()


def test_instrumental_alone_runs_the_vocals_pass(default_routing: Routing) -> None:
    plan = make_plan(["instrumental"], default_routing)
    assert plan.stems == ("instrumental",)
    assert plan.passes == (Pass(HT, MIXTURE, ("vocals",)),)
    assert plan.derived == (DerivedStem("instrumental", MIXTURE, ("vocals",)),)


def test_derived_stem_with_its_base_requested(default_routing: Routing) -> None:
    plan = make_plan(["instrumental", "vocals"], default_routing)
    assert plan.stems == ("instrumental", "vocals")
    assert plan.passes == (Pass(HT, MIXTURE, ("vocals",)),)
    assert plan.derived == (default_routing.derived["instrumental"],)


def test_unknown_stem_lists_valid_names(default_routing: Routing) -> None:
    with pytest.raises(UnknownStemError) as caught:
        make_plan(["drums", "cowbell"], default_routing)
    message = str(caught.value)
    assert "'cowbell'" in message
    assert all(stem in message for stem in ALL_STEMS)


def test_unserved_stem_names_it_and_lists_what_is_served(default_routing: Routing) -> None:
    with pytest.raises(UnservedStemError) as caught:
        make_plan(["drums", "kick_drum", "strings"], default_routing)
    message = str(caught.value)
    assert "'kick_drum'" in message
    assert "'strings'" in message
    assert "'drums'" not in message
    assert "no model is configured for 'kick_drum', 'strings'" in message
    assert "vocals, guitar, drums, piano, bass, instrumental" in message


def test_unserved_stem_without_public_checkpoint_says_how_to_add_one(
    default_routing: Routing,
) -> None:
    with pytest.raises(UnservedStemError) as caught:
        make_plan(["kick_drum", "strings", "keys"], default_routing)
    message = str(caught.value)
    assert "no public checkpoint is known for 'strings', 'keys'" in message
    assert ADDING_A_MODEL in message


def test_unserved_stem_with_public_checkpoint_gets_no_adding_hint(
    default_routing: Routing,
) -> None:
    with pytest.raises(UnservedStemError) as caught:
        make_plan(["kick_drum"], default_routing)
    message = str(caught.value)
    assert "no public checkpoint" not in message
    assert ADDING_A_MODEL not in message


def test_cascade_runs_the_first_pass_for_its_input(cascade_routing: Routing) -> None:
    plan = make_plan(["kick_drum"], cascade_routing)
    assert plan.passes == (
        Pass(HT, MIXTURE, ("drums",)),
        Pass("drumparts", "drums", ("kick_drum",)),
    )
    assert plan.derived == ()


def test_cascade_shares_passes_with_direct_requests(cascade_routing: Routing) -> None:
    plan = make_plan(["snare_drum", "vocals", "kick_drum", "drums"], cascade_routing)
    assert plan.passes == (
        Pass(HT, MIXTURE, ("vocals", "drums")),
        Pass("drumparts", "drums", ("kick_drum", "snare_drum")),
    )


def test_derivation_over_a_cascade(cascade_routing: Routing) -> None:
    plan = make_plan(["toms", "instrumental"], cascade_routing)
    assert plan.stems == ("toms", "instrumental")
    assert plan.passes == (
        Pass(HT, MIXTURE, ("vocals", "drums")),
        Pass("drumparts", "drums", ("kick_drum", "snare_drum")),
    )
    assert {entry.name for entry in plan.derived} == {"toms", "instrumental"}


def entry_document(entry: ModelEntry) -> dict[str, object]:
    """Turn a ModelEntry back into its config document."""
    return {
        "family": entry.family,
        "weights": entry.weights,
        "input": entry.input,
        "outputs": dict(entry.outputs),
    }


def test_derivations_come_after_the_ones_they_build_on(default_routing: Routing) -> None:
    routing = parse_routing(
        {
            "models": {
                name: entry_document(entry) for name, entry in default_routing.models.items()
            },
            "derived": {
                "keys": {"from": "instrumental", "minus": ["drums", "bass", "guitar"]},
                "instrumental": {"from": "mixture", "minus": ["vocals"]},
            },
        }
    )
    plan = make_plan(["keys"], routing)
    assert [entry.name for entry in plan.derived] == ["instrumental", "keys"]
    assert plan.passes == (Pass(HT, MIXTURE, ("vocals", "guitar", "drums", "bass")),)


def test_plan_is_hashable(default_routing: Routing) -> None:
    plan = make_plan(["instrumental"], default_routing)
    assert hash(plan) == hash(make_plan(["instrumental"], default_routing))


def test_unvalidated_cycle_is_refused_rather_than_looping() -> None:
    def model(name: str, source: str, stem: str) -> ModelEntry:
        return ModelEntry(name, "demucs", name, None, source, {stem: stem})

    routing = Routing(
        models={"a": model("a", "drums", "bass"), "b": model("b", "bass", "drums")},
        derived={},
    )
    with pytest.raises(RoutingError, match="dependency cycle"):
        make_plan(["bass"], routing)


def test_unvalidated_missing_input_is_refused() -> None:
    routing = Routing(
        models={"a": ModelEntry("a", "demucs", "a", None, "drums", {"bass": "bass"})},
        derived={},
    )
    with pytest.raises(RoutingError, match="'drums' is needed as an input"):
        make_plan(["bass"], routing)
