"""The service end to end over real HTTP on loopback: Ray Serve, the small random-weight
model, SQLite, the blob folder, a webhook receiver and an audio_url server."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import ray
import requests
from ray import serve
from ray.serve.handle import DeploymentHandle

from models.preprocess.steps import preprocess
from models.stages import STAGES
from models.stems.catalogue import ADDING_A_MODEL, ALL_STEMS, NO_PUBLIC_MODEL
from serve_app.app import separator_name
from serve_app.outbound.webhooks import verify
from serve_app.store.retention import sweep_work_folders
from serve_app.store.tasks import TaskStore
from tests.serve_app.service import (
    APP,
    KEY_A,
    KEY_B,
    RATE,
    SECRET,
    UPLOAD_CAP,
    Recorder,
    Service,
    poll,
    post_musicgpt_sample,
    samples_of,
    submit,
    wait_final,
    webhook_settled,
    write_song,
)
from tests.waiting import wait_until

QUANTUM = 1.0 / 32768  # one 16-bit step


def download_all(
    service: Service, conversion: dict[str, Any], key: str = KEY_A
) -> dict[str, bytes]:
    """Every stem file of a finished task."""
    files = {}
    for stem, url in conversion["stems"].items():
        answer = requests.get(url, headers={"Authorization": key}, timeout=30)
        assert answer.status_code == 200, (stem, answer.text)
        files[stem] = answer.content
    return files


def test_musicgpt_sample_upload_with_denoise(service: Service, song: Path) -> None:
    """MusicGPT's own Python sample, unchanged but for the base URL."""
    answer = post_musicgpt_sample(service.api("Extraction"), song)
    assert answer.status_code == 200, answer.text
    created = answer.json()
    assert created["success"] is True
    assert created["task_id"] != created["conversion_id"]
    assert created["eta"] > 0
    assert created["credit_estimate"] == round(6.0 / 60.0, 2)
    conversion = wait_final(service, created["task_id"])
    assert conversion["status"] == "COMPLETED", conversion["status_msg"]
    assert conversion["progress"] == 1.0
    assert set(conversion["stems"]) == {"vocals", "instrumental", "drums"}
    files = download_all(service, conversion)
    original = samples_of(song.read_bytes())
    stems = {stem: samples_of(data) for stem, data in files.items()}
    for stem, samples in stems.items():
        assert samples.shape == original.shape, stem
    # instrumental = (cleaned) mixture - vocals, so the two add up to the cleaned input.
    cleaned = preprocess(original, RATE, ["Denoise"])
    total = stems["vocals"] + stems["instrumental"]
    assert np.abs(total - cleaned).max() <= 2 * QUANTUM


def test_audio_url_and_signed_webhook(service: Service, song: Path, recorder: Recorder) -> None:
    recorder.files["/song.flac"] = b""
    flac = song.with_name("url-song.flac")
    write_song(flac, 4.0, seed=3, fmt="flac")
    recorder.files["/song.flac"] = flac.read_bytes()
    before = len(recorder.posts)
    pipeline = serve.get_deployment_handle("Pipeline", app_name=APP)
    separator = serve.get_deployment_handle(separator_name("htdemucs_6s"), app_name=APP)
    stages_before = pipeline.stage_totals.remote().result()
    batches_before = separator.batch_stats.remote().result()
    answer = submit(
        service,
        audio_url=f"{recorder.url}/song.flac",
        stems=json.dumps(["vocals", "instrumental"]),
        webhook_url=f"{recorder.url}/hook",
        output_format="flac",
    )
    assert answer.status_code == 200, answer.text
    created = answer.json()
    assert created["eta"] == -1  # the duration is unknown until the URL is fetched
    conversion = wait_final(service, created["task_id"])
    assert conversion["status"] == "COMPLETED", conversion["status_msg"]
    assert conversion["duration_s"] == 4.0
    check_stage_totals(pipeline, separator, stages_before, batches_before, audio_s=4.0)
    files = download_all(service, conversion)
    original = samples_of(flac.read_bytes())
    total = samples_of(files["vocals"]) + samples_of(files["instrumental"])
    assert total.shape == original.shape
    assert np.abs(total - original).max() <= 2 * QUANTUM
    recorder.wait_for_posts(before + 1)
    _path, headers, body = next(post for post in recorder.posts[before:] if post[0] == "/hook")
    verify(SECRET, headers, body)
    sent = json.loads(body)
    assert sent["task_id"] == created["task_id"]
    assert sent["status"] == "COMPLETED"
    assert sent["stems"] == conversion["stems"]
    # The delivery and its attempt are recorded with the task.
    # The receiver has answered; the record of the attempt follows.
    settled = poll(service.api("byId"), created["task_id"], until=webhook_settled)
    report = settled["webhook"]
    assert report[0]["webhook_id"] == headers["webhook-id"]
    assert report[0]["state"] == "DELIVERED"
    assert [attempt["status_code"] for attempt in report[0]["attempts"]] == [204]


