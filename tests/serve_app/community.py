"""The community routing deployed as an application of its own in the session's Ray,
for the tests of every public stem (tests/serve_app/test_all_stems*.py)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import requests
from ray import serve

from serve_app.app import build_app
from serve_app.settings import PipelineSettings, SeparatorDeployments
from tests.serve_app.service import KEY_A, Service, migrated, poll, samples_of

ROOT = Path(__file__).resolve().parents[2]
COMMUNITY = ROOT / "configs" / "routing" / "community.yaml"
CONFIGS = ROOT / "configs" / "msst"
LSB = 1 / 32768  # one step of the 16-bit files both sides write


@dataclass
class Community:
    """The community application and what it was built from."""

    url: str
    routing: Path
    model_dir: Path

    def api(self, path: str) -> str:
        """The full URL of an API path of this application."""
        return f"{self.url}/api/public/v1/{path.lstrip('/')}"


@contextmanager
def deployed(
    service: Service, data_dir: Path, routing: Path, model_dir: Path, *, lease_s: float
) -> Iterator[Community]:
    """An application of `routing` over the models in `model_dir`, in the session's Ray."""
    name = f"{routing.parent.name}-{uuid.uuid4().hex[:6]}"
    args = service.args.model_copy(
        update={
            "data_dir": str(data_dir),
            "routing": str(routing),
            "model_dir": str(model_dir),
            "public_url": f"{service.url}/{name}",
            "pipeline": PipelineSettings(lease_s=lease_s, poll_s=0.25),
            # Its Separators share the session's CPUs with its other applications.
            "separators": SeparatorDeployments(ray_actor_options={"num_cpus": 0.1}),
        }
    )
    serve._run(build_app(migrated(args)), _blocking=False, name=name, route_prefix=f"/{name}")
    try:
        yield Community(url=f"{service.url}/{name}", routing=routing, model_dir=model_dir)
    finally:
        serve.delete(name)


def separate_over_http(
    app: Community,
    song: Path,
    stems: list[str],
    *,
    preprocessing: list[str] | None = None,
    timeout_s: float = 300.0,
) -> dict[str, npt.NDArray[np.float32]]:
    """POST the song for `stems` to `app`, wait for COMPLETED, and return each stem's
    samples, as a client downloads them."""
    fields = {"stems": json.dumps(stems)}
    if preprocessing is not None:
        fields["preprocessing_options"] = json.dumps(preprocessing)
    with song.open("rb") as audio:
        answer = requests.post(
            app.api("Extraction"),
            headers={"Authorization": KEY_A},
            data=fields,
            files={"audio_file": (song.name, audio)},
            timeout=60,
        )
    assert answer.status_code == 200, answer.text
    conversion = poll(app.api("byId"), answer.json()["task_id"], timeout_s=timeout_s)
    assert conversion["status"] == "COMPLETED", conversion
    assert set(conversion["stems"]) == set(stems)
    return {
        stem: samples_of(requests.get(url, headers={"Authorization": KEY_A}, timeout=60).content)
        for stem, url in conversion["stems"].items()
    }
