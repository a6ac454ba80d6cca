"""Tests of choosing the blob store from the settings: the local folder by default, S3 where
`blob_url` names a bucket (working against moto), and settings that are refused clearly: a
URL that is not s3://bucket/prefix, an endpoint that is not http(s), credentials in the file,
presigned URLs without S3 or with an expiry S3 does not sign."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from serve_app.settings import AppArgs
from serve_app.store.blobs import LocalBlobStore
from serve_app.store.choose import blob_store
from serve_app.store.s3blobs import PRESIGN_MAX_S, S3BlobStore, S3Location

KEY = "inputs/upload-1/audio.mp3"


def test_the_default_is_the_data_folder(tmp_path: Path) -> None:
    store = blob_store(AppArgs(data_dir=str(tmp_path)))
    assert isinstance(store, LocalBlobStore)
    assert store.root == tmp_path.resolve() / "blobs"


def test_an_s3_url_chooses_s3(tmp_path: Path, s3_url: str, s3_endpoint: str) -> None:
    args = AppArgs.model_validate(
        {
            "data_dir": str(tmp_path),
            "blob_url": s3_url,
            "s3": {"endpoint_url": s3_endpoint, "region": "us-east-1"},
        }
    )
    store = blob_store(args)
    assert isinstance(store, S3BlobStore)
    assert store.location == S3Location.parse(s3_url)
    assert store.spool_dir() == tmp_path.resolve() / "spool"
    store.put_stream(KEY, io.BytesIO(b"audio"))
    assert blob_store(args).size(KEY) == 5  # another replica's store sees it
    assert not (tmp_path / "blobs").exists()


@pytest.mark.parametrize("url", ["/srv/blobs", "s3:/stems", "gs://stems/x", "s3://stems/../x"])
def test_a_bad_blob_url_is_a_settings_error(url: str) -> None:
    with pytest.raises(ValidationError, match=rf"blob_url\n.*blob URL {re.escape(repr(url))}"):
        AppArgs.model_validate({"blob_url": url})


def test_an_endpoint_must_be_an_http_url() -> None:
    with pytest.raises(ValidationError, match=r"s3\.endpoint_url"):
        AppArgs.model_validate({"s3": {"endpoint_url": "minio:9000"}})


def test_credentials_are_not_settings() -> None:
    with pytest.raises(ValidationError, match="secret_access_key"):
        AppArgs.model_validate({"s3": {"secret_access_key": "x"}})


def test_presigned_urls_are_off_by_default_and_last_an_hour_when_on() -> None:
    assert AppArgs().presign_expiry_s() is None
    args = AppArgs.model_validate({"blob_url": "s3://stems/blobs", "s3": {"presign_urls": True}})
    assert args.presign_expiry_s() == 3600


@pytest.mark.parametrize("expiry_s", [1, PRESIGN_MAX_S])
def test_a_presign_expiry_from_a_second_to_seven_days_is_taken(expiry_s: int) -> None:
    s3 = {"presign_urls": True, "presign_expiry_s": expiry_s}
    args = AppArgs.model_validate({"blob_url": "s3://stems", "s3": s3})
    assert args.presign_expiry_s() == expiry_s


@pytest.mark.parametrize("expiry_s", [0, PRESIGN_MAX_S + 1])
def test_a_presign_expiry_s3_does_not_sign_is_a_settings_error(expiry_s: int) -> None:
    s3 = {"presign_urls": True, "presign_expiry_s": expiry_s}
    with pytest.raises(ValidationError, match=r"s3\.presign_expiry_s"):
        AppArgs.model_validate({"blob_url": "s3://stems", "s3": s3})


def test_presigned_urls_need_an_s3_blob_store() -> None:
    with pytest.raises(ValidationError, match="presign_urls needs blob_url set to s3://"):
        AppArgs.model_validate({"s3": {"presign_urls": True}})
