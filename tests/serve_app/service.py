"""What the service tests share besides fixtures: the session application's keys and
limits, an application's database migrated before it deploys, a client's calls to it
(submit, poll byId until final), songs to send, a recording HTTP server's state, and the
Ray-side helpers that kill replicas and watch the Pipeline."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import ray
import requests
from ray import serve

from models.audio.decode import decode
from models.audio.encode import StemEncoder
from models.testing.synth import render_music
from serve_app.http.proxyguard import ProxySettings
from serve_app.outbound.webhooks import new_secret
from serve_app.settings import AppArgs
from serve_app.store.migrate import upgrade
from tests.waiting import wait_until

KEY_A = "key-a-0123456789abcdef"
KEY_B = "key-b-fedcba9876543210"
SECRET = new_secret()
UPLOAD_CAP = 4 * 1024**2
RATE = 44100
APP = "stemsplit"
# Serve's HTTP proxy limits (serve_app/http/proxyguard.py), the defaults but for a header
# timeout short enough for the slow-client tests (test_proxyguard.py) to wait out.
PROXY = ProxySettings(header_timeout_s=5.0)


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Service:
    """The running application under test."""

    url: str
    args: AppArgs

    def api(self, path: str) -> str:
        """The full URL of an API path."""
        return f"{self.url}/api/public/v1/{path.lstrip('/')}"


def migrated(args: AppArgs) -> AppArgs:
    """`args`, its task database brought to head first, as `python -m serve_app migrate`
    does before a deployment: the application's replicas refuse a database behind it."""
    args.data_path().mkdir(parents=True, exist_ok=True)
    upgrade(args.db_url())
    return args


def write_song(path: Path, seconds: float, *, seed: int = 0, fmt: str = "wav") -> None:
    """Synthetic music (chords, bass, drums) as a 16-bit file."""
    music = render_music(seconds, RATE, seed=seed)
    encoder = StemEncoder(path, fmt, sample_rate=RATE, channels=music.shape[0], layout="stereo")
    encoder.write(music)
    encoder.close()


@dataclass
class Recorder:
    """A loopback HTTP server that serves files and records what is POSTed to it."""

    url: str
    files: dict[str, bytes] = field(default_factory=dict)
    posts: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    arrived: threading.Condition = field(default_factory=threading.Condition)

    def wait_for_posts(self, count: int, timeout_s: float = 60.0) -> None:
        """Block until `count` POSTs have arrived."""
        with self.arrived:
            assert self.arrived.wait_for(lambda: len(self.posts) >= count, timeout_s), self.posts


def submit(
    service: Service,
    *,
    key: str = KEY_A,
    song: Path | None = None,
    **fields: str,
) -> requests.Response:
    """POST /Extraction with form fields and, optionally, an audio_file."""
    if song is None:
        return requests.post(
            service.api("Extraction"), headers={"Authorization": key}, data=fields, timeout=60
        )
    with song.open("rb") as audio:
        return requests.post(
            service.api("Extraction"),
            headers={"Authorization": key},
            data=fields,
            files={"audio_file": (song.name, audio)},
            timeout=60,
        )


def is_final(conversion: dict[str, Any]) -> bool:
    """The task is COMPLETED or FAILED."""
    return conversion["status"] in ("COMPLETED", "FAILED")


def webhook_settled(conversion: dict[str, Any]) -> bool:
    """The task is final and its webhook delivery is no longer PENDING."""
    deliveries = conversion["webhook"]
    return is_final(conversion) and bool(deliveries) and deliveries[0]["state"] != "PENDING"


def poll(
    by_id_url: str,
    task_id: str,
    *,
    key: str | None = KEY_A,
    until: Callable[[dict[str, Any]], bool] = is_final,
    timeout_s: float = 120.0,
) -> dict[str, Any]:
    """Poll a byId URL, as a client does, until `until(conversion)`; returns the
    conversion object."""
    headers = {"Authorization": key} if key is not None else {}

    def conversion() -> dict[str, Any]:
        answer = requests.get(by_id_url, params={"task_id": task_id}, headers=headers, timeout=30)
        assert answer.status_code == 200, answer.text
        found: dict[str, Any] = answer.json()["conversion"]
        return found

    return wait_until(
        conversion,
        until,
        timeout_s=timeout_s,
        every_s=0.25,
        failure=f"task {task_id} did not get there",
    )


def wait_final(
    service: Service, task_id: str, *, key: str = KEY_A, timeout_s: float = 120.0
) -> dict[str, Any]:
    """Poll the session's application until the task is COMPLETED or FAILED."""
    return poll(service.api("byId"), task_id, key=key, timeout_s=timeout_s)


def kill_replica(app: str, deployment: str) -> None:
    """ray.kill the one replica of a deployment (Serve then starts a new one)."""
    found = [
        actor
        for actor in ray.util.list_named_actors(all_namespaces=True)
        if isinstance(actor, dict)
        and "REPLICA" in actor["name"]
        and f"{app}#{deployment}#" in actor["name"]
    ]
    assert len(found) == 1, found
    ray.kill(ray.get_actor(found[0]["name"], namespace=found[0]["namespace"]), no_restart=True)


def wait_running(app: str, task_ids: list[str]) -> None:
    """Block until the Pipeline works on every one of `task_ids`."""
    wanted = set(task_ids)
    _wait_pipeline(app, lambda running: wanted <= running, "tasks did not start")


def wait_stopped(app: str, task_id: str) -> None:
    """Block until the Pipeline no longer works on `task_id`."""
    _wait_pipeline(app, lambda running: task_id not in running, "the task did not stop")


def _wait_pipeline(app: str, done: Callable[[set[str]], bool], failure: str) -> None:
    """Poll the Pipeline's running tasks until `done(running)`, for at most a minute."""
    pipeline = serve.get_deployment_handle("Pipeline", app_name=app)
    wait_until(
        lambda: set(pipeline.running_tasks.remote().result()),
        done,
        timeout_s=60,
        every_s=0.05,
        failure=failure,
    )


def samples_of(data: bytes) -> npt.NDArray[np.float32]:
    """Decode audio bytes to (channels, frames) float32."""
    return decode(data).samples


def post_musicgpt_sample(extraction_url: str, song: Path) -> requests.Response:
    """MusicGPT's own Python sample request (an uploaded file, three stems, Denoise, no
    webhook), unchanged but for the base URL and the key."""
    with song.open("rb") as audio:
        return requests.post(
            extraction_url,
            headers={"Authorization": KEY_A},
            data={
                "audio_url": "",
                "stems": json.dumps(["vocals", "instrumental", "drums"]),
                "preprocessing_options": json.dumps(["Denoise"]),
                "webhook_url": "",
            },
            files={"audio_file": audio},
            timeout=60,
        )
