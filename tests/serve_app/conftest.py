"""Fixtures for the service tests: Ray and the application start once per test session,
with a small random-weight htdemucs_6s, and are reached over real HTTP on loopback. What
the tests share besides fixtures is in tests/serve_app/service.py."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray
from ray import serve

from serve_app.app import build_app
from serve_app.http.body import UploadLimits
from serve_app.outbound.netguard import OutboundPolicy
from serve_app.settings import (
    ApiKey,
    AppArgs,
    AuthSettings,
    PipelineSettings,
    WebhookSettings,
    hash_key,
)
from tests.serve_app.hub import LoopbackHub, start_hub
from tests.serve_app.service import (
    APP,
    KEY_A,
    KEY_B,
    PROXY,
    SECRET,
    UPLOAD_CAP,
    Recorder,
    Service,
    free_port,
    migrated,
    write_song,
)
from tests.serve_app.smalldisk import small_disk

__all__ = ["small_disk"]  # a fixture for the storage tests


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
    try:
        with pytest.MonkeyPatch.context() as environment:
            # Read by the raylet, hence every worker, as Ray starts.
            for name, value in variables.items():
                environment.setenv(name, value)
            yield state
    finally:
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
        serve.run(build_app(migrated(args)), name=APP, route_prefix="/")
        yield Service(url=f"http://127.0.0.1:{port}", args=args)
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="session")
def song(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six seconds of synthetic music."""
    path = tmp_path_factory.mktemp("songs") / "song.wav"
    write_song(path, 6.0)
    return path


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
