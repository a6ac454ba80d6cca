"""Blob downloads: a store's local file is served as a file; a store without local paths
streams the blob, with the same body, name and media type."""

from __future__ import annotations

import io
import mimetypes
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.testclient import TestClient

from serve_app.http.download import BLOCK_BYTES, blob_response
from serve_app.store.blobs import BlobMissingError, BlobStore, LocalBlobStore
from tests.serve_app.store.keysonly import KeysOnlyBlobStore

KEY = "stems/t1/vocals.flac"
AUDIO = bytes(range(256)) * (BLOCK_BYTES // 128 + 3)  # more than two blocks


def download(blobs: BlobStore, name: str) -> Any:
    async def route(_request: Request) -> Response:
        return blob_response(blobs, KEY, name)

    client = TestClient(Starlette(routes=[Route("/file", route)]))
    return client.get("/file")


@pytest.mark.parametrize("make", [LocalBlobStore, KeysOnlyBlobStore])
@pytest.mark.parametrize(
    ("name", "disposition"),
    [
        ("vocals.flac", 'attachment; filename="vocals.flac"'),
        ("vöcals.flac", "attachment; filename*=utf-8''v%C3%B6cals.flac"),
    ],
)
def test_a_blob_downloads_alike_from_either_store(
    make: type[LocalBlobStore | KeysOnlyBlobStore], name: str, disposition: str, tmp_path: Path
) -> None:
    blobs = make(tmp_path / "blobs")
    blobs.put_stream(KEY, io.BytesIO(AUDIO))
    answer = download(blobs, name)
    assert answer.status_code == 200
    assert answer.content == AUDIO
    assert answer.headers["content-disposition"] == disposition
    assert answer.headers["content-type"] == mimetypes.guess_type(name)[0]


def test_a_missing_blob_is_refused_before_any_answer(tmp_path: Path) -> None:
    with pytest.raises(BlobMissingError):
        blob_response(KeysOnlyBlobStore(tmp_path / "blobs"), KEY, "vocals.flac")
