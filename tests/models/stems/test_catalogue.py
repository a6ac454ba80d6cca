"""Tests of the stem catalogue: its contents, groups, defaults and request parsing."""

from __future__ import annotations

import pytest

from models.errors import UnknownStemError
from models.stems.catalogue import (
    ALL_STEMS,
    DEFAULT_STEMS,
    MIXTURE,
    NO_PUBLIC_MODEL,
    STEM_GROUPS,
    parse_stems,
)


def test_catalogue_has_23_unique_stems_in_table_order() -> None:
    assert len(ALL_STEMS) == 23
    assert len(set(ALL_STEMS)) == 23
    assert ALL_STEMS[:5] == ("vocals", "male_vocal", "female_vocal", "lead_vocal", "back_vocal")
    assert ALL_STEMS[-2:] == ("bass", "instrumental")
    assert tuple(s for group in STEM_GROUPS.values() for s in group) == ALL_STEMS


def test_catalogue_has_the_six_design_groups() -> None:
    assert list(STEM_GROUPS) == ["vocals", "guitar", "drums", "keys", "strings and winds", "other"]
    assert STEM_GROUPS["drums"] == (
        "drums",
        "kick_drum",
        "snare_drum",
        "toms",
        "hi_hat",
        "ride",
        "crash",
    )
    assert STEM_GROUPS["keys"] == ("piano", "keys")
    assert STEM_GROUPS["strings and winds"] == ("strings", "winds")
    assert STEM_GROUPS["other"] == ("bass", "instrumental")


def test_mixture_is_not_a_stem() -> None:
    assert MIXTURE not in ALL_STEMS


def test_default_stems() -> None:
    assert DEFAULT_STEMS == ("drums", "bass", "piano", "guitar")
    assert set(DEFAULT_STEMS) <= set(ALL_STEMS)


@pytest.mark.parametrize("value", [None, [], ()])
def test_parse_stems_defaults(value: list[str] | None) -> None:
    assert parse_stems(value) == DEFAULT_STEMS


def test_parse_stems_keeps_order_and_drops_repeats() -> None:
    assert parse_stems(["vocals", "drums", "vocals", "bass", "drums"]) == (
        "vocals",
        "drums",
        "bass",
    )


def test_parse_stems_takes_a_bare_string_as_one_name() -> None:
    assert parse_stems("vocals") == ("vocals",)


def test_parse_stems_names_the_unknown_and_lists_every_valid_stem() -> None:
    with pytest.raises(UnknownStemError) as caught:
        parse_stems(["drums", "cowbell", "theremin", "cowbell"])
    message = str(caught.value)
    assert "'cowbell'" in message
    assert "'theremin'" in message
    assert "'drums'" not in message.split("valid stems")[0]
    assert all(stem in message for stem in ALL_STEMS)


def test_parse_stems_refuses_the_mixture() -> None:
    with pytest.raises(UnknownStemError, match="'mixture'"):
        parse_stems([MIXTURE])


def test_stems_without_public_model_are_catalogue_stems_outside_the_defaults() -> None:
    assert set(NO_PUBLIC_MODEL) <= set(ALL_STEMS)
    assert len(set(NO_PUBLIC_MODEL)) == len(NO_PUBLIC_MODEL) == 7
    assert not set(NO_PUBLIC_MODEL) & set(DEFAULT_STEMS)
