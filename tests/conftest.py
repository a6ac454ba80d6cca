"""Shared fixtures: tiny random-weight models written in demucs's formats, once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
from demucs.apply import BagOfModels

from models.families.demucs.loading import load_model
from models.families.demucs.testmodel import make_test_model

SMALL_MODELS = ("htdemucs_6s", "htdemucs_ft", "hdemucs_mmi", "htdemucs")


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model folder holding small random-weight copies of the released bags."""
    folder = tmp_path_factory.mktemp("models")
    for name in SMALL_MODELS:
        make_test_model(folder, name, small=True)
    return folder


@pytest.fixture(scope="session")
def small_6s(model_dir: Path) -> BagOfModels:
    """Small htdemucs_6s, loaded through the real loading path."""
    return load_model("htdemucs_6s", model_dir=model_dir, use_hub=False)


@pytest.fixture(scope="session")
def full_htdemucs(tmp_path_factory: pytest.TempPathFactory) -> BagOfModels:
    """The released htdemucs architecture with random weights (42 M parameters)."""
    folder = tmp_path_factory.mktemp("full")
    make_test_model(folder, "htdemucs")
    return load_model("htdemucs", model_dir=folder, use_hub=False)
