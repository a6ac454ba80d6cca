"""What scaling a Separator from zero costs on this machine: the service started locally
(Ray on the CPU, SQLite, the local blob store) with every Separator autoscaled between 0
and 1 replicas, starting at 0, as the GPU Separators of configs/cluster.yaml do.

    python -m benchmarks.cold_start --seconds 10

Two tasks of one synthetic song (`--seconds`), asking for drums (htdemucs_6s), are timed
from the POST to byId's COMPLETED: the first finds no Separator replica (cold), the second
is sent right after and finds the one the first started (warm). A watcher polls Serve's
status meanwhile and notes when the Separator's first replica is STARTING (Ray places
its actor) and RUNNING (the actor is up; its model then loads in the background).
Weights: a small random-weight htdemucs_6s by default, `--full` for a random copy of the
full architecture (the size of the real weights), or `--model-dir` for real ones. What a
GPU node adds (node provisioning, the image pull, CUDA start-up) cannot be measured here.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
import requests
from ray import serve
from ray.serve.schema import ReplicaState

from benchmarks.common import model_folder, write_song
from benchmarks.service_speed import free_port
from serve_app.app import build_app
from serve_app.settings import AppArgs, PipelineSettings, SeparatorDeployments
from serve_app.store.migrate import upgrade

APP = "stemsplit"
MODEL = "htdemucs_6s"
SEPARATOR = f"Separator_{MODEL}"
PREFIX = "/api/public/v1"


@dataclass
class ReplicaWatch:
    """When (time.monotonic) the Separator first had a replica starting and running."""

    starting_at: float | None = None
    running_at: float | None = None
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self, every_s: float = 0.05) -> None:
        while not self.stop.is_set():
            application = serve.status().applications.get(APP)
            overview = application.deployments.get(SEPARATOR) if application else None
            if overview is not None:
                states = overview.replica_states
                now = time.monotonic()
                if self.starting_at is None and states.get(ReplicaState.STARTING, 0):
                    self.starting_at = now
                if self.running_at is None and states.get(ReplicaState.RUNNING, 0):
                    self.running_at = now
                    self.starting_at = self.starting_at or now
            self.stop.wait(every_s)


def args_for(data: Path, model_dir: Path, port: int) -> AppArgs:
    """The local profile's settings with scale-to-zero Separators."""
    return AppArgs(
        data_dir=str(data),
        model_dir=str(model_dir),
        use_hub=False,
        public_url=f"http://127.0.0.1:{port}",
        pipeline=PipelineSettings(poll_s=0.2, tasks_per_replica=2, segments_in_flight=2),
        separators=SeparatorDeployments(
            ray_actor_options={"num_cpus": 0.5},
            autoscaling_config={
                "min_replicas": 0,
                "initial_replicas": 0,
                "max_replicas": 1,
                "target_ongoing_requests": 2,
                "upscale_delay_s": 0,
                "downscale_delay_s": 600,  # the warm task must find the replica
            },
            user_config={"max_batch_size": 1, "batch_wait_timeout_s": 0.0},
        ),
    )


def timed_task(url: str, song: Path, timeout_s: float) -> tuple[float, float]:
    """(when it was posted, seconds from the POST to COMPLETED)."""
    posted = time.monotonic()
    with song.open("rb") as audio:
        answer = requests.post(
            f"{url}{PREFIX}/Extraction",
            data={"stems": '["drums"]'},
            files={"audio_file": (song.name, audio)},
            timeout=60,
        )
    answer.raise_for_status()
    task_id = answer.json()["task_id"]
    deadline = posted + timeout_s
    while time.monotonic() < deadline:
        conversion = requests.get(
            f"{url}{PREFIX}/byId", params={"task_id": task_id}, timeout=30
        ).json()["conversion"]
        if conversion["status"] == "COMPLETED":
            return posted, time.monotonic() - posted
        if conversion["status"] == "FAILED":
            raise RuntimeError(f"task {task_id} failed: {conversion['status_msg']}")
        time.sleep(0.2)  # the poll interval: the figures are good to about 0.2 s
    raise TimeoutError(f"task {task_id} not COMPLETED within {timeout_s} s")


def separator_replicas() -> int:
    application = serve.status().applications[APP]
    return int(application.deployments[SEPARATOR].replica_states.get(ReplicaState.RUNNING, 0))


def measure(options: argparse.Namespace, work: Path) -> dict[str, Any]:
    if options.model_dir is not None:
        weights = options.model_dir
    else:
        weights = model_folder(work / "models", MODEL, small=not options.full)
    song = write_song(work / "song.wav", options.seconds)
    port = free_port()
    args = args_for(work / "data", weights, port)
    args.data_path().mkdir(parents=True, exist_ok=True)
    upgrade(args.db_url())  # as `make run` does before starting the service
    ray.init(num_cpus=options.cpus, include_dashboard=False, log_to_driver=False)
    watch = ReplicaWatch()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(args), name=APP, route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        replicas_before = separator_replicas()
        watcher = threading.Thread(target=watch.run, daemon=True)
        watcher.start()
        cold_posted, cold_s = timed_task(url, song, options.timeout_s)
        _, warm_s = timed_task(url, song, options.timeout_s)
        watch.stop.set()
        watcher.join()
    finally:
        serve.shutdown()
        ray.shutdown()
    return {
        "replicas_before": replicas_before,
        "cold_s": cold_s,
        "warm_s": warm_s,
        "starting_after_s": None if watch.starting_at is None else watch.starting_at - cold_posted,
        "running_after_s": None if watch.running_at is None else watch.running_at - cold_posted,
        "weights": str(weights),
    }


def seconds(value: float | None) -> str:
    return "never seen" if value is None else f"{value:.1f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="song length (10 s)")
    parser.add_argument(
        "--full", action="store_true", help="random weights of the full htdemucs_6s size"
    )
    parser.add_argument("--model-dir", type=Path, help="a folder holding real htdemucs_6s weights")
    parser.add_argument("--cpus", type=int, default=4, help="Ray's logical CPUs (4)")
    parser.add_argument("--timeout-s", type=float, default=900.0, help="per task (900 s)")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cold-start-") as folder:
        figures = measure(options, Path(folder))
    print(f"weights: {figures['weights']}; song: {options.seconds:g} s")
    print(f"Separator replicas running before the first task: {figures['replicas_before']}")
    rows = [
        ("cold task: POST to COMPLETED", seconds(figures["cold_s"])),
        ("warm task: POST to COMPLETED", seconds(figures["warm_s"])),
        ("cold cost (cold - warm)", seconds(figures["cold_s"] - figures["warm_s"])),
        ("Separator replica STARTING after the POST", seconds(figures["starting_after_s"])),
        ("Separator replica RUNNING after the POST", seconds(figures["running_after_s"])),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value:>10}")


if __name__ == "__main__":
    main()
