"""The running service against demucs's apply_model: the same model and songs, side by side.

    python -m benchmarks.service_speed --rounds 2

Starts the service from `configs/local.yaml` (its deployments and settings; only the data
folder, the model folder and the port are changed) with a random-weight copy of the full
htdemucs_6s architecture, which computes what the real weights compute, unless `--url`
names a running service (then `--model-dir` must hold the model it serves). Then, in
alternation, each round times:

1. one track (`--seconds`, 60): from the start of the upload to the arrival of its
   webhook saying COMPLETED, against `demucs.apply.apply_model` on the decoded track in
   this process;
2. `--concurrent` tracks (4) of `--concurrent-seconds` (30), all uploaded at once, until
   every one's webhook has arrived, against apply_model on each in turn.

Completion is learnt from the task's webhook, sent to a receiver of this script on
127.0.0.1, not by polling: a client polling byId ten times a second costs the service's
Ingress and HTTP proxy several percent of a 2-core machine. (A running service given by
`--url` must allow webhooks to 127.0.0.1, as the local profile does.) The service writes
every stem the model outputs, as WAV; apply_model runs with demucs's defaults for
separation (split, overlap 0.25, no shifts) on the torch threads this process has. The
targets (issue 12): one track at most 1.10 times apply_model's time; concurrent tracks at
least 0.95 times its sequential throughput.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests
import torch
import yaml
from demucs.apply import BagOfModels, apply_model

from benchmarks.common import model_folder, write_song
from benchmarks.soak import loopback_url
from models.audio.decode import decode
from models.engine.track import normalisation
from models.families.demucs.loading import load_model

REPO = Path(__file__).resolve().parent.parent
LOCAL_CONFIG = REPO / "configs" / "local.yaml"
MODEL = "htdemucs_6s"
STEMS = ["vocals", "drums", "bass", "guitar", "piano"]  # every source of htdemucs_6s but other
WEBHOOK_WAIT_S = 1800.0


class Completions:
    """A webhook receiver on 127.0.0.1: when each task's final webhook arrived."""

    def __init__(self) -> None:
        self.arrived: dict[str, tuple[str, float]] = {}  # task id -> (status, perf_counter)
        self.changed = threading.Condition()
        completions = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                at = time.perf_counter()
                self.send_response(204)
                self.end_headers()
                conversion = json.loads(body)
                with completions.changed:
                    completions.arrived[conversion["task_id"]] = (conversion["status"], at)
                    completions.changed.notify_all()

            def log_message(self, format: str, *args: object) -> None:
                """Quiet."""

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/done"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, task_id: str) -> float:
        """When the task's webhook said COMPLETED; RuntimeError if it said FAILED."""
        with self.changed:
            if not self.changed.wait_for(lambda: task_id in self.arrived, WEBHOOK_WAIT_S):
                raise RuntimeError(f"no webhook for task {task_id} in {WEBHOOK_WAIT_S:g} s")
            status, at = self.arrived[task_id]
        if status != "COMPLETED":
            raise RuntimeError(f"task {task_id} ended {status}")
        return at

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def main() -> None:
    """Run both comparisons and print (and optionally write) the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--concurrent", type=int, default=4)
    parser.add_argument("--concurrent-seconds", type=float, default=30.0)
    parser.add_argument("--url", help="a running service (default: start one from local.yaml)")
    parser.add_argument("--model-dir", type=Path, help="where the running service's model is")
    parser.add_argument("--small", action="store_true", help="tiny model, for a smoke run")
    parser.add_argument(
        "--precision",
        choices=["fp32", "bf16", "auto"],
        default="fp32",
        help="the started service's engine.precision (default fp32, as apply_model computes)",
    )
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args()
    if args.url and not args.model_dir:
        parser.error("--url needs --model-dir: apply_model must run the model the service runs")

    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        models = args.model_dir or model_folder(root / "models", MODEL, small=args.small)
        long_song = write_song(root / "long.wav", args.seconds)
        short_song = write_song(root / "short.wav", args.concurrent_seconds)
        bag = load_model(MODEL, model_dir=models, use_hub=False)
        engine = {"precision": args.precision}
        with running_service(args.url, models, root, engine=engine) as url:
            report = compare(url, bag, long_song, short_song, args)
    print(format_report(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


@contextmanager
def running_service(
    url: str | None, models: Path, root: Path, *, engine: dict[str, Any] | None = None
) -> Iterator[str]:
    """The service's base URL: `url`, or one started from local.yaml and stopped after,
    its `engine` settings updated with `engine`."""
    if url:
        url = loopback_url(url)
        wait_ready(url, timeout_s=60)
        yield url
        return
    port = free_port()
    config = yaml.safe_load(LOCAL_CONFIG.read_text())
    config["http_options"]["port"] = port
    app_args = config["applications"][0]["args"]
    app_args.update(
        data_dir=str(root / "data"),
        model_dir=str(models),
        use_hub=False,
        public_url=f"http://127.0.0.1:{port}",
    )
    app_args.setdefault("engine", {}).update(engine or {})
    root.mkdir(parents=True, exist_ok=True)
    config_path = root / "service.yaml"
    config_path.write_text(yaml.safe_dump(config))
    # As `make run` does: the replicas refuse a database that is not at the schema's head.
    subprocess.run(
        [sys.executable, "-m", "serve_app", "migrate", str(config_path)],
        cwd=REPO,
        check=True,
        stdout=sys.stderr,  # the report alone goes to stdout
    )
    log = (root / "service.log").open("wb")
    serve = Path(sys.executable).parent / "serve"
    process = subprocess.Popen(
        [str(serve), "run", str(config_path)], cwd=REPO, stdout=log, stderr=subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_ready(base, timeout_s=300, process=process)
        except RuntimeError:
            sys.stderr.write((root / "service.log").read_text(errors="replace")[-4000:])
            raise
        yield base
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def wait_ready(
    url: str, *, timeout_s: float, process: subprocess.Popen[bytes] | None = None
) -> None:
    """Block until the service's /readyz answers 200."""
    deadline = time.monotonic() + timeout_s
    pause = threading.Event()
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the service exited with {process.returncode} while starting")
        try:
            if requests.get(f"{url}/readyz", timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass  # not listening yet, or too busy starting to answer
        pause.wait(0.5)
    raise RuntimeError(f"the service at {url} was not ready within {timeout_s:g} s")


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def separate_by_service(url: str, song: Path, completions: Completions) -> float:
    """Seconds from the start of the upload to the arrival of the COMPLETED webhook."""
    started = time.perf_counter()
    with song.open("rb") as audio:
        answer = requests.post(
            f"{url}/api/public/v1/Extraction",
            data={"stems": json.dumps(STEMS), "webhook_url": completions.url},
            files={"audio_file": (song.name, audio)},
            timeout=120,
        )
    answer.raise_for_status()
    return completions.wait(answer.json()["task_id"]) - started


def separate_by_demucs(bag: BagOfModels, song: Path) -> float:
    """Seconds apply_model takes on the decoded song, normalised as demucs's separator does."""
    mix = torch.from_numpy(decode(song).samples)
    mean, scale = normalisation(mix)
    started = time.perf_counter()
    apply_model(bag, ((mix - mean) / scale)[None], split=True, overlap=0.25, shifts=0)
    return time.perf_counter() - started


def compare(
    url: str, bag: BagOfModels, long_song: Path, short_song: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """Both scenarios, alternating service and apply_model within each round."""
    single_service, single_demucs = [], []
    many_service, many_demucs = [], []
    completions = Completions()

    def by_service(song: Path) -> float:
        return separate_by_service(url, song, completions)

    try:
        by_service(short_song)  # a warm-up: first-call costs are not the subject
        for _ in range(args.rounds):
            single_service.append(by_service(long_song))
            single_demucs.append(separate_by_demucs(bag, long_song))
            started = time.perf_counter()
            with ThreadPoolExecutor(args.concurrent) as pool:
                list(pool.map(lambda _: by_service(short_song), range(args.concurrent)))
            many_service.append(time.perf_counter() - started)
            many_demucs.append(
                sum(separate_by_demucs(bag, short_song) for _ in range(args.concurrent))
            )
    finally:
        completions.close()
    one_ratio = statistics.median(single_service) / statistics.median(single_demucs)
    throughput_ratio = statistics.median(many_demucs) / statistics.median(many_service)
    return {
        "model": MODEL + (" (small)" if args.small else ""),
        "torch_threads_here": torch.get_num_threads(),
        "cores": os.cpu_count(),
        "one_track": {
            "seconds_of_audio": args.seconds,
            "service_s": single_service,
            "apply_model_s": single_demucs,
            "ratio": one_ratio,
            "target": "at most 1.10",
        },
        "concurrent": {
            "tracks": args.concurrent,
            "seconds_of_audio_each": args.concurrent_seconds,
            "service_s": many_service,
            "apply_model_sequential_s": many_demucs,
            "throughput_ratio": throughput_ratio,
            "target": "at least 0.95",
        },
    }


def format_report(report: dict[str, Any]) -> str:
    """The report as a few lines of text."""
    one, many = report["one_track"], report["concurrent"]

    def times(values: list[float]) -> str:
        return (
            ", ".join(f"{value:.1f}" for value in values)
            + f" s (median {statistics.median(values):.1f})"
        )

    return "\n".join(
        [
            f"model {report['model']}, {report['cores']} cores",
            f"one {one['seconds_of_audio']:g} s track: service {times(one['service_s'])}",
            f"  apply_model {times(one['apply_model_s'])}",
            f"  ratio service / apply_model = {one['ratio']:.3f} (target at most 1.10)",
            f"{many['tracks']} concurrent {many['seconds_of_audio_each']:g} s tracks: "
            f"service {times(many['service_s'])}",
            f"  apply_model one after another {times(many['apply_model_sequential_s'])}",
            f"  throughput service / apply_model = {many['throughput_ratio']:.3f} "
            "(target at least 0.95)",
        ]
    )


if __name__ == "__main__":
    main()
