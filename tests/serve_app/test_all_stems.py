"""Every stem a public checkpoint serves, end to end over HTTP (issue 14).

An application of this module, in the session's Ray under /community, serves the
community routing (configs/routing/community.yaml) with random-weight models of each
routed model's family and published output names (`make-test-model --routing --small`):
htdemucs_6s, viperx's BS-RoFormer, the DrumSep MDX23C on drums, the karaoke and
male/female BS-RoFormers on vocals, and the three trained preprocessing models. One
request for all 16 stems completes, its cascades are fed the parent's stem (the stems
equal the command line's, which runs the same routing in one process), and the derived
stems sum exactly.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests

from models.run import ModelStore, separate_file
from models.stems.catalogue import NO_PUBLIC_MODEL
from models.stems.routing import load_routing
from models.testing.models import write_test_models
from tests.serve_app.community import (
    COMMUNITY,
    CONFIGS,
    LSB,
    Community,
    deployed,
    separate_over_http,
)
from tests.serve_app.service import KEY_A, Service, samples_of, write_song


@pytest.fixture(scope="module")
def community(service: Service, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Community]:
    """The community routing with small random-weight models, deployed once."""
    folder = tmp_path_factory.mktemp("community-models")
    routing = write_test_models(COMMUNITY, folder, small=True, configs=CONFIGS)
    data = tmp_path_factory.mktemp("community-data")
    with deployed(service, data, routing, folder, lease_s=30.0) as app:
        yield app


def test_every_public_stem_completes_over_http(community: Community, tmp_path: Path) -> None:
    song = tmp_path / "song.wav"
    write_song(song, 3.0, seed=4)
    routing = load_routing(community.routing)
    stems = list(routing.served_stems())
    assert len(stems) == 16
    served = separate_over_http(community, song, stems)
    mixture = samples_of(song.read_bytes())
    for stem, samples in served.items():
        assert samples.shape == mixture.shape, stem
    # Derived stems are exact: lead + back vocals give the vocals, vocals + instrumental
    # the input (each file rounds to 16 bits once).
    np.testing.assert_allclose(
        served["lead_vocal"] + served["back_vocal"], served["vocals"], atol=2 * LSB, rtol=0
    )
    np.testing.assert_allclose(served["vocals"] + served["instrumental"], mixture, atol=2 * LSB)
    # The same routing in one process gives the same stems: the service's cascades read
    # the parent's stem, not the mixture, and shared batches change nothing but rounding.
    store = ModelStore(routing, model_dir=community.model_dir, use_hub=False)
    local = separate_file(song, stems, tmp_path / "local", store=store)
    for stem, path in local.items():
        np.testing.assert_allclose(
            served[stem], samples_of(path.read_bytes()), atol=4 * LSB, rtol=0, err_msg=stem
        )


def test_a_stem_no_public_model_serves_is_refused(community: Community) -> None:
    answer = requests.post(
        community.api("Extraction"),
        headers={"Authorization": KEY_A},
        data={"stems": '["strings"]', "audio_url": "http://127.0.0.1:9/song.wav"},
        timeout=60,
    )
    assert answer.status_code == 422, answer.text
    assert "strings" in answer.json()["error"]


def test_trained_preprocessing_models_serve_their_steps(
    community: Community, tmp_path: Path
) -> None:
    song = tmp_path / "song.wav"
    write_song(song, 2.0, seed=5)
    steps = ["Dereverb", "Denoise", "Deecho"]
    served = separate_over_http(community, song, ["lead_vocal"], preprocessing=steps)["lead_vocal"]
    # The command line runs the three routed models (no DSP) on the same routing.
    routing = load_routing(community.routing)
    assert set(routing.preprocessing) == set(steps)
    store = ModelStore(routing, model_dir=community.model_dir, use_hub=False)
    local = separate_file(
        song, ["lead_vocal"], tmp_path / "local", store=store, preprocessing=steps
    )
    cleaned = samples_of(local["lead_vocal"].read_bytes())
    np.testing.assert_allclose(served, cleaned, atol=4 * LSB, rtol=0)
    plain = separate_file(song, ["lead_vocal"], tmp_path / "plain", store=store)
    assert np.abs(samples_of(plain["lead_vocal"].read_bytes()) - cleaned).max() > 100 * LSB


def test_stems_reports_every_stem_of_the_community_routing(community: Community) -> None:
    answer = requests.get(community.api("stems"), timeout=30)
    assert answer.status_code == 200, answer.text
    catalogue = {entry["stem"]: entry for entry in answer.json()["catalogue"]}
    assert len(catalogue) == 23
    statuses = {stem: entry["status"] for stem, entry in catalogue.items()}
    assert sorted(stem for stem, status in statuses.items() if status == "served") == sorted(
        load_routing(community.routing).served_stems()
    )
    no_model = {stem for stem, status in statuses.items() if status == "no_public_model"}
    assert no_model == set(NO_PUBLIC_MODEL)
    kick = catalogue["kick_drum"]
    assert kick["path"][-1].startswith("drumsep")
    assert any(step.startswith("htdemucs_6s") for step in kick["path"])
