"""A model folder and routing with a trained preprocessing model, for the job path's and
the service's tests: a tiny random-weight Mel-Band RoFormer serves vocals, and another,
whose outputs are named as anvuew's dereverb model's (`noreverb`, `reverb`), serves the
Dereverb step. Random weights make both outputs noise-like, which is all the plumbing needs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from models.families.msst.testmodel import make_msst_test_model

FIXTURE = Path(__file__).parent / "families/msst/fixtures/mel_band_roformer/tiny.yaml"
FAMILY = "mel_band_roformer"
STEM_MODEL = "tiny_vocals"
DEREVERB_MODEL = "tiny_dereverb"
CLEANED = "noreverb"


def dereverb_config() -> str:
    """The tiny fixture's config with a dereverb model's outputs instead of vocals/other."""
    text = FIXTURE.read_text(encoding="utf-8")
    stems = "  instruments:\n  - vocals\n  - other\n"
    assert stems in text, "the fixture's instruments moved; update this test helper"
    return text.replace(stems, f"  instruments:\n  - {CLEANED}\n  - reverb\n")


def write_models(folder: Path) -> None:
    """Write both tiny models into `folder`."""
    make_msst_test_model(FAMILY, FIXTURE, folder, name=STEM_MODEL, seed=1)
    make_msst_test_model(FAMILY, dereverb_config(), folder, name=DEREVERB_MODEL, seed=2)


def routing_document(*, dereverb: bool = True) -> dict[str, Any]:
    """Vocals from the tiny stem model and, when `dereverb`, Dereverb on its model."""
    document: dict[str, Any] = {
        "models": {
            STEM_MODEL: {
                "family": FAMILY,
                "weights": f"{STEM_MODEL}.ckpt",
                "config": f"{STEM_MODEL}.yaml",
                "outputs": {"vocals": "vocals"},
            }
        }
    }
    if dereverb:
        document["preprocessing"] = {
            "Dereverb": {
                "family": FAMILY,
                "weights": f"{DEREVERB_MODEL}.ckpt",
                "config": f"{DEREVERB_MODEL}.yaml",
                "output": CLEANED,
            }
        }
    return document