def check_stage_totals(
    pipeline: DeploymentHandle,
    separator: DeploymentHandle,
    stages_before: dict[str, Any],
    batches_before: dict[str, Any],
    *,
    audio_s: float,
) -> None:
    """The Pipeline counted one more task in every stage of the service's path, and the
    Separator's forward passes took no longer than the Pipeline waited for them."""
    stages = pipeline.stage_totals.remote().result()
    batches = separator.batch_stats.remote().result()
    assert stages["tasks"] == stages_before["tasks"] + 1
    assert stages["audio_s"] == pytest.approx(stages_before["audio_s"] + audio_s)
    grown = {
        stage: seconds - stages_before["seconds"].get(stage, 0.0)
        for stage, seconds in stages["seconds"].items()
    }
    assert set(grown) <= set(STAGES)
    for stage in ("fetch", "decode", "model", "overlap_add", "encode", "store"):
        assert grown.get(stage, 0.0) > 0, (stage, grown)
    forward_s = batches["forward_s"] - batches_before["forward_s"]
    assert batches["windows"] > batches_before["windows"]
    assert 0 < forward_s <= grown["model"]


def test_failed_task_reports_a_reason(service: Service, recorder: Recorder) -> None:
    answer = submit(service, audio_url=f"{recorder.url}/missing.mp3")
    assert answer.status_code == 200
    conversion = wait_final(service, answer.json()["task_id"])
    assert conversion["status"] == "FAILED"
    assert conversion["status_msg"] == "audio_url answered HTTP 404"


def test_validation_errors_name_the_field(service: Service, song: Path) -> None:
    cases = [
        ({"stems": "[vocals"}, "stems"),
        ({"stems": json.dumps(["vox"])}, "stems"),
        ({"stems": json.dumps(["kick_drum"])}, "stems"),
        ({"preprocessing_options": json.dumps(["Autotune"])}, "preprocessing_options"),
        ({"output_format": "ogg"}, "output_format"),
        ({"webhook_url": "ftp://example.invalid/x"}, "webhook_url"),
    ]
    for fields, name in cases:
        answer = submit(service, song=song, **fields)
        assert answer.status_code == 422, (fields, answer.text)
        body = answer.json()
        assert body["success"] is False and body["field"] == name, body
    neither = submit(service, stems=json.dumps(["vocals"]))
    assert neither.status_code == 422
    # No fields at all, over real HTTP: the same answer (MusicGPT's 422), not a 400.
    empty = requests.post(service.api("Extraction"), headers={"Authorization": KEY_A}, timeout=30)
    assert (empty.status_code, empty.json()) == (422, neither.json())
    both = submit(service, song=song, audio_url="http://127.0.0.1:1/a.mp3")
    assert both.status_code == 422
    not_audio = requests.post(
        service.api("Extraction"),
        headers={"Authorization": KEY_A},
        files={"audio_file": ("song.mp3", b"this is not audio at all" * 50)},
        timeout=30,
    )
    assert not_audio.status_code == 422
    assert not_audio.json()["field"] == "audio_file"


def test_auth_and_tenancy(service: Service, song: Path) -> None:
    for header in ({}, {"Authorization": "wrong"}, {"Authorization": "Bearer wrong"}):
        answer = requests.post(service.api("Extraction"), headers=header, timeout=30)
        assert answer.status_code == 401
        assert (
            answer.json()["error"]
            == "missing or invalid API key; send it as the Authorization header"
        )
    created = submit(service, key=f"Bearer {KEY_A}", song=song, stems='["vocals"]').json()
    conversion = wait_final(service, created["task_id"])
    assert conversion["status"] == "COMPLETED"
    other = requests.get(
        service.api("byId"),
        params={"task_id": created["task_id"]},
        headers={"Authorization": KEY_B},
        timeout=30,
    )
    assert other.status_code == 404
    by_conversion = requests.get(
        service.api("byId"),
        params={"conversion_id": created["conversion_id"]},
        headers={"Authorization": KEY_A},
        timeout=30,
    )
    assert by_conversion.json()["conversion"]["task_id"] == created["task_id"]
    url = conversion["stems"]["vocals"]
    assert requests.get(url, headers={"Authorization": KEY_B}, timeout=30).status_code == 404
    assert requests.get(url, timeout=30).status_code == 401
    unknown = requests.get(
        service.api("byId"),
        params={"task_id": "nope"},
        headers={"Authorization": KEY_A},
        timeout=30,
    )
    assert unknown.status_code == 404


def test_upload_over_the_cap_is_413(service: Service) -> None:
    answer = requests.post(
        service.api("Extraction"),
        headers={"Authorization": KEY_A},
        files={"audio_file": ("big.wav", b"\0" * (UPLOAD_CAP + 1))},
        timeout=60,
    )
    assert answer.status_code == 413


