"""Fixtures of the demucs family's tests: small and full-size bags as engine models."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.families.demucs.family import DemucsModel
from models.families.demucs.loading import load_model
from models.families.demucs.testmodel import make_test_model


@pytest.fixture(scope="session")
def small_6s(model_dir: Path) -> DemucsModel:
    """Small htdemucs_6s, loaded through the real loading path."""
    return DemucsModel(load_model("htdemucs_6s", model_dir=model_dir, use_hub=False))


@pytest.fixture(scope="session")
def full_htdemucs(tmp_path_factory: pytest.TempPathFactory) -> DemucsModel:
    """The released htdemucs architecture with random weights (42 M parameters)."""
    folder = tmp_path_factory.mktemp("full")
    make_test_model(folder, "htdemucs")
    return DemucsModel(load_model("htdemucs", model_dir=folder, use_hub=False))
