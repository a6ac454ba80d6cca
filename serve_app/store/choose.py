"""The one place that picks the blob backend from the settings: the local folder under the
data folder by default, S3 where `blob_url` names a bucket. Every deployment that touches
blobs builds its store here, so that they all see the same blobs."""

from __future__ import annotations

from serve_app.settings import AppArgs
from serve_app.store.blobs import BlobStore, LocalBlobStore
from serve_app.store.s3blobs import S3BlobStore


def blob_store(args: AppArgs) -> BlobStore:
    """The blob store `args` configure."""
    if args.blob_url is None:
        return LocalBlobStore(args.data_path() / "blobs")
    return S3BlobStore(
        args.blob_url,
        spool_dir=args.data_path() / "spool",
        endpoint_url=args.s3.endpoint_url,
        region=args.s3.region,
    )
