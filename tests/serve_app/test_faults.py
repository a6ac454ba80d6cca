"""Faults and overload against the running service (issue 6): real processes of the
application are killed or shut down, its disks fill up (small tmpfs mounts), and every task
still ends with its stems or a reason. Marked `faults`, so they can run alone:
`pytest -m faults`."""

from __future__ import annotations

import contextlib
import http.server
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import ray
import requests
from ray import serve

from models.run import ModelStore, separate_file
from models.stems.routing import load_routing
from serve_app.app import build_app, separator_name
from serve_app.outbound.netguard import OutboundPolicy
from serve_app.settings import (
    AppArgs,
    LimitSettings,
    PipelineSettings,
)
from serve_app.store.records import Status, TaskRecord
from serve_app.store.tasks import TaskStore
from tests.serve_app.service import (
    APP,
    KEY_A,
    Service,
    free_port,
    kill_replica,
    migrated,
    poll,
    samples_of,
    submit,
    wait_final,
    wait_running,
    wait_stopped,
    webhook_settled,
    write_song,
)
from tests.serve_app.smalldisk import SmallDisk, empty_write_ahead_log, mount_small_disk
from tests.waiting import wait_until

pytestmark = pytest.mark.faults

QUANTUM = 1.0 / 32768


def test_separator_killed_mid_batch_every_task_completes_exactly(
    service: Service, tmp_path: Path, model_dir: Path
) -> None:
    songs = []
    for seed in range(3):
        path = tmp_path / f"song{seed}.mp3"
        write_song(path, 20.0, seed=40 + seed, fmt="mp3")
        songs.append(path)
    with ThreadPoolExecutor(len(songs)) as pool:
        answers = list(pool.map(lambda p: submit(service, song=p, stems='["drums"]'), songs))
    ids = [answer.json()["task_id"] for answer in answers]
    wait_running(APP, ids)
    kill_replica(APP, separator_name("htdemucs_6s"))
    store = ModelStore(load_routing(), model_dir=model_dir, use_hub=False)
    for song, task_id in zip(songs, ids, strict=True):
        conversion = wait_final(service, task_id, timeout_s=240)
        assert conversion["status"] == "COMPLETED", conversion["status_msg"]
        served = requests.get(
            conversion["stems"]["drums"], headers={"Authorization": KEY_A}, timeout=30
        ).content
        # The same song separated here, in one process: a lost or doubled segment
        # would differ by far more than 16-bit rounding.
        local = separate_file(song, ["drums"], tmp_path / task_id, store=store)["drums"]
        difference = np.abs(samples_of(served) - samples_of(local.read_bytes())).max()
        assert difference <= 2 * QUANTUM, difference


def replica_actor(app: str, deployment: str) -> Any:
    """The one replica actor of a deployment."""
    (found,) = [
        actor
        for actor in ray.util.list_named_actors(all_namespaces=True)
        if isinstance(actor, dict)
        and actor["name"].startswith("SERVE_REPLICA::")
        and f"{app}#{deployment}#" in actor["name"]
    ]
    return ray.get_actor(found["name"], namespace=found["namespace"])


def test_preprocessor_killed_mid_call_the_task_completes(service: Service, tmp_path: Path) -> None:
    song = tmp_path / "long.mp3"  # under the session's 4 MB upload cap
    write_song(song, 60.0, seed=60, fmt="mp3")  # a minute of Dereverb keeps it busy a while
    answer = submit(service, song=song, stems='["drums"]', preprocessing_options='["Dereverb"]')
    assert answer.status_code == 200, answer.text
    task_id = answer.json()["task_id"]
    replica = replica_actor(APP, "Preprocessor")
    # Serve's own count of the requests the replica is working on: the clean call is there.
    wait_until(
        lambda: ray.get(replica.get_num_ongoing_requests.remote()) >= 1,
        timeout_s=120,
        every_s=0.05,
        failure="the Preprocessor never got the task",
    )
    ray.kill(replica, no_restart=True)
    conversion = wait_final(service, task_id, timeout_s=240)
    assert conversion["status"] == "COMPLETED", conversion["status_msg"]
    assert set(conversion["stems"]) == {"drums"}


