"""The Pipeline deployment: takes tasks from the database and runs each one end to end.

A replica claims tasks with a lease (`TaskQueue.claim`) and renews it while it works, so
a task whose replica died is taken again by a live one once the lease expires, and two
replicas never run the same task. Per task: plan it (`TrackJob.of`), wait until the models
it runs are loaded (its passes' and its trained preprocessing steps'; saying so in its
status_msg; a model that failed to load, or that
does not load within `model_wait_s`, ends the task FAILED with the reason), fetch
`audio_url` or open the upload, run the job path (`TrackJob.run`: decode within the limits,
clean through the Preprocessor with `RemoteCleaner` or, for a step with a trained model,
through that model's Separator, send segments to the Separator of each pass with
`RemoteModels`), store the stems, and mark the task COMPLETED, which in the same
transaction queues its webhook in the outbox (and wakes the
Housekeeping deployment, which sends it). Any failure ends in FAILED with a message the
caller can act on; tracebacks stay in the logs.

A segment whose Separator replica died is sent again; a replica shut down gracefully
hands its running tasks back to the queue. While the data
folder is below its free-space reserve no new task is taken; a task that meets a full
disk fails with that reason, and one that cannot even record its failure (the database
is full) is taken again once its lease expires (serve_app/store/faults.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import shutil
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import torch
from ray import serve
from ray.exceptions import RayTaskError
from ray.serve.handle import DeploymentHandle

from models.audio.samples import Samples
from models.engine.geometry import Geometry
from models.engine.track import WindowRunner
from models.errors import ModelUnavailableError, SeparationError
from models.run import EngineOptions, TrackJob
from models.stages import FETCH, OTHER, STORE, StageClock, describe
from models.stems.routing import Routing
from serve_app.deployments import metrics, replicas
from serve_app.deployments.health import STATE_TIMEOUT_S, model_state
from serve_app.deployments.payload import from_payload, to_payload
from serve_app.deployments.separator import ModelStatus, SegmentJob
from serve_app.http.wire import StemLinks, conversion, credits
from serve_app.outbound.fetch import FetchError, fetch_audio
from serve_app.settings import AppArgs
from serve_app.store.blobs import BlobStore, local_file
from serve_app.store.choose import blob_store, task_store
from serve_app.store.faults import log_loop_failure, space_short, storage_fault
from serve_app.store.layout import stem_key, work_folder_name
from serve_app.store.queue import TaskQueue
from serve_app.store.records import Status, TaskRecord

logger = logging.getLogger("ray.serve")

PROGRESS_EVERY_S = 1.0  # at most one progress write per task per second


class LeaseLostError(Exception):
    """Another replica took the task over; this one stops working on it."""


INTERNAL_ERROR = "internal error while processing the task; it has been logged"


def user_message(error: BaseException) -> str | None:
    """What a caller may read about a failure: our own errors' messages and storage
    faults (disk full, database unwritable); None for anything else, whose internals
    stay in the logs."""
    cause = error.cause if isinstance(error, RayTaskError) else error
    if isinstance(cause, SeparationError | FetchError):
        return str(cause)
    fault = storage_fault(cause)
    if fault is not None:
        return f"the service could not store the task's audio: {fault}; try again later"
    return None


@dataclass
class RemoteModels:
    """The routing's models behind Separator handles, used from a worker thread: every
    call blocks on its response, which a thread outside the replica's event loop may do."""

    routing: Routing
    separators: dict[str, DeploymentHandle]
    task_id: str

    def geometry(self, model: str) -> Geometry:
        """The model's geometry, asked of its Separator (again if its replica died)."""
        handle = self.separators[model]
        what = f"task {self.task_id}: a Separator's model shape"
        shape: Geometry = replicas.result(lambda: handle.shape.remote(), what)

        @functools.cache
        def valid_length(length: int) -> int:
            return int(replicas.result(lambda: handle.valid_length.remote(length), what))

        return replace(shape, valid_length=valid_length)

    def runner(self, model: str) -> WindowRunner:
        """Sends windows to the Separator all at once, so they can share its batches."""
        handle = self.separators[model]

        def run(windows: Sequence[torch.Tensor], sources: Sequence[str]) -> list[torch.Tensor]:
            jobs = [
                SegmentJob(to_payload(window), tuple(sources), self.task_id) for window in windows
            ]
            responses = [handle.separate.remote(job) for job in jobs]
            return [
                self._result(handle, job, response)
                for job, response in zip(jobs, responses, strict=True)
            ]

        return run

    def _result(self, handle: DeploymentHandle, job: SegmentJob, response: Any) -> torch.Tensor:
        """A segment's output; a segment whose replica died is sent again (to a live one).
        A segment is a pure function of its window, so running it twice changes nothing."""
        what = f"task {self.task_id}: a Separator's segment"
        output = replicas.result(lambda: handle.separate.remote(job), what, sent=response)
        return from_payload(output)