def test_catalogue_health_and_docs(service: Service) -> None:
    stems = requests.get(service.api("stems"), timeout=30).json()
    assert len(stems["stems"]) == 23
    assert set(stems["served"]) == {"drums", "bass", "vocals", "guitar", "piano", "instrumental"}
    health = requests.get(f"{service.url}/healthz", timeout=30)
    assert health.status_code == 200 and health.json()["status"] == "ok"
    schema = requests.get(f"{service.url}/openapi.json", timeout=30).json()
    assert "/api/public/v1/Extraction" in schema["paths"]
    assert requests.get(f"{service.url}/docs", timeout=30).status_code == 200


def test_stems_reports_the_status_of_all_23(service: Service) -> None:
    catalogue = requests.get(service.api("stems"), timeout=30).json()["catalogue"]
    assert [entry["stem"] for entry in catalogue] == list(ALL_STEMS)
    served = {"drums", "bass", "vocals", "guitar", "piano", "instrumental"}
    for entry in catalogue:
        stem = entry["stem"]
        if stem in served:
            assert entry["status"] == "served", entry
        elif stem in NO_PUBLIC_MODEL:
            assert entry["status"] == "no_public_model", entry
            assert "Adding a model" in entry["note"], entry
        else:
            assert entry["status"] == "no_model_configured", entry
            assert "configs/routing/community.yaml" in entry["note"], entry
    instrumental = catalogue[ALL_STEMS.index("instrumental")]
    assert instrumental["produced_by"] == "derived"
    assert instrumental["formula"] == "mixture - vocals"


def test_stem_without_a_model_is_422_saying_so(service: Service, song: Path) -> None:
    answer = submit(service, song=song, stems=json.dumps(["strings"]))
    assert answer.status_code == 422, answer.text
    body = answer.json()
    assert body["field"] == "stems"
    assert "no model is configured for 'strings'" in body["error"]
    assert "no public checkpoint is known for 'strings'" in body["error"]
    assert ADDING_A_MODEL in body["error"]


def test_concurrent_tasks_share_separator_batches(service: Service, tmp_path: Path) -> None:
    songs = []
    for seed in range(3):
        # Long enough that the three tasks overlap in time; mp3 to stay under the cap.
        path = tmp_path / f"song{seed}.mp3"
        write_song(path, 20.0, seed=10 + seed, fmt="mp3")
        songs.append(path)
    separator = serve.get_deployment_handle(separator_name("htdemucs_6s"), app_name=APP)
    before = separator.batch_stats.remote().result()
    with ThreadPoolExecutor(len(songs)) as pool:
        answers = list(pool.map(lambda path: submit(service, song=path, stems='["drums"]'), songs))
    ids = [answer.json()["task_id"] for answer in answers]
    for task_id in ids:
        assert wait_final(service, task_id)["status"] == "COMPLETED"
    after = separator.batch_stats.remote().result()
    shared = sum(
        count - before["tasks_per_batch"].get(tasks, 0)
        for tasks, count in after["tasks_per_batch"].items()
        if tasks > 1
    )
    assert shared > 0, after


def test_pipeline_replica_killed_mid_task_still_completes(service: Service, tmp_path: Path) -> None:
    long_song = tmp_path / "long.mp3"  # mp3 keeps 40 s under the test's upload cap
    write_song(long_song, 40.0, seed=7, fmt="mp3")
    task_id = submit(service, song=long_song, stems='["bass"]').json()["task_id"]
    store = TaskStore(service.args.db_url())
    pipeline = serve.get_deployment_handle("Pipeline", app_name=APP)
    work = service.args.data_path() / "work"

    def work_folders() -> list[str]:
        return [folder.name for folder in work.glob(f"{task_id}-*")]

    def running_in_its_folder() -> bool:
        record = store.tasks.get(task_id)
        assert record is not None and record.status.value in ("IN_QUEUE", "PROCESSING")
        return task_id in pipeline.running_tasks.remote().result() and bool(work_folders())

    # Poll the replica, which answers while it works.
    wait_until(
        running_in_its_folder,
        timeout_s=120,
        every_s=0.05,
        failure="the task never ran in its work folder",
    )
    replicas = [
        name
        for name in ray.util.list_named_actors(all_namespaces=True)
        if isinstance(name, dict) and "Pipeline" in name["name"] and "REPLICA" in name["name"]
    ]
    assert len(replicas) == 1, replicas
    ray.kill(
        ray.get_actor(replicas[0]["name"], namespace=replicas[0]["namespace"]), no_restart=True
    )
    conversion = wait_final(service, task_id, timeout_s=240)
    assert conversion["status"] == "COMPLETED", conversion["status_msg"]
    record = TaskStore(service.args.db_url()).tasks.get(task_id)
    assert record is not None and record.claims == 2
    # The killed worker's folder outlives it (a crash skips its clean-up) until a sweep
    # takes it (a replica's own, or this one): its worker no longer holds the task.
    sweep_work_folders(store.tasks, work)
    assert work_folders() == []
