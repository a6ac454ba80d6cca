"""Shared fixtures: a folder of tiny random-weight models in demucs's formats, once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.families.demucs.testmodel import make_test_model

SMALL_MODELS = ("htdemucs_6s", "htdemucs_ft", "hdemucs_mmi", "htdemucs")


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model folder holding small random-weight copies of the released bags."""
    folder = tmp_path_factory.mktemp("models")
    for name in SMALL_MODELS:
        make_test_model(folder, name, small=True)
    return folder
