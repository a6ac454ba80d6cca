"""Tests of serve_app.http.api: every route through a real app, task database and blob
store, without Ray (a fake stands in for the deployments behind the API)."""

from __future__ import annotations

import errno
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from models.audio.encode import FORMATS
from models.preprocess.catalogue import STEPS
from models.stems.routing import load_routing
from serve_app.http.api import build_api
from serve_app.http.auth import Authenticator
from serve_app.http.extraction import ExtractionApi
from serve_app.http.probes import Probes
from serve_app.settings import ApiKey, AppArgs, AuthSettings, LimitSettings, hash_key
from serve_app.store.admission import RateLimiter
from serve_app.store.blobs import LocalBlobStore
from serve_app.store.migrate import upgrade
from serve_app.store.tasks import TaskStore
from tests.serve_app.store.taskdb import spec

PREFIX = "/api/public/v1"
KEYS = {"alice": "alice-key", "bob": "bob-key"}
ALICE = {"Authorization": "alice-key"}
BOB = {"Authorization": "Bearer bob-key"}
SONG = {"audio_url": "https://example.com/song.mp3", "stems": '["drums"]'}


@dataclass
class FakeState:
    """The deployments behind the API, as a test sets them."""

    failure: str | None = None
    down_: dict[str, str] = field(default_factory=dict)
    waiting_: dict[str, str] = field(default_factory=dict)
    asked: list[set[str]] = field(default_factory=list)

    async def model_failure(self, models: Iterable[str]) -> str | None:
        self.asked.append(set(models))
        return self.failure

    async def down(self) -> dict[str, str]:
        return dict(self.down_)

    async def waiting(self) -> dict[str, str]:
        return dict(self.waiting_)


@dataclass
class Api:
    """The app under test and what it works on."""

    client: TestClient
    store: TaskStore
    blobs: LocalBlobStore
    state: FakeState
    woken: list[bool]


def make_api(tmp_path: Path, routing: Path | None = None, **limits: Any) -> Api:
    """The API with auth on for KEYS, its data in tmp_path, and these limits."""
    keys = tuple(ApiKey(name=name, sha256=hash_key(key)) for name, key in KEYS.items())
    args = AppArgs(
        **({} if routing is None else {"routing": str(routing)}),
        data_dir=str(tmp_path),
        auth=AuthSettings(enabled=True, keys=keys),
        limits=LimitSettings(**{"min_free_bytes": 0, **limits}),
    )
    upgrade(args.db_url())
    store = TaskStore(args.db_url())
    blobs = LocalBlobStore(tmp_path / "blobs")
    state = FakeState()
    woken: list[bool] = []
    extractions = ExtractionApi(
        args,
        routing=load_routing(args.routing),
        store=store,
        limiter=RateLimiter(store.engine, args.limits.conversions_per_minute),
        blobs=blobs,
        auth=Authenticator(args.auth.all_keys(), enabled=True),
        state=state,
        wake=lambda: woken.append(True),
    )
    probes = Probes(store, state, args.data_path(), args.limits.min_free_bytes)
    client = TestClient(build_api(extractions, probes), raise_server_exceptions=False)
    return Api(client, store, blobs, state, woken)


@pytest.fixture
def api(tmp_path: Path) -> Api:
    return make_api(tmp_path)


def post(api: Api, headers: dict[str, str] = ALICE, **fields: str) -> Any:
    return api.client.post(f"{PREFIX}/Extraction", data=fields or SONG, headers=headers)


def by_id(api: Api, task_id: str, headers: dict[str, str] = ALICE) -> Any:
    return api.client.get(f"{PREFIX}/byId", params={"task_id": task_id}, headers=headers)


def test_a_created_task_is_reported_to_its_owner_only(api: Api) -> None:
    created = post(api)
    assert created.status_code == 200, created.text
    body = created.json()
    assert body["success"] is True and body["eta"] == -1 and body["credit_estimate"] == 0
    assert api.woken == [True]
    assert api.state.asked == [{"htdemucs_6s"}]  # the models of the form's plan
    report = by_id(api, body["task_id"])
    assert report.status_code == 200, report.text
    conversion = report.json()["conversion"]
    assert conversion["conversion_id"] == body["conversion_id"]
    assert conversion["requested_stems"] == ["drums"]
    assert conversion["files_expired"] is False and conversion["webhook"] == []
    assert by_id(api, body["task_id"], BOB).json() == {"success": False, "error": "no such task"}