class HeldReceiver:
    """A webhook receiver that holds its first request open until released, then answers
    204 to every later one; records the webhook-id of each request."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.first_arrived = threading.Event()
        self.release = threading.Event()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver.ids.append(self.headers["webhook-id"])
                if len(receiver.ids) == 1:
                    receiver.first_arrived.set()
                    receiver.release.wait(30)
                    self.send_response(500)
                else:
                    self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                """Quiet."""

        self.port = free_port()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_dispatcher_killed_with_a_delivery_in_flight_resends_it(
    service: Service, song: Path
) -> None:
    receiver = HeldReceiver()
    try:
        answer = submit(
            service,
            song=song,
            stems='["bass"]',
            webhook_url=f"http://127.0.0.1:{receiver.port}/hook",
        )
        task_id = answer.json()["task_id"]
        assert receiver.first_arrived.wait(120)
        (dispatcher,) = [
            actor
            for actor in ray.util.list_named_actors(all_namespaces=True)
            if isinstance(actor, dict) and actor["name"] == f"{APP}-webhooks"
        ]
        actor = ray.get_actor(dispatcher["name"], namespace=dispatcher["namespace"])
        ray.kill(actor, no_restart=False)
        receiver.release.set()
        report = poll(service.api("byId"), task_id, until=webhook_settled)["webhook"]
        assert report[0]["state"] == "DELIVERED", report
        assert len(receiver.ids) >= 2
        assert set(receiver.ids) == {report[0]["webhook_id"]}
    finally:
        receiver.release.set()
        receiver.server.shutdown()
        receiver.server.server_close()


FAULTS = "faults"


@pytest.fixture(scope="module")
def faults_app(
    service: Service, tmp_path_factory: pytest.TempPathFactory, model_dir: Path
) -> Iterator[tuple[str, AppArgs]]:
    """An application with one task at a time, long leases and a short queue, auth off."""
    args = AppArgs(
        data_dir=str(tmp_path_factory.mktemp("faults")),
        model_dir=str(model_dir),
        use_hub=False,
        public_url=f"{service.url}/{FAULTS}",
        outbound=OutboundPolicy(allowed_networks=("127.0.0.0/8",)),
        limits=LimitSettings(max_queued_tasks=2, busy_retry_after_s=7),
        pipeline=PipelineSettings(lease_s=60.0, poll_s=0.5, tasks_per_replica=1),
    )
    serve.run(build_app(migrated(args)), name=FAULTS, route_prefix=f"/{FAULTS}")
    try:
        yield f"{service.url}/{FAULTS}", args
    finally:
        serve.delete(FAULTS)


def post_song(base: str, song: Path) -> requests.Response:
    with song.open("rb") as audio:
        return requests.post(
            f"{base}/api/public/v1/Extraction",
            data={"stems": '["drums"]'},
            files={"audio_file": (song.name, audio)},
            timeout=60,
        )


def final_status(base: str, task_id: str, timeout_s: float = 240) -> dict[str, Any]:
    """Poll the faults application (auth off) until the task ends."""
    return poll(f"{base}/api/public/v1/byId", task_id, key=None, timeout_s=timeout_s)


def test_overload_gets_a_fast_503_while_admitted_tasks_complete(
    faults_app: tuple[str, AppArgs], tmp_path: Path
) -> None:
    base, _args = faults_app
    song = tmp_path / "long.mp3"
    write_song(song, 30.0, seed=50, fmt="mp3")
    admitted = [post_song(base, song) for _ in range(3)]  # one runs, two wait
    assert [answer.status_code for answer in admitted] == [200, 200, 200]
    started = time.monotonic()
    refused = post_song(base, song)
    assert refused.status_code == 503, refused.text
    assert refused.headers["Retry-After"] == "7"
    assert time.monotonic() - started < 2.0
    for answer in admitted:
        assert final_status(base, answer.json()["task_id"])["status"] == "COMPLETED"


def test_graceful_shutdown_hands_tasks_back_and_a_restart_finishes_them(
    faults_app: tuple[str, AppArgs], tmp_path: Path
) -> None:
    base, args = faults_app
    song = tmp_path / "long.mp3"
    write_song(song, 40.0, seed=51, fmt="mp3")
    task_id = post_song(base, song).json()["task_id"]
    wait_running(FAULTS, [task_id])
    serve.delete(FAULTS)  # graceful: Serve calls the Pipeline's __del__
    store = TaskStore(args.db_url())
    record = store.tasks.get(task_id)
    assert record is not None
    # No task left PROCESSING without a live lease: it is back in the queue.
    assert record.status == Status.IN_QUEUE and record.lease_owner is None
    serve.run(build_app(migrated(args)), name=FAULTS, route_prefix=f"/{FAULTS}")
    started = time.monotonic()
    conversion = final_status(base, task_id)
    assert conversion["status"] == "COMPLETED"
    # Taken again at once, not after the 60 s lease, and not counted as a crash.
    assert time.monotonic() - started < 60
    finished = store.tasks.get(task_id)
    assert finished is not None and finished.claims == 1


DISK = "disk"
MiB = 1 << 20


@dataclass
class DiskApp:
    """The storage-fault application: its data folder and its database each on a small
    disk of their own."""

    base: str
    args: AppArgs
    data: SmallDisk
    database: SmallDisk

    def files_under(self, folder: str) -> list[Path]:
        """Every file in a folder of the blob store."""
        return [path for path in (self.data.folder / "blobs" / folder).rglob("*") if path.is_file()]

    def task(self, task_id: str) -> TaskRecord:
        """The task's row, read straight from the database."""
        record = TaskStore(self.args.db_url()).tasks.get(task_id)
        assert record is not None
        return record


