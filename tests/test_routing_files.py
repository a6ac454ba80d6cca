"""The routing files we ship: the embedded default and the community routing.

Every MSST model of the community routing must build from its shipped config (the
published one) and output what the routing maps; the default routing must serve only
clearly licensed weights; between them and the stems no public checkpoint serves,
all 23 stems are accounted for.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.families import CONFIGURED_FAMILIES
from models.families.msst.config import read_config
from models.families.msst.networks import build_network
from models.stems.catalogue import ALL_STEMS, NO_PUBLIC_MODEL
from models.stems.planner import make_plan
from models.stems.routing import ModelEntry, load_routing

ROOT = Path(__file__).resolve().parent.parent
COMMUNITY = ROOT / "configs" / "routing" / "community.yaml"
CONFIGS = ROOT / "configs" / "msst"
COMMUNITY_MSST = [
    entry
    for entry in load_routing(COMMUNITY).all_models().values()
    if entry.family in CONFIGURED_FAMILIES
]


def test_default_routing_serves_only_permissive_weights() -> None:
    routing = load_routing()
    assert all(entry.permissive for entry in routing.all_models().values())


def test_community_routing_serves_every_stem_a_public_checkpoint_serves() -> None:
    served = set(load_routing(COMMUNITY).served_stems())
    assert served == set(ALL_STEMS) - set(NO_PUBLIC_MODEL)
    assert len(served) == 16


def test_community_cascades_read_the_vocals_and_drums_stems() -> None:
    routing = load_routing(COMMUNITY)
    assert routing.model_for("kick_drum").input == "drums"  # type: ignore[union-attr]
    assert routing.model_for("lead_vocal").input == "vocals"  # type: ignore[union-attr]
    assert routing.model_for("male_vocal").input == "vocals"  # type: ignore[union-attr]
    assert routing.derived["back_vocal"].base == "vocals"
    assert routing.derived["back_vocal"].minus == ("lead_vocal",)
    assert set(routing.preprocessing) == {"Denoise", "Deecho", "Dereverb"}


@pytest.mark.parametrize("entry", COMMUNITY_MSST, ids=lambda entry: entry.name)
def test_community_msst_model_builds_from_its_published_config(entry: ModelEntry) -> None:
    assert entry.config is not None
    assert entry.weights_url and entry.config_url, "fetch needs both addresses"
    assert entry.weights.startswith(Path(entry.config).stem)
    config = read_config(CONFIGS / entry.config, model_type=entry.family)
    with torch.device("meta"):
        network = build_network(config)
    assert sum(parameter.numel() for parameter in network.parameters()) > 10_000_000
    routing = load_routing(COMMUNITY)
    step = routing.preprocessing.get(entry.name)
    wanted = {step.output} if step is not None else set(entry.outputs.values())
    assert wanted <= set(config.output_names)


def test_every_shipped_config_is_routed() -> None:
    routed = {entry.config for entry in COMMUNITY_MSST}
    assert {path.name for path in CONFIGS.glob("*.yaml")} == routed


def test_every_public_stem_takes_five_passes_each_run_once() -> None:
    routing = load_routing(COMMUNITY)
    plan = make_plan(list(routing.served_stems()), routing)
    assert [step.model for step in plan.passes][:2] == ["htdemucs_6s", "bs_roformer_vocals"]
    assert sorted(step.model for step in plan.passes) == sorted(routing.models)
    assert {step.model: step.input for step in plan.passes}["drumsep"] == "drums"
