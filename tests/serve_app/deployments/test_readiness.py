"""Readiness and a model that loads slowly or not at all (issue 12, item 6).

Each test starts an application of its own, in the session's Ray, whose model folder is
empty and whose weights come from the loopback hub (tests/serve_app/hub.py): held at its
gate, the hub makes the model load slowly; answering 404, it makes the load fail. A new
user's `make run` without weights and without the hub is the second case.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from ray import serve

from models.families.demucs.testmodel import make_test_model
from serve_app.app import build_app, separator_name
from serve_app.settings import AppArgs, EngineSettings, PipelineSettings
from tests.serve_app.hub import LoopbackHub
from tests.serve_app.service import Service, migrated, poll
from tests.waiting import wait_until

SEPARATOR = separator_name("htdemucs_6s")
REPO = "adefossez/HTDemucs-6s"
LOADING = "model 'htdemucs_6s' is loading"
NOT_FOUND = (
    "model 'htdemucs_6s' is not available: its weights were not found in the model folder "
    "or on the Hugging Face hub. For a demo, `make test-model` writes a random-weight "
    "htdemucs_6s"
)


@dataclass
class App:
    """An application of one test, with auth off, under /<name>."""

    url: str
    model_dir: Path

    def api(self, path: str) -> str:
        return f"{self.url}/api/public/v1/{path}"

    def submit(self, song: Path) -> requests.Response:
        with song.open("rb") as audio:
            return requests.post(
                self.api("Extraction"),
                data={"stems": json.dumps(["vocals"])},
                files={"audio_file": ("song.wav", audio)},
                timeout=60,
            )

    def probe(self, path: str) -> requests.Response:
        return requests.get(f"{self.url}/{path}", timeout=30)

    def until(self, path: str, done: Callable[[requests.Response], bool]) -> requests.Response:
        """Poll a probe until `done(answer)`, for at most a minute."""
        return wait_until(
            lambda: self.probe(path), done, every_s=0.2, failure=f"{path} never answered so"
        )


@pytest.fixture
def app(service: Service, hub: LoopbackHub, tmp_path: Path) -> Iterator[App]:
    """Started with the hub holding every request, so the Separator is still loading."""
    name = f"ready-{uuid.uuid4().hex[:8]}"
    folder = tmp_path / "models"
    folder.mkdir()
    args = AppArgs(
        data_dir=str(tmp_path / "data"),
        model_dir=str(folder),
        use_hub=True,
        public_url=f"{service.url}/{name}",
        engine=EngineSettings(model_retry_s=0.5),
        pipeline=PipelineSettings(lease_s=3.0, poll_s=0.25),
    )
    hub.reset()
    hub.hold()
    serve._run(build_app(migrated(args)), _blocking=False, name=name, route_prefix=f"/{name}")
    try:
        yield App(url=f"{service.url}/{name}", model_dir=folder)
    finally:
        hub.release()
        serve.delete(name)
        hub.reset()


def final(app: App, task_id: str) -> dict[str, Any]:
    return poll(app.api("byId"), task_id, key=None, timeout_s=120)


def waits_for_the_model(app: App, task_id: str) -> dict[str, Any]:
    """The task once its status says it waits for the model."""
    return poll(
        app.api("byId"),
        task_id,
        key=None,
        until=lambda conversion: conversion["status_msg"] != "",
        timeout_s=60,
    )


def only_the_separator_waits(reason: str) -> Callable[[requests.Response], bool]:
    def done(answer: requests.Response) -> bool:
        return answer.status_code == 503 and answer.json()["waiting"] == {SEPARATOR: reason}

    return done


def assert_no_internals(*bodies: str) -> None:
    for body in bodies:
        assert "Traceback" not in body and "/tmp" not in body and ".py" not in body, body


def test_a_slow_model_is_not_ready_and_its_tasks_wait_then_complete(
    app: App, hub: LoopbackHub, song: Path, tmp_path: Path
) -> None:
    weights = tmp_path / "published"
    make_test_model(weights, "htdemucs_6s", small=True, layout="safetensors")
    hub.publish(REPO, weights)
    hub.wait_held()  # the Separator asks the hub, which does not answer yet

    not_ready = app.until("readyz", only_the_separator_waits(LOADING))
    alive = app.probe("healthz")
    assert alive.status_code == 200 and alive.json()["status"] == "ok"
    accepted = app.submit(song)  # a loading model does not refuse work: the task waits
    assert accepted.status_code == 200, accepted.text
    task_id = accepted.json()["task_id"]
    waiting = waits_for_the_model(app, task_id)
    assert waiting["status"] == "PROCESSING"
    assert waiting["status_msg"] == "waiting for model 'htdemucs_6s' to load"

    hub.release()
    conversion = final(app, task_id)
    assert conversion["status"] == "COMPLETED", conversion
    assert conversion["status_msg"] == ""
    ready = app.until("readyz", lambda answer: answer.status_code == 200)
    assert ready.json() == {"status": "ready"}
    assert_no_internals(not_ready.text, alive.text)


def test_a_model_that_cannot_load_fails_its_tasks_and_refuses_new_ones(
    app: App, hub: LoopbackHub, song: Path
) -> None:
    hub.wait_held()
    accepted = app.submit(song)  # admitted while the model still loads
    assert accepted.status_code == 200, accepted.text
    task_id = accepted.json()["task_id"]
    waits_for_the_model(app, task_id)

    hub.release()  # the hub answers 404: the model cannot be had
    failed = final(app, task_id)
    assert failed["status"] == "FAILED"
    assert failed["status_msg"].startswith(NOT_FOUND), failed["status_msg"]
    assert "`model_dir`" in failed["status_msg"]

    not_ready = app.until("readyz", lambda answer: answer.status_code == 503)
    assert not_ready.json()["waiting"][SEPARATOR] == failed["status_msg"]
    alive = app.probe("healthz")  # liveness: every process is up
    assert alive.status_code == 200, alive.text
    refused = app.submit(song)
    assert refused.status_code == 503
    assert refused.json()["error"] == failed["status_msg"]
    assert int(refused.headers["Retry-After"]) >= 1
    assert_no_internals(failed["status_msg"], not_ready.text, alive.text, refused.text)

    # Weights put in place later are picked up without a redeploy.
    make_test_model(app.model_dir, "htdemucs_6s", small=True)
    app.until("readyz", lambda answer: answer.status_code == 200)
    again = app.submit(song)
    assert again.status_code == 200, again.text
    assert final(app, again.json()["task_id"])["status"] == "COMPLETED"