def test_trained_step_models_must_not_have_failed_either(tmp_path: Path) -> None:
    community = Path(__file__).resolve().parents[3] / "configs" / "routing" / "community.yaml"
    api = make_api(tmp_path, routing=community)
    steps = {**SONG, "preprocessing_options": '["Dereverb", "Denoise"]'}
    assert post(api, ALICE, **steps).status_code == 200
    assert api.state.asked == [{"htdemucs_6s", "Dereverb", "Denoise"}]
    api.state.failure = "model 'Dereverb' is not available"
    refused = post(api, ALICE, **steps)
    assert refused.status_code == 503, refused.text
    assert "Dereverb" in refused.json()["error"]


@pytest.mark.parametrize("headers", [{}, {"Authorization": "wrong"}])
def test_a_missing_or_wrong_key_is_401(api: Api, headers: dict[str, str]) -> None:
    for answer in (post(api, headers), by_id(api, "x", headers)):
        assert answer.status_code == 401
        assert set(answer.json()) == {"success", "error"}


def test_byid_names_the_query_field_at_fault(api: Api) -> None:
    wrong = api.client.get(f"{PREFIX}/byId?conversionType=OTHER&task_id=x", headers=ALICE)
    assert wrong.status_code == 422
    assert wrong.json()["field"] == "conversionType"
    neither = api.client.get(f"{PREFIX}/byId", headers=ALICE)
    assert neither.status_code == 422
    assert neither.json() == {
        "success": False,
        "error": "give task_id or conversion_id",
        "field": "task_id",
    }


def test_stem_files_are_served_to_their_owner_until_they_expire(api: Api) -> None:
    task = api.store.tasks.create(spec(owner="alice"))
    assert api.store.tasks.claim("worker", 60.0) is not None
    key = f"stems/{task.task_id}/drums.flac"
    source = api.blobs.spool_dir() / "drums"
    source.write_bytes(b"fLaC stem")
    api.blobs.put_file(key, source)
    api.store.tasks.complete(
        task.task_id, "worker", {"drums": key}, duration_s=1, conversion_cost=0
    )
    url = f"{PREFIX}/files/{task.task_id}/drums.flac"
    assert api.client.get(url, headers=ALICE).content == b"fLaC stem"
    assert api.client.get(url, headers=BOB).status_code == 404
    assert api.client.get(url.replace("drums", "bass"), headers=ALICE).status_code == 404
    api.store.files.expire_files(datetime.now(UTC) + timedelta(hours=1))
    expired = api.client.get(url, headers=ALICE)
    assert expired.status_code == 410
    assert "retention time" in expired.json()["error"]


def test_a_stem_whose_blob_is_gone_is_404(api: Api) -> None:
    task = api.store.tasks.create(spec(owner="alice"))
    assert api.store.tasks.claim("worker", 60.0) is not None
    key = f"stems/{task.task_id}/drums.flac"
    api.store.tasks.complete(
        task.task_id, "worker", {"drums": key}, duration_s=1, conversion_cost=0
    )  # the task names the blob, the store never got it
    gone = api.client.get(f"{PREFIX}/files/{task.task_id}/drums.flac", headers=ALICE)
    assert gone.status_code == 404
    assert gone.json()["error"] == "no such file"


def test_stems_lists_the_catalogues(api: Api) -> None:
    body = api.client.get(f"{PREFIX}/stems").json()
    assert body["preprocessing_options"] == list(STEPS)
    assert body["output_formats"] == list(FORMATS)
    assert "drums" in body["served"] and "drums" in body["stems"]
    catalogue = body["catalogue"]
    assert [entry["stem"] for entry in catalogue] == body["stems"]
    served = [entry["stem"] for entry in catalogue if entry["status"] == "served"]
    assert served == body["served"]
    drums = catalogue[body["stems"].index("drums")]
    assert drums["path"] == ["htdemucs_6s: drums"] and drums["group"] == "drums"


