"""Fixtures for the service tests: Ray and the application start once per test session,
with a small random-weight htdemucs_6s, and are reached over real HTTP on loopback."""

from __future__ import annotations

import http.server
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import ray
import requests
from ray import serve

from models.audio.decode import decode
from models.audio.encode import StemEncoder
from models.testing.synth import render_music
from serve_app.app import build_app
from serve_app.http.body import UploadLimits
from serve_app.http.proxyguard import ProxySettings
from serve_app.outbound.netguard import OutboundPolicy
from serve_app.outbound.webhooks import new_secret
from serve_app.settings import (
    ApiKey,
    AppArgs,
    AuthSettings,
    PipelineSettings,
    WebhookSettings,
    hash_key,
)
from tests.serve_app.hub import LoopbackHub, start_hub
from tests.serve_app.smalldisk import small_disk

__all__ = ["small_disk"]  # a fixture for the storage tests

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


@pytest.fixture(scope="session")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopbackHub]:
    """A Hugging Face hub on loopback, which the Ray workers of the session use. Only the
    applications that set `use_hub` reach it; it starts with no files."""
    state, server = start_hub(tmp_path_factory.mktemp("hub-cache"))
    variables = {
        "HF_ENDPOINT": state.url,
        "HF_HUB_CACHE": str(state.cache),
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        # Requests held at the hub's gate must not time out first.
        "HF_HUB_ETAG_TIMEOUT": "300",
        "HF_HUB_DOWNLOAD_TIMEOUT": "300",
    }
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)  # read by the raylet, hence every worker, as Ray starts
    try:
        yield state
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        state.release()
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="session")
def service(
    tmp_path_factory: pytest.TempPathFactory, model_dir: Path, hub: LoopbackHub
) -> Iterator[Service]:
    """Ray, Serve and the application, once for the whole session."""
    port = free_port()
    data = tmp_path_factory.mktemp("service")
    args = AppArgs(
        data_dir=str(data),
        model_dir=str(model_dir),
        use_hub=False,
        public_url=f"http://127.0.0.1:{port}",
        auth=AuthSettings(
            enabled=True,
            keys=(
                ApiKey(name="alice", sha256=hash_key(KEY_A)),
                ApiKey(name="bob", sha256=hash_key(KEY_B)),
            ),
        ),
        uploads=UploadLimits(max_body_bytes=UPLOAD_CAP),
        # The audio_url server and webhook receiver of these tests live on loopback.
        outbound=OutboundPolicy(allowed_networks=("127.0.0.0/8", "::1/128")),
        webhooks=WebhookSettings(secret=SECRET, delays_s=(0.2, 0.2), jitter=0.0, poll_s=0.5),
        pipeline=PipelineSettings(
            lease_s=3.0, poll_s=0.5, tasks_per_replica=3, segments_in_flight=2
        ),
    )
    with pytest.MonkeyPatch.context() as environment:
        # Ray's processes, the proxy among them, inherit the environment ray.init starts
        # them in: the only way to give the proxy its guard and limits.
        for name, value in PROXY.environ().items():
            environment.setenv(name, value)
        ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(args), name=APP, route_prefix="/")
        yield Service(url=f"http://127.0.0.1:{port}", args=args)
    finally:
        serve.shutdown()
        ray.shutdown()


def write_song(path: Path, seconds: float, *, seed: int = 0, fmt: str = "wav") -> None:
    """Synthetic music (chords, bass, drums) as a 16-bit file."""
    music = render_music(seconds, RATE, seed=seed)
    encoder = StemEncoder(path, fmt, sample_rate=RATE, channels=music.shape[0], layout="stereo")
    encoder.write(music)
    encoder.close()


@pytest.fixture(scope="session")
def song(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six seconds of synthetic music."""
    path = tmp_path_factory.mktemp("songs") / "song.wav"
    write_song(path, 6.0)
    return path


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


@pytest.fixture(scope="session")
def recorder() -> Iterator[Recorder]:
    """A recording HTTP server on 127.0.0.1."""
    port = free_port()
    state = Recorder(url=f"http://127.0.0.1:{port}")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = state.files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            self.send_response(204)
            self.end_headers()
            with state.arrived:
                state.posts.append((self.path, dict(self.headers.items()), body))
                state.arrived.notify_all()

        def log_message(self, format: str, *args: object) -> None:
            """Quiet."""

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


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
    deadline = time.monotonic() + timeout_s
    pause = threading.Event()  # never set: only a polling interval
    while time.monotonic() < deadline:
        answer = requests.get(by_id_url, params={"task_id": task_id}, headers=headers, timeout=30)
        assert answer.status_code == 200, answer.text
        conversion: dict[str, Any] = answer.json()["conversion"]
        if until(conversion):
            return conversion
        pause.wait(0.25)
    raise AssertionError(f"task {task_id} did not get there in {timeout_s} s")


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
    _wait_pipeline(app, lambda running: set(task_ids) <= running, "tasks did not start")


def wait_stopped(app: str, task_id: str) -> None:
    """Block until the Pipeline no longer works on `task_id`."""
    _wait_pipeline(app, lambda running: task_id not in running, "the task did not stop")


def _wait_pipeline(app: str, done: Callable[[set[str]], bool], failure: str) -> None:
    """Poll the Pipeline's running tasks until `done(running)`, for at most a minute."""
    pipeline = serve.get_deployment_handle("Pipeline", app_name=app)
    deadline = time.monotonic() + 60
    pause = threading.Event()  # never set: only a polling interval
    while not done(set(pipeline.running_tasks.remote().result())):
        assert time.monotonic() < deadline, failure
        pause.wait(0.05)


def samples_of(data: bytes) -> npt.NDArray[np.float32]:
    """Decode audio bytes to (channels, frames) float32."""
    return decode(data).samples
