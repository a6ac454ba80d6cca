"""Tests of presigned blob URLs on moto's S3: a URL downloads the exact bytes with no
credentials and names the file, it carries the expiry asked for, expiries S3 would not sign
are refused, and the local folder has no such URLs.

moto 5.2 refuses an unsigned URL but checks neither a signature nor its expiry (a URL dated
2020 with a 1 s expiry, or a mangled signature, still downloads), so the expiry is asserted
on the URL's signed parameters rather than by a refused download."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from serve_app.store.blobs import LocalBlobStore
from serve_app.store.s3blobs import PRESIGN_MAX_S, S3BlobStore, content_disposition

KEY = "stems/task-1/vocals.wav"
AUDIO = bytes(range(256)) * 1000


def test_a_presigned_url_downloads_the_blob_without_credentials(s3_store: S3BlobStore) -> None:
    s3_store.put_stream(KEY, io.BytesIO(AUDIO))
    url = s3_store.presigned_url(KEY, 60, filename="vocals.wav")
    answer = requests.get(url, timeout=10)  # no AWS credentials: plain HTTP
    assert answer.status_code == 200, answer.text
    assert answer.content == AUDIO
    assert answer.headers["content-disposition"] == 'attachment; filename="vocals.wav"'
    unsigned = urlsplit(url)._replace(query="").geturl()
    assert requests.get(unsigned, timeout=10).status_code == 403


def test_a_presigned_url_carries_its_expiry(s3_store: S3BlobStore) -> None:
    signed_at = datetime.now(UTC).replace(microsecond=0)
    query = parse_qs(urlsplit(s3_store.presigned_url(KEY, 900)).query)
    assert query["X-Amz-Expires"] == ["900"]
    stamp = datetime.strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    assert signed_at <= stamp <= signed_at + timedelta(seconds=5)
    assert "X-Amz-Signature" in query and "response-content-disposition" not in query


@pytest.mark.parametrize("expiry_s", [0, -1, PRESIGN_MAX_S + 1])
def test_an_expiry_s3_would_not_sign_is_refused(s3_store: S3BlobStore, expiry_s: int) -> None:
    with pytest.raises(ValueError, match="7 days"):
        s3_store.presigned_url(KEY, expiry_s)


def test_the_longest_expiry_is_seven_days(s3_store: S3BlobStore) -> None:
    query = parse_qs(urlsplit(s3_store.presigned_url(KEY, PRESIGN_MAX_S)).query)
    assert query["X-Amz-Expires"] == [str(7 * 24 * 3600)]


def test_a_name_that_needs_escaping_is_written_as_rfc_5987() -> None:
    assert content_disposition("drums.flac") == 'attachment; filename="drums.flac"'
    assert content_disposition('a "b".wav') == "attachment; filename*=utf-8''a%20%22b%22.wav"


def test_the_local_folder_has_no_presigned_urls(tmp_path: Path) -> None:
    blobs = LocalBlobStore(tmp_path)
    blobs.put_stream(KEY, io.BytesIO(AUDIO))
    assert blobs.presigned_url(KEY, 60, filename="vocals.wav") is None
