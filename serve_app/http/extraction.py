"""The Extraction endpoints' work: create a task, report it, serve its stems.

`create` authenticates, takes a rate-limit slot, refuses while the queue is full or the
data folder short of space, reads the form within its limits (serve_app/http/form.py),
moves the upload into the blob store, creates the task and answers at once with its ids,
eta and credit estimate; a Pipeline replica picks the task up from the database. A request
that needs a model which failed to load is refused. A task and its files are visible only
to its owner. Refusals are raised and answered by serve_app/http/errors.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
from collections.abc import Callable
from pathlib import PurePosixPath

from sqlalchemy.exc import OperationalError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from models.audio.decode import probe_duration
from models.errors import AudioError
from models.stems.routing import Routing
from serve_app.http.auth import Authenticator
from serve_app.http.download import blob_response
from serve_app.http.errors import (
    FilesExpired,
    NotFound,
    RateLimited,
    Unavailable,
    cannot_store,
)
from serve_app.http.form import ExtractionForm, FormError, read_extraction_form
from serve_app.http.probes import ServiceState
from serve_app.http.wire import StemLinks, conversion, credits, eta_s, webhook_report
from serve_app.settings import AppArgs
from serve_app.store.admission import RateLimiter, Refusal, Slot
from serve_app.store.blobs import BlobMissingError, BlobStore
from serve_app.store.faults import space_short
from serve_app.store.layout import INPUT_SUFFIXES, new_input_key, stem_file
from serve_app.store.queue import check_idempotency_key
from serve_app.store.records import Status, TaskRecord, TaskSpec
from serve_app.store.tasks import TaskStore

logger = logging.getLogger("ray.serve")


def request_fingerprint(form: ExtractionForm) -> str:
    """What makes two Extraction requests the same request: every field, and the bytes
    of the upload."""
    digest = hashlib.sha256()
    fields = {
        "stems": form.stems,
        "preprocessing": form.preprocessing,
        "output_format": form.output_format,
        "audio_url": form.audio_url,
        "webhook_url": form.webhook_url,
    }
    digest.update(json.dumps(fields, sort_keys=True).encode())
    if form.upload is not None:
        with form.upload.open("rb") as upload:
            for block in iter(lambda: upload.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


class ExtractionApi:
    """Creates, reports and serves extraction tasks for their owners. `wake` tells the
    pipeline that a task was created."""

    def __init__(
        self,
        args: AppArgs,
        *,
        routing: Routing,
        store: TaskStore,
        limiter: RateLimiter,
        blobs: BlobStore,
        auth: Authenticator,
        state: ServiceState,
        wake: Callable[[], object],
    ) -> None:
        self.args = args
        self.routing = routing
        self.store = store
        self.limiter = limiter
        self.blobs = blobs
        self.links = StemLinks(args.public_url, blobs, args.presign_expiry_s())
        self.auth = auth
        self.state = state
        self.wake = wake

    async def create(self, request: Request) -> JSONResponse:
        """Create an extraction task; answers before any processing. With an
        `Idempotency-Key` header, a repeated request returns the first task."""
        owner = self.auth.owner(request.headers.get("authorization"))
        idempotency_key = request.headers.get("idempotency-key")
        if idempotency_key is not None:
            check_idempotency_key(idempotency_key)
        slot = await asyncio.to_thread(self.limiter.take, owner)
        if isinstance(slot, Refusal):
            raise RateLimited(
                f"more than {self.limiter.per_window} conversions a minute",
                retry_after_s=slot.retry_after_s,
            )
        created = False
        try:
            response, created = await self._admitted(request, owner, idempotency_key)
            return response
        finally:
            if not created:
                await asyncio.to_thread(self._release, slot)

    def _release(self, slot: Slot) -> None:
        """Give back the rate-limit slot of a request that made no task. Should the
        database refuse, the slot leaves with the window instead."""
        try:
            self.limiter.release(slot)
        except (OSError, OperationalError) as failure:
            logger.warning("could not release a rate-limit slot of %s: %s", slot.owner, failure)

    async def _admitted(
        self, request: Request, owner: str, idempotency_key: str | None
    ) -> tuple[JSONResponse, bool]:
        """The answer to a request that holds a rate-limit slot, and whether it created a
        task (else the slot is given back)."""
        counts = await asyncio.to_thread(self.store.statistics.counts)
        speed = await asyncio.to_thread(self.store.statistics.recent_speed)
        queued = counts[Status.IN_QUEUE]
        retry_after_s = self.args.limits.busy_retry_after_s
        if queued >= self.args.limits.max_queued_tasks:
            raise Unavailable(
                f"the service is busy ({queued} tasks waiting); try again later",
                retry_after_s=retry_after_s,
            )
        short = await asyncio.to_thread(self._space_short)
        if short is not None:
            raise cannot_store(short, retry_after_s)
        spool = self.blobs.spool_dir()
        form = await read_extraction_form(
            request, self.routing, spool, self.args.uploads, self.args.outbound
        )
        try:
            # Trained preprocessing steps run on Separators of their own (keyed by step).
            needed = {step.model for step in form.plan.passes}
            needed.update(step for step in form.preprocessing if step in self.routing.preprocessing)
            missing = await self.state.model_failure(needed)
            if missing is not None:
                raise Unavailable(missing, retry_after_s=math.ceil(self.args.engine.model_retry_s))
            # Hashing reads the whole upload: only a request that may be a repeat pays.
            fingerprint = (
                None
                if idempotency_key is None
                else await asyncio.to_thread(request_fingerprint, form)
            )
            ahead = queued + counts[Status.PROCESSING]
            spec = await asyncio.to_thread(self._spec, owner, form, ahead, speed)
        finally:
            if form.upload is not None:
                form.upload.unlink(missing_ok=True)
        try:
            record, created = await asyncio.to_thread(
                self._create, spec, idempotency_key, fingerprint
            )
        except BaseException:
            # No task holds the upload (a key reused for another request, or the database
            # may be full): keep nothing.
            await asyncio.to_thread(self._discard_upload, spec)
            raise
        if not created:
            await asyncio.to_thread(self._discard_upload, spec)
        else:
            logger.info(
                "task %s: created by %s", record.task_id, owner, extra={"task_id": record.task_id}
            )
            self.wake()
        answer = JSONResponse(
            {
                "success": True,
                "task_id": record.task_id,
                "conversion_id": record.conversion_id,
                "eta": record.spec.eta_s,
                "credit_estimate": record.spec.credit_estimate,
            }
        )
        return answer, created

    def _space_short(self) -> str | None:
        """Why the data folder cannot take new work (below its free-space reserve)."""
        return space_short(self.args.data_path(), self.args.limits.min_free_bytes)

    def _discard_upload(self, spec: TaskSpec) -> None:
        """Delete the upload of a request that made no task (a repeat, or refused)."""
        if spec.input_key is not None:
            self.blobs.delete_prefix(spec.input_key)

    def _create(
        self, spec: TaskSpec, idempotency_key: str | None, fingerprint: str | None
    ) -> tuple[TaskRecord, bool]:
        if idempotency_key is None:
            return self.store.tasks.create(spec), True
        return self.store.tasks.create_once(spec, idempotency_key, fingerprint)

    def _spec(self, owner: str, form: ExtractionForm, ahead: int, speed: float | None) -> TaskSpec:
        """The task to create: the upload moved into the blob store, the estimates made
        (`ahead`: tasks queued or running before it; `speed`: recent seconds of work per
        second of audio, if any). Reads no database, so nothing fails after the move."""
        duration: float | None = None
        input_key: str | None = None
        if form.upload is not None:
            # None: the file declares no length (a stream recorded as it was made); the
            # limit is then enforced while decoding, and the estimates are unknown.
            try:
                duration = probe_duration(form.upload, name="audio_file")
            except AudioError as failure:
                raise FormError(str(failure), field="audio_file") from failure
            limit = self.args.decode.max_duration_s
            if duration is not None and duration > limit:
                raise FormError(
                    f"audio_file is {duration:.0f} seconds long; the limit is {limit:g} seconds",
                    field="audio_file",
                )
            suffix = PurePosixPath(form.filename or "").suffix.lower()
            input_key = new_input_key(suffix if suffix in INPUT_SUFFIXES else "")
            self.blobs.put_file(input_key, form.upload)
        passes = len(form.plan.passes)
        return TaskSpec(
            owner=owner,
            stems=form.stems,
            preprocessing=form.preprocessing,
            output_format=form.output_format,
            audio_url=form.audio_url,
            input_key=input_key,
            webhook_url=form.webhook_url,
            duration_s=duration,
            eta_s=eta_s(
                duration,
                passes,
                seconds_per_audio_second=speed or self.args.pricing.seconds_per_audio_second,
                queued_ahead=ahead,
                parallel_tasks=self.args.pipeline.tasks_per_replica,
            ),
            credit_estimate=credits(duration, self.args.pricing.credits_per_minute),
        )

    async def report(
        self, request: Request, conversion_type: str, task_id: str | None, conversion_id: str | None
    ) -> JSONResponse:
        """A task's conversion object, by task_id or conversion_id."""
        owner = self.auth.owner(request.headers.get("authorization"))
        if conversion_type.upper() != "EXTRACTION":
            raise FormError("conversionType must be EXTRACTION", field="conversionType")
        if not task_id and not conversion_id:
            raise FormError("give task_id or conversion_id", field="task_id")
        record = await asyncio.to_thread(self._owned, owner, task_id, conversion_id)
        if record is None:
            raise NotFound("no such task")
        deliveries = await asyncio.to_thread(self.store.outbox.deliveries, record.task_id)
        body = await asyncio.to_thread(conversion, record, self.links)
        body["files_expired"] = record.files_expired_at is not None
        body["webhook"] = [webhook_report(delivery) for delivery in deliveries]
        return JSONResponse({"success": True, "conversion": body})

    def _owned(
        self, owner: str, task_id: str | None, conversion_id: str | None
    ) -> TaskRecord | None:
        if task_id:
            record = self.store.tasks.get(task_id)
        else:
            record = self.store.tasks.get_by_conversion(conversion_id or "")
        return record if record is not None and record.spec.owner == owner else None

    async def stem_file(self, request: Request, task_id: str, name: str) -> Response:
        """A stem's audio file; only for the key that created the task."""
        owner = self.auth.owner(request.headers.get("authorization"))
        record = await asyncio.to_thread(self._owned, owner, task_id, None)
        if record is None:
            raise NotFound("no such file")
        if record.files_expired_at is not None:
            raise FilesExpired("the files of this task were deleted after the retention time")
        for stem, key in record.results.items():
            if stem_file(stem, record.spec.output_format) == name:
                try:
                    return blob_response(self.blobs, key, name)
                except BlobMissingError:
                    break  # deleted since, e.g. by a retention sweep
        raise NotFound("no such file")
