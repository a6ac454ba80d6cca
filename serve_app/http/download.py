"""A stored blob as an HTTP download: the file itself where the blob store keeps one locally
(Starlette then serves ranges and sizes from disk), else the blob streamed from the store in
blocks, with the same name and media type."""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

from fastapi.responses import FileResponse, Response, StreamingResponse

from serve_app.store.blobs import BlobStore

BLOCK_BYTES = 1 << 20


def blob_response(blobs: BlobStore, key: str, filename: str) -> Response:
    """The blob under `key`, downloaded as `filename`; BlobMissingError if absent."""
    path = blobs.local_path(key)
    if path is not None:
        return FileResponse(path, filename=filename)
    blob = blobs.open(key)
    # FileResponse reads no file until it is sent: here it only names the headers.
    shape = FileResponse(key, filename=filename)
    return StreamingResponse(
        _blocks(blob),
        media_type=shape.media_type,
        headers={"content-disposition": shape.headers["content-disposition"]},
    )


def _blocks(blob: BinaryIO) -> Iterator[bytes]:
    with blob:
        yield from iter(lambda: blob.read(BLOCK_BYTES), b"")