@pytest.fixture(scope="module")
def disk_app(
    service: Service, tmp_path_factory: pytest.TempPathFactory, model_dir: Path
) -> Iterator[DiskApp]:
    """An application whose data folder (24 MiB, 4 MiB reserve) and database (4 MiB) are
    small tmpfs mounts; one task at a time, short leases, auth off."""
    folder = tmp_path_factory.mktemp("disk")
    data = mount_small_disk(folder / "data", 24 * MiB)
    try:
        database = mount_small_disk(folder / "db", 4 * MiB)
    except BaseException:
        data.unmount()
        raise
    args = AppArgs(
        data_dir=str(data.folder),
        database_url=f"sqlite:///{database.folder / 'tasks.db'}",
        model_dir=str(model_dir),
        use_hub=False,
        public_url=f"{service.url}/{DISK}",
        outbound=OutboundPolicy(allowed_networks=("127.0.0.0/8",)),
        limits=LimitSettings(busy_retry_after_s=7, min_free_bytes=4 * MiB),
        pipeline=PipelineSettings(lease_s=4.0, poll_s=0.5, tasks_per_replica=1),
    )
    try:
        serve.run(build_app(migrated(args)), name=DISK, route_prefix=f"/{DISK}")
        yield DiskApp(f"{service.url}/{DISK}", args, data, database)
    finally:
        serve.delete(DISK)
        data.unmount()
        database.unmount()


class HeldSong:
    """Serves a song over HTTP on loopback; the first GET of /held.wav sends half the
    song, then waits for `release` before sending the rest."""

    def __init__(self, song: bytes) -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        self.held = False
        source = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(len(song)))
                self.end_headers()
                half = len(song) // 2
                self.wfile.write(song[:half])
                self.wfile.flush()
                if self.path == "/held.wav" and not source.held:
                    source.held = True
                    source.started.set()
                    source.release.wait(60)
                self.wfile.write(song[half:])

            def log_message(self, format: str, *args: object) -> None:
                """Quiet."""

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def held_song(song: Path) -> Iterator[HeldSong]:
    source = HeldSong(song.read_bytes())
    yield source
    source.close()