def test_idempotency_keys_are_checked_and_repeats_return_the_first_task(api: Api) -> None:
    too_long = post(api, {**ALICE, "Idempotency-Key": "k" * 1000})
    assert too_long.status_code == 400
    assert too_long.json()["field"] == "Idempotency-Key"
    keyed = {**ALICE, "Idempotency-Key": "once"}
    first = post(api, keyed).json()["task_id"]
    assert post(api, keyed).json()["task_id"] == first
    other = post(api, keyed, audio_url="https://example.com/other.mp3")
    assert other.status_code == 422
    assert other.json()["field"] == "Idempotency-Key"


def test_past_the_rate_limit_is_429_with_retry_after(tmp_path: Path) -> None:
    api = make_api(tmp_path, conversions_per_minute=1)
    assert post(api).status_code == 200
    limited = post(api)
    assert limited.status_code == 429
    assert limited.json() == {"success": False, "error": "more than 1 conversions a minute"}
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    assert post(api, BOB).status_code == 200  # per key


def test_a_full_queue_is_503_with_retry_after(tmp_path: Path) -> None:
    api = make_api(tmp_path, max_queued_tasks=1, busy_retry_after_s=7)
    assert post(api).status_code == 200
    busy = post(api)
    assert busy.status_code == 503
    assert "busy (1 tasks waiting)" in busy.json()["error"]
    assert busy.headers["Retry-After"] == "7"


def test_a_data_folder_below_its_reserve_is_503_with_retry_after(tmp_path: Path) -> None:
    api = make_api(tmp_path, min_free_bytes=2**62, busy_retry_after_s=7)
    short = post(api)
    assert short.status_code == 503
    assert short.json()["error"].startswith("the service cannot store new work right now")
    assert short.headers["Retry-After"] == "7"
    health = api.client.get("/healthz").json()
    assert "nearly full" in health["warnings"]["storage"]


def test_a_model_that_failed_to_load_is_503_with_retry_after(api: Api) -> None:
    api.state.failure = "model 'htdemucs_6s' is not available"
    refused = post(api)
    assert refused.status_code == 503
    assert refused.json()["error"] == "model 'htdemucs_6s' is not available"
    assert refused.headers["Retry-After"] == "30"
    assert list((api.blobs.spool_dir()).iterdir()) == []


def test_storage_faults_are_503_and_a_post_may_be_retried(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(*_args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(api.store.tasks, "create", full)
    monkeypatch.setattr(api.store.tasks, "get", full)
    refused = post(api)
    assert refused.status_code == 503
    assert refused.json()["error"] == (
        "the service cannot store new work right now: the service's disk is full; try again later"
    )
    assert refused.headers["Retry-After"] == "30"
    failed = by_id(api, "x")
    assert failed.status_code == 503
    assert failed.json()["error"] == (
        "the service cannot use its storage right now: the service's disk is full"
    )
    assert "Retry-After" not in failed.headers


def test_a_bug_is_500_without_internals(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_args: object) -> None:
        raise KeyError("internal detail")

    monkeypatch.setattr(api.store.tasks, "get", broken)
    answer = by_id(api, "x")
    assert answer.status_code == 500
    assert answer.json() == {"success": False, "error": "internal error; it has been logged"}


def test_probes_report_what_is_down_or_waiting(api: Api) -> None:
    healthy = api.client.get("/healthz")
    assert healthy.status_code == 200
    assert healthy.json()["status"] == "ok" and healthy.json()["warnings"] == {}
    assert api.client.get("/readyz").json() == {"status": "ready"}
    api.state.down_ = {"Pipeline": "failed"}
    api.state.waiting_ = {"Separator_htdemucs_6s": "model 'htdemucs_6s' is loading"}
    down = api.client.get("/healthz")
    assert down.status_code == 503
    assert down.json()["down"] == {"Pipeline": "failed"}
    waiting = api.client.get("/readyz")
    assert waiting.status_code == 503
    assert waiting.json()["waiting"] == api.state.waiting_
