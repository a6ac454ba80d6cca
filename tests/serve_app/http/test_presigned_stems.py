"""Tests of byId with blobs on S3 (moto) and presigned stem URLs configured: the API app in
process answers with URLs of the bucket itself, signed at each read for the configured
expiry, that download the stem with no credentials; the API's own file endpoint still
serves the stem too, and answers for stems that retention deleted."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import requests
from starlette.testclient import TestClient

from models.stems.routing import load_routing
from serve_app.http.api import build_api
from serve_app.http.auth import Authenticator
from serve_app.http.extraction import ExtractionApi
from serve_app.http.probes import Probes
from serve_app.settings import ApiKey, AppArgs, AuthSettings, LimitSettings, hash_key
from serve_app.store.admission import RateLimiter
from serve_app.store.choose import blob_store
from serve_app.store.migrate import upgrade
from serve_app.store.tasks import TaskStore
from tests.serve_app.http.test_api import ALICE, KEYS, PREFIX, FakeState
from tests.serve_app.store.taskdb import spec

EXPIRY_S = 120
STEM = b"fLaC stem from the bucket"


def test_by_id_answers_presigned_urls_that_download_the_stem(
    tmp_path: Path,
    s3_url: str,
    s3_endpoint: str,
) -> None:
    keys = tuple(ApiKey(name=name, sha256=hash_key(key)) for name, key in KEYS.items())
    args = AppArgs.model_validate(
        {
            "data_dir": str(tmp_path),
            "blob_url": s3_url,
            "s3": {"endpoint_url": s3_endpoint, "presign_urls": True, "presign_expiry_s": EXPIRY_S},
            "auth": AuthSettings(enabled=True, keys=keys),
            "limits": LimitSettings(min_free_bytes=0),
        }
    )
    upgrade(args.db_url())
    store = TaskStore(args.db_url())
    blobs = blob_store(args)
    extractions = ExtractionApi(
        args,
        routing=load_routing(args.routing),
        store=store,
        limiter=RateLimiter(store.engine, args.limits.conversions_per_minute),
        blobs=blobs,
        auth=Authenticator(args.auth.all_keys(), enabled=True),
        state=FakeState(),
        wake=lambda: None,
    )
    probes = Probes(store, FakeState(), args.data_path(), args.limits.min_free_bytes)
    client = TestClient(build_api(extractions, probes), raise_server_exceptions=False)

    task = store.tasks.create(spec(owner="alice"))
    assert store.tasks.claim("worker", 60.0) is not None
    key = f"stems/{task.task_id}/drums.flac"
    blobs.put_stream(key, io.BytesIO(STEM))
    store.tasks.complete(task.task_id, "worker", {"drums": key}, duration_s=1, conversion_cost=0)

    asked_at = datetime.now(UTC).replace(microsecond=0)
    answer = client.get(f"{PREFIX}/byId", params={"task_id": task.task_id}, headers=ALICE)
    assert answer.status_code == 200, answer.text
    url = answer.json()["conversion"]["stems"]["drums"]
    bucket = s3_url.removeprefix("s3://").split("/")[0]
    assert url.startswith(f"{s3_endpoint}/{bucket}/blobs/{key}?")
    query = parse_qs(urlsplit(url).query)
    assert query["X-Amz-Expires"] == [str(EXPIRY_S)]
    signed_at = datetime.strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    assert asked_at <= signed_at <= asked_at + timedelta(seconds=5)  # signed by this read

    download = requests.get(url, timeout=10)  # no API key, no AWS credentials
    assert download.status_code == 200 and download.content == STEM
    assert download.headers["content-disposition"] == 'attachment; filename="drums.flac"'
    served = client.get(f"{PREFIX}/files/{task.task_id}/drums.flac", headers=ALICE)
    assert served.content == STEM

    # Once retention deleted them, the API's URL says so (410) where S3's would only 404.
    store.files.expire_files(datetime.now(UTC) + timedelta(hours=1))
    answer = client.get(f"{PREFIX}/byId", params={"task_id": task.task_id}, headers=ALICE)
    expired = answer.json()["conversion"]
    assert expired["files_expired"] is True
    assert expired["stems"]["drums"].endswith(f"{PREFIX}/files/{task.task_id}/drums.flac")
    assert client.get(expired["stems"]["drums"], headers=ALICE).status_code == 410
    store.close()
