"""A preprocessing step served by a trained model in the service: its Separator is bound
from the routing, the task waits for it, and the stems are the command line's.

The application of this module runs in the session's Ray with its own routing and model
folder (tests/models/stepmodels.py), auth off, under /<name>.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml
from ray import serve

from models.audio.encode import StemEncoder
from models.run import ModelStore, separate_file
from models.stems.routing import parse_routing
from models.testing.synth import render_music
from serve_app.app import build_app
from serve_app.settings import AppArgs, PipelineSettings
from tests.models.stepmodels import routing_document, write_models
from tests.serve_app.service import RATE, Service, poll, samples_of

QUANTUM = 1.0 / 32768  # one 16-bit step


@dataclass
class App:
    """The module's application and the model folder it reads."""

    url: str
    model_dir: Path

    def api(self, path: str) -> str:
        return f"{self.url}/api/public/v1/{path}"


@pytest.fixture(scope="module")
def app(service: Service, tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    """Started once for the module, its models loaded."""
    name = f"trained-{uuid.uuid4().hex[:8]}"
    root = tmp_path_factory.mktemp("trained-app")
    folder = root / "models"
    write_models(folder)
    routing = root / "routing.yaml"
    routing.write_text(yaml.safe_dump(routing_document()), encoding="utf-8")
    args = AppArgs(
        data_dir=str(root / "data"),
        routing=str(routing),
        model_dir=str(folder),
        use_hub=False,
        public_url=f"{service.url}/{name}",
        pipeline=PipelineSettings(lease_s=3.0, poll_s=0.25),
    )
    serve.run(build_app(args), name=name, route_prefix=f"/{name}")
    try:
        yield App(url=f"{service.url}/{name}", model_dir=folder)
    finally:
        serve.delete(name)


@pytest.mark.slow
def test_a_routed_dereverb_model_serves_the_step(app: App, tmp_path: Path) -> None:
    song = tmp_path / "song.wav"
    with StemEncoder(song, "wav", sample_rate=RATE, channels=2, layout="stereo") as encoder:
        encoder.write(render_music(2.0, RATE, seed=5))
    with song.open("rb") as audio:
        answer = requests.post(
            app.api("Extraction"),
            data={
                "stems": json.dumps(["vocals"]),
                "preprocessing_options": json.dumps(["Dereverb"]),
            },
            files={"audio_file": ("song.wav", audio)},
            timeout=60,
        )
    assert answer.status_code == 200, answer.text
    conversion = poll(app.api("byId"), answer.json()["task_id"], key=None, timeout_s=180)
    assert conversion["status"] == "COMPLETED", conversion["status_msg"]
    assert conversion["progress"] == 1.0
    served = samples_of(requests.get(conversion["stems"]["vocals"], timeout=30).content)
    store = ModelStore(parse_routing(routing_document()), model_dir=app.model_dir)
    local = separate_file(
        song, ["vocals"], tmp_path / "cli", store=store, preprocessing=["Dereverb"]
    )
    # Batches across the Separator change float rounding, never more than 16-bit steps.
    difference = np.abs(served - samples_of(local["vocals"].read_bytes())).max()
    assert difference <= 2 * QUANTUM, difference