def post_url(base: str, url: str) -> requests.Response:
    return requests.post(
        f"{base}/api/public/v1/Extraction",
        data={"audio_url": url, "stems": '["drums"]'},
        timeout=60,
    )


def assert_unavailable(answer: requests.Response, reason: str) -> None:
    assert answer.status_code == 503, answer.text
    assert reason in answer.json()["error"], answer.text
    assert answer.headers["Retry-After"] == "7"


def test_a_full_data_disk_refuses_new_work_fails_the_running_task_and_recovers(
    disk_app: DiskApp, held_song: HeldSong, song: Path, tmp_path: Path
) -> None:
    base = disk_app.base
    running = post_url(base, f"{held_song.url}/held.wav").json()["task_id"]
    assert held_song.started.wait(60)  # the pipeline is downloading it
    queued = post_url(base, f"{held_song.url}/song.wav").json()["task_id"]
    # Room for the reserve but not for the upload: the spooled part is thrown away.
    disk_app.data.fill(leave_bytes=5 * MiB)
    big = tmp_path / "big.wav"
    write_song(big, 40.0, seed=52)  # 7 MB
    # Answered and closed before the client had sent it all is also a refusal.
    with contextlib.suppress(requests.ConnectionError):
        assert_unavailable(post_song(base, big), "the service's disk is full")
    assert disk_app.files_under(".spool") == []
    # Below the reserve: refused before the body is read.
    disk_app.data.fill()
    assert_unavailable(post_song(base, song), "disk is nearly full")
    assert_unavailable(post_url(base, f"{held_song.url}/song.wav"), "disk is nearly full")
    health = requests.get(f"{base}/healthz", timeout=30)
    assert health.status_code == 200  # status and files are still served
    assert "disk is nearly full" in health.json()["warnings"]["storage"]
    held_song.release.set()
    failed = final_status(base, running)
    assert failed["status"] == "FAILED"
    assert "could not store the task's audio: the service's disk is full" in failed["status_msg"]
    disk_app.data.empty()
    assert requests.get(f"{base}/healthz", timeout=30).json()["warnings"] == {}
    # The task queued behind the failed one waited for space: run on a full disk, it
    # would have failed like the first.
    assert final_status(base, queued)["status"] == "COMPLETED"
    fresh = post_song(base, song)
    assert fresh.status_code == 200, fresh.text
    assert final_status(base, fresh.json()["task_id"])["status"] == "COMPLETED"


def test_a_full_database_refuses_new_work_and_the_running_task_completes_later(
    disk_app: DiskApp, held_song: HeldSong, song: Path
) -> None:
    base = disk_app.base
    task_id = post_url(base, f"{held_song.url}/held.wav").json()["task_id"]
    assert held_song.started.wait(60)
    inputs = disk_app.files_under("inputs")
    empty_write_ahead_log(disk_app.database.folder / "tasks.db")
    disk_app.database.fill()
    assert_unavailable(post_song(base, song), "the task database's disk is full")
    assert disk_app.files_under("inputs") == inputs  # the refused upload is not kept
    held_song.release.set()
    # The task fails to write its progress, and cannot record a failure either...
    wait_stopped(DISK, task_id)
    assert disk_app.task(task_id).status == Status.PROCESSING
    # ...so once there is room again it is taken again when its lease expires.
    disk_app.database.empty()
    assert final_status(base, task_id)["status"] == "COMPLETED"
    assert disk_app.task(task_id).claims == 2
    fresh = post_song(base, song)
    assert fresh.status_code == 200, fresh.text
    assert final_status(base, fresh.json()["task_id"])["status"] == "COMPLETED"
