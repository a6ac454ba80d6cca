"""The preprocessing steps by name: checked in any letter case, run in their fixed order."""

from __future__ import annotations

import pytest

from models.errors import PreprocessError
from models.preprocess.catalogue import STEPS, parse_steps


def test_steps_run_in_the_fixed_order_whatever_the_request() -> None:
    assert parse_steps(["Dereverb", "Denoise", "Deecho"]) == STEPS
    assert parse_steps(["dereverb", "DENOISE", "Denoise"]) == ("Denoise", "Dereverb")
    assert parse_steps(None) == ()
    assert parse_steps([]) == ()


def test_unknown_step_names_the_allowed_ones() -> None:
    with pytest.raises(PreprocessError, match=r"'Declick'.*allowed: Denoise, Deecho, Dereverb"):
        parse_steps(["Denoise", "Declick"])
    with pytest.raises(PreprocessError, match="list of names"):
        parse_steps("Denoise")
