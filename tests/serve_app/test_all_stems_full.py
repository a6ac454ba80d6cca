"""Every stem a public checkpoint serves, over HTTP, with full-size networks (slow).

As tests/serve_app/test_all_stems.py, but each MSST model is a random-weight network
built from its published config (configs/msst/), at the published size: 450 million
parameters in four networks, a chunk of up to 20 s each. The routing is the community
one without its preprocessing models; a one-second song takes one chunk per model, so
the test shows the published architectures load and run through the service's shared
batches, not how fast they are (benchmarks/ measures that).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml

from models.families.msst.config import read_config
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
from tests.serve_app.service import Service, samples_of, write_song

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def full_size(service: Service, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Community]:
    """The community routing's stem models at full size, deployed once."""
    folder = tmp_path_factory.mktemp("full-size-models")
    document = yaml.safe_load(COMMUNITY.read_text("utf-8"))
    document.pop("preprocessing")
    stems_only = folder / "community-stems.yaml"
    stems_only.write_text(yaml.safe_dump(document), encoding="utf-8")
    routing = write_test_models(stems_only, folder, configs=CONFIGS)
    data = tmp_path_factory.mktemp("full-size-data")
    with deployed(service, data, routing, folder, lease_s=120.0) as app:
        yield app


def test_published_architectures_serve_every_public_stem(
    full_size: Community, tmp_path: Path
) -> None:
    routing = load_routing(full_size.routing)
    for entry in routing.all_models().values():
        if entry.config is not None:
            # The published config itself, not a small one.
            written = read_config(full_size.model_dir / entry.config, model_type=entry.family)
            published = read_config(CONFIGS / entry.config, model_type=entry.family)
            assert written == published
    song = tmp_path / "song.wav"
    write_song(song, 1.0, seed=6)
    stems = list(routing.served_stems())
    served = separate_over_http(full_size, song, stems, timeout_s=1200)
    assert len(served) == 16
    mixture = samples_of(song.read_bytes())
    for stem, samples in served.items():
        assert samples.shape == mixture.shape, stem
        assert np.isfinite(samples).all(), stem
    np.testing.assert_allclose(
        served["lead_vocal"] + served["back_vocal"], served["vocals"], atol=2 * LSB, rtol=0
    )
