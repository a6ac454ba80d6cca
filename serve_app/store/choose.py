"""The one place that opens the stores from the settings: the task database (`database_url`
or its variable, with the `database` pool settings) and the blob backend (the local folder
under the data folder by default, S3 where `blob_url` names a bucket). Every deployment
builds its stores here, so that they all see the same tasks and blobs."""

from __future__ import annotations

from serve_app.settings import AppArgs
from serve_app.store.blobs import BlobStore, LocalBlobStore
from serve_app.store.outbox import WebhookOutbox
from serve_app.store.s3blobs import S3BlobStore
from serve_app.store.tasks import TaskStore


def task_store(args: AppArgs) -> TaskStore:
    """The task store `args` configure; it refuses a database not at the schema's head."""
    return TaskStore(
        args.db_url(),
        max_claims=args.pipeline.max_claims,
        pool_size=args.database.pool_size,
        connect_timeout_s=args.database.connect_timeout_s,
    )


def webhook_outbox(args: AppArgs) -> WebhookOutbox:
    """The outbox of the task database `args` configure: the webhook dispatcher's store."""
    return task_store(args).outbox


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
