"""The Housekeeping deployment: the application's periodic chores, in one replica, so that
N Pipeline replicas do not each sweep or each supervise.

It creates the webhook dispatcher (a detached Ray actor that Ray restarts whenever it dies)
and wakes it every `pipeline.poll_s`, which also starts the loop of a restarted one; a
Pipeline calls `wake` when a task ends so that its webhook goes out at once. Every
`retention.sweep_every_s` it deletes the files of tasks past the retention time, uploads no
task uses, and the work folders of workers that died at work.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from typing import Any

import ray
from ray import serve

from serve_app.deployments import metrics
from serve_app.outbound.dispatcher import WebhookDispatcher
from serve_app.outbound.webhooks import new_secret
from serve_app.settings import AppArgs
from serve_app.store.choose import blob_store, task_store, webhook_outbox
from serve_app.store.faults import log_loop_failure
from serve_app.store.retention import sweep, sweep_orphan_inputs, sweep_work_folders

logger = logging.getLogger("ray.serve")


def webhook_dispatcher(args: AppArgs, app_name: str) -> Any:
    """The application's webhook dispatcher: a detached Ray actor, restarted whenever it
    dies (the first Housekeeping replica creates it, later ones find it)."""
    actor = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)(WebhookDispatcher)
    return actor.options(
        name=f"{app_name}-webhooks", get_if_exists=True, lifetime="detached"
    ).remote(
        functools.partial(webhook_outbox, args),
        webhook_secret(args),
        args.webhooks,
        poll_s=args.webhooks.poll_s,
        concurrency=args.webhooks.concurrency,
        on_attempt=count_attempt,
        outbound=args.outbound,
    )


def count_attempt(attempt: Any) -> None:
    """The dispatcher's hook: webhook attempts by outcome."""
    metrics.webhook_attempts().inc(tags={"outcome": attempt.outcome})


def webhook_secret(args: AppArgs) -> str:
    """The configured secret, else one generated once and kept in the data folder
    (readable by the owner only), so receivers can verify across restarts."""
    configured = args.webhook_secret()
    if configured:
        return configured
    path = args.data_path() / "webhook-secret"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_suffix(f".{uuid.uuid4().hex}")
        staging.write_text(new_secret())
        staging.chmod(0o600)
        staging.replace(path)
    return path.read_text().strip()


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=64)
class Housekeeping:
    """Sweeps old files and keeps the webhook dispatcher running; one replica."""

    def __init__(self, args: AppArgs) -> None:
        self.retention = args.retention
        self.poll_s = args.pipeline.poll_s
        self.store = task_store(args)
        self.blobs = blob_store(args)
        self.work_dir = args.data_path() / "work"
        self.dispatcher = webhook_dispatcher(args, serve.get_replica_context().app_name)
        self.wakeup = asyncio.Event()
        self.loop = asyncio.get_running_loop().create_task(self._loop())

    async def wake(self) -> None:
        """Have the dispatcher look for due webhooks now (a Pipeline calls this when a task
        ends)."""
        self.wakeup.set()

    async def check_health(self) -> None:
        """Unhealthy once the loop has stopped: Serve then replaces the replica."""
        if self.loop.done():
            raise RuntimeError("the housekeeping loop stopped")

    async def _loop(self) -> None:
        swept_at = float("-inf")
        while True:
            try:
                self.dispatcher.wake.remote()
                if time.monotonic() - swept_at >= self.retention.sweep_every_s:
                    swept_at = time.monotonic()
                    await asyncio.to_thread(self._sweep)
            except Exception as error:
                log_loop_failure(logger, "housekeeping loop (database or actor call)", error)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wakeup.wait(), self.poll_s)
            self.wakeup.clear()

    def _sweep(self) -> None:
        """Delete the files of tasks past the retention time, uploads no task uses (those
        only after an hour at least: an upload becomes a task within moments), and the work
        folders of workers that died at work."""
        keep_s = self.retention.keep_s
        swept = sweep(self.store.files, self.blobs, older_than_s=keep_s)
        orphans = sweep_orphan_inputs(
            self.store.files, self.blobs, older_than_s=max(keep_s, 3600.0)
        )
        stopped = sweep_work_folders(self.store.tasks, self.work_dir)
        if swept or orphans or stopped:
            logger.info(
                "retention: deleted the files of %d tasks, %d unused uploads, %d work folders",
                swept,
                orphans,
                stopped,
            )