@dataclass
class RemoteCleaner:
    """The Preprocessor deployment as the job path's `Clean`, called from a worker thread
    (the call blocks on its response); sent again if its replica died."""

    preprocessor: DeploymentHandle
    task_id: str

    def __call__(self, samples: Samples, sample_rate: int, steps: tuple[str, ...]) -> Samples:
        """The samples after the named steps, same shape."""
        cleaned = replicas.result(
            lambda: self.preprocessor.clean.remote(samples, sample_rate, steps),
            f"task {self.task_id}: the Preprocessor's cleaning",
        )
        return cast(Samples, cleaned)


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=64)
class Pipeline:
    """Claims tasks and runs them, `tasks_per_replica` at a time."""

    def __init__(
        self,
        args: AppArgs,
        routing: Routing,
        separators: dict[str, DeploymentHandle],
        preprocessor: DeploymentHandle,
        housekeeping: DeploymentHandle,
    ) -> None:
        self.args = args
        self.settings = args.pipeline
        self.separators = separators
        self.preprocessor = preprocessor
        self.housekeeping = housekeeping
        self.routing = routing
        self.store = task_store(args)
        self.blobs: BlobStore = blob_store(args)
        self.links = StemLinks(args.public_url, self.blobs, args.presign_expiry_s())
        self.work_dir = args.data_path() / "work"
        self.outbound = args.outbound
        context = serve.get_replica_context()
        self.worker = f"{context.replica_id.unique_id}-{uuid.uuid4().hex[:8]}"
        self.running: dict[str, asyncio.Task[None]] = {}
        self.lost: dict[str, asyncio.Event] = {}  # set when a running task's lease is gone
        self.wakeup = asyncio.Event()
        self.space_note: str | None = None  # why no new task is taken, while disk is short
        self.stage_seconds = StageClock()  # of every task completed by this replica
        self.stage_tasks = 0
        self.stage_audio_s = 0.0
        self.loop = asyncio.get_running_loop().create_task(self._claim_loop())

    async def wake(self) -> None:
        """Look for work now (the ingress calls this after creating a task)."""
        self.wakeup.set()

    async def __del__(self) -> None:
        """Graceful shutdown (Serve calls this): stop claiming and hand unfinished tasks
        back to the queue, so a live or restarted replica takes them at once instead of
        waiting for their leases to expire."""
        self.loop.cancel()
        for task_id in list(self.running):
            self.lost[task_id].set()  # stops the worker thread at its next segment
            released = await asyncio.to_thread(self.store.tasks.release, task_id, self.worker)
            logger.info("task %s: handed back on shutdown (%s)", task_id, released)
        for task in list(self.running.values()):
            task.cancel()

    async def check_health(self) -> None:
        """Unhealthy once the claim loop has stopped: Serve then replaces the replica."""
        if self.loop.done():
            raise RuntimeError("the pipeline's claim loop stopped")

    async def running_tasks(self) -> list[str]:
        """Ids of the tasks this replica is working on."""
        return sorted(self.running)

    async def stage_totals(self) -> dict[str, Any]:
        """Where the time of the tasks this replica completed went: wall seconds per stage
        (models/stages.py; `model` is the wait for Separator answers, forward pass,
        transfer and queueing together), the tasks counted and their audio seconds."""
        return {
            "seconds": self.stage_seconds.totals(),
            "tasks": self.stage_tasks,
            "audio_s": self.stage_audio_s,
        }

    async def _claim_loop(self) -> None:
        while True:
            try:
                await self._fill()
                counts = await asyncio.to_thread(self.store.statistics.counts)
                metrics.queue_length().set(counts[Status.IN_QUEUE])
            except Exception as error:
                log_loop_failure(logger, "pipeline claim loop (database call)", error)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wakeup.wait(), self.settings.poll_s)
            self.wakeup.clear()

    async def _fill(self) -> None:
        if len(self.running) >= self.settings.tasks_per_replica:
            return
        if await asyncio.to_thread(self._space_short):
            return
        while len(self.running) < self.settings.tasks_per_replica:
            record = await asyncio.to_thread(
                self.store.tasks.claim, self.worker, self.settings.lease_s, payload=self._payload
            )
            if record is None:
                return
            task = asyncio.get_running_loop().create_task(self._run(record))
            self.running[record.task_id] = task
            task.add_done_callback(functools.partial(self._done, record.task_id))

    def _space_short(self) -> bool:
        """Whether the data folder is below its free-space reserve; queued tasks then wait
        (logged once as it starts and once as it ends) instead of failing for want of room."""
        note = space_short(self.args.data_path(), self.args.limits.min_free_bytes)
        if note != self.space_note:
            if note is not None:
                logger.warning("pipeline: taking no new task: %s", note)
            else:
                logger.info("pipeline: disk space is back; taking tasks again")
            self.space_note = note
        return note is not None

    def _done(self, task_id: str, _task: asyncio.Task[None]) -> None:
        self.running.pop(task_id, None)
        self.lost.pop(task_id, None)
        self.wakeup.set()

    def _payload(self, record: TaskRecord) -> str:
        return json.dumps(conversion(record, self.links))

    async def _run(self, record: TaskRecord) -> None:
        task_id = record.task_id
        log = logging.LoggerAdapter(logger, {"task_id": task_id})
        log.info("task %s: claimed (claim %d)", task_id, record.claims)
        lost = self.lost.setdefault(task_id, asyncio.Event())
        heartbeat = asyncio.get_running_loop().create_task(self._keep_lease(task_id, lost))
        folder = self.work_dir / work_folder_name(task_id, self.worker)
        started = time.monotonic()
        try:
            final = await self._process(record, folder, lost)
            status = "COMPLETED"
            log.info("task %s: completed in %.1f s", task_id, time.monotonic() - started)
            if final.duration_s:
                metrics.audio_seconds().inc(final.duration_s)
        except LeaseLostError:
            log.warning("task %s: lease lost to another replica; stopped", task_id)
            return
        except Exception as error:
            message = user_message(error)
            if message is None:
                log.exception("task %s: failed", task_id)
                message = INTERNAL_ERROR
            else:
                log.info("task %s: failed: %s", task_id, message)
            if not await self._record_failure(task_id, message, log):
                return
            status = "FAILED"
        finally:
            heartbeat.cancel()
            shutil.rmtree(folder, ignore_errors=True)
        metrics.tasks_finished().inc(tags={"status": status})
        metrics.task_seconds().observe(time.monotonic() - started)
        self.housekeeping.wake.remote()  # its webhook goes out now, not at the next poll

    async def _record_failure(
        self, task_id: str, message: str, log: logging.LoggerAdapter[logging.Logger]
    ) -> bool:
        """Mark the task FAILED; False when the database cannot be written either, in
        which case the task keeps its claim and is taken again once its lease expires."""
        try:
            await asyncio.to_thread(
                self.store.tasks.fail, task_id, message, worker=self.worker, payload=self._payload
            )
        except Exception as error:
            fault = storage_fault(error)
            if fault is None:
                raise
            log.warning(
                "task %s: could not record its failure (%s); it runs again once its lease expires",
                task_id,
                fault,
            )
            return False
        return True

    async def _keep_lease(self, task_id: str, lost: asyncio.Event) -> None:
        while True:
            await asyncio.sleep(self.settings.lease_s / 3)
            try:
                held = await asyncio.to_thread(
                    self.store.tasks.renew, task_id, self.worker, self.settings.lease_s
                )
            except Exception as error:
                # The database may be full for a while: keep trying; the task's own next
                # write fails too and ends it.
                log_loop_failure(logger, f"task {task_id}: lease renewal", error)
                continue
            if not held:
                lost.set()
                return

    async def _await_models(
        self, record: TaskRecord, models: Sequence[str], lost: asyncio.Event
    ) -> None:
        """Return once every one of `models` (routing keys) is loaded; meanwhile the task's
        status_msg says what it waits for. ModelUnavailableError when one failed to load,
        or none loaded within `model_wait_s`."""
        deadline = time.monotonic() + self.settings.model_wait_s
        noted = ""
        for model in sorted(models):
            while True:
                remaining = deadline - time.monotonic()
                state = await model_state(
                    self.separators[model], model, max(0.0, min(remaining, STATE_TIMEOUT_S))
                )
                if state.status == ModelStatus.READY:
                    break
                if state.status == ModelStatus.FAILED:
                    raise ModelUnavailableError(state.reason or f"model {model!r} failed to load")
                if remaining <= 0:
                    raise ModelUnavailableError(
                        f"model {model!r} did not load within "
                        f"{self.settings.model_wait_s:g} seconds; try again later"
                    )
                note = f"waiting for model {model!r} to load"
                if note != noted:
                    await self._note(record.task_id, note)
                    noted = note
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lost.wait(), self.settings.poll_s)
                if lost.is_set():
                    raise LeaseLostError()
        if noted:
            await self._note(record.task_id, "")

    async def _note(self, task_id: str, message: str) -> None:
        if not await asyncio.to_thread(self.store.tasks.set_note, task_id, self.worker, message):
            raise LeaseLostError()

    async def _process(self, record: TaskRecord, folder: Path, lost: asyncio.Event) -> TaskRecord:
        spec = record.spec
        job = TrackJob.of(
            spec.stems, self.routing, fmt=spec.output_format, preprocessing=spec.preprocessing
        )
        started = time.perf_counter()
        clock = StageClock()
        await self._await_models(record, job.models, lost)
        folder.mkdir(parents=True, exist_ok=True)
        with clock.stage(FETCH):
            if spec.input_key is not None:
                source = await asyncio.to_thread(local_file, self.blobs, spec.input_key, folder)
            else:
                assert spec.audio_url is not None
                source = folder / "input"
                await fetch_audio(spec.audio_url, source, self.args.fetch, policy=self.outbound)
        options = EngineOptions(
            batch_size=self.settings.segments_in_flight,
            overlap=self.args.engine.overlap,
            shifts=self.args.engine.shifts,
        )

        def warn(warning: str) -> None:
            logger.info(
                "task %s: input: %s", record.task_id, warning, extra={"task_id": record.task_id}
            )

        separated = await asyncio.to_thread(
            job.run,
            source,
            RemoteModels(self.routing, self.separators, record.task_id),
            folder / "stems",
            limits=self.args.decode,
            clean=RemoteCleaner(self.preprocessor, record.task_id),
            options=options,
            on_progress=_ProgressWriter(self.store.tasks, record.task_id, self.worker, lost),
            on_warning=warn,
            clock=clock,
        )
        results = {}
        with clock.stage(STORE):
            for stem, path in separated.paths.items():
                key = stem_key(record.task_id, stem, spec.output_format)
                await asyncio.to_thread(self.blobs.put_file, key, path)
                results[stem] = key
        final = await asyncio.to_thread(
            self.store.tasks.complete,
            record.task_id,
            self.worker,
            results,
            duration_s=separated.duration_s,
            conversion_cost=credits(separated.duration_s, self.args.pricing.credits_per_minute),
            warnings=separated.warnings,
            payload=self._payload,
        )
        if final is None:
            raise LeaseLostError()
        self._count_stages(record.task_id, clock, time.perf_counter() - started, final)
        return final

    def _count_stages(
        self, task_id: str, clock: StageClock, wall_s: float, final: TaskRecord
    ) -> None:
        """Log where a completed task's time went and add it to the replica's totals; the
        wall time no stage claimed (waiting for models, database writes) counts as other."""
        seconds = clock.totals()
        seconds[OTHER] = seconds.get(OTHER, 0.0) + max(0.0, wall_s - sum(seconds.values()))
        logger.info("task %s: stages: %s", task_id, describe(seconds), extra={"task_id": task_id})
        self.stage_seconds.add(seconds)
        self.stage_tasks += 1
        self.stage_audio_s += final.duration_s or 0.0


class _ProgressWriter:
    """Writes a task's progress at most once a second; stops the work (from the worker
    thread it is called in) once the lease is lost."""

    def __init__(self, tasks: TaskQueue, task_id: str, worker: str, lost: asyncio.Event) -> None:
        self.tasks = tasks
        self.task_id = task_id
        self.worker = worker
        self.lost = lost
        self.written_at = 0.0

    def __call__(self, fraction: float) -> None:
        if self.lost.is_set():
            raise LeaseLostError()
        now = time.monotonic()
        if now - self.written_at < PROGRESS_EVERY_S and fraction < 1.0:
            return
        self.written_at = now
        # The separation is most of the work; storing the stems is the rest.
        if not self.tasks.set_progress(self.task_id, self.worker, 0.95 * fraction):
            raise LeaseLostError()
